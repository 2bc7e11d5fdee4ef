"""Issue 13, outputs: evaluation refuses to report on nothing, run dirs are unique, outputs are never
lost (folders created, unwritable ones found early, a fallback named when the disk refuses late),
every write is atomic with the umask's mode, `predict DIR`, and corrupt --pretrained files."""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import pytest
import torch
from conftest import ROOT, run_lss

import lss_cli.concepts.bank as bank_module
import lss_cli.data.check as check_module
import lss_cli.eval.results as results_module
import lss_cli.runtime.rundir as rundir
import lss_cli.runtime.tensor_io as tensor_io
from lss_cli.concepts.bank import load_concept_bank
from lss_cli.concepts.build import build_concepts
from lss_cli.config import ConceptsConfig, EvalConfig, TrainConfig, load_config
from lss_cli.data.check import run_check
from lss_cli.data.datasets import load_dataset
from lss_cli.errors import ConfigError, InputFileError, LssError
from lss_cli.eval.cache import FeatureCache
from lss_cli.eval.features import Views, extract_features
from lss_cli.eval.results import evaluate, refuse_missing_videos
from lss_cli.models.artefact import load_video_model
from lss_cli.models.clip import load_clip, save_compact, save_weights
from lss_cli.runtime.dist import DistInfo
from lss_cli.runtime.outputs import write_atomic, write_text_atomic
from lss_cli.runtime.rundir import make_run_dir
from lss_cli.runtime.tensor_io import save_safetensors
from lss_cli.train import loop

TINY = ("--model", "lss-tiny", "--pretrained", "none", "--device", "cpu")


@pytest.fixture()
def private_tmp(tmp_path, monkeypatch) -> Path:
    """The system temp dir, for fallback copies, inside this test's folder."""
    folder = tmp_path / "systmp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


@pytest.fixture()
def corrupt_weights(tmp_path) -> Path:
    path = tmp_path / "corrupt.pt"
    path.write_text("this is not a weights file\n")
    return path


def _eval_cfg(root, **kw) -> EvalConfig:
    return EvalConfig(dataset="synthetic", root=str(root), checkpoint="none", model="lss-tiny", pretrained=None,
                      num_frames=2, num_workers=0, device="cpu", **kw)


def _fail_writes_in(folder: Path, real, err: int = errno.ENOSPC):
    """`real` (a writer taking the path first), failing like a full or read-only disk inside `folder`."""
    def write(path, *args, **kw):
        if Path(path).parent.resolve() == folder.resolve():
            raise OSError(err, os.strerror(err), str(path))
        return real(path, *args, **kw)
    return write


def _saved_to(message: str) -> Path:
    found = re.search(r"saved to (\S+) instead", message)
    assert found, message
    return Path(found.group(1))


# --------------------------------------------------------------------------------------------
# 1. Evaluation of nothing: most listed videos missing stops before any model is loaded
# --------------------------------------------------------------------------------------------


def test_eval_with_a_wrong_root_stops_before_loading_a_model(synth_dataset, corrupt_weights, tmp_path):
    # The corrupt weights file would fail the model load: the missing videos must be found first.
    r = run_lss("eval", "zero-shot", "--dataset", "list", "--list-file", synth_dataset / "test.txt",
                "--root", tmp_path / "wrong-root", "--checkpoint", "none", "--model", "lss-tiny",
                "--pretrained", corrupt_weights, "--device", "cpu", "--output-dir", tmp_path / "run")
    assert r.returncode == 1, r.stderr
    assert r.stdout == ""  # no results table, no page of "missing file" lines
    assert "4 of 4 videos are missing" in r.stderr and str(tmp_path / "wrong-root") in r.stderr
    assert "--root" in r.stderr and "--list-file" in r.stderr and "unexpected" not in r.stderr
    report = tmp_path / "run" / "missing_videos.tsv"
    assert str(report) in r.stderr
    lines = report.read_text().splitlines()
    assert lines[0] == "list\tpath" and len(lines) == 5
    assert all(line.split("\t")[1].startswith(str(tmp_path / "wrong-root")) for line in lines[1:])
    assert not (tmp_path / "run" / "results.json").exists()


