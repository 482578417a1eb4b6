"""xpusim: cycle-approximate simulation and design-space exploration of transformer workloads on
GPUs, systolic NPUs, FPGAs, PIM, dataflow and wafer-scale devices.

The public API::

    import xpusim
    res = xpusim.simulate("h100-sxm", "llama-3-8b", xpusim.Decode(batch=8, context=4096))
"""

__version__ = "0.1.0"

from .arch import Arch, list_archs, load_arch  # noqa: E402
from .errors import CapacityError, DtypeError, MappingError, PresetNotFound, ShapeError, SpecError, XpusimError  # noqa: E402
from .sim.engine import op_cost, simulate, simulate_trace  # noqa: E402
from .sim.result import Result  # noqa: E402
from .workloads import Decode, ModelSpec, Op, Prefill, Tensor, Trace, build_trace, list_models, load_model  # noqa: E402

__all__ = [
    "Arch", "CapacityError", "Decode", "DtypeError", "MappingError", "ModelSpec", "Op", "Prefill", "PresetNotFound",
    "Result", "ShapeError", "SpecError", "Tensor", "Trace", "XpusimError", "__version__", "build_trace", "list_archs",
    "list_models", "load_arch", "load_model", "op_cost", "simulate", "simulate_trace",
]
