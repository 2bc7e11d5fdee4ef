"""Training and evaluation loaders on real video files: shapes, determinism, sharding, bad files,
timeouts, on-device augmentation, and CLIP's eval preprocessing."""

from __future__ import annotations

import os
import threading

import pytest
import torch
from conftest import BAD, HostToDevice

from lss_cli.config import DataConfig, ViewsConfig
from lss_cli.data.augment import _draw_params, augment_views
from lss_cli.data.datasets import VideoList, load_dataset
from lss_cli.data.loader import (
    EvalShardSampler,
    TrainShardSampler,
    build_eval_loader,
    build_train_loader,
    make_eval_views,
    make_train_views,
)
from lss_cli.data.sampling import segment_indices
from lss_cli.data.video_io import VideoReadError, decode_all, encode_video, read_union

MEAN, STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)  # CLIP's
SMALL = ViewsConfig(global_views=2, global_frames=4, global_size=32, local_views=3, local_frames=[4],
                    local_size=16)


def _cfg(root, **kw) -> DataConfig:
    return DataConfig(**{"dataset": "synthetic", "root": str(root), "batch_size": 4, "num_workers": 0,
                         "decode_timeout": 30.0, **kw})


# ---- training -------------------------------------------------------------------------------


def test_train_batch_shapes_and_dtypes(synth_dataset):
    loader = build_train_loader(_cfg(synth_dataset), SMALL, seed=0)
    batches = list(loader)
    assert len(batches) == 12 // 4
    b = batches[0]
    assert b["global"].shape == (4, 2, 4, 3, 32, 32) and b["global"].dtype == torch.uint8
    assert b["local"].shape == (4, 3, 4, 3, 16, 16) and b["local"].dtype == torch.uint8
    assert b["index"].shape == (4,) and b["label"].tolist() == [loader.dataset.videos.label(i) for i in b["index"]]
    assert b["skipped"] == 0 and b["skipped_paths"] == []
    assert sorted(i for b in batches for i in b["index"].tolist()) == list(range(12))  # one epoch = each once


def test_train_samples_do_not_depend_on_worker_count_and_change_with_epoch(synth_dataset):
    def epoch(workers, e):
        loader = build_train_loader(_cfg(synth_dataset, num_workers=workers), SMALL, seed=3)
        loader.set_epoch(e)
        return list(loader)

    a, b, c = epoch(0, 1), epoch(2, 1), epoch(0, 2)
    for x, y in zip(a, b, strict=True):
        assert torch.equal(x["index"], y["index"]) and torch.equal(x["global"], y["global"])
        assert torch.equal(x["local"], y["local"])
    assert [x["index"].tolist() for x in a] != [x["index"].tolist() for x in c]


def test_variable_local_frame_counts_give_lists(synth_dataset):
    views = ViewsConfig(global_views=1, global_frames=3, global_size=24, local_views=3, local_frames=[2, 5, 3],
                        local_size=16)
    batch = next(iter(build_train_loader(_cfg(synth_dataset), views, seed=0)))
    assert [t.shape for t in batch["local"]] == [(4, 2, 3, 16, 16), (4, 5, 3, 16, 16), (4, 3, 3, 16, 16)]
    glob, local = make_train_views(batch, views, MEAN, STD, "cpu", torch.Generator().manual_seed(0))
    assert glob.shape == (4, 1, 3, 3, 24, 24) and [t.shape for t in local] == [t.shape for t in batch["local"]]
    assert all(t.dtype == torch.float32 for t in (glob, *local))


def test_train_shard_sampler_partitions_each_epoch():
    shards = []
    for rank in range(3):
        s = TrainShardSampler(10, seed=0, rank=rank, world_size=3)
        s.set_epoch(5)
        shards.append(list(s))
    assert {len(x) for x in shards} == {4}  # 10 videos padded to 12
    keys = [k for shard in shards for k in shard]
    assert {e for e, _ in keys} == {5} and {i for _, i in keys} == set(range(10))
    s = TrainShardSampler(10, seed=0)
    s.set_epoch(6)
    assert [i for _, i in s] != [i for _, i in shards[0] + shards[1] + shards[2]][:10]


