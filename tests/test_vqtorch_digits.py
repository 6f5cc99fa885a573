"""End to end: a small autoencoder with the VQ layer in the middle learns scikit-learn's digits."""
import pytest
import torch
from sklearn.datasets import load_digits
from torch import nn

from tests.torch_reference import SeedVectorQuantize, backends
from vqtorch import VectorQuantize

TOKENS, TOKEN_DIM = 4, 16


class _AutoEncoder(nn.Module):
    def __init__(self, vq):
        super().__init__()
        self.encode = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, TOKENS * TOKEN_DIM))
        self.vq = vq
        self.decode = nn.Sequential(nn.Linear(TOKENS * TOKEN_DIM, 64), nn.ReLU(), nn.Linear(64, 64))

    def forward(self, x):
        z = self.encode(x).view(-1, TOKENS, TOKEN_DIM)
        q, _, vq_loss = self.vq(z)
        return self.decode(q.reshape(x.shape[0], -1)), vq_loss


def _train(vq_cls, backend_kwargs, steps=120):
    data = torch.tensor(load_digits().data, dtype=torch.float32) / 16.0
    torch.manual_seed(0)
    model = _AutoEncoder(vq_cls(dim=TOKEN_DIM, codebook_size=32, kmeans_init=True, decay=0.9,
                                threshold_ema_dead_code=1, commitment_weight=0.25, **backend_kwargs))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(1)

    def error():
        model.eval()
        with torch.no_grad():
            out = model(data)[0]
        model.train()
        return torch.mean((out - data) ** 2).item()

    model.train()
    model(data[:256])  # k-means initialisation from a first batch
    start = error()
    for _ in range(steps):
        batch = data[torch.randint(0, len(data), (128,), generator=gen)]
        recon, vq_loss = model(batch)
        loss = torch.mean((recon - batch) ** 2) + vq_loss.sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return start, error()


@pytest.mark.parametrize("backend", backends())
def test_reconstruction_error_falls_like_the_seeds(backend):
    seed_start, seed_end = _train(SeedVectorQuantize, {})
    start, end = _train(VectorQuantize, {"backend": backend})
    assert seed_end < 0.6 * seed_start  # the task is learnable in this budget
    assert end < 0.6 * start
    # Same curve as the seed's: the torch backend draws the same random numbers, vqcore its own.
    assert abs(end - seed_end) <= (0.02 if backend == "torch" else 0.15) * seed_end
