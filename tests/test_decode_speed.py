"""The faster training-sample path gives the exact tensors of the path it replaced.

`OldTrainClips` (benchmarks/data_throughput.py) is a frozen copy of the sample code before the speed work (views
cut with `crop[rows]`, `.contiguous()` per view, then `torch.stack`); the production `TrainClips`
must give bit-identical `global` / `local` tensors for the same (seed, epoch, index), on videos
that exercise the decoder differently: H.264 with B-frames and short or long GOPs, all-intra,
no B-frames, MPEG-4 Part 2 in AVI, a width that is a multiple of 32 (FFmpeg's swscale colour
path) and one that is not (filtergraph), and a variable-frame-rate file (needs the ffmpeg CLI).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lss_cli.config import DataConfig, ViewsConfig
from lss_cli.data.augment import crop_resize
from lss_cli.data.datasets import VideoList
from lss_cli.data.loader import TrainClips, collate_train
from lss_cli.data.sampling import multiview_indices, random_resized_crop_box
from lss_cli.data.video_io import encode_video, read_union

# Small views keep the test fast; several local frame counts exercise the list layout too.
VIEWS = ViewsConfig(global_size=40, local_size=24, local_views=3, local_frames=[4])
VIEWS_MIXED = ViewsConfig(global_size=40, local_size=24, local_views=3, local_frames=[2, 4, 3])


def _frozen_reference():
    """The benchmark's frozen copy of the sample code before the CPU-side speed work (one copy of
    it, measured there and pinned here)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    try:
        import data_throughput
    finally:
        sys.path.pop(0)
    return data_throughput.OldTrainClips, data_throughput.old_crop_resize


OldTrainClips, _old_crop_resize = _frozen_reference()


def _frames(n: int, h: int, w: int, seed: int) -> torch.Tensor:
    """Moving gradients plus noise: every frame differs, so a wrong frame cannot match."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(n, dtype=torch.float32)[:, None, None, None]
    y = torch.linspace(0, 1, h)[None, None, :, None]
    x = torch.linspace(0, 1, w)[None, None, None, :]
    c = torch.tensor([1.0, 0.6, 0.3])[None, :, None, None]
    base = 0.5 + 0.5 * torch.sin(6.0 * (x * c + y) + 0.35 * t)
    noise = 0.08 * torch.rand(n, 3, h, w, generator=g)
    return ((base + noise).clamp(0, 1) * 255).round().to(torch.uint8)


# name: (suffix, frames, height, width, fps, encoder options)
KINDS = {
    "h264-bframes-gop12": (".mp4", 72, 52, 90, 30, {"g": 12}),
    "h264-bframes-gop60-w64": (".mp4", 90, 48, 64, 25, {"g": 60}),
    "h264-intra": (".mp4", 30, 36, 44, 12, {"g": 1}),
    "h264-no-bframes": (".mp4", 50, 40, 60, 24, {"g": 25, "bf": 0}),
    "mpeg4-avi": (".avi", 40, 48, 64, 25, None),
}


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("decode-speed")
    out = {}
    for i, (name, (suffix, n, h, w, fps, options)) in enumerate(KINDS.items()):
        path = root / f"{name}{suffix}"
        encode_video(_frames(n, h, w, i), path, fps=fps, crf=23, extra_options=options)
        out[name] = path
    if shutil.which("ffmpeg"):  # variable frame rate (frame times stretch quadratically), with B-frames
        path = root / "h264-vfr.mp4"
        subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", str(out["h264-bframes-gop12"]),
                        "-vf", "setpts='(N+N*N/30)/30/TB'", "-fps_mode", "vfr", "-c:v", "libx264", "-g", "15",
                        "-pix_fmt", "yuv420p", str(path)], check=True, timeout=60)
        out["h264-vfr"] = path
    return out


def _compare(path: Path, views: ViewsConfig, keys: list[tuple[int, int]]) -> None:
    videos = VideoList("/", [str(path)] * 8, [-1] * 8, [])
    new, old = (cls(videos, DataConfig(), views, seed=3) for cls in (TrainClips, OldTrainClips))
    for key in keys:
        a, b = new[key], old[key]
        assert torch.equal(a["global"], b["global"]) and a["global"].is_contiguous(), (path.name, key)
        if isinstance(b["local"], torch.Tensor):
            assert isinstance(a["local"], torch.Tensor) and a["local"].is_contiguous()
            assert torch.equal(a["local"], b["local"]), (path.name, key)
        else:
            assert len(a["local"]) == len(b["local"])
            assert all(torch.equal(x, y) and x.is_contiguous() for x, y in zip(a["local"], b["local"], strict=True))
    batch_new = collate_train([new[k] for k in keys])
    batch_old = collate_train([old[k] for k in keys])
    assert torch.equal(batch_new["global"], batch_old["global"])


@pytest.mark.parametrize("kind", [*KINDS, "h264-vfr"])
def test_training_samples_are_bit_identical_to_the_old_path(videos, kind):
    if kind not in videos:
        pytest.skip("the ffmpeg CLI writes the variable-frame-rate file")
    _compare(videos[kind], VIEWS, [(0, 0), (0, 1), (1, 2), (5, 7)])


def test_mixed_local_frame_counts_are_bit_identical(videos):
    _compare(videos["h264-bframes-gop12"], VIEWS_MIXED, [(0, 0), (2, 3)])


def test_vfr_file_really_has_variable_frame_times(videos):
    """Guards the fixture: the VFR case must not silently be constant-rate."""
    if "h264-vfr" not in videos:
        pytest.skip("needs the ffmpeg CLI")
    from lss_cli.data.video_io import open_video

    dec = open_video(videos["h264-vfr"])
    pts = dec.get_frames_in_range(0, 20).pts_seconds
    steps = pts.diff()
    assert steps.max() > 1.5 * steps.min()


@pytest.mark.parametrize("layout", ["decoder", "nchw-contiguous"])
def test_crop_resize_into_out_equals_the_old_crop(videos, layout):
    """`crop_resize(..., out=)` writes the same pixels the old code returned, for decoder frames
    (NCHW views of NHWC memory) and for plain contiguous NCHW frames."""
    g = torch.Generator().manual_seed(0)
    views = multiview_indices(72, VIEWS, g).all()
    frames, positions = read_union(videos["h264-bframes-gop12"], lambda n: views)
    if layout == "nchw-contiguous":
        frames = frames.contiguous()
    h, w = frames.shape[-2:]
    for rows in positions:
        box = random_resized_crop_box(h, w, (0.05, 1.0), generator=g)
        out = torch.full((len(rows), 3, 33, 33), 7, dtype=torch.uint8)
        got = crop_resize(frames, box, 33, rows, out=out)
        assert got is out
        assert torch.equal(out, _old_crop_resize(frames, box, 33, rows))
        assert torch.equal(crop_resize(frames, box, 33, rows), out)
    assert torch.equal(crop_resize(frames, box, 20), _old_crop_resize(frames, box, 20))  # all rows


def test_crop_resize_rejects_an_out_of_the_wrong_shape(videos):
    frames, _ = read_union(videos["h264-intra"], lambda n: [torch.arange(4)])
    with pytest.raises(ValueError, match="out is"):
        crop_resize(frames, (0, 0, 20, 20), 16, torch.arange(4), out=torch.empty(4, 3, 16, 15, dtype=torch.uint8))