def test_missing_video_rule_is_more_than_half_of_a_list(synth_dataset, tmp_path):
    listed = (synth_dataset / "test.txt").read_text().splitlines()  # 4 videos
    half = tmp_path / "half.txt"
    half.write_text("\n".join(listed[:2] + ["gone/a.mp4 2", "gone/b.mp4 3"]) + "\n")
    cfg = EvalConfig(dataset="list", root=str(synth_dataset), list_file=str(half), device="cpu")
    refuse_missing_videos(cfg, "zero-shot", tmp_path, write=True)  # 2 of 4: evaluated, counted as unreadable
    assert not (tmp_path / "missing_videos.tsv").exists()
    most = tmp_path / "most.txt"
    most.write_text("\n".join(listed[:1] + ["gone/a.mp4 1", "gone/b.mp4 2", "gone/c.mp4 3"]) + "\n")
    with pytest.raises(LssError, match="3 of 4 videos are missing") as e:
        refuse_missing_videos(EvalConfig(dataset="list", root=str(synth_dataset), list_file=str(most), device="cpu"),
                              "zero-shot", tmp_path, write=True)
    assert "gone/a.mp4" in e.value.message and e.value.exit_code == 1
    assert (tmp_path / "missing_videos.tsv").read_text().count("gone/") == 3


# --------------------------------------------------------------------------------------------
# 2. Run dirs: unique within one second, one per torchrun job
# --------------------------------------------------------------------------------------------


def test_default_run_dirs_are_unique_within_one_second(tmp_path, monkeypatch):
    monkeypatch.setattr(rundir, "_timestamp", lambda: "20250101-120000")  # every run starts in the same second
    first = make_run_dir("eval-zero-shot", root=tmp_path)
    second = make_run_dir("eval-zero-shot", root=tmp_path)
    assert first.name == "20250101-120000" and second.name == "20250101-120000-2"
    got: list[Path] = []
    threads = [threading.Thread(target=lambda: got.append(make_run_dir("train", name="x", root=tmp_path)))
               for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(got)) == 8 and all(p.is_dir() for p in got)  # whatever the interleaving
    with pytest.raises(ConfigError, match="cannot resume"):
        make_run_dir("train", resume=True, root=tmp_path)
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError, match="cannot create the run dir"):
        make_run_dir("train", root=tmp_path / "file")


def test_two_evals_and_two_trainings_in_the_same_second_get_their_own_run_dirs(synth_dataset, tmp_path, monkeypatch):
    monkeypatch.setattr(rundir, "_timestamp", lambda: "20250101-120000")
    monkeypatch.chdir(tmp_path)
    a = evaluate(_eval_cfg(synth_dataset), "zero-shot")
    b = evaluate(_eval_cfg(synth_dataset), "zero-shot")
    assert a["results_file"] != b["results_file"]
    assert Path(a["results_file"]).is_file() and Path(b["results_file"]).is_file()  # neither result lost
    cfg = load_config(TrainConfig)
    assert loop._run_dir(cfg, DistInfo()) != loop._run_dir(cfg, DistInfo())


RANK_SCRIPT = """
import sys
import torch.distributed as dist
import lss_cli.runtime.rundir as rundir
from lss_cli.errors import LssError

rank, store, root, used = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
rundir._timestamp = lambda: f"stamp-of-rank-{rank}"  # each rank would name another folder
print(rundir.make_run_dir("eval-zero-shot", root=root))
try:
    rundir.make_run_dir("eval-zero-shot", used)  # a non-empty --output-dir: rank 0 refuses it
except LssError as e:
    print(type(e).__name__, e.message)
dist.destroy_process_group()
"""


