"""xpusim: cycle-approximate simulation and design-space exploration of transformer workloads on
GPUs, systolic NPUs, FPGAs, PIM, dataflow and wafer-scale devices.

The public API::

    import xpusim
    res = xpusim.simulate("h100-sxm", "llama-3-8b", xpusim.Decode(batch=8, context=4096))
"""

__version__ = "0.1.0"

if __package__:  # imported as a plain file only when pytest collects a checkout whose folder is not an identifier
    from .arch import Arch, list_archs, load_arch
    from .errors import CapacityError, DtypeError, MappingError, PresetNotFound, ShapeError, SpecError, XpusimError
    from .sim.engine import op_cost, simulate, simulate_trace
    from .sim.result import Result
    from .workloads import Decode, ModelSpec, Op, Prefill, Tensor, Trace, build_trace, list_models, load_model
    from .workloads.phases import Verify

__all__ = [
    "Arch", "CapacityError", "Decode", "DtypeError", "MappingError", "ModelSpec", "Op", "Prefill", "PresetNotFound",
    "Result", "ShapeError", "SpecError", "Tensor", "Trace", "Verify", "XpusimError", "__version__", "build_trace",
    "list_archs", "list_models", "load_arch", "load_model", "op_cost", "simulate", "simulate_trace",
]
