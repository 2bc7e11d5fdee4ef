"""`lss data check` and `lss data prepare`: the real CLI on real files."""

from __future__ import annotations

import json
import os
import shutil

import pytest
import torch
from conftest import BAD, run_lss

from lss_cli.data.check import check_videos
from lss_cli.data.datasets import load_dataset
from lss_cli.data.prepare import prepare_lists
from lss_cli.data.video_io import check_video, encode_video
from lss_cli.errors import ConfigError


def test_check_lists_exactly_the_four_bad_files(bad_dataset, tmp_path):
    report = tmp_path / "report.tsv"
    r = run_lss("data", "check", bad_dataset / "train.txt", "--root", bad_dataset, "--workers", "2",
                "--report", report, "--json", timeout=120)
    assert r.returncode == 1, r.stderr
    assert "4 of 16 videos are unreadable" in r.stderr and "Hint:" in r.stderr
    result = json.loads(r.stdout)
    expected = {os.path.join(str(bad_dataset), p) for p in BAD}
    assert {row["path"] for row in result["bad"]} == expected and result["checked"] == 16
    lines = report.read_text().splitlines()
    assert lines[0] == "path\treason" and {line.split("\t")[0] for line in lines[1:]} == expected
    reasons = dict(line.split("\t") for line in lines[1:])
    assert reasons[os.path.join(str(bad_dataset), "bad/missing.mp4")] == "missing file"
    assert reasons[os.path.join(str(bad_dataset), "bad/zero.mp4")] == "empty file (0 bytes)"
    assert "Invalid data" in reasons[os.path.join(str(bad_dataset), "bad/text.mp4")]


def test_check_passes_a_clean_list(synth_dataset):
    videos = load_dataset("synthetic", synth_dataset, "train")
    assert check_videos(videos, workers=1) == []
    with pytest.raises(ConfigError):
        check_videos(videos, workers=0)


def test_check_flags_a_file_whose_header_promises_missing_frames(tmp_path):
    frames = torch.randint(0, 255, (40, 3, 32, 48), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    encode_video(frames, tmp_path / "full.avi", fps=10)
    assert check_video(tmp_path / "full.avi") is None
    data = (tmp_path / "full.avi").read_bytes()
    (tmp_path / "cut.avi").write_bytes(data[: len(data) // 2])
    reason = check_video(tmp_path / "cut.avi")
    assert reason is not None and reason.startswith("truncated: the header lists 40 frames")


def test_prepare_hmdb51_round_trips_and_reports_missing(tmp_path):
    root = tmp_path / "hmdb"
    test1 = load_dataset("hmdb51", root, "test1")
    for i in (0, 5):  # two videos on disk, the rest missing
        os.makedirs(os.path.dirname(test1.path(i)), exist_ok=True)
        open(test1.path(i), "wb").close()
    out = tmp_path / "lists"
    summary = prepare_lists("hmdb51", root, out)
    rows = {os.path.basename(r["list"]): r for r in summary["lists"]}
    assert set(rows) == {f"{p}{k}.txt" for p in ("train", "test") for k in (1, 2, 3)}
    assert rows["test1.txt"] == {"list": str(out / "test1.txt"), "videos": 1530, "missing": 1528, "written": 1530}
    assert rows["train2.txt"]["videos"] == 3570
    back = load_dataset("list", root, "any", list_file=out / "test1.txt")
    assert back.classes == test1.classes and back.labels.tolist() == test1.labels.tolist()
    assert [back.relpath(i) for i in range(len(back))] == [test1.relpath(i) for i in range(len(test1))]
    missing = (out / "missing.txt").read_text().splitlines()
    assert missing[0] == "list\tpath" and f"test1.txt\t{test1.relpath(1)}" in missing
    assert summary["missing"] == len(missing) - 1
    dropped = prepare_lists("hmdb51", root, out, drop_missing=True)
    assert [r["written"] for r in dropped["lists"] if r["list"].endswith("test1.txt")] == [2]
    assert load_dataset("list", root, "x", list_file=out / "test1.txt").labels.tolist() == [test1.label(0), test1.label(5)]


def test_prepare_cli_kinetics_and_refuses_a_full_folder(tmp_path):
    root = tmp_path / "k400"
    (root / "annotations").mkdir(parents=True)
    (root / "annotations" / "val.csv").write_text(
        "label,youtube_id,time_start,time_end,split\nabseiling,aaa,1,11,val\nzumba,bbb,5,15,val\n")
    (root / "val").mkdir()
    (root / "val" / "aaa_000001_000011.mp4").write_bytes(b"x")
    out = tmp_path / "out"
    r = run_lss("data", "prepare", "kinetics400", "--root", root, "--out", out, "--json")
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary["lists"] == [{"list": str(out / "val.txt"), "videos": 2, "missing": 1, "written": 2}]
    assert (out / "val.txt").read_text() == "val/aaa_000001_000011.mp4 0\nval/bbb_000005_000015.mp4 399\n"
    assert len((out / "classes.txt").read_text().splitlines()) == 400
    r = run_lss("data", "prepare", "kinetics400", "--root", root, "--out", out)
    assert r.returncode == 2 and "not empty" in r.stderr
    shutil.rmtree(out)
    r = run_lss("data", "prepare", "folder", "--root", root, "--out", out)
    assert r.returncode == 2 and "cannot prepare 'folder'" in r.stderr
