"""FSQ between two linear projections, fused: two passes over the rows forward, one backward.

``x -> z = x W_in^T + b_in -> t = tanh(z + shift) -> q = rint(t half_l - offset)
-> code = q / half_width -> out = code W_out^T + b_out`` for each row, with the
straight-through backward. Unfused, each of the five steps is a pass over an
(n, dim) or (n, C) array and the two projections are GEMMs whose inner or outer size
is the handful of codebook dims, a shape BLAS handles poorly; fused, a row is read
and written once each way and the weight gradients are summed per thread. The tanh
between the two forward kernels is the caller's: torch's vectorised one, on the small
(n, C) array, costs less than a scalar libm call per value.
"""
import numpy as np
from numba import prange

from .._config import jit


@jit(parallel=True)
def fsq_project_in(x, w_in, b_in, shift, nthreads, z):
    """``z = x W_in^T + b_in + shift`` for every row: the bound's argument (its tanh is the caller's).

    Parameters
    ----------
    x : (n, dim) float                                # IN
    w_in : (C, dim) float, b_in : (C,) float          # IN  project_in (C = codebooks * d)
    shift : (C,) float                                # IN  the bound's shift, tiled per codebook
    nthreads : int                                    # IN
    z : (n, C) float                                  # OUT
    """
    n, dim = x.shape
    width = w_in.shape[0]
    per_thread = (n + nthreads - 1) // nthreads
    for worker in prange(nthreads):
        for i in range(worker * per_thread, min(n, (worker + 1) * per_thread)):
            row = x[i]
            for j in range(width):
                projected = b_in[j]
                w = w_in[j]
                for f in range(dim):
                    projected += row[f] * w[f]
                z[i, j] = projected + shift[j]


@jit(parallel=True)
def fsq_project_out(t, w_out_t, b_out, half_l, offset, half_width, radix, index_base, nthreads, codes, out, indices):
    """Round the bounded values ``t = tanh(z)``, index the codes and project them back, row by row.

    Parameters
    ----------
    t : (n, C) float                                  # IN  tanh of :func:`fsq_project_in`'s output
    w_out_t : (C, dim) float, b_out : (dim,) float    # IN  project_out, weight transposed
    half_l, offset, half_width : (C,) float           # IN  the bound's constants, tiled per codebook
    radix : (C,) int32                                # IN  mixed-radix place value of each dim
    index_base : int                                  # IN  sum of half_width * radix over one codebook
    nthreads : int                                    # IN
    codes : (n, C) float                              # OUT normalised codes in [-1, 1]
    out : (n, dim) float                              # OUT
    indices : (n, codebooks) int32                    # OUT
    """
    n, dim = out.shape
    width = t.shape[1]
    d = width // indices.shape[1]
    per_thread = (n + nthreads - 1) // nthreads
    for worker in prange(nthreads):
        for i in range(worker * per_thread, min(n, (worker + 1) * per_thread)):
            out_row = out[i]
            out_row[:] = b_out
            for c in range(indices.shape[1]):
                index = index_base
                for j in range(c * d, (c + 1) * d):
                    level = np.rint(t[i, j] * half_l[j] - offset[j])
                    index += np.int64(level) * radix[j]
                    code = level / half_width[j]
                    codes[i, j] = code
                    w = w_out_t[j]
                    for f in range(dim):
                        out_row[f] += code * w[f]
                indices[i, c] = index


#: Rows whose weight-gradient terms are summed in the input's dtype before joining the float64
#: totals: the inner loops stay in one dtype (so they vectorise) and float32 sums stay short.
BLOCK_ROWS = 64


@jit(parallel=True)
def fsq_project_backward(grad, x, w_in, w_out_t, t, codes, half_l, half_width, nthreads,
                         grad_x, grad_w_in, grad_b_in, grad_w_out_t, grad_b_out):
    """Gradients of :func:`fsq_project_in`, the tanh and :func:`fsq_project_out`, straight through rounding.

    The chain through the bound is the seed's: ``((g / half_width) * half_l) * (1 - t**2)``.
    Weight and bias gradients are summed per thread (callers add the threads), in the
    input's dtype over blocks of :data:`BLOCK_ROWS` rows and in float64 across blocks.

    Parameters
    ----------
    grad : (n, dim) or (1, dim) float                  # IN  gradient of ``out``; one row is every row's
    x, w_in, w_out_t, t, codes, half_l, half_width     # IN  as in the forward
    nthreads : int                                     # IN
    grad_x : (n, dim) float                            # OUT
    grad_w_in : (nthreads, C, dim) float64, zeroed     # INOUT
    grad_b_in : (nthreads, C) float64, zeroed          # INOUT
    grad_w_out_t : (nthreads, C, dim) float64, zeroed  # INOUT project_out's weight gradient, transposed
    grad_b_out : (nthreads, dim) float64, zeroed       # INOUT
    """
    n, dim = x.shape
    width = w_in.shape[0]
    every_row = grad.shape[0] == n
    per_thread = (n + nthreads - 1) // nthreads
    for worker in prange(nthreads):
        dtype = grad_x.dtype
        through = np.empty(width, dtype=dtype)
        block_w_in = np.zeros((width, dim), dtype=dtype)
        block_w_out = np.zeros((width, dim), dtype=dtype)
        block_b_out = np.zeros(dim, dtype=dtype)
        zero = np.zeros(1, dtype=dtype)[0]  # typed literals: an untyped 1 would promote to float64
        one = np.ones(1, dtype=dtype)[0]
        first, stop = worker * per_thread, min(n, (worker + 1) * per_thread)
        for i in range(first, stop):
            g = grad[i] if every_row else grad[0]
            row, grad_row = x[i], grad_x[i]
            for f in range(dim):
                block_b_out[f] += g[f]
            for j in range(width):
                w = w_out_t[j]
                s = zero
                for f in range(dim):
                    s += g[f] * w[f]
                through[j] = ((s / half_width[j]) * half_l[j]) * (one - t[i, j] * t[i, j])
                grad_b_in[worker, j] += through[j]
                code, acc = codes[i, j], block_w_out[j]
                for f in range(dim):
                    acc[f] += code * g[f]
            for j in range(width):
                g_z, w, acc = through[j], w_in[j], block_w_in[j]
                if j == 0:
                    for f in range(dim):
                        grad_row[f] = g_z * w[f]
                else:
                    for f in range(dim):
                        grad_row[f] += g_z * w[f]
                for f in range(dim):
                    acc[f] += g_z * row[f]
            if (i - first) % BLOCK_ROWS == BLOCK_ROWS - 1 or i == stop - 1:
                for j in range(width):
                    for f in range(dim):
                        grad_w_in[worker, j, f] += block_w_in[j, f]
                        grad_w_out_t[worker, j, f] += block_w_out[j, f]
                for f in range(dim):
                    grad_b_out[worker, f] += block_b_out[f]
                block_w_in[:] = 0
                block_w_out[:] = 0
                block_b_out[:] = 0
