"""Number formats: storage size (including scale overhead) and the compute class a device's
throughput table is keyed by.

A format name is one of :data:`FORMATS` or an alias (``bfloat16``, ``float16``, ``fp8``...).
Group-scaled integer formats take a group size suffix: ``int4-g128`` (default group 128).
A weight format may carry N:M structured sparsity as a suffix: ``int8-2:4``, ``int4-g128-8:16``
(of every M consecutive weights along the contraction axis N are stored, each with its
``log2 M``-bit index); only devices with a sparse engine compute in it.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

from .errors import DtypeError


@dataclass(frozen=True)
class DType:
    """One number format.

    ``bits``: storage bits per element; ``scale_bits`` per ``group`` elements (0 when unscaled);
    ``compute``: the key of a device throughput table used to compute in this format;
    ``accum``: the format partial sums are kept in.
    """

    name: str
    bits: int
    compute: str
    accum: str
    scale_bits: int = 0
    group: int = 1
    is_float: bool = True
    sparse_n: int = 0
    sparse_m: int = 0

    @property
    def density(self) -> float:
        """Fraction of the elements stored: N/M of an N:M sparse format, else 1."""
        return self.sparse_n / self.sparse_m if self.sparse_m else 1.0

    @property
    def index_bits(self) -> int:
        """Index bits per stored element of an N:M sparse format (its position among M), else 0."""
        return (self.sparse_m - 1).bit_length() if self.sparse_m else 0

    @property
    def dense(self) -> str:
        """The format without its N:M suffix."""
        return self.name.rsplit("-", 1)[0] if self.sparse_m else self.name

    @property
    def bytes(self) -> float:
        """Bytes per (dense) element: stored values and their indices, scales included."""
        return (self.density * (self.bits + self.index_bits) + self.scale_bits / self.group) / 8.0


_BASE: dict[str, DType] = {
    d.name: d
    for d in (
        DType("fp32", 32, "fp32", "fp32"),
        DType("tf32", 32, "tf32", "fp32"),
        DType("bf16", 16, "bf16", "fp32"),
        DType("fp16", 16, "fp16", "fp32"),
        DType("fp8-e4m3", 8, "fp8", "fp32"),
        DType("fp8-e5m2", 8, "fp8", "fp32"),
        DType("int32", 32, "int32", "int32", is_float=False),
        DType("int8", 8, "int8", "int32", is_float=False),
        # int4 with one bf16 scale per group (GPTQ/AWQ style); group set by the -gN suffix
        DType("int4", 4, "int4", "int32", scale_bits=16, group=128, is_float=False),
        # OCP microscaling fp4 (e2m1) with one e8m0 scale per 32-element block
        DType("fp4-mx", 4, "fp4", "fp32", scale_bits=8, group=32),
        # BitNet b1.58: ternary weights packed 2 bits each (log2(3) = 1.58 information bits)
        DType("ternary", 2, "int8", "int32", is_float=False),
    )
}

_ALIASES = {
    "float32": "fp32", "float": "fp32", "f32": "fp32",
    "bfloat16": "bf16", "float16": "fp16", "half": "fp16", "f16": "fp16",
    "fp8": "fp8-e4m3", "e4m3": "fp8-e4m3", "e5m2": "fp8-e5m2", "float8_e4m3fn": "fp8-e4m3",
    "float8_e5m2": "fp8-e5m2", "mxfp4": "fp4-mx", "fp4": "fp4-mx", "int4-g": "int4",
    "int": "int32", "b1.58": "ternary", "bitnet": "ternary",
}

FORMATS: tuple[str, ...] = tuple(_BASE)


@cache
def get_dtype(name: str) -> DType:
    """Look up a format by name or alias; raise :class:`DtypeError` naming the known ones."""
    if not isinstance(name, str):
        raise DtypeError(f"dtype must be a string such as 'bf16', got {name!r}")
    key = name.strip().lower()
    key = _ALIASES.get(key, key)
    head, _, tail = key.rpartition("-")
    if ":" in tail and head:
        return _sparse(get_dtype(head), tail, name)
    if key.startswith("int4-g"):
        try:
            group = int(key[len("int4-g"):])
        except ValueError:
            group = 0
        if group <= 0:
            raise DtypeError(f"int4 group size in {name!r} must be a positive integer, e.g. 'int4-g128'")
        base = _BASE["int4"]
        return DType(f"int4-g{group}", base.bits, base.compute, base.accum, base.scale_bits, group, False)
    if key not in _BASE:
        raise DtypeError(f"unknown dtype {name!r}; use one of: {', '.join(FORMATS)}")
    return _BASE[key]


def _sparse(base: DType, nm: str, name: str) -> DType:
    """``base`` with N:M structured sparsity (``nm`` = "N:M"; M a power of two, 0 < N < M)."""
    n_s, _, m_s = nm.partition(":")
    n, m = (int(v) if v.isascii() and v.isdigit() else 0 for v in (n_s, m_s))
    if not (0 < n < m and m & (m - 1) == 0):
        raise DtypeError(f"N:M sparsity in {name!r} needs 0 < N < M with M a power of two, e.g. 'int8-2:4' or 'int8-8:16'")
    if base.sparse_m:
        raise DtypeError(f"{name!r} gives two N:M sparsity suffixes; give one, e.g. 'int8-2:4'")
    return DType(f"{base.name}-{n}:{m}", base.bits, base.compute, base.accum, base.scale_bits, base.group, base.is_float,
                 n, m)


def dtype_bytes(name: str) -> float:
    """Bytes per element of format ``name`` (scales included)."""
    return get_dtype(name).bytes
