"""bf16 dot products through the AVX-512 ``vdpbf16ps`` instruction.

The engine behind certified nearest search: scores ``x . c`` are computed from
bf16-rounded inputs with fp32 accumulation, and every score's rounding error
has the rigorous bound given below, so a caller can keep all candidates the
error could reorder and re-rank them exactly.

Arithmetic of ``vdpbf16ps`` (Intel SDM, "VDPBF16PS -- Dot Product of BF16
Pairs Accumulated into Packed Single Precision"; AMD Zen 4 reports the same
CPUID bit, and the tests check this arithmetic bit for bit on any CPU that
runs the instruction)
---------------------------------------------------------------------------
Each 32-bit lane ``j`` holds one bf16 pair of each source and performs, in
this order, two fp32 fused multiply-adds::

    acc = acc + a.bf16[2j+1] * b.bf16[2j+1]     # high element first
    acc = acc + a.bf16[2j+0] * b.bf16[2j+0]

* each step is an FMA: the product of two bf16 values (8-bit significands,
  so 16 bits) is exact, and the sum is rounded once, to nearest even;
* inputs are DAZ (bf16 and accumulator denormals read as zero) and outputs
  FTZ (a result below ``2**-126`` in magnitude becomes a signed zero);
* MXCSR is neither consulted nor updated: the rounding mode, DAZ/FTZ bits and
  exception masks of the thread have no effect, and no flag is raised.

This module never hands the instruction a denormal: :func:`to_bf16_pairs`,
:func:`pack_codes` and :func:`bf16_round` flush bf16 values whose exponent
field is zero to a signed zero, so the value the hardware multiplies is
exactly ``bf16_round(a)``.

Error bound
-----------
Let ``x_p = bf16_round(a)[i, p] * bf16_round(c)[j, p]`` (exact real products)
and ``m = dp`` (``d`` rounded up to even; padding adds exact zeros).  A lane
performs ``m`` steps ``s <- fl(s + x_p)`` starting from ``s = 0``.  With
``u = 2**-24`` and ``lam = 2**-126`` each step obeys
``fl(t) = t (1 + delta) + eta`` with ``|delta| <= u``, ``|eta| <= lam``
(``eta`` is nonzero only when FTZ flushes a result), so, by the usual
recursive-summation argument (Higham, *Accuracy and Stability of Numerical
Algorithms*, 2nd ed., section 4.2)::

    |out[i, j] - sum_p x_p|  <=  gamma_m * sum_p |x_p|  +  m * lam * (1 + gamma_m)
    gamma_m = m u / (1 - m u)

:func:`error_bound_terms` returns ``(gamma_m, m * lam * (1 + gamma_m))``
rounded upwards.  ``gamma_m <= (m + 2) * u`` (the simpler constant
``(d/2 + 1) * 2 * u`` for even ``d``) while ``m <= 5790``.  The bound counts
one rounding for every one of the ``m``
products (the first, into a zero accumulator, is in fact exact unless it
underflows), so it also holds if an implementation fused both products of a
pair into one rounding.  It needs no overflow: every partial sum is at most
``(1 + gamma_m) * sum_p |x_p|`` in magnitude, so the results are finite when
that is below ``FLT_MAX``.

bf16 rounding of the inputs
---------------------------
``float32 -> bf16`` rounds to nearest, ties to even, on the bit pattern:
``(bits + 0x7FFF + ((bits >> 16) & 1)) >> 16``.  Finite values of magnitude
``>= 0x7F7F8000`` as float32 (about ``3.3961e38``, the midpoint between the
largest bf16 and ``2**128``) round to ``+-inf``, exactly as IEEE rounding to a
format with bf16's range does; the caller must rescale such data (or refuse
it) before scoring.  Results of magnitude below ``2**-126`` (bf16 denormals)
become signed zeros, matching the instruction's DAZ.  NaN and Inf inputs are
not supported (callers validate finiteness first).

Layouts
-------
* ``a_pairs``: int32 ``(n, dp // 2)``, C-contiguous; lane ``q`` of row ``i``
  holds ``bf16(a[i, 2q])`` in bits 0-15 and ``bf16(a[i, 2q + 1])`` in bits
  16-31 (zero when ``2q + 1 == d``).
* ``b_packed`` (from :func:`pack_codes`): int32 ``(ceil(k / TILE_CODES),
  dp // 2, TILE_CODES)``, C-contiguous and 64-byte aligned;
  ``b_packed[t, q, l]`` is the bf16 pair ``q`` of code ``t * TILE_CODES + l``
  (same bit layout as ``a_pairs``), zero for the padding codes ``>= k``.  One
  tile of codes is therefore one contiguous block that the micro-kernel
  streams through, two 64-byte rows per pair.

The micro-kernel computes ``TILE_ROWS x TILE_CODES`` scores (8 x 32: 16 zmm
accumulators) with two loads of ``b`` and one broadcast of each row's pair per
pair of dimensions.  The drivers walk the codes in blocks of about
``CODE_BLOCK_BYTES`` of ``b_packed`` (kept in L2 while the rows stream past)
and, inside a block, each tile of rows over every code tile of the block.

``vdpbf16ps`` faults on CPUs without ``avx512_bf16``; :data:`HAS_BF16` says
whether it may be used.  ``*_emulated`` variants run the same tiling with the
instruction replaced by an exact emulation of the arithmetic above (two
``llvm.fma`` per pair with DAZ/FTZ done by bit masks): they give bit-identical
results on any x86-64 CPU with FMA and serve to test the driver logic and the
bound where the instruction is missing.  They are not fast.
"""
from __future__ import annotations

