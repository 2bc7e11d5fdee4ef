"""`lss predict`: the documented JSON, probabilities equal to an independent open_clip computation,
unreadable and missing videos."""

from __future__ import annotations

import json

import pytest
import torch
from clip_reference import shipped_templates
from conftest import run_lss

from lss_cli.errors import ConfigError, InputFileError
from lss_cli.labels import LabelSet, parse_label_arg
from lss_cli.predict import predict


def test_predict_json_is_the_documented_format_and_equals_the_reference(zs, tmp_path):
    videos = [zs["root"] / zs["videos"][i] for i in (0, 7, 13)]  # two square clips and a tall one
    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(zs["classes"]) + "\n")
    r = run_lss("predict", *videos, "--labels", labels, "--model", "lss-tiny", "--pretrained", zs["weights"],
                "--num-frames", "3", "--top-k", "10", "--device", "cpu", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert [o["video"] for o in out] == [str(v) for v in videos]  # one entry per video, in the order given
    ref = zs["ref"]
    classifier = ref.classifier(zs["classes"], shipped_templates())
    for entry, video in zip(out, videos, strict=True):
        assert set(entry) == {"video", "predictions"}
        preds = entry["predictions"]
        assert all(set(p) == {"label", "prob"} for p in preds)
        assert sorted(p["label"] for p in preds) == sorted(zs["classes"])  # --top-k above K: every label
        probs = [p["prob"] for p in preds]
        assert probs == sorted(probs, reverse=True) and sum(probs) == pytest.approx(1.0, abs=1e-6)
        expected = ref.probs(video, classifier, num_frames=3)  # [K]
        got = torch.tensor([next(p["prob"] for p in preds if p["label"] == c) for c in zs["classes"]])
        torch.testing.assert_close(got, expected.float(), atol=1e-4, rtol=0)


def test_unreadable_video_exits_1_after_ranking_the_others(zs, tmp_path):
    good = zs["root"] / zs["videos"][0]
    empty, text = tmp_path / "empty.mp4", tmp_path / "notes.mp4"
    empty.write_bytes(b"")
    text.write_text("not a video\n" * 10)
    r = run_lss("predict", good, empty, text, "--labels", "moving left,moving right,growing", "--model", "lss-tiny",
                "--pretrained", "none", "--top-k", "2", "--device", "cpu")
    assert r.returncode == 1
    assert "2 video(s) could not be read" in r.stderr and str(empty) in r.stderr and str(text) in r.stderr
    lines = r.stdout.splitlines()
    at = lines.index(str(good))
    assert len([ln for ln in lines[at + 1:at + 3] if ln.strip().endswith(("left", "right", "growing"))]) == 2
    assert "unreadable: empty file (0 bytes)" in r.stdout


def test_bad_requests_fail_before_loading_a_model(zs, tmp_path):
    labels = parse_label_arg("a,b,c")
    good = str(zs["root"] / zs["videos"][0])
    with pytest.raises(InputFileError, match="video not found"):
        predict([good, str(tmp_path / "missing.mp4")], labels, model="lss-tiny", pretrained=None)
    with pytest.raises(ConfigError, match="--top-k"):
        predict([good], labels, top_k=0, model="lss-tiny", pretrained=None)
    with pytest.raises(ConfigError, match="at least 2 label"):
        predict([good], LabelSet("inline", ("only one",), "inline"), model="lss-tiny", pretrained=None)


def test_predict_library_keeps_order_and_marks_unreadable(zs, tmp_path):
    bad = tmp_path / "bad.mp4"
    bad.write_text("x")
    videos = [str(bad), str(zs["root"] / zs["videos"][3])]
    out = predict(videos, parse_label_arg(",".join(zs["classes"])), model="lss-tiny", pretrained=str(zs["weights"]),
                  num_frames=3, top_k=2, device="cpu")
    assert [o["video"] for o in out] == videos
    assert out[0]["predictions"] == [] and out[0]["error"]
    assert len(out[1]["predictions"]) == 2 and out[1]["predictions"][0]["prob"] >= out[1]["predictions"][1]["prob"]
