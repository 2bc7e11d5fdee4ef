from __future__ import annotations

import hashlib

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


# ViFi-CLIP's label files (muzairkhattak/ViFi-CLIP at e2d1948307f582052078eb8a4afbeb50247166f1) as
# git blob ids: `git ls-tree` there prints them. Its zero-shot configs
# (configs/zero_shot/eval/k600/16_32_K600_ZS_split<k>.yaml) read the video list
# datasets_splits/k600_splits/ZS_split<k>_K600_eval.txt with LABEL_LIST labels/ZS_split<k>_K600.csv,
# so that CSV's `id,name` rows are the ids its eval lists use.
VIFI_CLIP_BLOBS = {
    "kinetics600-zs1": ("labels/ZS_split1_K600.csv", "\n", "6eb763b1529e8ad914fea04a2f6ad8f90705023f"),
    "kinetics600-zs2": ("labels/ZS_split2_K600.csv", "\n", "43b8468f6cc9c8ede679419d37b2c8981d83aab6"),
    "kinetics600-zs3": ("labels/ZS_split3_K600.csv", "\n", "3f5ec7fb07b3c04529576a184ad3a25a42a0ee59"),
    "kinetics400": ("labels/kinetics_400_labels.csv", "\n", "31c52a4c6036943b55f9780382a01b4fe6c64533"),
    "kinetics600": ("labels/kinetics_600_labels.csv", "\r\n", "7117f1ff48fe1ab7bc87d9651dcb38ecd6cbe00d"),
}


def vifi_clip_csv_blob(names: tuple[str, ...], newline: str) -> str:
    """The git blob id of the `id,name` CSV ViFi-CLIP would ship for `names` in this id order."""
    text = newline.join(["id,name", *(f"{i},{n}" for i, n in enumerate(names))]) + newline
    data = text.encode()
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@pytest.mark.parametrize("name", sorted(VIFI_CLIP_BLOBS))
def test_id_order_is_vifi_clips(name):
    """The shipped lists, in their order, rebuild ViFi-CLIP's label CSVs byte for byte: id i of
    `kinetics600-zs<k>` is id i of ViFi-CLIP's ZS_split<k>_K600 (what its eval lists use)."""
    _, newline, blob = VIFI_CLIP_BLOBS[name]
    names = load_label_set(name).names
    assert vifi_clip_csv_blob(names, newline) == blob
    # the check sees the order, not only the set: two neighbours swapped give another file
    swapped = (names[1], names[0], *names[2:])
    assert vifi_clip_csv_blob(swapped, newline) != blob


def test_k600_zero_shot_ids_follow_the_k600_order():
    """Each split's ids (test and val) and the 220 new classes list K600 classes in K600 id order."""
    k600 = load_label_set("kinetics600").names
    for name in ("kinetics600-new220", *(f"kinetics600-zs{k}{part}" for k in (1, 2, 3) for part in ("", "-val"))):
        names = set(load_label_set(name).names)
        assert load_label_set(name).names == tuple(n for n in k600 if n in names), name
