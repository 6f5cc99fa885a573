"""gradcheck on the differentiable pieces whose gradients are the true derivatives.

(The straight-through estimators are surrogates by design: their gradient with
respect to the input is not the derivative of the piecewise-constant forward,
so they are checked against the seed in the parity tests instead.)
"""
import pytest

torch = pytest.importorskip("torch")

from vqtorch.codebook import gather_codes  # noqa: E402
from vqtorch.gumbel import gumbel_select  # noqa: E402
from vqtorch.losses import masked_mse, orthogonal_loss  # noqa: E402


def test_orthogonal_loss_gradcheck():
    codes = torch.randn(2, 5, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(orthogonal_loss, (codes,))


def test_masked_mse_value_and_gradient():
    # masked_mse computes in float32 like the seed, so compare with the float64 formula
    pred = torch.randn(2, 4, 3, dtype=torch.float64)
    target = torch.randn(2, 4, 3, dtype=torch.float64)
    mask = torch.tensor([[True, False, True, True], [False, True, True, False]])
    p32 = pred.float().requires_grad_()
    got = masked_mse(p32, target.float(), mask)
    got.backward()
    want_grad = torch.zeros_like(pred)
    kept = mask.sum() * 3
    want_grad[mask] = 2 * (pred - target)[mask] / kept
    torch.testing.assert_close(got.double(), ((pred - target) ** 2)[mask].mean(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(p32.grad.double(), want_grad, rtol=1e-5, atol=1e-6)


def test_quantize_gradient_to_a_learnable_codebook_gradcheck():
    torch.manual_seed(0)
    embed = torch.randn(2, 6, 3, dtype=torch.float64, requires_grad=True)
    logits = torch.randn(2, 9, 6, dtype=torch.float64) * 5  # well separated: the argmax is stable

    def quantize(embed):
        indices, soft = gumbel_select(logits, temperature=1.0, stochastic=False, straight_through=True,
                                      reinmax=False, training=True)
        return gather_codes(embed, indices) + torch.bmm(soft, embed)

    assert torch.autograd.gradcheck(quantize, (embed,))


@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0])
def test_straight_through_gradient_reaches_the_logits_as_the_softmax_jacobian(temperature):
    # The estimator is not a true derivative (gradcheck on the logits cannot apply: the forward
    # value does not move), so compare autograd with its defining formula:
    # d/dlogits sum(w * quantize) = J_softmax(logits / t)^T (embed @ w_row) / t per row.
    torch.manual_seed(1)
    embed = torch.randn(2, 6, 3, dtype=torch.float64)
    logits = (torch.randn(2, 9, 6, dtype=torch.float64) * 3).requires_grad_()
    weights = torch.randn(2, 9, 3, dtype=torch.float64)
    indices, soft = gumbel_select(logits, temperature=temperature, stochastic=False, straight_through=True,
                                  reinmax=False, training=True)
    quantize = gather_codes(embed, indices) + torch.bmm(soft, embed)
    (quantize * weights).sum().backward()
    p = (logits.detach() / temperature).softmax(-1)
    upstream = torch.bmm(weights, embed.transpose(1, 2))  # d loss / d pi: (2, 9, 6)
    want = p * (upstream - (p * upstream).sum(-1, keepdim=True)) / temperature
    torch.testing.assert_close(logits.grad, want)
    assert want.abs().max() > 1e-3  # the checked gradient is not zero
