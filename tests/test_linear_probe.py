from __future__ import annotations

import math

import pytest
import torch

from lss_cli.eval.linear_probe import fit_logistic, linear_probe, logits, predict, stratified_holdout


def _blobs(n_per_class: int, k: int, d: int, sep: float, seed: int):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(k, d, generator=g) * sep
    y = torch.arange(k).repeat_interleave(n_per_class)
    x = centres[y] + torch.randn(len(y), d, generator=g)
    return x, y


def test_separable_features_are_learned():
    x, y = _blobs(30, 5, 16, sep=3.0, seed=0)
    xt, yt = _blobs(10, 5, 16, sep=3.0, seed=0)  # same centres (same seed), fresh noise below
    xt = xt + 0.5 * torch.randn(xt.shape, generator=torch.Generator().manual_seed(9))
    r = linear_probe(x, y, xt, yt, num_classes=5)
    assert r.top1 > 0.95
    assert r.l2 in r.val_curve and len(r.val_curve) >= 7


def test_shuffled_labels_give_chance():
    x, y = _blobs(40, 4, 16, sep=3.0, seed=1)
    xt, yt = _blobs(40, 4, 16, sep=3.0, seed=1)
    g = torch.Generator().manual_seed(2)
    y_shuffled = y[torch.randperm(len(y), generator=g)]
    r = linear_probe(x, y_shuffled, xt, yt, num_classes=4)
    assert abs(r.top1 - 0.25) < 0.15


def test_l2_shrinks_weights_and_holdout_is_stratified():
    x, y = _blobs(20, 3, 8, sep=2.0, seed=3)
    w_small, _ = fit_logistic(x, y, 3, l2=1e-4)
    w_big, _ = fit_logistic(x, y, 3, l2=10.0)
    assert w_big.norm() < 0.2 * w_small.norm()
    tr, va = stratified_holdout(y, 0.25, seed=0)
    assert len(set(tr.tolist()) & set(va.tolist())) == 0 and len(tr) + len(va) == len(y)
    assert torch.bincount(y[va]).tolist() == [5, 5, 5]
    assert torch.equal(stratified_holdout(y, 0.25, seed=0)[1], va)


def test_fit_matches_optimality_condition():
    # At the optimum the gradient of scikit-learn's objective (CLIP's probe), with lambda = 1/C:
    # the SUM of the per-sample cross-entropies + lambda/2 ||W||^2, bias unpenalised, vanishes.
    x, y = _blobs(15, 3, 4, sep=1.0, seed=4)
    w, b = fit_logistic(x, y, 3, l2=2.0)
    w.requires_grad_(True)
    b.requires_grad_(True)
    nll = 0.0
    for i in range(len(y)):  # plain loop: sum_i -log softmax(x_i W + b)[y_i]
        z = x[i].double() @ w + b
        nll = nll - (z[y[i]] - torch.logsumexp(z, 0))
    loss = nll + 0.5 * 2.0 * (w * w).sum()
    gw, gb = torch.autograd.grad(loss, [w, b])
    assert gw.abs().max() < 1e-6 * len(y) and gb.abs().max() < 1e-6 * len(y)  # the sum of 45 terms
    assert (predict(x, w, b) == y).double().mean() > 0.5


def test_a_warm_start_reaches_the_same_optimum():
    x, y = _blobs(15, 3, 6, sep=1.0, seed=5)
    cold = fit_logistic(x, y, 3, l2=1.0)
    warm = fit_logistic(x, y, 3, l2=1.0, init=fit_logistic(x, y, 3, l2=100.0))
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(cold, warm, strict=True))


def test_features_are_not_standardised_by_default():
    # The test scores are the refit classifier applied to the features as given (CLIP: no standardisation).
    x, y = _blobs(12, 3, 5, sep=2.0, seed=6)
    x = x * torch.tensor([1.0, 10.0, 0.1, 3.0, 1.0]) + 5.0
    xt, yt = _blobs(4, 3, 5, sep=2.0, seed=7)
    r = linear_probe(x, y, xt, yt, 3)
    w, b = fit_logistic(x, y, 3, r.l2)
    assert torch.allclose(r.logits, logits(xt, w, b), atol=1e-5)
    old = linear_probe(x, y, xt, yt, 3, standardize=True, val_split="stratified")
    mean, std = x.mean(0), x.std(0)
    w, b = fit_logistic((x - mean) / std, y, 3, old.l2)
    assert torch.allclose(old.logits, logits((xt - mean) / std, w, b), atol=1e-5)


def test_search_follows_clip():
    # CLIP: lambda at 1e-6, 1e-4, ..., 1e6, then the interval around the peak halved down to 1/8 decade.
    x, y = _blobs(10, 3, 4, sep=2.0, seed=8)
    r = linear_probe(x, y, x, y, 3)
    exponents = sorted(math.log10(k) for k in r.val_curve)
    assert all(any(abs(e - c) < 1e-9 for e in exponents) for c in range(-6, 7, 2))
    assert min(exponents) >= -6 - 1e-9 and max(exponents) <= 6 + 1e-9
    gaps = [abs(e - math.log10(r.l2)) for e in exponents if e != math.log10(r.l2)]
    assert min(gaps) == pytest.approx(0.125)
    assert len(r.val_curve) <= 7 + 2 * 4  # the search, not all 97 points
    narrow = linear_probe(x, y, x, y, 3, l2_range=(1e-2, 1e2))
    assert min(narrow.val_curve) == pytest.approx(1e-2) and max(narrow.val_curve) == pytest.approx(1e2)
