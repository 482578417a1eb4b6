"""Number-format emulation (workloads/functional/formats.py) checked against references built here
independently: enumerated code tables of the narrow float formats, float32 bit-pattern rounding, numpy's
own float16/float32 casts, and the formats' definitions (OFP8 rev 1.0, OCP MX v1.0, BitNet b1.58)."""

import math

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from scipy.special import erf  # type: ignore[import-untyped]
from xpusim.errors import DtypeError, ShapeError
from xpusim.workloads.functional.formats import FLOAT_FORMATS, quantize, relative_error, round_float, unit_roundoff

FLOATS = ["fp32", "tf32", "bf16", "fp16", "fp8-e4m3", "fp8-e5m2"]
ALL = FLOATS + ["int32", "int8", "int4", "int4-g32", "fp4-mx", "ternary"]
BF16_MAX = (2 - 2**-7) * 2.0**127
TF32_MAX = (2 - 2**-10) * 2.0**127
F32_MAX = float(np.finfo(np.float32).max)
SETTINGS = settings(max_examples=50, deadline=None)


def code_table(ebits: int, mbits: int, bias: int, reserved: str):
    """Every finite value of a sign/exponent/mantissa format, with whether its mantissa code is even.
    reserved: 'ieee' (top exponent = inf/NaN), 'fn' (only all-ones exponent+mantissa = NaN), 'none'."""
    vals, even = [], []
    top = 2**ebits - 1
    for code in range(2 ** (1 + ebits + mbits)):
        s, e, m = code >> (ebits + mbits), (code >> mbits) & top, code & (2**mbits - 1)
        if (reserved == "ieee" and e == top) or (reserved == "fn" and e == top and m == 2**mbits - 1):
            continue
        v = (m / 2**mbits) * 2.0 ** (1 - bias) if e == 0 else (1 + m / 2**mbits) * 2.0 ** (e - bias)
        vals.append(-v if s else v)
        even.append(m % 2 == 0)
    return np.array(vals), np.array(even)


TABLES = {
    "fp8-e4m3": code_table(4, 3, 7, "fn"),
    "fp8-e5m2": code_table(5, 2, 15, "ieee"),
    "e2m1": code_table(2, 1, 1, "none"),
}


def nearest_even(x: np.ndarray, table) -> np.ndarray:
    """Reference rounding: saturate to the table's range, then nearest value, ties to the even mantissa code."""
    vals, even = table
    x = np.clip(x, vals.min(), vals.max())
    dist = np.abs(vals[None, :] - x[:, None])
    best = dist == dist.min(axis=1, keepdims=True)
    tie = best.sum(axis=1) > 1
    pick = np.where(tie[:, None], best & even[None, :], best)
    return vals[np.argmax(pick, axis=1)]


def matrices(rows=2, cols=128, lo=1e-6, hi=1e6):
    """Arrays with magnitudes in [lo, hi] or zero (keeps scales of scaled formats out of their subnormals)."""
    arrays = hnp.arrays(np.float64, (rows, cols), elements=st.floats(-hi, hi))
    return arrays.map(lambda a: np.where(np.abs(a) < lo, 0.0, a))


# ---------------------------------------------------------------- known values


def test_known_values_narrow_floats():
    assert quantize(np.array([448 * 1.1]), "fp8-e4m3")[0] == 448.0
    assert quantize(np.array([-1e6, np.inf, -np.inf]), "fp8-e4m3").tolist() == [-448.0, 448.0, -448.0]
    assert quantize(np.array([0.3]), "fp8-e4m3")[0] == nearest_even(np.array([0.3]), TABLES["fp8-e4m3"])[0] == 0.3125
    assert quantize(np.array([60000.0, 61440.0]), "fp8-e5m2").tolist() == [57344.0, 57344.0]  # 61440: tie -> 65536 -> saturates
    assert quantize(np.array([70000.0]), "fp16")[0] == 65504.0
    assert quantize(np.array([1e39]), "bf16")[0] == BF16_MAX
    assert quantize(np.array([1.5 * 2**-10]), "fp8-e4m3")[0] == 2**-9  # subnormal grid: 0.75 * 2**-9 rounds up
    for d in FLOATS:
        assert np.isnan(quantize(np.array([np.nan]), d)[0])


def test_bf16_ties_to_even():
    out = quantize(np.array([1 + 2**-8, 1 + 3 * 2**-8, 1 + 2**-8 + 2**-30]), "bf16")
    assert out.tolist() == [1.0, 1 + 2**-6, 1 + 2**-7]


