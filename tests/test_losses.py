"""One-way logistic loss and logit-adjusted CE against direct formulas, sign conventions and bad input."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from npe_models import NPEHead, logit_adjusted_cross_entropy, one_way_logistic_loss


def _direct_loss(pem_logits: torch.Tensor, target: torch.Tensor, t: int) -> torch.Tensor:
    """sum_k mean_b -log sigmoid((-1)^t u_k(x_b)_{y_b}), written out with explicit loops."""
    total = pem_logits.new_zeros(())
    for k in range(pem_logits.shape[0]):
        terms = [-torch.log(torch.sigmoid((-1) ** t * pem_logits[k, b, target[b]])) for b in range(len(target))]
        total = total + torch.stack(terms).mean()
    return total


@pytest.mark.parametrize("t", [0, 1])
def test_value_and_gradient_match_direct_formula(t: int) -> None:
    pem_logits = torch.randn(3, 5, 4, dtype=torch.float64, requires_grad=True)
    target = torch.tensor([0, 3, 1, 1, 2])
    ours = one_way_logistic_loss(pem_logits, target, t=t)
    direct = _direct_loss(pem_logits, target, t)
    assert torch.allclose(ours, direct)
    (grad_ours,) = torch.autograd.grad(ours, pem_logits)
    (grad_direct,) = torch.autograd.grad(direct, pem_logits)
    assert torch.allclose(grad_ours, grad_direct)
    # Only the true-class coordinate receives gradient: d/du softplus(-(-1)^t u) / B.
    expected = torch.zeros_like(pem_logits)
    sign = (-1) ** t
    for b, y in enumerate(target):
        expected[:, b, y] = -sign * torch.sigmoid(-sign * pem_logits[:, b, y]) / len(target)
    assert torch.allclose(grad_ours, expected)


def test_stable_for_extreme_logits() -> None:
    pem_logits = torch.tensor([[[1e4, -1e4], [-1e4, 1e4]]], requires_grad=True)
    loss = one_way_logistic_loss(pem_logits, torch.tensor([0, 0]))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(pem_logits.grad).all()
    assert loss.item() == pytest.approx(1e4 / 2)


def test_dense_with_ignore_index_averages_over_valid_pixels() -> None:
    pem_logits = torch.randn(2, 2, 3, 4, 5, dtype=torch.float64)
    target = torch.randint(0, 3, (2, 4, 5))
    target[0, :2] = 255
    ours = one_way_logistic_loss(pem_logits, target, ignore_index=255)
    valid = target != 255
    u = pem_logits.permute(0, 1, 3, 4, 2)[:, valid]  # (K, N_valid, C)
    direct = _direct_loss(u, target[valid], t=1)
    assert torch.allclose(ours, direct)


def test_all_ignored_gives_zero_not_nan() -> None:
    loss = one_way_logistic_loss(torch.randn(1, 1, 3, 2, 2), torch.full((1, 2, 2), -100))
    assert loss.item() == 0.0


def test_t0_and_t1_agree_after_resigning() -> None:
    """A t=0 head with negated PEMs is the same model: same losses, same estimates, same training path."""
    torch.manual_seed(1)
    head1 = NPEHead(8, 4, num_pems=3, t=1)
    head0 = NPEHead(8, 4, num_pems=3, t=0)
    with torch.no_grad():
        head0.weight.copy_(head1.weight)
        head0.bias.copy_(head1.bias)
        head0.pem_weight.copy_(-head1.pem_weight)
        head0.pem_bias.copy_(-head1.pem_bias)
    x, y = torch.randn(16, 8), torch.randint(0, 4, (16,))
    opt1 = torch.optim.SGD(head1.parameters(), lr=0.5)
    opt0 = torch.optim.SGD(head0.parameters(), lr=0.5)
    for _ in range(20):
        for head, opt, t in ((head1, opt1, 1), (head0, opt0, 0)):
            opt.zero_grad()
            one_way_logistic_loss(head.forward_train(x).pem_logits, y, t=t).backward()
            opt.step()
    assert torch.allclose(head1.npe_estimate(x), head0.npe_estimate(x), atol=1e-5)
    assert head1.npe_estimate(x).abs().max() > 0.5  # the estimates really moved


def test_logit_adjusted_cross_entropy_matches_shifted_ce() -> None:
    logits, target = torch.randn(6, 4), torch.tensor([0, 1, 2, 3, 0, 0])
    log_prior = torch.log(torch.tensor([0.5, 0.25, 0.15, 0.1]))
    ours = logit_adjusted_cross_entropy(logits, target, log_prior, tau=0.7)
    assert torch.allclose(ours, F.cross_entropy(logits + 0.7 * log_prior, target))
    dense = logit_adjusted_cross_entropy(logits.view(6, 4, 1, 1), target.view(6, 1, 1), log_prior, tau=0.7)
    assert torch.allclose(dense, ours)


@pytest.mark.parametrize(
    "target, message",
    [
        (torch.tensor([0, 4]), r"\[0, 4\] but the model has 4 classes"),
        (torch.tensor([-1, 0]), "class indices"),
        (torch.tensor([0, 1, 2]), "expected \\(2,\\)"),
        (torch.tensor([0.0, 1.0]), "integer class indices"),
    ],
)
def test_bad_targets_are_clear_errors(target: torch.Tensor, message: str) -> None:
    with pytest.raises((ValueError, TypeError), match=message):
        one_way_logistic_loss(torch.randn(2, 2, 4), target)
    with pytest.raises((ValueError, TypeError), match=message):
        logit_adjusted_cross_entropy(torch.randn(2, 4), target, torch.zeros(4))


def test_check_targets_false_skips_only_the_value_check(monkeypatch) -> None:
    """For validated targets the losses skip reading the targets back (a GPU sync); values and shape checks stay."""
    pem_logits, logits, target = torch.randn(3, 5, 4), torch.randn(5, 4), torch.tensor([0, 3, 1, 1, 2])
    checked = one_way_logistic_loss(pem_logits, target), logit_adjusted_cross_entropy(logits, target, torch.zeros(4))
    reads = []
    monkeypatch.setattr(torch.Tensor, "min", lambda self, *a, **k: reads.append("min") or torch.Tensor.amin(self))
    unchecked = (
        one_way_logistic_loss(pem_logits, target, check_targets=False),
        logit_adjusted_cross_entropy(logits, target, torch.zeros(4), check_targets=False),
    )
    assert reads == [] and all(torch.equal(a, b) for a, b in zip(checked, unchecked))
    with pytest.raises(ValueError, match="expected \\(5,\\)"):
        one_way_logistic_loss(pem_logits, target[:2], check_targets=False)


def test_pem_logits_of_wrong_rank() -> None:
    with pytest.raises(ValueError, match="forward_train"):
        one_way_logistic_loss(torch.randn(2, 4), torch.tensor([0, 1]))


def test_log_prior_of_wrong_length() -> None:
    with pytest.raises(ValueError, match="one entry per class"):
        logit_adjusted_cross_entropy(torch.randn(2, 4), torch.tensor([0, 1]), torch.zeros(3))


def test_bad_sign_convention() -> None:
    with pytest.raises(ValueError, match="t must be 0 or 1"):
        one_way_logistic_loss(torch.randn(1, 2, 4), torch.tensor([0, 1]), t=-1)


def test_estimate_sign_is_one_convention_for_head_model_and_loss() -> None:
    from npe_models.npe import estimate_sign

    assert (estimate_sign(0), estimate_sign(1)) == (1.0, -1.0)
    assert NPEHead(4, 3, 2, t=0).sign == 1.0 and NPEHead(4, 3, 2).sign == -1.0
    for bad in (2, -1, "1"):
        with pytest.raises(ValueError, match="t must be 0 or 1"):
            estimate_sign(bad)
