"""`lss results compare`: runs side by side (per split, mean ± std, change against the first), in
every format; results measured differently are refused, naming the difference; the demo's table
is this table."""

from __future__ import annotations

import copy
import csv
import io
import json
import re
import shlex
from pathlib import Path

import pytest
from conftest import run_lss

from lss_cli.errors import ConfigError
from lss_cli.eval.compare import compare, find_results, text_rows, to_csv, to_latex, to_markdown


def fake_results(checkpoint: str, model_id: str, protocol: str, top1: list[float], *, dataset: str = "ucf101",
                 direction: list[float] | None = None, num_frames: int = 8) -> dict:
    """A results document shaped as `lss eval` writes it (only the fields compare reads, and a few more)."""
    names = [str(i + 1) for i in range(len(top1))] if len(top1) > 1 else ["-"]
    splits = [{"split": s, "top1": t, "top5": min(1.0, t + 0.1), "videos_listed": 10, "classes": ["a", "b", "c"],
               **({"direction_accuracy": direction[i]} if direction else {})} for i, (s, t) in enumerate(zip(names, top1, strict=True))]

    def mean_std(values):
        m = sum(values) / len(values)
        sd = (sum((v - m) ** 2 for v in values) / (len(values) - 1)) ** 0.5 if len(values) > 1 else 0.0
        return {"mean": m, "std": sd}

    summary = {"top1": mean_std(top1), "top5": mean_std([s["top5"] for s in splits])}
    if direction:
        summary["direction_accuracy"] = mean_std(direction)
    details = {"templates": {"name": "t", "sha256": "abc", "path": "/somewhere/t.yaml"}} if protocol == "zero-shot" \
        else {"features": "pre-proj", "standardize": False, "val_split": "grouped: ...", "l2_range": [1e-6, 1e6]}
    return {"protocol": protocol, "dataset": dataset, "checkpoint": checkpoint, "model_id": model_id,
            "config": {"model": "ViT-B-16"}, "views": {"num_frames": num_frames, "num_clips": 1, "num_crops": 1,
                                                       "count": 1, "image_size": 224},
            "protocol_details": details, "splits": splits, "summary": summary}


def write(path: Path, doc: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc))
    return path


CLIP = ("baseline", "ViT-B-16:weights-sha256:1")
LSS = ("runs/k400/lss.safetensors", "sha256:2")


def test_three_splits_side_by_side_with_changes_against_the_first():
    a = fake_results(*CLIP, "zero-shot", [0.60, 0.62, 0.64])
    b = fake_results(*LSS, "zero-shot", [0.70, 0.71, 0.75])
    c = compare([a, b])
    assert [r.label for r in c.runs] == ["baseline ViT-B-16", "lss.safetensors"]
    rows = text_rows(c)
    assert [r[0] for r in rows] == ["zero-shot top-1 split 1", "zero-shot top-1 split 2", "zero-shot top-1 split 3",
                                    "zero-shot top-1 mean ± std"]
    assert rows[0] == ["zero-shot top-1 split 1", "60.00", "70.00", "+10.00"]
    assert rows[3] == ["zero-shot top-1 mean ± std", "62.00 ± 2.00", "72.00 ± 2.65", "+10.00"]
    md = to_markdown(c)
    assert "| metric (%) | baseline ViT-B-16 | lss.safetensors | change |" in md
    assert "| zero-shot top-1 mean ± std | 62.00 ± 2.00 | 72.00 ± 2.65 | +10.00 |" in md
    tex = to_latex(c)
    assert r"zero-shot top-1 mean $\pm$ std & 62.00 $\pm$ 2.00 & 72.00 $\pm$ 2.65 & +10.00 \\" in tex
    assert r"metric (\%)" in tex and tex.startswith(r"\begin{tabular}{lrrr}")
    table = list(csv.DictReader(io.StringIO(to_csv(c))))
    assert table[3]["split"] == "mean" and float(table[3]["lss.safetensors"]) == pytest.approx(72.0)
    assert float(table[3]["lss.safetensors std"]) == pytest.approx(100 * b["summary"]["top1"]["std"])
    assert float(table[0]["change (lss.safetensors)"]) == pytest.approx(10.0)


