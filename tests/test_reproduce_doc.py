"""REPRODUCE.md: every `lss` command in it parses against the real CLI and configs (a dry run: no
command is executed), the batch script it submits takes its overrides, it covers every stage of
the paper's setting, and its GPU figures are the ones benchmarks/RESULTS.md gives."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from doc_commands import check_document, check_lss_command, shell_lines, shell_words

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "REPRODUCE.md"


@pytest.fixture(autouse=True)
def _repo_cwd(monkeypatch):
    monkeypatch.chdir(ROOT)  # the commands are written for the repository's folder


def test_every_lss_command_parses_and_the_paper_setting_is_covered():
    commands = check_document(DOC)
    assert len(commands) >= 25

    def has(*words: str, **options: str) -> bool:
        return any(argv[:len(words)] == list(words) and all(argv[argv.index(k) + 1] == v for k, v in options.items()
                                                            if k in argv) and set(options) <= set(argv)
                   for argv in commands)

    assert has("describe", **{"--labels": "lss530"}) and has("build-concepts", **{"--model": "ViT-B-16"})
    assert has("train", "lss_k400_vitb16") and has("export")
    for dataset in ("ucf101", "hmdb51", "kinetics600-zs"):
        for checkpoint in ("none", "lss-k400-vitb16.safetensors"):  # the baseline and the model, same protocol
            assert has("eval", "zero-shot", **{"--dataset": dataset, "--splits": "1,2,3", "--checkpoint": checkpoint})
    for dataset in ("ucf101", "hmdb51"):
        for checkpoint in ("none", "lss-k400-vitb16.safetensors"):
            assert has("eval", "linear-probe", **{"--dataset": dataset, "--splits": "1,2,3", "--checkpoint": checkpoint})
    assert has("results", "compare") and has("features")
    # The compared folders are the ones the evaluations write into.
    written = {str(Path(argv[argv.index("--out") + 1]).parent) for argv in commands if argv[0] == "eval"}
    compared = {a for argv in commands if argv[:2] == ["results", "compare"] for a in argv[2:4]}
    assert compared == written == {"results/clip", "results/lss"}


def test_the_batch_script_it_submits_exists_and_takes_its_overrides():
    submitted = [shell_words(line) for line in shell_lines(DOC.read_text()) if line.startswith("sbatch")]
    assert submitted
    for words in submitted:
        script = next(w for w in words[1:] if not w.startswith("-"))
        assert (ROOT / script).is_file(), script
        check_lss_command(["train", "lss_k400_vitb16", *words[words.index(script) + 1:]])


def test_the_checker_sees_a_broken_command_in_a_whole_document(tmp_path):
    # A test that cannot fail is a defect: a renamed option anywhere in the file is caught.
    doc = tmp_path / "doc.md"
    doc.write_text("# T\n\n## A\n\n```bash\nlss results compare a b --labl x\n```\n")
    with pytest.raises(AssertionError, match="does not parse"):
        check_document(doc)
    doc.write_text("# T\n\n```bash\nlss eval zero-shot --dataset ucf101 --splits 1,2,3 --num-frame 8\n```\n")
    with pytest.raises(AssertionError, match="does not parse"):
        check_document(doc)


def test_its_gpu_figures_are_the_benchmark_documents():
    # The cost section quotes benchmarks/RESULTS.md; a number that drifts from it is caught here.
    results = (ROOT / "benchmarks" / "RESULTS.md").read_text()
    cost = DOC.read_text().split("## 6.")[1].split("## 7.")[0]
    for figure in ("4.602 TFLOP", "3.480", "28–31 %", "+45–60 %", "94.1 clips/s", "7,525", "55–65 GiB",
                   "20–30 GiB", "370.7 GFLOP", "1,061 clips/s", "2.17 s per clip", "−20 to −22 %"):
        assert figure in cost, figure
        assert figure.replace(" clips/s", "").replace(" per clip", "").replace(" TFLOP", "").replace(" GFLOP", "") \
            .replace(" GiB", "") in results, figure
    # Throughput from the predicted MFU range: MFU x 787 TFLOP/s / 4.602 TFLOP per clip.
    for mfu, rate in ((0.43, 73.5), (0.48, 82.1)):
        assert round(mfu * 787 / 4.602, 1) == rate and f"{rate}" in cost
    assert "No GPU number there is measured yet" in cost and re.search(r"Not measured yet", results)
