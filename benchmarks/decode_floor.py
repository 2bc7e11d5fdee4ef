"""How far exact-frame decoding of a training sample can go below today's, and why the 2x target is out of reach.

Issue 20 asked for training samples at >= 2x the naive decoder (decode every frame) with the exact
frames of today (`VideoDecoder(seek_mode="exact").get_frames_at` on the union of the views'
indices). This script measures the pieces of that decode on the `mp4-340x256` clips of
`data_throughput.py` (H.264 High, 300 frames, a keyframe every 60, B-frames), one core, CPU time
of the process, all variants interleaved in every round, medians:

- today's decode (`VideoDecoder`, exact seek, the union of ~70 frames) and the naive one;
- the decode floor of `VideoDecoder`: only the last wanted frame of each GOP (every picture up to
  it still has to be decoded, ~5 colour conversions instead of ~70);
- *sparse*: a prototype that decodes only the pictures exactness needs: the reference pictures
  (`nal_ref_idc != 0`, read from the MP4 sample table and each sample's NAL headers) up to the
  last wanted frame of each GOP, plus the wanted non-reference ones. In H.264 nothing predicts
  from a non-reference picture, so the other pictures come out bit-identical (asserted every
  round). It goes through torchcodec's private packet API (`torchcodec._core.ops._blocks_*`,
  0.17) because `VideoDecoder` cannot skip packets; that API's colour converter runs FFmpeg's
  filter graph with automatic threads, so the script pins FFmpeg to one CPU
  (`av_cpu_force_count(1)` in libavutil, which the single-threaded `VideoDecoder` does not need);
- the packet API's cost for the same work as `VideoDecoder` (all 300 packets, no conversion), and
  for the reference pictures alone.

Crop + resize of the views (`data_throughput._crop_new` / `_crop_old`) complete the per-sample
ratios. Run: `python benchmarks/decode_floor.py` (~1 minute; --quick for a smoke run).
Results: benchmarks/RESULTS.md §7a.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import mmap
import os
import re
import statistics
import struct
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torchcodec._core import ops

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data_throughput import KINDS, _crop_new, _crop_old, _pick, make_clips  # noqa: E402

from lss_cli.config import ViewsConfig  # noqa: E402
from lss_cli.data.sampling import union_indices  # noqa: E402
from lss_cli.data.video_io import open_video  # noqa: E402

# ---- which pictures nothing references: the MP4 sample table and the NAL headers -------------
# Only the plain case: an ISO-BMFF file, not fragmented, one video track coded avc1/avc3, every sync
# sample an IDR picture (closed GOPs). Anything else: None.

_SLICE, _IDR_SLICE = 1, 5  # NAL unit types of coded slices (non-IDR, IDR)
_OTHER_VCL = {2, 3, 4, 20, 21}  # data partitions and extension slices: not handled, so no skipping


@dataclass(frozen=True)
class H264Refs:
    """One video track, samples in decode order (the order a demuxer returns its packets)."""

    is_reference: list[bool]  # [S] False: every slice has nal_ref_idc 0, no picture predicts from it
    sync: list[int]  # sample numbers (0-based, increasing) of the sync samples, all IDR pictures
    composition: list[int]  # [S] presentation time (stts + ctts), in the track's time scale


def _boxes(buf, start: int, end: int):
    """(type, payload start, box end) of the boxes in `buf[start:end]`."""
    pos = start
    while pos + 8 <= end:
        size, kind = struct.unpack_from(">I4s", buf, pos)
        header = 8
        if size == 1:
            size, header = struct.unpack_from(">Q", buf, pos + 8)[0], 16
        elif size == 0:
            size = end - pos
        if size < header or pos + size > end:
            raise ValueError(f"box {kind!r} at {pos} overruns its parent")
        yield kind, pos + header, pos + size
        pos += size


def _children(buf, start: int, end: int) -> dict[bytes, list[tuple[int, int]]]:
    found: dict[bytes, list[tuple[int, int]]] = {}
    for kind, a, b in _boxes(buf, start, end):
        found.setdefault(kind, []).append((a, b))
    return found


def _track_tables(buf, trak: tuple[int, int]) -> dict[bytes, tuple[int, int]] | None:
    """The sample-table boxes of a video track, or None for another kind of track."""
    mdia = _children(buf, *trak).get(b"mdia")
    if not mdia:
        return None
    kids = _children(buf, *mdia[0])
    if b"hdlr" not in kids or buf[kids[b"hdlr"][0][0] + 8:kids[b"hdlr"][0][0] + 12] != b"vide":
        return None
    minf = _children(buf, *kids[b"minf"][0])
    return {k: v[0] for k, v in _children(buf, *minf[b"stbl"][0]).items()}


def _u32s(buf, box: tuple[int, int], skip: int, per: int) -> list[tuple[int, ...]]:
    """A full box's table: version/flags, (`skip` - 4) bytes more, a count, then `per` u32s per entry."""
    a = box[0] + skip
    count = struct.unpack_from(">I", buf, a)[0]
    if a + 4 + 4 * per * count > box[1]:
        raise ValueError("sample table overruns its box")
    flat = struct.unpack_from(f">{per * count}I", buf, a + 4)
    return [flat[i:i + per] for i in range(0, len(flat), per)]


