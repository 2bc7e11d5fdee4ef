"""Annotation readers and dataset presets: the shipped official split files, every list format,
class ids matched by name, line-numbered errors, and the compact VideoList."""

from __future__ import annotations

import pickle
import shutil

import numpy as np
import pytest

from lss_cli.data.datasets import VideoList, load_dataset, parse_split, read_classes, read_list
from lss_cli.errors import ConfigError, InputFileError
from lss_cli.labels import load_label_set, package_file

# ---- UCF101 (official files shipped in the package) ---------------------------------------

UCF_COUNTS = {1: (9537, 3783), 2: (9586, 3734), 3: (9624, 3696)}


@pytest.mark.parametrize("split", [1, 2, 3])
def test_ucf101_official_counts_and_labels_by_folder(split):
    train = load_dataset("ucf101", "/videos/ucf101", f"train{split}")
    test = load_dataset("ucf101", "/videos/ucf101", (split, "test"))
    assert (len(train), len(test)) == UCF_COUNTS[split]
    official = load_label_set("ucf101-official").names
    for videos in (train, test):
        assert videos.classes == load_label_set("ucf101").names  # readable names for prompts
        assert set(videos.labels.tolist()) == set(range(101))  # every class present
        for i in range(0, len(videos), 97):  # the label is the class of the path's folder
            assert official[videos.label(i)] == videos.relpath(i).split("/")[0]
    assert not set(map(train.relpath, range(len(train)))) & set(map(test.relpath, range(len(test))))


def test_ucf101_handstand_pushups_quirk():
    """Folder `HandstandPushups/`, files `v_HandStandPushups_*`: the label follows the folder."""
    test = load_dataset("ucf101", "/v", "test1")
    hits = [i for i in range(len(test)) if "v_HandStandPushups_" in test.relpath(i)]
    assert hits
    expected = load_label_set("ucf101-official").names.index("HandstandPushups")
    assert {test.label(i) for i in hits} == {expected}
    assert test.classes[expected] == "handstand pushups"
    assert test.path(hits[0]) == f"/v/{test.relpath(hits[0])}"


def _ucf_fixture(tmp_path, train_lines, test_lines=("ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi",)):
    d = tmp_path / "ucfsplits"
    d.mkdir()
    shutil.copy(package_file("splits/ucf101/classInd.txt"), d / "classInd.txt")
    (d / "trainlist01.txt").write_text("\r\n".join(train_lines) + "\r\n")
    (d / "testlist01.txt").write_text("\r\n".join(test_lines) + "\r\n")
    return d


def test_ucf101_id_disagreeing_with_folder_is_a_line_error(tmp_path):
    d = _ucf_fixture(tmp_path, ["ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1",
                                "Archery/v_Archery_g01_c01.avi 1"])
    with pytest.raises(InputFileError, match=r"trainlist01\.txt:2: class id 1 is 'ApplyEyeMakeup'.*'Archery'"):
        load_dataset("ucf101", "/v", "train1", splits_dir=d)


def test_ucf101_splits_dir_small_fixture(tmp_path):
    d = _ucf_fixture(tmp_path, ["ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1", "YoYo/v_YoYo_g01_c01.avi 101"],
                     ["YoYo/v_YoYo_g02_c01.avi", "HandstandPushups/v_HandStandPushups_g01_c01.avi"])
    train = load_dataset("ucf101", "/v", "train1", splits_dir=d)
    assert train.labels.tolist() == [0, 100]
    test = load_dataset("ucf101", "/v", "test1", splits_dir=d)
    assert test.labels.tolist() == [100, 36]
    (d / "testlist01.txt").write_text("NoSuchClass/v_x.avi\r\n")
    with pytest.raises(InputFileError, match=r"testlist01\.txt:1: folder 'NoSuchClass'"):
        load_dataset("ucf101", "/v", "test1", splits_dir=d)


# ---- HMDB51 ---------------------------------------------------------------------------------


@pytest.mark.parametrize("split", [1, 2, 3])
def test_hmdb51_official_counts(split):
    train = load_dataset("hmdb51", "/videos/hmdb51", (split, "train"))
    test = load_dataset("hmdb51", "/videos/hmdb51", f"test{split}")
    assert (len(train), len(test)) == (3570, 1530)
    assert np.bincount(train.labels, minlength=51).tolist() == [70] * 51
    assert np.bincount(test.labels, minlength=51).tolist() == [30] * 51


