"""Linear probing on frozen features: multinomial logistic regression, full-batch L-BFGS in torch.

Protocol (CLIP's, Radford et al. 2021, appendix A.3), the default:
- features as they are (the caller passes the encoder's pre-projection features); no
  standardisation (`standardize=True` restores the old z-scoring with the train set's statistics);
- L2 strength λ in CLIP's / scikit-learn's units (λ = 1/C: the fit minimises the SUM of the
  cross-entropies plus λ/2 ||W||², the bias is not penalised), chosen by CLIP's parametric search
  over [1e-6, 1e6]: λ at every second decade (1e-6, 1e-4, ..., 1e6), then the step around the best
  is halved until it is 1/8 decade (CLIP's 96 log-spaced steps, searched instead of swept);
- the validation part is held out from the train set with whole groups (`grouped_holdout`: clips
  of one source video never straddle train and validation); `val_split="stratified"` is the old
  per-video holdout;
- the classifier is then refit on the whole train set with the chosen λ and scored once on test.
Each fit starts from the solution of the nearest strength already fitted (a warm start): the
optimum is the same (the problem is convex), L-BFGS just gets there in fewer iterations.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from lss_cli.errors import LssError

CLIP_L2_RANGE = (1e-6, 1e6)  # CLIP's sweep range of λ
COARSE_STEP = 2.0  # decades between the first points (CLIP: 1e-6, 1e-4, ..., 1e6)
FINE_STEP = 1.0 / 8  # decades: the search stops at CLIP's resolution of 8 steps per decade
MAX_ITER = 1000  # L-BFGS iterations per fit (CLIP: scikit-learn's max_iter=1000)
VAL_SPLITS = ("grouped", "stratified")

Solution = tuple[torch.Tensor, torch.Tensor]  # W [D, K], b [K] float64


@dataclass
class ProbeResult:
    top1: float  # test accuracy of the refit classifier
    l2: float  # chosen strength λ (sum-of-losses units, λ = 1/C)
    val_curve: dict[float, float] = field(default_factory=dict)  # strength -> validation accuracy
    predictions: torch.Tensor | None = None  # [N_test] predicted class
    logits: torch.Tensor | None = None  # [N_test, K] float64 test-set class scores (argmax = predictions)
    val_videos: int = 0  # size of the validation part
    val_groups: int = 0  # groups in the validation part (videos, for the stratified split)


def fit_logistic(x: torch.Tensor, y: torch.Tensor, num_classes: int, l2: float, max_iter: int = MAX_ITER,
                 init: Solution | None = None) -> Solution:
    """Minimise sum_i CE_i + l2/2 * ||W||^2 over W [D, K], b [K] (scikit-learn's objective with
    C = 1/l2; b unpenalised). x [N, D] float, y [N] int64. Computed divided by N (same minimiser,
    gradients of order one for L-BFGS's tolerances). `init`: a starting (W, b), else zeros."""
    x = x.double()
    w0, b0 = init if init is not None else (torch.zeros(x.shape[1], num_classes, dtype=torch.float64),
                                            torch.zeros(num_classes, dtype=torch.float64))
    w, b = w0.clone().requires_grad_(True), b0.clone().requires_grad_(True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=max_iter, history_size=20,
                            tolerance_grad=1e-9, tolerance_change=1e-12, line_search_fn="strong_wolfe")
    per_sample = l2 / len(x)

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(x @ w + b, y) + 0.5 * per_sample * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach(), b.detach()


def logits(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """x [N, D] -> class scores [N, K] (float64)."""
    return x.double() @ w + b


def predict(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return logits(x, w, b).argmax(1)


def _val_target(n: int, fraction: float) -> int:
    """Videos of a class of n to hold out: about `fraction`, at least one, never all of them."""
    return min(n - 1, max(1, round(fraction * n))) if n > 1 else 0


def stratified_holdout(y: torch.Tensor, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(train indices, val indices): `fraction` of each class held out video by video (at least one
    when the class has two or more samples), chosen with a seeded generator. Ignores groups."""
    g = torch.Generator().manual_seed(seed)
    train, val = [], []
    for c in torch.unique(y).tolist():
        idx = torch.nonzero(y == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        n_val = _val_target(len(idx), fraction)
        val.append(idx[:n_val])
        train.append(idx[n_val:])
    return torch.cat(train).sort().values, torch.cat(val).sort().values


def grouped_holdout(y: torch.Tensor, groups: torch.Tensor, fraction: float,
                    seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(train indices, val indices) with every group wholly on one side. y, groups [N] int64.

    Groups are visited in a seeded random order; a group goes to validation when every class it
    has videos of is still short of its target (about `fraction` of the class, `_val_target`) and
    keeps at least one training video without it. So every class keeps training videos, and a
    class whose videos are all one group has no validation videos. A group may span classes (the
    same group id in several classes: UCF101's gNN, the synthetic set's clip index)."""
    num_classes = int(y.max()) + 1 if len(y) else 0
    group_ids, inverse = torch.unique(groups, return_inverse=True)
    counts = torch.zeros(len(group_ids), num_classes, dtype=torch.int64)  # [G, K] videos per group and class
    counts.index_put_((inverse, y), torch.ones_like(y), accumulate=True)
    total = counts.sum(0)  # [K]
    target = torch.tensor([_val_target(int(n), fraction) for n in total], dtype=torch.int64)  # [K]
    held = torch.zeros(num_classes, dtype=torch.int64)  # [K] videos held out so far
    in_val = torch.zeros(len(group_ids), dtype=torch.bool)  # [G]
    for gi in torch.randperm(len(group_ids), generator=torch.Generator().manual_seed(seed)).tolist():
        touched = counts[gi] > 0
        if bool((held[touched] < target[touched]).all()) and bool((total - held - counts[gi])[touched].ge(1).all()):
            in_val[gi] = True
            held += counts[gi]
    val_mask = in_val[inverse]  # [N]
    return torch.nonzero(~val_mask).flatten(), torch.nonzero(val_mask).flatten()


def _standardise(train: torch.Tensor, *others: torch.Tensor) -> list[torch.Tensor]:
    mean, std = train.mean(0), train.std(0).clamp_min(1e-6)
    return [(t - mean) / std for t in (train, *others)]


def _accuracy(pred: torch.Tensor, y: torch.Tensor) -> float:
    return float((pred == y).double().mean()) if len(y) else float("nan")


def _strength(exponent: float) -> float:
    return 10.0 ** round(exponent, 9)  # rounded: 1e-6 + k * 0.125 decades gives the same key every time


def _coarse_exponents(lo: float, hi: float) -> list[float]:
    """log10 strengths from hi down to lo, COARSE_STEP apart (both ends included)."""
    n = max(1, math.ceil((hi - lo) / COARSE_STEP - 1e-9))
    return [hi - (hi - lo) * i / n for i in range(n + 1)] if hi > lo else [lo]


class _Sweep:
    """Validation accuracy per strength, each fit warm-started from the nearest fitted strength."""

    def __init__(self, xtr: torch.Tensor, ytr: torch.Tensor, xva: torch.Tensor, yva: torch.Tensor, num_classes: int):
        self.data = (xtr, ytr, xva, yva, num_classes)
        self.curve: dict[float, float] = {}  # exponent -> validation accuracy
        self.solutions: dict[float, Solution] = {}  # exponent -> (W, b)

    def score(self, e: float) -> float:
        e = round(e, 9)
        if e not in self.curve:
            xtr, ytr, xva, yva, k = self.data
            near = min(self.solutions, key=lambda f: (abs(f - e), -f), default=None)
            w, b = fit_logistic(xtr, ytr, k, _strength(e), init=self.solutions.get(near))
            self.solutions[e] = (w, b)
            self.curve[e] = _accuracy(predict(xva, w, b), yva)
        return self.curve[e]

    def best(self) -> float:
        """Best exponent; ties go to the stronger regulariser (the simpler model)."""
        return max(self.curve, key=lambda e: (self.curve[e], e))


def choose_l2(x: torch.Tensor, y: torch.Tensor, num_classes: int, *, groups: torch.Tensor | None = None,
              val_split: str = "grouped", val_fraction: float = 0.2, seed: int = 0,
              l2_range: tuple[float, float] = CLIP_L2_RANGE,
              standardize: bool = False) -> tuple[float, dict[float, float], torch.Tensor, Solution]:
    """CLIP's parametric search for λ on a validation part of (x [N, D], y [N]).

    Returns (λ, {λ: validation accuracy}, val indices, the fit at λ on the rest)."""
    tr, va = _holdout(y, groups, val_split, val_fraction, seed)
    if len(va) == 0:
        raise LssError(f"no validation videos could be held out of {len(y)} training videos "
                       f"({val_split} split: every class needs two groups, one stays in training)",
                       hint="add training videos, or set probe_val_split=stratified when videos do not share sources")
    xtr, xva = _standardise(x[tr], x[va]) if standardize else (x[tr], x[va])
    sweep = _Sweep(xtr, y[tr], xva, y[va], num_classes)
    lo, hi = math.log10(l2_range[0]), math.log10(l2_range[1])
    coarse = _coarse_exponents(lo, hi)
    for e in coarse:  # strong to weak: each warm start is close to the next optimum
        sweep.score(e)
    step = (hi - lo) / max(1, len(coarse) - 1)
    while step > FINE_STEP + 1e-12:
        step /= 2
        best = sweep.best()
        for e in (best + step, best - step):
            if lo - 1e-9 <= e <= hi + 1e-9:
                sweep.score(e)
    curve = {_strength(e): acc for e, acc in sorted(sweep.curve.items())}
    best = sweep.best()
    return _strength(best), curve, va, sweep.solutions[best]


def _holdout(y: torch.Tensor, groups: torch.Tensor | None, val_split: str, fraction: float,
             seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    if val_split not in VAL_SPLITS:
        raise ValueError(f"val_split must be one of {VAL_SPLITS}, got {val_split!r}")
    if val_split == "stratified":
        return stratified_holdout(y, fraction, seed)
    return grouped_holdout(y, groups if groups is not None else torch.arange(len(y)), fraction, seed)


def linear_probe(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor,
                 num_classes: int, *, groups: torch.Tensor | None = None, val_split: str = "grouped",
                 seed: int = 0, val_fraction: float = 0.2, l2_range: tuple[float, float] = CLIP_L2_RANGE,
                 standardize: bool = False) -> ProbeResult:
    """Choose λ on a held-out part of train, refit on all of train, score on test.

    train_x [N, D], train_y [N], groups [N] int64 (source video of each training video; None =
    each video its own group), test_x [M, D], test_y [M]."""
    l2, curve, va, near = choose_l2(train_x, train_y, num_classes, groups=groups, val_split=val_split,
                                   val_fraction=val_fraction, seed=seed, l2_range=l2_range, standardize=standardize)
    xtr, xte = _standardise(train_x, test_x) if standardize else (train_x, test_x)
    w, b = fit_logistic(xtr, train_y, num_classes, l2, init=near)  # warm: the validation fit is close
    scores = logits(xte, w, b)  # [N_test, K]
    pred = scores.argmax(1)
    val_groups = len(torch.unique(groups[va])) if groups is not None and val_split == "grouped" else len(va)
    return ProbeResult(top1=_accuracy(pred, test_y), l2=l2, val_curve=curve, predictions=pred, logits=scores,
                       val_videos=len(va), val_groups=val_groups)
