"""`lss eval`: exactness against an independent open_clip computation, multi-view aggregation, the
feature cache, the results file, unreadable videos, the linear probe and exported models."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from clip_reference import segment_frames, shipped_templates
from conftest import BAD, run_lss

from lss_cli.config import EvalConfig, TrainConfig, load_config
from lss_cli.data.datasets import load_dataset
from lss_cli.eval.features import Views, extract_features
from lss_cli.eval.metrics import view_averaged_probs
from lss_cli.eval.results import evaluate
from lss_cli.models.artefact import load_video_model

ROOT = Path(__file__).resolve().parents[1]


def _zs_cli(zs, out: Path, cache: Path, *extra: str):
    return run_lss("eval", "zero-shot", "--dataset", "list", "--list-file", zs["list"], "--root", zs["root"],
                   "--checkpoint", "none", "--model", "lss-tiny", "--pretrained", zs["weights"], "--device", "cpu",
                   "--output-dir", out, f"cache_dir={cache}", "num_workers=0", *extra)


def _reference_probs(zs, num_frames: int, num_clips: int = 1, num_crops: int = 1) -> torch.Tensor:
    ref = zs["ref"]
    classifier = ref.classifier(zs["classes"], shipped_templates())
    return torch.stack([ref.probs(zs["root"] / v, classifier, num_frames, num_clips, num_crops) for v in zs["videos"]])


# --------------------------------------------------------------------------------------------
# Exactness
# --------------------------------------------------------------------------------------------


def test_segment_centres_of_the_reference():
    # The reference's own frame choice, spelled out: 10 frames, 3 segments -> centres 1.67, 5, 8.33.
    assert segment_frames(10, 3) == [1, 5, 8]
    assert segment_frames(10, 2, clip=0, num_clips=2) == [1, 6] and segment_frames(10, 2, 1, 2) == [3, 8]


def test_zero_shot_cli_equals_open_clip_reference(zs, tmp_path):
    r = _zs_cli(zs, tmp_path / "run", tmp_path / "cache", "--num-frames", "3")
    assert r.returncode == 0, r.stderr
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    split = results["splits"][0]
    probs = _reference_probs(zs, num_frames=3)  # [N, K]
    labels = torch.tensor(zs["labels"])
    expected = probs.argmax(1)
    assert len(set(expected.tolist())) >= 3  # the random model does discriminate: a meaningful comparison
    assert split["predictions"] == expected.tolist()  # video by video
    assert split["top1"] == pytest.approx(float((expected == labels).double().mean()))
    top5 = (probs.topk(min(5, probs.shape[1]), 1).indices == labels[:, None]).any(1)
    assert split["top5"] == pytest.approx(float(top5.double().mean()))
    assert split["logit_scale"] == pytest.approx(zs["ref"].logit_scale)
    # The results file says what was done.
    assert results["protocol"] == "zero-shot" and results["checkpoint"] == "baseline"
    assert results["model_id"].startswith("lss-tiny:weights-sha256:")
    assert results["views"] == {"num_frames": 3, "num_clips": 1, "num_crops": 1, "count": 1, "image_size": 64}
    assert results["config"]["num_frames"] == 3 and results["config"]["pretrained"] == str(zs["weights"])
    assert results["protocol_details"]["templates"]["templates"] == shipped_templates()
    assert len(results["protocol_details"]["templates"]["sha256"]) == 64
    assert (split["videos_listed"], split["videos_evaluated"], split["videos_unreadable"]) == (20, 20, 0)
    assert results["videos_listed"] == 20 and results["videos_unreadable"] == 0 and split["unreadable"] == []
    assert split["videos_decoded"] == 20
    assert sum(map(sum, split["confusion"])) == 20 and len(split["per_class_top1"]) == 4
    assert set(results["environment"]["versions"]) >= {"lss_cli", "torch", "torchcodec", "open_clip_torch"}
    assert results["seconds"] > 0 and results["summary"]["top1"]["std"] == 0.0
    # The table: the numbers and the view count, the results path.
    assert f"{100 * split['top1']:.2f}" in r.stdout and "1 view(s) x 3 frames" in r.stdout
    assert str(tmp_path / "run" / "results.json") in r.stdout
    # Several views (2 clips x 3 crops) with the same cache: a changed view setting decodes again;
    # predictions follow the reference's view-averaged softmax and the view count is reported.
    r2 = _zs_cli(zs, tmp_path / "run2", tmp_path / "cache", "--num-frames", "2", "--num-clips", "2", "--num-crops", "3")
    assert r2.returncode == 0, r2.stderr
    multi = json.loads((tmp_path / "run2" / "results.json").read_text())
    assert multi["views"]["count"] == 6 and "6 view(s) x 2 frames" in r2.stdout
    assert multi["splits"][0]["videos_decoded"] == 20
    expected = _reference_probs(zs, num_frames=2, num_clips=2, num_crops=3).argmax(1)
    assert multi["splits"][0]["predictions"] == expected.tolist()


def test_features_equal_reference_per_view(zs, zs_model):
    # Library level, every view: 2 temporal clips x 3 crops (the non-square clips have distinct crops).
    videos = load_dataset("list", zs["root"], "test", zs["list"])
    feats = extract_features(zs_model, videos, Views(num_frames=2, num_clips=2, num_crops=3), num_workers=0)
    assert feats.feats.shape == (20, 6, 64) and feats.ok.all() and feats.decoded == 20
    for i in (0, 12, 13):  # a square clip, a wide one and a tall one
        expected = zs["ref"].view_embeddings(zs["root"] / zs["videos"][i], 2, num_clips=2, num_crops=3)  # [6, D]
        # PIL's and torch's antialiased bicubic resize differ by one grey level on ~0.3% of the pixels,
        # which moves the unit embeddings by ~2e-5; a wrong frame, crop or filter moves them by > 1e-3.
        torch.testing.assert_close(feats.feats[i], expected, atol=1e-4, rtol=0)
    wide = feats.feats[12]
    assert (wide[0] - wide[1]).abs().max() > 1e-3  # the three crops really differ


def test_view_averaging_is_of_probabilities_not_logits():
    classifier = torch.eye(2)  # [K, D]
    feats = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])  # one video, two views, one for each class
    probs = view_averaged_probs(feats, classifier, logit_scale=10.0)
    torch.testing.assert_close(probs, torch.tensor([[0.5, 0.5]]))
    feats = torch.tensor([[[1.0, 0.0], [0.6, 0.8]]])
    probs = view_averaged_probs(feats, classifier, logit_scale=10.0)
    per_view = (10.0 * feats[0] @ classifier.T).softmax(-1)  # [V, K]
    torch.testing.assert_close(probs[0], per_view.mean(0))
    assert not torch.allclose(probs[0], (10.0 * feats[0] @ classifier.T).mean(0).softmax(-1))


# --------------------------------------------------------------------------------------------
# Feature cache
# --------------------------------------------------------------------------------------------


def test_feature_cache_hits_misses_and_stamps(zs, zs_model, tmp_path, monkeypatch):
    import lss_cli.data.loader as loader

    calls = []
    real = loader.EvalClips.reader  # the decode function the eval dataset calls (benchmarks swap it too)
    monkeypatch.setattr(loader.EvalClips, "reader",
                        staticmethod(lambda path, *a, **k: (calls.append(path), real(path, *a, **k))[1]))
    videos = load_dataset("list", zs["root"], "test", zs["list"]).subset(range(6))
    views = Views(num_frames=2)
    first = extract_features(zs_model, videos, views, cache_dir=tmp_path, num_workers=0)
    assert first.decoded == 6 and len(calls) == 6
    calls.clear()
    second = extract_features(zs_model, videos, views, cache_dir=tmp_path, num_workers=0)
    assert second.decoded == 0 and calls == []  # nothing decoded, nothing opened
    assert torch.equal(second.feats, first.feats) and torch.equal(second.ok, first.ok)
    # A different view setting or feature kind is a different entry.
    assert extract_features(zs_model, videos, Views(num_frames=3), cache_dir=tmp_path, num_workers=0).decoded == 6
    assert extract_features(zs_model, videos, views, kind="pre-proj", cache_dir=tmp_path, num_workers=0).decoded == 6
    # A file whose mtime changed is decoded again, alone.
    path = videos.path(2)
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    calls.clear()
    third = extract_features(zs_model, videos, views, cache_dir=tmp_path, num_workers=0)
    assert third.decoded == 1 and calls == [path]
    torch.testing.assert_close(third.feats, first.feats, atol=1e-6, rtol=0)  # batch of 1 vs 6: rounding only
    # A new video list that shares videos (another split) decodes only the new ones.
    more = load_dataset("list", zs["root"], "test", zs["list"]).subset(range(4, 9))
    assert extract_features(zs_model, more, views, cache_dir=tmp_path, num_workers=0).decoded == 3


def test_damaged_cache_file_is_rebuilt_not_fatal(zs, zs_model, tmp_path):
    videos = load_dataset("list", zs["root"], "test", zs["list"]).subset(range(2))
    extract_features(zs_model, videos, Views(num_frames=2), cache_dir=tmp_path, num_workers=0)
    (cache_file,) = tmp_path.glob("features-*.safetensors")
    cache_file.write_bytes(b"not a safetensors file")
    again = extract_features(zs_model, videos, Views(num_frames=2), cache_dir=tmp_path, num_workers=0)
    assert again.decoded == 2 and again.ok.all()
    assert extract_features(zs_model, videos, Views(num_frames=2), cache_dir=tmp_path, num_workers=0).decoded == 0


# --------------------------------------------------------------------------------------------
# Unreadable videos
# --------------------------------------------------------------------------------------------


def test_unreadable_videos_are_listed_and_counted_as_errors(bad_dataset, tmp_path):
    r = run_lss("eval", "zero-shot", "--dataset", "synthetic", "--root", bad_dataset, "--checkpoint", "none",
                "--model", "lss-tiny", "--pretrained", "none", "--device", "cpu", "--num-frames", "4",
                "--output-dir", tmp_path / "run", f"cache_dir={tmp_path / 'cache'}")
    assert r.returncode == 0, r.stderr
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    split = results["splits"][0]
    assert (split["videos_listed"], split["videos_evaluated"], split["videos_unreadable"]) == (16, 12, 4)
    assert {u["path"] for u in split["unreadable"]} == set(BAD)
    reasons = {u["path"]: u["error"] for u in split["unreadable"]}
    assert reasons["bad/missing.mp4"] == "missing file" and reasons["bad/zero.mp4"] == "empty file (0 bytes)"
    videos = load_dataset("synthetic", bad_dataset, "test")
    bad_idx = [i for i in range(len(videos)) if videos.relpath(i) in BAD]
    assert all(split["predictions"][i] == -1 for i in bad_idx)
    labels = videos.labels.tolist()
    hits = sum(p == y for p, y in zip(split["predictions"], labels, strict=True))
    assert split["top1"] == pytest.approx(hits / 16)  # the denominator holds every listed video
    assert sum(row[-1] for row in split["confusion"]) == 4  # the confusion matrix's "unreadable" column
    for path in BAD:  # and the table says so, path by path
        assert f"counted as an error): {path}:" in r.stdout
    row = next(ln for ln in r.stdout.splitlines() if ln.startswith("│") and ln.split("│")[1].strip() == "-")
    assert [c.strip() for c in row.split("│")[4:7]] == ["16", "12", "4"]  # listed, evaluated, unreadable


def test_linear_probe_leaves_unreadable_train_videos_out_and_lists_them(bad_dataset, tmp_path):
    cfg = EvalConfig(dataset="synthetic", root=str(bad_dataset), checkpoint="none", model="lss-tiny", pretrained=None,
                     num_frames=2, num_workers=0, cache_dir=str(tmp_path / "cache"), device="cpu")
    results = evaluate(cfg, "linear-probe", output_dir=tmp_path / "run")
    split = results["splits"][0]
    assert split["train_videos_listed"] == 16 and split["train_videos_used"] == 12
    assert {u["path"] for u in split["train_unreadable"]} == set(BAD)
    assert split["videos_unreadable"] == 4 and split["videos_listed"] == 16
    videos = load_dataset("synthetic", bad_dataset, "test")
    unreadable = [i for i, p in enumerate(split["predictions"]) if p == -1]
    assert sorted(videos.relpath(i) for i in unreadable) == sorted(BAD)


# --------------------------------------------------------------------------------------------
# Linear probe
# --------------------------------------------------------------------------------------------


def test_linear_probe_cli_on_the_synthetic_set(synth_dataset, tmp_path):
    r = run_lss("eval", "linear-probe", "--dataset", "synthetic", "--root", synth_dataset, "--checkpoint", "none",
                "--model", "lss-tiny", "--pretrained", "none", "--device", "cpu", "--num-frames", "4",
                "--features", "pre-proj", "--output-dir", tmp_path / "run", f"cache_dir={tmp_path / 'cache'}")
    assert r.returncode == 0, r.stderr
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    split = results["splits"][0]
    assert results["protocol"] == "linear-probe" and split["features"] == "pre-proj"
    assert split["train_videos_used"] == 12 and split["videos_evaluated"] == 4
    assert split["l2"] in [float(k) for k in split["val_curve"]] and 0.0 <= split["top1"] <= 1.0
    assert "top5" not in results["summary"] and f"{100 * split['top1']:.2f}" in r.stdout
    assert (tmp_path / "run" / "per_class_linear-probe.png").is_file()


def _colour_set(root: Path, n_per_class: int, seed: int) -> None:
    """Videos whose class is their colour: separable by construction, even for a random network."""
    from lss_cli.data.video_io import encode_video

    g = torch.Generator().manual_seed(seed)
    colours = torch.tensor([[220, 40, 40], [40, 200, 60], [50, 60, 220], [230, 220, 50]])
    (root / "v").mkdir(parents=True)
    lines = {"train": [], "test": []}
    for c, rgb in enumerate(colours):
        for i in range(n_per_class):
            frames = rgb.view(1, 3, 1, 1) + 25 * torch.randn(4, 3, 64, 64, generator=g)
            encode_video(frames.clamp(0, 255).to(torch.uint8), root / f"v/{c}_{i}.mp4", fps=4)
            lines["test" if i % 3 == 0 else "train"].append(f"v/{c}_{i}.mp4 {c}")
    for part, ls in lines.items():
        (root / f"{part}.txt").write_text("\n".join(ls) + "\n")
    (root / "classes.txt").write_text("red\ngreen\nblue\nyellow\n")


def test_linear_probe_learns_separable_videos(tmp_path):
    _colour_set(tmp_path / "colours", n_per_class=9, seed=0)
    cfg = EvalConfig(dataset="list", root=str(tmp_path / "colours"), checkpoint="none", model="lss-tiny",
                     pretrained=None, num_frames=2, num_workers=0, cache_dir=str(tmp_path / "cache"), device="cpu",
                     out=str(tmp_path / "results" / "probe.json"))
    results = evaluate(cfg, "linear-probe")
    split = results["splits"][0]
    assert split["train_videos_used"] == 24 and split["videos_listed"] == 12
    assert split["top1"] >= 0.9
    # --out alone: the results file where asked, the plots beside it under its name.
    assert json.loads((tmp_path / "results" / "probe.json").read_text())["splits"][0]["top1"] == split["top1"]
    assert (tmp_path / "results" / "per_class_probe-linear-probe.png").is_file()


def test_linear_probe_refuses_to_train_on_its_test_list(zs, tmp_path):
    from lss_cli.errors import ConfigError

    cfg = EvalConfig(dataset="list", root=str(zs["root"]), list_file=str(zs["list"]), checkpoint="none",
                     model="lss-tiny", pretrained=None, device="cpu", cache_dir=str(tmp_path / "cache"))
    with pytest.raises(ConfigError, match="--train-list"):
        evaluate(cfg, "linear-probe", output_dir=tmp_path / "run")
    assert not (tmp_path / "run").exists()  # refused before writing anything
    k600 = EvalConfig(dataset="kinetics600-zs", root=str(zs["root"]), checkpoint="none")
    with pytest.raises(ConfigError, match="list-file"):
        evaluate(k600, "zero-shot", output_dir=tmp_path / "run")


# --------------------------------------------------------------------------------------------
# Exported models
# --------------------------------------------------------------------------------------------


def test_export_round_trip_equals_the_checkpoint(synth_dataset, tmp_path):
    from lss_cli.train.loop import train

    cfg = load_config(TrainConfig, ROOT / "examples" / "synthetic_tiny.yaml", [
        f"data.root={synth_dataset}", f"loss.concepts={tmp_path / 'concepts.safetensors'}", "data.batch_size=4",
        "data.num_workers=0", "optim.epochs=1", "optim.lr=0.05", "optim.temporal_lr=0.5", "optim.warmup_epochs=0",
        "teacher.momentum=0.5", "teacher.momentum_end=0.5", "views.global_frames=4", "views.local_views=2",
        f"run.output_dir={tmp_path / 'train'}"])
    summary = train(cfg)
    train_cfg = cfg
    assert summary["steps"] >= 2
    r = run_lss("export", tmp_path / "train", "--out", tmp_path / "model.safetensors", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["step"] == summary["steps"]
    from_ckpt = load_video_model(tmp_path / "train")
    from_export = load_video_model(tmp_path / "model.safetensors")
    baseline = load_video_model("none", model="lss-tiny", pretrained=None, seed=0)
    videos = load_dataset("synthetic", synth_dataset, "test")
    f = {name: extract_features(m, videos, Views(num_frames=4), num_workers=0).feats
         for name, m in (("ckpt", from_ckpt), ("export", from_export), ("baseline", baseline))}
    torch.testing.assert_close(f["export"], f["ckpt"], atol=0, rtol=0)
    assert (f["ckpt"] - f["baseline"]).abs().max() > 1e-4  # training changed the teacher: the test can fail
    for name in ("logit_scale", "text_projection"):
        assert torch.equal(getattr(from_export.clip.model, name), getattr(from_ckpt.clip.model, name))
    assert (from_export.clip.mean, from_export.clip.image_size) == (from_ckpt.clip.mean, from_ckpt.clip.image_size)
    results = {}
    for name, source in (("ckpt", tmp_path / "train"), ("export", tmp_path / "model.safetensors")):
        cfg = EvalConfig(dataset="synthetic", root=str(synth_dataset), checkpoint=str(source), num_frames=4,
                         num_workers=0, cache_dir=str(tmp_path / "cache"), device="cpu")
        results[name] = evaluate(cfg, "zero-shot", output_dir=tmp_path / f"eval-{name}")
    assert results["export"]["splits"][0]["predictions"] == results["ckpt"]["splits"][0]["predictions"]
    assert results["export"]["model_id"] != results["ckpt"]["model_id"]
    _check_training_starts_from(train_cfg, tmp_path / "model.safetensors", from_export)


def _check_training_starts_from(cfg: TrainConfig, export: Path, exported) -> None:
    """model.init: a new run's student and teacher start as the exported teacher; a model trained
    against other CLIP weights is refused (its concept space is not the run's)."""
    import dataclasses

    from lss_cli.errors import ConfigError
    from lss_cli.models.clip import load_clip
    from lss_cli.train.build import build_components, load_clip_and_bank

    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, init=str(export)))
    clip, bank = load_clip_and_bank(cfg)
    c = build_components(cfg, clip, bank, torch.device("cpu"), iters_per_epoch=1)
    for name, value in exported.encoder.state_dict().items():
        assert torch.equal(c.student_raw.state_dict()[name], value), name
        assert torch.equal(c.teacher.state_dict()[name], value), name
    assert "started from" in c.header["model"]
    with pytest.raises(ConfigError, match="was trained from"):
        build_components(cfg, load_clip(cfg.model.name, None, seed=1), bank, torch.device("cpu"), iters_per_epoch=1)