def test_hmdb51_classes_matched_by_name_and_hash_names_kept():
    """kick/kick_ball and sword/sword_exercise are swapped in some sources: ids follow names here.
    Files whose names start with '#' are videos, not comments."""
    train = load_dataset("hmdb51", "/h", "train1")
    official = load_label_set("hmdb51-official").names
    assert official.index("kick") == 20 and official.index("kick_ball") == 21
    for i in range(len(train)):
        assert official[train.label(i)] == train.relpath(i).split("/")[0]
    kick_ball = {train.label(i) for i in range(len(train)) if train.relpath(i).startswith("kick_ball/")}
    assert kick_ball == {21} and train.classes[21] == "kick ball"
    assert any(train.relpath(i).split("/")[1].startswith("#") for i in range(len(train)))


def test_hmdb51_bad_code_and_missing_class_file(tmp_path):
    d = tmp_path / "hmdb"
    shutil.copytree(package_file("splits/hmdb51"), d)
    (d / "wave_test_split1.txt").write_text("a.avi 1 \nb.avi 7 \n")
    with pytest.raises(InputFileError, match=r"wave_test_split1\.txt:2: .*code 0, 1 or 2"):
        load_dataset("hmdb51", "/h", "train1", splits_dir=d)
    (d / "wave_test_split1.txt").unlink()
    with pytest.raises(InputFileError, match="no split-1 file for 1 classes"):
        load_dataset("hmdb51", "/h", "test1", splits_dir=d)


def test_official_split_out_of_range():
    with pytest.raises(ConfigError, match="does not exist"):
        load_dataset("ucf101", "/v", "test4")
    with pytest.raises(ConfigError, match="does not exist"):
        load_dataset("hmdb51", "/v", "val1")


# ---- Kinetics -------------------------------------------------------------------------------

K_HEADER = "label,youtube_id,time_start,time_end,split,is_cc\n"


def _touch(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")


def test_kinetics_csv_flat_layout_and_name_ids(tmp_path):
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations" / "train.csv").write_text(
        K_HEADER + "abseiling,aaa,14,24,train,0\n\"passing American football (in game)\",bbb,0.0,10.0,train,0\n")
    _touch(tmp_path / "train" / "aaa_000014_000024.mp4")
    videos = load_dataset("kinetics400", tmp_path, "train")
    k400 = load_label_set("kinetics400").names
    assert [videos.relpath(i) for i in range(2)] == ["train/aaa_000014_000024.mp4", "train/bbb_000000_000010.mp4"]
    assert videos.labels.tolist() == [k400.index("abseiling"), k400.index("passing American football (in game)")]
    assert videos.classes == k400


def test_kinetics_class_folder_layout_detected_and_unlabelled_test(tmp_path):
    csv = tmp_path / "val.csv"
    csv.write_text(K_HEADER + "air drumming,ccc,1,11,val,0\n")
    _touch(tmp_path / "val" / "air drumming" / "ccc_000001_000011.mp4")
    videos = load_dataset("kinetics600", tmp_path, "val")
    assert videos.relpath(0) == "val/air drumming/ccc_000001_000011.mp4"
    (tmp_path / "test.csv").write_text("youtube_id,time_start,time_end,split\nddd,3,13,test\n")
    test = load_dataset("kinetics600", tmp_path, "test")
    assert test.labels.tolist() == [-1] and test.relpath(0) == "test/ddd_000003_000013.mp4"


def test_kinetics_errors_name_the_line(tmp_path):
    csv = tmp_path / "k.csv"
    csv.write_text(K_HEADER + "abseiling,aaa,14,24,train,0\nabseilling,bbb,1,11,train,0\n")
    with pytest.raises(InputFileError, match=r"k\.csv:3: class 'abseilling'") as e:
        load_dataset("kinetics400", tmp_path, "train", list_file=csv)
    assert "abseiling" in e.value.hint
    csv.write_text(K_HEADER + "abseiling,aaa,x,24,train,0\n")
    with pytest.raises(InputFileError, match=r"k\.csv:2: time_start"):
        load_dataset("kinetics400", tmp_path, "train", list_file=csv)
    with pytest.raises(InputFileError, match="no Kinetics CSV for split 'val'"):
        load_dataset("kinetics400", tmp_path / "nowhere", "val")


