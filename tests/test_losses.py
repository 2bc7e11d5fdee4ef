"""LSS losses against values computed by hand (docs/method.md §4).

Banks are one-hot rows so that the cosine scores are simply chosen coordinates of `z`: a score of
tau * log(p) then gives the distribution p exactly, and every expected value below is a closed form.
"""

from __future__ import annotations

import math

import pytest
import torch

from lss_cli.config import LossConfig, TrainConfig, load_config
from lss_cli.errors import ConfigError, LssError
from lss_cli.train.losses import (
    LSSLoss,
    aggregate_log_probs,
    aggregate_probs,
    pair_mask,
    pooled_uniform_prior,
)

TS, TT = 0.1, 0.05  # student / teacher temperatures used by the hand computations


def onehot_bank(k: int, m: int, owner: list[int]):
    """category rows e_0..e_{K-1}, description rows e_K..e_{K+M-1} in R^{K+M}."""
    eye = torch.eye(k + m)
    return eye[:k], eye[k:], torch.tensor(owner, dtype=torch.long)


def embed(cat_scores, desc_scores) -> torch.Tensor:
    """[..., K] and [..., M] scores -> z [..., K+M] whose scores over onehot_bank are exactly those."""
    return torch.cat([torch.as_tensor(cat_scores, dtype=torch.float32),
                      torch.as_tensor(desc_scores, dtype=torch.float32)], dim=-1)


def logits(p, temp):
    """Scores that a softmax at `temp` turns into p."""
    return [temp * math.log(x) for x in p]


def H(p, q):
    return -sum(a * math.log(b) for a, b in zip(p, q, strict=True) if a > 0)


def make_loss(k, m, owner, **kw):
    """By-hand tests use DINO's zero initial centre unless they ask for another."""
    cat, desc, own = onehot_bank(k, m, owner)
    kw.setdefault("center_init", "zero")
    return LSSLoss(cat, desc, own, **kw)


def test_pair_mask_excludes_same_global_view():
    w = pair_mask(2, 4)
    expected = torch.tensor([[0, 1, 1, 1], [1, 0, 1, 1]], dtype=torch.float32) / 6
    torch.testing.assert_close(w, expected)


def test_concept_distillation_by_hand():
    """V_g = 1, V_s = 2 (one global, one local), B = 1, K = 2, M = 2; only the pair (0, 1) counts."""
    loss_fn = make_loss(2, 2, [0, 1], w_ca=0.0, w_u=0.0)
    p_t_cat, p_t_desc = [0.5, 0.5], [0.9, 0.1]
    p_s_cat, p_s_desc = [0.75, 0.25], [0.6, 0.4]
    teacher = embed([logits(p_t_cat, TT)], [logits(p_t_desc, TT)])[None]  # [1, 1, 4]
    student = torch.stack([embed([[0.3, -0.2]], [[0.1, 0.0]]),  # view 0 = the teacher's own view: ignored
                           embed([logits(p_s_cat, TS)], [logits(p_s_desc, TS)])])  # [2, 1, 4]
    loss, parts = loss_fn(student, teacher, TS, TT)
    cd_cat, cd_desc = H(p_t_cat, p_s_cat), H(p_t_desc, p_s_desc)
    assert parts["cd_category"].item() == pytest.approx(cd_cat, abs=1e-5)
    assert parts["cd_description"].item() == pytest.approx(cd_desc, abs=1e-5)
    assert loss.item() == pytest.approx(cd_cat + cd_desc, abs=1e-5)
    # diagnostics: teacher entropy per sample and of the batch mean (one sample: equal)
    assert parts["teacher_entropy_category"].item() == pytest.approx(math.log(2), abs=1e-5)
    assert parts["teacher_mean_entropy_description"].item() == pytest.approx(H(p_t_desc, p_t_desc), abs=1e-5)