def test_ranks_receive_rank_0s_run_dir_and_its_error(tmp_path):
    used = tmp_path / "used"
    used.mkdir()
    (used / "results.json").write_text("{}")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-c", RANK_SCRIPT, str(rank), str(tmp_path / "store"),
                               str(tmp_path / "runs"), str(used)], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for rank in (0, 1)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err for _, err in outs]
    expected = [str(tmp_path / "runs" / "eval-zero-shot" / "stamp-of-rank-0"), f"ConfigError run dir {used} is not empty"]
    assert [out.splitlines() for out, _ in outs] == [expected, expected]
    assert [p.name for p in (tmp_path / "runs" / "eval-zero-shot").iterdir()] == ["stamp-of-rank-0"]


# --------------------------------------------------------------------------------------------
# 3. Output paths: folders created, unwritable ones found early, late failures keep the results
# --------------------------------------------------------------------------------------------


def test_outputs_in_new_folders_are_written(synth_dataset, tmp_path):
    r = run_lss("eval", "zero-shot", "--dataset", "synthetic", "--root", synth_dataset, "--checkpoint", "none", *TINY,
                "--num-frames", "2", "num_workers=0", f"cache_dir={tmp_path / 'cache'}",
                "--out", tmp_path / "new" / "deep" / "results.json", "--output-dir", tmp_path / "run")
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "new" / "deep" / "results.json").read_text())["protocol"] == "zero-shot"
    r = run_lss("data", "check", synth_dataset / "test.txt", "--root", synth_dataset, "--workers", "1",
                "--report", tmp_path / "reports" / "sub" / "check.tsv")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "reports" / "sub" / "check.tsv").read_text().startswith("path\treason\n")


def test_unwritable_outputs_fail_before_the_work(synth_dataset, corrupt_weights, tmp_path):
    """An output folder that cannot be made (here: a file stands in its place) is a usage error
    found before any model is loaded or video decoded (the corrupt weights would fail that)."""
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    commands = {
        "eval": ["eval", "zero-shot", "--dataset", "synthetic", "--root", synth_dataset, "--checkpoint", "none",
                 "--model", "lss-tiny", "--pretrained", corrupt_weights, "--device", "cpu",
                 "--output-dir", tmp_path / "run", "--out", blocker / "results.json"],
        "data check": ["data", "check", synth_dataset / "test.txt", "--root", synth_dataset, "--report",
                       blocker / "check.tsv"],
        "build-concepts": ["build-concepts", "--labels", synth_dataset / "classes.txt", "--descriptions",
                           synth_dataset / "descriptions.jsonl", "--model", "lss-tiny", "--pretrained",
                           corrupt_weights, "--out", blocker / "bank.safetensors"],
        "pretrain-tiny": ["pretrain-tiny", "--out", blocker / "w.safetensors", "--steps", "100000"],
        "export": ["export", tmp_path / "no-such-run", "--out", blocker / "model.safetensors"],
    }
    for name, args in commands.items():
        r = run_lss(*args)
        assert r.returncode == 2, (name, r.stderr)
        assert "cannot write" in r.stderr and str(blocker) in r.stderr, (name, r.stderr)
        assert "unexpected" not in r.stderr, (name, r.stderr)


def test_results_the_disk_refuses_are_saved_in_the_run_dir_and_named(synth_dataset, tmp_path, monkeypatch):
    out_dir = tmp_path / "out"
    monkeypatch.setattr(results_module, "write_text_atomic", _fail_writes_in(out_dir, write_text_atomic))
    cfg = _eval_cfg(synth_dataset, cache_dir=str(tmp_path / "cache"), out=str(out_dir / "r.json"))
    with pytest.raises(LssError, match="No space left on device") as e:
        evaluate(cfg, "zero-shot", output_dir=tmp_path / "run")
    assert str(out_dir / "r.json") in e.value.message and "disk space" in e.value.hint
    saved = _saved_to(e.value.message)
    assert saved == tmp_path / "run" / "r.json"
    assert json.loads(saved.read_text())["splits"][0]["videos_listed"] == 4


