"""LSSLoss against plain-loop references written from the method's definitions.

README "Method" / docs/method.md, and losses.py's docstring:

- scores are cosines with the frozen banks; the teacher's are centred, `s_t - c`;
- concept distillation, per bank: H(softmax((s_t - c) / tau_t), softmax(s_s / tau_s)), averaged over
  the clips and over every (teacher global view i, student view j != i) pair;
- concept alignment on the aligned subset (descriptions with an owner, categories owning one):
  desc->cat compares the teacher's description distribution summed per owning category with the
  student's category distribution; cat->desc the teacher's category distribution with the student's
  description distribution summed per category; "mean" aggregation averages per category and
  renormalises; both distributions are softmaxes over the subset only; `ca` is the mean of the terms;
- the uniform prior: KL(mean of the student's category distribution || uniform), the mean taken
  over every student view and clip of the step (`loss.prior_scope=step`, the default), or per
  student view and averaged over views (`view`);
- loss = w_cd (cd_category + cd_description) + w_ca ca + w_u uniform.

The references loop over views, clips, categories and descriptions in float64 and use no function
of the project. Nothing here is special-cased: 2 teacher and 5 student views, 3 clips, a non-zero
centre, an extra word (a category without descriptions) and an unowned description.
LSSLoss computes in float32, hence the 1e-5 tolerances.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from lss_cli.train.losses import LSSLoss

V_G, V_S, B, D = 2, 5, 3, 16
OWNER = [0, 0, 1, 2, 2, 2, -1, 4, 1]  # description -> category; category 3 owns none, description 6 no owner
K, M = 5, len(OWNER)
TAU_S, TAU_T = 0.1, 0.04
TOL = {"rtol": 1e-5, "atol": 1e-5}


def unit_rows(*shape: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(*shape, generator=g, dtype=torch.float64), dim=-1)


@pytest.fixture
def case() -> dict:
    """Banks, embeddings [V, B, D], and a random non-zero centre per bank (float64)."""
    g = torch.Generator().manual_seed(9)
    return {"category": unit_rows(K, D, seed=1), "description": unit_rows(M, D, seed=2),
            "student": unit_rows(V_S, B, D, seed=3), "teacher": unit_rows(V_G, B, D, seed=4),
            "c_cat": 0.2 * torch.randn(K, generator=g, dtype=torch.float64),
            "c_desc": 0.2 * torch.randn(M, generator=g, dtype=torch.float64)}


# ---- the references: plain loops ---------------------------------------------------------------


def dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return sum(a[d] * b[d] for d in range(a.shape[0]))


def softmax(logits: list[torch.Tensor]) -> list[torch.Tensor]:
    top = max(float(x.detach()) for x in logits)  # a constant shift: no gradient
    exps = [torch.exp(x - top) for x in logits]
    total = sum(exps)
    return [e / total for e in exps]


def cross_entropy(target: list[torch.Tensor], pred: list[torch.Tensor]) -> torch.Tensor:
    return -sum(p * torch.log(q) for p, q in zip(target, pred, strict=True))


def per_category(probs: list[torch.Tensor], owners: list[int], cats: list[int], mean: bool) -> list[torch.Tensor]:
    """Description probabilities (over the aligned descriptions) summed per owning category; with
    `mean`, averaged per category and renormalised."""
    sums = []
    for k in cats:
        mine = [p for p, o in zip(probs, owners, strict=True) if o == k]
        sums.append(sum(mine) / len(mine) if mean else sum(mine))
    total = sum(sums)
    return [s / total for s in sums] if mean else sums


def reference_parts(case: dict, aggregation: str = "sum") -> dict[str, torch.Tensor]:
    """Every loss part by the definitions, one (pair, clip) at a time."""
    cat, desc = case["category"], case["description"]
    aligned = [m for m in range(M) if OWNER[m] >= 0]
    owners = [OWNER[m] for m in aligned]
    cats = sorted(set(owners))
    mean = aggregation == "mean"
    pairs = [(i, j) for i in range(V_G) for j in range(V_S) if i != j]
    total = {"cd_category": 0.0, "cd_description": 0.0, "ca_desc_to_cat": 0.0, "ca_cat_to_desc": 0.0}
    for i, j in pairs:
        for b in range(B):
            t, s = case["teacher"][i, b], case["student"][j, b]
            t_cat = [dot(t, cat[k]) - case["c_cat"][k] for k in range(K)]
            t_desc = [dot(t, desc[m]) - case["c_desc"][m] for m in range(M)]
            s_cat = [dot(s, cat[k]) for k in range(K)]
            s_desc = [dot(s, desc[m]) for m in range(M)]
            terms = {
                "cd_category": cross_entropy(softmax([x / TAU_T for x in t_cat]), softmax([x / TAU_S for x in s_cat])),
                "cd_description": cross_entropy(softmax([x / TAU_T for x in t_desc]),
                                                softmax([x / TAU_S for x in s_desc])),
                "ca_desc_to_cat": cross_entropy(
                    per_category(softmax([t_desc[m] / TAU_T for m in aligned]), owners, cats, mean),
                    softmax([s_cat[k] / TAU_S for k in cats])),
                "ca_cat_to_desc": cross_entropy(
                    softmax([t_cat[k] / TAU_T for k in cats]),
                    per_category(softmax([s_desc[m] / TAU_S for m in aligned]), owners, cats, mean)),
            }
            for name, value in terms.items():
                total[name] = total[name] + value / (len(pairs) * B)
    total["ca"] = (total["ca_desc_to_cat"] + total["ca_cat_to_desc"]) / 2
    total["uniform"] = reference_uniform(case)
    return total


def reference_uniform(case: dict, scope: str = "step") -> torch.Tensor:
    """KL(mean of softmax(s_s / tau_s) || uniform over K): the mean over every student view and clip
    ("step"), or over the clips of each view with the KLs averaged over views ("view")."""
    def kl(probs: list[list[torch.Tensor]]) -> torch.Tensor:
        mean_p = [sum(p[k] for p in probs) / len(probs) for k in range(K)]
        return sum(q * torch.log(q * K) for q in mean_p)

    per_view = [[softmax([dot(case["student"][j, b], case["category"][k]) / TAU_S for k in range(K)])
                 for b in range(B)] for j in range(V_S)]
    if scope == "step":
        return kl([p for view in per_view for p in view])
    return sum(kl(view) for view in per_view) / V_S


# ---- the module under test ------------------------------------------------------------------


def make_loss(case: dict, centred: bool = True, **kw) -> LSSLoss:
    """LSSLoss on the case's banks; with `centred`, its running centres set to the case's (as a
    resumed run's state dict would) so the next forward centres by them."""
    loss = LSSLoss(case["category"], case["description"], torch.tensor(OWNER), **kw)
    if centred:
        state = loss.state_dict()
        state.update(center_category=case["c_cat"].float(), center_description=case["c_desc"].float(),
                     center_ready=torch.ones(()))
        loss.load_state_dict(state)
    return loss


def forward(loss: LSSLoss, case: dict) -> tuple[torch.Tensor, dict, torch.Tensor]:
    student = case["student"].float().requires_grad_(True)
    total, parts = loss(student, case["teacher"].float(), TAU_S, TAU_T)
    return total, parts, student


@pytest.mark.parametrize("aggregation", ["sum", "mean"])
def test_parts_equal_loop_reference(case, aggregation):
    _, parts, _ = forward(make_loss(case, ca_aggregation=aggregation), case)
    want = reference_parts(case, aggregation)
    for name in ("cd_category", "cd_description", "ca_desc_to_cat", "ca_cat_to_desc", "ca"):
        torch.testing.assert_close(parts[name].double(), want[name], **TOL, msg=name)
    # the case exercises what it claims: the centre changes the numbers
    uncentred = reference_parts({**case, "c_cat": 0 * case["c_cat"], "c_desc": 0 * case["c_desc"]}, aggregation)
    assert abs(float(uncentred["cd_category"] - want["cd_category"])) > 1e-2


@pytest.mark.parametrize("scope", ["step", "view"])
def test_uniform_prior_equals_loop_reference(case, scope):
    _, parts, _ = forward(make_loss(case, prior_scope=scope), case)
    torch.testing.assert_close(parts["uniform"].double(), reference_uniform(case, scope), **TOL)
    # the two scopes differ on this case, so each reference pins its own definition
    assert abs(float(reference_uniform(case, "step") - reference_uniform(case, "view"))) > 1e-3


@pytest.mark.parametrize("direction", ["desc_to_cat", "cat_to_desc"])
def test_one_direction_is_that_term(case, direction):
    _, parts, _ = forward(make_loss(case, ca_direction=direction), case)
    want = reference_parts(case)
    assert f"ca_{'cat_to_desc' if direction == 'desc_to_cat' else 'desc_to_cat'}" not in parts
    torch.testing.assert_close(parts["ca"].double(), want[f"ca_{direction}"], **TOL)


def test_total_and_gradient_equal_loop_reference(case):
    """Weighted total, and its gradient w.r.t. every student embedding (none reaches the teacher)."""
    weights = {"w_cd": 0.7, "w_ca": 1.3, "w_u": 0.4}
    total, parts, student = forward(make_loss(case, **weights), case)
    student_ref = case["student"].clone().requires_grad_(True)
    want = reference_parts({**case, "student": student_ref})
    want_total = weights["w_cd"] * (want["cd_category"] + want["cd_description"]) + weights["w_ca"] * want["ca"] \
        + weights["w_u"] * want["uniform"]
    torch.testing.assert_close(total.double(), want_total, **TOL)
    torch.testing.assert_close(parts["loss"].double(), want_total, **TOL)
    (grad,) = torch.autograd.grad(total, student)
    (grad_ref,) = torch.autograd.grad(want_total, student_ref)
    assert grad_ref.abs().max() > 1e-2
    torch.testing.assert_close(grad.double(), grad_ref, rtol=1e-4, atol=1e-5)


def test_first_batch_is_centred_by_its_own_mean(case):
    """center_init=first_batch (the default): a fresh loss centres its first batch by that batch's
    mean teacher score over every view and clip."""
    teacher, cat, desc = case["teacher"], case["category"], case["description"]
    n = V_G * B
    c_cat = torch.stack([sum(dot(teacher[i, b], cat[k]) for i in range(V_G) for b in range(B)) / n for k in range(K)])
    c_desc = torch.stack([sum(dot(teacher[i, b], desc[m]) for i in range(V_G) for b in range(B)) / n
                          for m in range(M)])
    _, parts, _ = forward(make_loss(case, centred=False), case)
    want = reference_parts({**case, "c_cat": c_cat, "c_desc": c_desc})
    for name in ("cd_category", "cd_description", "ca"):
        torch.testing.assert_close(parts[name].double(), want[name], **TOL, msg=name)


def test_reference_is_not_trivially_uniform(case):
    """Guard on the reference itself: the teacher targets are sharp and differ between clips, so a
    wrong pairing of views or clips would change the numbers."""
    t = case["teacher"]
    first = softmax([(dot(t[0, 0], case["category"][k]) - case["c_cat"][k]) / TAU_T for k in range(K)])
    second = softmax([(dot(t[0, 1], case["category"][k]) - case["c_cat"][k]) / TAU_T for k in range(K)])
    assert max(float(p) for p in first) > 0.5
    assert sum(abs(float(p - q)) for p, q in zip(first, second, strict=True)) > 0.2
    assert math.isfinite(float(reference_uniform(case)))
