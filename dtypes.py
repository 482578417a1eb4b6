"""Number formats: storage size (including scale overhead) and the compute class a device's
throughput table is keyed by.

A format name is one of :data:`FORMATS` or an alias (``bfloat16``, ``float16``, ``fp8``...).
Group-scaled integer formats take a group size suffix: ``int4-g128`` (default group 128).
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

    @property
    def bytes(self) -> float:
        """Bytes per element, scales included."""
        return (self.bits + self.scale_bits / self.group) / 8.0


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


def dtype_bytes(name: str) -> float:
    """Bytes per element of format ``name`` (scales included)."""
    return get_dtype(name).bytes
