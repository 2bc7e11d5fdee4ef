"""GPU performance, CPU side: the pieces of the training step compile as single graphs (fullgraph=True).

`backend="aot_eager"` traces with Dynamo and AOT autograd exactly as Inductor would (a graph break
or an untraceable op fails here the same way) but skips code generation, so it runs in seconds.
Each compiled piece must equal its eager self, and must not recompile when a per-step value
(teacher temperature, EMA momentum) changes, as long as that value is a 0-dim tensor.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch._dynamo.testing import CompileCounterWithBackend

from lss_cli.config import ModelConfig
from lss_cli.models.video import build_video_encoder
from lss_cli.train.ema import ema_update
from lss_cli.train.losses import LSSLoss


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _compile(fn, counter):
    return torch.compile(fn, backend=counter, fullgraph=True, dynamic=False)


@pytest.mark.parametrize("ckpt", [False, True])
def test_encoder_forward_backward_is_one_graph_per_view_size(tiny_clip, ckpt):
    """`divided` (a superset of `mean`'s graph), with and without activation checkpointing."""
    torch.manual_seed(0)
    eager = build_video_encoder(tiny_clip, ModelConfig(name="lss-tiny", temporal="divided", num_frames=3,
                                                       grad_checkpointing=ckpt))
    with torch.no_grad():  # leave the identity start: the temporal branch must really compute
        for p in eager.temporal_parameters():
            p.add_(0.05 * torch.randn_like(p))
    model = copy.deepcopy(eager)
    counter = CompileCounterWithBackend("aot_eager")
    compiled = _compile(model, counter)
    global_views, local_views = torch.randn(2, 3, 3, 64, 64), torch.randn(4, 2, 3, 32, 32)  # 64 px native, 32 px local

    (compiled(global_views).square().sum() + compiled(local_views).square().sum()).backward()
    (eager(global_views).square().sum() + eager(local_views).square().sum()).backward()

    assert counter.frame_count == 2  # one graph per input shape, no graph breaks (fullgraph would raise)
    for (name, p), q in zip(eager.named_parameters(), model.parameters(), strict=True):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-4, atol=1e-6, msg=name)
    with torch.no_grad():
        torch.testing.assert_close(compiled(global_views), eager(global_views), rtol=1e-5, atol=1e-6)


