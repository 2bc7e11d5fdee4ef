"""The README's way from zero to "Kinetics-400 on 8 GPUs (or N nodes under SLURM), evaluated on
UCF101/HMDB51/K600": every `lss` command in it parses against the real CLI and configs, the batch
scripts it submits exist and take its overrides, and it covers every stage."""

from __future__ import annotations

from pathlib import Path

import pytest
from doc_commands import check_document, check_lss_command, shell_lines, shell_words

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
WALKTHROUGH = "## From zero to Kinetics-400 on 8 GPUs, evaluated on UCF101, HMDB51 and Kinetics-600"
SLURM = "## Training on a SLURM cluster"


@pytest.fixture(autouse=True)
def _repo_cwd(monkeypatch):
    monkeypatch.chdir(ROOT)  # the commands are written for the repository's folder


def test_every_lss_command_of_the_walkthrough_parses_and_every_stage_is_there():
    commands = check_document(README, WALKTHROUGH)
    stages = {tuple(a for a in argv[:2] if not a.startswith("-") and "/" not in a) for argv in commands}
    for stage in [("describe",), ("build-concepts",), ("data", "prepare"), ("data", "check"), ("train", "lss_k400_vitb16"),
                  ("plot",), ("export",), ("eval", "zero-shot"), ("eval", "linear-probe")]:
        assert any(s[:len(stage)] == stage for s in stages), f"the walkthrough has no `lss {' '.join(stage)}`"
    evaluated = {argv[argv.index("--dataset") + 1] for argv in commands if "--dataset" in argv}
    assert {"ucf101", "hmdb51", "kinetics600-zs"} <= evaluated
    assert any(argv[0] == "train" and "--resume" in argv for argv in commands)  # and how to continue


@pytest.mark.parametrize("heading", [WALKTHROUGH, SLURM])
def test_batch_scripts_it_submits_exist_and_take_its_overrides(heading):
    submitted = [shell_words(line) for line in shell_lines(README.read_text(), heading) if line.startswith("sbatch")]
    assert submitted, f"{heading}: no sbatch command"
    for words in submitted:
        script = next(w for w in words[1:] if not w.startswith("-"))
        assert (ROOT / script).is_file(), script
        overrides = words[words.index(script) + 1:]
        check_lss_command(["train", "lss_k400_vitb16", *overrides])  # the scripts' default CONFIG


def test_the_checker_catches_what_a_rename_would_break():
    # A test that cannot fail is a defect: each of these is a way the walkthrough could go stale.
    for argv in (["train", "lss_k400_vitb16", "eval.evry=10"], ["eval", "zero-shot", "--dataset-name", "ucf101"],
                 ["eval", "zero-shot", "optim.lr=1e-4"], ["exprt", "runs/x"], ["train", "synthetic_tiny", "optim.epochs=x"],
                 ["eval", "zero-shot", "--num-frames", "eight"]):
        with pytest.raises(Exception):  # noqa: B017 (click usage errors, ConfigError, AssertionError alike)
            check_lss_command(argv)
    assert shell_words("A=1 lss train x 2> log | tee y") == ["lss", "train", "x"]


def test_every_lss_command_in_the_readme_parses():
    assert len(check_document(README, None)) > 40  # every section's code blocks, not only the walkthrough