def test_results_go_to_a_temp_folder_when_the_run_dir_refuses_too(synth_dataset, tmp_path, monkeypatch, private_tmp):
    out_dir = tmp_path / "out"  # --out alone: its folder is the run dir, so the fallback is a temp folder
    monkeypatch.setattr(results_module, "write_text_atomic",
                        _fail_writes_in(out_dir, write_text_atomic, errno.EACCES))
    cfg = _eval_cfg(synth_dataset, cache_dir=str(tmp_path / "cache"), out=str(out_dir / "r.json"))
    with pytest.raises(LssError, match="Permission denied") as e:
        evaluate(cfg, "zero-shot")
    saved = _saved_to(e.value.message)
    assert saved.parent.parent == private_tmp and "a folder you can write to" in e.value.hint
    assert json.loads(saved.read_text())["protocol"] == "zero-shot"


def test_a_report_and_a_bank_the_disk_refuses_are_kept(synth_dataset, tmp_path, monkeypatch, private_tmp):
    reports = tmp_path / "reports"
    monkeypatch.setattr(check_module, "write_text_atomic", _fail_writes_in(reports, write_text_atomic))
    with pytest.raises(LssError, match="cannot write the report") as e:
        run_check(synth_dataset / "test.txt", synth_dataset, workers=1, report=reports / "check.tsv")
    assert _saved_to(e.value.message).read_text().startswith("path\treason\n")

    banks = tmp_path / "banks"
    monkeypatch.setattr(bank_module, "save_safetensors", _fail_writes_in(banks, save_safetensors, errno.EROFS))
    cfg = ConceptsConfig(labels=str(synth_dataset / "classes.txt"), descriptions=str(synth_dataset / "descriptions.jsonl"),
                         model="lss-tiny", pretrained="none", device="cpu", out=str(banks / "bank.safetensors"))
    with pytest.raises(LssError, match="Read-only file system") as e:
        build_concepts(cfg)
    assert load_concept_bank(_saved_to(e.value.message)).K == 4


def test_a_feature_cache_the_disk_refuses_is_a_warning(synth_dataset, tmp_path, monkeypatch, capsys):
    def full(self, path, videos):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(FeatureCache, "_write", full)
    model = load_video_model("none", model="lss-tiny", pretrained=None)
    videos = load_dataset("synthetic", synth_dataset, "test")
    feats = extract_features(model, videos, Views(num_frames=2), cache_dir=tmp_path / "cache", num_workers=0)
    assert bool(feats.ok.all()) and feats.feats.shape[0] == len(videos)  # the features are not lost
    assert "could not write the feature cache" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------
# 4. Atomic writes with the umask's mode
# --------------------------------------------------------------------------------------------


def test_every_output_file_honours_the_umask(synth_dataset, tiny_clip, tmp_path):
    previous = os.umask(0o027)
    try:
        build_concepts(ConceptsConfig(labels=str(synth_dataset / "classes.txt"), model="lss-tiny", pretrained="none",
                                      descriptions=str(synth_dataset / "descriptions.jsonl"), device="cpu",
                                      out=str(tmp_path / "bank.safetensors")))
        save_weights(tiny_clip.model, tmp_path / "weights.safetensors")
        save_compact(tiny_clip.model, tmp_path / "compact.safetensors", {"what": "test"})
        cache = FeatureCache(tmp_path / "cache", {"model": "m"})
        cache.add("/v/a.mp4", torch.zeros(1, 4), True, "")
        cache.save()
        write_text_atomic(tmp_path / "notes.txt", "text\n")
    finally:
        os.umask(previous)
    files = [tmp_path / "bank.safetensors", tmp_path / "weights.safetensors", tmp_path / "compact.safetensors",
             cache.path, tmp_path / "notes.txt"]
    assert {f.name: oct(f.stat().st_mode & 0o777) for f in files} == {f.name: "0o640" for f in files}


