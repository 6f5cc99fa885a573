"""The fused residual encoders give exactly the codes of the stage-by-stage searches they replace."""
import numpy as np
import pytest

import vqcore
import vqcore.beam


def stagewise_greedy(z, books):
    """Greedy codes as one certified search per stage on the float32 residual (the contract)."""
    residual = np.array(z, dtype=np.float32)
    codes = np.empty((len(residual), len(books)), dtype=np.int64)
    for i, book in enumerate(books):
        codes[:, i] = vqcore.nearest(residual, book)
        residual = residual - book[codes[:, i]]
    return codes


def stacked_books(rng, stages, k, d, spread=1.0):
    """Codebooks whose scale shrinks stage by stage, as trained residual codebooks do."""
    return np.stack([rng.standard_normal((k, d)) * spread * 0.5 ** i for i in range(stages)]).astype(np.float32)


@pytest.mark.parametrize("n", [0, 1, 15, 17, 1000, 5003])
def test_greedy_equals_one_search_per_stage(n):
    rng = np.random.default_rng(n)
    books = stacked_books(rng, 4, 37, 7)
    z = rng.standard_normal((n, 7)).astype(np.float32) * 1.3
    np.testing.assert_array_equal(vqcore.beam.greedy_encode(z, books), stagewise_greedy(z, books))


def test_greedy_breaks_ties_to_the_lowest_index_like_the_search():
    rng = np.random.default_rng(1)
    books = stacked_books(rng, 3, 16, 5)
    books[:, 9] = books[:, 2]  # duplicate codes: equal distances at every stage
    books[1, 12] = books[1, 2]
    z = np.concatenate([books[0, [2, 9]] + books[1, [2, 12]], rng.standard_normal((300, 5))]).astype(np.float32)
    codes = vqcore.beam.greedy_encode(np.ascontiguousarray(z), books)
    np.testing.assert_array_equal(codes, stagewise_greedy(z, books))
    assert not (codes == 9).any() and not (codes[:, 1] == 12).any()  # the copies never win
    assert (codes[:2, :2] == 2).all()


def test_greedy_is_exact_far_from_the_codebook_and_at_large_offsets():
    rng = np.random.default_rng(2)
    offset = np.float32(3e4)
    books = stacked_books(rng, 3, 20, 6) + offset * np.array([1, 0, 0], dtype=np.float32)[:, None, None]
    z = rng.standard_normal((400, 6)).astype(np.float32) + offset
    z[:5] *= np.float32(1e30)  # beyond the float32 engine's range: answered by the float64 direct form
    z[5:10] = books[0, 3] + books[1, 4] + np.float32(1e-3)  # near ties at the offset
    np.testing.assert_array_equal(vqcore.beam.greedy_encode(z, books), stagewise_greedy(z, books))


def test_greedy_blocks_and_threads_do_not_change_codes(monkeypatch):
    rng = np.random.default_rng(3)
    books = stacked_books(rng, 5, 64, 12)
    z = rng.standard_normal((3001, 12)).astype(np.float32)
    whole = vqcore.beam.greedy_encode(z, books)
    monkeypatch.setattr(vqcore.beam, "GREEDY_BLOCK_BYTES", 1)  # the smallest blocks
    np.testing.assert_array_equal(vqcore.beam.greedy_encode(z, books), whole)


def test_greedy_refuses_a_residual_that_overflows_float32_like_the_search():
    books = np.stack([np.full((1, 4), 3e38), np.zeros((1, 4))]).astype(np.float32)
    z = np.full((3, 4), -3e38, dtype=np.float32)  # minus the only first-stage code: -inf
    with pytest.raises(ValueError, match="NaN or Inf"), np.errstate(over="ignore"):
        stagewise_greedy(z, books)
    with pytest.raises(ValueError, match="NaN or Inf"):
        vqcore.beam.greedy_encode(z, books)


def stagewise_beam(z, books, beam_size):
    """Beam codes from one extension of every row's beams per stage (the training path's steps)."""
    beams = vqcore.beam.beam_start(z)
    for i in range(len(books)):
        beams = vqcore.beam.beam_extend(z, beams, books[i], vqcore.beam.beam_tables(books, i), beam_size)
    return beams[2][:, 0]


@pytest.mark.parametrize("beam_size", [1, 2, 5, 9])
def test_beam_equals_one_extension_per_stage(beam_size):
    rng = np.random.default_rng(beam_size)
    books = stacked_books(rng, 4, 37, 7)
    z = rng.standard_normal((700, 7)).astype(np.float32)
    np.testing.assert_array_equal(vqcore.beam.beam_encode(z, books, beam_size), stagewise_beam(z, books, beam_size))


def test_beam_selections_agree_with_the_sequential_scan(monkeypatch):
    """The vectorised candidate selection keeps what the sequential scan keeps, ties included."""
    rng = np.random.default_rng(4)
    books = stacked_books(rng, 3, 256, 6)
    books[:, 200:] = books[:, :56]  # duplicate codes: equal scores in different blocks
    books = np.round(books * 8) / 8  # coarse values: many equal float32 scores
    z = (np.round(rng.standard_normal((600, 6)) * 8) / 8).astype(np.float32)
    fast = vqcore.beam.beam_encode(z, books, 5)
    monkeypatch.setattr(vqcore.beam, "SCORE_LIMIT", 0.0)  # every score "could overflow": the sequential scan
    np.testing.assert_array_equal(vqcore.beam.beam_encode(z, books, 5), fast)
    np.testing.assert_array_equal(stagewise_beam(z, books, 5), fast)


def test_beam_blocks_and_threads_do_not_change_codes(monkeypatch):
    rng = np.random.default_rng(5)
    books = stacked_books(rng, 3, 64, 5)
    z = rng.standard_normal((1001, 5)).astype(np.float32)
    whole = vqcore.beam.beam_encode(z, books, 4)
    monkeypatch.setattr(vqcore.beam, "BEAM_BLOCK_BYTES", 1)
    np.testing.assert_array_equal(vqcore.beam.beam_encode(z, books, 4), whole)
    assert vqcore.beam.beam_encode(z[:0], books, 4).shape == (0, 3)


def test_beam_training_buffers_hold_the_stagewise_beams_and_their_float32_rows():
    """BeamTraining's alternating buffers give the beams of fresh extensions, and float32 rows of them."""
    rng = np.random.default_rng(6)
    books = stacked_books(rng, 4, 37, 7)
    z = rng.standard_normal((500, 7)).astype(np.float32)
    training = vqcore.beam.BeamTraining(z, 3)
    np.testing.assert_array_equal(training.residual32, z)
    beams = vqcore.beam.beam_start(z)
    for i in range(len(books)):
        training.extend(books[:i + 1])
        beams = vqcore.beam.beam_extend(z, beams, books[i], vqcore.beam.beam_tables(books, i), 3)
        for got, want in zip(training.beams, beams):
            np.testing.assert_array_equal(got, want)
        np.testing.assert_array_equal(training.residual32, beams[0].reshape(-1, 7).astype(np.float32))
    assert beams[2].shape == (500, 3, 4)
