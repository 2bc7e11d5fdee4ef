"""Frame and crop sampling: lengths, order, bounds, determinism per seed, short videos, and the
one-call union decode against per-view decoding on real files."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lss_cli.config import ViewsConfig
from lss_cli.data.sampling import (
    dense_indices,
    eval_clip_indices,
    local_frame_counts,
    multiview_indices,
    random_resized_crop_box,
    segment_indices,
    union_indices,
    view_window,
)
from lss_cli.data.video_io import decode_all, decode_at, open_video

frames_ = st.integers(1, 700)
samples_ = st.integers(1, 32)
seeds = st.integers(0, 2**31 - 1)


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _ordered_in_bounds(idx, lo, hi):
    return idx.dtype == torch.long and bool((idx[1:] >= idx[:-1]).all()) and int(idx.min()) >= lo and int(idx.max()) < hi


@settings(max_examples=300, deadline=None)
@given(n=frames_, t=samples_, seed=seeds, train=st.booleans())
def test_segment_lengths_order_bounds(n, t, seed, train):
    idx = segment_indices(n, t, train=train, generator=_gen(seed))
    assert idx.shape == (t,) and _ordered_in_bounds(idx, 0, n)
    for i, f in enumerate(idx.tolist()):  # frame f (time [f, f + 1)) overlaps segment i
        assert i * n / t - 1 < f < (i + 1) * n / t
    if n >= t:  # long enough: T distinct frames
        assert len(set(idx.tolist())) == t


def test_segment_test_mode_is_segment_centres():
    assert segment_indices(80, 8).tolist() == [5, 15, 25, 35, 45, 55, 65, 75]
    assert segment_indices(10, 4).tolist() == [1, 3, 6, 8]  # floor((i + 0.5) * 2.5)
    assert segment_indices(3, 8).tolist() == [0, 0, 0, 1, 1, 2, 2, 2]  # short video: frames repeat


@settings(max_examples=200, deadline=None)
@given(n=frames_, t=samples_, seed=seeds, data=st.data())
def test_segment_inside_a_window(n, t, seed, data):
    start = data.draw(st.integers(0, n - 1))
    length = data.draw(st.integers(1, n - start))
    idx = segment_indices(n, t, train=True, generator=_gen(seed), start=start, length=length)
    assert _ordered_in_bounds(idx, start, start + length)


@settings(max_examples=300, deadline=None)
@given(n=frames_, t=samples_, stride=st.integers(1, 8), seed=seeds, train=st.booleans())
def test_dense_lengths_order_bounds_and_short_policy(n, t, stride, seed, train):
    idx = dense_indices(n, t, stride, train=train, generator=_gen(seed))
    assert idx.shape == (t,) and _ordered_in_bounds(idx, 0, n)
    if n >= (t - 1) * stride + 1:
        assert (idx.diff() == stride).all()
    elif t > 1:  # short: spread over the whole video
        assert idx[0] == 0 and idx[-1] == n - 1


@settings(max_examples=200, deadline=None)
@given(n=frames_, t=samples_, k=st.integers(1, 5))
def test_eval_clips(n, t, k):
    clips = eval_clip_indices(n, t, k)
    assert clips.shape == (k, t)
    for clip in clips:
        assert _ordered_in_bounds(clip, 0, n)
    assert (clips[1:] >= clips[:-1]).all()  # later clips sit later inside each segment
    if k == 1:
        assert torch.equal(clips[0], segment_indices(n, t))
    dense = eval_clip_indices(n, t, k, stride=2)
    assert dense.shape == (k, t) and int(dense.min()) >= 0 and int(dense.max()) < n


def test_eval_clips_evenly_spaced():
    assert eval_clip_indices(60, 3, 2).tolist() == [[5, 25, 45], [15, 35, 55]]
    assert eval_clip_indices(100, 4, 3, stride=2).tolist() == [[0, 2, 4, 6], [46, 48, 50, 52], [93, 95, 97, 99]]


@settings(max_examples=200, deadline=None)
@given(n=frames_, seed=seeds, lo=st.floats(0.05, 1.0), width=st.floats(0.0, 1.0))
def test_view_window(n, seed, lo, width):
    hi = min(1.0, lo + width)
    start, length = view_window(n, (lo, hi), _gen(seed))
    assert 1 <= length <= n and 0 <= start and start + length <= n
    assert max(1, round(lo * n)) <= length <= max(1, round(hi * n))


@settings(max_examples=100, deadline=None)
@given(n=frames_, seed=seeds, counts=st.lists(st.integers(1, 10), min_size=1, max_size=6))
def test_multiview_counts_bounds_determinism(n, seed, counts):
    views = ViewsConfig(global_views=2, global_frames=8, local_views=len(counts), local_frames=counts)
    a = multiview_indices(n, views, _gen(seed))
    b = multiview_indices(n, views, _gen(seed))
    assert [len(v) for v in a.global_views] == [8, 8]
    assert [len(v) for v in a.local_views] == counts == local_frame_counts(views)
    assert all(torch.equal(x, y) for x, y in zip(a.all(), b.all(), strict=True))
    for v in a.all():
        assert _ordered_in_bounds(v, 0, n)
    for v in a.global_views:  # a global view spans at most its window (>= 80% of the clip)
        assert int(v[-1] - v[0]) < max(1, round(1.0 * n))
    for v in a.local_views:
        assert int(v[-1] - v[0]) < max(1, round(0.5 * n))


def test_multiview_global_views_cover_most_of_the_clip():
    views = ViewsConfig()
    spans = {"g": [], "l": []}
    for seed in range(200):
        idx = multiview_indices(300, views, _gen(seed))
        spans["g"] += [int(v[-1] - v[0]) for v in idx.global_views]
        spans["l"] += [int(v[-1] - v[0]) for v in idx.local_views]
    assert min(spans["g"]) >= 0.8 * 300 * 6 / 8  # first in segment 0, last in segment 7 of >= 240 frames
    assert max(spans["l"]) < 0.5 * 300 and sum(spans["l"]) / len(spans["l"]) < sum(spans["g"]) / len(spans["g"]) / 2


def test_different_seeds_differ_same_seed_repeats():
    views = ViewsConfig()
    draws = [torch.cat(multiview_indices(300, views, _gen(s)).all()) for s in (1, 1, 2)]
    assert torch.equal(draws[0], draws[1]) and not torch.equal(draws[0], draws[2])


@settings(max_examples=300, deadline=None)
@given(h=st.integers(1, 400), w=st.integers(1, 400), seed=seeds, lo=st.floats(0.01, 1.0), width=st.floats(0, 1))
def test_random_resized_crop_box(h, w, seed, lo, width):
    scale = (lo, min(1.0, lo + width))
    top, left, ch, cw = random_resized_crop_box(h, w, scale, generator=_gen(seed))
    assert 0 <= top and 0 <= left and 1 <= ch and 1 <= cw and top + ch <= h and left + cw <= w
    assert random_resized_crop_box(h, w, scale, generator=_gen(seed)) == (top, left, ch, cw)


def test_random_resized_crop_box_area_in_scale():
    for seed in range(200):
        top, left, ch, cw = random_resized_crop_box(256, 340, (0.05, 0.4), generator=_gen(seed))
        area = ch * cw / (256 * 340)
        assert 0.04 <= area <= 0.42 and 0.7 <= cw / ch <= 1.4


@settings(max_examples=100, deadline=None)
@given(views=st.lists(st.lists(st.integers(0, 50), min_size=1, max_size=10), max_size=6))
def test_union_indices_round_trip(views):
    views = [torch.tensor(v) for v in views]
    union, positions = union_indices(views)
    assert (union.diff() > 0).all()
    for v, pos in zip(views, positions, strict=True):
        assert torch.equal(union[pos], v)


def test_union_decode_equals_per_view_decode(synth_dataset):
    """One get_frames_at over the union returns exactly what decoding each view alone returns."""
    from lss_cli.data.video_io import decode_views

    path = synth_dataset / (synth_dataset / "train.txt").read_text().split()[0]
    views = ViewsConfig(global_views=2, global_frames=4, local_views=3, local_frames=[3, 5, 2])
    everything = decode_all(path)  # [8, 3, 64, 64]
    for seed in range(3):
        idx = multiview_indices(len(everything), views, _gen(seed)).all()
        together = decode_views(open_video(path), idx)
        for v, frames in zip(idx, together, strict=True):
            alone = decode_at(open_video(path), v.tolist())
            assert torch.equal(frames, alone) and torch.equal(frames, everything[v])


def test_decode_views_calls_get_frames_at_once(synth_dataset):
    from lss_cli.data.video_io import decode_views

    path = synth_dataset / (synth_dataset / "train.txt").read_text().split()[0]
    dec = open_video(path)
    calls = []
    original = dec.get_frames_at
    dec.get_frames_at = lambda indices: calls.append(list(indices)) or original(indices=indices)
    decode_views(dec, [torch.tensor([0, 2, 2]), torch.tensor([1, 2, 7])])
    assert calls == [[0, 1, 2, 7]]
