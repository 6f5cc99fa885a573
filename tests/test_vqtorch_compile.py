"""torch.compile of the layer on the torch backend gives the eager numbers.

``aot_eager`` traces the forward and the autograd graph (dynamo + AOTAutograd) without
generating code, so the check stays fast; inductor was checked by hand (see the report).
"""
import copy

import pytest
import torch

from vqtorch import VectorQuantize


@pytest.mark.parametrize("kwargs", [dict(codebook_dim=8), dict(use_cosine_sim=True, heads=2,
                                                                separate_codebook_per_head=True)])
def test_compiled_layer_matches_eager(kwargs):
    torch.manual_seed(0)
    eager = VectorQuantize(dim=16, codebook_size=32, backend="torch", **kwargs)
    compiled_module = copy.deepcopy(eager)
    compiled = torch.compile(compiled_module, backend="aot_eager")
    x = torch.randn(2, 20, 16)
    for train in (False, True, True):
        eager.train(train)
        compiled_module.train(train)
        xa, xb = x.clone().requires_grad_(train), x.clone().requires_grad_(train)
        qa, ia, la = eager(xa)
        qb, ib, lb = compiled(xb)
        torch.testing.assert_close(qb, qa)
        torch.testing.assert_close(ib, ia)
        torch.testing.assert_close(lb, la)
        if train:
            (qa.square().sum() + la.sum()).backward()
            (qb.square().sum() + lb.sum()).backward()
            torch.testing.assert_close(xb.grad, xa.grad)
    for key, value in eager.state_dict().items():
        torch.testing.assert_close(compiled_module.state_dict()[key], value)
