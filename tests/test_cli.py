"""The CLI core: help, version, exit codes, error rendering."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
from conftest import ROOT, run_lss


def test_help_lists_commands_quickly_without_torch():
    code = (
        "import sys, time; t = time.perf_counter(); sys.argv = ['lss', '--help']\n"
        "from lss_cli.cli import main\n"
        "try:\n    main()\nexcept SystemExit as e:\n    code = e.code\n"
        "heavy = [m for m in ('torch', 'open_clip', 'torchcodec', 'numpy', 'openai') if m in sys.modules]\n"
        "print('RESULT', code, heavy, time.perf_counter() - t)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    line = [x for x in out.stdout.splitlines() if x.startswith("RESULT")][0]
    _, code, heavy, seconds = line.split(" ", 3)
    heavy, seconds = heavy.rsplit(" ", 1)[0], float(line.rsplit(" ", 1)[1])
    assert code == "0"
    assert heavy == "[]", f"lss --help imported {heavy}"
    for command in ("demo", "config", "data", "labels", "build-concepts", "concepts"):
        assert command in out.stdout
    assert seconds < 1.0


def test_short_help_and_version():
    r = run_lss("-h")
    assert r.returncode == 0 and "Usage" in r.stdout
    r = run_lss("--version")
    assert r.returncode == 0 and r.stdout.startswith("lss ")


def test_unknown_command_is_usage_error():
    r = run_lss("no-such-command")
    assert r.returncode == 2


def test_bad_override_exits_2_naming_key():
    r = run_lss("config", "show", "examples/synthetic_tiny.yaml", "optim.lr=abc", cwd=ROOT)
    assert r.returncode == 2
    assert "Error:" in r.stderr and "optim.lr" in r.stderr
    assert "Traceback" not in r.stderr
    r = run_lss("config", "show", "examples/synthetic_tiny.yaml", "nope.key=1", cwd=ROOT)
    assert r.returncode == 2 and "nope" in r.stderr
    r = run_lss("config", "show", "examples/synthetic_tiny.yaml", "optim.lrr=1", cwd=ROOT)
    assert r.returncode == 2 and "did you mean 'optim.lr'" in r.stderr


def test_missing_config_exits_2_naming_path(tmp_path):
    missing = tmp_path / "nowhere.yaml"
    r = run_lss("config", "show", str(missing))
    assert r.returncode == 2 and str(missing) in r.stderr


def test_config_show_resolves_and_prints_json(tmp_path):
    r = run_lss("config", "show", "examples/synthetic_tiny.yaml", "optim.epochs=5", "--json", cwd=ROOT)
    assert r.returncode == 0, r.stderr
    cfg = json.loads(r.stdout)
    assert cfg["optim"]["epochs"] == 5 and cfg["model"]["name"] == "lss-tiny"
    r = run_lss("config", "show", "--for", "describe", "per_class=3")
    assert r.returncode == 0 and "per_class: 3" in r.stdout


def test_runtime_error_exits_1_with_hint_and_debug_traceback(tmp_path):
    r = run_lss("labels", "show", "no-such-set-xyz")
    # An unknown label set named on the command line is a usage error.
    assert r.returncode == 2 and "Hint:" in r.stderr and "Traceback" not in r.stderr
    r = run_lss("labels", "show", "no-such-set-xyz", env={"LSS_DEBUG": "1"})
    assert r.returncode == 2 and "Traceback" in r.stderr


def test_error_mapping_in_process(monkeypatch, capsys):
    import pytest

    from lss_cli.cli import app, main
    from lss_cli.errors import LssError

    @app.command("boom-test", hidden=True)
    def boom(kind: str) -> None:
        if kind == "lss":
            raise LssError("the disk is full", hint="free some space")
        if kind == "interrupt":
            raise KeyboardInterrupt
        raise ValueError("a bug")

    try:
        for kind, code in (("lss", 1), ("interrupt", 130), ("bug", 1)):
            with pytest.raises(SystemExit) as e:
                main(["boom-test", kind])
            assert e.value.code == code
        err = capsys.readouterr().err
        assert "Error: the disk is full" in err and "Hint: free some space" in err
        assert "unexpected ValueError" in err and "LSS_DEBUG=1" in err
    finally:
        app.registered_commands[:] = [c for c in app.registered_commands if c.name != "boom-test"]


def test_labels_commands():
    r = run_lss("labels", "list", "--json")
    assert r.returncode == 0
    sizes = {row["name"]: row["classes"] for row in json.loads(r.stdout)}
    assert sizes["lss530"] == 530 and sizes["kinetics600-zs2"] == 160
    r = run_lss("labels", "show", "hmdb51")
    assert r.returncode == 0 and r.stdout.splitlines()[0] == "0\tbrush hair"


def test_ctrl_c_exit_code_is_130():
    import os
    import signal

    proc = subprocess.Popen([sys.executable, "-c",
                             "import sys, time\nfrom lss_cli.cli import app, main\n"
                             "@app.command('sleep-test')\ndef s() -> None:\n    print('ready', flush=True); time.sleep(30)\n"
                             "main(['sleep-test'])\n"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    assert proc.stdout.readline().strip() == "ready"
    time.sleep(0.2)
    os.kill(proc.pid, signal.SIGINT)
    assert proc.wait(timeout=20) == 130


def test_user_text_is_never_read_as_markup(tmp_path):
    # A path with `[/...]` crashed the error printer (rich MarkupError), and `[word]` vanished from
    # messages: both are the user's text and must print exactly as written.
    crash, vanish = tmp_path / "x [/id].mp4", tmp_path / "My clip [dQw4w9WgXcQ].mp4"
    for video in (crash, vanish):
        r = run_lss("predict", str(video), "--labels", "a,b", "--model", "lss-tiny", "--pretrained", "none")
        assert r.returncode == 2, r.stderr
        assert f"video not found: {video}" in r.stderr
        assert "probably a bug" not in r.stderr and "Traceback" not in r.stderr


def test_messages_print_brackets_as_written(capsys):
    from lss_cli.runtime.progress import error, log, warn

    warn("unreadable: v/bad[/x].mp4")
    log("a [bold]b[/bold]", lead="demo ")
    error("HTTP 400 from [/v1/chat/completions]", "pip install 'lss-cli[tensorboard]'")
    err = capsys.readouterr().err
    assert "Warning: unreadable: v/bad[/x].mp4" in err
    assert "demo a [bold]b[/bold]" in err
    assert "Error: HTTP 400 from [/v1/chat/completions]" in err
    assert "Hint: pip install 'lss-cli[tensorboard]'" in err


def test_help_shows_placeholders_in_angle_brackets():
    # Typer's markdown help dropped `<command>` as an HTML tag ("default: runs//").
    r = run_lss("train", "--help", env={"COLUMNS": "200"})
    assert "runs/<command>/<timestamp>" in r.stdout
    r = run_lss("describe", "--help", env={"COLUMNS": "200"})
    assert "<out>.bak" in r.stdout


@pytest.mark.parametrize("command", [["train"], ["data", "synth"], ["data", "prepare"], ["build-concepts"],
                                     ["predict"], ["demo"], ["export"]])
def test_boolean_flags_show_no_value(command):
    # Typer printed `--json <bool>` although a flag takes no value. (Its own --help line still
    # does: that option is Typer's.)
    r = run_lss(*command, "--help", env={"COLUMNS": "200"})
    assert r.returncode == 0
    assert [line for line in r.stdout.splitlines() if "<bool>" in line and "--help" not in line] == []
