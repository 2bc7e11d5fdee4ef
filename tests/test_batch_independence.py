"""Batch independence of the training step: N micro-batches of B clips, on one rank or several,
train like one batch of N x B (losses, the gradient of every parameter, the centre after the step).

That holds with loss.prior_scope=step (one uniform prior over the whole optimizer step) and the
centre moved once per step by the whole step's mean teacher score. With prior_scope=view the prior
is a KL per view and micro-batch, so splitting the batch changes the objective: the test of that
scope documents why the option exists.

The components are the production ones (`build_components`: tiny CLIP, random weights, no dropout)
with ready-made views; gradients are read just before the optimizer steps (a step pre-hook).
"""

from __future__ import annotations

import socket

import pytest
import torch
import torch.nn.functional as F

from lss_cli.config import LossConfig, ModelConfig, OptimConfig, RunConfig, TrainConfig
from lss_cli.models.clip import load_clip
from lss_cli.runtime.dist import DistInfo
from lss_cli.train.build import build_components
from lss_cli.train.step import train_step

B, N = 2, 2  # clips per micro-batch, micro-batches (or ranks) per step
V_G, V_L, T = 2, 2, 2  # global views, local views, frames per view
STEPS = 2  # the second step runs with the centre and the parameters the first one left
LOSS_PARTS = ("loss", "cd_category", "cd_description", "ca", "ca_desc_to_cat", "ca_cat_to_desc", "uniform",
              "teacher_entropy_category", "teacher_entropy_description")


