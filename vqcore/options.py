"""Every option of a vector quantizer, defined once: name, default, check and one-line doc.

:class:`VQOptions` is the single table.  ``VectorQuantizer`` builds one from
its keyword arguments, the file format stores ``asdict(options)``, the
command line derives its flags' checks from :func:`check`, and vqtorch's
``VQConfig`` extends it with the layer's torch-only options.  Every check
raises the same kind of message: the option, the value, what is allowed.
"""
from __future__ import annotations

import inspect
import math
import numbers
from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Optional, Union

__all__ = ["VQOptions", "check", "option_docs", "options_signature", "KMEANS_INITS"]

#: What ``kmeans_init`` accepts besides False: the seed's random rows, or k-means++.
KMEANS_INITS = ("random", "k-means++")
#: Codes per codebook beyond which the state would not fit any machine (and a typo is likelier).
MAX_CODEBOOK_SIZE = 1 << 31


def _fail(name, value, requirement):
    raise ValueError(f"{name}={value!r} is not valid: it must be {requirement}")


def integer(minimum, maximum=None, *, optional=False):
    """A check: an int (not a bool) in ``[minimum, maximum]``, or None when ``optional``."""
    def check_int(name, value):
        if value is None and optional:
            return None
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise TypeError(f"{name} must be an integer{' or None' if optional else ''}; got {value!r}")
        if value < minimum or (maximum is not None and value > maximum):
            _fail(name, value, f">= {minimum}" + (f" and <= {maximum}" if maximum is not None else ""))
        return int(value)
    return check_int


def real(low=-math.inf, high=math.inf, *, low_open=False, high_open=False, optional=False):
    """A check: a finite real number in ``[low, high]`` (open at an end when ``low_open``/``high_open``)."""
    def check_real(name, value):
        if value is None and optional:
            return None
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise TypeError(f"{name} must be a real number{' or None' if optional else ''}; got {value!r}")
        value = float(value)
        below = value <= low if low_open else value < low
        above = value >= high if high_open else value > high
        if not math.isfinite(value) or below or above:
            bounds = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open or high == math.inf else ']'}"
            _fail(name, value, f"a finite number in {bounds}")
        return value
    return check_real


def flag(name, value):
    """A check: a bool (numpy bools too)."""
    if not isinstance(value, bool) and type(value).__name__ != "bool_":
        raise TypeError(f"{name} must be True or False; got {value!r}")
    return bool(value)


def kmeans_init_choice(name, value):
    """A check: False/True (True = the seed's random rows) or one of :data:`KMEANS_INITS`."""
    if isinstance(value, str):
        if value not in KMEANS_INITS:
            _fail(name, value, f"True, False or one of {KMEANS_INITS}")
        return value
    return flag(name, value)


def option(default, check_fn, doc):
    """A dataclass field carrying its check and one-line doc."""
    return field(default=default, metadata={"check": check_fn, "doc": doc})


