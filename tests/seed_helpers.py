"""Run the seed (vector-quantize-pytorch 1.14.5) beside vqcore on the same state and inputs."""
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
with warnings.catch_warnings():
    warnings.simplefilter("ignore", FutureWarning)
    seed_module = pytest.importorskip("vector_quantize_pytorch.vector_quantize_pytorch")


def make_seed_layer(torch_seed=0, **kwargs):
    """The seed's layer, seeded, in train mode."""
    torch.manual_seed(torch_seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return seed_module.VectorQuantize(**kwargs).train()


def seed_forward(layer, x, mask=None, training=True):
    """The seed's forward on numpy input; returns numpy (quantize, indices)."""
    layer.train(training)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        quantize, indices, _ = layer(torch.from_numpy(x), mask=None if mask is None else torch.from_numpy(mask))
    return quantize.numpy(), indices.numpy()


def seed_state(layer):
    return {k: v.detach().clone().numpy() for k, v in layer.state_dict().items()}