def test_cd_mean_over_view_pairs_and_batch():
    """V_g = 2, V_s = 3, B = 2: the mean over the 4 pairs (i, j != i) and the batch, by a loop."""
    torch.manual_seed(0)
    loss_fn = make_loss(3, 4, [0, 0, 1, -1], w_ca=0.0, w_u=0.0)
    teacher, student = torch.randn(2, 2, 7), torch.randn(3, 2, 7)
    _, parts = loss_fn(student, teacher, TS, TT)
    total, n = 0.0, 0
    for i in range(2):
        for j in range(3):
            if i == j:
                continue
            for b in range(2):
                p = torch.softmax(teacher[i, b, :3] / TT, -1).tolist()
                q = torch.softmax(student[j, b, :3] / TS, -1).tolist()
                total, n = total + H(p, q), n + 1
    assert parts["cd_category"].item() == pytest.approx(total / n, rel=1e-5)


# Alignment fixture: K = 2 categories, M = 3 descriptions owned [0, 0, 1].
P_T_DESC, P_S_CAT = [0.25, 0.25, 0.5], [0.75, 0.25]  # teacher desc -> student cat
P_T_CAT, P_S_DESC = [0.8, 0.2], [0.1, 0.3, 0.6]  # teacher cat -> student desc
AGG = {"sum": ([0.5, 0.5], [0.4, 0.6]), "mean": ([1 / 3, 2 / 3], [0.25, 0.75])}  # agg(P_T_DESC), agg(P_S_DESC)


def alignment_views(extra_cat: list[float] | None = None, extra_desc: list[float] | None = None):
    t_cat, t_desc = logits(P_T_CAT, TT) + (extra_cat or []), logits(P_T_DESC, TT) + (extra_desc or [])
    s_cat, s_desc = logits(P_S_CAT, TS) + (extra_cat or []), logits(P_S_DESC, TS) + (extra_desc or [])
    teacher = embed([t_cat], [t_desc])[None]
    student = torch.stack([embed([t_cat], [t_desc]), embed([s_cat], [s_desc])])  # view 0 excluded
    return student, teacher


@pytest.mark.parametrize("aggregation", ["sum", "mean"])
@pytest.mark.parametrize("direction", ["both", "desc_to_cat", "cat_to_desc"])
def test_concept_alignment_by_hand(aggregation, direction):
    loss_fn = make_loss(2, 3, [0, 0, 1], w_cd=0.0, w_u=0.0, ca_aggregation=aggregation, ca_direction=direction)
    student, teacher = alignment_views()
    loss, parts = loss_fn(student, teacher, TS, TT)
    agg_t, agg_s = AGG[aggregation]
    d2c, c2d = H(agg_t, P_S_CAT), H(P_T_CAT, agg_s)
    expected = {"both": (d2c + c2d) / 2, "desc_to_cat": d2c, "cat_to_desc": c2d}[direction]
    assert parts["ca"].item() == pytest.approx(expected, abs=1e-5)
    assert loss.item() == pytest.approx(expected, abs=1e-5)
    assert ("ca_desc_to_cat" in parts) == (direction != "cat_to_desc")
    assert ("ca_cat_to_desc" in parts) == (direction != "desc_to_cat")


@pytest.mark.parametrize("aggregation", ["sum", "mean"])
def test_alignment_ignores_unowned_descriptions_and_extra_words(aggregation):
    """An extra word (category 2, owns nothing) and an extra sentence (owner -1) change CD, not CA."""
    plain = make_loss(2, 3, [0, 0, 1], ca_aggregation=aggregation)
    extended = make_loss(3, 4, [0, 0, 1, -1], ca_aggregation=aggregation)
    _, p_plain = plain(*alignment_views(), TS, TT)
    _, p_ext = extended(*alignment_views(extra_cat=[0.3], extra_desc=[0.4]), TS, TT)
    for key in ("ca", "ca_desc_to_cat", "ca_cat_to_desc"):
        assert p_ext[key].item() == pytest.approx(p_plain[key].item(), abs=1e-5), key
    assert abs(p_ext["cd_category"].item() - p_plain["cd_category"].item()) > 1e-3
    assert abs(p_ext["cd_description"].item() - p_plain["cd_description"].item()) > 1e-3