@dataclass(frozen=True)
class VQOptions:
    """The options of a vector quantizer (the seed's ``VectorQuantize`` codebook side).

    Defaults equal vector-quantize-pytorch 1.14.5's.  Construction checks
    every value and the combinations, so an instance is always valid.
    """

    dim: int = option(MISSING, integer(1), "feature dimension of the input")
    codebook_size: int = option(MISSING, integer(1, MAX_CODEBOOK_SIZE), "codes per codebook")
    codebook_dim: Optional[int] = option(None, integer(1, optional=True),
                                         "dimension of one code (default dim); a projection is used when "
                                         "codebook_dim * heads != dim")
    heads: int = option(1, integer(1), "parts each vector is split into, quantized separately")
    separate_codebook_per_head: bool = option(False, flag, "one codebook per head instead of one shared")
    use_cosine_sim: bool = option(False, flag, "unit-normalise inputs and codes and compare by dot product")
    decay: float = option(0.8, real(0.0, 1.0, high_open=True),
                          "EMA decay of cluster sizes and sums (< 1: at 1 nothing is ever learnt)")
    eps: float = option(1e-5, real(0.0, low_open=True),
                        "Laplace smoothing of cluster sizes (> 0, or unused codes divide by zero)")
    kmeans_init: Union[bool, str] = option(False, kmeans_init_choice,
                                           "initialise the codes by k-means on the first batch: True (the seed's "
                                           "random rows), 'random' or 'k-means++'")
    kmeans_iters: int = option(10, integer(0), "Lloyd iterations of the k-means initialisation")
    threshold_ema_dead_code: float = option(0.0, real(0.0),
                                            "codes whose EMA size falls below this are re-seeded (0: never)")
    reset_cluster_size: Optional[float] = option(None, real(0.0, optional=True),
                                                 "EMA size of a re-seeded code (default threshold_ema_dead_code)")
    affine_param: bool = option(False, flag, "search against the codebook moved onto running batch statistics")
    affine_param_batch_decay: float = option(0.99, real(0.0, 1.0), "EMA decay of the batch statistics")
    affine_param_codebook_decay: float = option(0.9, real(0.0, 1.0), "EMA decay of the codebook statistics")
    sync_kmeans: bool = option(True, flag, "draw the k-means initialisation over all ranks")
    sync_affine_param: bool = option(False, flag, "batch statistics over all ranks")
    stochastic_sample_codes: bool = option(False, flag, "in training, sample codes from softmax(-distance / temp)")
    sample_codebook_temp: float = option(1.0, real(0.0), "temperature of that sampling")
    ema_update: bool = option(True, flag, "update the codebook by EMA in training")

    def __post_init__(self):
        for f in fields(self):
            check_fn = f.metadata.get("check")
            if check_fn is not None:
                object.__setattr__(self, f.name, check_fn(f.name, getattr(self, f.name)))
        self._check_combinations()

    def _check_combinations(self):
        if self.affine_param and self.use_cosine_sim:
            raise ValueError("affine_param=True works only with the euclidean codebook; set use_cosine_sim=False")

    # -- derived values -------------------------------------------------------------------------
    @property
    def num_codebooks(self) -> int:
        """Codebook sets held: one per head with separate codebooks, else one."""
        return self.heads if self.separate_codebook_per_head else 1

    @property
    def effective_codebook_dim(self) -> int:
        """Dimension of one code (``codebook_dim`` or ``dim``)."""
        return self.dim if self.codebook_dim is None else self.codebook_dim

    @property
    def has_projections(self) -> bool:
        """True when inputs are projected into the codebook space and back."""
        return self.effective_codebook_dim * self.heads != self.dim

    @property
    def reset_size(self) -> float:
        """The EMA size given to a re-seeded code."""
        return self.threshold_ema_dead_code if self.reset_cluster_size is None else self.reset_cluster_size

    @classmethod
    def option_names(cls):
        """Names of all options, in table order."""
        return [f.name for f in fields(cls)]

    def to_dict(self):
        """The options as plain values (what a quantizer file stores)."""
        return asdict(self)


def check(name, value, options_class=VQOptions):
    """Check one option's value alone, with the table's rule (for command-line flags)."""
    for f in fields(options_class):
        if f.name == name:
            return f.metadata["check"](name, value)
    raise KeyError(name)


def option_docs(options_class=VQOptions):
    """``{name: one-line doc}`` of every option, for docstrings and ``--help``."""
    return {f.name: f.metadata.get("doc", "") for f in fields(options_class)}


def options_signature(options_class, *, first, extra=()):
    """An ``inspect.Signature``: ``first`` positional names, then every option and ``extra`` as keywords."""
    positional = [inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD) for name in first]
    keywords = [inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=f.default)
                for f in fields(options_class) if f.name not in first]
    keywords += [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default) for name, default in extra]
    return inspect.Signature(positional + keywords)
