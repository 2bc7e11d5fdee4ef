"""`lss describe` with reasoning models, and descriptions files written by hand.

Reasoning models (OpenAI's o-series, gpt-5) answer HTTP 400 to `max_tokens` (they want
`max_completion_tokens`) and to any temperature but their default; tests/fake_llm.py answers
the same way with `refuse=...`. A run adapts once for all its workers and records what it sent.
A descriptions file needs only `category` and `descriptions`; its provenance is then unknown.
"""

from __future__ import annotations

import json

import pytest
from conftest import run_lss
from fake_llm import FakeLLM, Status
from test_describe import KEY_ENV, cli_args, fast_cfg, run_cli

from lss_cli.concepts.bank import load_concept_bank
from lss_cli.describe.records import read_records, read_state
from lss_cli.describe.run import run_describe

MODES = [("max_tokens",), ("temperature",), ("max_tokens", "temperature")]
MAX_TOKENS = 512
TEMPERATURE = 0.7  # DescribeConfig's default, which reasoning models refuse


def expected_request(refused: tuple[str, ...]) -> dict:
    """What each request should send once the server's refusals are answered, written out by hand."""
    sent: dict = {}
    if "max_tokens" in refused:
        sent["max_completion_tokens"] = MAX_TOKENS
    else:
        sent["max_tokens"] = MAX_TOKENS
    if "temperature" not in refused:
        sent["temperature"] = TEMPERATURE
    if refused:
        sent["refused"] = list(refused)
    return sent


@pytest.mark.parametrize("refuse", MODES, ids=["+".join(m) for m in MODES])
def test_cli_answers_refused_parameters_once_per_run(tmp_path, refuse):
    names = [f"class {i}" for i in range(8)]
    with FakeLLM(per_class=3, refuse=refuse, delay=0.05) as server:
        cfg = fast_cfg(tmp_path, names, server, concurrency=4, timeout=10.0)
        r = run_cli(*cli_args(cfg), "--model", "o4-mini", "--max-tokens", str(MAX_TOKENS), "--json")
        bodies = [x.body for x in server.requests]
    assert r.returncode == 0, r.stderr
    # One extra request per refused parameter for the whole run, though 4 workers ask at once.
    assert len(bodies) == len(names) + len(refuse)
    want = expected_request(refuse)
    sent_params = {k: v for k, v in want.items() if k != "refused"}
    for body in bodies[len(refuse):]:  # every request after the refusals
        assert {k: body[k] for k in ("max_tokens", "max_completion_tokens", "temperature") if k in body} == sent_params
    assert "max_tokens" in bodies[0] and bodies[0]["temperature"] == TEMPERATURE  # the first asked as configured
    # One line per refused parameter, naming it and the server's reason.
    assert r.stderr.count("the server refused 'max_tokens'") == ("max_tokens" in refuse)
    assert r.stderr.count(f"the server refused temperature {TEMPERATURE}") == ("temperature" in refuse)
    if "max_tokens" in refuse:
        assert "'max_completion_tokens' for the rest of this run" in r.stderr
    if "temperature" in refuse:
        assert "Only the default (1) value is supported" in r.stderr
    summary = json.loads(r.stdout)
    assert (summary["done"], summary["calls"], summary["retries"]) == (len(names), len(bodies), 0)
    assert (summary["resent"], summary["request"]) == (len(refuse), want)
    records, bad = read_records(tmp_path / "d.jsonl")
    assert bad == 0 and sorted(x.category for x in records) == names
    assert all(x.request == want for x in records)
    assert all(x.temperature == (None if "temperature" in refuse else TEMPERATURE) for x in records)
    assert sum(x.usage["requests"] for x in records) == len(bodies)


def test_a_server_that_accepts_everything_costs_no_extra_request(tmp_path):
    with FakeLLM(per_class=3) as server:
        s = run_describe(fast_cfg(tmp_path, ["a", "b", "c"], server, max_tokens=MAX_TOKENS), env=KEY_ENV)
    assert (s.calls, s.resent, s.request) == (3, 0, expected_request(()))
    assert all("max_completion_tokens" not in x.body for x in server.requests)
    assert [x.request for x in read_records(tmp_path / "d.jsonl")[0]] == [expected_request(())] * 3