def test_alignment_needs_owned_descriptions():
    with pytest.raises(LssError, match="no description has one"):
        make_loss(2, 2, [-1, -1])
    loss_fn = make_loss(2, 2, [-1, -1], w_ca=0.0)  # fine without CA
    _, parts = loss_fn(torch.randn(2, 1, 4), torch.randn(1, 1, 4), TS, TT)
    assert parts["ca"].item() == 0.0


def test_invalid_banks_are_refused():
    cat, desc, owner = onehot_bank(2, 3, [0, 0, 1])
    with pytest.raises(LssError, match="description_owner values"):
        LSSLoss(cat, desc, torch.tensor([0, 2, 1]))
    with pytest.raises(LssError, match="integer vector"):
        LSSLoss(cat, desc, owner.float())
    with pytest.raises(LssError, match="same D"):
        LSSLoss(cat, desc[:, :3], owner)


def test_uniform_prior_by_hand():
    """prior_scope=view: KL(mean_batch p_s,cat || uniform), per student view, averaged over views."""
    loss_fn = make_loss(2, 1, [0], w_cd=0.0, w_ca=0.0, w_u=1.0, prior_scope="view")
    view_a = [[0.75, 0.25], [0.25, 0.75]]  # batch mean uniform: KL 0
    view_b = [[0.9, 0.1], [0.7, 0.3]]  # batch mean [0.8, 0.2]
    student = torch.stack([embed([logits(p, TS) for p in v], [[0.0], [0.0]]) for v in (view_a, view_b)])
    loss, parts = loss_fn(student, torch.randn(1, 2, 3), TS, TT)
    kl_b = 0.8 * math.log(0.8 * 2) + 0.2 * math.log(0.2 * 2)
    assert parts["uniform"].item() == pytest.approx((0.0 + kl_b) / 2, abs=1e-6)
    assert loss.item() == pytest.approx(kl_b / 2, abs=1e-6)


def test_pooled_uniform_prior_by_hand():
    """prior_scope=step: one KL(mean p_s,cat || uniform) over every student view and clip."""
    loss_fn = make_loss(2, 1, [0], w_cd=0.0, w_ca=0.0, w_u=1.0, prior_scope="step")
    view_a = [[0.75, 0.25], [0.25, 0.75]]
    view_b = [[0.9, 0.1], [0.7, 0.3]]  # pooled with view_a: mean [0.65, 0.35]
    student = torch.stack([embed([logits(p, TS) for p in v], [[0.0], [0.0]]) for v in (view_a, view_b)])
    loss, parts = loss_fn(student, torch.randn(1, 2, 3), TS, TT)
    kl = 0.65 * math.log(0.65 * 2) + 0.35 * math.log(0.35 * 2)
    assert parts["uniform"].item() == pytest.approx(kl, abs=1e-6)
    assert loss.item() == pytest.approx(kl, abs=1e-6)


def test_pooled_prior_over_two_halves_has_the_whole_batch_gradient():
    """Each half sees the whole batch's sum (detached) and scales its own gradient by 2; the two
    halves' losses averaged give the value and the gradient of the KL over the whole batch."""
    torch.manual_seed(5)
    x = torch.randn(3, 4, 5, dtype=torch.float64, requires_grad=True)  # [V, B, K] logits
    mean = [sum(torch.softmax(x[v, b], -1) for v in range(3) for b in range(4)) / 12]  # plain loops
    expected = sum(mean[0][k] * math.log(5) + mean[0][k] * torch.log(mean[0][k]) for k in range(5))
    g_expected, = torch.autograd.grad(expected, x)
    log_p = torch.log_softmax(x, -1)
    total = log_p.detach().exp().sum(dim=(0, 1))
    halves = [pooled_uniform_prior(log_p[:, i:i + 2], total, torch.tensor(12.0, dtype=torch.float64), 2.0)
              for i in (0, 2)]
    got = sum(halves) / 2
    g_got, = torch.autograd.grad(got, x)
    assert got.item() == pytest.approx(expected.item(), rel=1e-12)
    torch.testing.assert_close(g_got, g_expected)


