"""Functional emulation of number formats: the values a tensor takes after being stored in a format and
read back ("fake quantisation"), computed in float64 so the numerical error of a format can be measured.

Sources: IEEE 754-2008 (binary16/binary32, round-to-nearest-even, subnormals); OCP 8-bit Floating Point
Specification (OFP8) rev 1.0 (E4M3 "fn": no infinities, max 448; E5M2: max 57344); OCP Microscaling
Formats (MX) v1.0 Specification (MXFP4: e2m1 elements with one e8m0 scale per 32-element block);
BitNet b1.58, Ma et al., arXiv:2402.17764 (absmean ternary weights).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ...dtypes import get_dtype
from ...errors import DtypeError, ShapeError


@dataclass(frozen=True)
class FloatFormat:
    """A binary floating format: ``ebits`` exponent bits, ``mbits`` stored mantissa bits, exponent
    ``bias`` and largest finite value ``max``. Normals are 1.m * 2**e for e >= emin = 1 - bias;
    subnormals step by 2**(emin - mbits)."""

    ebits: int
    mbits: int
    bias: int
    max: float

    @property
    def emin(self) -> int:
        return 1 - self.bias

    @property
    def unit_roundoff(self) -> float:
        """Largest relative rounding error in the normal range, 2**-(mbits + 1)."""
        return 2.0 ** -(self.mbits + 1)


def _ieee_max(ebits: int, mbits: int, bias: int) -> float:
    """Largest finite value of an IEEE-style format (top exponent code reserved for inf/NaN)."""
    return (2.0 - 2.0**-mbits) * 2.0 ** (2**ebits - 2 - bias)


FLOAT_FORMATS: dict[str, FloatFormat] = {
    "fp32": FloatFormat(8, 23, 127, _ieee_max(8, 23, 127)),  # ~3.4028e38 (used for int8 scales)
    "tf32": FloatFormat(8, 10, 127, _ieee_max(8, 10, 127)),  # fp32 range, 10 mantissa bits
    "bf16": FloatFormat(8, 7, 127, _ieee_max(8, 7, 127)),  # ~3.3895e38
    "fp16": FloatFormat(5, 10, 15, _ieee_max(5, 10, 15)),  # 65504
    "fp8-e4m3": FloatFormat(4, 3, 7, 448.0),  # OFP8 E4M3fn: only S.1111.111 is NaN
    "fp8-e5m2": FloatFormat(5, 2, 15, _ieee_max(5, 2, 15)),  # 57344
    "e2m1": FloatFormat(2, 1, 1, 6.0),  # MX FP4 element: 0, 0.5, 1, 1.5, 2, 3, 4, 6
}

INT4_LEVELS = 7  # symmetric int4: levels -7..7 (code -8 unused), as GPTQ/AWQ symmetric mode
INT8_LEVELS = 127  # symmetric int8: levels -127..127
MX_BLOCK = 32  # OCP MX v1.0 block size
MX_E2M1_EMAX = 2  # exponent of the largest normal e2m1 number (6 = 1.5 * 2**2)
E8M0_RANGE = (-127, 127)  # scale exponents an e8m0 scale encodes (255 is NaN)
TERNARY_EPS = 1e-5  # BitNet b1.58 epsilon


def round_float(x: np.ndarray, fmt: FloatFormat) -> np.ndarray:
    """Round ``x`` to ``fmt`` with round-to-nearest-even, subnormals included. Overflow saturates to
    ±fmt.max (infinities too); NaN stays NaN. Exact: only power-of-two scalings and an integer rint."""
    x = np.asarray(x, dtype=np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        _, e = np.frexp(x)  # |x| = m * 2**e with m in [0.5, 1), so floor(log2|x|) = e - 1
        shift = np.maximum(e.astype(np.int64) - 1, fmt.emin) - fmt.mbits  # log2 of the quantum at x
        y = np.ldexp(np.rint(np.ldexp(x, -shift)), shift)
        return np.clip(y, -fmt.max, fmt.max)


def _as_float64(x: np.ndarray) -> np.ndarray:
    a = np.asarray(x)
    if a.dtype.kind not in "biuf":
        raise DtypeError(f"quantize needs an array of real numbers, got dtype {a.dtype}; convert it with np.asarray(x, float)")
    return a.astype(np.float64)


def _blockwise(x: np.ndarray, axis: int, size: int | None, name: str, fn: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """Apply ``fn`` to blocks of ``size`` consecutive elements along ``axis`` (whole axis if None);
    ``fn`` maps an array (..., nblocks, size) to one of the same shape."""
    if x.ndim == 0:
        return _blockwise(x.reshape(1), 0, size, name, fn).reshape(())
    if not isinstance(axis, (int, np.integer)) or not -x.ndim <= axis < x.ndim:
        raise ShapeError(f"axis {axis!r} is out of range for a {x.ndim}-d array; use an integer in {-x.ndim}..{x.ndim - 1}")
    moved = np.moveaxis(x, axis, -1)
    n = moved.shape[-1]
    size = size or n
    if n % size:
        raise ShapeError(f"{name} groups {size} consecutive elements but axis {axis} has length {n}, not a multiple of {size};"
                         f" pad that axis or choose a group size that divides it")
    blocks = moved.reshape(*moved.shape[:-1], n // size, size)
    return np.moveaxis(fn(blocks).reshape(moved.shape), -1, axis)


def _absmax(blocks: np.ndarray) -> np.ndarray:
    return np.max(np.abs(blocks), axis=-1, keepdims=True)


def _symmetric_int(blocks: np.ndarray, levels: int, scale_fmt: FloatFormat) -> np.ndarray:
    """Symmetric absmax quantisation to integers -levels..levels (round half to even), one scale per
    block = absmax / levels rounded to ``scale_fmt``. All-zero blocks stay zero; a block holding inf or
    NaN becomes NaN."""
    absmax = _absmax(blocks)
    scale = round_float(absmax / levels, scale_fmt)
    with np.errstate(invalid="ignore"):
        q = np.clip(np.rint(blocks / np.where(scale > 0, scale, 1.0)), -levels, levels) * scale
    return np.where(np.isfinite(absmax), q, np.nan)


def _mx_fp4(blocks: np.ndarray) -> np.ndarray:
    """OCP MX v1.0 conversion: X = 2**(floor(log2 absmax) - emax_elem), exponent clamped to the e8m0
    range; elements x / X rounded to e2m1 (RNE, saturating to ±6). All-zero blocks stay zero; a block
    holding inf or NaN becomes NaN (the spec's NaN scale)."""
    absmax = _absmax(blocks)
    with np.errstate(invalid="ignore"):
        _, e = np.frexp(absmax)
        scale = np.ldexp(1.0, np.clip(e.astype(np.int64) - 1 - MX_E2M1_EMAX, *E8M0_RANGE))
        q = round_float(blocks / scale, FLOAT_FORMATS["e2m1"]) * scale
    return np.where(np.isfinite(absmax), q, np.nan)


def _ternary(x: np.ndarray) -> np.ndarray:
    """BitNet b1.58 absmean (arXiv:2402.17764, eq. 1-3): gamma = mean|W| over the whole tensor,
    W_q = clip(round(W / (gamma + eps)), -1, 1) * gamma, eps = 1e-5, round half to even."""
    gamma = np.mean(np.abs(x))
    with np.errstate(invalid="ignore"):
        return np.clip(np.rint(x / (gamma + TERNARY_EPS)), -1, 1) * gamma


def quantize(x: np.ndarray, dtype: str, axis: int = -1) -> np.ndarray:
    """The float64 values of ``x`` after being stored in ``dtype`` and read back (same shape).

    - fp32: IEEE cast ``x.astype(float32)`` (overflow gives ±inf, as numpy does).
    - tf32, bf16, fp16, fp8-e4m3, fp8-e5m2: RNE to the mantissa, subnormals kept, overflow SATURATES to
      ±max finite (fp16 65504, bf16 ~3.3895e38, e4m3 448 (OFP8 "fn", no inf), e5m2 57344); NaN stays NaN.
    - int32: round half to even to an integer, saturating to [-2**31, 2**31 - 1]; no scale.
    - int8: per row along ``axis``, symmetric absmax scale to -127..127, scale rounded to fp32.
    - int4 / int4-gN: groups of N (default 128) consecutive elements along ``axis``, symmetric levels
      -7..7 (-8 unused, as GPTQ/AWQ symmetric mode), scale = absmax / 7 rounded to bf16.
    - fp4-mx: OCP MX v1.0 MXFP4, blocks of 32 along ``axis`` with an e8m0 power-of-two scale.
    - ternary: BitNet b1.58 absmean over the whole tensor (``axis`` ignored).
    - an N:M sparse format (``int8-2:4``): :func:`prune_nm` along ``axis``, then its dense format.

    Scaled formats turn a row/group/block holding inf or NaN into NaN. Raises DtypeError for an unknown
    format or non-real input, ShapeError when ``axis`` is bad or its length is not a multiple of the group.
    """
    d = get_dtype(dtype)
    x = _as_float64(x)
    if d.sparse_m:  # N:M sparse: prune, then quantise the kept weights in the dense format
        return quantize(prune_nm(x, d.sparse_n, d.sparse_m, axis), d.dense, axis)
    name = d.name
    if name == "fp32":
        with np.errstate(over="ignore"):
            return x.astype(np.float32).astype(np.float64)
    if name in FLOAT_FORMATS:
        return round_float(x, FLOAT_FORMATS[name])
    if name == "int32":
        return np.clip(np.rint(x), -(2.0**31), 2.0**31 - 1)
    if name == "ternary":
        return _ternary(x) if x.size else x
    if name == "int8":
        return _blockwise(x, axis, None, name, lambda b: _symmetric_int(b, INT8_LEVELS, FLOAT_FORMATS["fp32"]))
    if name.startswith("int4"):
        return _blockwise(x, axis, d.group, name, lambda b: _symmetric_int(b, INT4_LEVELS, FLOAT_FORMATS["bf16"]))
    if name == "fp4-mx":
        return _blockwise(x, axis, MX_BLOCK, name, _mx_fp4)
    raise DtypeError(f"no functional emulation of format {name!r}; use one of fp32, tf32, bf16, fp16, fp8-e4m3, fp8-e5m2,"
                     f" int32, int8, int4-gN, fp4-mx, ternary")


def prune_nm(x: np.ndarray, n: int, m: int, axis: int = -1) -> np.ndarray:
    """Zero all but the ``n`` largest-magnitude elements of every ``m`` consecutive ones along
    ``axis`` (ties: the lower index is kept). Raises ShapeError when the axis length is not a
    multiple of ``m``."""
    x = _as_float64(x)
    if x.ndim == 0 or not -x.ndim <= axis < x.ndim or x.shape[axis] % m:
        raise ShapeError(f"N:M pruning needs an axis whose length is a multiple of M = {m}; got shape {x.shape}, axis {axis}")
    moved = np.moveaxis(x, axis, -1)
    g = moved.reshape(*moved.shape[:-1], moved.shape[-1] // m, m)
    drop = np.argsort(-np.abs(g), axis=-1, kind="stable")[..., n:]
    pruned = g.copy()
    np.put_along_axis(pruned, drop, 0.0, axis=-1)
    return np.moveaxis(pruned.reshape(moved.shape), -1, axis)


def relative_error(reference: np.ndarray, approx: np.ndarray) -> float:
    """||approx - reference||_2 / ||reference||_2 over all elements (0 when both are zero, inf when
    only the reference is)."""
    ref, app = np.asarray(reference, dtype=np.float64), np.asarray(approx, dtype=np.float64)
    if ref.shape != app.shape:
        raise ShapeError(f"relative_error needs arrays of one shape, got {ref.shape} and {app.shape}; compare matching tensors")
    den = float(np.linalg.norm(ref.ravel()))
    num = float(np.linalg.norm((app - ref).ravel()))
    if den == 0.0:
        return 0.0 if num == 0.0 else float("inf")
    return num / den


def unit_roundoff(dtype: str) -> float:
    """Unit roundoff 2**-(mantissa_bits + 1) of a floating format (fp4-mx: of its e2m1 elements)."""
    name = get_dtype(dtype).name
    fmt = FLOAT_FORMATS.get("e2m1" if name == "fp4-mx" else name)
    if fmt is None:
        raise DtypeError(f"{name!r} is not a floating format; unit roundoff is defined for fp32, tf32, bf16, fp16,"
                         f" fp8-e4m3, fp8-e5m2 and fp4-mx")
    return fmt.unit_roundoff