@pytest.mark.parametrize("name", list(TABLES))
def test_every_midpoint_rounds_to_even_code(name):
    vals, even = TABLES[name]
    pos = np.unique(vals[vals >= 0])
    mids = (pos[:-1] + pos[1:]) / 2
    got = round_float(mids, FLOAT_FORMATS[name]) if name == "e2m1" else quantize(mids, name)
    expected = nearest_even(mids, TABLES[name])
    assert np.array_equal(got, expected)
    assert np.array_equal(round_float(-mids, FLOAT_FORMATS[name]), -expected)
    assert set(np.unique(np.abs(expected))) <= set(pos)


@pytest.mark.parametrize("name", ["fp8-e4m3", "fp8-e5m2"])
@SETTINGS
@given(data=st.data())
def test_fp8_matches_enumerated_table(name, data):
    vmax = TABLES[name][0].max()
    x = data.draw(hnp.arrays(np.float64, 16, elements=st.floats(-1.5 * vmax, 1.5 * vmax)))
    assert np.array_equal(quantize(x, name), nearest_even(x, TABLES[name]))


@SETTINGS
@given(x=hnp.arrays(np.float64, 16, elements=st.floats(-8.0, 8.0)))
def test_e2m1_matches_enumerated_table(x):
    assert np.array_equal(round_float(x, FLOAT_FORMATS["e2m1"]), nearest_even(x, TABLES["e2m1"]))
    assert sorted(set(TABLES["e2m1"][0].tolist()) & {0, 0.5, 1, 1.5, 2, 3, 4, 6}) == [0, 0.5, 1, 1.5, 2, 3, 4, 6]


@SETTINGS
@given(x=hnp.arrays(np.float64, 32, elements=st.floats(-65504.0, 65504.0)))
def test_fp16_bit_exact_with_numpy(x):
    assert np.array_equal(quantize(x, "fp16").view(np.uint64), x.astype(np.float16).astype(np.float64).view(np.uint64))


def test_fp16_and_generic_fp32_match_numpy_casts_log_uniform(rng):
    mag = 2.0 ** rng.uniform(-30, 15.99, 100_000) * rng.choice([-1.0, 1.0], 100_000)
    assert np.array_equal(quantize(mag, "fp16"), mag.astype(np.float16).astype(np.float64))
    mag32 = 2.0 ** rng.uniform(-150, 127.9, 100_000) * rng.choice([-1.0, 1.0], 100_000)
    assert np.array_equal(round_float(mag32, FLOAT_FORMATS["fp32"]), mag32.astype(np.float32).astype(np.float64))


def _round_f32_bits(x32: np.ndarray, drop: int) -> np.ndarray:
    """RNE of a float32 bit pattern to its upper 32 - drop bits (bf16: 16, tf32: 13)."""
    b = x32.view(np.uint32).astype(np.uint64)
    r = (b + (1 << (drop - 1)) - 1 + ((b >> drop) & 1)) & (0xFFFFFFFF ^ ((1 << drop) - 1))
    return r.astype(np.uint32).view(np.float32).astype(np.float64)


@SETTINGS
@given(x=hnp.arrays(np.float32, 32, elements=st.floats(-BF16_MAX, BF16_MAX, width=32)))
def test_bf16_matches_float32_bit_rounding(x):
    assert np.array_equal(quantize(x.astype(np.float64), "bf16"), _round_f32_bits(x, 16))


@SETTINGS
@given(x=hnp.arrays(np.float32, 32, elements=st.floats(-TF32_MAX, TF32_MAX, width=32)))
def test_tf32_matches_float32_bit_rounding(x):
    assert np.array_equal(quantize(x.astype(np.float64), "tf32"), _round_f32_bits(x, 13))


@SETTINGS
@given(x=hnp.arrays(np.float64, 32, elements=st.floats(-F32_MAX, F32_MAX)))
def test_fp32_is_numpy_cast(x):
    assert np.array_equal(quantize(x, "fp32"), x.astype(np.float32).astype(np.float64))
    assert np.array_equal(round_float(x, FLOAT_FORMATS["fp32"]), quantize(x, "fp32"))


def test_unit_roundoff_values():
    expect = {"fp32": 2**-24, "tf32": 2**-11, "bf16": 2**-8, "fp16": 2**-11,
              "fp8-e4m3": 2**-4, "fp8-e5m2": 2**-3, "fp4-mx": 2**-2}
    assert {d: unit_roundoff(d) for d in expect} == expect


# ---------------------------------------------------------------- properties


