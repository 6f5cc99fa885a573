"""``VectorQuantizer``: the seed's ``VectorQuantize`` layer as a numpy object.

It trains the codebook (EMA, k-means init, dead codes, affine statistics) and
encodes/decodes, with the seed's argument names, layouts and state-dict keys.
Projections (``codebook_dim * heads != dim``) are applied but not trained
here: load them from a layer trained in torch.
"""
from __future__ import annotations

import threading
import warnings

import numpy as np
from tqdm.auto import tqdm

from . import _validate, metrics
from .codebook import CosineSimCodebook, EuclideanCodebook
from .comm import check_same, resolve_comm
from .layout import HeadLayout
from .linalg import l2_normalize
from .options import VQOptions, check, options_signature
from .state import check_state, read_npz, to_numpy, write_npz

__all__ = ["VectorQuantizer"]

#: Options handed to the codebook (the rest shape the layout and projections).
CODEBOOK_OPTIONS = (
    "kmeans_init", "kmeans_iters", "decay", "eps", "threshold_ema_dead_code", "reset_cluster_size",
    "ema_update", "affine_param", "affine_param_batch_decay", "affine_param_codebook_decay",
    "sync_affine_param", "sync_kmeans", "stochastic_sample_codes", "sample_codebook_temp",
)


def linear_init(rng, fan_out, fan_in):
    """``nn.Linear``'s default initialisation: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    bound = 1.0 / np.sqrt(fan_in)
    weight = rng.uniform(-bound, bound, size=(fan_out, fan_in)).astype(np.float32)
    bias = rng.uniform(-bound, bound, size=fan_out).astype(np.float32)
    return weight, bias


class VectorQuantizer:
    """Vector quantizer with the seed's codebook training, in numpy.

    Parameters
    ----------
    dim : int
        Feature dimension of the input.
    codebook_size : int
        Codes per codebook.
    codebook_dim : int, optional
        Code dimension per head (default ``dim``); a projection is used when
        ``codebook_dim * heads != dim``.
    heads : int
        Split each vector into ``heads`` parts quantized separately.
    separate_codebook_per_head : bool
        One codebook per head instead of one shared by all heads.
    use_cosine_sim : bool
        Unit-normalise inputs and codes and compare by dot product.
    decay, eps, kmeans_init, kmeans_iters, threshold_ema_dead_code, reset_cluster_size,
    affine_param, affine_param_batch_decay, affine_param_codebook_decay, stochastic_sample_codes,
    sample_codebook_temp, ema_update :
        As in the seed's ``VectorQuantize`` (see :class:`vqcore.EuclideanCodebook`).
    sync_kmeans, sync_affine_param : bool
        With ``comm``: draw the k-means initialisation / affine statistics across ranks.
    seed : int, numpy.random.Generator or None
        Randomness of initialisation, k-means, expiry and sampling.
    comm : vqcore.comm.Communicator, optional
        Train one codebook over all ranks (counts and sums are all-reduced).

    Examples
    --------
    >>> import numpy as np, vqcore
    >>> vq = vqcore.VectorQuantizer(dim=8, codebook_size=16, kmeans_init=True, seed=0)
    >>> x = np.random.default_rng(0).standard_normal((256, 8)).astype(np.float32)
    >>> _ = vq.fit(x, batch_size=128, epochs=2, progress=False)
    >>> codes = vq.encode(x)
    >>> vq.decode(codes).shape
    (256, 8)
    """

    def __init__(self, dim, codebook_size, *, seed=None, comm=None, **options):
        known = set(VQOptions.option_names())
        unknown = sorted(set(options) - known)
        if unknown:
            raise TypeError(f"VectorQuantizer got unknown options {unknown}; the options are {sorted(known)}")
        self.options = VQOptions(dim=dim, codebook_size=codebook_size, **options)
        self.comm = resolve_comm(comm)
        self.rng = _validate.rng(seed)
        opts = self.options
        self.layout = HeadLayout(opts.heads, opts.separate_codebook_per_head)
        codebook_class = CosineSimCodebook if opts.use_cosine_sim else EuclideanCodebook
        self._codebook = codebook_class(
            opts.effective_codebook_dim, opts.codebook_size, num_codebooks=opts.num_codebooks,
            **{name: getattr(opts, name) for name in CODEBOOK_OPTIONS}, seed=self.rng, comm=self.comm,
        )
        inner = opts.effective_codebook_dim * opts.heads
        self.project_in = linear_init(self.rng, inner, opts.dim) if opts.has_projections else None
        self.project_out = linear_init(self.rng, opts.dim, inner) if opts.has_projections else None
        self._projections_trained = False
        self._options_checked = False
        # Training mutates the state in several steps; one lock per quantizer keeps concurrent
        # calls from different threads whole (they run one after another).
        self._lock = threading.RLock()

    def __getstate__(self):
        state = dict(self.__dict__)
        del state["_lock"]
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._lock = threading.RLock()

    # -- the options, read-only -------------------------------------------------
    dim = property(lambda self: self.options.dim, doc="Feature dimension of the input.")
    codebook_size = property(lambda self: self.options.codebook_size, doc="Codes per codebook.")
    codebook_dim = property(lambda self: self.options.effective_codebook_dim, doc="Dimension of one code.")
    heads = property(lambda self: self.options.heads, doc="Parts each vector is split into.")
    separate_codebook_per_head = property(lambda self: self.options.separate_codebook_per_head,
                                          doc="One codebook per head.")
    use_cosine_sim = property(lambda self: self.options.use_cosine_sim, doc="Cosine codebook.")
    has_projections = property(lambda self: self.options.has_projections,
                               doc="Inputs are projected into the codebook space and back.")

    # -- configuration ------------------------------------------------------
    @property
    def config(self):
        """The options as a dict (the constructor arguments without ``seed``/``comm``), as saved by :meth:`save`."""
        return self.options.to_dict()

    @property
    def code_shape(self):
        """Shape of one vector's codes: ``()``, or ``(heads,)`` with several heads."""
        return (self.heads,) if self.heads > 1 else ()

    @property
    def codebook(self):
        """The codes: ``(codebook_size, codebook_dim)``, or ``(heads, ...)`` with separate codebooks."""
        embed = self._codebook.embed
        return embed if self.separate_codebook_per_head else embed[0]

    # -- layouts ------------------------------------------------------------
    def _check_input(self, x, mask):
        x = _validate.float_array("x", x, ndims=(2, 3))
        if x.shape[-1] != self.dim:
            raise ValueError(f"x has {x.shape[-1]} features (shape {x.shape}) but the quantizer has dim={self.dim}")
        only_one = x.ndim == 2
        x3 = x[:, None, :] if only_one else x
        if mask is not None:
            mask = np.asarray(mask)
            if mask.dtype != np.bool_:
                raise TypeError(f"mask must be a bool array; got dtype {mask.dtype}")
            expected = x3.shape[:1] if only_one else x3.shape[:2]
            if mask.shape != expected:
                raise ValueError(f"mask has shape {mask.shape}; it must be {expected} to match x of shape {x.shape}")
            # a rank holding no rows legitimately sends an empty mask in a distributed step
            if not mask.any() and self.comm.size == 1:
                raise ValueError("mask is all False: no vector would be quantized or trained on")
            mask = mask.reshape(x3.shape[:2])
        return x, x3, mask, only_one

    def _project(self, x3, params):
        if params is None:
            return x3.astype(np.float32, copy=False)
        weight, bias = params
        return (x3.astype(np.float32, copy=False) @ weight.T + bias).astype(np.float32)

    def _forward(self, x, mask, training, *, freeze_codebook=False, sample_codebook_temp=None, want_vectors=True,
                 inference=False):
        """Validate everything, then run the codebook: training step, the seed's eval, or pure inference."""
        if sample_codebook_temp is not None:
            sample_codebook_temp = check("sample_codebook_temp", sample_codebook_temp)
        x, x3, mask, only_one = self._check_input(x, mask)
        if self.comm.size == 1 and x3.shape[0] * x3.shape[1] == 0 and not inference:
            # (a rank of a distributed job may hold no rows: the step's collectives still need it)
            raise ValueError(f"x has no rows (shape {x.shape}); pass at least one vector")
        if inference:
            self._check_trained()
        if training and self.comm.size > 1 and not self._options_checked:
            # ranks with different options would corrupt each other's sums silently
            check_same(self.comm, **self.config)
            self._options_checked = True
        b, n, _ = x3.shape
        flat = self.layout.split(self._project(x3, self.project_in))
        if self.use_cosine_sim:
            flat = l2_normalize(flat)
        if inference:
            q, indices = self._codebook.infer(flat, return_quantize=want_vectors)
        else:
            q, indices = self._codebook.forward(
                flat, training=training, mask=None if mask is None else self.layout.mask(mask),
                freeze_codebook=freeze_codebook, sample_codebook_temp=sample_codebook_temp,
                return_quantize=want_vectors,
            )
        indices = self.layout.indices(indices, b, n)
        indices = np.ascontiguousarray(indices[:, 0] if only_one else indices)
        if not want_vectors:
            return None, indices
        out = self._project(self.layout.merge(q, b, n), self.project_out).astype(x.dtype, copy=False)
        if mask is not None:
            out = np.where(mask[..., None], out, x3)  # masked positions give back the input, as in the seed
        return (out[:, 0] if only_one else out), indices

    def _check_trained(self):
        if not self._codebook.initted[0] or not self._codebook.ready_for_inference():
            raise ValueError("the quantizer has not been trained (k-means initialisation and affine statistics "
                             "come from the first training batch): call fit or partial_fit first")

    # -- public API -----------------------------------------------------------
    def partial_fit(self, x, mask=None, *, freeze_codebook=False, sample_codebook_temp=None):
        """One training step on a batch (the seed's training forward, codebook side).

        Parameters
        ----------
        x : array_like of shape (batch, n, dim) or (n, dim)
        mask : array_like of bool, shape (batch, n) or (n,), optional
            Positions left out of training; their output is the input.
        freeze_codebook : bool
            Assign (and sample) as in training but leave the codebook as it is.
        sample_codebook_temp : float, optional
            Overrides the temperature of stochastic code sampling for this call.

        Returns
        -------
        quantized : ndarray, same shape as ``x``
        indices : ndarray of int64, shape (batch, n) or (n,), with a trailing ``heads`` axis when heads > 1
        """
        with self._lock:
            return self._forward(x, mask, training=True, freeze_codebook=freeze_codebook,
                                 sample_codebook_temp=sample_codebook_temp)

    def quantize(self, x, mask=None):
        """Quantize without training (the seed's eval forward); returns ``(vectors, indices)``.

        As in the seed, an uninitialised k-means codebook is initialised on
        this batch and affine batch statistics are updated.
        """
        with self._lock:
            return self._forward(x, mask, training=False)

    def encode(self, x):
        """Code indices of ``x``: inference only, the state does not change.

        Unlike :meth:`quantize` (the seed's eval forward), this neither runs
        k-means on an untrained codebook nor updates affine batch statistics:
        encoding the same data twice gives the same codes.

        Raises
        ------
        ValueError
            The quantizer has not been trained (no k-means initialisation or
            affine statistics yet).
        """
        with self._lock:
            return self._forward(x, None, training=False, want_vectors=False, inference=True)[1]

    def get_codes_from_indices(self, indices):
        """Code vectors for ``indices``, heads concatenated: shape ``indices.shape[:-1] + (heads * codebook_dim,)`` when heads > 1."""
        indices = np.asarray(indices)
        if indices.dtype.kind not in "iu":
            raise TypeError(f"indices must be integers; got dtype {indices.dtype}")
        if indices.size and (indices.min() < 0 or indices.max() >= self.codebook_size):
            raise ValueError(
                f"indices must lie in [0, {self.codebook_size}); got values from {indices.min()} to {indices.max()}"
            )
        embed = self._codebook.embed
        if self.heads == 1:
            return embed[0][indices]
        if indices.ndim == 0 or indices.shape[-1] != self.heads:
            raise ValueError(f"indices need a last axis of size heads={self.heads}; got shape {indices.shape}")
        if self.separate_codebook_per_head:
            parts = [embed[h][indices[..., h]] for h in range(self.heads)]
        else:
            parts = [embed[0][indices[..., h]] for h in range(self.heads)]
        return np.concatenate(parts, axis=-1)

    def decode(self, indices):
        """Vectors for code indices (the seed's ``get_output_from_indices``): codes, then ``project_out``."""
        codes = self.get_codes_from_indices(indices)
        return self._project(codes, self.project_out)

    def fit(self, x, *, batch_size=4096, epochs=1, progress=True, shuffle=True):
        """Train on a whole array (or an iterable of batches).

        Parameters
        ----------
        x : array_like of shape (n, dim), or an iterable of such batches
            An array (a ``np.memmap`` works) is cut into contiguous batches;
            their order is shuffled every epoch when ``shuffle``.
        batch_size : int
        epochs : int
        progress : bool
            Show a tqdm progress bar with the codebook perplexity.
        shuffle : bool

        Returns
        -------
        self
        """
        batch_size = _validate.positive_int("batch_size", batch_size)
        epochs = _validate.positive_int("epochs", epochs)
        self._warn_if_untrained_projections()
        total = epochs * len(x) if hasattr(x, "shape") else None  # vectors, when known
        with tqdm(total=total, disable=not progress, unit="vec", unit_scale=True, desc="fit") as bar:
            for _ in range(epochs):
                for batch in self._batches(x, batch_size, shuffle):
                    self.partial_fit(batch)
                    bar.update(len(batch))  # after the step, so the bar never runs ahead of the work
                    bar.set_postfix(perplexity=f"{self.usage()['perplexity']:.1f}", refresh=False)
            if progress:
                bar.write(f"fit: {bar.n} vectors in {bar.format_dict['elapsed']:.3g} s, "
                          f"codebook perplexity {self.usage()['perplexity']:.4g} of {self.codebook_size}")
        return self

    def _batches(self, x, batch_size, shuffle):
        if not hasattr(x, "shape"):
            return x
        if len(x.shape) != 2:
            raise ValueError(f"fit takes an array of shape (n, dim); got shape {x.shape}")
        starts = np.arange(0, x.shape[0], batch_size)
        if shuffle:
            starts = self.rng.permutation(starts)
        return (np.asarray(x[s : s + batch_size]) for s in starts)

    def usage(self, dead_threshold=None):
        """Codebook health.

        Parameters
        ----------
        dead_threshold : float, optional
            EMA size under which a code counts as dead; defaults to
            ``threshold_ema_dead_code`` when set, else 1e-3.

        Returns
        -------
        dict with ``counts`` (EMA cluster sizes, (n_codebooks, k)),
        ``perplexity`` (exp of the entropy of code usage, averaged over
        codebooks; ``codebook_size`` means uniform use) and ``dead_codes``.
        """
        counts = self._codebook.cluster_size.astype(np.float64)
        threshold = dead_threshold
        if threshold is None:
            threshold = self._codebook.threshold_ema_dead_code or 1e-3
        return {
            "counts": counts.astype(np.float32),
            "perplexity": metrics.perplexity(counts),
            "dead_codes": int((counts < threshold).sum()),
        }

    def score(self, x, *, batch_size=65536):
        """Reconstruction error and code usage of ``x`` (inference only: the codebook does not change).

        Parameters
        ----------
        x : array_like of shape (n, dim)
        batch_size : int
            Rows encoded at a time.

        Returns
        -------
        dict
            ``n``, ``inertia`` (sum of squared errors), ``mse`` (per element),
            ``variance`` (of ``x`` per element), ``relative_mse``,
            ``perplexity`` and ``dead_codes`` of the codes ``x`` chose; see
            :func:`vqcore.metrics.score`.  Cosine quantizers are compared with
            the unit-normalised rows.
        """
        x = _validate.float_array("x", x, ndims=(2,))
        batch_size = _validate.positive_int("batch_size", batch_size)
        return metrics.score(self, (x[s:s + batch_size] for s in range(0, len(x), batch_size)))

    # -- state ------------------------------------------------------------------
    def _expected_state(self):
        shapes = {}
        if self.has_projections:
            inner = self.codebook_dim * self.heads
            shapes.update({"project_in.weight": (inner, self.dim), "project_in.bias": (inner,),
                           "project_out.weight": (self.dim, inner), "project_out.bias": (self.dim,)})
        shapes.update({f"_codebook.{k}": s for k, s in self._codebook.state_shapes().items()})
        return shapes

    def state_dict(self):
        """Copies of the state, with the keys and shapes of the seed module's ``state_dict``."""
        state = {}
        if self.has_projections:
            for name in ("project_in", "project_out"):
                weight, bias = getattr(self, name)
                state[f"{name}.weight"], state[f"{name}.bias"] = weight.copy(), bias.copy()
        for key in self._codebook.state_keys():
            state[f"_codebook.{key}"] = np.array(getattr(self._codebook, key), copy=True)
        return state

    def load_state_dict(self, state_dict, strict=True):
        """Load a state dict from :meth:`state_dict`, the seed's module or vqtorch (torch tensors work).

        Everything is checked before anything changes: on error the quantizer is untouched.
        With ``strict=False`` keys may be missing, but a projection's weight
        needs its bias (and the reverse), and affine batch statistics come in
        pairs, so the quantizer never holds half of either.

        Raises
        ------
        ValueError
            A key is missing or unexpected (with ``strict``), a shape differs,
            a value is not usable state (see :func:`vqcore.state.check_state`),
            or half a projection or half the batch statistics is given.
        TypeError
            ``state_dict`` is not a mapping.
        """
        if not hasattr(state_dict, "items"):
            raise TypeError(f"state_dict must be a dict of arrays; got {type(state_dict).__name__}")
        optional = {"_codebook.batch_mean", "_codebook.batch_variance"}
        state = check_state({k: to_numpy(v) for k, v in state_dict.items()}, self._expected_state(),
                            optional=optional, strict=strict)
        self._check_pairs(state)
        with self._lock:
            if self.has_projections:
                for name in ("project_in", "project_out"):
                    if f"{name}.weight" in state:
                        setattr(self, name, (state[f"{name}.weight"], state[f"{name}.bias"]))
                        self._projections_trained = True
            for key, value in state.items():
                if key.startswith("_codebook."):
                    setattr(self._codebook, key[len("_codebook."):], value)
        return self

    def _check_pairs(self, state):
        """Refuse half a projection, or batch statistics the codebook would then hold only half of."""
        pairs = [("project_in.weight", "project_in.bias"), ("project_out.weight", "project_out.bias")]
        for first, second in pairs:
            if (first in state) != (second in state):
                given, absent = (first, second) if first in state else (second, first)
                raise ValueError(f"state dict has {given} but not {absent}: a projection loads whole "
                                 "(pass both, or neither with strict=False)")
        mean, var = "_codebook.batch_mean", "_codebook.batch_variance"
        held = {key: key in state or getattr(self._codebook, key[len("_codebook."):], None) is not None
                for key in (mean, var)}
        if held[mean] != held[var]:
            given = mean if mean in state else var
            raise ValueError(f"state dict has {given} without {var if given == mean else mean}: the affine batch "
                             "statistics load together (pass both, or neither)")

    def save(self, path):
        """Write configuration and state to one ``.npz`` file, atomically (no pickle)."""
        write_npz(path, kind="VectorQuantizer", config=self.config, state=self.state_dict())

    @classmethod
    def load(cls, path, *, seed=None, comm=None):
        """Read a quantizer written by :meth:`save`.

        The quantizer is built from the file's configuration first, and every
        stored array's declared shape is checked against the shapes that
        configuration implies before any array data is read.

        Raises
        ------
        ValueError
            The file is not a vqcore quantizer file, is damaged, holds a
            configuration this vqcore refuses, or is of an unknown version.
        """
        built = {}

        def expected(config):
            unknown = set(config) - set(VQOptions.option_names())
            if unknown:
                raise ValueError(f"{path}: unknown configuration keys {sorted(unknown)}; written by a newer vqcore?")
            try:
                built["quantizer"] = cls(**config, seed=seed, comm=comm)
            except (TypeError, ValueError) as exc:
                raise ValueError(f"{path}: the stored configuration is refused: {exc}") from None
            return built["quantizer"]._expected_state()

        _, state = read_npz(path, kind="VectorQuantizer", expected=expected)
        return built["quantizer"].load_state_dict(state)

    def _warn_if_untrained_projections(self):
        """Warn that projections exist but were never loaded (vqcore does not train them)."""
        if self.has_projections and not self._projections_trained:
            warnings.warn(
                "codebook_dim * heads != dim: vqcore applies random fixed projections and does not train "
                "them; load trained ones with load_state_dict or choose codebook_dim = dim // heads",
                UserWarning,
                stacklevel=3,
            )

    def __repr__(self):
        args = ", ".join(f"{k}={getattr(self.options, k)!r}" for k in ("dim", "codebook_size", "heads"))
        return f"VectorQuantizer({args}, use_cosine_sim={self.use_cosine_sim})"


# help() and IDEs show every option with its default, though they are defined once in VQOptions.
VectorQuantizer.__init__.__signature__ = options_signature(
    VQOptions, first=("self", "dim", "codebook_size"), extra=(("seed", None), ("comm", None)))
