"""Codebooks with the seed's state and training step, in numpy.

A codebook holds ``n_codebooks`` sets of ``k`` codes of dimension ``d`` and
their EMA statistics.  A training step is four named steps, each usable on
its own (a residual stack or a shared codebook calls them separately):

``assign``        nearest (or sampled) code of every row;
``cluster_stats`` rows and row sums per code, all-reduced over ranks;
``apply_ema``     move sizes and sums towards them, recompute the codes;
``expire_codes``  re-seed codes whose EMA size fell below the threshold.

``forward`` runs them in the seed's order on flattened input
``(n_codebooks, n, d)`` (the seed's ``'h * d'`` packing).
"""
from __future__ import annotations

import contextvars
from contextlib import contextmanager

import numpy as np

from . import _validate, ema
from .cluster import kmeans
from .comm import resolve_comm
from .linalg import l2_normalize
from .options import check
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


class _EMACodebook:
    """State and training steps shared by both metrics; subclasses set ``metric``.

    Parameters
    ----------
    dim : int
        Code dimension ``d``.
    codebook_size : int
        Codes per codebook ``k``.
    num_codebooks : int
        Independent codebook sets (one per head with separate codebooks).
    kmeans_init : bool or {"random", "k-means++"}
        Start from zeros and run k-means on the first training batch (True:
        the seed's random rows as starting means).
    kmeans_iters : int
    decay : float
        EMA decay of cluster sizes and sums.
    eps : float
        Laplace smoothing of cluster sizes (> 0).
    threshold_ema_dead_code : float
        Codes whose EMA size falls below this are replaced by batch vectors
        (0 turns it off).  The seed's codebook default is 2.
    reset_cluster_size : float, optional
        Size given to a replaced code; defaults to ``threshold_ema_dead_code``.
    ema_update : bool
        Update the codebook in training.
    sync_kmeans : bool
        Draw the k-means initialisation across ranks of ``comm``.
    stochastic_sample_codes : bool
        In training, sample codes from ``softmax(-distance / temperature)``.
    sample_codebook_temp : float
    seed : int, numpy.random.Generator or None
        Drives initialisation, k-means sampling, expiry and stochastic codes.
    comm : vqcore.comm.Communicator, optional
        Counts and sums are all-reduced, so all ranks keep the same codebook.

    Every option is checked with :mod:`vqcore.options`' rules.
    """

    metric = None

    def __init__(self, dim, codebook_size, *, num_codebooks=1, kmeans_init=False, kmeans_iters=10, decay=0.8,
                 eps=1e-5, threshold_ema_dead_code=2, reset_cluster_size=None, ema_update=True, sync_kmeans=True,
                 stochastic_sample_codes=False, sample_codebook_temp=1.0, seed=None, comm=None):
        self.dim = check("dim", dim)
        self.codebook_size = check("codebook_size", codebook_size)
        self.num_codebooks = _validate.positive_int("num_codebooks", num_codebooks)
        self.kmeans_init = check("kmeans_init", kmeans_init)
        self.kmeans_iters = check("kmeans_iters", kmeans_iters)
        self.decay = check("decay", decay)
        self.eps = check("eps", eps)
        self.threshold_ema_dead_code = check("threshold_ema_dead_code", threshold_ema_dead_code)
        reset = check("reset_cluster_size", reset_cluster_size)
        self.reset_cluster_size = self.threshold_ema_dead_code if reset is None else reset
        self.ema_update = check("ema_update", ema_update)
        self.sync_kmeans = check("sync_kmeans", sync_kmeans)
        self.stochastic_sample_codes = check("stochastic_sample_codes", stochastic_sample_codes)
        self.sample_codebook_temp = check("sample_codebook_temp", sample_codebook_temp)
        self.comm = resolve_comm(comm)
        self.rng = _validate.rng(seed)

        shape = (self.num_codebooks, self.codebook_size, self.dim)
        embed = np.zeros(shape, np.float32) if self.kmeans_init else self._initial_embed(shape)
        self.initted = np.array([0.0 if self.kmeans_init else 1.0], dtype=np.float32)
        self.cluster_size = np.zeros(shape[:2], dtype=np.float32)
        self.embed_avg = embed.copy()
        self.embed = embed

    def _initial_embed(self, shape):
        return kaiming_uniform(self.rng, shape)

    # -- state ------------------------------------------------------------
    def state_keys(self):
        """Names of the state arrays, in the seed module's order."""
        return list(STATE_KEYS)

    def state_shapes(self):
        """Expected shape of every state array."""
        c, k, d = self.num_codebooks, self.codebook_size, self.dim
        return {"initted": (1,), "cluster_size": (c, k), "embed_avg": (c, k, d), "embed": (c, k, d)}

    # -- the named steps -----------------------------------------------------
    def init_embed_(self, data, mask=None):
        """k-means initialisation on the first batch, if not done yet."""
        if self.initted[0]:
            return
        if mask is not None:
            data = np.stack([part[m] for part, m in zip(data, mask)])
        comm = self.comm if self.sync_kmeans else None
        init = "k-means++" if self.kmeans_init == "k-means++" else None
        means, counts = kmeans(data, self.codebook_size, iters=self.kmeans_iters, metric=self.metric,
                               init=init, seed=self.rng, comm=comm)
        counts = counts.astype(np.float32)
        with np.errstate(over="ignore"):
            average = means * counts[..., None]
        if not (np.isfinite(means).all() and np.isfinite(average).all()):  # before anything is written
            raise ValueError(f"k-means on this batch overflows float32 (values up to {np.abs(data).max():.3g} in "
                             "magnitude); rescale x (the codebook is unchanged).")
        self.embed[...] = means
        self.embed_avg[...] = average
        self.cluster_size[...] = counts
        self.initted[...] = 1.0

    def search_codebook(self):
        """The codes searched against."""
        return self.embed

    def assign(self, x, codebook=None, *, training=False, sample_codebook_temp=None):
        """Code indices ``(n_codebooks, n)``: exact nearest, or gumbel-sampled in stochastic training."""
        codebook = self.search_codebook() if codebook is None else codebook
        temperature = self.sample_codebook_temp if sample_codebook_temp is None else sample_codebook_temp
        if training and self.stochastic_sample_codes and temperature > 0:
            logits = distances_unchecked(x, codebook, self.metric)
            return gumbel_sample(logits, temperature=temperature, stochastic=True, rng=self.rng)
        return nearest_unchecked(x, codebook, self.metric)[0]

    def training_targets(self, x):
        """What the EMA averages for rows ``x`` (the rows themselves here)."""
        return x

    def cluster_stats(self, x, indices, mask=None):
        """This batch's ``(counts, sums)`` per code, all-reduced over ranks."""
        return ema.cluster_stats(self.training_targets(x), indices, self.codebook_size, mask=mask, comm=self.comm)

    def apply_ema(self, counts, sums):
        """Move the EMA sizes and sums towards ``counts``/``sums`` and recompute the codes, in place."""
        ema.ema_update_(self.cluster_size, self.embed_avg, self.embed, counts, sums,
                        decay=self.decay, eps=self.eps, metric=self.metric)

    def expire_codes(self, samples):
        """Re-seed dead codes from ``samples`` (the unmasked batch); returns the (c, k) mask of replaced codes."""
        return ema.expire_codes_(self.cluster_size, self.embed_avg, self.embed, samples,
                                 threshold=self.threshold_ema_dead_code, reset_cluster_size=self.reset_cluster_size,
                                 rng=self.rng, metric=self.metric, comm=self.comm)

    def update_statistics_(self, x, mask, *, training):
        """Running statistics kept besides the codes (none here)."""

    def ready_for_inference(self):
        """Whether :meth:`infer` has every statistic it needs."""
        return bool(self.initted[0])

    def infer(self, x, *, return_quantize=True):
        """Nearest codes of ``x`` (and their vectors) with the state as it is: nothing is updated."""
        codebook = self.search_codebook()
        indices = self.assign(x, codebook)
        return (gather(codebook, indices) if return_quantize else None), indices

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
        with unchanged_on_error([self]):
            self.init_embed_(x, mask)  # the seed initialises on whatever batch comes first, eval too
            self.update_statistics_(x, mask, training=training)
            codebook = self.search_codebook()
            indices = self.assign(x, codebook, training=training, sample_codebook_temp=sample_codebook_temp)
            quantize = gather(codebook, indices) if return_quantize else None
            if training and self.ema_update and not freeze_codebook:
                self.apply_ema(*self.cluster_stats(x, indices, mask))
                self.expire_codes(x)
        return quantize, indices

    __call__ = forward


