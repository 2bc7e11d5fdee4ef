"""Which frames (and which pixels) a clip takes: pure index functions with seeded generators.

Every random draw comes from the `torch.Generator` passed in, in a fixed order, so the same seed
gives the same indices on any machine and with any number of DataLoader workers. Indices are
int64 tensors, non-decreasing within a view, and always inside `[0, num_frames)`.

Temporal sampling:
- `segment_indices` (TSN): the video (or a window of it) is cut into T equal segments and one
  frame is taken per segment: a uniformly random frame of the segment in training, the frame at
  the segment centre in testing (frame `floor((i + 0.5) * n / T)`, CLIP-style eval).
- `dense_indices`: T frames at a fixed stride inside a random (train) or centred (test) window.
- `eval_clip_indices`: K clips for multi-view testing. Segment mode: clip k takes frame
  `floor((i + (k + 0.5) / K) * n / T)` in segment i, i.e. K evenly spaced offsets inside every
  segment (K = 1 gives the centres). Dense mode: K windows whose starts are evenly spaced.

Short-video policy (n frames, fewer than a view needs): never an index past the end. Segment
sampling repeats frames when n < T (segments shorter than one frame map to the same frame);
dense sampling shrinks the stride so the clip spans the whole video (`floor(j * (n - 1) / (T - 1))`),
repeating frames when n < T. A view window is never shorter than one frame.

Self-distillation views (docs/method.md §2, `multiview_indices`): each global view covers a window of a
random fraction in `views.global_span` of the video, each local view a window with a fraction in
`views.local_span`; window starts are uniform; inside its window a view takes `T` frames by
training segment sampling. Local views may have one frame count each (`views.local_frames`).
`union_indices` gives the sorted union of all views' indices and each view's positions into it, so
`lss_cli.data.video_io.decode_union` decodes every view of a clip with ONE `get_frames_at` call.

Spatial sampling: `random_resized_crop_box` draws an Inception-style crop box (area fraction in
`scale`, log-uniform aspect ratio in `ratio`, 10 tries, then a centre crop with the ratio clamped).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from lss_cli.config import ViewsConfig


def _check_n(num_frames: int) -> int:
    n = int(num_frames)
    if n < 1:
        raise ValueError(f"a video needs at least 1 frame, got {num_frames}")
    return n


def segment_indices(num_frames: int, num_samples: int, *, train: bool = False,
                    generator: torch.Generator | None = None, start: int = 0,
                    length: int | None = None) -> torch.Tensor:
    """One frame per equal segment of the window `[start, start + length)` (default: whole video).

    Test: frame `floor((i + 0.5) * length / T)` (integer arithmetic, exact). Train: a uniform frame
    of integer segment `[floor(i * length / T), floor((i + 1) * length / T))`, so the T frames are
    distinct whenever the window has at least T frames; shorter windows repeat frames.
    Returns int64 `[num_samples]`, non-decreasing, inside the window."""
    n = _check_n(num_frames)
    length = n - start if length is None else int(length)
    if not (0 <= start and 1 <= length and start + length <= n):
        raise ValueError(f"window [{start}, {start + length}) is not inside a {n}-frame video")
    i = torch.arange(num_samples, dtype=torch.long)
    if not train:
        return start + torch.div((2 * i + 1) * length, 2 * num_samples, rounding_mode="floor")
    u = torch.rand(num_samples, generator=generator, dtype=torch.float64)  # [T] in [0, 1)
    if length >= num_samples:
        bounds = torch.div(torch.arange(num_samples + 1) * length, num_samples, rounding_mode="floor")  # [T + 1]
        sizes = (bounds[1:] - bounds[:-1]).double()  # every segment holds >= 1 frame
        pick = bounds[:-1] + (u * sizes).floor().long()
    else:
        pick = ((i + u) * (length / num_samples)).floor().long()
    return (start + pick).clamp_(start, start + length - 1)  # clamp guards float rounding


def dense_indices(num_frames: int, num_samples: int, stride: int, *, train: bool = False,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """`num_samples` frames `stride` apart in a random (train) or centred (test) window."""
    n = _check_n(num_frames)
    span = (num_samples - 1) * stride + 1
    if n < span:
        return _spread(n, num_samples)
    if train:
        start = int(torch.randint(0, n - span + 1, (1,), generator=generator))
    else:
        start = (n - span) // 2
    return start + torch.arange(num_samples, dtype=torch.long) * stride


def _spread(n: int, num_samples: int) -> torch.Tensor:
    """`num_samples` frames spread over all n frames (first and last included)."""
    if num_samples == 1:
        return torch.tensor([(n - 1) // 2])
    return torch.div(torch.arange(num_samples, dtype=torch.long) * (n - 1), num_samples - 1, rounding_mode="floor")


def eval_clip_indices(num_frames: int, num_samples: int, num_clips: int, *, stride: int | None = None) -> torch.Tensor:
    """K evenly spaced test clips, int64 `[K, T]` (segment mode, or dense mode with `stride`)."""
    n = _check_n(num_frames)
    if stride is None:  # floor((i + (k + 0.5) / K) * n / T), in integers
        i = torch.arange(num_samples, dtype=torch.long)[None]  # [1, T]
        k = torch.arange(num_clips, dtype=torch.long)[:, None]  # [K, 1]
        return torch.div((2 * num_clips * i + 2 * k + 1) * n, 2 * num_clips * num_samples, rounding_mode="floor")
    span = (num_samples - 1) * stride + 1
    if n < span:
        return _spread(n, num_samples)[None].expand(num_clips, -1).clone()
    if num_clips == 1:
        starts = torch.tensor([(n - span) // 2])
    else:
        starts = torch.div(torch.arange(num_clips) * (n - span), num_clips - 1, rounding_mode="floor")
    return starts[:, None] + torch.arange(num_samples)[None] * stride


def view_window(num_frames: int, span: tuple[float, float], generator: torch.Generator | None = None) -> tuple[int, int]:
    """(start, length) of a window covering a uniform fraction in `span` of the video."""
    n = _check_n(num_frames)
    frac = span[0] + (span[1] - span[0]) * float(torch.rand(1, generator=generator, dtype=torch.float64))
    length = min(n, max(1, round(frac * n)))
    start = int(torch.randint(0, n - length + 1, (1,), generator=generator))
    return start, length


def local_frame_counts(views: ViewsConfig) -> list[int]:
    """T_l of each local view (one value in the config means the same for all)."""
    counts = list(views.local_frames)
    return counts * views.local_views if len(counts) == 1 else counts


@dataclass
class ViewIndices:
    global_views: list[torch.Tensor]  # V_g tensors [T_g]
    local_views: list[torch.Tensor]  # V_l tensors [T_l_i]

    def all(self) -> list[torch.Tensor]:
        return [*self.global_views, *self.local_views]


def multiview_indices(num_frames: int, views: ViewsConfig, generator: torch.Generator | None = None) -> ViewIndices:
    """Frame indices of every global and local view of one clip (see the module docstring)."""

    def one(span: tuple[float, float], t: int) -> torch.Tensor:
        start, length = view_window(num_frames, span, generator)
        return segment_indices(num_frames, t, train=True, generator=generator, start=start, length=length)

    return ViewIndices(
        [one(views.global_span, views.global_frames) for _ in range(views.global_views)],
        [one(views.local_span, t) for t in local_frame_counts(views)],
    )


def union_indices(views: list[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """(sorted unique indices `[U]`, per view its positions into them), so `union[pos_v] == view_v`."""
    if not views:
        return torch.zeros(0, dtype=torch.long), []
    union, inverse = torch.unique(torch.cat(views), sorted=True, return_inverse=True)
    return union, list(torch.split(inverse, [len(v) for v in views]))


def random_resized_crop_box(height: int, width: int, scale: tuple[float, float],
                            ratio: tuple[float, float] = (3 / 4, 4 / 3),
                            generator: torch.Generator | None = None) -> tuple[int, int, int, int]:
    """(top, left, h, w) of a random crop: area fraction in `scale`, aspect ratio (w/h) in `ratio`."""
    area = height * width
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(10):
        u = torch.rand(2, generator=generator, dtype=torch.float64).tolist()
        target = area * (scale[0] + (scale[1] - scale[0]) * u[0])
        aspect = math.exp(log_lo + (log_hi - log_lo) * u[1])
        w = round(math.sqrt(target * aspect))
        h = round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, (1,), generator=generator))
            left = int(torch.randint(0, width - w + 1, (1,), generator=generator))
            return top, left, h, w
    aspect_in = width / height  # fallback: the largest centre crop with the ratio clamped into range
    if aspect_in < ratio[0]:
        w, h = width, min(height, round(width / ratio[0]))
    elif aspect_in > ratio[1]:
        h, w = height, min(width, round(height * ratio[1]))
    else:
        h, w = height, width
    return (height - h) // 2, (width - w) // 2, h, w
