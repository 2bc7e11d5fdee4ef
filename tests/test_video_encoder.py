"""The video encoder (docs/method.md §1) against open_clip itself, the independent reference.

The central invariant: at initialisation the `divided` encoder is CLIP applied frame by frame and
averaged, at the native resolution and, with resampled position embeddings, at other resolutions.
"""

from __future__ import annotations

import copy

import open_clip
import pytest
import torch
import torch.nn.functional as F
from open_clip.model import resize_pos_embed

from lss_cli.config import ModelConfig
from lss_cli.errors import ConfigError
from lss_cli.models.clip import load_clip, save_weights
from lss_cli.models.video import VideoEncoder, build_video_encoder

ATOL = 1e-5


@pytest.fixture(scope="module")
def vitb16():
    return load_clip("ViT-B-16", None, seed=0)


def clip_frame_average(model, video: torch.Tensor) -> torch.Tensor:
    """normalize(mean_t open_clip encode_image(frame_t)) for video [B, T, 3, H, W]."""
    b, t = video.shape[:2]
    with torch.no_grad():
        frames = model.encode_image(video.flatten(0, 1))  # [B*T, D]
    return F.normalize(frames.view(b, t, -1).mean(dim=1), dim=-1)


def clip_at_resolution(clip, size: int):
    """open_clip's own model at another input size, carrying `clip`'s weights (open_clip resizes)."""
    other = load_clip(clip.name, None, seed=1, image_size=size)
    state = clip.model.state_dict()
    resize_pos_embed(state, other.model)
    other.model.load_state_dict(state)
    return other.model


def encoder(clip, temporal="divided", num_frames=8, **kw) -> VideoEncoder:
    return VideoEncoder(copy.deepcopy(clip.model.visual), temporal=temporal, num_frames=num_frames, **kw)


def perturb_temporal(enc: VideoEncoder, seed: int = 0) -> None:
    """Give the zero-initialised temporal parameters non-zero values."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in enc.temporal_parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))


@pytest.mark.parametrize("temporal", ["divided", "mean"])
def test_init_equals_clip_frame_average_tiny(tiny_clip, temporal):
    video = torch.randn(2, 3, 3, 64, 64)
    enc = encoder(tiny_clip, temporal, num_frames=3)
    with torch.no_grad():
        z = enc(video)
    assert z.shape == (2, 64)
    torch.testing.assert_close(z, clip_frame_average(tiny_clip.model, video), atol=ATOL, rtol=0)
    assert torch.allclose(z.norm(dim=-1), torch.ones(2))


def test_init_equals_clip_frame_average_vitb16(vitb16):
    video = torch.randn(1, 2, 3, 224, 224)
    enc = encoder(vitb16, "divided", num_frames=8)  # T=2 != 8: interpolated (zero) temporal embedding
    with torch.no_grad():
        z = enc(video)
    assert z.shape == (1, 512)
    torch.testing.assert_close(z, clip_frame_average(vitb16.model, video), atol=ATOL, rtol=0)


@pytest.mark.parametrize("size", [32, 96])
def test_init_matches_open_clip_at_other_resolutions_tiny(tiny_clip, size):
    video = torch.randn(2, 2, 3, size, size)
    with torch.no_grad():
        z = encoder(tiny_clip)(video)
    torch.testing.assert_close(z, clip_frame_average(clip_at_resolution(tiny_clip, size), video),
                               atol=ATOL, rtol=0)


def test_init_matches_open_clip_at_96px_vitb16(vitb16):
    video = torch.randn(1, 2, 3, 96, 96)
    with torch.no_grad():
        z = encoder(vitb16)(video)
    torch.testing.assert_close(z, clip_frame_average(clip_at_resolution(vitb16, 96), video), atol=ATOL, rtol=0)


def test_load_clip_image_size_resizes_weights_like_the_encoder(tmp_path, tiny_clip):
    """load_clip(..., image_size=) goes through open_clip's own checkpoint loading and resizing."""
    path = tmp_path / "tiny.safetensors"
    save_weights(tiny_clip.model, path)
    small = load_clip("lss-tiny", str(path), image_size=32)
    assert small.model.visual.positional_embedding.shape == (1 + 4 * 4, 64)
    video = torch.randn(1, 2, 3, 32, 32)
    with torch.no_grad():
        z = encoder(tiny_clip)(video)
    torch.testing.assert_close(z, clip_frame_average(small.model, video), atol=ATOL, rtol=0)


