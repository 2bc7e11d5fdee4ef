"""`lss results compare`: evaluation results side by side, one column per model.

Input: results documents as `lss eval` writes them (results.json), given as files or folders
(every results document below a folder). Documents of one model (the same `model_id` and
checkpoint) form one column, so a model's zero-shot and linear-probe results sit in one column;
the rows are (dataset, protocol, metric), per split and mean ± std, and every column after the
first also gets its change against the first.

Two numbers in one row are comparable only when they were measured the same way: the same views,
splits, classes, prompt templates, probe settings and time-reversal pairs (`protocol_key`). A row
whose columns differ there is refused, naming the difference, unless the caller allows it; then
the difference is kept in `Comparison.differences` and printed under the table.

The demo's baseline-vs-trained table is built here too (`lss_cli.demo`). Nothing here imports
torch: comparing finished results needs no model.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lss_cli.errors import ConfigError, InputFileError
from lss_cli.textfiles import read_text

PROTOCOL_ORDER = ("zero-shot", "linear-probe")  # row groups of one dataset in this order
METRICS = {"top1": "top-1", "top5": "top-5", "direction_accuracy": "direction"}  # results key -> row name
METRIC_ALIASES = {"top1": "top1", "top-1": "top1", "top5": "top5", "top-5": "top5", "direction": "direction_accuracy",
                  "direction_accuracy": "direction_accuracy"}
# The headline numbers: top-1, and the direction accuracy where time-reversal pairs were scored.
DEFAULT_METRICS = ("top1", "direction_accuracy")
FORMATS = ("markdown", "latex", "csv")
SUFFIX_FORMAT = {".md": "markdown", ".markdown": "markdown", ".tex": "latex", ".csv": "csv"}


@dataclass
class Run:
    """One column: a model's results, by (dataset, protocol)."""

    label: str
    model_id: str
    checkpoint: str
    results: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)


@dataclass
class Row:
    """One table row: a metric of one (dataset, protocol), on one split or over all ("mean")."""

    dataset: str
    protocol: str
    metric: str  # results key: top1, top5, direction_accuracy
    split: str  # a split's name, or "mean" (mean ± std over the splits)
    values: list[float | None]  # per run, a fraction in [0, 1]; None: the run lacks it
    stds: list[float | None]  # per run, on "mean" rows over several splits; else None
    changes: list[float | None]  # runs[1:] minus runs[0], where both have a value


@dataclass
class Comparison:
    runs: list[Run]
    rows: list[Row]
    differences: list[str]  # protocol differences that were allowed (empty when all rows match)

    @property
    def datasets(self) -> list[str]:
        return list(dict.fromkeys(r.dataset for r in self.rows))


def is_results(doc: Any) -> bool:
    """Whether a parsed JSON document is an evaluation's results (not a demo summary, a config, ...)."""
    return isinstance(doc, dict) and {"protocol", "splits", "summary", "model_id"} <= doc.keys()


def read_results(path: str | Path) -> dict[str, Any]:
    """One results file, checked to be one."""
    try:
        doc = json.loads(read_text(path, "results file"))
    except json.JSONDecodeError as e:
        raise InputFileError(f"{path} is not JSON ({e.msg}, line {e.lineno})",
                             hint="pass the results.json files `lss eval` writes") from None
    if not is_results(doc):
        raise InputFileError(f"{path} is not an evaluation's results (no protocol, splits, summary and model_id)",
                             hint="pass the results.json files `lss eval` writes, or folders holding them")
    doc.setdefault("results_file", str(path))
    return doc


def find_results(paths: list[str | Path]) -> list[dict[str, Any]]:
    """The results documents of `paths`, in order: a file is read as one; a folder gives every
    results document below it (any *.json, by sorted path; other JSON files are skipped)."""
    docs = []
    for p in map(Path, paths):
        if p.is_dir():
            found = []
            for f in sorted(p.rglob("*.json")):
                try:
                    doc = json.loads(read_text(f, "results file"))
                except (json.JSONDecodeError, InputFileError):
                    continue
                if is_results(doc):
                    doc.setdefault("results_file", str(f))
                    found.append(doc)
            if not found:
                raise InputFileError(f"{p}: no results files below this folder",
                                     hint="`lss eval` writes results.json in its run dir")
            docs += found
        elif p.is_file():
            docs.append(read_results(p))
        else:
            raise InputFileError(f"results not found: {p}")
    return docs


