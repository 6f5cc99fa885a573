"""FSQ's rounding and the gradient through its bound, each one pass, with the bits of the unfused ops.

Without projections FSQ is elementwise: ``t = tanh(z + shift)``, ``q = rint(t half_l - offset)``,
``code = q / half_width`` and a mixed-radix index per code; backward, ``((g / half_width) *
half_l) * (1 - t**2)``. Done as separate numpy/torch ops, each is a pass over the array and a
call from Python; here the steps after the tanh are one pass forward and one backward. The
kernels are compiled without fast-math, so every multiply, subtract, divide and ``rint`` rounds
as the unfused op does: codes and gradients are bit-identical to the seed's tensor ops.
"""
import numpy as np
from numba.core import types
from numba.extending import intrinsic

from .._config import jit

#: What an int32 cast gives for NaN on x86 (and what torch's ``.to(torch.int32)`` returns there).
NAN_INDEX = np.int32(-2 ** 31)


@intrinsic
def fused_multiply_add(typingctx, a, b, c):
    """``a * b + c`` rounded once (LLVM's ``fma``), for two floats of one type."""
    if not (isinstance(a, types.Float) and a == b == c):
        return None

    def codegen(context, builder, signature, args):
        return builder.fma(*args)
    return a(a, b, c), codegen


@jit(exact=True)
def fsq_round(t, half_l, offset, half_width, radix, index_base, index_sum, codes, indices):
    """Round bounded values to levels, write the normalised codes and each code's index.

    Parameters
    ----------
    t : (m, W) float                                # IN  ``tanh(z + shift)``, W = tiles * d
    half_l, offset, half_width : (W,) float         # IN  the bound's constants tiled, of t's dtype
    radix : (d,) int32                              # IN  mixed-radix place value of each dim
    index_base : int                                # IN  sum of half_width * radix over one code
    index_sum : (W // d,) float32 or float64        # SCRATCH sums of integers, exact in its dtype:
                                                    #     float32 while codebook_size <= 2**24
    codes : (m, W) float                            # OUT ``rint(t * half_l - offset) / half_width``
    indices : (m, W // d) int32                     # OUT index of each code (NAN_INDEX where NaN)
    """
    m, width = t.shape
    per_row = indices.shape[1]
    d = width // per_row
    for i in range(m):
        level, code, index = t[i], codes[i], indices[i]
        for j in range(width):
            code[j] = np.rint(level[j] * half_l[j] - offset[j])
        # dim by dim across the row's codes: independent sums that vectorise (a code's own d
        # terms would be a short dependent chain per index)
        index_sum[:] = index_base
        for k in range(d):
            place = index_sum.dtype.type(radix[k])
            for c in range(per_row):
                index_sum[c] += code[c * d + k] * place
        for c in range(per_row):
            index[c] = NAN_INDEX if np.isnan(index_sum[c]) else np.int32(index_sum[c])
        for j in range(width):
            code[j] = code[j] / half_width[j]


@jit(exact=True)
def fsq_bound_grad(grad, t, half_l, half_width, fused, out):
    """``((grad / half_width) * half_l) * (1 - t * t)``: the gradient through the bound.

    Parameters
    ----------
    grad : (m, W) or (1, W) float                   # IN  gradient of the codes; one row is every row's
    t : (m, W) float                                # IN  the forward's ``tanh(z + shift)``
    half_l, half_width : (W,) float                 # IN  the bound's constants tiled, of t's dtype
    fused : bool                                    # IN  ``1 - t * t`` as one fused multiply-add, as
                                                    #     torch's ``tanh_backward`` computes it for some
                                                    #     dtypes and CPUs (the caller asks torch which)
    out : (m, W) float                              # OUT
    """
    m, width = t.shape
    every_row = grad.shape[0] == m
    one = np.ones(1, dtype=t.dtype)[0]  # a typed literal: an untyped 1 would promote float32 to float64
    for i in range(m):
        g, level, result = grad[i] if every_row else grad[0], t[i], out[i]
        if fused:
            for j in range(width):
                result[j] = ((g[j] / half_width[j]) * half_l[j]) * fused_multiply_add(-level[j], level[j], one)
        else:
            for j in range(width):
                result[j] = ((g[j] / half_width[j]) * half_l[j]) * (one - level[j] * level[j])