def _sample_offsets(buf, t: dict[bytes, tuple[int, int]]) -> tuple[list[int], list[int]]:
    """File offset and size of every sample (stsz, stsc, stco/co64)."""
    a = t[b"stsz"][0]
    fixed, count = struct.unpack_from(">II", buf, a + 4)
    sizes = [fixed] * count if fixed else list(struct.unpack_from(f">{count}I", buf, a + 12))
    if b"co64" in t:
        b = t[b"co64"][0]
        n = struct.unpack_from(">I", buf, b + 4)[0]
        chunks = list(struct.unpack_from(f">{n}Q", buf, b + 8))
    else:
        chunks = [c[0] for c in _u32s(buf, t[b"stco"], 4, 1)]
    runs = _u32s(buf, t[b"stsc"], 4, 3)  # (first chunk, 1-based; samples per chunk; description)
    offsets: list[int] = []
    for r, (first, per_chunk, _) in enumerate(runs):
        last = runs[r + 1][0] - 1 if r + 1 < len(runs) else len(chunks)
        for chunk in range(first - 1, last):
            pos = chunks[chunk]
            for _ in range(per_chunk):
                if len(offsets) == count:
                    break
                offsets.append(pos)
                pos += sizes[len(offsets) - 1]
    if len(offsets) != count:
        raise ValueError("stsc/stco describe fewer samples than stsz")
    return offsets, sizes


def _composition_times(buf, t: dict[bytes, tuple[int, int]], count: int) -> list[int]:
    """Presentation time of every sample: decode times (stts) plus composition offsets (ctts,
    read as signed as FFmpeg does for both versions)."""
    times, clock = [], 0
    for n, delta in _u32s(buf, t[b"stts"], 4, 2):
        for _ in range(n):
            times.append(clock)
            clock += delta
    if b"ctts" in t:
        k = 0
        for n, offset in _u32s(buf, t[b"ctts"], 4, 2):
            offset -= (offset >> 31) << 32
            for _ in range(n):
                if k < len(times):
                    times[k] += offset
                k += 1
    if len(times) != count:
        raise ValueError("stts/ctts describe another number of samples than stsz")
    return times


def _nal_length_size(buf, stsd: tuple[int, int]) -> int | None:
    """NAL length-prefix size from the avcC of the only sample description, None if not H.264."""
    count = struct.unpack_from(">I", buf, stsd[0] + 4)[0]
    if count != 1:
        return None
    entry = next(_boxes(buf, stsd[0] + 8, stsd[1]))
    if entry[0] not in (b"avc1", b"avc3"):
        return None
    for kind, a, _ in _boxes(buf, entry[1] + 78, entry[2]):  # 78: the visual sample entry's fields
        if kind == b"avcC":
            return (buf[a + 4] & 3) + 1
    return None


def _picture_kind(buf, offset: int, size: int, length_size: int) -> tuple[bool, bool] | None:
    """(is a reference, is IDR) of one sample from its NAL headers, None if it cannot be told."""
    pos, end = offset, offset + size
    ref = idr = False
    slices = 0
    while pos + length_size < end:
        n = int.from_bytes(buf[pos:pos + length_size], "big")
        header = buf[pos + length_size]
        nal_type, ref_idc = header & 0x1F, header >> 5
        if nal_type in _OTHER_VCL or n == 0 or pos + length_size + n > end:
            return None
        if nal_type in (_SLICE, _IDR_SLICE):
            slices += 1
            ref |= ref_idc != 0
            idr |= nal_type == _IDR_SLICE
        pos += length_size + n
    return (ref, idr) if slices and pos == end else None


