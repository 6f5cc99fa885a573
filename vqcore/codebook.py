"""Codebooks with the seed's state and training step, in numpy.

A codebook holds ``n_codebooks`` sets of ``k`` codes of dimension ``d`` and
their EMA statistics.  ``forward`` takes flattened input ``(n_codebooks, n, d)``
(the seed's ``'h * d'`` packing) and returns ``(quantize, indices)``; in
training it also updates the state, in place.
"""
from __future__ import annotations

import numpy as np

from . import _validate, ema
from .cluster import kmeans, l2_normalize
from .comm import resolve_comm
from .sampling import gumbel_sample
from .search import distances_unchecked, nearest_unchecked

__all__ = ["EuclideanCodebook", "CosineSimCodebook"]

# Names and order of the seed's buffers, for state dicts.
STATE_KEYS = ("initted", "cluster_size", "embed_avg", "embed")
AFFINE_KEYS = (
    "batch_mean",
    "batch_variance",
    "codebook_mean_needs_init",
    "codebook_mean",
    "codebook_variance_needs_init",
    "codebook_variance",
)


def kaiming_uniform(rng, shape):
    """``nn.init.kaiming_uniform_`` on a tensor of ``shape`` (fan-in = prod(shape[1:]))."""
    fan_in = int(np.prod(shape[1:]))
    bound = np.sqrt(6.0 / fan_in)
    return rng.uniform(-bound, bound, size=shape).astype(np.float32)


