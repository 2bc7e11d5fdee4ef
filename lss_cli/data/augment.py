"""Pixel transforms: cheap uint8 crop/resize in the workers, the rest on the training device in batch.

Where the work happens, and why:
- Training, in the DataLoader worker (`crop_resize`): each view's random-resized-crop box is cut
  from the decoded uint8 frames and resized to the view size (224 / 96) with antialiased bicubic
  interpolation on uint8 (torch's vectorised uint8 kernel: ~0.1 ms per 224^2 frame, ~0.04 ms per
  96^2 frame on one core; 5-7 ms for a 2 + 8 view sample with the cut and copies, measured by
  benchmarks/data_throughput.py). Videos of any resolution then reach the batch at one fixed
  shape, and only the final pixels cross the process boundary and the PCIe bus (4.2 MB per
  2x8x224^2 + 8x8x96^2 sample, instead of ~20-55 MB for the union of full frames a device-side
  crop would need).
- Training, on the device (`make_train_views`): horizontal flip, colour jitter, grayscale and
  normalisation, batched over all views. One parameter draw per view, applied to all its frames.
- Evaluation, in the worker (`resize_short_side`, `spatial_crops`): CLIP's eval preprocessing per
  frame (short side to the model size, bicubic with antialias, centre crop), or three crops along
  the long side; `make_eval_views` only converts and normalises on the device.

Colour jitter follows torchvision's `ColorJitter` definitions (brightness, contrast, saturation as
blends, hue as a rotation of the HSV hue, clamping to [0, 1] after each) with strengths
`views.color_jitter` (DINO: 0.4, 0.4, 0.2, 0.1), but in a fixed order (brightness, contrast,
saturation, hue) rather than a random one, so the batch needs no per-view branching; the contrast
reference is the mean grey level of the whole view (all its frames), so one view stays
consistent over time. Grayscale uses the ITU-R 601 luma weights.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from lss_cli.config import ViewsConfig

_LUMA = (0.299, 0.587, 0.114)


# --------------------------------------------------------------------------------------------
# uint8, worker side
# --------------------------------------------------------------------------------------------


def crop_resize(frames: torch.Tensor, box: tuple[int, int, int, int], size: int,
                rows: torch.Tensor | None = None, *, out: torch.Tensor | None = None) -> torch.Tensor:
    """uint8 `[N, 3, H, W]` -> the box `(top, left, h, w)` of frames `rows` (default: all) resized
    to uint8 `[len(rows), 3, size, size]`, contiguous; written into `out` when given (e.g. the
    sample's view `[T, 3, size, size]` of its batch tensor: one copy fewer than returning and stacking).

    Cropping before selecting rows copies only the box. Decoded frames are NCHW views of NHWC
    memory, so the rows are gathered with `index_select` on the NHWC view: one contiguous copy of
    the box that is already the channels-last layout the resize reads (plain `crop[rows]` on the
    strided crop took ~0.6 ms per 224 view, over 10x more; the pixels are the same)."""
    top, left, h, w = box
    crop = frames[:, :, top:top + h, left:left + w]
    if rows is not None:
        crop = crop.permute(0, 2, 3, 1).index_select(0, rows).permute(0, 3, 1, 2)
    resized = F.interpolate(crop.contiguous(memory_format=torch.channels_last), size=(size, size),
                            mode="bicubic", antialias=True, align_corners=False)
    if out is None:
        return resized.contiguous()
    if out.shape != resized.shape or out.dtype != resized.dtype:
        raise ValueError(f"out is {tuple(out.shape)} {out.dtype}, the view is {tuple(resized.shape)} {resized.dtype}")
    return out.copy_(resized)


def resize_short_side(frames: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 `[N, 3, H, W]` with the short side resized to `size` (bicubic, antialias), long side
    `int(size * long / short)` as torchvision's Resize(int) computes it."""
    h, w = frames.shape[-2:]
    if h <= w:
        out_hw = (size, int(size * w / h))
    else:
        out_hw = (int(size * h / w), size)
    if out_hw == (h, w):
        return frames
    return F.interpolate(frames.contiguous(memory_format=torch.channels_last), size=out_hw,
                         mode="bicubic", antialias=True, align_corners=False)


def spatial_crops(frames: torch.Tensor, size: int, num_crops: int) -> list[torch.Tensor]:
    """Square crops of `[N, 3, H, W]`: 1 = centre (torchvision CenterCrop's rounding); 3 = start,
    centre and end of the long side. Each crop is a contiguous `[N, 3, size, size]`."""
    h, w = frames.shape[-2:]
    if h < size or w < size:
        raise ValueError(f"frames {h}x{w} are smaller than the crop {size}")
    top, left = int(round((h - size) / 2.0)), int(round((w - size) / 2.0))
    if num_crops == 1:
        boxes = [(top, left)]
    elif num_crops == 3:
        boxes = [(0, left), (top, left), (h - size, left)] if h > w else [(top, 0), (top, left), (top, w - size)]
    else:
        raise ValueError(f"num_crops must be 1 or 3, got {num_crops}")
    return [frames[:, :, t:t + size, x:x + size].contiguous() for t, x in boxes]


# --------------------------------------------------------------------------------------------
# float, device side
# --------------------------------------------------------------------------------------------


def _gray(x: torch.Tensor) -> torch.Tensor:
    """`[..., 3, H, W]` -> luma `[..., 1, H, W]`."""
    r, g, b = x.unbind(-3)
    return (_LUMA[0] * r + _LUMA[1] * g + _LUMA[2] * b).unsqueeze(-3)


def _per_view(p: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Parameter `[B, V]` broadcast against views `[B, V, T, 3, H, W]`."""
    return p.view(*p.shape, *([1] * (x.ndim - p.ndim)))


def _hue_shift(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotate the HSV hue of `[K, T, 3, H, W]` by `shift` `[K]` turns."""
    maxc, _ = x.max(-3)
    minc, _ = x.min(-3)
    delta = maxc - minc
    r, g, b = x.unbind(-3)
    safe = torch.where(delta > 0, delta, torch.ones_like(delta))
    hue = torch.where(maxc == r, ((g - b) / safe) % 6,
                      torch.where(maxc == g, (b - r) / safe + 2, (r - g) / safe + 4))
    hue = torch.where(delta > 0, hue / 6, torch.zeros_like(hue))
    hue = (hue + shift.view(-1, 1, 1, 1)) % 1.0
    sat = torch.where(maxc > 0, delta / torch.where(maxc > 0, maxc, torch.ones_like(maxc)), torch.zeros_like(maxc))
    # HSV -> RGB: channel n in (5, 3, 1) is v - v*s*clamp(min(k, 4 - k), 0, 1), k = (n + 6h) mod 6.
    # arange runs on the device; torch.tensor([...], device=cuda) would be a synchronous copy.
    n = torch.arange(5.0, 0.0, -2.0, device=x.device, dtype=x.dtype).view(1, 1, 3, 1, 1)  # 5, 3, 1
    k = (n + hue.unsqueeze(-3) * 6) % 6
    return maxc.unsqueeze(-3) - (maxc * sat).unsqueeze(-3) * torch.minimum(k, 4 - k).clamp(0, 1)


def _uniform(shape: tuple[int, ...], lo: float, hi: float, generator: torch.Generator | None) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(shape, generator=generator)


def _draw_params(b: int, v: int, views: ViewsConfig, generator: torch.Generator | None) -> dict[str, torch.Tensor]:
    """One draw per view (CPU, from `generator` in a fixed order). Factors are 1 / shift 0 where
    colour jitter is not applied."""
    bri, con, sat, hue = views.color_jitter
    shape = (b, v)
    flip = torch.rand(shape, generator=generator) < views.flip_p
    jitter = torch.rand(shape, generator=generator) < views.color_jitter_p
    gray = torch.rand(shape, generator=generator) < views.grayscale_p
    factors = {
        "brightness": _uniform(shape, max(0.0, 1 - bri), 1 + bri, generator),
        "contrast": _uniform(shape, max(0.0, 1 - con), 1 + con, generator),
        "saturation": _uniform(shape, max(0.0, 1 - sat), 1 + sat, generator),
    }
    shift = _uniform(shape, -hue, hue, generator)
    out = {k: torch.where(jitter, f, torch.ones_like(f)) for k, f in factors.items()}
    out["hue"] = torch.where(jitter, shift, torch.zeros_like(shift))
    out.update(flip=flip, gray=gray)
    return out


_FACTORS = ("brightness", "contrast", "saturation", "hue")


def _host_to_device(host: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Copy a small CPU tensor to `device` without a host sync: a plain `.to(cuda)` of pageable
    memory makes the host wait for every kernel queued before it (memcpy + stream sync), which
    would stall the launch of the next step behind the previous one. Pinned + non_blocking is a
    queued DMA; the caching host allocator keeps the buffer alive until the copy has run."""
    if device.type == "cuda":
        host = host.pin_memory()
    return host.to(device, non_blocking=True)


def _pack_params(p: dict[str, torch.Tensor], mean: Sequence[float], std: Sequence[float],
                 device: torch.device) -> dict[str, torch.Tensor]:
    """All augmentation parameters of one call on `device`, in ONE host->device copy.

    The flip / hue / grey selections become flat view indices (into `[B * V]`) on the CPU, where
    the masks were drawn, so the device never reports back a count. Everything travels as one
    float32 vector (indices < 2^24 are exact in float32) and is split on the device by sizes the
    host already knows: no sync, one DMA instead of a dozen small pageable copies."""
    flat = torch.arange(p["flip"].numel())
    index = {"flip_index": flat[p["flip"].flatten()], "hue_index": flat[(p["hue"] != 0).flatten()],
             "gray_index": flat[p["gray"].flatten()]}
    pieces = [p[k].flatten().float() for k in _FACTORS] + [i.float() for i in index.values()]
    pieces += [torch.tensor(mean, dtype=torch.float32), torch.tensor(std, dtype=torch.float32)]
    dev = _host_to_device(torch.cat(pieces), device).split([len(t) for t in pieces])
    shape = p["flip"].shape  # [B, V]
    out = {k: dev[i].view(shape) for i, k in enumerate(_FACTORS)}
    out.update({k: dev[len(_FACTORS) + i].long() for i, k in enumerate(index)})
    out["mean"], out["std"] = dev[-2], dev[-1]
    return out


def augment_views(x: torch.Tensor, views: ViewsConfig, mean: Sequence[float], std: Sequence[float],
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """uint8 views `[B, V, T, 3, H, W]` (any device) -> augmented, normalised float32, same shape.

    Which views are flipped / hue-shifted / grey is decided on the CPU and shipped with the other
    parameters in one copy, so the device never has to report back (no host sync) before the
    model's forward pass. Views not selected for an operation skip its work."""
    B, V = x.shape[:2]
    p = _pack_params(_draw_params(B, V, views, generator), mean, std, x.device)  # on x.device
    x = x.float().div_(255)  # [B, V, T, 3, H, W]
    flat = x.flatten(0, 1)  # [B * V, T, 3, H, W], a view of x: writes go through to x
    if len(i := p["flip_index"]):
        flat[i] = flat[i].flip(-1)
    x = (x * _per_view(p["brightness"], x)).clamp_(0, 1)
    c = _per_view(p["contrast"], x)
    x = (c * x + (1 - c) * _gray(x).mean(dim=(2, 3, 4, 5), keepdim=True)).clamp_(0, 1)
    s = _per_view(p["saturation"], x)
    x = (s * x + (1 - s) * _gray(x)).clamp_(0, 1)
    flat = x.flatten(0, 1)
    if len(i := p["hue_index"]):
        flat[i] = _hue_shift(flat[i], p["hue"].flatten()[i])
    if len(i := p["gray_index"]):
        flat[i] = _gray(flat[i]).expand(-1, -1, 3, -1, -1)
    return normalize(x, p["mean"], p["std"])


def normalize(x: torch.Tensor, mean: Sequence[float] | torch.Tensor, std: Sequence[float] | torch.Tensor) -> torch.Tensor:
    """float `[..., 3, H, W]` in [0, 1] -> (x - mean) / std, in place. `mean`/`std`: 3 values, or
    `[3]` tensors already on x's device."""
    m, s = (v if isinstance(v, torch.Tensor) else _host_to_device(torch.tensor(v, dtype=torch.float32), x.device)
            for v in (mean, std))
    return x.sub_(m.to(x.dtype).view(3, 1, 1)).div_(s.to(x.dtype).view(3, 1, 1))


def make_train_views(batch: dict, views_cfg: ViewsConfig, mean: Sequence[float], std: Sequence[float],
                     device: torch.device | str, generator: torch.Generator | None = None):
    """A training batch (uint8, already cropped and resized per view in the workers) -> float32
    `(global_views [B, V_g, T_g, 3, G, G], local_views [B, V_l, T_l, 3, L, L])` on `device`, or a
    list of `[B, T_l_i, 3, L, L]` for the local views when their frame counts differ.

    Parameters are drawn on the CPU from `generator` (default: torch's global generator): global
    views first, then local views in order."""
    glob = batch["global"].to(device, non_blocking=True)
    global_views = augment_views(glob, views_cfg, mean, std, generator)
    local = batch["local"]
    if isinstance(local, (list, tuple)):
        local_views = [augment_views(v.to(device, non_blocking=True)[:, None], views_cfg, mean, std, generator)[:, 0]
                       for v in local]
    else:
        local_views = augment_views(local.to(device, non_blocking=True), views_cfg, mean, std, generator)
    return global_views, local_views


def make_eval_views(batch: dict, num_crops: int, image_size: int, mean: Sequence[float], std: Sequence[float],
                    device: torch.device | str) -> torch.Tensor:
    """An eval batch's uint8 `frames` `[B, num_clips * num_crops, T, 3, S, S]` -> normalised float32
    on `device` (the crops were cut in the workers; this checks they match the request)."""
    frames = batch["frames"]
    if frames.ndim != 6 or frames.shape[-1] != image_size or frames.shape[-2] != image_size:
        raise ValueError(f"expected frames [B, V, T, 3, {image_size}, {image_size}], got {tuple(frames.shape)}")
    if frames.shape[1] % num_crops:
        raise ValueError(f"{frames.shape[1]} views per video is not a multiple of num_crops={num_crops}")
    x = frames.to(device, non_blocking=True).float().div_(255)
    return normalize(x, mean, std)