def test_bad_files_are_substituted_counted_and_logged_once(bad_dataset):
    logged = []
    loader = build_train_loader(_cfg(bad_dataset), SMALL, seed=0)
    loader._log_bad = lambda path, reason: logged.append((path, reason))
    bad_full = {os.path.join(str(bad_dataset), p) for p in BAD}
    for epoch in range(2):
        loader.set_epoch(epoch)
        batches = list(loader)
        assert len(batches) == 4 and all(b["global"].shape[0] == 4 for b in batches)
        met = [p for b in batches for p in b["skipped_paths"]]
        assert set(met) == bad_full  # each is requested once per epoch
        if epoch == 1:  # by now all are known: substitutes avoid them, so each is met exactly once
            assert sorted(met) == sorted(bad_full)
        assert sum(b["skipped"] for b in batches) == len(met)
        used = {i for b in batches for i in b["index"].tolist()}
        assert used <= set(range(16)) - {6, 7, 14, 15}  # substitutes are readable videos
    assert sorted(p for p, _ in logged) == sorted(bad_full)  # once each, over both epochs
    assert loader.skipped_total >= 8 and loader.bad_paths == bad_full
    reasons = dict(logged)
    assert reasons[os.path.join(str(bad_dataset), "bad/missing.mp4")] == "missing file"
    assert reasons[os.path.join(str(bad_dataset), "bad/zero.mp4")] == "empty file (0 bytes)"


def test_a_hanging_decode_is_bounded_by_the_timeout(bad_dataset, tmp_path):
    """A FIFO blocks FFmpeg's open() forever: the loader gives up after decode_timeout."""
    fifo = tmp_path / "hang.mp4"
    os.mkfifo(fifo)
    good = load_dataset("synthetic", bad_dataset, "train")
    videos = VideoList("/", [str(fifo), *(good.path(i) for i in range(3))], [0, 1, 2, 3], good.classes)
    try:
        batch = next(iter(build_train_loader(_cfg(bad_dataset, decode_timeout=1.0), SMALL, seed=0, videos=videos)))
        assert batch["skipped_paths"] == [str(fifo)] and batch["skipped_reasons"] == ["decode did not finish within 1 s"]
        ev = next(iter(build_eval_loader(videos.subset([0]), num_frames=2, num_clips=1, num_crops=1, image_size=32,
                                         batch_size=1, num_workers=0, decode_timeout=1.0)))
        assert ev["ok"].tolist() == [False] and "did not finish" in ev["error"][0]
    finally:  # release the abandoned reader threads still blocked in open()
        for _ in range(2):
            try:
                fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
            except OSError:  # ENXIO: no reader has it open any more, nothing to release
                continue
            os.close(fd)
    assert threading.active_count() < 20


