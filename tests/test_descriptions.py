from __future__ import annotations

import pytest

from lss_cli.descriptions import DescriptionRecord, append_record, read_records
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
    with pytest.raises(InputFileError, match=r"d.jsonl:1: record lacks descriptions, model"):
        read_records(path)