def test_prior_scope_is_validated():
    cat, desc, owner = onehot_bank(2, 1, [0])
    with pytest.raises(LssError, match="prior_scope"):
        LSSLoss(cat, desc, owner, prior_scope="batch")
    with pytest.raises(ConfigError, match="prior_scope"):
        load_config(TrainConfig, overrides=["loss.prior_scope=batch"])
    assert load_config(TrainConfig, overrides=["loss.prior_scope=step"]).loss.prior_scope == "step"


def test_total_is_the_weighted_sum():
    torch.manual_seed(1)
    loss_fn = make_loss(3, 4, [0, 1, 1, -1], w_cd=0.5, w_ca=2.0, w_u=0.3)
    loss, p = loss_fn(torch.randn(4, 3, 7), torch.randn(2, 3, 7), TS, TT)
    expected = 0.5 * (p["cd_category"] + p["cd_description"]) + 2.0 * p["ca"] + 0.3 * p["uniform"]
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    assert p["loss"].item() == pytest.approx(loss.item())


def test_centre_update_and_use():
    """The loss uses the centre from before the batch; then c <- m c + (1 - m) mean over views and batch."""
    loss_fn = make_loss(2, 1, [0], center_momentum=0.9, w_ca=0.0, w_u=0.0)
    teacher1 = embed([[1.0, 0.0], [0.0, 2.0]], [[1.0], [3.0]])[None]  # [1, 2, 3]; V_g = 1, B = 2
    student = torch.zeros(2, 2, 3)  # uniform student: CD = H(p_t, uniform) = log 2 whatever p_t is
    loss_fn(student, teacher1, TS, TT)
    c1_cat, c1_desc = torch.tensor([0.05, 0.1]), torch.tensor([0.2])  # 0.1 * [0.5, 1.0], 0.1 * [2.0]
    torch.testing.assert_close(loss_fn.center_category, c1_cat)
    torch.testing.assert_close(loss_fn.center_description, c1_desc)

    teacher2 = embed([[0.0, 0.0], [0.0, 0.0]], [[0.0], [0.0]])[None]
    _, parts = loss_fn(student, teacher2, TS, TT)
    # teacher scores 0 minus centre [0.05, 0.1] at TT: p_t = softmax([-1, -2])
    p = torch.softmax(torch.tensor([-1.0, -2.0]), -1).tolist()
    assert parts["teacher_entropy_category"].item() == pytest.approx(H(p, p), abs=1e-5)
    torch.testing.assert_close(loss_fn.center_category, 0.9 * c1_cat)

    frozen = make_loss(2, 1, [0], w_ca=0.0)
    frozen(student, teacher1, TS, TT, update_center=False)
    assert frozen.center_category.abs().sum() == 0


def test_teacher_receives_no_gradient():
    torch.manual_seed(2)
    loss_fn = make_loss(3, 4, [0, 1, 2, -1])
    student = torch.randn(4, 2, 7, requires_grad=True)
    teacher = torch.randn(2, 2, 7, requires_grad=True)  # as if the caller forgot no_grad
    loss, _ = loss_fn(student, teacher, TS, TT)
    loss.backward()
    assert teacher.grad is None
    assert student.grad is not None and student.grad.abs().sum() > 0


def test_float32_under_bf16_autocast():
    torch.manual_seed(3)
    loss_fn = make_loss(3, 4, [0, 1, 2, 2])
    student, teacher = torch.randn(3, 2, 7).bfloat16(), torch.randn(2, 2, 7).bfloat16()
    ref_fn = make_loss(3, 4, [0, 1, 2, 2])
    ref, ref_parts = ref_fn(student.float(), teacher.float(), TS, TT)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, parts = loss_fn(student, teacher, torch.tensor(TS), torch.tensor(TT))
    assert loss.dtype == torch.float32 and all(v.dtype == torch.float32 for v in parts.values())
    assert loss.item() == pytest.approx(ref.item(), rel=1e-6)
    assert loss_fn.center_category.dtype == torch.float32


