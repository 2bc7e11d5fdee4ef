"""`lss describe`: the real openai client over HTTP against a scripted local server (tests/fake_llm.py)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT
from fake_llm import Drop, FakeLLM, Hold, Ok, Stall, Status, Text
from hypothesis import given, settings
from hypothesis import strategies as st

from lss_cli.config import DescribeConfig
from lss_cli.describe.calls import backoff_delay
from lss_cli.describe.client import parse_retry_after, redact, resolve_endpoint
from lss_cli.describe.prompt import load_prompt
from lss_cli.describe.records import read_records, read_state
from lss_cli.describe.replies import (
    CLIP_CONTEXT,
    ClipLengthCheck,
    InvalidReply,
    clean_description,
    extract_descriptions,
    surely_fits_clip,
)
from lss_cli.describe.run import plan_describe, run_describe
from lss_cli.errors import ConfigError, InputFileError

# Recognisable, and deliberately not shaped like an OpenAI key, so only exact redaction can hide it.
FAKE_KEY = "lss-test-FAKEKEY-7c2e9a41d0b3"
KEY_ENV = {"OPENAI_API_KEY": FAKE_KEY}


def labels_file(tmp_path: Path, names: list[str]) -> Path:
    path = tmp_path / "labels.txt"
    path.write_text("\n".join(names) + "\n")
    return path


def fast_cfg(tmp_path: Path, names: list[str], server: FakeLLM, **kw) -> DescribeConfig:
    """Small timeouts and backoff so retries cost milliseconds."""
    base = dict(labels=str(labels_file(tmp_path, names)), out=str(tmp_path / "d.jsonl"), per_class=3,
                base_url=server.base_url, timeout=0.5, retry_base_delay=0.01, retry_max_delay=2.0,
                concurrency=4, max_retries=3, max_reasks=1)
    return DescribeConfig(**{**base, **kw})


def cli_args(cfg: DescribeConfig) -> list[str]:
    return ["describe", "--labels", cfg.labels, "--out", cfg.out, "--per-class", str(cfg.per_class),
            "--base-url", cfg.base_url, "--timeout", str(cfg.timeout), "--concurrency", str(cfg.concurrency),
            "--max-retries", str(cfg.max_retries), "--max-reasks", str(cfg.max_reasks),
            f"retry_base_delay={cfg.retry_base_delay}"]


def run_cli(*args: str, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **KEY_ENV, **(env or {})}
    return subprocess.run([sys.executable, "-m", "lss_cli", *args], env=full_env, capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT)


def assert_key_nowhere(tmp_path: Path, *texts: str) -> None:
    for text in texts:
        assert FAKE_KEY not in text
    for f in tmp_path.rglob("*"):
        if f.is_file():
            assert FAKE_KEY.encode() not in f.read_bytes(), f"API key written to {f}"


# --------------------------------------------------------------------------------------------
# Reply validation, prompts, retry helpers (no network)
# --------------------------------------------------------------------------------------------


def test_clean_description_strips_numbering_bullets_quotes():
    assert clean_description("  1. A man  swings a bat. ") == "A man swings a bat."
    assert clean_description('- "Hands grip the rope."') == "Hands grip the rope."
    assert clean_description("(3) • Feet push off") == "Feet push off"
    assert clean_description("3 people dance in a circle") == "3 people dance in a circle"  # not numbering


def test_extract_descriptions_json_lines_dedup_and_count():
    check = ClipLengthCheck(counter=lambda texts: [10] * len(texts))
    fenced = '```json\n{"descriptions": ["1. Arms swing.", "2. Arms swing", "Legs bend.", "A ball flies."]}\n```'
    assert extract_descriptions(fenced, 3, "json", check) == ["Arms swing.", "Legs bend.", "A ball flies."]
    chatter = 'Sure! Here they are: ["Arms swing.", "Legs bend."] Hope this helps.'
    assert extract_descriptions(chatter, 2, "json", check) == ["Arms swing.", "Legs bend."]
    assert extract_descriptions("- Arms swing.\n\n* Legs bend.\n", 2, "lines", check) == ["Arms swing.", "Legs bend."]
    assert extract_descriptions('["a.", "b.", "c.", "d."]', 2, "json", check) == ["a.", "b."]  # extras cut
    cases = {
        '{"descriptions": ["Arms swing.", "arms swing"]}': "1 usable descriptions, 2 asked for (1 duplicate(s) dropped)",
        "no json here": "not valid JSON",
        '{"other": 1}': 'no "descriptions" list',
        '{"descriptions": [1, 2]}': "list of strings",
        "   ": "empty",
    }
    for reply, reason in cases.items():
        with pytest.raises(InvalidReply, match=reason.replace("(", r"\(").replace(")", r"\)")):
            extract_descriptions(reply, 2, "json", check)
    with pytest.raises(InvalidReply, match="cut off at max_tokens"):
        extract_descriptions('{"descriptions": ["Arms', 2, "json", check, finish_reason="length")


def test_clip_length_check_uses_the_real_tokenizer_for_long_texts():
    check = ClipLengthCheck()
    short = "A person lifts a heavy barbell above their head in a gym."
    fits = "A gymnast " + "slowly " * 60 + "turns."  # long in characters, ~63 tokens
    too_long = "A gymnast " + "very slowly " * 40 + "turns."  # ~83 tokens
    assert check.too_long([short, fits, too_long]) == [False, False, True]
    reply = json.dumps({"descriptions": [short, too_long, fits]})
    with pytest.raises(InvalidReply, match=f"1 longer than CLIP's {CLIP_CONTEXT}-token context"):
        extract_descriptions(reply, 3, "json", check)


@settings(max_examples=60, deadline=None)
@given(st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=200))
def test_surely_fits_is_never_wrong(text):
    """The shortcut that skips the tokenizer must only clear texts the tokenizer also clears."""
    from lss_cli.models.clip import clip_token_counts

    if surely_fits_clip(text):
        assert clip_token_counts([text])[0] <= CLIP_CONTEXT


def test_shipped_prompt_renders_and_is_versioned():
    p = load_prompt("describe_actions_v1")
    assert (p.name, p.version, p.format, p.file) == ("describe_actions", "1", "json", "prompts/describe_actions_v1.yaml")
    import hashlib

    from lss_cli.resources import prompt_path

    assert p.sha256 == hashlib.sha256(prompt_path("describe_actions_v1").read_bytes()).hexdigest()
    system, user = p.messages("riding a bike", 7)
    assert system["role"] == "system" and user["role"] == "user"
    assert 'Action category: "riding a bike"' in user["content"] and "Write 7 different" in user["content"]
    assert '{"descriptions": [' in user["content"]  # literal braces survive rendering


def test_bad_prompt_files_are_rejected(tmp_path):
    bad = tmp_path / "p.yaml"
    bad.write_text("name: x\nversion: 1\nuser: Describe it in {n} ways.\n")
    with pytest.raises(InputFileError, match=r"\{category\}"):
        load_prompt(str(bad))
    bad.write_text("name: x\nversion: 1\nuser: '{category} {n}'\ntemplate: oops\n")
    with pytest.raises(InputFileError, match="unknown keys template"):
        load_prompt(str(bad))



def test_prompt_and_template_files_share_the_yaml_checks(tmp_path):
    """`load_prompt` and `load_templates` read their YAML through one helper: the same checks,
    each error naming the kind of file and the fix."""
    from lss_cli.concepts.templates import load_templates

    bad = tmp_path / "p.yaml"
    for load, what, keys_hint in ((load_prompt, "prompt file", "prompts/describe_actions_v1.yaml"),
                                  (load_templates, "template file", "`templates:`")):
        bad.write_text("name: [unclosed\n")
        with pytest.raises(InputFileError, match=f"{what} .*p.yaml is not valid YAML") as e:
            load(str(bad))
        assert keys_hint in e.value.hint
        bad.write_text("- just\n- a list\n")
        with pytest.raises(InputFileError, match=f"{what} .*p.yaml: expected a mapping") as e:
            load(str(bad))
        assert keys_hint in e.value.hint
    bad.write_text("name: x\nversion: 1\n")
    with pytest.raises(InputFileError, match="prompt file .*p.yaml: missing user"):
        load_prompt(str(bad))

def test_backoff_is_exponential_jittered_and_capped():
    for retry, d in ((0, 0.5), (1, 1.0), (3, 4.0), (10, 8.0)):
        delays = [backoff_delay(retry, 0.5, 8.0) for _ in range(50)]
        assert all(d / 2 <= x <= d for x in delays)
        assert len(set(delays)) > 1  # jittered


def test_retry_after_forms():
    assert parse_retry_after({"retry-after": "3"}) == 3.0
    assert parse_retry_after({"retry-after-ms": "250", "retry-after": "9"}) == 0.25
    import datetime as dt
    from email.utils import format_datetime

    later = format_datetime(dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=30), usegmt=True)
    assert 25 < parse_retry_after({"retry-after": later}) <= 30
    assert parse_retry_after({}) is None and parse_retry_after({"retry-after": "soon"}) is None


def test_endpoint_and_key_resolution():
    with pytest.raises(ConfigError, match="OPENAI_API_KEY") as e:
        resolve_endpoint(None, {})
    assert "--base-url" in e.value.hint
    with pytest.raises(ConfigError):
        resolve_endpoint("https://api.openai.com/v1", {})
    local = resolve_endpoint(None, {"OPENAI_BASE_URL": "http://localhost:11434/v1"})
    assert local.base_url == "http://localhost:11434/v1" and not local.is_default
    assert resolve_endpoint("http://h:1/v1", {"OPENAI_BASE_URL": "http://x/v1"}).base_url == "http://h:1/v1"
    keyed = resolve_endpoint(None, {"OPENAI_API_KEY": FAKE_KEY})
    assert keyed.is_default and FAKE_KEY not in repr(keyed)
    assert redact(f"bad key {FAKE_KEY} and sk-proj-abc123XYZ", FAKE_KEY) == "bad key [redacted] and sk-[redacted]"


# --------------------------------------------------------------------------------------------
# Against the local server, in process
# --------------------------------------------------------------------------------------------


def test_every_fault_is_retried_or_reasked_with_exact_call_counts(tmp_path):
    script = {
        "b": [Status(429, retry_after="1"), Ok()],
        "c": [Status(500), Status(503), Ok()],
        "d": [Text("Here are some descriptions!"), Ok()],  # malformed JSON -> re-ask
        "e": [Text('{"descriptions": ["Arms swing."]}'), Ok()],  # wrong count -> re-ask
        "f": [Stall(), Ok()],  # longer than the 0.5 s client timeout -> retry
        "g": [Drop(), Ok()],  # connection closed without a response -> retry
    }
    names = ["a", "b", "c", "d", "e", "f", "g"]
    with FakeLLM(per_class=3, script=script) as server:
        s = run_describe(fast_cfg(tmp_path, names, server), env=KEY_ENV)
    expected = {"a": 1, "b": 2, "c": 3, "d": 2, "e": 2, "f": 2, "g": 2}
    assert {c: server.calls_for(c) for c in names} == expected
    assert s.calls == len(server.requests) == 14
    assert (s.done, s.failed, s.retries, s.reasks) == (7, {}, 5, 2)
    assert (s.prompt_tokens, s.completion_tokens) == (20 * 9, 10 * 9)  # 9 replies carried usage
    b_times = [r.time for r in server.requests if r.category == "b"]
    assert b_times[1] - b_times[0] >= 1.0  # Retry-After: 1 honoured (plain backoff would be ~10 ms)
    # The re-ask continues the conversation, quoting the bad reply and saying what was wrong.
    reask = [r.body["messages"] for r in server.requests if r.category == "e"][1]
    assert reask[-2] == {"role": "assistant", "content": '{"descriptions": ["Arms swing."]}'}
    assert "1 usable descriptions, 3 asked for" in reask[-1]["content"]
    assert all(r.authorization == f"Bearer {FAKE_KEY}" for r in server.requests)
    records, bad = read_records(tmp_path / "d.jsonl")
    assert bad == 0 and sorted(r.category for r in records) == names
    rec = {r.category: r for r in records}["e"]
    assert rec.descriptions == [f"A person doing e, seen in shot {i}." for i in (1, 2, 3)]
    assert rec.usage == {"prompt_tokens": 40, "completion_tokens": 20, "requests": 2}
    assert rec.prompt_file == "prompts/describe_actions_v1.yaml" and len(rec.prompt_sha256) == 64
    assert (rec.model, rec.temperature) == ("gpt-4o-mini", 0.7)
    assert rec.request == {"max_tokens": 1024, "temperature": 0.7}  # what was sent
    assert_key_nowhere(tmp_path)


def test_resume_skips_done_classes_and_overwrite_keeps_a_backup(tmp_path):
    names = ["a", "b", "c"]
    with FakeLLM(per_class=3) as server:
        cfg = fast_cfg(tmp_path, names, server, limit=2)
        assert run_describe(cfg, env=KEY_ENV).done == 2
        s = run_describe(fast_cfg(tmp_path, names, server), env=KEY_ENV)
        assert (s.done, s.skipped, s.calls) == (1, 2, 1) and sorted(server.categories()) == ["a", "b", "c"]
        s = run_describe(fast_cfg(tmp_path, names, server), env=KEY_ENV)
        assert (s.done, s.skipped, s.calls) == (0, 3, 0) and len(server.requests) == 3
        before = (tmp_path / "d.jsonl").read_text()
        s = run_describe(fast_cfg(tmp_path, names, server, overwrite=True), env=KEY_ENV)
        assert (s.done, s.skipped, s.calls) == (3, 0, 3)
    assert (tmp_path / "d.jsonl.bak").read_text() == before
    assert len(read_records(tmp_path / "d.jsonl")[0]) == 3



def test_a_resumed_run_checks_inputs_once_and_reads_its_output_once(tmp_path, monkeypatch):
    """Label set and prompt loaded once, the existing output read once (under the lock), and a
    torn last line is still removed and its class redone."""
    import lss_cli.describe.run as describe_mod

    names = ["a", "b", "c"]
    out = tmp_path / "d.jsonl"
    with FakeLLM(per_class=3) as server:
        run_describe(fast_cfg(tmp_path, names, server, limit=2), env=KEY_ENV)
        with open(out, "a") as f:
            f.write('{"category": "c", "descr')  # a torn write
        calls = {"labels": 0, "prompt": 0, "out read": 0}

        def counting(key, fn):
            def wrapped(*a, **k):
                calls[key] += 1
                return fn(*a, **k)
            return wrapped

        monkeypatch.setattr(describe_mod, "load_label_set", counting("labels", describe_mod.load_label_set))
        monkeypatch.setattr(describe_mod, "load_prompt", counting("prompt", describe_mod.load_prompt))
        for method in ("read_bytes", "read_text"):
            real = getattr(Path, method)
            monkeypatch.setattr(Path, method, lambda self, *a, _real=real, **k: (
                calls.__setitem__("out read", calls["out read"] + (self == out)), _real(self, *a, **k))[1])
        s = run_describe(fast_cfg(tmp_path, names, server), env=KEY_ENV)
    assert (s.done, s.skipped, s.calls) == (1, 2, 1) and sorted(server.categories()) == names
    assert calls == {"labels": 1, "prompt": 1, "out read": 1}
    records, bad = read_records(out)
    assert bad == 0 and sorted(r.category for r in records) == names

# --------------------------------------------------------------------------------------------
# The real CLI, in a subprocess
# --------------------------------------------------------------------------------------------


def test_failed_classes_exit_1_and_only_they_are_retried(tmp_path):
    names = ["ok one", "bad json", "rejected", "always 500", "ok two"]
    script = {"bad json": [Text("nope"), Text("still nope")], "rejected": [Status(400, message="bad request")],
              "always 500": [Status(500)] * 4}
    with FakeLLM(per_class=3, script=script) as server:
        cfg = fast_cfg(tmp_path, names, server, max_retries=3, max_reasks=1)
        r = run_cli(*cli_args(cfg))
        assert r.returncode == 1, r.stderr
        assert {c: server.calls_for(c) for c in names} == {"ok one": 1, "bad json": 2, "rejected": 1,
                                                           "always 500": 4, "ok two": 1}
    assert "3 class(es) failed" in r.stderr and "Hint: rerun the same command" in r.stderr
    for c in ("'bad json'", "'rejected'", "'always 500'", "not valid JSON", "HTTP 400", "gave up after 4 requests"):
        assert c in r.stderr
    assert "2 done, 0 skipped (already done), 3 failed" in r.stdout and "9 (3 retries, 1 re-asks)" in r.stdout
    state = read_state(tmp_path / "d.jsonl")
    assert sorted(state.records) == ["ok one", "ok two"] and sorted(state.failed) == ["always 500", "bad json", "rejected"]
    assert [r.category for r in read_records(tmp_path / "d.jsonl")[0]] == ["ok one", "ok two"]
    assert_key_nowhere(tmp_path, r.stdout, r.stderr)

    with FakeLLM(per_class=3) as server:  # the rerun: only the three failed classes are asked again
        r2 = run_cli(*cli_args(fast_cfg(tmp_path, names, server)), "--json")
        assert r2.returncode == 0, r2.stderr
        assert sorted(server.categories()) == ["always 500", "bad json", "rejected"]
    summary = json.loads(r2.stdout)
    assert (summary["done"], summary["skipped"], summary["failed"], summary["calls"]) == (3, 2, {}, 3)
    state = read_state(tmp_path / "d.jsonl")
    assert sorted(state.records) == sorted(names) and state.failed == {}
    assert_key_nowhere(tmp_path, r2.stdout, r2.stderr)


def test_killed_run_restarts_with_calls_only_for_unfinished_classes(tmp_path):
    names = [f"class {i}" for i in range(6)]
    first_three = {n: [Ok()] for n in names[:3]}
    out = tmp_path / "d.jsonl"
    with FakeLLM(per_class=3, script=first_three, default=Hold()) as server:
        cfg = fast_cfg(tmp_path, names, server, concurrency=2, timeout=30.0)
        proc = subprocess.Popen([sys.executable, "-m", "lss_cli", *cli_args(cfg)], cwd=ROOT,
                                env={**os.environ, **KEY_ENV}, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and (not out.exists() or out.read_text().count("\n") < 3):
            time.sleep(0.05)
        while len(server.requests) < 5 and time.monotonic() < deadline:  # two requests held in flight
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        _, err = proc.communicate(timeout=30)
        assert len(server.requests) == 5
    assert proc.returncode == -signal.SIGKILL
    assert sorted(r.category for r in read_records(out)[0]) == names[:3]
    with open(out, "a") as f:  # as if the kill had hit the middle of writing a record
        f.write('{"category": "class 3", "descriptions": ["A tor')
    assert read_records(out)[1] == 1

    with FakeLLM(per_class=3) as server:
        r = run_cli(*cli_args(fast_cfg(tmp_path, names, server)))
        assert r.returncode == 0, r.stderr
        assert sorted(server.categories()) == names[3:]  # nothing finished is asked for again
    assert "torn line" in r.stderr
    records, bad = read_records(out)
    assert bad == 0 and sorted(x.category for x in records) == names
    assert out.read_text().count("\n") == 6  # the torn fragment was removed, not kept
    assert_key_nowhere(tmp_path, r.stdout, r.stderr, err.decode())


def test_auth_error_stops_at_once_and_the_key_never_leaks(tmp_path):
    echo = f"Incorrect API key provided: {FAKE_KEY}. You can find your API key at platform.openai.com."
    names = [f"c{i}" for i in range(8)]
    with FakeLLM(default=Status(401, message=echo, error_code="invalid_api_key")) as server:
        r = run_cli(*cli_args(fast_cfg(tmp_path, names, server, concurrency=2)), env={"LSS_DEBUG": "1"})
        assert 1 <= len(server.requests) <= 2  # one per worker at most, no retries, no other classes
        assert all(x.authorization == f"Bearer {FAKE_KEY}" for x in server.requests)  # it was used
    assert r.returncode == 1
    assert "stopped early: HTTP 401" in r.stderr and "check OPENAI_API_KEY" in r.stderr
    assert "Incorrect API key provided: [redacted]" in r.stderr
    assert not (tmp_path / "d.jsonl").exists()  # not the classes' fault: nothing is marked failed
    assert_key_nowhere(tmp_path, r.stdout, r.stderr)


def test_missing_key_against_openai_is_exit_2_but_a_local_server_needs_none(tmp_path, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    labels = labels_file(tmp_path, ["waving"])
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")}
    r = subprocess.run([sys.executable, "-m", "lss_cli", "describe", "--labels", str(labels), "--out",
                        str(tmp_path / "d.jsonl")], env=env, capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert r.returncode == 2 and "OPENAI_API_KEY is not set" in r.stderr and "--base-url" in r.stderr
    assert not (tmp_path / "d.jsonl").exists()
    with FakeLLM(per_class=2) as server:
        r = subprocess.run([sys.executable, "-m", "lss_cli", "describe", "--labels", str(labels), "--out",
                            str(tmp_path / "d.jsonl"), "--per-class", "2", "--json"],
                           env={**env, "OPENAI_BASE_URL": server.base_url}, capture_output=True, text=True,
                           cwd=ROOT, timeout=60)
        assert r.returncode == 0, r.stderr
        assert len(server.requests) == 1 and server.requests[0].authorization == "Bearer no-key-needed"
    assert json.loads(r.stdout)["done"] == 1


def test_dry_run_shows_prompt_calls_and_done_classes_without_network(tmp_path):
    names = ["juggling balls", "riding a bike", "surfing"]
    with FakeLLM(per_class=3) as server:
        cfg = fast_cfg(tmp_path, names, server, limit=1)
        run_describe(cfg, env=KEY_ENV)
        calls_before = len(server.requests)
        r = run_cli(*cli_args(fast_cfg(tmp_path, names, server)), "--dry-run")
        assert r.returncode == 0, r.stderr
        assert len(server.requests) == calls_before == 1
        rj = run_cli(*cli_args(fast_cfg(tmp_path, names, server)), "--dry-run", "--json")
        assert len(server.requests) == 1
    assert 'Action category: "riding a bike"' in r.stdout and "Write 3 different" in r.stdout
    assert "2 to ask for, 1 already done" in r.stdout and "juggling balls" in r.stdout
    plan = json.loads(rj.stdout)
    assert (plan["calls"], plan["already_done"]) == (2, ["juggling balls"])
    # classes x (1 + re-asks) x (1 + retries), + one per parameter a server may refuse (max_tokens, temperature)
    assert plan["calls_at_most"] == 2 * (1 + 1) * (3 + 1) + 2
    assert_key_nowhere(tmp_path, r.stdout, r.stderr, rj.stdout, rj.stderr)


def test_plan_rejects_bad_inputs(tmp_path):
    with pytest.raises(ConfigError, match="neither a built-in"):
        plan_describe(DescribeConfig(labels="no-such-labels", base_url="http://127.0.0.1:9/v1"), env={})
    with pytest.raises(ConfigError, match="not found"):
        plan_describe(DescribeConfig(labels="ucf101", prompt="no_such_prompt", base_url="http://127.0.0.1:9/v1"), env={})
    (tmp_path / "dir.jsonl").mkdir()
    with pytest.raises(InputFileError, match="not a file"):
        plan_describe(DescribeConfig(labels="ucf101", out=str(tmp_path / "dir.jsonl"),
                                     base_url="http://127.0.0.1:9/v1"), env={})


def test_ctrl_c_exits_130_and_keeps_finished_classes(tmp_path):
    names = [f"class {i}" for i in range(5)]
    out = tmp_path / "d.jsonl"
    with FakeLLM(per_class=3, script={n: [Ok()] for n in names[:2]}, default=Hold()) as server:
        cfg = fast_cfg(tmp_path, names, server, concurrency=2, timeout=30.0)
        proc = subprocess.Popen([sys.executable, "-m", "lss_cli", *cli_args(cfg)], cwd=ROOT, text=True,
                                env={**os.environ, **KEY_ENV}, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 60
        while len(server.requests) < 4 and time.monotonic() < deadline:  # 2 answered, 2 held
            time.sleep(0.05)
        while (not out.exists() or out.read_text().count("\n") < 2) and time.monotonic() < deadline:
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130
    assert "interrupted: the 2 classes finished by this run are saved" in err
    assert sorted(r.category for r in read_records(out)[0]) == names[:2]


def test_a_second_run_on_the_same_file_is_refused(tmp_path):
    from lss_cli.describe.run import _exclusive
    from lss_cli.errors import LssError

    with FakeLLM(per_class=3) as server:
        cfg = fast_cfg(tmp_path, ["a"], server)
        with _exclusive(Path(cfg.out)):  # as if another process were running
            with pytest.raises(LssError, match="another `lss describe` is writing"):
                run_describe(cfg, env=KEY_ENV)
        assert server.requests == []
        assert run_describe(cfg, env=KEY_ENV).done == 1  # the lock is released after a run


def test_a_broken_model_or_prompt_stops_after_the_first_ten_failures(tmp_path):
    from lss_cli.describe.run import EARLY_FAILURES_STOP

    names = [f"c{i:02d}" for i in range(EARLY_FAILURES_STOP + 5)]
    with FakeLLM(default=Text("I cannot do JSON, sorry.")) as server:
        s = run_describe(fast_cfg(tmp_path, names, server, concurrency=1, max_reasks=0), env=KEY_ENV)
    calls = len(server.requests)
    # One request per failed class, then stop: the one worker waits for each outcome to be written
    # before asking for the next class, so it never runs ahead of the stop (it did, by a varying
    # number of classes, when the main thread was slow to write).
    assert s.calls == calls == EARLY_FAILURES_STOP
    assert len(s.failed) == calls and s.not_attempted == len(names) - calls and s.done == 0
    assert s.fatal.startswith(f"the first {EARLY_FAILURES_STOP} classes all failed") and "--limit 3" in s.fatal_hint
    assert sorted(read_state(tmp_path / "d.jsonl").failed) == names[:calls]


def test_a_full_disk_while_appending_is_an_anticipated_error_and_keeps_what_was_written(tmp_path, monkeypatch):
    # An OSError from the append (ENOSPC, a revoked permission) printed "unexpected OSError ...
    # probably a bug"; it is the user's to fix, and the records already written stay valid.
    import errno

    import lss_cli.describe.records as records
    from lss_cli.errors import LssError

    out = tmp_path / "d.jsonl"
    records.append_record(out, records.DescriptionRecord("a", ["a person jumps"], model="m"))
    real_fsync = records.os.fsync

    def full_disk(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(records.os, "fsync", full_disk)
    with pytest.raises(LssError, match=r"could not append the record of 'b' to .*d\.jsonl: No space left on device"):
        records.append_record(out, records.DescriptionRecord("b", ["a person runs"], model="m"))
    monkeypatch.setattr(records.os, "fsync", real_fsync)
    assert [r.category for r in records.read_records(out)[0]][0] == "a"