class EuclideanCodebook:
    """Codes compared by euclidean distance, trained by EMA (the seed's ``EuclideanCodebook``).

    Parameters
    ----------
    dim : int
        Code dimension ``d``.
    codebook_size : int
        Codes per codebook ``k``.
    num_codebooks : int
        Independent codebook sets (one per head with separate codebooks).
    kmeans_init : bool
        Start from zeros and run k-means on the first training batch.
    kmeans_iters : int
    decay : float
        EMA decay of cluster sizes and sums.
    eps : float
        Laplace smoothing of cluster sizes.
    threshold_ema_dead_code : float
        Codes whose EMA size falls below this are replaced by batch vectors
        (0 turns it off).  The seed's codebook default is 2.
    reset_cluster_size : float, optional
        Size given to a replaced code; defaults to ``threshold_ema_dead_code``.
    ema_update : bool
        Update the codebook in training.
    affine_param : bool
        Keep running batch and codebook statistics and search against the
        codebook moved onto the batch's mean and variance.
    affine_param_batch_decay, affine_param_codebook_decay : float
    sync_affine_param : bool
        Affine batch statistics over all ranks of ``comm``.
    sync_kmeans : bool
        Draw the k-means initialisation across ranks of ``comm``.
    stochastic_sample_codes : bool
        In training, sample codes from ``softmax(-distance / temperature)``.
    sample_codebook_temp : float
    seed : int, numpy.random.Generator or None
        Drives initialisation, k-means sampling, expiry and stochastic codes.
    comm : vqcore.comm.Communicator, optional
        Counts and sums are all-reduced, so all ranks keep the same codebook.
    """

    metric = "euclidean"
    supports_affine = True

    def __init__(
        self,
        dim,
        codebook_size,
        *,
        num_codebooks=1,
        kmeans_init=False,
        kmeans_iters=10,
        decay=0.8,
        eps=1e-5,
        threshold_ema_dead_code=2,
        reset_cluster_size=None,
        ema_update=True,
        affine_param=False,
        affine_param_batch_decay=0.99,
        affine_param_codebook_decay=0.9,
        sync_affine_param=False,
        sync_kmeans=True,
        stochastic_sample_codes=False,
        sample_codebook_temp=1.0,
        seed=None,
        comm=None,
    ):
        self.dim = _validate.positive_int("dim", dim)
        self.codebook_size = _validate.positive_int("codebook_size", codebook_size)
        self.num_codebooks = _validate.positive_int("num_codebooks", num_codebooks)
        self.kmeans_iters = _validate.positive_int("kmeans_iters", kmeans_iters, minimum=0)
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"decay={decay} must lie in [0, 1]")
        if eps < 0:
            raise ValueError(f"eps={eps} must be >= 0")
        if threshold_ema_dead_code < 0:
            raise ValueError(f"threshold_ema_dead_code={threshold_ema_dead_code} must be >= 0")
        if affine_param and not self.supports_affine:
            raise ValueError("affine_param=True works only with the euclidean codebook; set use_cosine_sim=False")
        self.decay = float(decay)
        self.eps = float(eps)
        self.threshold_ema_dead_code = float(threshold_ema_dead_code)
        self.reset_cluster_size = float(threshold_ema_dead_code if reset_cluster_size is None else reset_cluster_size)
        self.ema_update = bool(ema_update)
        self.affine_param = bool(affine_param)
        self.affine_param_batch_decay = float(affine_param_batch_decay)
        self.affine_param_codebook_decay = float(affine_param_codebook_decay)
        self.sync_affine_param = bool(sync_affine_param)
        self.sync_kmeans = bool(sync_kmeans)
        self.stochastic_sample_codes = bool(stochastic_sample_codes)
        self.sample_codebook_temp = float(sample_codebook_temp)
        self.comm = resolve_comm(comm)
        self.rng = _validate.rng(seed)

        shape = (self.num_codebooks, self.codebook_size, self.dim)
        embed = np.zeros(shape, np.float32) if kmeans_init else self._initial_embed(shape)
        self.initted = np.array([0.0 if kmeans_init else 1.0], dtype=np.float32)
        self.cluster_size = np.zeros(shape[:2], dtype=np.float32)
        self.embed_avg = embed.copy()
        self.embed = embed
        if self.affine_param:
            self.batch_mean = None
            self.batch_variance = None
            self.codebook_mean_needs_init = np.ones(1, np.float32)
            self.codebook_mean = np.zeros((self.num_codebooks, 1, self.dim), np.float32)
            self.codebook_variance_needs_init = np.ones(1, np.float32)
            self.codebook_variance = np.zeros((self.num_codebooks, 1, self.dim), np.float32)

    def _initial_embed(self, shape):
        return kaiming_uniform(self.rng, shape)

    # -- state ------------------------------------------------------------
    def state_keys(self):
        """Names of the state arrays, in the seed module's order."""
        keys = list(STATE_KEYS)
        if self.affine_param:
            keys += [k for k in AFFINE_KEYS if getattr(self, k) is not None]
        return keys

    def state_shapes(self):
        """Expected shape of every state array (affine batch stats included)."""
        c, k, d = self.num_codebooks, self.codebook_size, self.dim
        shapes = {"initted": (1,), "cluster_size": (c, k), "embed_avg": (c, k, d), "embed": (c, k, d)}
        if self.affine_param:
            stat = (c, 1, d)
            shapes.update(batch_mean=stat, batch_variance=stat, codebook_mean=stat, codebook_variance=stat,
                          codebook_mean_needs_init=(1,), codebook_variance_needs_init=(1,))
        return shapes

    # -- training pieces (the seed's method names) -------------------------
    def init_embed_(self, data, mask=None):
        """k-means initialisation on the first batch, if not done yet."""
        if self.initted[0]:
            return
        if mask is not None:
            data = np.stack([part[m] for part, m in zip(data, mask)])
        comm = self.comm if self.sync_kmeans else None
        means, counts = kmeans(data, self.codebook_size, iters=self.kmeans_iters, metric=self.metric,
                               seed=self.rng, comm=comm)
        counts = counts.astype(np.float32)
        self.embed[...] = means
        self.embed_avg[...] = means * counts[..., None]
        self.cluster_size[...] = counts
        self.initted[...] = 1.0

    def update_affine_(self, data, mask=None, *, training=True):
        """Running codebook (training only) and batch statistics, as the seed keeps them."""
        if training:
            embed64 = self.embed.astype(np.float64)
            mean = embed64.mean(axis=1, keepdims=True).astype(np.float32)
            var = embed64.var(axis=1, keepdims=True).astype(np.float32)
            self.codebook_mean = self._decayed("codebook_mean", mean, self.affine_param_codebook_decay)
            self.codebook_variance = self._decayed("codebook_variance", var, self.affine_param_codebook_decay)
        comm = self.comm if self.sync_affine_param else None
        mean, var = ema.batch_stats(data, mask, comm=comm)
        self.batch_mean = self._decayed("batch_mean", mean, self.affine_param_batch_decay)
        self.batch_variance = self._decayed("batch_variance", var, self.affine_param_batch_decay)

    def _decayed(self, name, new, decay):
        flag = getattr(self, name + "_needs_init", None)
        if flag is not None and flag[0]:
            flag[...] = 0.0
            return np.array(new, dtype=np.float32)
        return ema.decay_update(getattr(self, name), new, decay)

    def search_codebook(self):
        """The codes searched against: the embedding, moved onto batch statistics with affine_param."""
        if not self.affine_param:
            return self.embed
        return ema.affine_embed(self.embed, self.codebook_mean, self.codebook_variance,
                                self.batch_mean, self.batch_variance).astype(np.float32)

    def assign(self, x, codebook, *, training, sample_codebook_temp):
        """Code indices: exact nearest, or gumbel-sampled in stochastic training."""
        if training and self.stochastic_sample_codes and sample_codebook_temp > 0:
            logits = distances_unchecked(x, codebook, self.metric)
            return gumbel_sample(logits, temperature=sample_codebook_temp, stochastic=True, rng=self.rng)
        return nearest_unchecked(x, codebook, self.metric)[0]

    def ema_step_(self, x, indices, mask=None):
        """Update the codebook from one batch's assignments, then expire dead codes."""
        targets = x
        if self.affine_param:
            targets = ema.affine_to_codebook(x, self.codebook_mean, self.codebook_variance,
                                             self.batch_mean, self.batch_variance).astype(np.float32)
        counts, sums = ema.cluster_stats(targets, indices, self.codebook_size, mask=mask, comm=self.comm)
        ema.ema_update_(self.cluster_size, self.embed_avg, self.embed, counts, sums,
                        decay=self.decay, eps=self.eps, cosine=self.metric == "cosine")
        ema.expire_codes_(self.embed, self.embed_avg, self.cluster_size, x,
                          threshold=self.threshold_ema_dead_code, reset_cluster_size=self.reset_cluster_size,
                          rng=self.rng, cosine=self.metric == "cosine", comm=self.comm)

    def forward(self, x, *, training=True, mask=None, freeze_codebook=False, sample_codebook_temp=None,
                return_quantize=True):
        """Quantize a flattened batch and, in training, update the codebook.

        Parameters
        ----------
        x : ndarray of float32, shape (n_codebooks, n, d)
            Validated input (cosine codebooks expect unit-norm rows).
        training : bool
            Update the codebook (EMA, expiry, codebook statistics).  As in the
            seed, k-means initialisation and affine *batch* statistics happen
            in evaluation too.
        mask : ndarray of bool, shape (n_codebooks, n), optional
            Rows left out of the statistics.
        freeze_codebook : bool
            Skip the EMA update even in training.
        sample_codebook_temp : float, optional
            Overrides the temperature of stochastic sampling.
        return_quantize : bool
            False skips gathering the code vectors (``quantize`` is None).

        Returns
        -------
        quantize : ndarray of shape (n_codebooks, n, d), or None
        indices : ndarray of int64, shape (n_codebooks, n)
        """
        temperature = self.sample_codebook_temp if sample_codebook_temp is None else sample_codebook_temp
        self.init_embed_(x, mask)  # the seed initialises on whatever batch comes first, eval too
        if self.affine_param:
            self.update_affine_(x, mask, training=training)
        codebook = self.search_codebook()
        indices = self.assign(x, codebook, training=training, sample_codebook_temp=temperature)
        quantize = None
        if return_quantize:
            if codebook.shape[0] == 1:  # skip the stack's copy in the common one-codebook case
                quantize = codebook[0].take(indices[0], axis=0)[None]
            else:
                quantize = np.stack([codes.take(ind, axis=0) for codes, ind in zip(codebook, indices)])
        if training and self.ema_update and not freeze_codebook:
            self.ema_step_(x, indices, mask)
        return quantize, indices

    __call__ = forward


class CosineSimCodebook(EuclideanCodebook):
    """Unit-norm codes compared by dot product (the seed's ``CosineSimCodebook``).

    Same parameters as :class:`EuclideanCodebook` except ``affine_param``,
    which the seed supports only for euclidean codebooks.
    """

    metric = "cosine"
    supports_affine = False

    def _initial_embed(self, shape):
        return l2_normalize(kaiming_uniform(self.rng, shape))
