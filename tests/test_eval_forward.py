"""The eval forward: fixed batch shape (the last batch is padded, not recompiled), same features."""

from __future__ import annotations

import pytest
import torch
from torch._dynamo.testing import CompileCounterWithBackend

from lss_cli.config import ModelConfig
from lss_cli.eval.forward import EvalForward
from lss_cli.models.video import build_video_encoder


@pytest.fixture
def encoder(tiny_clip):
    enc = build_video_encoder(tiny_clip, ModelConfig(name="lss-tiny", temporal="divided", num_frames=4)).eval()
    with torch.no_grad():  # trained-like temporal weights: at zero init they are the identity
        for p in enc.temporal_parameters():
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(1)) * 0.05)
    return enc


def _video(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 4, 3, 64, 64, generator=torch.Generator().manual_seed(seed))  # [N, T, 3, S, S]


@pytest.mark.parametrize("kind", ["proj", "pre-proj"])
def test_padded_batch_gives_each_clip_its_own_features(encoder, kind):
    video = _video(3)
    with torch.inference_mode():
        got = EvalForward(encoder, kind, batch=5)(video)
        alone = torch.cat([encoder.encode(video[i:i + 1], proj=kind == "proj", normalize=kind == "proj")
                           for i in range(3)])
    assert got.shape == alone.shape
    torch.testing.assert_close(got, alone, atol=1e-5, rtol=1e-5)
    if kind == "proj":
        torch.testing.assert_close(got.norm(dim=-1), torch.ones(3))


def test_compiled_forward_compiles_once_for_a_short_last_batch(encoder):
    torch._dynamo.reset()
    counter = CompileCounterWithBackend("aot_eager")
    forward = EvalForward(encoder, "proj", batch=4, compile=True, backend=counter)
    with torch.inference_mode():
        full, last = forward(_video(4, seed=1)), forward(_video(2, seed=2))
        eager = encoder.encode(_video(2, seed=2))
    torch._dynamo.reset()
    assert counter.frame_count == 1  # one graph for both batch sizes
    assert full.shape == (4, encoder.encode(_video(1)).shape[-1]) and last.shape[0] == 2
    torch.testing.assert_close(last, eager, atol=1e-5, rtol=1e-5)


def test_rejects_more_clips_than_the_batch_and_unknown_kinds(encoder):
    with pytest.raises(ValueError, match="more than the fixed batch"):
        EvalForward(encoder, "proj", batch=2)(_video(3))
    with pytest.raises(ValueError, match="feature kind"):
        EvalForward(encoder, "logits", batch=2)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_features_reach_the_host_without_a_sync_until_read():
    from lss_cli.eval.features import _rows, _to_host

    z = torch.randn(3, 2, 8, device="cuda")  # [B, V, D]
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        host, done = _to_host(z)  # queued copy into pinned memory: no sync
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert host.is_pinned()
    batch = {"index": torch.tensor([4, 5, 6]), "ok": torch.tensor([True, False, True]), "error": ["", "bad", ""]}
    rows = dict(_rows(batch, host, done))
    torch.testing.assert_close(rows[4][0], z[0].cpu())
    assert not rows[5][1] and rows[5][2] == "bad" and not rows[5][0].any()