@pytest.mark.parametrize("name", [d for d in ALL if d != "ternary"])
@SETTINGS
@given(x=matrices())
def test_idempotent(name, x):
    q = quantize(x, name)
    assert np.array_equal(quantize(q, name), q)


@pytest.mark.parametrize("name", FLOATS)
@SETTINGS
@given(x=hnp.arrays(np.float64, 16, elements=st.floats(allow_nan=True, allow_infinity=True)))
def test_float_idempotent_full_range(name, x):
    q = quantize(x, name)
    assert np.array_equal(quantize(q, name), q, equal_nan=True)


@SETTINGS
@given(x=matrices(lo=1e-3, hi=1e3))
def test_ternary_codes_idempotent(x):
    # absmean is not idempotent on values (gamma shrinks by the fraction of nonzeros), but the codes are
    gamma = np.mean(np.abs(x))
    assume(gamma > 1e-4)
    q, qq = quantize(x, "ternary"), quantize(quantize(x, "ternary"), "ternary")
    assert np.array_equal(np.sign(qq), np.sign(q))
    assert np.allclose(np.abs(qq[qq != 0]), np.mean(np.abs(q)), rtol=1e-12)


@pytest.mark.parametrize("name", ALL)
@SETTINGS
@given(x=matrices())
def test_sign_symmetric(name, x):
    assert np.array_equal(quantize(-x, name), -quantize(x, name))


@pytest.mark.parametrize("name", FLOATS)
@SETTINGS
@given(data=st.data())
def test_relative_error_within_unit_roundoff(name, data):
    fmt = FLOAT_FORMATS[name]
    x = data.draw(hnp.arrays(np.float64, 16, elements=st.floats(2.0**fmt.emin, fmt.max)))
    x = x * data.draw(hnp.arrays(np.float64, 16, elements=st.sampled_from([-1.0, 1.0])))
    assert np.all(np.abs(quantize(x, name) - x) <= unit_roundoff(name) * np.abs(x))
    tiny = x * 2.0 ** (fmt.emin - 1) / fmt.max  # subnormal range: absolute error <= half the subnormal step
    assert np.all(np.abs(quantize(tiny, name) - tiny) <= 2.0 ** (fmt.emin - fmt.mbits - 1))


@SETTINGS
@given(x=matrices(rows=3, cols=64, lo=1e-3, hi=1e3))
def test_int_scaled_grids(x):
    q8 = quantize(x, "int8")
    s8 = quantize(np.abs(x).max(axis=1, keepdims=True) / 127, "fp32")
    k8 = np.divide(q8, s8, out=np.zeros_like(q8), where=s8 > 0)
    assert np.array_equal(k8, np.rint(k8)) and np.all(np.abs(k8) <= 127)
    assert np.all(np.abs(q8 - x) <= s8 / 2 + 1e-12 * np.abs(x))
    g = x.reshape(3, 2, 32)
    s4 = quantize(np.abs(g).max(axis=2, keepdims=True) / 7, "bf16")
    q4 = quantize(x, "int4-g32").reshape(3, 2, 32)
    k4 = np.divide(q4, s4, out=np.zeros_like(q4), where=s4 > 0)
    assert np.array_equal(k4, np.rint(k4)) and np.all(np.abs(k4) <= 7)
    assert np.all(np.abs(q4 - g) <= np.maximum(s4 / 2, np.abs(g) - 7 * s4) + 1e-12 * np.abs(g))


def test_int8_axis_and_zero_rows(rng):
    x = rng.standard_normal((5, 7))
    x[2] = 0
    assert np.array_equal(quantize(x, "int8", axis=0), quantize(x.T, "int8").T)
    assert not quantize(x, "int8")[2].any()
    q = quantize(x, "int8")
    assert np.allclose(np.abs(q).max(axis=1)[[0, 1, 3, 4]], np.abs(x).max(axis=1)[[0, 1, 3, 4]], rtol=1e-6)


def test_int4_groups_independent(rng):
    x = rng.standard_normal((4, 256))
    y = x.copy()
    y[:, :128] *= 100
    assert np.array_equal(quantize(x, "int4")[:, 128:], quantize(y, "int4-g128")[:, 128:])
    assert not np.array_equal(quantize(x, "int4-g256")[:, 128:], quantize(y, "int4-g256")[:, 128:])


