"""The video encoder against a loop re-implementation written from the method's definition.

README "Method" / docs/method.md: per frame, CLIP's patch embedding, class token, position
embedding and `ln_pre`; a temporal position embedding added to every token of frame t; before each
CLIP block, divided temporal attention: for every clip and token position, pre-norm multi-head
self-attention across the T frames, added to the residual stream; then the CLIP block on each frame;
per-frame class token -> `ln_post` -> projection, averaged over frames, L2-normalised.

The references below loop over clips, frames and token positions and use only torch.nn and
open_clip's own blocks (`nn.MultiheadAttention`, open_clip's `ResidualAttentionBlock`), never the
project's attention code. The temporal parameters are given random values first: at initialisation
they are zero and the temporal path would be the identity, which a reference cannot tell apart.
Everything runs in float64, so the tolerances are tight.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from lss_cli.models.video import TemporalAttention, VideoEncoder

TOL = 1e-10  # float64: the loop and the batched path differ only in summation order


def randomise_temporal(enc: VideoEncoder, seed: int) -> None:
    """Every temporal parameter (embedding, norms, q/k/v, output projections) set to random values
    of the size of CLIP's own weights, so each one changes the output."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in enc.temporal_parameters():
            p.copy_(0.3 * torch.randn(p.shape, generator=g, dtype=p.dtype))


def mha_with(block: TemporalAttention, width: int):
    """torch's own `nn.MultiheadAttention`, run with the sub-layer's packed q/k/v [3C, C] and
    output [C, C] weights (bound functionally, so gradients reach the sub-layer's parameters)."""
    mha = nn.MultiheadAttention(width, block.heads, batch_first=True, dtype=block.qkv.weight.dtype).eval()
    weights = {"in_proj_weight": block.qkv.weight, "in_proj_bias": block.qkv.bias,
               "out_proj.weight": block.proj.weight, "out_proj.bias": block.proj.bias}
    return lambda h: functional_call(mha, weights, (h, h, h), {"need_weights": False})[0]


