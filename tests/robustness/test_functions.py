"""kmeans, nearest and the FSQ/LFQ numpy twins on hostile inputs."""
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import vqcore
from vqcore.fsq import FSQ, ResidualFSQ
from vqcore.lfq import LFQ, ResidualLFQ

from .helpers import ALLOWED, count_case
from .strategies import DIM, arrays, codes_for

FAST = settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))


@FAST
@given(arrays(), st.integers(-1, 6), st.sampled_from(["euclidean", "cosine", "manhattan"]),
       st.sampled_from([None, "random", "rows", "k-means++", "bogus"]), st.integers(-1, 3))
def test_kmeans_returns_finite_means_or_refuses(x, k, metric, init, iters):
    count_case()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            means, counts = vqcore.kmeans(x, k, iters=iters, metric=metric, init=init, seed=0)
        except ALLOWED:
            return
    assert means.shape == (k, np.shape(x)[-1]) and np.all(np.isfinite(means))
    assert counts.sum() == len(x)


@FAST
@given(arrays(), arrays(max_rows=6), st.sampled_from(["euclidean", "cosine", "dot"]))
def test_nearest_agrees_with_brute_force_or_refuses(x, codebook, metric):
    count_case()
    try:
        idx = vqcore.nearest(x, codebook, metric=metric)
    except ALLOWED:
        return
    x64, c64 = np.asarray(x, np.float64), np.asarray(codebook, np.float64)
    assert idx.shape == (len(x64),)
    if metric == "euclidean":
        d = ((x64[:, None, :] - c64[None]) ** 2).sum(-1)
        best = d[np.arange(len(x64)), idx]
        # the chosen code is nearest up to float32 rounding of the expanded distance
        tol = 1e-4 * (np.abs(x64).max(initial=0) ** 2 + np.abs(c64).max(initial=0) ** 2) + 1e-30
        assert np.all(best <= d.min(axis=1) + tol)


def twins():
    return [FSQ([8, 5, 5], dim=DIM, seed=0), LFQ(dim=DIM, codebook_size=16, seed=0),
            ResidualFSQ(DIM, [8, 5, 5], 2, seed=0), ResidualLFQ(DIM, 2, 16, seed=0)]


@FAST
@given(st.integers(0, 3), arrays(), st.data())
def test_fsq_lfq_encode_decode_never_crash_or_poison(which, x, data):
    count_case()
    q = twins()[which]
    try:
        codes = q.encode(x)
    except ALLOWED:
        codes = None
    if codes is not None:
        assert np.array_equal(codes, q.encode(x))
        out = q.decode(codes)
        assert out.shape[-1] == DIM
        if np.all(np.isfinite(np.asarray(x, np.float64))) and np.abs(np.asarray(x, np.float64)).max(initial=0) < 1e30:
            assert np.all(np.isfinite(out))
    size = getattr(q, "codebook_size", 8 * 5 * 5)
    shape = (3,) if which < 2 else (3, 2)
    try:
        q.decode(codes_for(data.draw, shape, size))
    except ALLOWED:
        pass


@pytest.mark.parametrize("which", range(4))
def test_fsq_lfq_state_round_trip(tmp_path, which):
    q = twins()[which]
    q.save(tmp_path / "t.npz")
    back = type(q).load(tmp_path / "t.npz")
    for key, value in q.state_dict().items():
        assert np.array_equal(value, back.state_dict()[key])
    x = np.random.default_rng(0).standard_normal((16, DIM)).astype(np.float32)
    assert np.array_equal(q.encode(x), back.encode(x))