def h264_refs(path: str | Path) -> H264Refs | None:
    """Reference flags of the video track's samples, or None where the plain case does not hold
    (see the module docstring) or the file cannot be parsed."""
    if Path(path).suffix.lower() not in (".mp4", ".mov", ".m4v"):
        return None
    try:
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            return _parse(buf)
    except (OSError, ValueError, struct.error, KeyError, IndexError, StopIteration):
        return None


def _parse(buf) -> H264Refs | None:
    top = _children(buf, 0, len(buf))
    if b"moov" not in top or b"moof" in top:
        return None
    moov = _children(buf, *top[b"moov"][0])
    if b"mvex" in moov:  # fragmented: samples live in movie fragments
        return None
    tables = [t for t in (_track_tables(buf, trak) for trak in moov.get(b"trak", [])) if t is not None]
    if len(tables) != 1:
        return None
    t = tables[0]
    length_size = _nal_length_size(buf, t[b"stsd"])
    if length_size is None:
        return None
    offsets, sizes = _sample_offsets(buf, t)
    kinds = [_picture_kind(buf, o, s, length_size) for o, s in zip(offsets, sizes, strict=True)]
    if not kinds or any(k is None for k in kinds):
        return None
    sync = [s[0] - 1 for s in _u32s(buf, t[b"stss"], 4, 1)] if b"stss" in t else list(range(len(kinds)))
    if not sync or sync[0] != 0 or any(not kinds[s][1] for s in sync if s < len(kinds)) or sync[-1] >= len(kinds):
        return None  # a GOP that does not start with an IDR picture may reference the one before it
    return H264Refs(is_reference=[k[0] for k in kinds], sync=sync,
                    composition=_composition_times(buf, t, len(kinds)))


# ---- the sparse decode ----------------------------------------------------------------------


class SparseVideo:
    """An H.264 MP4 decoded packet by packet through torchcodec's low-level (private) packet API,
    skipping every picture that is neither asked for nor referenced by one that must be decoded.
    Its frames are checked against `VideoDecoder(seek_mode="exact").get_frames_at` in every round
    (same codec, same colour conversion; GOPs are closed, so where decoding starts changes no
    picture). `open` returns None where the plain case does not hold, `decode` None where the
    stream does not behave as planned."""

    def __init__(self, refs: H264Refs, demuxer: torch.Tensor, stream: int, display: list[int], pts: list[int],
                 time_base: tuple[int, int]):
        self.refs, self.demuxer, self.stream, self.time_base = refs, demuxer, stream, time_base
        self.num_frames = len(pts)
        # Frame i is the i-th packet in presentation order, as VideoDecoder numbers them; the
        # sample table gives that order for the packets in the order the demuxer returns them.
        self.display = display  # [frame] -> packet number
        self.pts = pts  # [frame] in the stream's time base, sorted (the demuxer's scan)

    @classmethod
    def open(cls, path: str | Path) -> SparseVideo | None:
        refs = h264_refs(path)
        if refs is None:
            return None
        demuxer = ops._blocks_create_demuxer_from_file(str(path))
        stream, _ = ops._blocks_demuxer_add_stream(demuxer, None, "video")
        pts, _, is_key, num, den = ops._blocks_demuxer_scan(demuxer, stream)  # sorted by pts
        pts_list, n = pts.tolist(), len(refs.composition)
        if len(pts_list) != n or len(set(refs.composition)) != n:
            return None  # dropped or discarded packets, or frames without an order
        display = sorted(range(n), key=refs.composition.__getitem__)
        # The demuxer's timestamps must be the sample table's, shifted by one constant (an edit
        # list), and its keyframes the sync samples: then packet p is sample p, frame for frame.
        shift = {refs.composition[p] - t for p, t in zip(display, pts_list, strict=True)}
        keys = sorted(display[i] for i in torch.nonzero(is_key).flatten().tolist())
        if len(shift) != 1 or keys != refs.sync:
            return None
        return cls(refs, demuxer, stream, display, pts_list, (num, den))

    def plan(self, union: list[int]) -> tuple[set[int], set[int]]:
        """Packets to send, and for each GOP with a wanted frame the last of them (where the codec
        is drained: the next GOP starts with an IDR picture and needs nothing from this one)."""
        wanted = {self.display[i] for i in union}
        bounds = self.refs.sync + [self.num_frames]
        send: set[int] = set()
        drain_after: set[int] = set()
        for start, end in zip(bounds[:-1], bounds[1:], strict=True):
            mine = [p for p in wanted if start <= p < end]
            if not mine:
                continue
            last = max(mine)  # references precede, in decode order, the pictures predicted from them
            send.update(p for p in range(start, last + 1) if p in wanted or self.refs.is_reference[p])
            drain_after.add(last)
        return send, drain_after

    def decode(self, union: list[int]) -> torch.Tensor | None:
        """uint8 frames `[U, 3, H, W]` at the sorted, distinct frame indices `union`, or None."""
        num, den = self.time_base
        slot = {float(self.pts[i]) * num / den: k for k, i in enumerate(union)}  # as the codec reports pts
        send, drain_after = self.plan(union)
        decoder = ops._blocks_create_packet_decoder(self.demuxer, stream_index=self.stream, num_threads=1,
                                                     device="cpu")
        converter = ops._blocks_create_color_converter(device="cpu", output_dtype="uint8")
        out: torch.Tensor | None = None  # [U, H, W, 3]: the layout VideoDecoder fills
        filled = 0
        cpu = torch.device("cpu")
        last_packet = max(drain_after)
        for number in range(last_packet + 1):
            packet, eof, _ = ops._blocks_demuxer_next_packet(self.demuxer)
            if eof:
                return None
            if number not in send:
                continue
            if ops._blocks_packet_decoder_send_packet(decoder, packet) < 0:
                return None
            if number in drain_after:
                ops._blocks_packet_decoder_send_eof(decoder)
            while True:
                frame, status, seconds, _, _ = ops._blocks_packet_decoder_receive_frame(decoder)
                if status != 0:
                    break
                k = slot.get(seconds)
                if k is None:
                    continue
                rgb = ops._blocks_convert_frame(converter, frame, cpu)  # [H, W, 3]
                if out is None:
                    out = torch.empty((len(union), *rgb.shape), dtype=torch.uint8)
                elif rgb.shape != out.shape[1:]:
                    return None  # the picture size changes: leave it to VideoDecoder
                out[k] = rgb
                filled += 1
            if number in drain_after:
                ops._blocks_packet_decoder_reset(decoder)
        if out is None or filled != len(union):
            return None
        return out.permute(0, 3, 1, 2)