def test_kinetics600_zeroshot(tmp_path):
    classes = load_label_set("kinetics600-zs2").names
    lst = tmp_path / "zs2.txt"
    lst.write_text("val/a.mp4 0\nval/b c.mp4 159\n")
    videos = load_dataset("kinetics600-zs", tmp_path, 2, list_file=lst)
    assert len(videos.classes) == 160 and videos.classes == classes
    assert videos.labels.tolist() == [0, 159] and videos.relpath(1) == "val/b c.mp4"
    lst.write_text("val/a.mp4 160\n")
    with pytest.raises(InputFileError, match=r"zs2\.txt:1: label 160 out of range"):
        load_dataset("kinetics600-zs", tmp_path, "test2", list_file=lst)
    csv = tmp_path / "k600_val.csv"  # a full K600 CSV: only the split's 160 classes are the split
    csv.write_text(K_HEADER + f"{classes[5]},aaa,1,11,val,0\nabseiling,bbb,1,11,val,0\n")
    videos = load_dataset("kinetics600-zs", tmp_path, (2, "test"), list_file=csv)
    assert videos.labels.tolist() == [5] and "1 of 2 rows" in videos.source
    with pytest.raises(ConfigError, match="needs a video list"):
        load_dataset("kinetics600-zs", tmp_path, 1)


def test_load_list_kinetics_csv_parsed_once(tmp_path, monkeypatch):
    """`load_list` takes the class names and the videos from ONE parse of the CSV."""
    import lss_cli.data.datasets as ds

    csv = tmp_path / "any.csv"
    csv.write_text(K_HEADER + "zumba,aaa,1,11,val,0\nabseiling,bbb,2,12,val,0\n")
    calls = []
    real = ds.read_kinetics_csv
    monkeypatch.setattr(ds, "read_kinetics_csv", lambda path: calls.append(path) or real(path))
    videos = ds.load_list(csv, tmp_path)
    assert videos.classes == ("abseiling", "zumba") and videos.labels.tolist() == [1, 0]
    assert videos.relpath(0) == "val/aaa_000001_000011.mp4"
    assert len(calls) == 1


# ---- generic lists, folder, synthetic -------------------------------------------------------


def test_list_formats(tmp_path):
    f = tmp_path / "a.txt"
    f.write_text("# comment\nclips/my video.mp4 2\n\nclips/b.mp4\t0\n")
    assert read_list(f, ["x", "y", "z"]) == (["clips/my video.mp4", "clips/b.mp4"], [2, 0])
    f.write_text("clips/a.mp4\nclips/b c.mp4\n")
    assert read_list(f) == (["clips/a.mp4", "clips/b c.mp4"], [-1, -1])
    f.write_text("clips/a.mp4 1\nclips/b.mp4\n")
    with pytest.raises(InputFileError, match=r"a\.txt:2: line 1 has a label"):
        read_list(f)
    f.write_text("clips/a.mp4 1\nclips/b.mp4 3\n")
    with pytest.raises(InputFileError, match=r"a\.txt:2: label 3 out of range \(expected 0\.\.2"):
        read_list(f, ["x", "y", "z"])
    c = tmp_path / "a.csv"
    c.write_text("path,label\nclips/a,b.mp4,1\n")
    with pytest.raises(InputFileError, match=r"a\.csv:2: expected `path,label`"):
        read_list(c)
    c.write_text("path,label\n\"clips/a,b.mp4\",z\nclips/c.mp4,0\nclips/d.mp4,\n")
    assert read_list(c, ["x", "y", "z"]) == (["clips/a,b.mp4", "clips/c.mp4", "clips/d.mp4"], [2, 0, -1])
    c.write_text("clips/a.mp4,zz\n")
    with pytest.raises(InputFileError, match=r"a\.csv:1: unknown class 'zz'"):
        read_list(c, ["x", "y", "z"])