def test_pre_projection_features(tiny_clip):
    """encode(proj=False) is the frame mean of ln_post(CLS), open_clip's pooled output before proj."""
    video = torch.randn(2, 3, 3, 64, 64)
    visual = copy.deepcopy(tiny_clip.model.visual)
    visual.proj = None
    with torch.no_grad():
        ref = visual(video.flatten(0, 1)).view(2, 3, -1).mean(dim=1)
        feats = encoder(tiny_clip).encode(video, proj=False, normalize=False)
        projected = encoder(tiny_clip).encode(video, proj=True, normalize=False)
    torch.testing.assert_close(feats, ref, atol=ATOL, rtol=0)
    torch.testing.assert_close(projected, ref @ tiny_clip.model.visual.proj, atol=ATOL, rtol=0)


def test_temporal_path_is_live(tiny_clip):
    """Once the zero-initialised parameters move, the output changes and frame order matters."""
    video = torch.randn(2, 4, 3, 64, 64)
    reversed_video = video.flip(1)
    base = clip_frame_average(tiny_clip.model, video)
    enc = encoder(tiny_clip, num_frames=4)
    perturb_temporal(enc)
    with torch.no_grad():
        z, z_rev = enc(video), enc(reversed_video)
        mean_enc = encoder(tiny_clip, "mean")
        m, m_rev = mean_enc(video), mean_enc(reversed_video)
    assert (z - base).abs().max() > 1e-4
    assert (z - z_rev).abs().max() > 1e-4  # the temporal embedding makes order visible
    torch.testing.assert_close(m, m_rev, atol=ATOL, rtol=0)  # mean pooling cannot see order


def test_temporal_embedding_interpolation(tiny_clip):
    enc = encoder(tiny_clip, num_frames=2)
    with torch.no_grad():
        enc.temporal_embedding.copy_(torch.stack([torch.zeros(64), torch.ones(64)]))
    assert enc._temporal_embedding(2) is enc.temporal_embedding
    # linear, align_corners=False: source positions -0.25, 0.25, 0.75, 1.25 (edges clamp)
    expected = torch.tensor([0.0, 0.25, 0.75, 1.0])[:, None].expand(4, 64)
    torch.testing.assert_close(enc._temporal_embedding(4), expected)
    # other clip lengths run, and still equal CLIP at init
    fresh = encoder(tiny_clip, num_frames=4)
    for t in (1, 3, 6):
        video = torch.randn(1, t, 3, 64, 64)
        with torch.no_grad():
            torch.testing.assert_close(fresh(video), clip_frame_average(tiny_clip.model, video), atol=ATOL, rtol=0)


def _grads(enc, video, weights):
    enc.zero_grad()
    z = enc(video)
    (z * weights).sum().backward()
    return z.detach(), {n: p.grad.clone() for n, p in enc.named_parameters()}


def test_grad_checkpointing_same_outputs_and_gradients(tiny_clip):
    video, weights = torch.randn(2, 3, 3, 64, 64), torch.randn(2, 64)
    plain = encoder(tiny_clip, num_frames=3)
    perturb_temporal(plain)
    ckpt = copy.deepcopy(plain)
    ckpt.grad_checkpointing = True
    z1, g1 = _grads(plain, video, weights)
    z2, g2 = _grads(ckpt, video, weights)
    torch.testing.assert_close(z1, z2, atol=0, rtol=0)
    assert g1.keys() == g2.keys()
    for name in g1:
        torch.testing.assert_close(g1[name], g2[name], atol=1e-7, rtol=0, msg=name)
    assert g1["temporal_embedding"].abs().sum() > 0 and g1["visual.conv1.weight"].abs().sum() > 0


def test_param_groups_cover_everything_once(tiny_clip):
    enc = encoder(tiny_clip)
    groups = enc.param_groups(lr=1e-5, temporal_lr=1e-4, weight_decay=0.04)
    ids = [id(p) for g in groups for p in g["params"]]
    assert sorted(ids) == sorted(id(p) for p in enc.parameters())
    names = {id(p): n for n, p in enc.named_parameters()}
    by_key = {(g["group"], g["apply_weight_decay"]): {names[id(p)] for p in g["params"]} for g in groups}
    assert set(by_key) == {("pretrained", True), ("pretrained", False), ("temporal", True), ("temporal", False)}
    no_decay = by_key[("pretrained", False)] | by_key[("temporal", False)]
    decay = by_key[("pretrained", True)] | by_key[("temporal", True)]
    for name in ("visual.positional_embedding", "visual.class_embedding", "temporal_embedding",
                 "visual.ln_pre.weight", "visual.transformer.resblocks.0.attn.in_proj_bias",
                 "temporal_blocks.0.norm.weight", "temporal_blocks.0.proj.bias"):
        assert name in no_decay, name
    for name in ("visual.conv1.weight", "visual.proj", "visual.transformer.resblocks.1.mlp.c_fc.weight",
                 "temporal_blocks.0.qkv.weight", "temporal_blocks.1.proj.weight"):
        assert name in decay, name
    assert all(n.startswith("visual.") for n in by_key[("pretrained", True)] | by_key[("pretrained", False)])
    for g in groups:
        assert g["lr"] == (1e-4 if g["group"] == "temporal" else 1e-5)
        assert g["weight_decay"] == (0.04 if g["apply_weight_decay"] else 0.0)
    torch.optim.AdamW(groups)  # the extra keys are accepted
    assert list(encoder(tiny_clip, "mean").temporal_parameters()) == []


