"""The video encoder: an open_clip ViT image tower given temporal modelling (docs/method.md §1).

The tower is used as a library of pretrained pieces (patch conv, class/position embeddings,
`ln_pre`, residual blocks, `ln_post`, `proj`); the forward pass is our own so that

- every attention, spatial and temporal, goes through `F.scaled_dot_product_attention` (the
  pretrained `nn.MultiheadAttention` weights are read, its slow path is never called);
- `divided` mode can insert a temporal attention sub-layer before each block's spatial attention
  (TimeSformer / SVT "divided space-time attention");
- any input resolution works: the spatial position embedding is resampled on the patch grid.

At initialisation the temporal output projections and the temporal position embedding are zero,
so the encoder computes exactly CLIP applied frame by frame, then averaged (the invariant tested in
tests/test_video_encoder.py). open_clip itself is not imported here: the tower arrives as an object.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from lss_cli.errors import ConfigError

TEMPORAL_MODES = ("divided", "mean")
# Parameter names (suffixes) that are embeddings: no weight decay even when they are matrices.
_EMBEDDING_NAMES = ("positional_embedding", "class_embedding", "temporal_embedding")


def _sdpa_heads(qkv: torch.Tensor, heads: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """[N, L, 3C] packed projections -> q, k, v each [N, heads, L, C / heads]."""
    n, seq, three_c = qkv.shape
    head_dim = three_c // (3 * heads)
    qkv = qkv.view(n, seq, 3, heads, head_dim).permute(2, 0, 3, 1, 4)  # [3, N, h, L, d]
    return qkv[0], qkv[1], qkv[2]


def fused_attention(x: torch.Tensor, in_weight: torch.Tensor, in_bias: torch.Tensor | None,
                    out_weight: torch.Tensor, out_bias: torch.Tensor | None, heads: int) -> torch.Tensor:
    """Multi-head self-attention over dim 1 of `x` [N, L, C] with packed q/k/v weights [3C, C].

    Same maths as `nn.MultiheadAttention(batch_first=True)` without mask or dropout, but always
    through `scaled_dot_product_attention` (flash / memory-efficient kernels on GPU).
    """
    n, seq, width = x.shape
    q, k, v = _sdpa_heads(F.linear(x, in_weight, in_bias), heads)
    out = F.scaled_dot_product_attention(q, k, v)  # [N, h, L, d]
    out = out.transpose(1, 2).reshape(n, seq, width)
    return F.linear(out, out_weight, out_bias)


class TemporalAttention(nn.Module):
    """Pre-norm self-attention across frames, for each token position: x + proj(attn_T(norm(x))).

    `proj` is zero-initialised so the sub-layer starts as the identity. `norm` and `qkv` start as
    copies of the following spatial block's `ln_1` and attention input projection (TimeSformer's
    initialisation of its temporal attention from the image model), so the branch attends with
    pretrained features from the first update on.
    """

    def __init__(self, width: int, heads: int, norm: nn.Module | None = None,
                 in_weight: torch.Tensor | None = None, in_bias: torch.Tensor | None = None):
        super().__init__()
        self.heads = heads
        self.norm = copy.deepcopy(norm) if norm is not None else nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        with torch.no_grad():
            if in_weight is not None:
                self.qkv.weight.copy_(in_weight)
            if in_bias is not None:
                self.qkv.bias.copy_(in_bias)
            self.proj.weight.zero_()
            self.proj.bias.zero_()

    def forward(self, x: torch.Tensor, frames: int) -> torch.Tensor:
        """x: [B*T, L, C] (frame-major within a clip) -> same shape."""
        bt, seq, width = x.shape
        b = bt // frames
        h = self.norm(x).view(b, frames, seq, width).transpose(1, 2).reshape(b * seq, frames, width)
        h = fused_attention(h, self.qkv.weight, self.qkv.bias, self.proj.weight, self.proj.bias, self.heads)
        h = h.view(b, seq, frames, width).transpose(1, 2).reshape(bt, seq, width)  # back to [B*T, L, C]
        return x + h


def _check_tower(visual: Any) -> None:
    """Refuse towers whose forward we do not reproduce, rather than compute something else silently."""
    needed = ("conv1", "class_embedding", "positional_embedding", "ln_pre", "transformer", "ln_post")
    missing = [name for name in needed if not hasattr(visual, name)]
    if missing:
        raise ConfigError(f"the CLIP image tower {type(visual).__name__} is not an open_clip VisionTransformer "
                          f"(missing {', '.join(missing)})",
                          hint="use an open_clip ViT model (e.g. ViT-B-16, ViT-L-14, lss-tiny); ResNet and "
                               "timm towers are not supported")
    if getattr(visual, "attn_pool", None) is not None or getattr(visual, "pool_type", "tok") not in ("tok", "avg"):
        raise ConfigError("CLIP towers with attentional pooling (CoCa-style) are not supported",
                          hint="use a ViT model with class-token or average pooling")
    for i, block in enumerate(visual.transformer.resblocks):
        attn = getattr(block, "attn", None)
        if not isinstance(attn, nn.MultiheadAttention) or not attn._qkv_same_embed_dim \
                or attn.bias_k is not None or attn.dropout != 0.0 or not attn.batch_first:
            raise ConfigError(f"block {i} of the CLIP image tower uses a custom attention layer",
                              hint="only open_clip's default ResidualAttentionBlock (nn.MultiheadAttention) "
                                   "is supported")
    if not isinstance(visual.patch_dropout, nn.Identity):
        raise ConfigError("CLIP towers with patch dropout are not supported",
                          hint="dropping different patches per frame breaks attention across frames; "
                               "use a model config with patch_dropout 0")


class VideoEncoder(nn.Module):
    """open_clip ViT tower on videos [B, T, 3, H, W] -> L2-normalised embeddings [B, D].

    `temporal="divided"`: a zero-initialised temporal attention sub-layer before every block and a
    zero-initialised temporal position embedding [num_frames, width] (linearly interpolated for
    other T). `temporal="mean"`: frame-wise CLIP, no new parameters. Both average the per-frame
    pooled features over time. The tower is used (and trained) in place: pass a copy.
    """

    def __init__(self, visual: nn.Module, temporal: str = "divided", num_frames: int = 8,
                 grad_checkpointing: bool = False):
        super().__init__()
        if temporal not in TEMPORAL_MODES:
            raise ConfigError(f"unknown temporal mode {temporal!r}", hint=f"use one of {', '.join(TEMPORAL_MODES)}")
        if num_frames < 1:
            raise ConfigError(f"num_frames must be >= 1, got {num_frames}", hint="set model.num_frames")
        _check_tower(visual)
        self.visual = visual
        self.temporal = temporal
        self.num_frames = num_frames
        self.grad_checkpointing = grad_checkpointing
        self.width = int(visual.class_embedding.shape[-1])
        self.patch_size = tuple(int(p) for p in visual.conv1.kernel_size)
        self.native_grid = tuple(int(g) for g in visual.grid_size)
        self.pool_type = getattr(visual, "pool_type", "tok")
        self.final_ln_after_pool = bool(getattr(visual, "final_ln_after_pool", False))
        blocks = visual.transformer.resblocks
        if temporal == "divided":
            self.temporal_embedding = nn.Parameter(torch.zeros(num_frames, self.width))  # [T0, C]
            self.temporal_blocks = nn.ModuleList(
                TemporalAttention(self.width, b.attn.num_heads, b.ln_1, b.attn.in_proj_weight, b.attn.in_proj_bias)
                for b in blocks)
        else:
            self.temporal_embedding = None
            self.temporal_blocks = None

    # ---- embeddings ---------------------------------------------------------------------------

    @property
    def output_dim(self) -> int:
        proj = self.visual.proj
        return int(proj.shape[1]) if proj is not None else self.width

    def _position_embedding(self, grid: tuple[int, int]) -> torch.Tensor:
        """Spatial position embedding [1 + gh*gw, C] for a patch grid; class token kept as is.

        Resampled with open_clip's own `resize_pos_embed` interpolation (bicubic, antialiased) so a
        tower run at another resolution matches open_clip's. It is recomputed on every call rather
        than cached: the embedding is trained, so a cached copy would go stale and cut the gradient;
        the resampling is one tiny kernel, and without a cache there is nothing for torch.compile to
        guard on beyond the input shape.
        """
        pos = self.visual.positional_embedding  # [1 + n_native, C]
        if grid == self.native_grid:
            return pos
        gh, gw = self.native_grid
        with torch.autocast(pos.device.type, enabled=False):  # resample in float32
            patches = pos[1:].float().t().reshape(1, -1, gh, gw)  # [1, C, gh, gw]
            patches = F.interpolate(patches, size=grid, mode="bicubic", antialias=True, align_corners=False)
        patches = patches.reshape(-1, grid[0] * grid[1]).t().to(pos.dtype)  # [gh'*gw', C]
        return torch.cat([pos[:1], patches], dim=0)

    def _temporal_embedding(self, frames: int) -> torch.Tensor:
        """Temporal position embedding [T, C], linearly interpolated when T != num_frames."""
        emb = self.temporal_embedding
        if frames == self.num_frames:
            return emb
        resized = F.interpolate(emb.t().unsqueeze(0), size=frames, mode="linear", align_corners=False)
        return resized[0].t()

    def _embed(self, frames: torch.Tensor, clip_len: int) -> torch.Tensor:
        """frames [B*T, 3, H, W] -> tokens [B*T, 1 + gh*gw, C] after ln_pre (+ temporal embedding)."""
        v = self.visual
        if frames.shape[-2] % self.patch_size[0] or frames.shape[-1] % self.patch_size[1]:
            raise ConfigError(f"input frames of {frames.shape[-2]}x{frames.shape[-1]} px are not a whole number "
                              f"of {self.patch_size[0]}x{self.patch_size[1]} patches",
                              hint="choose view sizes divisible by the model's patch size")
        x = v.conv1(frames)  # [B*T, C, gh, gw]
        grid = (x.shape[-2], x.shape[-1])
        x = x.flatten(2).transpose(1, 2)  # [B*T, gh*gw, C]
        cls = v.class_embedding.to(x.dtype).view(1, 1, -1).expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1) + self._position_embedding(grid).to(x.dtype)
        x = v.ln_pre(x)
        if self.temporal_blocks is not None:
            # Added to every token of frame t (class token included), after ln_pre so a zero
            # embedding leaves CLIP's input untouched; it then rides the residual stream.
            t_emb = self._temporal_embedding(clip_len).to(x.dtype)  # [T, C]
            x = (x.view(-1, clip_len, x.shape[1], x.shape[2]) + t_emb[None, :, None, :]).flatten(0, 1)
        return x

    # ---- blocks ------------------------------------------------------------------------------

    @staticmethod
    def _spatial_block(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """open_clip ResidualAttentionBlock.forward (no mask: vision towers have none) with fused attention."""
        attn = block.attn
        h = fused_attention(block.ln_1(x), attn.in_proj_weight, attn.in_proj_bias,
                            attn.out_proj.weight, attn.out_proj.bias, attn.num_heads)
        x = x + block.ls_1(h)
        return x + block.ls_2(block.mlp(block.ln_2(x)))

    def _layer(self, x: torch.Tensor, index: int, clip_len: int) -> torch.Tensor:
        if self.temporal_blocks is not None:
            x = self.temporal_blocks[index](x, clip_len)
        return self._spatial_block(self.visual.transformer.resblocks[index], x)

    def _pool(self, x: torch.Tensor) -> torch.Tensor:
        """Tokens [N, L, C] -> pooled, ln_post-ed features [N, C] (open_clip's `_pool` without attn pool)."""
        if self.final_ln_after_pool:
            pooled = x[:, 1:].mean(dim=1) if self.pool_type == "avg" else x[:, 0]
            return self.visual.ln_post(pooled)
        x = self.visual.ln_post(x)
        return x[:, 1:].mean(dim=1) if self.pool_type == "avg" else x[:, 0]

    # ---- public API --------------------------------------------------------------------------

    def encode(self, video: torch.Tensor, proj: bool = True, normalize: bool = True) -> torch.Tensor:
        """video [B, T, 3, H, W] -> features [B, D] (proj) or [B, width] (pre-projection).

        Per-frame pooled token -> ln_post -> mean over frames -> (proj) -> (L2 normalise). The
        projection is linear, so projecting the mean equals the mean of projected frames.
        """
        b, t = video.shape[0], video.shape[1]
        x = self._embed(video.flatten(0, 1), t)  # [B*T, L, C]
        for i in range(len(self.visual.transformer.resblocks)):
            if self.grad_checkpointing and torch.is_grad_enabled():
                x = checkpoint(self._layer, x, i, t, use_reentrant=False)
            else:
                x = self._layer(x, i, t)
        feats = self._pool(x).view(b, t, -1).mean(dim=1)  # [B, C]
        if proj and self.visual.proj is not None:
            feats = feats @ self.visual.proj.to(feats.dtype)  # [B, D]
        return F.normalize(feats, dim=-1) if normalize else feats

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        """video [B, T, 3, H, W] (normalised pixels) -> z [B, D], L2-normalised."""
        return self.encode(video, proj=True, normalize=True)

    def temporal_parameters(self) -> Iterator[nn.Parameter]:
        """The parameters new to the video model (their own learning rate)."""
        for name, p in self.named_parameters():
            if not name.startswith("visual."):
                yield p

    def pretrained_parameters(self) -> Iterator[nn.Parameter]:
        """The parameters of the CLIP image tower."""
        return self.visual.parameters()

    def param_groups(self, lr: float, temporal_lr: float, weight_decay: float) -> list[dict[str, Any]]:
        """AdamW parameter groups: {pretrained, temporal} x {decay, no_decay}; empty groups dropped.

        Extra keys for the training loop's schedules: `group` ("pretrained" | "temporal": which lr
        schedule applies) and `apply_weight_decay` (False: the weight-decay schedule is not applied).
        """
        groups = []
        for group, peak in (("pretrained", lr), ("temporal", temporal_lr)):
            named = [(n, p) for n, p in self.named_parameters()
                     if p.requires_grad and n.startswith("visual.") == (group == "pretrained")]
            decay, no_decay = split_decay(named)
            for params, wd in ((decay, True), (no_decay, False)):
                if params:
                    groups.append({"params": params, "group": group, "lr": peak,
                                   "weight_decay": weight_decay if wd else 0.0, "apply_weight_decay": wd})
        return groups


def split_decay(named_params: list[tuple[str, nn.Parameter]]) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(decay, no_decay): biases, norm/LayerScale vectors (all 1-D) and embeddings get no weight decay."""
    decay, no_decay = [], []
    for name, p in named_params:
        if p.ndim <= 1 or name.rsplit(".", 1)[-1] in _EMBEDDING_NAMES:
            no_decay.append(p)
        else:
            decay.append(p)
    return decay, no_decay


def build_video_encoder(clip: Any, cfg: Any) -> VideoEncoder:
    """A VideoEncoder on a float32 copy of `clip.model.visual` (the CLIP object is not modified).

    `clip`: lss_cli.models.clip.Clip; `cfg`: lss_cli.config.ModelConfig (temporal, num_frames,
    grad_checkpointing).
    """
    visual = copy.deepcopy(clip.model.visual).float()  # fp32 master weights; autocast does the rest
    visual.requires_grad_(True)
    return VideoEncoder(visual, temporal=cfg.temporal, num_frames=cfg.num_frames,
                        grad_checkpointing=cfg.grad_checkpointing)