_OPEN = contextvars.ContextVar("vqcore_codebook_transaction_open", default=False)


@contextmanager
def unchanged_on_error(codebooks):
    """Run a step that may update ``codebooks``; if it raises, put back every state array and generator.

    The steps check what they write, but a later one can fail after an earlier one wrote
    (affine statistics accepted, then the EMA sums overflow; stage 1 of a residual stack
    trained, then stage 2 refused): the step is all or nothing. Inside an open transaction
    (a stack's stage) nothing more is saved: the outer one covers it.
    """
    if _OPEN.get():
        yield
        return
    saved = [(codebook, key, value, None if value is None else value.copy())
             for codebook in codebooks for key in codebook.state_shapes()
             for value in [getattr(codebook, key, None)]]
    generators = {id(codebook.rng): (codebook.rng, codebook.rng.bit_generator.state) for codebook in codebooks}
    token = _OPEN.set(True)
    try:
        yield
    except BaseException:
        for codebook, key, value, copy in saved:
            if value is not None:
                value[...] = copy
            setattr(codebook, key, value)
        for generator, state in generators.values():
            generator.bit_generator.state = state
        raise
    finally:
        _OPEN.reset(token)


def gather(codebook, indices):
    """``codebook[h][indices[h]]`` for every set: (c, k, d), (c, n) -> (c, n, d)."""
    if codebook.shape[0] == 1:  # skip the stack's copy in the common one-codebook case
        return codebook[0].take(indices[0], axis=0)[None]
    return np.stack([codes.take(ind, axis=0) for codes, ind in zip(codebook, indices)])


