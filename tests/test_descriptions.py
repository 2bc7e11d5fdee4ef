from __future__ import annotations

import pytest

from lss_cli.describe.records import DescriptionRecord, append_record, read_records
from lss_cli.errors import InputFileError


def test_append_and_torn_last_line(tmp_path):
    path = tmp_path / "d.jsonl"
    append_record(path, DescriptionRecord("waving", ["a hand moves side to side"], "m"))
    append_record(path, DescriptionRecord("jumping", ["both feet leave the ground"], "m"))
    with open(path, "a") as f:
        f.write('{"category": "running", "descri')  # a crash mid-write
    records, bad = read_records(path)
    assert [r.category for r in records] == ["waving", "jumping"] and bad == 1


def test_later_record_wins_and_bad_records_are_named(tmp_path):
    path = tmp_path / "d.jsonl"
    append_record(path, DescriptionRecord("waving", ["old"], "m"))
    append_record(path, DescriptionRecord("waving", ["new"], "m"))
    assert read_records(path)[0][0].descriptions == ["new"]
    path.write_text('{"category": "x"}\n')
    with pytest.raises(InputFileError, match=r"d.jsonl:1: record lacks descriptions(?!,)"):
        read_records(path)


def test_failure_records_are_not_results_and_a_later_success_wins(tmp_path):
    from lss_cli.describe.records import FailedRecord, read_state

    path = tmp_path / "d.jsonl"
    append_record(path, FailedRecord("waving", "HTTP 500 (gave up)", "m"))
    append_record(path, DescriptionRecord("jumping", ["both feet leave the ground"], "m"))
    assert read_records(path) == ([read_state(path).records["jumping"]], 0)
    assert read_state(path).failed["waving"].error == "HTTP 500 (gave up)"
    append_record(path, DescriptionRecord("waving", ["a hand moves"], "m"))
    append_record(path, FailedRecord("jumping", "late failure", "m"))  # never undoes a success
    state = read_state(path)
    assert sorted(state.records) == ["jumping", "waving"] and state.failed == {}


def test_append_after_a_torn_line_and_repair_tail(tmp_path):
    from lss_cli.describe.records import repair_tail

    path = tmp_path / "d.jsonl"
    append_record(path, DescriptionRecord("waving", ["a hand moves"], "m"))
    with open(path, "a") as f:
        f.write('{"category": "jumping", "descr')
    append_record(path, DescriptionRecord("running", ["legs move fast"], "m"))  # not glued to the torn line
    assert sorted(r.category for r in read_records(path)[0]) == ["running", "waving"]
    assert read_records(path)[1] == 1

    with open(path, "a") as f:
        f.write('{"category": "sitting", "descr')
    assert repair_tail(path) == '{"category": "sitting", "descr'
    assert path.read_text().endswith("\n") and repair_tail(path) is None
    with open(path, "a") as f:  # a complete record that only lost its newline is kept
        f.write('{"category": "sitting", "descriptions": ["knees bend"], "model": "m"}')
    assert repair_tail(path) is None
    assert "sitting" in {r.category for r in read_records(path)[0]} and path.read_text().endswith("\n")


def test_a_record_needs_only_category_and_descriptions(tmp_path):
    """A file written by hand or by another tool: provenance unknown, extra keys ignored; a file
    `lss describe` wrote before `request` existed still reads, with `request` unknown."""
    from lss_cli.describe.records import UNKNOWN

    path = tmp_path / "d.jsonl"
    path.write_text('{"category": "waving", "descriptions": ["a hand moves"]}\n'
                    '{"category": "jumping", "descriptions": ["feet leave the ground"], "source": "my notes", "model": null}\n'
                    '{"category": "running", "descriptions": ["legs move fast"], "model": "gpt-4o-mini", '
                    '"prompt_file": "prompts/describe_actions_v1.yaml", "prompt_sha256": "' + "0" * 64 + '", '
                    '"temperature": 0.7, "created": "2025-01-01T00:00:00+00:00", "usage": null}\n')
    records = {r.category: r for r in read_records(path)[0]}
    for hand in (records["waving"], records["jumping"]):
        assert (hand.model, hand.prompt_file, hand.prompt_sha256, hand.temperature, hand.created, hand.request) == (
            UNKNOWN, None, None, None, None, None)
        assert not hand.has_provenance
    old = records["running"]
    assert old.has_provenance and (old.model, old.created, old.request) == ("gpt-4o-mini", "2025-01-01T00:00:00+00:00", None)
    path.write_text('{"category": 3, "descriptions": ["x"]}\n')
    with pytest.raises(InputFileError, match="'category' must be a string"):
        read_records(path)