def test_build_video_encoder_copies_the_tower(tiny_clip):
    before = {k: v.clone() for k, v in tiny_clip.model.state_dict().items()}
    enc = build_video_encoder(tiny_clip, ModelConfig(name="lss-tiny", temporal="divided", num_frames=2))
    assert enc.visual is not tiny_clip.model.visual and enc.num_frames == 2 and enc.temporal == "divided"
    with torch.no_grad():
        for p in enc.parameters():
            p.add_(1.0)
    after = tiny_clip.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_unsupported_towers_are_refused(tiny_clip):
    with pytest.raises(ConfigError, match="not an open_clip VisionTransformer"):
        VideoEncoder(torch.nn.Linear(2, 2))
    with pytest.raises(ConfigError, match="unknown temporal mode"):
        encoder(tiny_clip, "joint")
    with pytest.raises(ConfigError, match="whole number of 8x8 patches"):
        encoder(tiny_clip)(torch.randn(1, 2, 3, 60, 64))
    dropped = open_clip.create_model("lss-tiny", force_patch_dropout=0.5)
    with pytest.raises(ConfigError, match="patch dropout"):
        VideoEncoder(dropped.visual)


def test_compiles_fullgraph(tiny_clip):
    """torch.compile(fullgraph=True) traces forward and backward without a graph break.

    The `aot_eager` backend runs Dynamo and AOTAutograd (where graph breaks and untraceable code
    show up) but skips Inductor's C++ code generation, which costs ~40 s cold on 2 CPU cores.
    """
    enc = encoder(tiny_clip, num_frames=4)
    perturb_temporal(enc)
    compiled = torch.compile(enc, fullgraph=True, dynamic=False, backend="aot_eager")
    for size, frames in ((32, 2), (64, 4)):  # resampled and native position embeddings, T != / == num_frames
        enc.zero_grad()
        video = torch.randn(2, frames, 3, size, size)
        z = compiled(video)
        z.sum().backward()
        with torch.no_grad():
            torch.testing.assert_close(z.detach(), enc(video), atol=1e-6, rtol=0)
        assert enc.temporal_embedding.grad is not None and enc.visual.positional_embedding.grad is not None


def test_bf16_autocast_forward_and_backward(tiny_clip):
    """Under bf16 autocast the encoder runs, stays close to fp32, and fp32 master weights get grads."""
    enc = encoder(tiny_clip, num_frames=2)
    perturb_temporal(enc)
    video = torch.randn(2, 2, 3, 32, 32)
    with torch.no_grad():
        ref = enc(video)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        z = enc(video)
    assert z.dtype == torch.bfloat16
    torch.testing.assert_close(z.float(), ref, atol=3e-2, rtol=0)
    z.float().sum().backward()
    assert enc.temporal_embedding.grad.dtype == torch.float32


@pytest.mark.gpu
@pytest.mark.parametrize("size", [224, 96])
def test_cuda_invariant_and_compiled_bf16_step(vitb16, size):
    """On a GPU: the init invariant with the CUDA attention kernels, then a compiled bf16 fwd/bwd."""
    dev = torch.device("cuda")
    video = torch.randn(2, 4, 3, size, size, device=dev)
    ref_model = (copy.deepcopy(vitb16.model) if size == 224 else clip_at_resolution(vitb16, size)).to(dev)
    enc = encoder(vitb16, num_frames=4).to(dev)
    with torch.no_grad():
        z = enc(video)
    # conv1 may use TF32 in cuDNN in both models; the two paths share it, so 1e-4 is ample
    torch.testing.assert_close(z, clip_frame_average(ref_model, video), atol=1e-4, rtol=0)
    compiled = torch.compile(enc, fullgraph=True, dynamic=False)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = compiled(video)
    out.float().sum().backward()
    assert torch.isfinite(out).all() and enc.temporal_blocks[0].proj.weight.grad is not None
