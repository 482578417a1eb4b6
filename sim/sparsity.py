"""Which devices compute in N:M sparse weight formats (``int8-2:4``...; :mod:`xpusim.dtypes`).

A sparse engine skips the pruned weights: FlightLLM's sparse DSP chain (an FPGA template's
``sparsity_m``: N:M for any M dividing it, N MACs per group of M) and the sparse tensor cores of
NVIDIA Ampere and later GPUs and the AMD MI300X (preset feature ``sparse_2_4``: 2:4 weights at
twice the dense math rate, 2-bit indices; NVIDIA A100 Tensor Core GPU Architecture whitepaper,
"Fine-Grained Structured Sparsity"; AMD CDNA 3 SMFMAC, see docs/devices.md). Other devices have
no path and are refused with a one-line error rather than costed as if dense.
"""

from __future__ import annotations

from ..arch.spec import Arch
from ..dtypes import get_dtype
from ..errors import DtypeError
from ..workloads.trace import Trace


def sparse_engine_m(arch: Arch) -> int:
    """The M of the N:M patterns the device's matrix engine takes (0: none)."""
    if arch.device_class == "fpga":
        from ..arch.fpga import fpga_spec

        m = fpga_spec(arch).template.sparsity_m
        return m if m > 1 else 0
    return 0


def check_sparse_format(dtype: str, arch: Arch) -> None:
    """Raise :class:`DtypeError` when ``dtype`` is N:M sparse and ``arch`` cannot compute in it."""
    d = get_dtype(dtype)
    if not d.sparse_m:
        return
    if arch.device_class == "gpu" and arch.features.get("sparse_2_4"):
        if (d.sparse_n, d.sparse_m) != (2, 4):
            raise DtypeError(f"device {arch.name!r}: its sparse tensor cores take 2:4 sparsity only; {d.name!r} is "
                             f"{d.sparse_n}:{d.sparse_m} (use {d.dense}-2:4)")
        return
    m = sparse_engine_m(arch)
    if not m:
        raise DtypeError(f"device {arch.name!r} has no N:M sparse engine for {d.name!r}; use the dense format "
                         f"{d.dense!r} (or a device with one, e.g. an FPGA template with sparsity_m)")
    if m % d.sparse_m:
        raise DtypeError(f"device {arch.name!r}: its sparse engine takes N:M patterns with M dividing {m}; {d.name!r} has "
                         f"M = {d.sparse_m} (e.g. use {d.dense}-{m // 2}:{m})")


def check_sparse_trace(trace: Trace, arch: Arch) -> None:
    """:func:`check_sparse_format` for every operand format of ``trace``."""
    for dtype in {t.dtype for block in trace.blocks for op in block.ops for t in op.inputs}:
        check_sparse_format(dtype, arch)