def _loss_inputs(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    bank = {"category": F.normalize(torch.randn(6, 16, generator=g), dim=-1),
            "description": F.normalize(torch.randn(9, 16, generator=g), dim=-1),
            "description_owner": torch.tensor([0, 0, 1, 2, 3, 3, 4, -1, -1])}  # category 5: an extra word
    student_z = F.normalize(torch.randn(4, 3, 16, generator=g), dim=-1)  # [V_s, B, D]
    teacher_z = F.normalize(torch.randn(2, 3, 16, generator=g), dim=-1)  # [V_g, B, D]
    return bank, student_z, teacher_z


def test_loss_is_one_graph_and_tensor_temperatures_do_not_recompile():
    bank, student_z, teacher_z = _loss_inputs()
    eager = LSSLoss(bank["category"], bank["description"], bank["description_owner"])
    model = copy.deepcopy(eager)
    counter = CompileCounterWithBackend("aot_eager")
    compiled = _compile(model, counter)
    for temp in (0.004, 0.005, 0.007):  # a teacher-temperature warm-up changes it every step
        s_eager = student_z.clone().requires_grad_(True)
        s_comp = student_z.clone().requires_grad_(True)
        loss, parts = eager(s_eager, teacher_z, 0.01, temp)
        loss_c, parts_c = compiled(s_comp, teacher_z, torch.tensor(0.01), torch.tensor(temp))
        loss.backward()
        loss_c.backward()
        torch.testing.assert_close(loss_c, loss, rtol=1e-5, atol=1e-6)
        assert parts_c.keys() == parts.keys()
        for k in parts:
            torch.testing.assert_close(parts_c[k], parts[k], rtol=1e-5, atol=1e-6, msg=k)
        torch.testing.assert_close(s_comp.grad, s_eager.grad, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(model.center_category, eager.center_category)  # buffer mutation kept
    torch.testing.assert_close(model.center_description, eager.center_description)
    assert counter.frame_count == 1


def test_step_scope_loss_with_step_stats_is_one_graph():
    """prior_scope=step as the training step calls it: the step's statistics come in (`StepStats`),
    the centre is left alone; one graph across temperatures and steps."""
    bank, student_z, teacher_z = _loss_inputs()
    eager = LSSLoss(bank["category"], bank["description"], bank["description_owner"], prior_scope="step")
    model = copy.deepcopy(eager)
    counter = CompileCounterWithBackend("aot_eager")
    compiled = _compile(model, counter)
    for temp in (0.004, 0.005):
        stats = eager.step_stats(eager.step_sums(teacher_z, student_z, 0.01) * 2, micro_batches=2)  # as if 2 alike
        s_eager = student_z.clone().requires_grad_(True)
        s_comp = student_z.clone().requires_grad_(True)
        loss, parts = eager(s_eager, teacher_z, 0.01, temp, update_center=False, step=stats)
        loss_c, parts_c = compiled(s_comp, teacher_z, torch.tensor(0.01), torch.tensor(temp), update_center=False,
                                   step=stats)
        loss.backward()
        loss_c.backward()
        torch.testing.assert_close(loss_c, loss, rtol=1e-5, atol=1e-6)
        for k in parts:
            torch.testing.assert_close(parts_c[k], parts[k], rtol=1e-5, atol=1e-6, msg=k)
        torch.testing.assert_close(s_comp.grad, s_eager.grad, rtol=1e-5, atol=1e-7)
        eager.update_center(stats.teacher_mean)
        model.update_center(stats.teacher_mean)
    assert counter.frame_count == 1


def test_python_float_temperatures_recompile():
    """Why the step should pass temperatures as tensors: each new float is a new graph."""
    bank, student_z, teacher_z = _loss_inputs()
    counter = CompileCounterWithBackend("aot_eager")
    compiled = _compile(LSSLoss(bank["category"], bank["description"], bank["description_owner"]), counter)
    for temp in (0.004, 0.005):
        compiled(student_z, teacher_z, 0.01, temp)
    assert counter.frame_count == 2


def test_ema_update_and_grad_clipping_are_one_graph(tiny_clip):
    student = build_video_encoder(tiny_clip, ModelConfig(name="lss-tiny", num_frames=2))
    teacher = copy.deepcopy(student)
    with torch.no_grad():
        for p in student.parameters():
            p.add_(torch.randn_like(p))
            p.grad = torch.randn_like(p)
    expected_teacher = copy.deepcopy(teacher)
    expected_student = copy.deepcopy(student)
    for p, q in zip(student.parameters(), expected_student.parameters(), strict=True):
        q.grad = p.grad.clone()  # a Parameter's deepcopy drops .grad
    counter = CompileCounterWithBackend("aot_eager")
    ema = _compile(ema_update, counter)
    for m in (0.996, 0.997):  # the momentum schedule moves every step
        ema(teacher, student, torch.tensor(m))
        ema_update(expected_teacher, student, m)
    for p, q in zip(teacher.parameters(), expected_teacher.parameters(), strict=True):
        torch.testing.assert_close(p, q)  # float32 (1 - m) from a tensor vs from a Python float: rounding
    assert counter.frame_count == 1

    clip = _compile(torch.nn.utils.clip_grad_norm_, counter)
    norm = clip(list(student.parameters()), 1.0)
    expected_norm = torch.nn.utils.clip_grad_norm_(list(expected_student.parameters()), 1.0)
    assert expected_norm > 1.0  # the clipping really scaled the gradients
    torch.testing.assert_close(norm, expected_norm)
    for p, q in zip(student.parameters(), expected_student.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad)
    assert counter.frame_count == 2
