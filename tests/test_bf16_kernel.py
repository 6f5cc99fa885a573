"""bf16 dot-product engine: rounding, layout, documented arithmetic and its error bound.

The instruction itself runs only where ``HAS_BF16``; everything else (rounding,
packing, the tiling drivers through the exact emulation, the bound) is tested
on every CPU, because the emulation shares the drivers with the instruction.
"""
import os
import subprocess
import sys

import numba
import numpy as np
import pytest
from numba import prange
from numba.core.errors import TypingError

from vqcore.kernels import bf16

needs_bf16 = pytest.mark.skipif(not bf16.HAS_BF16, reason="CPU lacks avx512_bf16 (or VQCORE_BF16=0)")
ENGINES = [pytest.param(True, id="emulated"),
           pytest.param(False, id="vdpbf16ps", marks=needs_bf16)]
TINY = 2.0 ** -126  # smallest normal float32


# ---------------------------------------------------------------------------
# slow, obviously-correct references
# ---------------------------------------------------------------------------

def ref_bf16_bits(x):
    """bf16 bits of float32 ``x``: truncate, then round up past half or on a tie to odd."""
    bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    kept, dropped = bits >> 16, bits & 0xFFFF
    up = (dropped > 0x8000) | ((dropped == 0x8000) & (kept & 1 == 1))
    r = kept + up  # a carry into the exponent is right, up to inf (0x7F80)
    denormal = (r & 0x7F80) == 0
    return np.where(denormal, r & 0x8000, r).astype(np.uint16)


def ref_bf16_value(x):
    return (ref_bf16_bits(x).astype(np.uint32) << 16).view(np.float32)


def padded(values, dp):
    out = np.zeros((values.shape[0], dp), dtype=np.float32)
    out[:, :values.shape[1]] = values
    return out


