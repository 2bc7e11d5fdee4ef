"""Linear probing on frozen features: multinomial logistic regression, full-batch L-BFGS in torch.

Protocol (CLIP's linear-probe protocol, adapted): the L2 strength is chosen on a validation part
held out from each split's train set (stratified, seeded), then the classifier is refit on the
full train set with that strength and scored once on the test set. Features are standardised with
the train set's mean and std, so one grid of strengths suits any backbone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

DEFAULT_L2_GRID = tuple(10.0 ** e for e in range(-6, 3))  # 1e-6 ... 1e2, coarse; refined around the best


@dataclass
class ProbeResult:
    top1: float  # test accuracy of the refit classifier
    l2: float  # chosen strength
    val_curve: dict[float, float] = field(default_factory=dict)  # strength -> validation accuracy
    predictions: torch.Tensor | None = None  # [N_test] predicted class
    logits: torch.Tensor | None = None  # [N_test, K] float64 test-set class scores (argmax = predictions)


def fit_logistic(x: torch.Tensor, y: torch.Tensor, num_classes: int, l2: float,
                 max_iter: int = 500) -> tuple[torch.Tensor, torch.Tensor]:
    """Minimise mean cross-entropy + l2/2 * ||W||^2 over W [D, K], b [K]. x [N, D] float, y [N] int64."""
    x = x.double()
    w = torch.zeros(x.shape[1], num_classes, dtype=torch.float64, requires_grad=True)
    b = torch.zeros(num_classes, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=max_iter, history_size=20,
                            tolerance_grad=1e-9, tolerance_change=1e-12, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(x @ w + b, y) + 0.5 * l2 * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach(), b.detach()


def logits(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """x [N, D] -> class scores [N, K] (float64)."""
    return x.double() @ w + b


def predict(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return logits(x, w, b).argmax(1)


def stratified_holdout(y: torch.Tensor, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(train indices, val indices): `fraction` of each class held out (at least one when the class
    has two or more samples), chosen with a seeded generator."""
    g = torch.Generator().manual_seed(seed)
    train, val = [], []
    for c in torch.unique(y).tolist():
        idx = torch.nonzero(y == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        n_val = min(len(idx) - 1, max(1, round(fraction * len(idx)))) if len(idx) > 1 else 0
        val.append(idx[:n_val])
        train.append(idx[n_val:])
    return torch.cat(train).sort().values, torch.cat(val).sort().values


def _standardise(train: torch.Tensor, *others: torch.Tensor) -> list[torch.Tensor]:
    mean, std = train.mean(0), train.std(0).clamp_min(1e-6)
    return [(t - mean) / std for t in (train, *others)]


def _accuracy(pred: torch.Tensor, y: torch.Tensor) -> float:
    return float((pred == y).double().mean()) if len(y) else float("nan")


def choose_l2(x: torch.Tensor, y: torch.Tensor, num_classes: int, *, val_fraction: float = 0.2, seed: int = 0,
              grid: tuple[float, ...] = DEFAULT_L2_GRID) -> tuple[float, dict[float, float]]:
    """Sweep the coarse grid, then refine by factors of sqrt(10) around the best; ties go to the
    stronger regulariser (the simpler model)."""
    tr, va = stratified_holdout(y, val_fraction, seed)
    xtr, xva = _standardise(x[tr], x[va])
    curve: dict[float, float] = {}

    def score(l2: float) -> float:
        if l2 not in curve:
            w, b = fit_logistic(xtr, y[tr], num_classes, l2)
            curve[l2] = _accuracy(predict(xva, w, b), y[va])
        return curve[l2]

    for l2 in grid:
        score(l2)
    best = max(curve, key=lambda k: (curve[k], k))
    for l2 in (best / math.sqrt(10), best * math.sqrt(10)):
        score(l2)
    best = max(curve, key=lambda k: (curve[k], k))
    return best, dict(sorted(curve.items()))


def linear_probe(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor,
                 num_classes: int, *, seed: int = 0, val_fraction: float = 0.2) -> ProbeResult:
    """Choose L2 on a held-out part of train, refit on all of train, score on test."""
    l2, curve = choose_l2(train_x, train_y, num_classes, val_fraction=val_fraction, seed=seed)
    xtr, xte = _standardise(train_x, test_x)
    w, b = fit_logistic(xtr, train_y, num_classes, l2)
    scores = logits(xte, w, b)  # [N_test, K]
    pred = scores.argmax(1)
    return ProbeResult(top1=_accuracy(pred, test_y), l2=l2, val_curve=curve, predictions=pred, logits=scores)
