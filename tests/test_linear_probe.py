from __future__ import annotations

import torch

from lss_cli.eval.linear_probe import fit_logistic, linear_probe, predict, stratified_holdout


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
    assert r.l2 in r.val_curve and len(r.val_curve) >= 9


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
    # At the optimum the gradient of the regularised loss vanishes.
    x, y = _blobs(15, 3, 4, sep=1.0, seed=4)
    w, b = fit_logistic(x, y, 3, l2=0.1)
    w.requires_grad_(True)
    b.requires_grad_(True)
    loss = torch.nn.functional.cross_entropy(x.double() @ w + b, y) + 0.05 * (w * w).sum()
    gw, gb = torch.autograd.grad(loss, [w, b])
    assert gw.abs().max() < 1e-6 and gb.abs().max() < 1e-6
    assert (predict(x, w, b) == y).double().mean() > 0.5