def test_safetensors_are_written_only_through_the_atomic_helper():
    """Every safetensors output (bank, export, weights, feature cache, checkpoints) goes through
    `save_safetensors`: atomic, with the umask's mode."""
    callers = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "lss_cli").rglob("*.py")
                     if "save_file(" in p.read_text() and p.name != "tensor_io.py")
    assert callers == []


def test_a_failed_write_leaves_the_old_file_and_no_temp_file(tmp_path, monkeypatch):
    target = tmp_path / "out.txt"
    target.write_text("old\n")

    def half_then_crash(f):
        f.write(b"half")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError):
        write_atomic(target, half_then_crash)

    def crash(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(tensor_io, "save_file", crash)
    with pytest.raises(OSError):
        save_safetensors(tmp_path / "w.safetensors", {"a": torch.zeros(2)})
    assert target.read_text() == "old\n" and sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]


# --------------------------------------------------------------------------------------------
# 5. `lss predict DIR`
# --------------------------------------------------------------------------------------------


def test_predict_a_folder_classifies_its_videos_in_name_order(synth_dataset, tmp_path):
    clips = tmp_path / "clips"
    clips.mkdir()
    for name, src in (("b.mp4", "moving_left_000.mp4"), ("a.MP4", "moving_left_001.mp4")):
        shutil.copy(synth_dataset / "videos" / "moving_left" / src, clips / name)
    (clips / "notes.txt").write_text("not a video\n")
    (clips / "._a.mp4").write_bytes(b"\0")  # macOS metadata beside a copied video
    (clips / "sub").mkdir()
    r = run_lss("predict", clips, "--labels", "moving left,moving right", *TINY, "--json")
    assert r.returncode == 0, r.stderr
    assert [entry["video"] for entry in json.loads(r.stdout)] == [str(clips / "a.MP4"), str(clips / "b.mp4")]
    (tmp_path / "empty").mkdir()
    r = run_lss("predict", tmp_path / "empty", "--labels", "a,b", *TINY)
    assert r.returncode == 2 and "is a folder without video files" in r.stderr and "unexpected" not in r.stderr


# --------------------------------------------------------------------------------------------
# 6. A corrupt --pretrained file is an input error naming it
# --------------------------------------------------------------------------------------------


def test_corrupt_weights_files_are_input_errors(tiny_clip, tmp_path):
    good = tmp_path / "good.safetensors"
    save_weights(tiny_clip.model, good)
    data = good.read_bytes()
    torch.save(tiny_clip.model.state_dict(), tmp_path / "good.pt")
    pt = (tmp_path / "good.pt").read_bytes()
    broken = {"text.pt": b"not weights\n" * 10, "words.pt": b"this is not a weights file\n", "empty.pt": b"", "truncated.pt": pt[: len(pt) // 2],
              "truncated.safetensors": data[: len(data) // 2], "empty.safetensors": b"",
              "foreign.safetensors": None}
    save_safetensors(tmp_path / "foreign.safetensors", {"other.weight": torch.zeros(2)})
    for name, content in broken.items():
        if content is not None:
            (tmp_path / name).write_bytes(content)
        with pytest.raises(InputFileError) as e:
            load_clip("lss-tiny", str(tmp_path / name))
        assert str(tmp_path / name) in e.value.message and e.value.hint, name
        assert len(e.value.message) < 400, name  # a line, not a page of torch.load advice


def test_corrupt_pretrained_in_the_cli_is_not_a_bug(synth_dataset, corrupt_weights):
    video = synth_dataset / "videos" / "moving_left" / "moving_left_000.mp4"
    r = run_lss("predict", video, "--labels", "a,b", "--model", "lss-tiny", "--pretrained", corrupt_weights)
    assert r.returncode == 2, r.stderr
    assert "unexpected" not in r.stderr and str(corrupt_weights) in r.stderr and "Hint:" in r.stderr
