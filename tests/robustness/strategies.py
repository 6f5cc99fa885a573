"""Hypothesis strategies: options (valid and invalid) and hostile inputs."""
from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

DIM = 4

#: Per option: values the rules accept, and values they must refuse.
OPTION_VALUES = {
    # decay=1.0 is accepted but poisons the codebook: see test_known_bugs.test_decay_one_keeps_the_codebook_finite
    "decay": ([0.0, 0.5, 0.99], [-0.1, 1.5, float("nan"), float("inf"), "0.8", None]),
    "eps": ([1e-30, 1e-5, 1.0], [0.0, -1e-5, float("nan"), float("inf")]),
    "threshold_ema_dead_code": ([0.0, 0.5, 2.0], [-1.0, float("inf"), float("nan")]),
    "reset_cluster_size": ([None, 0.0, 1.0], [-1.0, float("nan"), float("inf")]),
    "kmeans_init": ([False, True, "k-means++"], ["yes", 1.5]),
    "kmeans_iters": ([0, 1, 3], [-1, 2.5]),
    "affine_param": ([False, True], ["x"]),
    "affine_param_batch_decay": ([0.0, 0.5, 1.0], [2.0, -5.0, float("nan")]),
    "affine_param_codebook_decay": ([0.0, 0.9, 1.0], [2.0, -5.0, float("inf")]),
    "use_cosine_sim": ([False, True], [2]),
    "heads": ([1, 2], [0, -1, 1.0]),
    "separate_codebook_per_head": ([False, True], ["no"]),
    "codebook_dim": ([None, 2, 3], [0, -2]),
    "stochastic_sample_codes": ([False, True], [None]),
    "sample_codebook_temp": ([1.0, 0.5, 1e-3], [0.0, -1.0, float("nan")]),
    "ema_update": ([True, False], ["t"]),
}


@st.composite
def options(draw, valid_only=False, names=tuple(OPTION_VALUES)):
    """A dict of constructor options; unless ``valid_only``, some values may be invalid."""
    chosen = draw(st.lists(st.sampled_from(names), unique=True, max_size=6))
    out = {}
    for name in chosen:
        good, bad = OPTION_VALUES[name]
        invalid = not valid_only and draw(st.booleans()) and draw(st.booleans())
        out[name] = draw(st.sampled_from(bad if invalid else good))
    return out


SCALES = [1e-20, 1e-6, 1.0, 1e6, 1e20]


@st.composite
def arrays(draw, dim=DIM, valid_only=False, max_rows=24):
    """An input batch: mostly (n, dim) float32, sometimes empty, wrong dims, wrong dtype, NaN/Inf, huge or tiny."""
    n = draw(st.integers(1 if valid_only else 0, max_rows))
    kind = "good" if valid_only else draw(st.sampled_from(
        ["good"] * 6 + ["nan", "inf", "wrong_dim", "ndim1", "ndim4", "int", "float16", "complex", "bool", "list"]))
    scale = draw(st.sampled_from(SCALES))
    seed = draw(st.integers(0, 2**16))
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((n, dim)) * scale).astype(dtype)
    if draw(st.booleans()) and n > 1:  # identical rows
        x[:] = x[0]
    if kind == "nan" and n:
        x[rng.integers(n), rng.integers(dim)] = np.nan
    elif kind == "inf" and n:
        x[rng.integers(n), rng.integers(dim)] = -np.inf
    elif kind == "wrong_dim":
        x = x[:, : dim - 1]
    elif kind == "ndim1":
        x = x.reshape(-1)
    elif kind == "ndim4":
        x = x.reshape(1, 1, n, dim)
    elif kind == "int":
        x = (x * 0).astype(np.int64)
    elif kind == "float16":
        x = x.astype(np.float16)
    elif kind == "complex":
        x = x.astype(np.complex64)
    elif kind == "bool":
        x = x > 0
    elif kind == "list":
        x = x.tolist()
    return x


def codes_for(draw, shape, size):
    """Integer codes of ``shape``, sometimes out of range, negative or of a float dtype."""
    kind = draw(st.sampled_from(["good"] * 4 + ["negative", "large", "float", "wrong_shape"]))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    codes = rng.integers(0, size, size=shape)
    if kind == "negative" and codes.size:
        codes.flat[0] = -1
    elif kind == "large" and codes.size:
        codes.flat[0] = size
    elif kind == "float":
        codes = codes.astype(np.float32)
    elif kind == "wrong_shape":
        codes = codes[..., None]
    return codes
