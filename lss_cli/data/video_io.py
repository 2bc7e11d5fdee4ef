"""Video files in and out. This is the only module that imports torchcodec.

Frames travel as uint8 tensors `[T, 3, H, W]` (torchcodec's NCHW layout) until the training
device normalises them.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torchcodec.decoders import VideoDecoder
from torchcodec.encoders import VideoEncoder


def encode_video(frames: torch.Tensor, path: str | Path, fps: float, crf: int | None = 18) -> None:
    """Write uint8 frames `[T, 3, H, W]` to `path`; the container follows the suffix (.mp4, .avi, .mkv)."""
    if frames.dtype != torch.uint8 or frames.ndim != 4 or frames.shape[1] != 3:
        raise ValueError(f"expected uint8 frames [T, 3, H, W], got {tuple(frames.shape)} {frames.dtype}")
    encoder = VideoEncoder(frames.contiguous(), frame_rate=fps)
    kwargs = {"crf": crf} if crf is not None and Path(path).suffix in (".mp4", ".mkv") else {}
    encoder.to_file(str(path), pixel_format="yuv420p", **kwargs)


def open_video(path: str | Path, device: str = "cpu", num_threads: int = 1,
               seek_mode: str = "exact") -> VideoDecoder:
    """A decoder for one file. Create it where it is used (inside a worker), never before fork."""
    return VideoDecoder(str(path), device=device, num_ffmpeg_threads=num_threads, seek_mode=seek_mode)


def num_frames(decoder: VideoDecoder) -> int:
    md = decoder.metadata
    n = md.num_frames if md.num_frames is not None else md.num_frames_from_content
    return int(n or 0)


def decode_all(path: str | Path) -> torch.Tensor:
    """Every frame of a file, uint8 `[T, 3, H, W]` (for tests and small clips)."""
    dec = open_video(path)
    return dec.get_frames_in_range(0, num_frames(dec)).data


def decode_at(decoder: VideoDecoder, indices: list[int]) -> torch.Tensor:
    """Frames at the given indices, uint8 `[N, 3, H, W]`, in the order given (duplicates allowed)."""
    return decoder.get_frames_at(indices=list(indices)).data
