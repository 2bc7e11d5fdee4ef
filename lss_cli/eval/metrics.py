"""Classification metrics shared by zero-shot and linear-probe evaluation.

Unreadable videos are never dropped: they enter every metric as errors (their prediction is -1).
"""

from __future__ import annotations

import math

import torch


def view_averaged_probs(features: torch.Tensor, classifier: torch.Tensor, logit_scale: float) -> torch.Tensor:
    """Softmax over classes per view, averaged over views.

    features [N, V, D] L2-normalised per view; classifier [K, D] unit rows -> probs [N, K]."""
    logits = logit_scale * features.float() @ classifier.float().T  # [N, V, K]
    return logits.softmax(-1).mean(1)


def topk_correct(probs: torch.Tensor, labels: torch.Tensor, ok: torch.Tensor, k: int) -> torch.Tensor:
    """[N] bool: label within the top-k; always False for unreadable videos (ok False)."""
    k = min(k, probs.shape[1])
    hit = (probs.topk(k, dim=1).indices == labels[:, None]).any(1)
    return hit & ok


def per_class_accuracy(correct: torch.Tensor, labels: torch.Tensor, num_classes: int) -> list[float | None]:
    totals = torch.bincount(labels, minlength=num_classes)
    hits = torch.bincount(labels[correct], minlength=num_classes)
    return [float(h) / float(t) if t else None for h, t in zip(hits.tolist(), totals.tolist(), strict=True)]


def confusion_matrix(pred: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """[K, K+1] counts: rows true class, columns predicted class, last column = unreadable."""
    pred = torch.where(pred < 0, torch.full_like(pred, num_classes), pred)
    idx = labels * (num_classes + 1) + pred
    return torch.bincount(idx, minlength=num_classes * (num_classes + 1)).view(num_classes, num_classes + 1)


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample std (0 for a single value) over splits."""
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return mean, std


def direction_accuracy(scores: torch.Tensor, labels: torch.Tensor, ok: torch.Tensor,
                       mates: torch.Tensor) -> tuple[float, int]:
    """Of the videos whose class has a time-reversal mate, the share whose class scores strictly
    above the mate (a tie is not a decision); unreadable videos (ok False) count as wrong.

    scores [N, K], labels [N], ok [N] bool, mates [K] (mate class per class, -1 for none)
    -> (accuracy, number of videos with a mate); accuracy is nan when no video has one."""
    mate = mates[labels]  # [N]
    has = mate >= 0
    rows = torch.nonzero(has).flatten()
    if len(rows) == 0:
        return float("nan"), 0
    own = scores[rows, labels[rows]]
    other = scores[rows, mate[rows]]
    correct = (own > other) & ok[rows]
    return float(correct.double().mean()), len(rows)