def test_not_an_export_is_an_input_error(tmp_path):
    from lss_cli.errors import InputFileError

    bad = tmp_path / "model.safetensors"
    bad.write_bytes(b"garbage")
    with pytest.raises(InputFileError, match="not a readable safetensors"):
        load_video_model(bad)
    with pytest.raises(InputFileError, match="model not found"):
        load_video_model(tmp_path / "nothing-here")


def test_unlabelled_eval_list_is_refused(tmp_path, synth_dataset):
    from lss_cli.errors import ConfigError

    lines = [ln.rsplit(" ", 1)[0] for ln in (synth_dataset / "test.txt").read_text().splitlines()]
    (tmp_path / "unlabelled.txt").write_text("\n".join(lines) + "\n")
    (tmp_path / "classes.txt").write_text((synth_dataset / "classes.txt").read_text())
    cfg = EvalConfig(dataset="list", root=str(synth_dataset), list_file=str(tmp_path / "unlabelled.txt"),
                     checkpoint="none", model="lss-tiny", pretrained=None, device="cpu",
                     cache_dir=str(tmp_path / "cache"))
    with pytest.raises(ConfigError, match="no label"):
        evaluate(cfg, "zero-shot", output_dir=tmp_path / "run")


@pytest.mark.slow
def test_torchrun_eval_shards_and_reports_once(zs, tmp_path):
    import subprocess
    import sys

    lines = zs["list"].read_text().splitlines()
    (tmp_path / "five.txt").write_text("\n".join(lines[:3] + lines[12:14]) + "\n")  # an odd count: uneven shards
    args = ["eval", "zero-shot", "--dataset", "list", "--list-file", str(tmp_path / "five.txt"), "--root",
            str(zs["root"]), "--checkpoint", "none", "--model", "lss-tiny", "--pretrained", str(zs["weights"]),
            "--device", "cpu", "--num-frames", "2", "num_workers=0"]
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "-m", "lss_cli", *args,
                        "--output-dir", str(tmp_path / "ddp"), f"cache_dir={tmp_path / 'cache'}"],
                       capture_output=True, text=True, timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("results: ") == 1  # rank 0 alone reports and writes
    ddp = json.loads((tmp_path / "ddp" / "results.json").read_text())
    cfg = EvalConfig(dataset="list", root=str(zs["root"]), list_file=str(tmp_path / "five.txt"), checkpoint="none",
                     model="lss-tiny", pretrained=str(zs["weights"]), num_frames=2, num_workers=0, device="cpu",
                     cache_dir=str(tmp_path / "cache1"))
    single = evaluate(cfg, "zero-shot", output_dir=tmp_path / "single")
    assert ddp["environment"]["world_size"] == 2 and ddp["splits"][0]["videos_evaluated"] == 5
    assert ddp["splits"][0]["predictions"] == single["splits"][0]["predictions"]
    cache = extract_features(load_video_model("none", model="lss-tiny", pretrained=str(zs["weights"])),
                             load_dataset("list", zs["root"], "test", tmp_path / "five.txt"), Views(num_frames=2),
                             cache_dir=tmp_path / "cache", num_workers=0)
    assert cache.decoded == 0  # the gathered features were all cached by rank 0: none duplicated or lost
    assert not list((tmp_path / "cache").glob("*.partial.*"))  # the ranks' partial files were merged and removed