# ---- measurement ----------------------------------------------------------------------------


def gop_lasts(keys: list[int], union: list[int]) -> list[int]:
    """The last wanted frame of each GOP that has one (display order)."""
    last: dict[int, int] = {}
    for i in union:
        last[max(k for k in keys if k <= i)] = i
    return sorted(last.values())


def decode_at(path: Path, indices: list[int]):
    return open_video(path, seek_mode="exact").get_frames_at(indices=indices)


def decode_range(path: Path, n: int):
    return open_video(path, seek_mode="exact").get_frames_in_range(0, n)


def decode_sparse(path: Path, union: list[int]) -> torch.Tensor | None:
    return SparseVideo.open(path).decode(union)


def packet_pass(path: Path, references_only: bool) -> None:
    """Send every packet (or the reference pictures only) to the codec and receive every frame;
    no conversion."""
    video = SparseVideo.open(path)
    decoder = ops._blocks_create_packet_decoder(video.demuxer, stream_index=video.stream, num_threads=1, device="cpu")
    for number in range(video.num_frames):
        packet, _, _ = ops._blocks_demuxer_next_packet(video.demuxer)
        if not references_only or video.refs.is_reference[number]:
            ops._blocks_packet_decoder_send_packet(decoder, packet)
            while ops._blocks_packet_decoder_receive_frame(decoder)[1] == 0:
                pass


def one_ffmpeg_cpu() -> None:
    """FFmpeg's automatic thread counts (the packet API's colour converter) to one thread."""
    path = re.search(r"\S*libavutil\.so\S*", Path("/proc/self/maps").read_text())
    if path is None:
        raise SystemExit("libavutil is not loaded: cannot pin FFmpeg to one CPU")
    ctypes.CDLL(path.group(0)).av_cpu_force_count(1)