def test_int4_g128_error_of_normal_matrix_below_derived_bound(rng):
    # Uniform rounding-error model: each element errs by U(-s/2, s/2), s = absmax/7, so
    # rel^2 ~ E[M^2] / (49 * 12) with M the max of |z| over 128 standard normals; E[M^2] from its CDF erf(t/sqrt2)^128.
    t = np.linspace(0, 12, 200_001)
    e_m2 = np.trapezoid(2 * t * (1 - erf(t / math.sqrt(2)) ** 128), t)
    predicted = math.sqrt(e_m2 / (49 * 12)) * (1 + 2**-8)  # bf16 scale may be up to 2**-8 coarser
    x = rng.standard_normal((64, 1024))
    q = quantize(x, "int4-g128")
    err = relative_error(x, q)
    assert 0.1 < predicted < 0.13
    assert 0.9 * predicted < err < 1.1 * predicted
    s = quantize(np.abs(x.reshape(64, 8, 128)).max(axis=2) / 7, "bf16")
    assert err <= math.sqrt(np.sum(128 * (s / 2) ** 2)) / np.linalg.norm(x)  # worst case: every element off by s/2


@SETTINGS
@given(x=matrices(rows=2, cols=64, lo=1e-30, hi=1e30))
def test_fp4_mx_values_on_scaled_e2m1_grid(x):
    q = quantize(x, "fp4-mx").reshape(2, 2, 32)
    absmax = np.abs(x.reshape(2, 2, 32)).max(axis=2, keepdims=True)
    scale = 2.0 ** (np.floor(np.log2(np.where(absmax > 0, absmax, 1.0))) - 2)
    k = q / scale
    assert np.all(np.isin(np.abs(k), [0, 0.5, 1, 1.5, 2, 3, 4, 6]))
    assert np.array_equal(k, nearest_even((x.reshape(2, 2, 32) / scale).ravel(), TABLES["e2m1"]).reshape(k.shape))


def test_fp4_mx_known_blocks(rng):
    block = np.concatenate([[4.0, 7.5, -7.0], rng.uniform(-6, 6, 29)])  # absmax 7.5 -> X = 2**(2-2) = 1
    q = quantize(block, "fp4-mx")
    assert q[:3].tolist() == [4.0, 6.0, -6.0]
    assert np.array_equal(q, nearest_even(block, TABLES["e2m1"]))
    assert not quantize(np.zeros((3, 64)), "fp4-mx").any()
    low = np.zeros(32)
    low[:2] = [2.0**-126, 0.1 * 2.0**-126]  # scale exponent -128 clamps to -127: 0.2 rounds to 0
    assert quantize(low, "fp4-mx")[:2].tolist() == [2.0**-126, 0.0]
    high = np.zeros(32)
    high[0] = 2.0**130  # scale exponent 128 clamps to 127: 8 saturates to 6
    assert quantize(high, "fp4-mx")[0] == 6 * 2.0**127


@SETTINGS
@given(x=matrices(rows=3, cols=20, lo=1e-6, hi=1e6))
def test_ternary_three_values(x):
    q = quantize(x, "ternary")
    gamma = np.mean(np.abs(x))
    assert len(np.unique(q)) <= 3
    assert set(np.unique(q).tolist()) <= {-gamma, 0.0, gamma}


def test_ternary_known_and_int32():
    x = np.array([1.0, 0.1, -2.0, 0.0])
    g = np.mean(np.abs(x))
    assert quantize(x, "ternary").tolist() == [g, 0.0, -g, 0.0]
    assert quantize(np.array([2.5, 3.5, -2.5, 1e10, -1e10]), "int32").tolist() == [2, 4, -2, 2**31 - 1, -(2**31)]


def test_relative_error():
    assert relative_error(np.zeros(3), np.zeros(3)) == 0.0
    assert relative_error(np.array([3.0, 4.0]), np.array([3.0, 9.0])) == 1.0
    assert relative_error(np.zeros(2), np.ones(2)) == math.inf


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize(("name", "shape", "axis"), [("int4-g128", (4, 100), -1), ("fp4-mx", (33, 64), 0), ("int4", (100,), 0)])
def test_group_not_dividing_axis_raises_shape_error(name, shape, axis):
    with pytest.raises(ShapeError) as e:
        quantize(np.ones(shape), name, axis=axis)
    assert "\n" not in str(e.value) and "multiple" in str(e.value)


def test_bad_input_errors():
    with pytest.raises(DtypeError, match="unknown dtype"):
        quantize(np.ones(4), "fp7")
    with pytest.raises(ShapeError, match="axis"):
        quantize(np.ones((2, 32)), "int8", axis=2)
    with pytest.raises(DtypeError):
        quantize(np.array(["a", "b"]), "bf16")
    with pytest.raises(DtypeError):
        unit_roundoff("int8")
    with pytest.raises(ShapeError):
        relative_error(np.ones(3), np.ones(4))