def _default_label(doc: dict[str, Any]) -> str:
    if doc["checkpoint"] == "baseline":
        cfg = doc.get("config", {})
        return f"baseline {cfg.get('model', '')}".strip()
    return Path(doc["checkpoint"]).name or doc["checkpoint"]


def group_runs(docs: list[dict[str, Any]], labels: list[str] | None = None) -> list[Run]:
    """Columns, in the order their models first appear: a model's documents share a column, but a
    second result for a (dataset, protocol) the column already holds opens a new column."""
    runs: list[Run] = []
    for doc in docs:
        key = (doc["dataset"], doc["protocol"])
        run = next((r for r in runs if r.model_id == doc["model_id"] and r.checkpoint == doc["checkpoint"]
                    and key not in r.results), None)
        if run is None:
            run = Run(_default_label(doc), doc["model_id"], doc["checkpoint"])
            runs.append(run)
        run.results[key] = doc
        run.files.append(str(doc.get("results_file", "")))
    if labels:
        if len(labels) != len(runs):
            found = "; ".join(f"{r.label} ({', '.join(r.files)})" for r in runs)
            raise ConfigError(f"{len(labels)} label(s) for {len(runs)} model(s): {found}",
                              hint="give one --label per model, in the order the models first appear")
        for run, label in zip(runs, labels, strict=True):
            run.label = label
    seen: dict[str, int] = {}
    for run in runs:  # two columns never share a name
        seen[run.label] = seen.get(run.label, 0) + 1
        if seen[run.label] > 1:
            run.label = f"{run.label} #{seen[run.label]}"
    return runs


def protocol_key(doc: dict[str, Any]) -> dict[str, Any]:
    """What must match for two results of one (dataset, protocol) to be compared: everything that
    defines the numbers besides the model (paths and wording left out: the same templates read
    from another folder are the same templates)."""
    views, details = doc.get("views", {}), doc.get("protocol_details", {})
    key: dict[str, Any] = {
        "views": {k: views.get(k) for k in ("num_frames", "num_clips", "num_crops", "image_size")},
        "splits": [s["split"] for s in doc["splits"]],
        "classes": [s.get("classes") for s in doc["splits"]],
        "test videos listed": [s.get("videos_listed") for s in doc["splits"]],
    }
    if doc["protocol"] == "zero-shot":
        t = details.get("templates", {})
        key["templates"] = t.get("sha256", t.get("name"))
    else:
        for k in ("features", "standardize", "val_split", "l2_range"):
            key[k] = details.get(k)
    if "direction" in details:
        key["direction pairs"] = details["direction"].get("pairs")
    return key


def _describe(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, str) else value
    return text if len(text) <= 60 else text[:57] + "..."


def protocol_differences(runs: list[Run]) -> list[str]:
    """Each way a row's results differ from the first column's, as a sentence naming both values."""
    out = []
    for key in _row_keys(runs):
        holders = [r for r in runs if key in r.results]
        ref = protocol_key(holders[0].results[key])
        for other in holders[1:]:
            theirs = protocol_key(other.results[key])
            for name in ref:
                if ref[name] != theirs.get(name):
                    out.append(f"{key[0]} {key[1]}: {name} {_describe(ref[name])} ({holders[0].label}) vs "
                               f"{_describe(theirs.get(name))} ({other.label})")
    return out


def _row_keys(runs: list[Run]) -> list[tuple[str, str]]:
    keys = list(dict.fromkeys(k for r in runs for k in r.results))
    datasets = list(dict.fromkeys(d for d, _ in keys))
    order = {p: i for i, p in enumerate(PROTOCOL_ORDER)}
    return sorted(keys, key=lambda k: (datasets.index(k[0]), order.get(k[1], len(order)), k[1]))