def test_a_models_results_share_a_column_and_datasets_protocols_become_rows():
    docs = [fake_results(*CLIP, "linear-probe", [0.8, 0.8, 0.8]), fake_results(*CLIP, "zero-shot", [0.6, 0.6, 0.6]),
            fake_results(*CLIP, "zero-shot", [0.4, 0.4, 0.4], dataset="hmdb51"),
            fake_results(*LSS, "zero-shot", [0.7, 0.7, 0.7]), fake_results(*LSS, "linear-probe", [0.9, 0.9, 0.9])]
    c = compare(docs, labels=["CLIP", "LSS"])
    assert [r.label for r in c.runs] == ["CLIP", "LSS"]
    means = [r[0] for r in text_rows(c) if "mean" in r[0]]
    # zero-shot before linear-probe within a dataset; datasets in order of appearance, named when several
    assert means == ["ucf101 zero-shot top-1 mean ± std", "ucf101 linear-probe top-1 mean ± std",
                     "hmdb51 zero-shot top-1 mean ± std"]
    hmdb = next(r for r in text_rows(c) if r[0] == "hmdb51 zero-shot top-1 mean ± std")
    assert hmdb[1:] == ["40.00 ± 0.00", "-", "-"]  # LSS has no HMDB51 result: shown as missing
    with pytest.raises(ConfigError, match="3 label"):
        compare(docs, labels=["a", "b", "c"])


def test_different_protocols_are_refused_naming_the_difference(tmp_path):
    a = write(tmp_path / "a.json", fake_results(*CLIP, "zero-shot", [0.6, 0.6, 0.6]))
    b = write(tmp_path / "b.json", fake_results(*LSS, "zero-shot", [0.7, 0.7, 0.7], num_frames=16))
    with pytest.raises(ConfigError, match="num_frames.*8.*16"):
        compare(find_results([a, b]))
    r = run_lss("results", "compare", a, b)
    assert r.returncode == 2
    assert "different protocols" in r.stderr and '"num_frames": 8' in r.stderr and "16" in r.stderr
    r = run_lss("results", "compare", a, b, "--allow-different-protocols")
    assert r.returncode == 0, r.stderr
    assert "protocol differs: ucf101 zero-shot: views" in r.stdout
    # The same templates read from another folder are the same protocol; other templates are not.
    moved = fake_results(*LSS, "zero-shot", [0.7, 0.7, 0.7])
    moved["protocol_details"]["templates"]["path"] = "/elsewhere/t.yaml"
    compare([json.loads(a.read_text()), moved])
    other = copy.deepcopy(moved)
    other["protocol_details"]["templates"]["sha256"] = "def"
    with pytest.raises(ConfigError, match="templates"):
        compare([json.loads(a.read_text()), other])
    split2 = fake_results(*LSS, "zero-shot", [0.7, 0.7])
    with pytest.raises(ConfigError, match="splits"):
        compare([json.loads(a.read_text()), split2])


def test_cli_formats_and_out_file(tmp_path):
    a = write(tmp_path / "clip" / "results.json", fake_results(*CLIP, "zero-shot", [0.6, 0.62, 0.64]))
    write(tmp_path / "lss" / "results.json", fake_results(*LSS, "zero-shot", [0.7, 0.71, 0.75]))
    (tmp_path / "lss" / "summary.json").write_text('{"not": "results"}')  # skipped in a folder
    r = run_lss("results", "compare", a, tmp_path / "lss", "--format", "markdown")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[0] == "| metric (%) | baseline ViT-B-16 | lss.safetensors | change |"
    r = run_lss("results", "compare", tmp_path, "-o", tmp_path / "t.tex", "--metrics", "top1,top5")
    assert r.returncode == 0, r.stderr
    tex = (tmp_path / "t.tex").read_text()
    assert "zero-shot top-5 mean" in tex and "62.00 $\\pm$ 2.00" in tex
    assert "zero-shot top-1 mean ± std" in r.stdout  # the terminal still shows the table
    r = run_lss("results", "compare", tmp_path / "lss" / "summary.json")
    assert r.returncode == 2 and "not an evaluation's results" in r.stderr
    r = run_lss("results", "compare", a, "-o", tmp_path / "t.txt")
    assert r.returncode == 2 and "suffix" in r.stderr


