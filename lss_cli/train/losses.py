"""LSS objectives (docs/method.md §4): concept distillation, concept alignment, uniform prior, centring.

Everything here is pure tensor maths: embeddings and banks in, a scalar loss and a dict of parts out.
All scores, softmaxes and logs run in float32 with autocast off: teacher temperatures are ~0.004
on cosine scores, so a bf16 score error of 1e-3 would already move a logit by 0.25.

Shapes: V_g teacher (global) views, V_s = V_g + V_l student views ordered [globals..., locals...],
B clips per view, D embedding size, K categories, M descriptions. "Pairs" are (teacher view i,
student view j) with j != i, so a global view is never compared with itself.

Concept alignment works on the aligned subset of the banks: descriptions with an owner
(`description_owner >= 0`) and categories owning at least one of them. Extra words (categories
without descriptions) and unowned extra sentences have nothing to align with; they still take
part in concept distillation. The CA distributions are renormalised over that subset, i.e. they
are softmaxes over the subset's scores (the same teacher centre and temperature as CD).

Batch independence: the centre moves once per optimizer step, by the mean teacher score of the
whole step (all micro-batches and ranks), and with prior_scope="step" the uniform prior is one
KL over the mean prediction of every student view and clip of the step. Then N micro-batches of
B clips, on one rank or several, give the losses and gradients of one batch of N x B
(`StepStats`; lss_cli/train/step.py gathers them before the step's backward passes).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from typing import NamedTuple

import torch
from torch import nn
from torch.distributed.nn.functional import all_reduce  # differentiable; its successor is private

from lss_cli.config import LossConfig
from lss_cli.errors import LssError
from lss_cli.runtime.dist import is_distributed

Temp = float | torch.Tensor  # a Python float or a 0-dim tensor (no recompiles when it changes)
CA_DIRECTIONS = ("both", "desc_to_cat", "cat_to_desc")
CA_AGGREGATIONS = ("sum", "mean")
# "view": KL(mean p || uniform) per student view and micro-batch; "step": one KL of the mean over
# every student view, clip, micro-batch and rank of the optimizer step (batch-independent).
PRIOR_SCOPES = ("view", "step")


class StepStats(NamedTuple):
    """What the loss of one micro-batch needs from its whole optimizer step (all micro-batches, all
    ranks), so that N micro-batches of B clips train like one batch of N x B (`LSSLoss.step_stats`).

    teacher_mean [K + M]: mean teacher score (the centre's input); prior_sum [K]: the step's sum of
    student category probabilities over every view and clip (detached; zeros unless prior_scope is
    "step"); prior_count (0-dim): how many predictions that sum holds; grad_scale: micro-batches x
    ranks the step's gradient is averaged over (the pooled prior's gradient undoes that average).
    """

    teacher_mean: torch.Tensor
    prior_sum: torch.Tensor
    prior_count: torch.Tensor
    grad_scale: float


# ---- elementary pieces -----------------------------------------------------------------------


def pair_mask(teacher_views: int, student_views: int, device: torch.device | None = None) -> torch.Tensor:
    """[V_g, V_s] float mask of the (teacher i, student j != i) pairs, normalised to sum to 1."""
    mask = torch.ones(teacher_views, student_views, device=device)
    idx = torch.arange(min(teacher_views, student_views), device=device)
    mask[idx, idx] = 0.0
    return mask / mask.sum()


def cross_entropy_pairs(target: torch.Tensor, log_pred: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """sum_ij weights[i, j] * mean_b H(target[i, b], pred[j, b]).

    target [V_g, B, N] (probabilities), log_pred [V_s, B, N], weights [V_g, V_s] -> scalar.
    """
    ce = -torch.einsum("ibn,jbn->ij", target, log_pred) / target.shape[1]  # [V_g, V_s] batch-mean H
    return (ce * weights).sum()


def entropy(p: torch.Tensor) -> torch.Tensor:
    """H(p) over the last dim (0 log 0 = 0)."""
    return -torch.special.xlogy(p, p).sum(dim=-1)


def uniform_prior(log_p: torch.Tensor) -> torch.Tensor:
    """mean over views of KL(mean_batch p || uniform); log_p [V, B, K] -> scalar.

    The batch mean is taken per view (each view is its own batch of predictions); its log is a
    logsumexp so no category underflows to log 0. Under torch.distributed the mean is over the
    global batch (a differentiable all-reduce), so N ranks x B clips equal one process with N x B.
    """
    v, b, k = log_p.shape
    log_mean = torch.logsumexp(log_p, dim=1) - math.log(b)  # [V, K]
    if is_distributed() and torch.distributed.get_world_size() > 1:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            mean = all_reduce(log_mean.exp()) / torch.distributed.get_world_size()
        log_mean = mean.clamp_min(torch.finfo(mean.dtype).tiny).log()
    return (log_mean.exp() * (log_mean + math.log(k))).sum(dim=-1).mean()


def pooled_uniform_prior(log_p: torch.Tensor, prior_sum: torch.Tensor, count: torch.Tensor,
                         grad_scale: float) -> torch.Tensor:
    """KL(p_bar || uniform), p_bar the mean prediction over a whole optimizer step; log_p [V, B, K].

    prior_sum [K] is the step's detached sum of p over every view, clip, micro-batch and rank (this
    micro-batch included), count the number of predictions in it. The value is the pooled one; the
    gradient reaches this micro-batch's own predictions only, scaled by `grad_scale` (micro-batches
    x ranks) because the step averages the micro-batches' gradients and DDP the ranks'. Summed over
    the step, the gradient is d KL(p_bar || uniform) exactly (tests/test_batch_independence.py).
    """
    own = log_p.exp().sum(dim=(0, 1))  # [K]
    total = prior_sum + grad_scale * (own - own.detach())  # [K]: value prior_sum, gradient grad_scale x own's
    mean = total / count
    log_mean = mean.clamp_min(torch.finfo(mean.dtype).tiny).log()  # a category nobody predicts adds 0, not nan
    return (mean * (log_mean + math.log(log_p.shape[-1]))).sum()


def aggregate_probs(p: torch.Tensor, owner_onehot: torch.Tensor, counts: torch.Tensor | None) -> torch.Tensor:
    """Description probabilities [..., M'] -> category probabilities [..., K'].

    owner_onehot [M', K']; counts [K'] for "mean" (then renormalised to a distribution), None for "sum".
    """
    agg = p @ owner_onehot
    if counts is None:
        return agg
    agg = agg / counts
    return agg / agg.sum(dim=-1, keepdim=True)


def aggregate_log_probs(log_p: torch.Tensor, owner: torch.Tensor, owner_onehot: torch.Tensor,
                        counts: torch.Tensor | None) -> torch.Tensor:
    """log of `aggregate_probs(exp(log_p))`, computed stably: a per-category logsumexp.

    log_p [..., M'], owner [M'] (compact category index), owner_onehot [M', K'] -> [..., K'].
    The per-category maximum is a constant shift (detached), so gradients are exact.
    """
    k = owner_onehot.shape[1]
    with torch.no_grad():
        shift = torch.full((*log_p.shape[:-1], k), -torch.inf, device=log_p.device, dtype=log_p.dtype)
        shift = shift.scatter_reduce(-1, owner.expand_as(log_p), log_p, reduce="amax", include_self=True)
    summed = (log_p - shift.gather(-1, owner.expand_as(log_p))).exp() @ owner_onehot  # >= 1 per category
    log_agg = shift + summed.log()
    if counts is None:
        return log_agg
    return torch.log_softmax(log_agg - counts.log(), dim=-1)


# ---- the loss module -------------------------------------------------------------------------


class LSSLoss(nn.Module):
    """Total LSS loss over the two concept banks, with the teacher centres as buffers.

    forward(student_z [V_s, B, D], teacher_z [V_g, B, D], student_temp, teacher_temp, step=None)
      -> (loss scalar, parts dict of detached 0-dim float32 tensors; no host sync).
    `step` (`StepStats`) carries what the loss needs from the rest of its optimizer step (the
    teacher's mean score, the pooled prior's sums); without it the call is a step of its own.
    The centre is updated once per optimizer step from the step's mean teacher score over all
    micro-batches and ranks (DINO order: the step's losses use the centre from before it); the
    training step calls `update_center` after the optimizer step, a stand-alone call does it
    itself. The temperatures are per-step values the caller passes in (`Schedules.temperatures`):
    the loss keeps the weights and the centring, the schedules the temperatures.
    """

    def __init__(self, category: torch.Tensor, description: torch.Tensor, description_owner: torch.Tensor, *,
                 center_momentum: float = 0.9, w_cd: float = 1.0, w_ca: float = 1.0, w_u: float = 0.1,
                 ca_aggregation: str = "sum", ca_direction: str = "both", center_init: str = "first_batch",
                 prior_scope: str = "step"):
        super().__init__()
        if center_init not in ("zero", "first_batch"):
            raise LssError(f"bad center_init {center_init!r}", hint="zero | first_batch")
        if prior_scope not in PRIOR_SCOPES:
            raise LssError(f"bad prior_scope {prior_scope!r}", hint=" | ".join(PRIOR_SCOPES))
        self.center_init, self.prior_scope = center_init, prior_scope
        _check_bank(category, description, description_owner)
        if ca_aggregation not in CA_AGGREGATIONS or ca_direction not in CA_DIRECTIONS:
            raise LssError(f"bad concept-alignment options {ca_aggregation!r} / {ca_direction!r}",
                           hint=f"aggregation: {'|'.join(CA_AGGREGATIONS)}; direction: {'|'.join(CA_DIRECTIONS)}")
        self.center_momentum = float(center_momentum)
        self.w_cd, self.w_ca, self.w_u = float(w_cd), float(w_ca), float(w_u)
        self.ca_aggregation, self.ca_direction = ca_aggregation, ca_direction
        # The banks come from the concepts file, not from checkpoints: state_dict() is the centres only.
        self.register_buffer("category", category.detach().float().clone(), persistent=False)  # [K, D]
        self.register_buffer("description", description.detach().float().clone(), persistent=False)  # [M, D]
        self.register_buffer("center_category", torch.zeros(category.shape[0]))  # [K]
        self.register_buffer("center_description", torch.zeros(description.shape[0]))  # [M]
        # 1 once a centre holds a batch mean. With center_init="first_batch" the first batch is
        # centred by its own mean instead of by zeros: CLIP's cosine scores carry a large
        # per-concept offset, and removing it only gradually (1/(1-m) steps) makes the teacher's
        # entropy, and so the loss, climb through a long start-up transient.
        self.register_buffer("center_ready", torch.zeros(()))
        self._register_alignment(description_owner.long(), category.shape[0])

    @classmethod
    def from_config(cls, bank: Mapping[str, torch.Tensor], cfg: LossConfig) -> LSSLoss:
        """Build from a bank ({category, description, description_owner}) and a LossConfig (its
        weights, centring and prior options; its temperatures are the schedules')."""
        return cls(bank["category"], bank["description"], bank["description_owner"],
                   center_momentum=cfg.center_momentum, w_cd=cfg.w_cd, w_ca=cfg.w_ca, w_u=cfg.w_u,
                   ca_aggregation=cfg.ca_aggregation, ca_direction=cfg.ca_direction, center_init=cfg.center_init,
                   prior_scope=cfg.prior_scope)

    def _register_alignment(self, owner: torch.Tensor, num_categories: int) -> None:
        """Index the aligned subset: owned descriptions and the categories that own them."""
        owned = torch.nonzero(owner >= 0).flatten()  # [M'] description indices
        counts_all = torch.bincount(owner[owned], minlength=num_categories)  # [K]
        cats = torch.nonzero(counts_all > 0).flatten()  # [K'] category indices
        compact = torch.full((num_categories,), -1, dtype=torch.long)
        compact[cats] = torch.arange(len(cats))
        ca_owner = compact[owner[owned]]  # [M'] in [0, K')
        if len(cats) == 0 and self.w_ca > 0:
            raise LssError("concept alignment needs descriptions with owners, but no description has one",
                           hint="rebuild the bank with descriptions, or set loss.w_ca=0")
        self.register_buffer("ca_description_index", owned, persistent=False)
        self.register_buffer("ca_category_index", cats, persistent=False)
        self.register_buffer("ca_owner", ca_owner, persistent=False)
        onehot = torch.zeros(len(owned), len(cats))  # [M', K']
        onehot[torch.arange(len(owned)), ca_owner] = 1.0
        self.register_buffer("ca_owner_onehot", onehot, persistent=False)
        self.register_buffer("ca_counts", counts_all[cats].float(), persistent=False)

    # ---- pieces ----

    def scores(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """z [..., D] -> cosine scores over (category [..., K], description [..., M]) in float32."""
        z = z.float()
        return z @ self.category.t(), z @ self.description.t()

    def _alignment(self, t_cat: torch.Tensor, t_desc: torch.Tensor, s_cat: torch.Tensor, s_desc: torch.Tensor,
                   student_temp: Temp, teacher_temp: Temp, weights: torch.Tensor) -> dict[str, torch.Tensor]:
        """CA terms. t_*: centred teacher scores [V_g, B, *]; s_*: student scores [V_s, B, *]."""
        cat_idx, desc_idx = self.ca_category_index, self.ca_description_index
        counts = self.ca_counts if self.ca_aggregation == "mean" else None
        terms = {}
        if self.ca_direction in ("both", "desc_to_cat"):
            target = aggregate_probs(torch.softmax(t_desc[..., desc_idx] / teacher_temp, dim=-1),
                                     self.ca_owner_onehot, counts)
            terms["ca_desc_to_cat"] = cross_entropy_pairs(
                target, torch.log_softmax(s_cat[..., cat_idx] / student_temp, dim=-1), weights)
        if self.ca_direction in ("both", "cat_to_desc"):
            target = torch.softmax(t_cat[..., cat_idx] / teacher_temp, dim=-1)
            log_pred = aggregate_log_probs(torch.log_softmax(s_desc[..., desc_idx] / student_temp, dim=-1),
                                           self.ca_owner, self.ca_owner_onehot, counts)
            terms["ca_cat_to_desc"] = cross_entropy_pairs(target, log_pred, weights)
        return terms

    def forward(self, student_z: torch.Tensor, teacher_z: torch.Tensor, student_temp: Temp, teacher_temp: Temp,
                update_center: bool = True, step: StepStats | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """student_z [V_s, B, D], teacher_z [V_g, B, D] (both L2-normalised) -> (loss, parts).

        `step`: the statistics of the whole optimizer step this micro-batch belongs to (None: this
        call is the step, on every rank). `update_center`: move the centre by the step's mean
        teacher score after the loss (the training step passes False and calls `update_center`
        once, after the optimizer step)."""
        with torch.autocast(student_z.device.type, enabled=False):
            teacher_z = teacher_z.detach()  # stop-gradient: the teacher is an EMA, never trained
            if step is None:  # one all-reduce (under torch.distributed)
                step = self.step_stats(self.step_sums(teacher_z, student_z, student_temp), micro_batches=1)
            t_cat, t_desc = self.scores(teacher_z)  # [V_g, B, K], [V_g, B, M]
            s_cat, s_desc = self.scores(student_z)  # [V_s, B, K], [V_s, B, M]
            weights = pair_mask(teacher_z.shape[0], student_z.shape[0], student_z.device)  # [V_g, V_s]
            c_cat, c_desc = self._current_centers(step.teacher_mean)
            tc_cat, tc_desc = t_cat - c_cat, t_desc - c_desc
            p_cat = torch.softmax(tc_cat / teacher_temp, dim=-1)
            p_desc = torch.softmax(tc_desc / teacher_temp, dim=-1)
            log_s_cat = torch.log_softmax(s_cat / student_temp, dim=-1)
            parts = {"cd_category": cross_entropy_pairs(p_cat, log_s_cat, weights),
                     "cd_description": cross_entropy_pairs(
                         p_desc, torch.log_softmax(s_desc / student_temp, dim=-1), weights),
                     "uniform": self._prior(log_s_cat, step)}
            ca_terms = self._alignment(tc_cat, tc_desc, s_cat, s_desc, student_temp, teacher_temp, weights) \
                if self.w_ca > 0 else {}
            parts.update(ca_terms)
            ca = sum(ca_terms.values()) / len(ca_terms) if ca_terms else s_cat.new_zeros(())
            parts["ca"] = ca
            loss = self.w_cd * (parts["cd_category"] + parts["cd_description"]) + self.w_ca * ca \
                + self.w_u * parts["uniform"]
            parts["loss"] = loss
            parts = {k: v.detach() for k, v in parts.items()}
            parts.update(_collapse_diagnostics(p_cat, p_desc))
        if update_center:
            self.update_center(step.teacher_mean)
        return loss, parts

    def _prior(self, log_s_cat: torch.Tensor, step: StepStats) -> torch.Tensor:
        """The uniform prior in this loss's scope; log_s_cat [V_s, B, K]."""
        if self.prior_scope == "step":
            return pooled_uniform_prior(log_s_cat, step.prior_sum, step.prior_count, step.grad_scale)
        return uniform_prior(log_s_cat)

    # ---- the optimizer step's statistics ----

    @torch.no_grad()
    def step_sums(self, teacher_z: torch.Tensor, student_z: torch.Tensor | None, student_temp: Temp) -> torch.Tensor:
        """One micro-batch's share of `StepStats`, on this rank: [K + M + 1 + K + 1] = (teacher score
        sum over views and clips, their count, student category probability sum, its count).

        The student part is zeros unless prior_scope is "step" (then `student_z` is required);
        add the micro-batches' sums and pass the total to `step_stats`."""
        with torch.autocast(teacher_z.device.type, enabled=False):
            t_cat, t_desc = self.scores(teacher_z)  # [V_g, B, K], [V_g, B, M]
            t_count = t_cat.new_full((1,), t_cat[..., 0].numel())
            k = t_cat.shape[-1]
            if self.prior_scope == "step":
                p = torch.softmax(self.scores(student_z)[0] / student_temp, dim=-1)  # [V_s, B, K]
                s_sum, s_count = p.sum(dim=(0, 1)), t_cat.new_full((1,), p[..., 0].numel())
            else:
                s_sum, s_count = t_cat.new_zeros(k), t_cat.new_zeros(1)
            return torch.cat([t_cat.sum(dim=(0, 1)), t_desc.sum(dim=(0, 1)), t_count, s_sum, s_count])

    @torch.no_grad()
    def step_stats(self, sums: torch.Tensor, micro_batches: int) -> StepStats:
        """`StepStats` from this rank's summed `step_sums` over its `micro_batches` micro-batches:
        one all-reduce under torch.distributed (the sums of every rank), no host sync."""
        world = 1
        if is_distributed():
            sums = sums.clone()
            torch.distributed.all_reduce(sums)
            world = torch.distributed.get_world_size()
        km = self.center_category.shape[0] + self.center_description.shape[0]
        k = self.center_category.shape[0]
        teacher_mean = sums[:km] / sums[km]
        prior_sum, prior_count = sums[km + 1:km + 1 + k], sums[km + 1 + k]
        return StepStats(teacher_mean, prior_sum, prior_count.clamp_min(1.0), float(micro_batches * world))

    @torch.no_grad()
    def _current_centers(self, mean: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """The centres the loss uses: the running ones, or (first batch, first_batch init) its own mean.
        Chosen with torch.where, not Python control flow, so there is no host sync."""
        if self.center_init == "zero":
            return self.center_category, self.center_description
        k = self.center_category.shape[0]
        ready = self.center_ready > 0
        return (torch.where(ready, self.center_category, mean[:k]),
                torch.where(ready, self.center_description, mean[k:]))

    @torch.no_grad()
    def update_center(self, batch: torch.Tensor) -> None:
        """c <- m c + (1 - m) batch, `batch` [K + M] the step's mean teacher score over all views,
        clips, micro-batches and ranks (`StepStats.teacher_mean`); no host sync. With
        center_init="first_batch" the first update sets c to that mean."""
        k = self.center_category.shape[0]
        m = self.center_momentum
        if self.center_init == "first_batch":
            m = torch.where(self.center_ready > 0, m, 0.0)
            self.center_category.mul_(m).add_((1.0 - m) * batch[:k])
            self.center_description.mul_(m).add_((1.0 - m) * batch[k:])
        else:
            self.center_category.mul_(m).add_(batch[:k], alpha=1.0 - m)
            self.center_description.mul_(m).add_(batch[k:], alpha=1.0 - m)
        self.center_ready.fill_(1.0)


def _collapse_diagnostics(p_cat: torch.Tensor, p_desc: torch.Tensor) -> dict[str, torch.Tensor]:
    """Teacher entropy (mean per sample) and entropy of the batch-mean teacher distribution, per bank.

    Collapse shows as both going to 0 (one concept for everything) or the per-sample entropy going
    to log K (uniform, no information).
    """
    out = {}
    for bank, p in (("category", p_cat), ("description", p_desc)):
        p = p.detach()
        out[f"teacher_entropy_{bank}"] = entropy(p).mean()
        out[f"teacher_mean_entropy_{bank}"] = entropy(p.flatten(0, -2).mean(0))
    return out


def _check_bank(category: torch.Tensor, description: torch.Tensor, owner: torch.Tensor) -> None:
    """The bank contract: category [K, D], description [M, D], description_owner [M] int in [-1, K)."""
    problems = []
    if category.ndim != 2 or description.ndim != 2 or category.shape[1] != description.shape[1]:
        problems.append(f"category {tuple(category.shape)} and description {tuple(description.shape)} "
                        "must be [K, D] and [M, D] with the same D")
    elif owner.shape != (description.shape[0],) or owner.dtype.is_floating_point:
        problems.append(f"description_owner must be an integer vector [{description.shape[0]}], "
                        f"got {owner.dtype} {tuple(owner.shape)}")
    elif owner.numel() and (int(owner.min()) < -1 or int(owner.max()) >= category.shape[0]):
        problems.append(f"description_owner values must be in [-1, {category.shape[0]})")
    if category.shape[0] == 0:
        problems.append("the category bank is empty")
    if problems:
        raise LssError("invalid concept bank: " + "; ".join(problems),
                       hint="rebuild it with `lss build-concepts`")