def parse_metrics(names: list[str] | None) -> tuple[str, ...]:
    if not names:
        return DEFAULT_METRICS
    out = []
    for name in (n.strip() for part in names for n in part.split(",")):
        if name not in METRIC_ALIASES:
            raise ConfigError(f"unknown metric {name!r}", hint="top1, top5 or direction (comma-separated)")
        out.append(METRIC_ALIASES[name])
    return tuple(dict.fromkeys(out))


def compare(docs: list[dict[str, Any]], *, labels: list[str] | None = None, metrics: tuple[str, ...] = DEFAULT_METRICS,
            allow_different_protocols: bool = False) -> Comparison:
    """The comparison of results documents (module docstring). Raises ConfigError when a row's
    results were measured differently, unless `allow_different_protocols`."""
    if not docs:
        raise ConfigError("no results to compare")
    runs = group_runs(docs, labels)
    differences = protocol_differences(runs)
    if differences and not allow_different_protocols:
        more = f" (and {len(differences) - 1} more)" if len(differences) > 1 else ""
        raise ConfigError(f"these results were measured under different protocols: {differences[0]}{more}",
                          hint="compare results of the same evaluation settings, or pass "
                               "--allow-different-protocols to show them side by side anyway")
    rows = []
    for dataset, protocol in _row_keys(runs):
        docs_ = [r.results.get((dataset, protocol)) for r in runs]
        for metric in metrics:
            if not any(d and metric in d["summary"] for d in docs_):
                continue
            splits = list(dict.fromkeys(s["split"] for d in docs_ if d for s in d["splits"]))
            if len(splits) > 1:
                for split in splits:
                    values = [_split_value(d, split, metric) for d in docs_]
                    rows.append(Row(dataset, protocol, metric, split, values, [None] * len(runs), _changes(values)))
            values = [d["summary"][metric]["mean"] if d and metric in d["summary"] else None for d in docs_]
            stds = [d["summary"][metric]["std"] if d and metric in d["summary"] and len(d["splits"]) > 1 else None
                    for d in docs_]
            rows.append(Row(dataset, protocol, metric, "mean", values, stds, _changes(values)))
    return Comparison(runs, rows, differences)


def _split_value(doc: dict[str, Any] | None, split: str, metric: str) -> float | None:
    if doc is None:
        return None
    return next((s.get(metric) for s in doc["splits"] if s["split"] == split), None)


def _changes(values: list[float | None]) -> list[float | None]:
    first = values[0]
    return [None if first is None or v is None else v - first for v in values[1:]]


# --- rendering: the same cells for the terminal, Markdown and LaTeX; CSV keeps plain numbers ---

def row_name(c: Comparison, row: Row) -> str:
    """"zero-shot top-1", "zero-shot top-1 split 2", "zero-shot top-1 mean ± std"; the dataset
    leads when the table holds several."""
    name = f"{row.dataset} " if len(c.datasets) > 1 else ""
    name += f"{row.protocol} {METRICS[row.metric]}"
    several = any(r.split != "mean" for r in c.rows if (r.dataset, r.protocol, r.metric) ==
                  (row.dataset, row.protocol, row.metric))
    if several:
        name += " mean ± std" if row.split == "mean" else f" split {row.split}"
    return name


def change_headers(c: Comparison) -> list[str]:
    """`change` for two columns, `change (label)` for more (each against the first column)."""
    return ["change"] if len(c.runs) == 2 else [f"change ({r.label})" for r in c.runs[1:]]


def header(c: Comparison, first: str = "metric (%)") -> list[str]:
    return [first, *(r.label for r in c.runs), *change_headers(c)]


def _percent(value: float | None, std: float | None = None) -> str:
    if value is None:
        return "-"
    return f"{100 * value:.2f}" if std is None else f"{100 * value:.2f} ± {100 * std:.2f}"


def text_rows(c: Comparison) -> list[list[str]]:
    """Every row as strings (percent, two decimals), in `header`'s order."""
    return [[row_name(c, row), *(_percent(v, s) for v, s in zip(row.values, row.stds, strict=True)),
             *("-" if d is None else f"{100 * d:+.2f}" for d in row.changes)] for row in c.rows]