def measure(paths: list[Path], rounds: int) -> dict:
    views = ViewsConfig()
    times: dict[str, list[float]] = {}

    def timed(key, fn, *args):
        t0 = time.process_time()
        out = fn(*args)
        times.setdefault(key, []).append(1000 * (time.process_time() - t0))
        return out

    sent, refs_sent, union_sizes = [], [], []
    for r in range(rounds):
        path = paths[r % len(paths)]
        video = SparseVideo.open(path)
        if video is None:
            raise SystemExit(f"{path}: not a plain H.264 MP4 with closed GOPs")
        union_t, positions = union_indices(_pick(video.num_frames, views, r))
        union = union_t.tolist()
        frame_of = {p: i for i, p in enumerate(video.display)}
        keys = sorted(frame_of[s] for s in video.refs.sync)  # keyframes' frame indices
        gop_ends = [k - 1 for k in keys[1:]] + [video.num_frames - 1]
        send, _ = video.plan(union)
        sent.append(len(send))
        refs_sent.append(sum(video.refs.is_reference[p] for p in send))
        union_sizes.append(len(union))
        timed("open_scan", open_video, path, "cpu", 1, "exact")
        today = timed("today", decode_at, path, union).data
        timed("floor", decode_at, path, gop_lasts(keys, union))
        timed("naive", decode_range, path, video.num_frames)
        timed("vd_all_packets", decode_at, path, gop_ends)
        sparse = timed("sparse", decode_sparse, path, union)
        if sparse is None or not torch.equal(sparse, today):
            raise SystemExit(f"{path}: the sparse decode did not give today's frames (round {r})")
        timed("packets_all", packet_pass, path, False)
        timed("packets_refs", packet_pass, path, True)
        timed("crop_new", _crop_new, today, positions, views, torch.Generator().manual_seed(r))
        timed("crop_old", _crop_old, today, positions, views, torch.Generator().manual_seed(r))
    med = {k: statistics.median(v) for k, v in times.items()}
    med.update(packets_sent=statistics.median(sent), reference_packets_sent=statistics.median(refs_sent),
               union_frames=statistics.median(union_sizes), identical=True)
    return med


ROWS = [
    ("open_scan", "VideoDecoder: open + exact scan"),
    ("today", "today: VideoDecoder, union of the views (exact)"),
    ("floor", "VideoDecoder floor: last wanted frame per GOP"),
    ("vd_all_packets", "VideoDecoder: every picture decoded, 5 converted"),
    ("packets_all", "packet API: every picture decoded, none converted"),
    ("packets_refs", "packet API: reference pictures only, none converted"),
    ("sparse", "sparse prototype: union, same frames as today"),
    ("naive", "naive: VideoDecoder, every frame"),
    ("crop_new", "crop + resize of the views (now)"),
    ("crop_old", "crop + resize of the views (naive's)"),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "lss-bench-data", help="clip cache")
    ap.add_argument("--clips", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=15, help="interleaved rounds (medians)")
    ap.add_argument("--quick", action="store_true", help="smoke run: 1 clip, 2 rounds")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()
    if args.quick:
        args.clips, args.rounds = 1, 2
    torch.set_num_threads(1)
    one_ffmpeg_cpu()
    args.out.mkdir(parents=True, exist_ok=True)
    paths = make_clips(args.out, KINDS["mp4-340x256"], args.clips)
    load = os.getloadavg()[0]
    m = measure(paths, args.rounds)
    m["load_average"] = [load, os.getloadavg()[0]]
    print(f"mp4-340x256, {args.rounds} interleaved rounds, one core, CPU ms (medians); load {load:.2f} -> "
          f"{m['load_average'][1]:.2f}; union {m['union_frames']:.0f} frames, sparse sends {m['packets_sent']:.0f} of 300 "
          f"packets ({m['reference_packets_sent']:.0f} reference pictures)")
    for key, label in ROWS:
        print(f"  {label:<54} {m[key]:8.2f}")
    naive = m["naive"] + m["crop_old"]
    for key, label in (("today", "today"), ("sparse", "sparse")):
        sample = m[key] + m["crop_new"]
        print(f"per sample, {label}: {sample:.1f} ms against naive {naive:.1f} ms -> {naive / sample:.2f}x")
    per_conversion = (m["today"] - m["floor"]) / max(1.0, m["union_frames"] - 5)
    print(f"colour conversion ~{per_conversion:.2f} ms per frame (today - floor); the packet API costs "
          f"{m['packets_all'] - m['vd_all_packets']:+.1f} ms against VideoDecoder for the same 300 pictures")
    if args.json:
        args.json.write_text(json.dumps(m, indent=2) + "\n")


if __name__ == "__main__":
    main()