def test_approximate_mode_falls_back_to_exact_on_a_lying_header(tmp_path):
    """A truncated AVI keeps its header's frame count; approximate seeking past the real end fails,
    the retry in exact mode uses the frames really there."""
    frames = torch.randint(0, 255, (40, 3, 32, 48), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    full = tmp_path / "full.avi"
    encode_video(frames, full, fps=10)
    data = full.read_bytes()
    cut = tmp_path / "cut.avi"
    cut.write_bytes(data[: len(data) // 2])
    seen = []

    def pick(n):
        seen.append(n)
        return [torch.tensor([0, n - 1])]

    frames, positions = read_union(cut, pick, seek_mode="approximate", timeout=10)
    assert seen[0] == 40 and 1 <= seen[-1] < 40 and frames[positions[0]].shape[0] == 2
    # Evaluation is strict: the same file is reported as truncated instead of scored on what is left.
    with pytest.raises(VideoReadError, match="truncated: the header lists 40 frames"):
        read_union(cut, pick, seek_mode="exact", timeout=10, strict=True)
    frames, positions = read_union(full, pick, seek_mode="exact", timeout=10, strict=True)
    assert frames[positions[0]].shape[0] == 2


# ---- on-device augmentation -----------------------------------------------------------------


def test_augmentation_matches_torchvision_per_view():
    """Flip, brightness, contrast, saturation, hue (fixed order) and grayscale equal torchvision's
    functional ops with the same per-view parameters (T = 1, so a view's mean is the image mean)."""
    from torchvision.transforms.v2 import functional as TF

    views = ViewsConfig(flip_p=0.5, color_jitter_p=0.7, grayscale_p=0.3)
    x = torch.randint(0, 256, (3, 4, 1, 3, 12, 10), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    params = _draw_params(3, 4, views, torch.Generator().manual_seed(7))
    out = augment_views(x, views, (0, 0, 0), (1, 1, 1), torch.Generator().manual_seed(7))
    assert params["flip"].any() and params["gray"].any() and (params["hue"] != 0).any()
    for b in range(3):
        for v in range(4):
            img = x[b, v, 0].float() / 255
            if params["flip"][b, v]:
                img = img.flip(-1)
            img = TF.adjust_brightness(img, float(params["brightness"][b, v]))
            img = TF.adjust_contrast(img, float(params["contrast"][b, v]))
            img = TF.adjust_saturation(img, float(params["saturation"][b, v]))
            img = TF.adjust_hue(img, float(params["hue"][b, v]))
            if params["gray"][b, v]:
                img = TF.rgb_to_grayscale(img, num_output_channels=3)
            torch.testing.assert_close(out[b, v, 0], img, atol=2e-3, rtol=0)


def test_one_draw_per_view_applies_to_all_its_frames():
    views = ViewsConfig(flip_p=0.5, color_jitter_p=1.0, grayscale_p=0.5)
    frame = torch.randint(0, 256, (1, 1, 1, 3, 8, 8), dtype=torch.uint8)
    x = frame.expand(2, 5, 6, 3, 8, 8).clone()  # every frame of every view identical
    out = augment_views(x, views, MEAN, STD, torch.Generator().manual_seed(0))
    assert torch.allclose(out, out[:, :, :1].expand_as(out), atol=1e-6)  # same within a view
    assert not torch.allclose(out[:, :1], out[:, 1:2])  # different across views


def test_make_train_views_normalises_and_is_seeded(synth_dataset):
    batch = next(iter(build_train_loader(_cfg(synth_dataset), SMALL, seed=0)))
    plain = ViewsConfig(**{**vars(SMALL), "flip_p": 0.0, "color_jitter_p": 0.0, "grayscale_p": 0.0})
    glob, local = make_train_views(batch, plain, MEAN, STD, "cpu")
    mean, std = torch.tensor(MEAN).view(3, 1, 1), torch.tensor(STD).view(3, 1, 1)
    torch.testing.assert_close(glob, (batch["global"].float() / 255 - mean) / std)
    torch.testing.assert_close(local, (batch["local"].float() / 255 - mean) / std)
    a = make_train_views(batch, SMALL, MEAN, STD, "cpu", torch.Generator().manual_seed(5))
    b = make_train_views(batch, SMALL, MEAN, STD, "cpu", torch.Generator().manual_seed(5))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_device_augmentation_needs_no_host_sync_and_one_copy_per_call():
    """On the meta device any op that needs the device's data on the host (nonzero, .item(), a
    boolean test: a host sync on a GPU) raises, so running the production augmentation there proves
    it has none. Host->device copies: the two uint8 view batches plus ONE parameter pack per
    augment call (flip / hue / grey selections, jitter factors, mean and std)."""
    views = ViewsConfig(flip_p=0.5, color_jitter_p=0.8, grayscale_p=0.5)
    batch = {"global": torch.zeros(4, 2, 3, 3, 16, 16, dtype=torch.uint8),
             "local": torch.zeros(4, 5, 2, 3, 8, 8, dtype=torch.uint8)}
    with HostToDevice() as probe:
        glob, local = make_train_views(batch, views, MEAN, STD, "meta", torch.Generator().manual_seed(0))
    assert glob.device.type == "meta" and glob.shape == (4, 2, 3, 3, 16, 16) and local.shape == (4, 5, 2, 3, 8, 8)
    assert len(probe.copies) == 4, probe.copies


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_device_augmentation_has_no_host_sync_on_cuda():
    views = ViewsConfig(flip_p=0.5, color_jitter_p=0.8, grayscale_p=0.5)
    batch = {"global": torch.zeros(4, 2, 3, 3, 32, 32, dtype=torch.uint8).pin_memory(),
             "local": torch.zeros(4, 5, 2, 3, 16, 16, dtype=torch.uint8).pin_memory()}
    make_train_views(batch, views, MEAN, STD, "cuda", torch.Generator().manual_seed(0))  # warm-up allocations
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        make_train_views(batch, views, MEAN, STD, "cuda", torch.Generator().manual_seed(1))
    finally:
        torch.cuda.set_sync_debug_mode(0)


# ---- evaluation -----------------------------------------------------------------------------


def test_eval_reports_unreadable_and_never_drops(bad_dataset):
    videos = load_dataset("synthetic", bad_dataset, "test")
    loader = build_eval_loader(videos, num_frames=4, num_clips=2, num_crops=3, image_size=32, batch_size=5,
                               num_workers=2)
    batches = list(loader)
    index = torch.cat([b["index"] for b in batches]).tolist()
    ok = torch.cat([b["ok"] for b in batches]).tolist()
    errors = [e for b in batches for e in b["error"]]
    assert index == list(range(16))
    assert {videos.relpath(i) for i, good in zip(index, ok, strict=True) if not good} == set(BAD)
    assert all(bool(e) != good for e, good in zip(errors, ok, strict=True))
    frames = torch.cat([b["frames"] for b in batches])
    assert frames.shape == (16, 6, 4, 3, 32, 32) and frames.dtype == torch.uint8
    assert (frames[[6, 7, 14, 15]] == 0).all() and (frames[0].float().mean() > 10)
    assert make_eval_views(batches[0], 3, 32, MEAN, STD, "cpu").shape == (5, 6, 4, 3, 32, 32)


@pytest.mark.parametrize("world_size", [1, 2, 3, 5])
def test_eval_sharding_has_no_duplicates_or_drops(world_size):
    shards = [list(EvalShardSampler(16, rank, world_size)) for rank in range(world_size)]
    flat = [i for s in shards for i in s]
    assert sorted(flat) == list(range(16)) and len(flat) == 16


def test_eval_loader_shards_real_batches(synth_dataset):
    videos = load_dataset("synthetic", synth_dataset, "train")
    seen = []
    for rank in range(3):
        loader = build_eval_loader(videos, num_frames=2, num_clips=1, num_crops=1, image_size=32, batch_size=2,
                                   num_workers=0, rank=rank, world_size=3)
        seen += [i for b in loader for i in b["index"].tolist()]
    assert sorted(seen) == list(range(12))


@pytest.mark.parametrize("size", [32, 64])  # downscale and upscale
def test_default_eval_view_is_clip_preprocessing(tmp_path, size):
    """Single view = CLIP's eval transform per frame: frames at segment centres, short side to the
    model size (bicubic, antialias), centre crop, mean/std (open_clip's own transform as reference).
    PIL's and torch's uint8 bicubic are both two separable passes rounded to uint8 in between; an
    intermediate value one level apart goes through the second pass's weights (absolute sum at most
    ~1.14 for the a = -0.5 kernel) and the final rounding, so they may differ by up to 2 grey levels
    (one content showed only 1, which this test once asserted), and rarely: the mean stays tiny."""
    import open_clip
    from PIL import Image

    g = torch.Generator().manual_seed(0)
    base = torch.rand(1, 3, 6, 10, generator=g)
    frames = torch.nn.functional.interpolate(base, size=(46, 78), mode="bilinear")
    frames = (frames + 0.05 * torch.randn(11, 3, 46, 78, generator=g)).clamp(0, 1).mul(255).to(torch.uint8)
    path = tmp_path / "clip.mp4"
    encode_video(frames, path, fps=10)
    decoded = decode_all(path)  # what the file holds (lossy codec)
    videos = VideoList(tmp_path, ["clip.mp4"], [0], ["x"])
    batch = next(iter(build_eval_loader(videos, num_frames=4, num_clips=1, num_crops=1, image_size=size,
                                        batch_size=1, num_workers=0)))
    ours = make_eval_views(batch, 1, size, MEAN, STD, "cpu")[0, 0]  # [T, 3, S, S]
    preprocess = open_clip.image_transform(size, is_train=False, mean=MEAN, std=STD)
    for t, f in enumerate(segment_indices(11, 4).tolist()):
        ref = preprocess(Image.fromarray(decoded[f].permute(1, 2, 0).numpy()))
        diff = ((ours[t] - ref) * torch.tensor(STD).view(3, 1, 1) * 255).abs()
        assert diff.max() <= 2.01, diff.max()  # bilinear would be ~10 levels off
        assert diff.mean() < 0.05


def test_crop_of_the_union_equals_crop_of_each_view_decoded_alone(synth_dataset):
    """The worker crops each view's box out of the union decode; that equals decoding the view on
    its own and cropping it."""
    from lss_cli.data.augment import crop_resize
    from lss_cli.data.sampling import multiview_indices, random_resized_crop_box
    from lss_cli.data.video_io import decode_at, open_video

    path = synth_dataset / (synth_dataset / "train.txt").read_text().split()[0]
    g = torch.Generator().manual_seed(4)
    picked = []
    frames, positions = read_union(path, lambda n: picked.extend(multiview_indices(n, SMALL, g).all()) or picked,
                                   timeout=30)
    assert frames.shape[0] == len(torch.unique(torch.cat(picked)))
    for view, rows in zip(picked, positions, strict=True):
        box = random_resized_crop_box(64, 64, (0.1, 0.5), generator=g)
        alone = decode_at(open_video(path), view.tolist())
        assert torch.equal(crop_resize(frames, box, 24, rows), crop_resize(alone, box, 24))


@pytest.mark.parametrize("height,width,num_clips", [(36, 52, 2), (52, 36, 3)])  # landscape / portrait
def test_eval_views_resize_each_distinct_frame_once_and_match_a_plain_reference(tmp_path, monkeypatch, height,
                                                                                 width, num_clips):
    """A 5-frame video asked for 8 frames per clip repeats frames within a clip and shares them
    between clips. The worker resizes each distinct frame once; the views must be bit-identical to
    the plain recipe: take each clip's frames, resize each frame (short side, bicubic, antialias),
    cut the three crops along the long side."""
    import torch.nn.functional as F

    import lss_cli.data.loader as loader_mod
    from lss_cli.data.sampling import eval_clip_indices

    g = torch.Generator().manual_seed(1)
    frames = torch.randint(0, 255, (5, 3, height, width), dtype=torch.uint8, generator=g)
    encode_video(frames, tmp_path / "short.mp4", fps=10)
    decoded = decode_all(tmp_path / "short.mp4")  # [5, 3, H, W] what the file holds
    T, S = 8, 24
    indices = eval_clip_indices(5, T, num_clips)  # [K, T]
    resized_counts = []
    real_resize = loader_mod.resize_short_side
    monkeypatch.setattr(loader_mod, "resize_short_side",
                        lambda x, size: resized_counts.append(len(x)) or real_resize(x, size))
    videos = VideoList(tmp_path, ["short.mp4"], [0], ["x"])
    batch = next(iter(build_eval_loader(videos, num_frames=T, num_clips=num_clips, num_crops=3, image_size=S,
                                        batch_size=1, num_workers=0)))
    assert batch["ok"].tolist() == [True]
    assert resized_counts == [len(torch.unique(indices))] and len(torch.unique(indices)) < indices.numel()

    short, long = min(height, width), max(height, width)
    long_out = int(S * long / short)
    out_hw = (S, long_out) if height <= width else (long_out, S)
    starts = (0, int(round((long_out - S) / 2.0)), long_out - S)  # start, centre, end of the long side
    expected = []
    for k in range(num_clips):
        clip = torch.stack([F.interpolate(decoded[f][None], size=out_hw, mode="bicubic", antialias=True,
                                          align_corners=False)[0]
                            for f in indices[k].tolist()])  # [T, 3, H', W'], one frame at a time
        for a in starts:
            expected.append(clip[:, :, :, a:a + S] if height <= width else clip[:, :, a:a + S, :])
    expected = torch.stack(expected)  # [K * 3, T, 3, S, S], view k * 3 + c
    assert batch["frames"].shape == (1, num_clips * 3, T, 3, S, S)
    assert torch.equal(batch["frames"][0], expected)