def test_a_refusal_named_only_in_the_message_is_answered_too(tmp_path):
    """A proxy may keep OpenAI's message but drop `param` and `code`."""
    message = "Unsupported parameter: 'max_tokens' is not supported with this model. Use 'max_completion_tokens' instead."
    with FakeLLM(per_class=3, script={"a": [Status(400, message=message)]}) as server:
        s = run_describe(fast_cfg(tmp_path, ["a"], server, max_tokens=MAX_TOKENS), env=KEY_ENV)
        bodies = [x.body for x in server.requests]
    assert (s.done, s.calls, s.retries, s.resent) == (1, 2, 0, 1)
    assert "max_tokens" in bodies[0] and bodies[1]["max_completion_tokens"] == MAX_TOKENS and "max_tokens" not in bodies[1]
    assert read_records(tmp_path / "d.jsonl")[0][0].request == {"max_completion_tokens": MAX_TOKENS,
                                                                "temperature": TEMPERATURE, "refused": ["max_tokens"]}


def test_any_other_400_is_a_failed_class_not_an_adaptation(tmp_path):
    other = Status(400, message="Unsupported value: 'messages[0].role' does not support 'system' with this model.",
                   error_code="unsupported_value", param="messages[0].role")
    with FakeLLM(per_class=3, script={"a": [other]}) as server:
        s = run_describe(fast_cfg(tmp_path, ["a"], server, max_tokens=MAX_TOKENS, max_reasks=0), env=KEY_ENV)
        assert len(server.requests) == 1  # neither resent nor retried
    assert (s.done, list(s.failed), s.resent) == (0, ["a"], 0)
    failure = read_state(tmp_path / "d.jsonl").failed["a"]
    assert "HTTP 400" in failure.error and failure.request == expected_request(())


# --------------------------------------------------------------------------------------------
# Descriptions files written by hand
# --------------------------------------------------------------------------------------------


def hand_written(path, records: dict[str, list[str]]) -> None:
    path.write_text("".join(json.dumps({"category": c, "descriptions": d}) + "\n" for c, d in records.items()))


def test_describe_resumes_over_a_hand_written_file(tmp_path):
    names = ["waving", "jumping", "running"]
    out = tmp_path / "d.jsonl"
    hand_written(out, {"waving": ["a hand moves side to side", "an arm sways", "fingers flutter"],
                       "jumping": ["both feet leave the ground", "knees bend", "arms swing up"]})
    with FakeLLM(per_class=3) as server:
        cfg = fast_cfg(tmp_path, names, server)
        plan = run_cli(*cli_args(cfg), "--dry-run", "--json")
        r = run_cli(*cli_args(cfg))
        asked = server.categories()
    assert plan.returncode == 0, plan.stderr
    assert json.loads(plan.stdout)["without_provenance"] == 2
    assert r.returncode == 0, r.stderr
    assert asked == ["running"]  # the hand-written classes are kept, not redone
    assert "2 finished class(es)" in r.stderr and "no `lss describe` provenance" in r.stderr
    assert "made with a different" not in r.stderr  # unknown is not different
    records = {x.category: x for x in read_records(out)[0]}
    assert sorted(records) == sorted(names)
    assert (records["waving"].model, records["waving"].prompt_sha256, records["waving"].created) == ("unknown", None, None)
    assert records["running"].prompt_sha256 is not None and records["running"].model == "gpt-4o-mini"


def test_build_concepts_accepts_a_hand_written_file(tmp_path):
    labels = tmp_path / "labels.txt"
    labels.write_text("waving\njumping\n")
    desc = tmp_path / "hand.jsonl"
    hand_written(desc, {"waving": ["a hand moves side to side", "an arm sways"],
                        "jumping": ["both feet leave the ground"]})
    out = tmp_path / "c.safetensors"
    r = run_lss("build-concepts", "--labels", labels, "--descriptions", desc, "--model", "lss-tiny",
                "--pretrained", "none", "--device", "cpu", "--out", out, "--json")
    assert r.returncode == 0, r.stderr
    bank = load_concept_bank(out)
    assert bank.description_texts == ["a hand moves side to side", "an arm sways", "both feet leave the ground"]
    assert bank.metadata["sources"]["descriptions"]["writers"] == ["unknown"]