import math
import os

import llvmlite.binding as llvm_binding
import numba
import numpy as np
from llvmlite import ir
from numba import prange, types
from numba.core import cgutils
from numba.core.errors import TypingError
from numba.extending import intrinsic

from .._config import jit

# Without the native asm parser LLVM aborts on inline assembly
# ("Inline asm not supported by this streamer").
llvm_binding.initialize_native_asmparser()


def _cpu_has_bf16() -> bool:
    # numba compiles for the host unless NUMBA_CPU_NAME names another CPU;
    # then the zmm registers the kernel asks for may not exist.
    if numba.config.CPU_NAME not in (None, "host"):
        return False
    features = llvm_binding.get_host_cpu_features()
    return bool(features.get("avx512bf16", False) and features.get("avx512f", False))


#: The host CPU executes ``vdpbf16ps`` and the environment does not forbid it
#: (``VQCORE_BF16=0`` turns the engine off, to exercise fallbacks).
HAS_BF16: bool = _cpu_has_bf16() and os.environ.get("VQCORE_BF16", "1") != "0"

TILE_ROWS = 8
TILE_CODES = 32
_LANES = 16  # fp32 lanes of one zmm register
# b_packed bytes per code block: stays in L2 (1 MiB on Zen 4) next to a block
# of rows of a_pairs.
CODE_BLOCK_BYTES = 256 << 10
# Rows per parallel task in `dot`: a multiple of TILE_ROWS.
_CHUNK_ROWS = 256

_U = 2.0 ** -24
_LAMBDA = 2.0 ** -126


def error_bound_terms(d: int) -> tuple[float, float]:
    """Constants of the rounding-error bound of one bf16 score.

    Parameters
    ----------
    d : int
        Number of features (before padding to even).

    Returns
    -------
    gamma, eta : float
        ``|dot(a, c) - sum_p x_p| <= gamma * sum_p |x_p| + eta`` where ``x_p``
        are the exact products of the bf16-rounded inputs (see the module
        docstring).  Both are rounded upwards.

    Raises
    ------
    ValueError
        If ``d < 1`` or so large that ``dp * 2**-24 >= 1/2``.
    """
    d = int(d)
    m = d + (d & 1)
    if d < 1 or m * _U >= 0.5:
        raise ValueError(f"d={d} must be between 1 and {2 ** 23 - 2} for the bf16 bound.")
    gamma = math.nextafter(m * _U / (1.0 - m * _U), math.inf)
    eta = math.nextafter(m * _LAMBDA * (1.0 + gamma), math.inf)
    return gamma, eta


# --------------------------------------------------------------------------
# float32 -> bf16 conversion
# --------------------------------------------------------------------------

@jit(inline="always")
def _bf16_bits(bits):
    """bf16 bit pattern (in the low 16 bits) of the float32 with bit pattern ``bits``."""
    # Round to nearest even on the 16 discarded bits; a carry out of the
    # significand bumps the exponent, up to inf at the top of the range.
    r = (bits + np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16)
    if (r & np.uint32(0x7F80)) == np.uint32(0):
        r &= np.uint32(0x8000)  # DAZ: the instruction reads denormals as zero
    return r