def test_stable_log_aggregation_matches_naive():
    torch.manual_seed(4)
    owner = torch.tensor([0, 0, 1, 2, 2, 2])
    onehot = torch.nn.functional.one_hot(owner, 3).double()
    counts = onehot.sum(0)
    for c in (None, counts):
        x = torch.randn(2, 5, 6, dtype=torch.float64, requires_grad=True)
        log_p = torch.log_softmax(x, -1)
        stable = aggregate_log_probs(log_p, owner, onehot, c)
        naive = aggregate_probs(log_p.exp(), onehot, c).log()
        torch.testing.assert_close(stable, naive)
        g1, = torch.autograd.grad(stable.sum(), x, retain_graph=True)
        g2, = torch.autograd.grad(naive.sum(), x)
        torch.testing.assert_close(g1, g2)
    # far in the tail the naive form underflows to log 0; the stable one does not
    log_p = torch.tensor([[0.0, -10.0, -800.0, -900.0, -1000.0, -1100.0]], dtype=torch.float64)
    assert torch.isinf(aggregate_probs(log_p.exp(), onehot, None).log()).any()
    expected = torch.tensor([[math.log(1 + math.exp(-10)), -800.0, -900.0]], dtype=torch.float64)
    torch.testing.assert_close(aggregate_log_probs(log_p, owner, onehot, None), expected)


def test_from_config():
    cat, desc, owner = onehot_bank(3, 4, [0, 1, 2, -1])
    cfg = LossConfig(center_momentum=0.8, w_u=0.5, ca_aggregation="mean", ca_direction="desc_to_cat",
                     prior_scope="step")
    loss_fn = LSSLoss.from_config({"category": cat, "description": desc, "description_owner": owner}, cfg)
    assert (loss_fn.center_momentum, loss_fn.w_u, loss_fn.ca_aggregation, loss_fn.ca_direction,
            loss_fn.prior_scope) == (0.8, 0.5, "mean", "desc_to_cat", "step")
    assert set(loss_fn.state_dict()) == {"center_category", "center_description", "center_ready"}  # checkpointed
    assert loss_fn.center_init == "first_batch"  # the config default


def test_first_batch_centre_initialisation():
    """center_init=first_batch: the first batch is centred by its own mean, which becomes the centre;
    later batches follow the usual momentum update with the previous centre."""
    loss_fn = make_loss(2, 1, [0], center_momentum=0.9, w_ca=0.0, w_u=0.0, center_init="first_batch")
    teacher1 = embed([[1.0, 0.0], [0.0, 2.0]], [[1.0], [3.0]])[None]  # batch mean: cat [0.5, 1.0], desc [2.0]
    student = torch.zeros(2, 2, 3)
    _, parts = loss_fn(student, teacher1, TS, TT)
    # centred scores: clip 0 -> [0.5, -1.0], clip 1 -> [-0.5, 1.0]
    p0 = torch.softmax(torch.tensor([0.5, -1.0]) / TT, -1).tolist()
    p1 = torch.softmax(torch.tensor([-0.5, 1.0]) / TT, -1).tolist()
    assert parts["teacher_entropy_category"].item() == pytest.approx((H(p0, p0) + H(p1, p1)) / 2, abs=1e-5)
    torch.testing.assert_close(loss_fn.center_category, torch.tensor([0.5, 1.0]))
    torch.testing.assert_close(loss_fn.center_description, torch.tensor([2.0]))
    teacher2 = embed([[0.0, 0.0], [0.0, 0.0]], [[0.0], [0.0]])[None]
    loss_fn(student, teacher2, TS, TT)
    torch.testing.assert_close(loss_fn.center_category, 0.9 * torch.tensor([0.5, 1.0]))
