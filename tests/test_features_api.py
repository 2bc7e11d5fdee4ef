"""`lss features` (a list's features to safetensors, from the eval cache) and the Python API
(`lss_cli.api`): the same numbers as `lss eval` / `lss predict`, and the shipped example runs."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from conftest import ROOT, run_lss

from lss_cli.api import encode_video, load_features, load_video_model, zero_shot_scores
from lss_cli.config import EvalConfig
from lss_cli.data.datasets import load_dataset
from lss_cli.data.video_io import decode_all
from lss_cli.eval.export_features import export_features
from lss_cli.eval.features import Views, extract_features


@pytest.fixture(scope="module")
def tiny():
    return load_video_model(None, model="lss-tiny", pretrained=None, seed=0)


def test_lss_features_writes_the_eval_features_of_a_list(synth_dataset, tmp_path):
    out, cache = tmp_path / "f.safetensors", tmp_path / "cache"
    r = run_lss("features", "--dataset", "synthetic", "--root", synth_dataset, "--model", "lss-tiny",
                "--pretrained", "none", "--kind", "proj", "--device", "cpu", f"cache_dir={cache}", "num_workers=0",
                "-o", out, "--json")
    assert r.returncode == 0, r.stderr
    data = load_features(out)
    videos = load_dataset("synthetic", synth_dataset, "test")
    n = len(videos)
    assert data["features"].shape == (n, 64) and data["features"].dtype == torch.float32  # lss-tiny: 64-d joint space
    assert data["labels"].tolist() == videos.labels.tolist() and data["ok"].all()
    meta = data["meta"]
    assert meta["paths"] == [videos.relpath(i) for i in range(n)] and meta["classes"] == list(videos.classes)
    assert meta["kind"] == "proj" and meta["views"]["num_frames"] == 8 and meta["model_id"].startswith("lss-tiny:")
    assert "view_features" not in data  # one view: `features` is it
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "f.safetensors"]  # no temp file left
    # The numbers are the evaluation's: the same cache entries lss eval would read.
    model = load_video_model(None, model="lss-tiny", pretrained=None)
    feats = extract_features(model, videos, Views(8, 1, 1), kind="proj", cache_dir=cache, num_workers=0)
    assert feats.decoded == 0  # everything came from the cache lss features filled
    torch.testing.assert_close(data["features"], feats.feats.mean(1))
    # Several views: the mean in `features`, every view in `view_features`.
    cfg = EvalConfig(dataset="synthetic", root=str(synth_dataset), model="lss-tiny", pretrained=None, num_clips=2,
                     features="pre-proj", num_workers=0, cache_dir=str(cache), device="cpu")
    summary = export_features(cfg, tmp_path / "g.safetensors", part="train")
    two = load_features(summary["out"])
    assert two["view_features"].shape[:2] == (summary["videos"], 2) and two["meta"]["part"] == "train"
    torch.testing.assert_close(two["features"], two["view_features"].mean(1))


def test_torchrun_features_are_written_once_and_equal_one_process(synth_dataset, tmp_path):
    """Under torchrun the ranks share the list and rank 0 alone writes and reports (each rank used to
    encode the whole list, write the file and print its summary)."""
    args = ["features", "--dataset", "synthetic", "--root", str(synth_dataset), "--model", "lss-tiny", "--pretrained",
            "none", "--device", "cpu", "--num-frames", "2", "num_workers=0"]
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "-m", "lss_cli", *args,
                        f"cache_dir={tmp_path / 'cache2'}", "-o", str(tmp_path / "ddp.safetensors")],
                       capture_output=True, text=True, timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("Features written") == 1, r.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache2", "ddp.safetensors"]  # no temp file left
    cfg = EvalConfig(dataset="synthetic", root=str(synth_dataset), model="lss-tiny", pretrained=None, num_frames=2,
                     num_workers=0, cache_dir=str(tmp_path / "cache1"), device="cpu")
    single = export_features(cfg, tmp_path / "one.safetensors")
    ddp, one = load_features(tmp_path / "ddp.safetensors"), load_features(single["out"])
    assert ddp["meta"] == one["meta"] and ddp["labels"].tolist() == one["labels"].tolist()
    torch.testing.assert_close(ddp["features"], one["features"])


def test_encode_video_from_a_file_or_its_frames_is_what_eval_computes(synth_dataset, tiny):
    videos = load_dataset("synthetic", synth_dataset, "test")
    path = videos.path(0)
    feats = extract_features(tiny, videos.subset([0]), Views(8, 1, 1), kind="proj", num_workers=0)
    from_file = encode_video(tiny, path)
    torch.testing.assert_close(from_file, feats.feats[0, 0])
    from_frames = encode_video(tiny, decode_all(path))  # the same sampling and preprocessing in memory
    torch.testing.assert_close(from_frames, from_file, atol=1e-5, rtol=1e-4)
    assert from_file.shape == (64,) and float(from_file.norm()) == pytest.approx(1.0, abs=1e-5)
    three = encode_video(tiny, decode_all(path), num_clips=2, num_crops=3, kind="pre-proj")
    assert three.shape == (tiny.encoder.encode(torch.zeros(1, 8, 3, 64, 64), proj=False).shape[1],)
    with pytest.raises(ValueError, match="uint8"):
        encode_video(tiny, torch.zeros(8, 3, 64, 64))


def test_zero_shot_scores_are_lss_predicts(synth_dataset, tiny):
    from lss_cli.labels import LabelSet
    from lss_cli.predict import predict

    videos = load_dataset("synthetic", synth_dataset, "test")
    names = list(videos.classes)
    probs = zero_shot_scores(tiny, encode_video(tiny, videos.path(0)), names)
    assert probs.shape == (len(names),) and float(probs.sum()) == pytest.approx(1.0, abs=1e-5)
    ranked = predict([videos.path(0)], LabelSet("mine", tuple(names), "test"), model="lss-tiny", pretrained=None,
                     device="cpu", top_k=len(names))[0]["predictions"]
    assert {p["label"]: pytest.approx(p["prob"], abs=1e-5) for p in ranked} == dict(zip(names, probs.tolist(), strict=True))
    batch = zero_shot_scores(tiny, torch.stack([encode_video(tiny, videos.path(i)) for i in range(2)]), names)
    assert batch.shape == (2, len(names))
    torch.testing.assert_close(batch[0], probs)


def test_the_python_api_example_runs(tmp_path):
    r = subprocess.run([sys.executable, str(ROOT / "examples" / "python_api.py"), str(tmp_path)], cwd=tmp_path,
                       capture_output=True, text=True, timeout=600, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert r.returncode == 0, r.stderr
    assert "feature (64,)" in r.stdout and "labels [" in r.stdout
    assert (tmp_path / "test-features.safetensors").is_file()


def test_importing_the_package_and_the_cli_stays_light():
    # `lss --help` mounts every command; none of that may import torch (the API module does, on purpose).
    code = ("import sys, lss_cli, lss_cli.cli as c; c._register(); "
            "print(sorted(m for m in ('torch', 'lss_cli.api', 'lss_cli.eval.compare') if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"