def _demo_like_results(root: Path) -> list[Path]:
    """The four results files of a demo run (one unnamed split; direction accuracy scored)."""
    base, trained = ("baseline", "lss-tiny:weights-sha256:x"), (str(root / "model.safetensors"), "sha256:y")
    docs = {"baseline-zero-shot": fake_results(*base, "zero-shot", [0.5], dataset="synthetic", direction=[0.5]),
            "baseline-linear-probe": fake_results(*base, "linear-probe", [0.6], dataset="synthetic", direction=[0.5]),
            "trained-zero-shot": fake_results(*trained, "zero-shot", [0.625], dataset="synthetic", direction=[0.75]),
            "trained-linear-probe": fake_results(*trained, "linear-probe", [0.5], dataset="synthetic", direction=[1.0])}
    return [write(root / "eval" / name / "results.json", doc) for name, doc in docs.items()]


def _table_body(stdout: str) -> list[str]:
    """The rows of a rich table printed on stdout (between its header rule and its bottom rule)."""
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("┡"))
    end = next(i for i, line in enumerate(lines) if line.startswith("└"))
    return [re.sub(r"\s+", " ", line) for line in lines[start - 2:end]]  # header row, rule, rows


def test_results_compare_prints_the_demos_table(tmp_path):
    from lss_cli.cli.demo_cmd import render_demo
    from lss_cli.cli.render import stdout
    from lss_cli.demo import LABELS, _comparison, _comparison_rows
    from lss_cli.eval.compare import header

    files = _demo_like_results(tmp_path)
    docs = {p.parent.name: json.loads(p.read_text()) for p in files}
    c = _comparison({p: docs[f"baseline-{p}"] for p in ("zero-shot", "linear-probe")},
                    {p: docs[f"trained-{p}"] for p in ("zero-shot", "linear-probe")})
    assert [(r["metric"], r["baseline"], r["trained"]) for r in _comparison_rows(c)] == [
        ("zero-shot top-1", 0.5, 0.625), ("zero-shot direction", 0.5, 0.75), ("linear-probe top-1", 0.6, 0.5),
        ("linear-probe direction", 0.5, 1.0)]
    summary = {"dataset": {"classes": ["a", "b", "c"], "pairs": [["a", "b"]], "train": 18, "test": 6},
               "views": {"count": 1, "num_frames": 8}, "training": {"steps": 1}, "seconds": 1.0,
               "table": {"header": header(c), "rows": text_rows(c)}, "paths": {"summary": "x"},
               "compare_command": "lss results compare ..."}
    with stdout.capture() as captured:
        render_demo(summary)
    r = run_lss("results", "compare", tmp_path / "eval", "--label", LABELS[0], "--label", LABELS[1])
    assert r.returncode == 0, r.stderr
    assert _table_body(r.stdout) == _table_body(captured.get())
    assert "│ zero-shot direction │ 50.00 │ 75.00 │ +25.00 │" in _table_body(r.stdout)


@pytest.mark.slow
def test_results_compare_on_a_real_demo_run_prints_its_table(tmp_path):
    out = tmp_path / "demo"
    demo = run_lss("demo", "-o", out, "--classes", "3", "--videos-per-class", "8", "--epochs", "1")
    assert demo.returncode == 0, demo.stderr
    summary = json.loads((out / "summary.json").read_text())
    r = run_lss(*shlex.split(summary["compare_command"])[1:])  # the command the demo prints
    assert r.returncode == 0, r.stderr
    assert _table_body(r.stdout) == _table_body(demo.stdout)