@jit
def to_bf16_pairs(a, out):
    """Round float32 rows to bf16 and pack consecutive features in pairs.

    Rounding is to nearest even; bf16 denormals become signed zeros and finite
    values from about ``3.3961e38`` up become ``+-inf`` (module docstring).
    Serial and allocation-free, so a caller may run it per row block inside
    its own ``prange``.

    Parameters
    ----------
    a : (n, d) float32, C-contiguous                  # IN
    out : (n, dp // 2) int32, dp = d rounded up to even   # OUT
        ``out[i, q]`` holds ``bf16(a[i, 2q])`` in bits 0-15 and
        ``bf16(a[i, 2q + 1])`` (or 0 past ``d``) in bits 16-31.
    """
    n, d = a.shape
    bits = a.view(np.uint32)
    res = out.view(np.uint32)
    half = d // 2
    for i in range(n):
        for q in range(half):
            lo = _bf16_bits(bits[i, 2 * q])
            hi = _bf16_bits(bits[i, 2 * q + 1])
            res[i, q] = lo | (hi << np.uint32(16))
        if d & 1:
            res[i, half] = _bf16_bits(bits[i, d - 1])


@jit
def bf16_round(a):
    """The float32 value of ``bf16(a)`` for every element (what the kernel multiplies).

    Parameters
    ----------
    a : float32 array, C-contiguous                   # IN

    Returns
    -------
    float32 array of the same shape; ``a - bf16_round(a)`` is exact in float32.
    """
    out = np.empty_like(a)
    src = a.reshape(-1).view(np.uint32)
    dst = out.reshape(-1).view(np.uint32)
    for i in range(src.shape[0]):
        dst[i] = _bf16_bits(src[i]) << np.uint32(16)
    return out


def _aligned_zeros(shape, dtype, align=64):
    """Zeroed C-contiguous array whose data starts on an ``align``-byte boundary."""
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape)) * dtype.itemsize
    raw = np.zeros(nbytes + align, dtype=np.uint8)
    start = (-raw.ctypes.data) % align
    return raw[start:start + nbytes].view(dtype).reshape(shape)


