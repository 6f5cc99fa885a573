"""Per-code counts and sums by index: the seed's one-hot products as a segment sum."""
from numba import prange

from .._config import jit


@jit(parallel=True)
def segment_sums(x, indices, mask, use_mask, nthreads, sums, counts):
    """Accumulate the rows of ``x`` into the slot of their code, per thread.

    Parameters
    ----------
    x : (n, d) float                                  # IN
    indices : (n,) int64, each in [0, k)              # IN
    mask : (n,) bool                                  # IN rows to count, if ``use_mask``
    use_mask : bool                                   # IN False: every row counts
    nthreads : int                                    # IN
    sums : (nthreads, k, d) float64, zeroed           # INOUT
    counts : (nthreads, k) float64, zeroed            # INOUT
    """
    n, d = x.shape
    per_thread = (n + nthreads - 1) // nthreads
    for t in prange(nthreads):
        for i in range(t * per_thread, min(n, (t + 1) * per_thread)):
            if use_mask and not mask[i]:
                continue
            j = indices[i]
            counts[t, j] += 1.0
            acc = sums[t, j]
            row = x[i]
            for f in range(d):
                acc[f] += row[f]