def title(c: Comparison) -> str:
    """The datasets, the number of models and, when every result shares them, the views."""
    views = {(d.get("views", {}).get("count"), d.get("views", {}).get("num_frames"))
             for r in c.runs for d in r.results.values()}
    shown = f"; {next(iter(views))[0]} view(s) x {next(iter(views))[1]} frames" if len(views) == 1 else ""
    return f"{', '.join(c.datasets)}: {len(c.runs)} model(s){shown}"


def notes(c: Comparison) -> list[str]:
    """What the reader must know besides the numbers: allowed protocol differences, the files."""
    out = [f"protocol differs: {d}" for d in c.differences]
    out += [f"{r.label}: {', '.join(r.files)}" for r in c.runs]
    return out


def to_markdown(c: Comparison) -> str:
    """A GitHub-flavoured Markdown table; allowed protocol differences follow it, one a line."""
    head = header(c)
    lines = ["| " + " | ".join(_md(h) for h in head) + " |",
             "| " + " | ".join(["---", *["---:"] * (len(head) - 1)]) + " |"]
    lines += ["| " + " | ".join(_md(x) for x in row) + " |" for row in text_rows(c)]
    if c.differences:
        lines += ["", *(f"- protocol differs: {_md(d)}" for d in c.differences)]
    return "\n".join(lines) + "\n"


def _md(text: str) -> str:
    return text.replace("|", "\\|")


LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                 "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def _tex(text: str) -> str:
    text = "".join(LATEX_SPECIAL.get(ch, ch) for ch in text)
    return text.replace("±", r"$\pm$")


def to_latex(c: Comparison) -> str:
    """A `tabular` (booktabs rules) to paste into a paper; the caption is the reader's."""
    head = header(c)
    lines = [r"\begin{tabular}{l" + "r" * (len(head) - 1) + "}", r"\toprule",
             " & ".join(_tex(h) for h in head) + r" \\", r"\midrule"]
    lines += [" & ".join(_tex(x) for x in row) + r" \\" for row in text_rows(c)]
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines) + "\n"


def to_csv(c: Comparison) -> str:
    """One line per row, numbers in percent at full precision: dataset, protocol, metric, split,
    then per model its value (and std on mean rows), then each change against the first model."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["dataset", "protocol", "metric", "split", *(x for r in c.runs for x in (r.label, f"{r.label} std")),
                *(f"change ({r.label})" for r in c.runs[1:])])
    for row in c.rows:
        cells = [x for v, s in zip(row.values, row.stds, strict=True) for x in (_num(v), _num(s))]
        w.writerow([row.dataset, row.protocol, METRICS[row.metric], row.split, *cells, *map(_num, row.changes)])
    return buf.getvalue()


def _num(value: float | None) -> str:
    return "" if value is None else repr(100 * value)


RENDERERS = {"markdown": to_markdown, "latex": to_latex, "csv": to_csv}


def render(c: Comparison, fmt: str) -> str:
    if fmt not in RENDERERS:
        raise ConfigError(f"unknown format {fmt!r}", hint=f"one of: {', '.join(FORMATS)}")
    return RENDERERS[fmt](c)


def format_of(out: str | Path, fmt: str | None) -> str:
    """--format, else the --out file's suffix (.md, .tex, .csv)."""
    if fmt is not None:
        return render_format(fmt)
    suffix = Path(out).suffix.lower()
    if suffix not in SUFFIX_FORMAT:
        raise ConfigError(f"cannot tell the format of {out} from its suffix",
                          hint="name it .md, .tex or .csv, or pass --format markdown|latex|csv")
    return SUFFIX_FORMAT[suffix]


def render_format(fmt: str) -> str:
    if fmt not in FORMATS:
        raise ConfigError(f"unknown format {fmt!r}", hint=f"one of: {', '.join(FORMATS)}")
    return fmt


def to_dict(c: Comparison) -> dict[str, Any]:
    """The comparison as JSON-ready data (`--json`, the demo's summary)."""
    return {"runs": [{"label": r.label, "model_id": r.model_id, "checkpoint": r.checkpoint, "files": r.files}
                     for r in c.runs],
            "rows": [{"name": row_name(c, row), "dataset": row.dataset, "protocol": row.protocol,
                      "metric": row.metric, "split": row.split, "values": row.values, "stds": row.stds,
                      "changes": row.changes} for row in c.rows],
            "differences": c.differences}
