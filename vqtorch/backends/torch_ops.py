"""The device-generic backend: the codebook's non-differentiable work in torch ops.

This is the CUDA path; it also runs on CPU so CI tests it.  Unlike the seed it
never builds an ``n x k`` one-hot matrix (quantize is a gather, sums are an
``index_add_``) and it searches in row chunks so only one ``chunk x k`` block of
distances exists at a time.

Random draws (k-means seeding, dead-code replacement) call ``torch.randperm`` /
``torch.randint`` in the seed's order, so with the same torch seed the results
equal the seed's.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from vqcore.search import blas_terms, score_factor, upward, work_limit

from ..amp import no_autocast

__all__ = ["TorchBackend"]

# Elements of one score block; 4M float32 = 16 MiB keeps the block cache/L2 friendly
# while each GEMM stays large enough to run at full speed.  A GPU takes 16x that (256 MiB):
# fewer, larger GEMMs and one host sync per block.
_BLOCK_ELEMENTS = 1 << 22
_DEVICE_BLOCK_ELEMENTS = 1 << 26
# Float64 elements of one block of re-ranked (row, code) pairs.
_PAIR_ELEMENTS = 1 << 22


def _sample_rows(samples, num):
    """``num`` rows of ``samples`` (n, d): without replacement when possible (the seed's rule)."""
    n = samples.shape[0]
    if n >= num:
        rows = torch.randperm(n, device=samples.device)[:num]
    else:
        rows = torch.randint(0, n, (num,), device=samples.device)
    return samples[rows]


class _CertifiedSearch:
    """vqcore's certified exact search in torch ops, for one codebook on any device.

    The codebook is prepared as :func:`vqcore.search.plan` does for its fp32 engine (centre,
    power-of-two scale, the bound's coefficients from :func:`vqcore.search.blas_terms`), but on the
    codebook's device and without waiting for it: the scale and the coefficients stay 0-d tensors.
    Rows are scored in float32, and every row whose best score is within the bound of another code
    is re-ranked by the float64 direct form over its candidate pairs, ties to the lowest index --
    the answer of ``vqcore.nearest``.
    """

    def __init__(self, codes, metric):
        self.metric = metric
        self.codes64 = codes.detach().double()
        k, d = self.codes64.shape
        cosine = metric == "cosine"
        self.mu = torch.zeros(d, dtype=torch.float64, device=codes.device) if cosine else self.codes64.mean(0)
        centred = self.codes64 - self.mu
        top = centred.abs().amax() if centred.numel() else centred.new_zeros(())
        # 2**-e for top = m 2**e, m in [1/2, 1): a power of two bringing the codes within [-1, 1]
        # (an exact scaling; 1 where top is 0)
        self.scale = torch.ldexp(torch.ones_like(top), -torch.frexp(top).exponent)
        scaled = (centred * self.scale).float()
        sq = scaled.double().pow(2).sum(1)
        big_c = upward(sq.amax().sqrt()) if k else centred.new_zeros(())
        self.coefs = blas_terms(big_c, d, metric)
        self.operand = (scaled * -score_factor(metric)).T.contiguous()  # times a power of two: exact
        self.bias = torch.zeros(k, dtype=torch.float32, device=codes.device) if cosine else sq.float()
        self.limit = work_limit()

    def nearest(self, x):
        """Certified nearest code of every row of ``x`` (m, d).

        Written for few kernel launches and one host sync (the rows to re-rank): on a GPU the
        launches, not the arithmetic, take most of the time at common sizes.
        """
        x64 = x.detach().double()
        if self.metric == "cosine":
            top = x64.abs().amax(dim=1, keepdim=True)
            row_scale = torch.ldexp(torch.ones_like(top), -torch.frexp(top).exponent)  # as the codes' scale
            v64 = x64 * row_scale
        else:
            row_scale = None
            v64 = torch.sub(x64, self.mu).mul_(self.scale)
        # rows out of fp32's safe range (or NaN: amax keeps it) are answered by the direct form over every code
        unsafe = ~(v64.abs().amax(dim=1, keepdim=True) <= self.limit)
        v = v64.masked_fill_(unsafe, 0.0).float()
        norm = v.double().norm(dim=1)
        # TF32 would round the inputs to 10 bits and void the bound: score in true fp32.
        tf32 = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = False
        try:
            scores = torch.addmm(self.bias, v, self.operand)
        finally:
            torch.backends.cuda.matmul.allow_tf32 = tf32
        c0, c3, c4 = self.coefs
        bound = (norm + 1).square_().mul_(c4).add_(c3).addcmul_(norm, c0)  # c0 |v| + c3 + c4 (1 + |v|)**2
        threshold = bound.mul_(2).add_(scores.amin(dim=1))  # the best score plus twice the bound, in float64
        threshold = threshold.abs().mul_(2.0 ** -20).add_(threshold).add_(2.0 ** -140).float()  # rounds up past fp32
        candidates = (scores <= threshold.unsqueeze(1)).logical_or_(unsafe)
        best = candidates.to(torch.uint8).argmax(dim=1)  # the only candidate where there is one
        rerank = torch.nonzero(candidates.sum(dim=1) > 1).squeeze(1)
        if rerank.numel():
            best[rerank] = self._rerank(x64[rerank], candidates[rerank], None if row_scale is None
                                        else row_scale[rerank])
        return best

    def _rerank(self, x64, candidates, row_scale):
        """Lowest-index minimum of the float64 direct form over each row's candidate codes."""
        m, k = candidates.shape
        rows, codes = torch.nonzero(candidates, as_tuple=True)
        exact = torch.empty(rows.shape[0], dtype=torch.float64, device=x64.device)
        step = max(1, _PAIR_ELEMENTS // max(1, x64.shape[1]))
        for start in range(0, rows.shape[0], step):  # a bounded (pairs, d) float64 block at a time
            r, j = rows[start:start + step], codes[start:start + step]
            if self.metric == "cosine":
                exact[start:start + step] = -((x64[r] * row_scale[r]) * (self.codes64[j] * self.scale)).sum(1)
            else:
                exact[start:start + step] = ((x64[r] - self.codes64[j]) * self.scale).pow(2).sum(1)
        low = torch.full((m,), float("inf"), dtype=torch.float64, device=x64.device)
        low = low.scatter_reduce(0, rows, exact, "amin")
        broken = int((~torch.isfinite(low)).sum())  # finite float32 rows always give finite float64 scores
        if broken:
            raise ValueError(f"{broken} rows to quantize contain NaN or Inf (in a layer: after project_in); "
                             "remove or impute those values first.")
        reach = exact == low[rows]
        first = torch.full((m,), k, dtype=torch.long, device=x64.device)
        return first.scatter_reduce(0, rows[reach], codes[reach], "amin")


class TorchBackend:
    """Codebook kernels in torch ops, for tensors on any device.

    Parameters
    ----------
    block_elements : int, optional
        Upper bound on the elements of one distance block in :meth:`nearest`; by default
        2**22 on CPU and 2**26 on other devices.
    """

    name = "torch"

    def __init__(self, block_elements: int | None = None):
        self.block_elements = block_elements

    @torch.no_grad()
    def nearest(self, x, embed, *, metric):
        """Index of the closest code for every row (certified exact: see :class:`_CertifiedSearch`).

        Parameters
        ----------
        x : Tensor of shape (c, n, d), float32
        embed : Tensor of shape (c, k, d), float32
        metric : {"euclidean", "cosine"}
            Smallest euclidean distance, or largest dot product.

        Returns
        -------
        Tensor of shape (c, n), int64
        """
        c, n, _ = x.shape
        k = embed.shape[1]
        out = torch.empty(c, n, dtype=torch.long, device=x.device)
        block = self.block_elements or (_BLOCK_ELEMENTS if x.device.type == "cpu" else _DEVICE_BLOCK_ELEMENTS)
        rows = max(1, block // max(k, 1))
        if torch.compiler.is_compiling():
            # The certified search is data-dependent (its bound, its candidate rows) and builds its
            # host-side scale and bound; a compiled graph traces the plain float32 argmin instead.
            return self._traceable_nearest(x, embed, metric, out, rows)
        with no_autocast(x.device):
            for h in range(c):
                search = _CertifiedSearch(embed[h], metric)
                for start in range(0, n, rows):
                    out[h, start:start + rows] = search.nearest(x[h, start:start + rows])
        return out

    @staticmethod
    def _traceable_nearest(x, embed, metric, out, rows):
        """The float32 argmin of ``-2 x.e + |e|^2`` (largest ``x.e`` for cosine), in row blocks."""
        embed_t = embed.transpose(1, 2)
        e_sq = embed.pow(2).sum(-1).unsqueeze(1)
        for start in range(0, x.shape[1], rows):
            block = x[:, start:start + rows]
            if metric == "cosine":
                out[:, start:start + rows] = torch.bmm(block, embed_t).argmax(-1)
            else:
                out[:, start:start + rows] = torch.baddbmm(e_sq, block, embed_t, alpha=-2.0).argmin(-1)
        return out

    @torch.no_grad()
    def cluster_stats(self, x, indices, codebook_size, mask=None):
        """Per-code counts and vector sums (the seed's ``bins`` and ``embed_sum``), local to this process.

        Parameters
        ----------
        x : Tensor of shape (c, n, d), float32
        indices : Tensor of shape (c, n), int64
        codebook_size : int
        mask : Tensor of shape (c, n), bool, optional
            Rows where False are left out.

        Returns
        -------
        counts : Tensor of shape (c, k), float32
        sums : Tensor of shape (c, k, d), float32
        """
        c, n, d = x.shape
        weight = torch.ones(c, n, dtype=x.dtype, device=x.device) if mask is None else mask.to(x.dtype)
        counts = x.new_zeros(c, codebook_size).scatter_add_(1, indices, weight)
        if mask is not None:
            x = torch.where(mask.unsqueeze(-1), x, x.new_zeros(()))
        flat_index = (indices + torch.arange(c, device=x.device).unsqueeze(1) * codebook_size).reshape(-1)
        sums = x.new_zeros(c * codebook_size, d).index_add_(0, flat_index, x.reshape(-1, d))
        return counts, sums.view(c, codebook_size, d)

    @torch.no_grad()
    def ema_update_(self, cluster_size, embed_avg, embed, counts, sums, *, decay, eps, metric):
        """EMA of counts and sums, Laplace smoothing, new codes; all in place."""
        cluster_size.lerp_(counts, 1 - decay)
        embed_avg.lerp_(sums, 1 - decay)
        num_codes = cluster_size.shape[-1]
        total = cluster_size.sum(dim=-1, keepdim=True)
        smoothed = (cluster_size + eps) / (total + num_codes * eps) * total
        codes = embed_avg / smoothed.unsqueeze(-1)
        if metric == "cosine":
            # The seed normalises twice; the second pass moves the last bit, so keep it.
            codes = F.normalize(F.normalize(codes, dim=-1), dim=-1)
        embed.copy_(codes)

    def sample_vectors(self, samples, num):
        """``num`` rows drawn from ``samples`` (n, d), on this process only."""
        return _sample_rows(samples, num)

    @torch.no_grad()
    def kmeans(self, samples, num_clusters, *, iters, metric, sample_fn=None, all_reduce=None):
        """The seed's k-means: seeded from the data, empty clusters keep their old mean.

        Parameters
        ----------
        samples : Tensor of shape (c, n, d)
        num_clusters : int
        iters : int
        metric : {"euclidean", "cosine"}
        sample_fn : callable, optional
            ``sample_fn(samples (c, n, d), num) -> (c, num, d)``; per-codebook local sampling by default.
        all_reduce : callable, optional
            In-place sum over processes of a tensor (the seed's ``sync_kmeans``).

        Returns
        -------
        means : Tensor of shape (c, k, d)
        counts : Tensor of shape (c, k), the last assignment's cluster sizes (long)
        """
        if sample_fn is None:
            means = torch.stack([_sample_rows(s, num_clusters) for s in samples.unbind(0)])
        else:
            means = sample_fn(samples, num_clusters)
        c, _, d = samples.shape
        bins = torch.zeros(c, num_clusters, dtype=torch.long, device=samples.device)
        for _ in range(iters):
            buckets = self.nearest(samples, means, metric=metric)
            bins = torch.zeros_like(bins).scatter_add_(1, buckets, torch.ones_like(buckets))
            if all_reduce is not None:
                all_reduce(bins)
            empty = bins == 0
            new_means = samples.new_zeros(c, num_clusters, d)
            new_means.scatter_add_(1, buckets.unsqueeze(-1).expand(-1, -1, d), samples)
            new_means = new_means / bins.masked_fill(empty, 1).unsqueeze(-1)
            if all_reduce is not None:
                all_reduce(new_means)
            if metric == "cosine":
                new_means = F.normalize(new_means, dim=-1)
            means = torch.where(empty.unsqueeze(-1), means, new_means)
        return means, bins

    @torch.no_grad()
    def batch_stats(self, data):
        """Mean and biased variance over rows: (c, n, d) -> two (c, 1, d) tensors."""
        return data.mean(dim=1, keepdim=True), data.var(dim=1, unbiased=False, keepdim=True)