def test_list_preset_finds_classes_beside_the_list(tmp_path):
    (tmp_path / "lists").mkdir()
    (tmp_path / "lists" / "classes.txt").write_text("jump\nrun\n")
    (tmp_path / "lists" / "train.txt").write_text("v/a.mp4 1\nv/b.mp4 0\n")
    videos = load_dataset("list", tmp_path, "ignored", list_file=tmp_path / "lists" / "train.txt")
    assert videos.classes == ("jump", "run") and videos.labels.tolist() == [1, 0]
    assert videos.path(0) == str(tmp_path / "v/a.mp4")
    (tmp_path / "lists" / "classes.txt").unlink()
    assert load_dataset("list", tmp_path, "x", list_file=tmp_path / "lists" / "train.txt").classes == ("0", "1")


def test_read_classes(tmp_path):
    f = tmp_path / "c.txt"
    f.write_text("1 Alpha\r\n2 Beta\r\n")
    assert read_classes(f) == ("Alpha", "Beta")
    f.write_text("moving left\nmoving right\n")
    assert read_classes(f) == ("moving left", "moving right")
    f.write_text("a\nb\na\n")
    with pytest.raises(InputFileError, match=r"c\.txt:3: duplicate class name 'a'"):
        read_classes(f)


def test_folder_preset(tmp_path):
    for rel in ("run/x.mp4", "run/sub/y.avi", "jump/z.MKV", "jump/notes.txt", ".hidden/w.mp4"):
        _touch(tmp_path / rel)
    videos = load_dataset("folder", tmp_path, "any")
    assert videos.classes == ("jump", "run")
    assert [(videos.relpath(i), videos.label(i)) for i in range(len(videos))] == [
        ("jump/z.MKV", 0), ("run/x.mp4", 1), ("run/sub/y.avi", 1)]
    with pytest.raises(InputFileError, match="no video files"):
        load_dataset("folder", tmp_path / "jump", "any")


def test_synthetic_preset(synth_dataset):
    train = load_dataset("synthetic", synth_dataset, "train")
    test = load_dataset("synthetic", synth_dataset, "test")
    assert (len(train), len(test)) == (12, 4)
    assert train.classes == ("moving left", "moving right", "moving up", "moving down")
    assert all(__import__("os").path.isfile(train.path(i)) for i in range(len(train)))
    with pytest.raises(ConfigError, match="one split"):
        load_dataset("synthetic", synth_dataset, "test2")


def test_unknown_preset_suggests():
    with pytest.raises(ConfigError, match="unknown dataset 'ucf-101'") as e:
        load_dataset("ucf-101", "/v", "test1")
    assert "ucf101" in e.value.hint


def test_parse_split():
    assert parse_split("train1") == (1, "train")
    assert parse_split("test_3") == (3, "test")
    assert parse_split((2, "Train")) == (2, "train")
    assert parse_split(2) == (2, "test") and parse_split("2") == (2, "test")
    assert parse_split("val") == (None, "val")
    with pytest.raises(ConfigError):
        parse_split("tr@in")


# ---- VideoList ------------------------------------------------------------------------------


def test_videolist_is_compact_and_picklable():
    paths = [f"class_{i % 400}/video_{i:07d}.mp4" for i in range(50_000)]
    videos = VideoList("/data", paths, np.arange(50_000) % 400, [str(i) for i in range(400)])
    # One byte buffer + offsets + labels: no per-path Python objects held by the list.
    assert not any(isinstance(v, list) for v in vars(videos).values())
    assert videos.nbytes == sum(map(len, paths)) + 8 * (len(paths) + 1) + 8 * len(paths)
    blob = pickle.dumps(videos)
    assert len(blob) < 1.1 * videos.nbytes + 10_000
    back = pickle.loads(blob)
    assert back.relpath(12345) == paths[12345] and back.label(12345) == 12345 % 400
    sub = videos.subset([3, 1])
    assert [sub.relpath(0), sub.relpath(1)] == [paths[3], paths[1]] and sub.labels.tolist() == [3, 1]


def test_videolist_rejects_out_of_range_labels():
    with pytest.raises(ValueError, match="outside"):
        VideoList("/r", ["a.mp4"], [2], ["x", "y"])
    assert VideoList("/r", ["ü/ä.mp4"], [-1], ["x"]).relpath(0) == "ü/ä.mp4"
