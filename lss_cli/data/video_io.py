"""Video files in and out. This is the only module that imports torchcodec.

Frames travel as uint8 tensors `[T, 3, H, W]` (torchcodec's NCHW layout) until the training
device normalises them.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import torch
from torchcodec.decoders import VideoDecoder
from torchcodec.encoders import VideoEncoder

from lss_cli.data.sampling import union_indices

T = TypeVar("T")


def encode_video(frames: torch.Tensor, path: str | Path, fps: float, crf: int | None = 18, *,
                 codec: str | None = None, extra_options: dict | None = None) -> None:
    """Write uint8 frames `[T, 3, H, W]` to `path`; the container follows the suffix (.mp4, .avi, .mkv).

    `codec` picks an FFmpeg encoder (default: the container's); `extra_options` are passed to it,
    e.g. `{"g": 60}` for a keyframe every 60 frames. The encoder runs on one thread unless
    `extra_options` says otherwise: x264's output depends on its thread count (by default one per
    core, so the same frames gave other files on other machines). Even on one thread, x264's lossy
    output (crf > 0) was seen to differ between two encodes of the same frames in one process
    (most of the demo's clips, by up to 41 grey levels once decoded); `crf=0` (lossless) gives
    identical files every time, which is what `lss_cli.data.synth` uses."""
    if frames.dtype != torch.uint8 or frames.ndim != 4 or frames.shape[1] != 3:
        raise ValueError(f"expected uint8 frames [T, 3, H, W], got {tuple(frames.shape)} {frames.dtype}")
    encoder = VideoEncoder(frames.contiguous(), frame_rate=fps)
    kwargs = {"crf": crf} if crf is not None and Path(path).suffix in (".mp4", ".mkv") else {}
    options = {"threads": "1", **(extra_options or {})}
    encoder.to_file(str(path), pixel_format="yuv420p", codec=codec, extra_options=options, **kwargs)


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


def decode_union(decoder: VideoDecoder, views: list[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """ONE batched decode of the union of all views' indices: (uint8 frames `[U, 3, H, W]`, per view
    its positions into them). Cropping before `frames[pos]` copies only the crop's pixels."""
    union, positions = union_indices(views)
    return decode_at(decoder, union.tolist()), positions


def decode_views(decoder: VideoDecoder, views: list[torch.Tensor]) -> list[torch.Tensor]:
    """uint8 frames `[T_v, 3, H, W]` of every view from ONE batched decode of the union of indices."""
    frames, positions = decode_union(decoder, views)
    return [frames[pos] for pos in positions]


# --------------------------------------------------------------------------------------------
# Reading that never crashes a run and never hangs it
# --------------------------------------------------------------------------------------------


class VideoReadError(Exception):
    """A video could not be read; the message is a short reason fit for a report."""


_CPP_PREFIX = re.compile(r"^[A-Za-z_]+, \S+\.cpp:\d+, ")


def describe_error(error: BaseException) -> str:
    """One readable line from a decoder exception (torchcodec prefixes its C++ source location)."""
    if isinstance(error, VideoReadError):
        return str(error)
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return _CPP_PREFIX.sub("", text)


def call_with_timeout(fn: Callable[[], T], timeout: float | None) -> T:
    """Run `fn` with a deadline. FFmpeg calls release the GIL, so a decode stuck in C (a FIFO, a
    stalled network mount) is abandoned in a daemon thread instead of hanging the worker; the
    thread never blocks process exit."""
    if timeout is None:
        return fn()
    box: dict[str, object] = {}

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as e:  # handed to the caller below
            box["error"] = e

    thread = threading.Thread(target=target, daemon=True, name="lss-decode")
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise VideoReadError(f"decode did not finish within {timeout:g} s")
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box["value"]  # type: ignore[return-value]


def _precheck(path: str | Path) -> None:
    if not os.path.exists(path):
        raise VideoReadError("missing file")
    if os.path.isfile(path) and os.path.getsize(path) == 0:
        raise VideoReadError("empty file (0 bytes)")


def truncation(decoder: VideoDecoder) -> str | None:
    """Why a file counts as truncated, or None: its header promises clearly more frames than an
    exact scan found (over 10 % and 3 frames). Needs exact seek mode (a scanned frame count)."""
    md = decoder.metadata
    header, content = md.num_frames_from_header, md.num_frames_from_content
    if header and content and header - content > max(3, 0.1 * header):
        return f"truncated: the header lists {header} frames, the file holds {content}"
    return None


def read_union(path: str | Path, pick: Callable[[int], list[torch.Tensor]], *, seek_mode: str = "exact",
               timeout: float | None = None, device: str = "cpu",
               strict: bool = False) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Frames of several views from one file, decoded together: `pick(num_frames)` returns each
    view's indices; returns (uint8 frames of the sorted union `[U, 3, H, W]`, per view its
    positions into them), see `decode_union`.

    Raises VideoReadError (with a reason) for a missing, empty, unreadable or hanging file. In
    approximate mode a failed decode is retried once in exact mode (the header's frame count can
    be wrong, e.g. in a truncated file), calling `pick` again with the scanned count.

    `strict` (evaluation): a truncated file (see `truncation`) is unreadable even if what is left
    decodes, so results report it instead of scoring a shortened video. Training may use what is left."""
    def decode(mode: str) -> tuple[torch.Tensor, list[torch.Tensor]]:
        dec = open_video(path, device=device, num_threads=1, seek_mode=mode)
        n = num_frames(dec)
        if n < 1:
            raise VideoReadError("no video frames" if mode == "exact" else "no frame count in the header")
        if strict and mode == "exact" and (why := truncation(dec)):
            raise VideoReadError(why)
        return decode_union(dec, pick(n))

    def run() -> tuple[torch.Tensor, list[torch.Tensor]]:
        _precheck(path)
        modes = [seek_mode] if seek_mode == "exact" else [seek_mode, "exact"]
        for i, mode in enumerate(modes):
            try:
                return decode(mode)
            except (RuntimeError, ValueError, IndexError, VideoReadError) as e:
                if i == len(modes) - 1:
                    raise VideoReadError(describe_error(e)) from None
        raise AssertionError("unreachable")

    return call_with_timeout(run, timeout)


def check_video(path: str | Path, timeout: float | None = 60.0) -> str | None:
    """None if the file opens and its first and last frames decode, else the reason.

    Exact mode scans the packets, so the last frame is the last one really present. A file whose
    header promises clearly more frames than it holds (over 10% and 3 frames) is reported as
    truncated even though what is left decodes."""

    def run() -> str | None:
        _precheck(path)
        try:
            dec = open_video(path, num_threads=1, seek_mode="exact")
        except (RuntimeError, ValueError) as e:
            raise VideoReadError(describe_error(e)) from None
        n = num_frames(dec)
        if n < 1:
            return "no video frames"
        try:
            decode_at(dec, [0, n - 1])
        except (RuntimeError, ValueError, IndexError) as e:
            return describe_error(e)
        return truncation(dec)

    try:
        return call_with_timeout(run, timeout)
    except VideoReadError as e:
        return str(e)
    except Exception as e:  # noqa: BLE001 - any decoder failure is a reason for the report
        return describe_error(e)
