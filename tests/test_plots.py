"""Evaluation plots stay readable at real scale (UCF101's 101 classes, K600's 600)."""

from __future__ import annotations

import random

import matplotlib.image as mpimg
import pytest

from lss_cli.eval.results import per_class_rows, top_confusions, write_plots


def _split(k: int, seed: int = 0) -> dict:
    rng = random.Random(seed)
    classes = [f"class_{i:03d}_with_a_long_name" for i in range(k)]
    confusion = [[0] * (k + 1) for _ in range(k)]
    for i in range(k):
        confusion[i][i] = rng.randint(0, 10)
        confusion[i][rng.randrange(k + 1)] += rng.randint(0, 5)
    per_class = {c: row[i] / max(sum(row), 1) for i, (c, row) in enumerate(zip(classes, confusion, strict=True))}
    return {"split": "1", "classes": classes, "confusion": confusion, "per_class_top1": per_class, "top1": 0.5}


def test_per_class_rows_keep_the_best_and_the_worst():
    per_class = {f"c{i}": i / 100 for i in range(101)} | {"unscored": None}
    rows = per_class_rows(per_class, shown=25)
    assert len(rows) == 50
    assert rows[0] == ("c100", 1.0) and rows[24] == ("c76", 0.76)
    assert rows[25] == ("c23", 0.23) and rows[-1] == ("unscored", 0.0)  # no score counts as 0, listed last
    assert per_class_rows({"a": 0.5, "b": 0.9}) == [("b", 0.9), ("a", 0.5)]


def test_top_confusions_are_the_largest_off_diagonal_cells():
    confusion = [[5, 3, 0, 1],  # last column: unreadable
                 [0, 4, 6, 0],
                 [2, 0, 1, 0]]
    got = top_confusions(confusion, ["a", "b", "c"], n=3)
    assert [(g["true"], g["predicted"], g["count"]) for g in got] == [("b", "c", 6), ("a", "b", 3), ("c", "a", 2)]
    assert got[0]["share"] == pytest.approx(0.6)
    assert [(g["true"], g["predicted"]) for g in top_confusions(confusion, ["a", "b", "c"])][-1] == ("a", "unreadable")


@pytest.mark.parametrize("k", [8, 101, 600])
def test_plots_have_readable_sizes_at_any_class_count(tmp_path, k):
    # At 101 classes the per-class chart was a 2181 x 480 strip with 6-pt labels; at 600 a
    # confusion matrix without labels. Now: at most 50 labelled bars, and the largest confusions.
    results = {"protocol": "zero-shot", "dataset": "ucf101", "splits": [_split(k)]}
    written = write_plots(results, tmp_path)
    names = sorted(p.rsplit("/", 1)[1] for p in written)
    expected = "confusion_zero-shot-split1.png" if k <= 30 else "top_confusions_zero-shot-split1.png"
    assert names == sorted([expected, "per_class_zero-shot-split1.png"])
    for path in written:
        height, width = mpimg.imread(path).shape[:2]
        assert width <= 1500 and height <= 1600, (path, width, height)
