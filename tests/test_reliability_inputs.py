"""Issue 13, inputs a user or a server can get wrong: a 200 reply that is not JSON, a BOM or a
non-UTF-8 encoding in any text file the package reads, non-finite or absurd config values, and the
describe lock reached through a symlink. Each is an anticipated error naming the thing, never a crash."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import run_lss
from fake_llm import FakeLLM, Ok, Raw

from lss_cli.concepts.inputs import read_text_list
from lss_cli.concepts.templates import load_templates
from lss_cli.config import DescribeConfig, EvalConfig, TrainConfig, load_config, read_yaml
from lss_cli.data.datasets import (
    load_dataset,
    read_classes,
    read_hmdb51_split_file,
    read_kinetics_csv,
    read_list,
    read_ucf101_classind,
)
from lss_cli.describe.records import read_records, read_state
from lss_cli.describe.run import _exclusive, run_describe
from lss_cli.errors import ConfigError, InputFileError, LssError
from lss_cli.eval.pairs import read_pairs
from lss_cli.labels import load_label_set

BOM = "\ufeff".encode()


def describe_cfg(tmp_path: Path, names: list[str], server: FakeLLM, **kw) -> DescribeConfig:
    """Tiny timeouts and backoff, so retries cost milliseconds."""
    labels = tmp_path / "labels.txt"
    if not labels.exists():
        labels.write_text("\n".join(names) + "\n")
    base = dict(labels=str(labels), out=str(tmp_path / "d.jsonl"), per_class=3, base_url=server.base_url,
                timeout=5.0, retry_base_delay=0.01, retry_max_delay=0.05, concurrency=2, max_retries=3,
                max_reasks=0)
    return DescribeConfig(**{**base, **kw})


# --------------------------------------------------------------------------------------------
# 1. A reply with HTTP 200 whose body is not JSON
# --------------------------------------------------------------------------------------------


def test_describe_a_200_reply_that_is_not_json_fails_only_its_class(tmp_path):
    page = b"<html><body>502 Bad Gateway</body></html>"
    script = {
        "flaky": [Raw(page), Ok()],  # retried like any transient failure, then answered
        "broken": [Raw(page)] * 4,  # never JSON: a failure of this class only
        "plain": [Raw(b"upstream overloaded", content_type="text/plain")] * 4,
        "empty": [Raw(b"")] * 4,
    }
    names = ["a", "flaky", "broken", "plain", "empty", "z"]
    with FakeLLM(per_class=3, script=script) as server:
        cfg = describe_cfg(tmp_path, names, server)
        r = run_lss("describe", "--labels", cfg.labels, "--out", cfg.out, "--per-class", "3", "--base-url",
                    cfg.base_url, "--timeout", "5", "--concurrency", "2", "--max-retries", "3", "--max-reasks", "0",
                    "retry_base_delay=0.01", "retry_max_delay=0.05", "--json", timeout=120)
        calls = {c: server.calls_for(c) for c in names}
    assert r.returncode == 1, r.stderr
    assert "probably a bug" not in r.stderr and "Traceback" not in r.stderr
    assert calls == {"a": 1, "flaky": 2, "broken": 4, "plain": 4, "empty": 4, "z": 1}  # every class was asked
    # The message names the class and quotes what the server sent.
    err = " ".join(r.stderr.split())  # the terminal may wrap long lines
    for category, sent in (("broken", "'<html><body>502 Bad Gateway</body></html>'"),
                           ("plain", "'upstream overloaded'"), ("empty", "an empty body")):
        assert (f"{category!r} failed: the server answered with a success status but its body is not a JSON "
                f"object: {sent} (gave up after 4 requests)") in err
    summary = json.loads(r.stdout)
    assert (summary["done"], sorted(summary["failed"]), summary["not_attempted"]) == (3, ["broken", "empty", "plain"], 0)
    state = read_state(tmp_path / "d.jsonl")
    assert sorted(state.records) == ["a", "flaky", "z"] and sorted(state.failed) == ["broken", "empty", "plain"]

    with FakeLLM(per_class=3) as server:  # the rerun asks only the failed classes, and finishes
        s = run_describe(describe_cfg(tmp_path, names, server))
        assert sorted(server.categories()) == ["broken", "empty", "plain"]
    assert (s.done, s.failed, s.fatal) == (3, {}, None)


# --------------------------------------------------------------------------------------------
# 2 and 3. Every text file: a leading BOM is dropped; another encoding names the file and byte
# --------------------------------------------------------------------------------------------


# name -> (file name, UTF-8 content, reader, what the reader gives for that content)
READERS: dict[str, tuple[str, str, Callable[[Path], object], object]] = {
    "label file": ("labels.txt", "jumping\nrunning\n", lambda p: load_label_set(p).names, ("jumping", "running")),
    "classes file": ("classes.txt", "jumping\nrunning\n", read_classes, ("jumping", "running")),
    "video list": ("train.txt", "v1.mp4 0\nv2.mp4 1\n", read_list, (["v1.mp4", "v2.mp4"], [0, 1])),
    "csv video list": ("train.csv", "path,label\nv1.mp4,0\n", read_list, (["v1.mp4"], [0])),
    "kinetics csv": ("val.csv", "label,youtube_id,time_start,time_end,split\njumping,abc,1,11,val\n",
                     read_kinetics_csv, [(2, "jumping", "abc_000001_000011.mp4", "val")]),
    "ucf101 classInd": ("classInd.txt", "1 ApplyEyeMakeup\n2 Archery\n", read_ucf101_classind,
                        {1: "ApplyEyeMakeup", 2: "Archery"}),
    "hmdb51 split file": ("brush_hair_test_split1.txt", "a.avi 1\nb.avi 2\n", read_hmdb51_split_file, [("a.avi", 1), ("b.avi", 2)]),
    "pairs file": ("pairs.txt", "moving left\tmoving right\n", lambda p: read_pairs(p).pairs,
                   (("moving left", "moving right"),)),
    "extra words": ("words.txt", "juggling\n", lambda p: read_text_list(p, "extra words"), ["juggling"]),
    "config": ("train.yaml", "optim:\n  epochs: 3\n", read_yaml, {"optim": {"epochs": 3}}),
    "template file": ("t.yaml", "name: t\nversion: 1\ntemplates: ['a video of {}.']\n",
                      lambda p: load_templates(p).templates, ("a video of {}.",)),
    "descriptions": ("d.jsonl", json.dumps({"category": "jumping", "descriptions": ["Legs push off."],
                                            "model": "hand-written"}) + "\n",
                     lambda p: [(r.category, r.descriptions) for r in read_records(p)[0]],
                     [("jumping", ["Legs push off."])]),
}


@pytest.mark.parametrize("kind", list(READERS))
def test_every_text_file_reader_drops_a_leading_bom(tmp_path, kind):
    name, text, reader, expected = READERS[kind]
    path = tmp_path / name
    path.write_bytes(text.encode())
    plain = reader(path)
    path.write_bytes(BOM + text.encode())
    assert reader(path) == plain == expected


# The text files a user names, written in Latin-1 ("café", 0xe9 at offset 3 of the first line).
NOT_UTF8 = [k for k in READERS if k not in ("descriptions", "kinetics csv", "csv video list")]


@pytest.mark.parametrize("kind", NOT_UTF8)
def test_every_text_file_reader_names_a_non_utf8_file_and_the_byte(tmp_path, kind):
    name, text, reader, _ = READERS[kind]
    path = tmp_path / name
    path.write_bytes(text.replace(text[:3], "caf\u00e9", 1).encode("latin-1"))
    with pytest.raises(InputFileError) as e:
        reader(path)
    assert str(path) in e.value.message and "not UTF-8" in e.value.message
    assert "byte 0xe9 at offset 3 (line 1)" in e.value.message and "UTF-8" in e.value.hint


@pytest.mark.parametrize("kind", ["kinetics csv", "csv video list"])
def test_csv_lists_too_refuse_other_encodings(tmp_path, kind):
    name, text, reader, _ = READERS[kind]
    path = tmp_path / name
    path.write_bytes(text.encode() + "caf\u00e9.mp4,0\n".encode("latin-1"))
    with pytest.raises(InputFileError, match=r"not UTF-8 text: byte 0xe9 at offset \d+ \(line 3\)"):
        reader(path)


def test_a_utf16_file_is_named_as_such(tmp_path):
    path = tmp_path / "labels.txt"
    path.write_text("jumping\n", encoding="utf-16")  # with its BOM, as Windows Notepad's "Unicode"
    with pytest.raises(InputFileError, match="labels.txt is UTF-16 text, not UTF-8"):
        load_label_set(path)


def test_a_bom_never_reaches_the_llm_or_the_first_video(tmp_path):
    labels = tmp_path / "labels.txt"
    labels.write_bytes(BOM + b"jumping\r\nrunning\r\n")  # as Windows Notepad saves UTF-8
    with FakeLLM(per_class=3) as server:
        s = run_describe(describe_cfg(tmp_path, [], server))
        assert sorted(server.categories()) == ["jumping", "running"]
    assert s.done == 2 and sorted(r.category for r in read_records(tmp_path / "d.jsonl")[0]) == ["jumping", "running"]

    root = tmp_path / "videos"
    root.mkdir()
    (root / "v1.mp4").write_bytes(b"")
    (root / "classes.txt").write_bytes(BOM + b"jumping\n")
    (root / "train.txt").write_bytes(BOM + b"v1.mp4 0\n")
    videos = load_dataset("list", root, "train")
    assert videos.classes == ("jumping",) and Path(videos.path(0)).is_file()


def test_cli_names_a_non_utf8_config_or_label_file_with_exit_2(tmp_path):
    config = tmp_path / "train.yaml"
    config.write_bytes("run:\n  name: caf\u00e9\n".encode("latin-1"))
    r = run_lss("config", "show", str(config))
    assert r.returncode == 2, r.stderr
    assert "probably a bug" not in r.stderr and f"config file {config} is not UTF-8" in r.stderr
    assert "offset 16 (line 2)" in r.stderr and "save it as UTF-8" in r.stderr

    labels = tmp_path / "labels.txt"
    labels.write_bytes("caf\u00e9\n".encode("latin-1"))
    r = run_lss("describe", "--labels", str(labels), "--base-url", "http://127.0.0.1:9/v1", "--dry-run")
    assert r.returncode == 2, r.stderr
    assert "probably a bug" not in r.stderr and f"label file {labels} is not UTF-8" in r.stderr


# --------------------------------------------------------------------------------------------
# 4. Non-finite floats and absurd counts in a config
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("cls", "override", "message"), [
    (TrainConfig, "optim.lr=inf", "optim.lr: inf is not a finite number"),
    (TrainConfig, "optim.lr=.inf", "optim.lr: inf is not a finite number"),
    (TrainConfig, "optim.lr=1e999", "optim.lr: inf is not a finite number"),
    (TrainConfig, "optim.lr=nan", "optim.lr: nan is not a finite number"),
    (TrainConfig, "loss.w_u=-.inf", "loss.w_u: -inf is not a finite number"),
    (TrainConfig, "optim.clip_grad=inf", "optim.clip_grad: inf is not a finite number"),
    (TrainConfig, "data.decode_timeout=inf", "data.decode_timeout: inf is not a finite number"),
    (TrainConfig, "views.global_scale=[0.4, .inf]", r"views.global_scale\[1\]: inf is not a finite number"),
    (TrainConfig, "optim.lr=1" + "0" * 400, "optim.lr: .* is too large for a number"),
    (TrainConfig, "optim.epochs=1000000000", r"optim.epochs: 1,000,000,000 is more than .* \(at most 10,000 epochs\)"),
    (TrainConfig, "optim.warmup_epochs=1e9", r"optim.warmup_epochs: .* \(at most 10,000 epochs\)"),
    (TrainConfig, "loss.warmup_teacher_temp_epochs=100000", r"at most 10,000 epochs"),
    (TrainConfig, "views.global_frames=100000", r"views.global_frames: .* \(at most 1,024 frames\)"),
    (TrainConfig, "views.local_frames=[8, 100000]", r"views.local_frames: .* \(at most 1,024 frames\)"),
    (TrainConfig, "model.num_frames=100000", r"model.num_frames: .* \(at most 1,024 frames\)"),
    (TrainConfig, "views.local_views=1000", r"views.local_views: .* \(at most 64 views\)"),
    (TrainConfig, "views.global_size=100000", r"views.global_size: .* \(at most 4,096 pixels\)"),
    (TrainConfig, "data.batch_size=10000000", r"data.batch_size: .* \(at most 65,536 clips per batch\)"),
    (TrainConfig, "optim.global_batch=1073741824", r"optim.global_batch: .* \(at most 65,536 clips per step\)"),
    (TrainConfig, "data.num_workers=100000", r"data.num_workers: .* \(at most 1,024 workers\)"),
    (TrainConfig, "run.seed=" + str(2**64), r"run.seed: must be in \[0, 4294967295\]"),
    (DescribeConfig, "timeout=inf", "timeout: inf is not a finite number"),
    (DescribeConfig, "retry_max_delay=1e12", r"retry_max_delay: .* \(at most 86,400.0 seconds\)"),
    (DescribeConfig, "concurrency=1000000", r"concurrency: .* \(at most 1,024 requests in flight\)"),
    (DescribeConfig, "per_class=1000000", r"per_class: .* \(at most 1,000 descriptions per class\)"),
    (EvalConfig, "num_frames=1000000", r"num_frames: .* \(at most 1,024 frames\)"),
    (EvalConfig, "num_clips=1000000", r"num_clips: .* \(at most 64 views\)"),
    (EvalConfig, "batch_size=1000000000", r"batch_size: .* \(at most 65,536 clips per batch\)"),
])
def test_config_refuses_non_finite_and_absurd_values_naming_the_key(cls, override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(cls, None, [override])


def test_config_bounds_leave_real_runs_alone(tmp_path):
    cfg = load_config(TrainConfig, None, ["optim.epochs=300", "optim.lr=1e-4", "data.batch_size=256",
                                          "views.local_frames=[16, 8]", "views.local_views=2",
                                          "optim.global_batch=4096", "run.seed=4294967295"])
    assert (cfg.optim.epochs, cfg.optim.lr, cfg.views.local_frames) == (300, 1e-4, [16, 8])


def test_cli_refuses_an_absurd_override_with_exit_2():
    r = run_lss("config", "show", "optim.epochs=1000000000")
    assert r.returncode == 2, r.stderr
    assert "optim.epochs" in r.stderr and "at most 10,000 epochs" in r.stderr and "probably a bug" not in r.stderr
    r = run_lss("config", "show", "--for", "describe", "timeout=.inf")
    assert r.returncode == 2 and "timeout: inf is not a finite number" in r.stderr


# --------------------------------------------------------------------------------------------
# 5. The describe lock through a symlinked --out
# --------------------------------------------------------------------------------------------


def test_describe_lock_holds_through_a_symlink_or_a_linked_folder(tmp_path):
    real = tmp_path / "real" / "d.jsonl"
    real.parent.mkdir()
    real.write_text("")
    link = tmp_path / "link.jsonl"
    link.symlink_to(real)
    (tmp_path / "alias").symlink_to(real.parent, target_is_directory=True)
    other_names = [link, tmp_path / "alias" / "d.jsonl", real.parent / ".." / "real" / "d.jsonl"]
    with FakeLLM(per_class=3) as server:
        with _exclusive(real):  # as if a run on the real path were going on
            for out in other_names:
                with pytest.raises(LssError, match="another `lss describe` is writing"):
                    run_describe(describe_cfg(tmp_path, ["a"], server, out=str(out)))
        with _exclusive(link):  # and the other way round
            with pytest.raises(LssError, match="another `lss describe` is writing"):
                run_describe(describe_cfg(tmp_path, ["a"], server, out=str(real)))
        assert server.requests == []  # nothing paid for twice
        assert run_describe(describe_cfg(tmp_path, ["a"], server, out=str(link))).done == 1
    assert link.is_symlink() and [r.category for r in read_records(real)[0]] == ["a"]


def test_describe_out_in_a_symlink_loop_is_an_input_error(tmp_path):
    loop = tmp_path / "loop.jsonl"
    loop.symlink_to(loop)
    with FakeLLM(per_class=3) as server:
        with pytest.raises(InputFileError, match="loop.jsonl: its path cannot be resolved"):
            run_describe(describe_cfg(tmp_path, ["a"], server, out=str(loop)))
        assert server.requests == []
