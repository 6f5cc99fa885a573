import numpy as np
import pytest

import vqcore


def test_sample_vectors_without_replacement():
    x = np.arange(40.0).reshape(20, 2)
    out = vqcore.sample_vectors(x, 20, np.random.default_rng(0))
    assert sorted(out[:, 0]) == sorted(x[:, 0])  # a permutation of all rows
    part = vqcore.sample_vectors(x, 5, np.random.default_rng(1))
    assert len({tuple(r) for r in part}) == 5


def test_sample_vectors_with_replacement_when_short():
    x = np.arange(6.0).reshape(3, 2)
    out = vqcore.sample_vectors(x, 50, np.random.default_rng(0))
    assert out.shape == (50, 2)
    assert {tuple(r) for r in out} == {tuple(r) for r in x}


def test_sample_vectors_is_uniform():
    x = np.arange(5.0)[:, None]
    rng = np.random.default_rng(2)
    picks = np.concatenate([vqcore.sample_vectors(x, 2, rng)[:, 0] for _ in range(5000)])
    freq = np.bincount(picks.astype(int), minlength=5) / len(picks)
    np.testing.assert_allclose(freq, 0.2, atol=0.015)


def test_sample_vectors_errors():
    with pytest.raises(ValueError, match="empty"):
        vqcore.sample_vectors(np.zeros((0, 2)), 1)
    assert vqcore.sample_vectors(np.zeros((0, 2)), 0).shape == (0, 2)
    with pytest.raises(ValueError, match="2-D"):
        vqcore.sample_vectors(np.zeros(3), 1)


@pytest.mark.parametrize("total", [0, 1, 7, 1000])
def test_multinomial_sums_exactly(total):
    rng = np.random.default_rng(total)
    for _ in range(50):
        probs = rng.random(6) * (rng.random(6) > 0.3)
        if probs.sum() == 0:
            continue
        counts = vqcore.sample_multinomial(total, probs, rng)
        assert counts.sum() == total and counts.dtype == np.int64
        assert np.all(counts[probs == 0] == 0)


def test_multinomial_frequencies_follow_probs():
    probs = np.array([0.5, 0.1, 0.0, 0.3, 0.1])
    rng = np.random.default_rng(0)
    counts = sum(vqcore.sample_multinomial(100, probs, rng) for _ in range(2000))
    np.testing.assert_allclose(counts / counts.sum(), probs, atol=0.01)


def test_multinomial_bad_probs():
    with pytest.raises(ValueError, match="non-negative"):
        vqcore.sample_multinomial(3, [0.5, -0.1])
    with pytest.raises(ValueError, match="not all zero"):
        vqcore.sample_multinomial(3, [0.0, 0.0])
    with pytest.raises(ValueError, match="total_count=-1"):
        vqcore.sample_multinomial(-1, [1.0])


def test_gumbel_sample_is_argmax_when_not_sampling():
    logits = np.random.default_rng(0).standard_normal((4, 9))
    want = logits.argmax(-1)
    np.testing.assert_array_equal(vqcore.gumbel_sample(logits), want)
    np.testing.assert_array_equal(vqcore.gumbel_sample(logits, stochastic=True, training=False), want)
    np.testing.assert_array_equal(vqcore.gumbel_sample(logits, stochastic=True, temperature=0.0), want)


@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0])
def test_gumbel_sample_frequencies_follow_softmax(temperature):
    logits = np.array([1.0, 0.0, -1.0, 0.5])
    rng = np.random.default_rng(1)
    draws = vqcore.gumbel_sample(np.tile(logits, (40000, 1)), temperature=temperature, stochastic=True, rng=rng)
    freq = np.bincount(draws, minlength=4) / len(draws)
    p = np.exp(logits / temperature)
    np.testing.assert_allclose(freq, p / p.sum(), atol=0.01)
