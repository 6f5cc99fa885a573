"""Head layouts, from one table of cases, against the seed's einops patterns."""
import numpy as np
import pytest
from einops import rearrange

from vqcore.layout import HeadLayout

# (batch, positions, heads, dims per head, separate codebook per head)
CASES = [(2, 3, 1, 4, False), (2, 3, 1, 4, True), (2, 5, 3, 2, False), (2, 5, 3, 2, True), (1, 1, 4, 1, False),
         (3, 2, 2, 3, True)]


@pytest.mark.parametrize("b, n, h, d, separate", CASES)
def test_split_merge_indices_and_mask_follow_the_seed(b, n, h, d, separate):
    rng = np.random.default_rng(0)
    layout = HeadLayout(h, separate)
    z = rng.standard_normal((b, n, h * d)).astype(np.float32)
    pattern = "b n (h d) -> h (b n) d" if separate else "b n (h d) -> 1 (b h n) d"
    want = rearrange(z, pattern, h=h)
    np.testing.assert_array_equal(layout.split(z), want)
    np.testing.assert_array_equal(layout.merge(layout.split(z), b, n), z)
    assert layout.num_codebooks == (h if separate else 1)

    codes = rng.integers(0, 100, want.shape[:2])
    back = "h (b n) -> b n h" if separate else "1 (b h n) -> b n h"
    expected = rearrange(codes, back, b=b, h=h)
    got = layout.indices(codes, b, n)
    np.testing.assert_array_equal(got, expected[..., 0] if h == 1 else expected)

    mask = rng.random((b, n)) < 0.5
    mask_want = rearrange(np.broadcast_to(mask[..., None], (b, n, h)), "b n h -> h (b n)" if separate
                          else "b n h -> 1 (b h n)")
    np.testing.assert_array_equal(layout.mask(mask), mask_want)


@pytest.mark.parametrize("b, n, h, d, separate", CASES)
def test_torch_layout_matches_the_numpy_one(b, n, h, d, separate):
    torch = pytest.importorskip("torch")
    from vqtorch.layout import HeadLayout as TorchHeadLayout

    rng = np.random.default_rng(1)
    z = rng.standard_normal((b, n, h * d)).astype(np.float32)
    ours, theirs = TorchHeadLayout(h, separate), HeadLayout(h, separate)
    split = ours.split(torch.from_numpy(z))
    np.testing.assert_array_equal(split.reshape(theirs.num_codebooks, -1, d).numpy(), theirs.split(z))
    torch.testing.assert_close(ours.merge(split, b), torch.from_numpy(z))
    codes = torch.from_numpy(rng.integers(0, 50, split.shape[:-1]))
    np.testing.assert_array_equal(ours.indices(codes, b).numpy(),
                                  theirs.indices(codes.reshape(theirs.num_codebooks, -1).numpy(), b, n))
    mask = rng.random((b, n)) < 0.5
    np.testing.assert_array_equal(ours.mask(torch.from_numpy(mask)).reshape(theirs.num_codebooks, -1).numpy(),
                                  theirs.mask(mask))