def _bank(dim: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return {"category": F.normalize(torch.randn(6, dim, generator=g), dim=-1),
            "description": F.normalize(torch.randn(9, dim, generator=g), dim=-1),
            "description_owner": torch.tensor([0, 0, 1, 2, 3, 3, 4, -1, -1])}  # category 5: an extra word


def _views(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """All N x B clips of a step: global [N*B, V_g, T, 3, 64, 64], local [N*B, V_l, T, 3, 32, 32]."""
    g = torch.Generator().manual_seed(100 + step)
    return (torch.randn(N * B, V_G, T, 3, 64, 64, generator=g), torch.randn(N * B, V_L, T, 3, 32, 32, generator=g))


def _components(scope: str, batch: int, accum: int, dist: DistInfo | None = None, momentum: float = 0.5):
    """The step's components; the loss temperatures make the prior and the centre matter."""
    cfg = TrainConfig(model=ModelConfig(name="lss-tiny", pretrained=None, num_frames=T),
                      loss=LossConfig(student_temp=0.1, teacher_temp=0.04, warmup_teacher_temp=0.04, w_u=1.0,
                                      center_momentum=momentum, prior_scope=scope),
                      optim=OptimConfig(clip_grad=0.0), run=RunConfig(device="cpu"))
    cfg.data.batch_size = batch
    clip = load_clip("lss-tiny", None, seed=0)
    torch.manual_seed(0)  # the temporal layers' initialisation
    return build_components(cfg, clip, _bank(clip.embed_dim), torch.device("cpu"), iters_per_epoch=STEPS,
                            accum=accum, dist=dist)


def _run(scope: str, chunks: list[slice], accum: int, dist: DistInfo | None = None,
         momentum: float = 0.5) -> list[dict]:
    """STEPS steps, micro-batch i of each step holding clips `chunks[i]` -> per step: loss parts,
    gradients (before AdamW), centres after the step."""
    c = _components(scope, chunks[0].stop - chunks[0].start, accum, dist, momentum)
    grads: list[dict[str, torch.Tensor]] = []
    c.optimizer.register_step_pre_hook(
        lambda opt, args, kwargs: grads.append({n: p.grad.clone() for n, p in c.student_raw.named_parameters()}))
    out = []
    for step in range(STEPS):
        g, loc = _views(step)
        parts = train_step(c, chunks, step, make_views=lambda chunk, i, g=g, loc=loc: (g[chunk], loc[chunk]))
        out.append({"parts": {k: parts[k].item() for k in LOSS_PARTS}, "grads": grads[-1],
                    "center": torch.cat([c.loss_fn.center_category, c.loss_fn.center_description]).clone()})
    return out


ONE_BATCH = [slice(0, N * B)]
MICRO_BATCHES = [slice(i * B, (i + 1) * B) for i in range(N)]


def _assert_same(a: dict, b: dict, what: str) -> None:
    for k in LOSS_PARTS:
        assert a["parts"][k] == pytest.approx(b["parts"][k], rel=1e-5, abs=1e-6), (what, k)
    for name, grad in a["grads"].items():
        torch.testing.assert_close(b["grads"][name], grad, rtol=1e-4, atol=1e-7, msg=f"{what}: {name}")
    torch.testing.assert_close(b["center"], a["center"], rtol=1e-5, atol=1e-6, msg=f"{what}: centre")


def test_step_scope_micro_batches_equal_one_batch():
    """prior_scope=step: 2 micro-batches of 2 clips == 1 batch of 4, over two steps."""
    one = _run("step", ONE_BATCH, accum=1)
    split = _run("step", MICRO_BATCHES, accum=N)
    assert one[0]["parts"]["uniform"] > 1e-3  # the prior really pulls
    for step in range(STEPS):
        _assert_same(one[step], split[step], f"step {step}")


def test_view_scope_depends_on_the_split():
    """prior_scope=view: a KL per view and micro-batch, so splitting the batch changes the prior and
    its gradient. The distillation terms and the centre (moved once per step) still agree."""
    one = _run("view", ONE_BATCH, accum=1)
    split = _run("view", MICRO_BATCHES, accum=N)
    a, b = one[0], split[0]
    for k in ("cd_category", "cd_description", "ca"):
        assert b["parts"][k] == pytest.approx(a["parts"][k], rel=1e-5, abs=1e-6), k
    torch.testing.assert_close(b["center"], a["center"], rtol=1e-5, atol=1e-6)
    assert b["parts"]["uniform"] > a["parts"]["uniform"] + 1e-3  # fewer clips per mean: further from uniform
    worst = max(float((b["grads"][n] - g).abs().max() / g.abs().max().clamp_min(1e-12)) for n, g in a["grads"].items())
    assert worst > 1e-2


def test_centre_moves_once_per_step_from_all_micro_batches():
    """The centre after one step of N micro-batches is m c0 + (1 - m) (mean teacher score over the
    whole step), computed here from the teacher's outputs directly (first step: c0 = that mean).
    Momentum 0.9: updates per micro-batch would give 0.9 mean_1 + 0.1 mean_2 instead."""
    split = _run("view", MICRO_BATCHES, accum=N, momentum=0.9)
    c = _components("view", B, N, momentum=0.9)
    g, _ = _views(0)
    with torch.no_grad():
        z = torch.stack([c.teacher(g[:, v]) for v in range(V_G)])  # [V_g, N*B, D]: the step's teacher
        z = z.float()
    bank = _bank(z.shape[-1])
    expected = torch.cat([(z @ bank["category"].t()).mean(dim=(0, 1)), (z @ bank["description"].t()).mean(dim=(0, 1))])
    torch.testing.assert_close(split[0]["center"], expected, rtol=1e-5, atol=1e-6)  # first_batch: c = mean


# ---- two gloo ranks ---------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_worker(rank: int, world: int, port: int, accum: int, out: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        per_rank = N * B // world
        size = per_rank // accum
        chunks = [slice(rank * per_rank + i * size, rank * per_rank + (i + 1) * size) for i in range(accum)]
        torch.save(_run("step", chunks, accum, DistInfo(rank, world, 0)), f"{out}/{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("accum", [1, 2], ids=["2x2clips", "2x2x1clip"])
def test_two_gloo_ranks_equal_one_process(tmp_path, accum):
    """2 ranks x `accum` micro-batches == one process with the 4 clips in one batch: gradients
    (DDP-averaged) and centres on both ranks; the loss parts averaged over ranks (what the log
    shows: each rank's distillation terms are over its own clips)."""
    torch.multiprocessing.start_processes(_rank_worker, args=(2, _free_port(), accum, str(tmp_path)), nprocs=2,
                                          start_method="spawn")
    one = _run("step", ONE_BATCH, accum=1)
    ranks = [torch.load(tmp_path / f"{rank}.pt", weights_only=True) for rank in (0, 1)]
    for step in range(STEPS):
        for rank in (0, 1):
            mean_parts = {k: sum(r[step]["parts"][k] for r in ranks) / 2 for k in LOSS_PARTS}
            _assert_same(one[step], {**ranks[rank][step], "parts": mean_parts}, f"rank {rank}, step {step}")
        assert ranks[0][step]["parts"]["uniform"] == pytest.approx(ranks[1][step]["parts"]["uniform"], rel=1e-6)