def ref_vdpbf16ps(x, c):
    """The documented arithmetic, step by step: per pair, element 2q+1 then 2q, fp32 FMA, FTZ.

    Products of bf16 values are exact in float64 and so is the float64 sum with an fp32
    accumulator unless their exponents are far apart, in which case rounding the float64
    sum to float32 still gives the correctly rounded fp32 sum (the small term is far
    below half an fp32 ulp).
    """
    dp = x.shape[1] + (x.shape[1] & 1)
    xr = padded(ref_bf16_value(x), dp).astype(np.float64)
    cr = padded(ref_bf16_value(c), dp).astype(np.float64)
    acc = np.zeros((x.shape[0], c.shape[0]), dtype=np.float32)
    for q in range(dp // 2):
        for e in (2 * q + 1, 2 * q):
            acc = (acc.astype(np.float64) + np.outer(xr[:, e], cr[:, e])).astype(np.float32)
            acc = np.where(np.abs(acc) < TINY, np.float32(0) * acc, acc)  # FTZ, signed zero
    return acc


def exact_and_bound(x, c):
    """float64 dot of the rounded inputs, and the module's bound widened by float64's own error."""
    xr = ref_bf16_value(x).astype(np.float64)
    cr = ref_bf16_value(c).astype(np.float64)
    exact = xr @ cr.T
    mag = np.abs(xr) @ np.abs(cr).T
    gamma, eta = bf16.error_bound_terms(x.shape[1])
    f64 = 2 * x.shape[1] * 2.0 ** -53  # float64 error of both references (products exact)
    return exact, (gamma + f64) * mag + eta


def scores(x, c, emulate):
    pairs = np.zeros((x.shape[0], (x.shape[1] + 1) // 2), dtype=np.int32)
    bf16.to_bf16_pairs(x, pairs)
    out = np.full((x.shape[0], c.shape[0]), np.nan, dtype=np.float32)
    got = bf16.dot(pairs, bf16.pack_codes(c), c.shape[0], out=out, emulate=emulate)
    assert got is out
    return got


def check_scores(x, c, emulate):
    got = scores(x, c, emulate)
    assert got.shape == (x.shape[0], c.shape[0]) and got.dtype == np.float32
    # The documented semantics, bit for bit (for the instruction: the empirical check).
    np.testing.assert_array_equal(got, ref_vdpbf16ps(x, c))
    exact, bound = exact_and_bound(x, c)
    err = np.abs(got.astype(np.float64) - exact)
    assert np.all(err <= bound), np.max(err / bound)
    return got, err, bound


# ---------------------------------------------------------------------------
# rounding
# ---------------------------------------------------------------------------

def wide_floats(rng, shape):
    """float32 values over the whole exponent range, every sign and low-bit pattern."""
    bits = rng.integers(0, 2 ** 32, size=shape, dtype=np.uint64).astype(np.uint32)
    exp = rng.integers(0, 255, size=shape).astype(np.uint32)  # 255 (inf/nan) excluded
    bits = (bits & np.uint32(0x807FFFFF)) | (exp << np.uint32(23))
    bits[..., ::7] &= np.uint32(0xFFFF8000)  # exact ties and near-ties
    bits[..., ::7] |= np.uint32(0x8000)
    return bits.view(np.float32)


@pytest.mark.parametrize("d", [1, 2, 3, 31, 256])
def test_to_bf16_pairs_matches_integer_reference(d):
    x = wide_floats(np.random.default_rng(d), (9, d))
    pairs = np.full((9, (d + 1) // 2), -1, dtype=np.int32)
    bf16.to_bf16_pairs(x, pairs)
    halves = pairs.view(np.uint32)
    want = ref_bf16_bits(x).astype(np.uint32)
    np.testing.assert_array_equal(halves & 0xFFFF, want[:, 0::2])
    np.testing.assert_array_equal(halves[:, :d // 2] >> 16, want[:, 1::2])
    if d & 1:
        np.testing.assert_array_equal(halves[:, -1] >> 16, 0)  # zero padding
    got = bf16.bf16_round(x)
    np.testing.assert_array_equal(got.view(np.uint32), want << 16)


@pytest.mark.parametrize("value, want", [
    (1.0 + 2.0 ** -8, 1.0),                          # tie to even (down)
    (1.0 + 3 * 2.0 ** -8, 1.0 + 2.0 ** -6),          # tie to even (up)
    (-(1.0 + 2.0 ** -8 + 2.0 ** -20), -(1.0 + 2.0 ** -7)),  # past the tie
    (np.finfo(np.float32).max, np.inf),              # above the largest bf16: inf
    ((255 / 128) * 2.0 ** 127, (255 / 128) * 2.0 ** 127),  # largest bf16 stays
    (2.0 ** -130, 0.0),                              # bf16 denormal: flushed (DAZ)
    (2.0 ** -126 * (1 - 2.0 ** -9), 2.0 ** -126),    # rounds up into the normal range
])
def test_rounding_hand_values(value, want):
    got = bf16.bf16_round(np.array([value, -value], dtype=np.float32))
    np.testing.assert_array_equal(got, np.array([want, -want], dtype=np.float32))


def test_overflow_threshold_is_the_midpoint():
    # 0x7F7F8000 lies halfway between the largest bf16 (odd) and 2**128: rounds to inf.
    x = np.array([0x7F7F7FFF, 0x7F7F8000], dtype=np.uint32).view(np.float32)
    np.testing.assert_array_equal(bf16.bf16_round(x), [(255 / 128) * 2.0 ** 127, np.inf])


def test_residual_is_exact():
    x = wide_floats(np.random.default_rng(3), (50, 8))
    x = x[np.abs(x).max(axis=1) < 1e38]
    r = bf16.bf16_round(x)
    np.testing.assert_array_equal((x - r).astype(np.float64),
                                  x.astype(np.float64) - r.astype(np.float64))


# ---------------------------------------------------------------------------
# layout
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("k, d", [(1, 1), (33, 3), (64, 256)])
def test_pack_codes_layout(k, d):
    c = np.random.default_rng(k).standard_normal((k, d)).astype(np.float32)
    packed = bf16.pack_codes(c)
    pairs = np.zeros((k, (d + 1) // 2), dtype=np.int32)
    bf16.to_bf16_pairs(c, pairs)
    ntiles = -(-k // bf16.TILE_CODES)
    assert packed.shape == (ntiles, (d + 1) // 2, bf16.TILE_CODES)
    assert packed.dtype == np.int32 and packed.flags.c_contiguous
    assert packed.ctypes.data % 64 == 0
    for j in range(ntiles * bf16.TILE_CODES):
        want = pairs[j] if j < k else 0
        np.testing.assert_array_equal(packed[j // bf16.TILE_CODES, :, j % bf16.TILE_CODES], want)


def test_pack_codes_rejects_bad_input():
    with pytest.raises(TypeError, match="float32"):
        bf16.pack_codes(np.zeros((3, 4)))
    with pytest.raises(ValueError, match=r"\(k, d\)"):
        bf16.pack_codes(np.zeros(4, dtype=np.float32))
    with pytest.raises(ValueError, match=r"\(k, d\)"):
        bf16.pack_codes(np.zeros((0, 4), dtype=np.float32))


def test_dot_rejects_mismatched_arrays():
    pairs = np.zeros((3, 2), dtype=np.int32)
    with pytest.raises(ValueError, match="does not fit"):
        bf16.dot(pairs, bf16.pack_codes(np.zeros((5, 6), np.float32)), 5, emulate=True)
    with pytest.raises(ValueError, match="k=33"):
        bf16.dot(pairs, bf16.pack_codes(np.zeros((5, 4), np.float32)), 33, emulate=True)
    with pytest.raises(ValueError, match="out must be"):
        bf16.dot(pairs, bf16.pack_codes(np.zeros((5, 4), np.float32)), 5,
                 out=np.empty((3, 6), np.float32), emulate=True)
    with pytest.raises(TypeError, match="a_pairs"):
        bf16.dot(pairs.astype(np.int64), bf16.pack_codes(np.zeros((5, 4), np.float32)), 5,
                 emulate=True)


# ---------------------------------------------------------------------------
# scores: the documented arithmetic and the bound
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("emulate", ENGINES)
@pytest.mark.parametrize("n", [1, 7, 8, 9, 33])
@pytest.mark.parametrize("d", [1, 2, 3, 31, 256])
@pytest.mark.parametrize("k", [1, 31, 32, 33, 1000])
def test_scores_grid(emulate, n, d, k):
    rng = np.random.default_rng(1000 * n + 10 * d + k)
    x = rng.standard_normal((n, d)).astype(np.float32)
    c = rng.standard_normal((k, d)).astype(np.float32)
    check_scores(x, c, emulate)


def adversarial(case, rng):
    if case == "dynamic_range":  # magnitudes 2**-40 .. 2**40 within each vector
        x = rng.standard_normal((9, 64)) * 2.0 ** rng.integers(-40, 40, (9, 64))
        c = rng.standard_normal((40, 64)) * 2.0 ** rng.integers(-40, 40, (40, 64))
    elif case == "cancellation":  # large terms that cancel, small ones that remain
        base = rng.standard_normal((1, 64)) * 1e6
        x = np.concatenate([base, -base], axis=1) + rng.standard_normal((9, 128))
        c = np.concatenate([base, base], axis=1) + rng.standard_normal((40, 128)) * 1e-3
    elif case == "offset":  # uncentred data: every product positive and large
        x = 300 + rng.standard_normal((9, 31))
        c = 300 + rng.standard_normal((40, 31))
    elif case == "huge":  # partial sums near 2**126, still below FLT_MAX
        x = rng.uniform(-1, 1, (9, 64)) * 2.0 ** 60
        c = rng.uniform(-1, 1, (40, 64)) * 2.0 ** 60
    elif case == "d1":
        x, c = rng.standard_normal((9, 1)) * 1e10, rng.standard_normal((40, 1)) * 1e-10
    elif case == "k1":
        x, c = rng.standard_normal((33, 5)), rng.standard_normal((1, 5))
    elif case == "near_underflow":  # products and partial sums cross 2**-126: FTZ at work
        x = rng.standard_normal((9, 31)) * 2.0 ** -60
        c = rng.standard_normal((40, 31)) * 2.0 ** -66
    else:
        raise AssertionError(case)
    return x.astype(np.float32), c.astype(np.float32)


@pytest.mark.parametrize("emulate", ENGINES)
@pytest.mark.parametrize("case", ["dynamic_range", "cancellation", "offset", "huge", "d1",
                                  "k1", "near_underflow"])
def test_bound_holds_on_adversarial_data(emulate, case):
    x, c = adversarial(case, np.random.default_rng(7))
    got, err, bound = check_scores(x, c, emulate)
    assert np.all(np.isfinite(got))
    if case == "near_underflow":
        # Flushed partial sums lose up to 2**-126 each: the bound needs its eta term here.
        gamma, eta = bf16.error_bound_terms(x.shape[1])
        assert np.any(err > bound - eta)


@pytest.mark.parametrize("emulate", ENGINES)
def test_products_below_normal_range_flush_to_zero(emulate):
    x = np.full((3, 4), 2.0 ** -70, dtype=np.float32)
    c = np.full((2, 4), 2.0 ** -70, dtype=np.float32)
    got = scores(x, c, emulate)
    np.testing.assert_array_equal(got, 0.0)  # each 2**-140 step is flushed (FTZ)
    exact, bound = exact_and_bound(x, c)
    assert np.all(np.abs(exact) <= bound)


def test_error_bound_terms():
    gamma, eta = bf16.error_bound_terms(255)
    m = 256
    assert gamma >= m * 2.0 ** -24 / (1 - m * 2.0 ** -24) > 0
    assert gamma <= (m + 1) * 2.0 ** -24
    assert eta >= m * 2.0 ** -126
    assert bf16.error_bound_terms(255) == bf16.error_bound_terms(256)
    for d in (5790, 5792):  # the simpler (dp + 2) u holds up to dp = 5790 (docstring)
        assert (bf16.error_bound_terms(d)[0] <= (d + 2) * 2.0 ** -24) == (d == 5790)
    with pytest.raises(ValueError, match="d=0"):
        bf16.error_bound_terms(0)


# ---------------------------------------------------------------------------
# dot_block: the lead's entry point, inside his own prange
# ---------------------------------------------------------------------------

@numba.njit(parallel=True)
def blocked_emulated(a_pairs, b_packed, k, out, rows):
    n = a_pairs.shape[0]
    for b in prange((n + rows - 1) // rows):
        r0 = b * rows
        r1 = min(n, r0 + rows)
        bf16.dot_block_emulated(a_pairs, r0, r1, b_packed, k, out[r0:r1])


@numba.njit(parallel=True)
def blocked_hardware(a_pairs, b_packed, k, out, rows):
    n = a_pairs.shape[0]
    for b in prange((n + rows - 1) // rows):
        r0 = b * rows
        r1 = min(n, r0 + rows)
        bf16.dot_block(a_pairs, r0, r1, b_packed, k, out[r0:r1])


@pytest.mark.parametrize("emulate", ENGINES)
def test_dot_block_rows_and_untouched_columns(emulate):
    rng = np.random.default_rng(5)
    x = rng.standard_normal((37, 19)).astype(np.float32)
    c = rng.standard_normal((45, 19)).astype(np.float32)
    pairs = np.zeros((37, 10), dtype=np.int32)
    bf16.to_bf16_pairs(x, pairs)
    packed = bf16.pack_codes(c)
    want = ref_vdpbf16ps(x, c)
    # A wider buffer (like a caller's slab): only [rows, :k] may change.
    out = np.full((20, 64), np.nan, dtype=np.float32)
    block = bf16.dot_block_emulated if emulate else bf16.dot_block
    block(pairs, 3, 20, packed, 40, out)
    np.testing.assert_array_equal(out[:17, :40], want[3:20, :40])
    assert np.all(np.isnan(out[:17, 40:])) and np.all(np.isnan(out[17:]))
    # Called from the caller's own parallel loop, with row blocks of odd height.
    full = np.empty((37, 45), dtype=np.float32)
    (blocked_emulated if emulate else blocked_hardware)(pairs, packed, 45, full, 11)
    np.testing.assert_array_equal(full, want)


# ---------------------------------------------------------------------------
# feature guard, environment switch, caching
# ---------------------------------------------------------------------------

@pytest.mark.skipif(bf16.HAS_BF16, reason="only where the instruction is unavailable")
def test_hardware_path_refuses_cleanly_without_bf16():
    pairs = np.zeros((2, 1), dtype=np.int32)
    packed = bf16.pack_codes(np.ones((3, 2), np.float32))
    with pytest.raises(RuntimeError, match="emulate=True"):
        bf16.dot(pairs, packed, 3)
    # Compiling the instruction here would abort inside LLVM: a typing error instead.
    with pytest.raises(TypingError, match="avx512_bf16"):
        bf16.dot_block(pairs, 0, 2, packed, 3, np.empty((2, 3), np.float32))


def run_python(code, **env):
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env={**os.environ, **env}, timeout=300)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_env_var_turns_the_engine_off():
    code = "from vqcore.kernels import bf16; print(bf16.HAS_BF16)"
    assert run_python(code, VQCORE_BF16="0") == "False"


def test_kernels_load_from_numba_cache(tmp_path):
    code = (
        "import numpy as np\n"
        "from vqcore.kernels import bf16\n"
        "x = np.ones((9, 3), np.float32); p = np.zeros((9, 2), np.int32)\n"
        "bf16.to_bf16_pairs(x, p); b = bf16.pack_codes(np.ones((33, 3), np.float32))\n"
        "fns = [bf16.dot_block_emulated] + ([bf16.dot_block] if bf16.HAS_BF16 else [])\n"
        "for f in fns:\n"
        "    out = np.empty((9, 33), np.float32); f(p, 0, 9, b, 33, out)\n"
        "    assert (out == 3).all(), out\n"
        "print(all(sum(f.stats.cache_hits.values()) > 0 for f in fns))\n"
    )
    run_python(code, NUMBA_CACHE_DIR=str(tmp_path))
    assert run_python(code, NUMBA_CACHE_DIR=str(tmp_path)) == "True"