class EuclideanCodebook(_EMACodebook):
    """Codes compared by euclidean distance, trained by EMA (the seed's ``EuclideanCodebook``).

    Parameters
    ----------
    dim, codebook_size, num_codebooks, kmeans_init, kmeans_iters, decay, eps, threshold_ema_dead_code,
    reset_cluster_size, ema_update, sync_kmeans, stochastic_sample_codes, sample_codebook_temp, seed, comm :
        See :class:`CosineSimCodebook`'s shared base (``vqcore.codebook._EMACodebook``).
    affine_param : bool
        Keep running batch and codebook statistics and search against the
        codebook moved onto the batch's mean and variance.
    affine_param_batch_decay, affine_param_codebook_decay : float
    sync_affine_param : bool
        Affine batch statistics over all ranks of ``comm``.
    """

    metric = "euclidean"

    def __init__(self, dim, codebook_size, *, affine_param=False, affine_param_batch_decay=0.99,
                 affine_param_codebook_decay=0.9, sync_affine_param=False, **options):
        self.affine_param = check("affine_param", affine_param)
        self.affine_param_batch_decay = check("affine_param_batch_decay", affine_param_batch_decay)
        self.affine_param_codebook_decay = check("affine_param_codebook_decay", affine_param_codebook_decay)
        self.sync_affine_param = check("sync_affine_param", sync_affine_param)
        super().__init__(dim, codebook_size, **options)
        if self.affine_param:
            stat = (self.num_codebooks, 1, self.dim)
            self.batch_mean = None
            self.batch_variance = None
            self.codebook_mean_needs_init = np.ones(1, np.float32)
            self.codebook_mean = np.zeros(stat, np.float32)
            self.codebook_variance_needs_init = np.ones(1, np.float32)
            self.codebook_variance = np.ones(stat, np.float32)  # defined until the first training step

    def state_keys(self):
        """Names of the state arrays, in the seed module's order (affine statistics that exist)."""
        keys = super().state_keys()
        if self.affine_param:
            keys += [k for k in AFFINE_KEYS if getattr(self, k) is not None]
        return keys

    def state_shapes(self):
        """Expected shape of every state array (affine batch statistics included)."""
        shapes = super().state_shapes()
        if self.affine_param:
            stat = (self.num_codebooks, 1, self.dim)
            shapes.update(batch_mean=stat, batch_variance=stat, codebook_mean=stat, codebook_variance=stat,
                          codebook_mean_needs_init=(1,), codebook_variance_needs_init=(1,))
        return shapes

    def update_statistics_(self, x, mask, *, training):
        """Running codebook (training only) and batch statistics, as the seed keeps them."""
        if not self.affine_param:
            return
        comm = self.comm if self.sync_affine_param else None
        stats = ema.batch_stats(x, mask, comm=comm)  # first: a batch it refuses must change nothing
        if stats is not None and not all(np.isfinite(part).all() for part in stats):
            raise ValueError("x's mean or variance overflows float32 (values around 1e19 or beyond): rescale "
                             "the data before quantizing it with affine_param=True")
        if training:
            embed64 = self.embed.astype(np.float64)
            mean = embed64.mean(axis=1, keepdims=True).astype(np.float32)
            var = embed64.var(axis=1, keepdims=True).astype(np.float32)
            self.codebook_mean = self._decayed("codebook_mean", mean, self.affine_param_codebook_decay)
            self.codebook_variance = self._decayed("codebook_variance", var, self.affine_param_codebook_decay)
        if stats is None:  # no rows (here, or on every rank): the running statistics stay as they are
            return
        mean, var = stats
        self.batch_mean = self._decayed("batch_mean", mean, self.affine_param_batch_decay)
        self.batch_variance = self._decayed("batch_variance", var, self.affine_param_batch_decay)

    def _decayed(self, name, new, decay):
        flag = getattr(self, name + "_needs_init", None)
        if flag is not None and flag[0]:
            flag[...] = 0.0
            return np.array(new, dtype=np.float32)
        return ema.decay_update(getattr(self, name), new, decay)

    def ready_for_inference(self):
        """Whether :meth:`infer` has every statistic it needs (affine: batch statistics from training)."""
        return super().ready_for_inference() and (not self.affine_param or self.batch_mean is not None)

    def search_codebook(self):
        """The codes searched against: the embedding, moved onto batch statistics with affine_param."""
        if not self.affine_param:
            return self.embed
        return ema.affine_embed(self.embed, self.codebook_mean, self.codebook_variance,
                                self.batch_mean, self.batch_variance).astype(np.float32)

    def training_targets(self, x):
        """Rows moved back from batch to codebook statistics before averaging (affine_param)."""
        if not self.affine_param:
            return x
        return ema.affine_to_codebook(x, self.codebook_mean, self.codebook_variance,
                                      self.batch_mean, self.batch_variance).astype(np.float32)


class CosineSimCodebook(_EMACodebook):
    """Unit-norm codes compared by dot product (the seed's ``CosineSimCodebook``).

    Same parameters as :class:`EuclideanCodebook` without the affine ones,
    which the seed supports only for euclidean codebooks.
    """

    metric = "cosine"

    def __init__(self, dim, codebook_size, *, affine_param=False, affine_param_batch_decay=0.99,
                 affine_param_codebook_decay=0.9, sync_affine_param=False, **options):
        if affine_param:
            raise ValueError("affine_param=True works only with the euclidean codebook; set use_cosine_sim=False")
        # the other affine options are checked like everywhere, and unused (as in the seed)
        check("affine_param_batch_decay", affine_param_batch_decay)
        check("affine_param_codebook_decay", affine_param_codebook_decay)
        check("sync_affine_param", sync_affine_param)
        super().__init__(dim, codebook_size, **options)

    def _initial_embed(self, shape):
        return l2_normalize(kaiming_uniform(self.rng, shape))