def temporal_attention_loop(block: TemporalAttention, x: torch.Tensor, frames: int) -> torch.Tensor:
    """x [B*T, L, C] (frame-major within a clip) -> x + MHA_T(norm(x)) at every (clip, token) position."""
    bt, seq, width = x.shape
    mha = mha_with(block, width)
    out = x.clone()
    for b in range(bt // frames):
        for tok in range(seq):
            rows = [b * frames + t for t in range(frames)]
            h = block.norm(x[rows, tok])  # [T, C]: one token position across the clip's frames
            attended = mha(h[None])[0]  # [T, C]
            for t, row in enumerate(rows):
                out[row, tok] = x[row, tok] + attended[t]
    return out


def linear_resample(emb: torch.Tensor, frames: int) -> torch.Tensor:
    """emb [T0, C] -> [T, C]: linear interpolation between the centres of T0 equal cells (align_corners=False)."""
    t0 = emb.shape[0]
    rows = []
    for t in range(frames):
        src = min(max((t + 0.5) * t0 / frames - 0.5, 0.0), t0 - 1.0)
        lo = int(src)
        hi = min(lo + 1, t0 - 1)
        rows.append((1 - (src - lo)) * emb[lo] + (src - lo) * emb[hi])
    return torch.stack(rows)


def frame_tokens(visual: nn.Module, image: torch.Tensor) -> torch.Tensor:
    """One frame [3, H, W] at the tower's native size -> tokens [L, C] after ln_pre."""
    patches = visual.conv1(image[None])[0].flatten(1).t()  # [gh*gw, C]
    x = torch.cat([visual.class_embedding[None], patches]) + visual.positional_embedding
    return visual.ln_pre(x)


def encoder_loop(enc: VideoEncoder, video: torch.Tensor) -> torch.Tensor:
    """video [B, T, 3, H, W] -> z [B, D] by the definition, one clip, frame and token at a time."""
    visual = enc.visual
    assert getattr(visual, "pool_type", "tok") == "tok" and not getattr(visual, "final_ln_after_pool", False)
    b, t = video.shape[:2]
    temb = linear_resample(enc.temporal_embedding, t)  # [T, C]
    out = []
    for clip in range(b):
        x = torch.stack([frame_tokens(visual, video[clip, f]) + temb[f] for f in range(t)])  # [T, L, C]
        for layer, block in enumerate(visual.transformer.resblocks):
            x = temporal_attention_loop(enc.temporal_blocks[layer], x, t)
            x = torch.stack([block(x[f][None])[0] for f in range(t)])  # open_clip's own block, per frame
        feats = [visual.ln_post(x[f])[0] @ visual.proj for f in range(t)]  # class token per frame: [D] each
        out.append(F.normalize(sum(feats) / t, dim=-1))
    return torch.stack(out)


def encoder_loop_without_temporal(enc: VideoEncoder, video: torch.Tensor) -> torch.Tensor:
    """CLIP frame by frame, averaged: what the encoder would be with its temporal path removed."""
    visual = enc.visual
    out = []
    for clip in range(video.shape[0]):
        feats = []
        for f in range(video.shape[1]):
            x = frame_tokens(visual, video[clip, f])[None]
            for block in visual.transformer.resblocks:
                x = block(x)
            feats.append(visual.ln_post(x[0])[0] @ visual.proj)
        out.append(F.normalize(sum(feats) / len(feats), dim=-1))
    return torch.stack(out)


@pytest.fixture
def encoder64(tiny_clip) -> VideoEncoder:
    """The tiny tower as a divided encoder of 4 frames, in float64, temporal parameters random."""
    enc = VideoEncoder(copy.deepcopy(tiny_clip.model.visual), temporal="divided", num_frames=4).double().eval()
    randomise_temporal(enc, seed=1)
    return enc


def test_temporal_attention_equals_per_token_mha_loop():
    """One divided-attention sub-layer with random (non-zero) weights: B=2 clips of T=3 frames."""
    torch.manual_seed(0)
    width, heads, frames = 32, 4, 3
    block = TemporalAttention(width, heads).double()
    with torch.no_grad():
        for p in block.parameters():
            p.copy_(0.5 * torch.randn_like(p))
    x = torch.randn(2 * frames, 5, width, dtype=torch.float64, requires_grad=True)  # [B*T, L, C]
    got = block(x, frames)
    want = temporal_attention_loop(block, x, frames)
    assert (want - x).abs().max() > 0.1  # the branch is live
    torch.testing.assert_close(got, want, rtol=0, atol=TOL)
    # gradients too: w.r.t. the input and every weight of the sub-layer
    w = torch.randn_like(got)
    grads = torch.autograd.grad((got * w).sum(), [x, *block.parameters()])
    grads_ref = torch.autograd.grad((want * w).sum(), [x, *block.parameters()])
    for g, r in zip(grads, grads_ref, strict=True):
        torch.testing.assert_close(g, r, rtol=0, atol=TOL)


def test_temporal_attention_mixes_frames_not_tokens_or_clips():
    """Changing frame 0 of token 2 of clip 0 moves only token 2 of clip 0 (all its frames)."""
    torch.manual_seed(1)
    block = TemporalAttention(16, 2).double()
    with torch.no_grad():
        block.proj.weight.normal_()
    x = torch.randn(2 * 3, 4, 16, dtype=torch.float64)
    y = x.clone()
    y[0, 2] += torch.randn(16, dtype=torch.float64)  # not a constant: the LayerNorm would remove it
    moved = (block(y, 3) - block(x, 3)).abs().amax(dim=-1) > 1e-9  # [B*T, L]
    expected = torch.zeros_like(moved)
    expected[0:3, 2] = True
    assert torch.equal(moved, expected)


@pytest.mark.parametrize("frames", [4, 3], ids=["T=num_frames", "T-interpolated"])
def test_encoder_equals_loop_reimplementation(encoder64, frames):
    """The whole divided encoder (2 blocks, 2 clips) against the per-clip/frame/token loop."""
    torch.manual_seed(2)
    video = torch.randn(2, frames, 3, 64, 64, dtype=torch.float64)
    with torch.no_grad():
        got = encoder64(video)  # [B, D]
        want = encoder_loop(encoder64, video)
        frame_average = encoder_loop_without_temporal(encoder64, video)
    assert (want - frame_average).abs().max() > 1e-2  # the temporal path really changes the output
    torch.testing.assert_close(got, want, rtol=0, atol=TOL)


def test_encoder_gradients_equal_loop_reimplementation(encoder64):
    """Gradients of a random projection of z w.r.t. every temporal parameter and the input."""
    torch.manual_seed(3)
    video = torch.randn(1, 4, 3, 64, 64, dtype=torch.float64, requires_grad=True)
    params = [video, *encoder64.temporal_parameters()]
    w = torch.randn(1, encoder64.output_dim, dtype=torch.float64)
    grads = torch.autograd.grad((encoder64(video) * w).sum(), params)
    grads_ref = torch.autograd.grad((encoder_loop(encoder64, video) * w).sum(), params)
    assert sum(float(g.abs().sum()) for g in grads_ref[1:]) > 0
    for g, r in zip(grads, grads_ref, strict=True):
        torch.testing.assert_close(g, r, rtol=0, atol=1e-9)