def pack_codes(c):
    """Round codes to bf16 and lay them out as the kernel's ``b_packed``.

    Parameters
    ----------
    c : (k, d) float32 array
        Codebook, one code per row.

    Returns
    -------
    b_packed : (ceil(k / TILE_CODES), dp // 2, TILE_CODES) int32, 64-byte aligned
        ``b_packed[t, q, l]`` = bf16 pair ``q`` of code ``t * TILE_CODES + l``
        (low 16 bits: feature ``2q``); padding codes are zero.

    Raises
    ------
    TypeError
        If ``c`` is not a float32 array (convert it first: float64 -> float32
        -> bf16 would round twice).
    ValueError
        If ``c`` is not 2-D or has no codes or no features.
    """
    if not isinstance(c, np.ndarray) or c.dtype != np.float32:
        raise TypeError(f"codes must be a float32 numpy array, got "
                        f"{getattr(c, 'dtype', type(c).__name__)}; convert with np.float32 first.")
    if c.ndim != 2 or c.shape[0] == 0 or c.shape[1] == 0:
        raise ValueError(f"codes must have shape (k, d) with k, d >= 1, got shape {c.shape}.")
    k, d = c.shape
    ntiles = -(-k // TILE_CODES)
    pairs = np.zeros((ntiles * TILE_CODES, (d + 1) // 2), dtype=np.int32)
    to_bf16_pairs(np.ascontiguousarray(c), pairs[:k])
    out = _aligned_zeros((ntiles, pairs.shape[1], TILE_CODES), np.int32)
    out[...] = pairs.reshape(ntiles, TILE_CODES, -1).transpose(0, 2, 1)
    return out


# --------------------------------------------------------------------------
# The micro-kernel: one TILE_ROWS x TILE_CODES tile, as an LLVM intrinsic
# --------------------------------------------------------------------------

_F32 = ir.FloatType()
_I32 = ir.IntType(32)
_VF = ir.VectorType(_F32, _LANES)
_VI = ir.VectorType(_I32, _LANES)


def _splat(builder, value, vty):
    vec = builder.insert_element(ir.Constant(vty, ir.Undefined), value, _I32(0))
    return builder.shuffle_vector(vec, ir.Constant(vty, ir.Undefined),
                                  ir.Constant(_VI, [0] * _LANES))


def _dpbf16_hardware(builder, acc, a, b):
    fnty = ir.FunctionType(_VF, [_VF, _VI, _VI])
    return builder.asm(fnty, "vdpbf16ps $3, $2, $0", "=v,0,v,v", [acc, a, b],
                       False, name="dpbf16")


def _flush_denormals(builder, bits):
    """Bit patterns (<16 x i32>) with exponent field 0 become signed zeros."""
    exp = builder.and_(bits, ir.Constant(_VI, [0x7F800000] * _LANES))
    is_tiny = builder.icmp_unsigned("==", exp, ir.Constant(_VI, [0] * _LANES))
    sign = builder.and_(bits, ir.Constant(_VI, [-(1 << 31)] * _LANES))
    return builder.select(is_tiny, sign, bits)


def _dpbf16_emulated(builder, acc, a, b):
    """``vdpbf16ps`` as documented: high pair FMA, then low, DAZ in, FTZ out, RNE."""
    fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_VF, [_VF] * 3),
                                         "llvm.fma.v16f32")
    high = ir.Constant(_VI, [0xFFFF0000 - (1 << 32)] * _LANES)
    shift = ir.Constant(_VI, [16] * _LANES)

    def as_float(bits):
        return builder.bitcast(_flush_denormals(builder, bits), _VF)

    def ftz(value):
        return as_float(builder.bitcast(value, _VI))

    acc = ftz(acc)
    acc = ftz(builder.call(fma, [as_float(builder.and_(a, high)),
                                 as_float(builder.and_(b, high)), acc]))
    return ftz(builder.call(fma, [as_float(builder.shl(a, shift)),
                                  as_float(builder.shl(b, shift)), acc]))


def _row_pointer(builder, arr, row, elty):
    """Pointer to ``arr[row, 0]`` of a 2-D array whose rows are contiguous."""
    offset = builder.mul(row, builder.extract_value(arr.strides, 0))
    base = builder.ptrtoint(arr.data, offset.type)
    return builder.inttoptr(builder.add(base, offset), elty.as_pointer())


def _store_lanes(builder, vec, ptr, count):
    """Store the first ``count`` (0..16) lanes of ``vec`` at ``ptr``."""
    full = builder.icmp_signed(">=", count, count.type(_LANES))
    with builder.if_else(full) as (then, otherwise):
        with then:
            builder.store(vec, builder.bitcast(ptr, _VF.as_pointer()), align=4)
        with otherwise:
            with cgutils.for_range(builder, count) as loop:
                builder.store(builder.extract_element(vec, loop.index),
                              builder.gep(ptr, [loop.index]))


def _tile_codegen(op):
    def codegen(context, builder, sig, args):
        _, aty, _, _, bty, _, oty, _, _, _ = sig.args
        _, a_val, row0, nrows, b_val, tile, o_val, orow0, col0, ncols = args
        a = context.make_array(aty)(context, builder, a_val)
        b = context.make_array(bty)(context, builder, b_val)
        out = context.make_array(oty)(context, builder, o_val)
        intp = row0.type
        one = intp(1)
        npairs = builder.extract_value(a.shape, 1)

        # Rows past the valid ones repeat the last valid row (their scores are
        # never stored), so the inner loop has no branches.
        last = builder.sub(builder.add(row0, nrows), one)
        a_rows = []
        for r in range(TILE_ROWS):
            row = builder.add(row0, intp(r))
            row = builder.select(builder.icmp_signed("<=", row, last), row, last)
            a_rows.append(_row_pointer(builder, a, row, _I32))
        tile_elems = builder.mul(npairs, intp(TILE_CODES))
        b_tile = builder.gep(builder.bitcast(b.data, _I32.as_pointer()),
                             [builder.mul(tile, tile_elems)])

        zero = ir.Constant(_VF, [0.0] * _LANES)
        halves = TILE_CODES // _LANES
        acc = [[cgutils.alloca_once_value(builder, zero) for _ in range(halves)]
               for _ in range(TILE_ROWS)]
        with cgutils.for_range(builder, npairs) as loop:
            p = loop.index
            b_row = builder.gep(b_tile, [builder.mul(p, intp(TILE_CODES))])
            b_vecs = [builder.load(builder.bitcast(builder.gep(b_row, [intp(h * _LANES)]),
                                                   _VI.as_pointer()), align=4)
                      for h in range(halves)]
            for r in range(TILE_ROWS):
                a_vec = _splat(builder, builder.load(builder.gep(a_rows[r], [p])), _VI)
                for h in range(halves):
                    builder.store(op(builder, builder.load(acc[r][h]), a_vec, b_vecs[h]),
                                  acc[r][h])

        for r in range(TILE_ROWS):
            with builder.if_then(builder.icmp_signed("<", intp(r), nrows)):
                o_row = _row_pointer(builder, out, builder.add(orow0, intp(r)), _F32)
                o_row = builder.gep(o_row, [col0])
                for h in range(halves):
                    count = builder.sub(ncols, intp(h * _LANES))
                    with builder.if_then(builder.icmp_signed(">", count, intp(0))):
                        _store_lanes(builder, builder.load(acc[r][h]),
                                     builder.gep(o_row, [intp(h * _LANES)]), count)
        return context.get_dummy_value()
    return codegen


def _is_array(ty, dtype, ndim):
    return isinstance(ty, types.Array) and ty.dtype == dtype and ty.ndim == ndim


@intrinsic
def _tile(typingctx, emulate, a, row0, nrows, b, tile, out, orow0, col0, ncols):
    """Scores of rows ``row0 .. row0+nrows`` (nrows <= TILE_ROWS) against code tile ``tile``.

    Writes ``out[orow0 + r, col0 + l]`` for ``r < nrows``, ``l < ncols``
    (``ncols <= TILE_CODES``).  ``emulate`` must be a literal bool: it picks
    the instruction or its emulation at compile time.
    """
    if not isinstance(emulate, types.BooleanLiteral):
        return None
    if not (_is_array(a, types.int32, 2) and _is_array(b, types.int32, 3)
            and _is_array(out, types.float32, 2)):
        return None
    if not emulate.literal_value and not HAS_BF16:
        # Compiling the instruction for a CPU without it aborts inside LLVM.
        raise TypingError("vdpbf16ps needs a CPU with avx512_bf16 (and VQCORE_BF16 not 0); "
                          "check HAS_BF16 or use the *_emulated functions.")
    op = _dpbf16_emulated if emulate.literal_value else _dpbf16_hardware
    sig = types.void(emulate, a, types.intp, types.intp, b, types.intp, out,
                     types.intp, types.intp, types.intp)
    return sig, _tile_codegen(op)


# --------------------------------------------------------------------------
# Drivers
# --------------------------------------------------------------------------

@jit
def _dot_block_impl(a_pairs, row_start, row_stop, b_packed, k, out, emulate):
    numba.literally(emulate)
    npairs = a_pairs.shape[1]
    ntiles = (k + TILE_CODES - 1) // TILE_CODES
    block = max(1, CODE_BLOCK_BYTES // max(1, npairs * TILE_CODES * 4))
    for t0 in range(0, ntiles, block):
        t1 = min(ntiles, t0 + block)
        for r0 in range(row_start, row_stop, TILE_ROWS):
            nrows = min(TILE_ROWS, row_stop - r0)
            for t in range(t0, t1):
                col0 = t * TILE_CODES
                _tile(emulate, a_pairs, r0, nrows, b_packed, t, out,
                      r0 - row_start, col0, min(TILE_CODES, k - col0))


@jit
def dot_block(a_pairs, row_start, row_stop, b_packed, k, out):
    """bf16 scores of rows ``[row_start, row_stop)`` against the first ``k`` codes.

    Serial, so it can be called from inside a caller's ``prange``; needs
    :data:`HAS_BF16` (compiling it elsewhere raises a typing error).

    Parameters
    ----------
    a_pairs : (n, dp // 2) int32, C-contiguous     # IN from :func:`to_bf16_pairs`
    row_start, row_stop : int                      # IN 0 <= row_start <= row_stop <= n
    b_packed : int32 from :func:`pack_codes`       # IN with the same dp
    k : int                                        # IN codes to score, <= packed codes
    out : (>= row_stop - row_start, >= k) float32, rows contiguous   # OUT
        ``out[i - row_start, j]`` = fp32 ``vdpbf16ps`` accumulation of
        ``sum_p bf16(a[i, p]) * bf16(c[j, p])``; columns ``>= k`` are untouched.
    """
    _dot_block_impl(a_pairs, row_start, row_stop, b_packed, k, out, False)


@jit
def dot_block_emulated(a_pairs, row_start, row_stop, b_packed, k, out):
    """:func:`dot_block` with the instruction emulated: bit-identical, any CPU, slow."""
    _dot_block_impl(a_pairs, row_start, row_stop, b_packed, k, out, True)


@jit(parallel=True)
def _dot_parallel(a_pairs, b_packed, k, out, emulate):  # out: (n, k) float32  # OUT
    numba.literally(emulate)
    n = a_pairs.shape[0]
    nchunks = (n + _CHUNK_ROWS - 1) // _CHUNK_ROWS
    for c in prange(nchunks):
        r0 = c * _CHUNK_ROWS
        r1 = min(n, r0 + _CHUNK_ROWS)
        _dot_block_impl(a_pairs, r0, r1, b_packed, k, out[r0:r1], emulate)


# Entry points with the mode fixed: a literal argument passed from Python would
# go through numba's literal dispatch (milliseconds) on every call.
@jit
def _dot_hardware(a_pairs, b_packed, k, out):
    _dot_parallel(a_pairs, b_packed, k, out, False)


@jit
def _dot_emulated(a_pairs, b_packed, k, out):
    _dot_parallel(a_pairs, b_packed, k, out, True)


def dot(a_pairs, b_packed, k, *, out=None, emulate=False):
    """All bf16 scores ``(n, k)``, rows split over numba's threads.

    Parameters
    ----------
    a_pairs : (n, dp // 2) int32 array
        Rows from :func:`to_bf16_pairs`.
    b_packed : int32 array
        Codes from :func:`pack_codes`, with the same ``dp``.
    k : int
        Number of real codes (``<=`` the packed ones).
    out : (n, k) float32 C-contiguous array, optional
        Buffer to write the scores into (allocated when omitted).
    emulate : bool, default False
        Use the exact emulation of the instruction (any CPU; slow).

    Returns
    -------
    (n, k) float32 array of scores (``out`` when given).

    Raises
    ------
    RuntimeError
        If ``emulate`` is False and :data:`HAS_BF16` is False.
    TypeError, ValueError
        If the arrays have the wrong dtype or do not fit together.
    """
    if not emulate and not HAS_BF16:
        raise RuntimeError("this CPU lacks avx512_bf16 (or VQCORE_BF16=0): "
                           "check HAS_BF16 first, or pass emulate=True.")
    for name, arr, ndim in (("a_pairs", a_pairs, 2), ("b_packed", b_packed, 3)):
        if not isinstance(arr, np.ndarray) or arr.dtype != np.int32 or arr.ndim != ndim:
            raise TypeError(f"{name} must be a {ndim}-D int32 array, got "
                            f"{getattr(arr, 'dtype', type(arr).__name__)} with "
                            f"shape {getattr(arr, 'shape', None)}; build it with "
                            f"{'to_bf16_pairs' if ndim == 2 else 'pack_codes'}.")
    k = int(k)
    ntiles, npairs, width = b_packed.shape
    if width != TILE_CODES or npairs != a_pairs.shape[1] or not 0 <= k <= ntiles * TILE_CODES:
        raise ValueError(f"b_packed of shape {b_packed.shape} does not fit a_pairs of shape "
                         f"{a_pairs.shape} and k={k}: pack the codes with pack_codes and "
                         f"the same number of features.")
    if out is None:
        out = np.empty((a_pairs.shape[0], k), dtype=np.float32)
    elif (not isinstance(out, np.ndarray) or out.dtype != np.float32
          or out.shape != (a_pairs.shape[0], k) or not out.flags.c_contiguous):
        raise ValueError(f"out must be a C-contiguous float32 array of shape "
                         f"{(a_pairs.shape[0], k)}, got {getattr(out, 'dtype', None)} "
                         f"{getattr(out, 'shape', None)}; pass out=None to allocate one.")
    run = _dot_emulated if emulate else _dot_hardware
    run(np.ascontiguousarray(a_pairs), np.ascontiguousarray(b_packed), k, out)
    return out
