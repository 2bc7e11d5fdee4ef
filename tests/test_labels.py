from __future__ import annotations

import pytest

from lss_cli.errors import ConfigError, InputFileError
from lss_cli.labels import BUILTIN, load_label_set, parse_label_arg, readable


@pytest.mark.parametrize("name, count", [
    ("kinetics400", 400), ("kinetics600", 600), ("ucf101", 101), ("ucf101-official", 101),
    ("hmdb51", 51), ("hmdb51-official", 51), ("lss530", 530), ("kinetics600-new220", 220),
    ("kinetics600-zs1", 160), ("kinetics600-zs2", 160), ("kinetics600-zs3", 160),
    ("kinetics600-zs1-val", 60),
])
def test_counts(name, count):
    ls = load_label_set(name)
    assert len(ls) == count and len(set(ls.names)) == count


def test_readable_forms_match_official_names():
    for official, nice in (("ucf101-official", "ucf101"), ("hmdb51-official", "hmdb51")):
        assert [readable(n) for n in load_label_set(official).names] == list(load_label_set(nice).names)
    assert readable("ApplyEyeMakeup") == "apply eye makeup" and readable("YoYo") == "yo yo"
    assert readable("brush_hair") == "brush hair"


def test_lss530_is_the_union():
    union = set()
    for name in ("kinetics400", "ucf101", "hmdb51"):
        union |= {readable(n) for n in load_label_set(name).names}
    assert set(load_label_set("lss530").names) == union


def test_k600_zero_shot_splits():
    k600 = set(load_label_set("kinetics600").names)
    k400 = {n.lower() for n in load_label_set("kinetics400").names}
    new = set(load_label_set("kinetics600-new220").names)
    for k in (1, 2, 3):
        test = set(load_label_set(f"kinetics600-zs{k}").names)
        val = set(load_label_set(f"kinetics600-zs{k}-val").names)
        assert not test & val and test | val == new
        assert test <= k600 and not {n.lower() for n in test} & k400


def test_user_label_file(tmp_path):
    f = tmp_path / "labels.txt"
    f.write_text("# my classes\nwaving\n\njumping\n")
    assert load_label_set(str(f)).names == ("waving", "jumping")
    f.write_text("a\nb\na\n")
    with pytest.raises(InputFileError, match=r"labels.txt:3: duplicate class name 'a' \(first on line 1\)"):
        load_label_set(str(f))
    with pytest.raises(ConfigError, match="neither a built-in"):
        load_label_set("ucf-101")
    assert parse_label_arg("cat, dog,bird").names == ("cat", "dog", "bird")
    assert set(BUILTIN) >= {"lss530", "ucf101", "hmdb51"}
