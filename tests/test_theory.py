"""Proposition 1 of the NPE paper, checked numerically on collapsed features.

With one-hot ("neurally collapsed") features, a PEM's true-class output for class c is one
weight ``w_c``; the batch-mean loss plus an L2 penalty ``wd/2 ||W||^2`` (SGD weight decay)
gives per class ``(N_c / N) softplus(-eta) + wd/2 eta^2``, whose unique minimiser solves
``N_c sigmoid(-eta) = lambda eta`` with ``lambda = N * wd``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.optimize import brentq
from scipy.special import lambertw

from npe_models import NPEHead, one_way_logistic_loss

RATIOS = np.array([3.0, 30.0, 100.0, 1000.0, 10000.0])  # N_c / lambda, one class each


def _exact_stationary_point(ratio: float) -> float:
    return brentq(lambda eta: ratio / (1.0 + np.exp(eta)) - eta, 0.0, 50.0, xtol=1e-14)


@pytest.fixture(scope="module")
def trained_estimates() -> np.ndarray:
    counts = RATIOS.astype(int)  # N_c = ratio * lambda with lambda = N * wd = 1
    weight_decay = 1.0 / counts.sum()
    labels = torch.repeat_interleave(torch.arange(len(counts)), torch.from_numpy(counts))
    features = torch.eye(len(counts), dtype=torch.float64)[labels]
    head = NPEHead(len(counts), len(counts), num_pems=1, dtype=torch.float64)
    head.pem_bias.requires_grad_(False)
    optimizer = torch.optim.LBFGS(
        [head.pem_weight],
        lr=1,
        max_iter=500,
        tolerance_grad=1e-12,
        tolerance_change=1e-15,
        line_search_fn="strong_wolfe",
    )

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = one_way_logistic_loss(head.forward_train(features).pem_logits, labels)
        loss = loss + weight_decay / 2 * head.pem_weight.pow(2).sum()
        loss.backward()
        return loss

    for _ in range(5):
        optimizer.step(closure)
    eye = torch.eye(len(counts), dtype=torch.float64)
    return head.npe_estimate(eye).diagonal().detach().numpy()


def test_estimates_match_exact_stationary_point(trained_estimates: np.ndarray) -> None:
    exact = np.array([_exact_stationary_point(r) for r in RATIOS])
    assert np.abs(trained_estimates - exact).max() < 1e-3


def test_estimates_increase_with_class_count(trained_estimates: np.ndarray) -> None:
    assert np.all(np.diff(trained_estimates) > 0)


def test_estimates_approach_lambert_w_as_counts_grow(trained_estimates: np.ndarray) -> None:
    lambert = lambertw(RATIOS).real
    gap = lambert - trained_estimates
    # W overestimates (exp(-eta) > sigmoid(-eta)) by about W(r)/r: 0.17 at 3, 0.026 at 100, 0.0006 at 10^4.
    assert np.all(gap > -1e-3)
    assert np.all(gap <= lambert / RATIOS + 1e-3), gap
    assert np.all(np.diff(gap) < 0)
    assert gap[0] == pytest.approx(0.170, abs=2e-3) and gap[-1] < 2e-3
