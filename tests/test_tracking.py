"""Experiment tracking: metrics.jsonl mirrored into TensorBoard events and a Weights & Biases run.

W&B runs in its offline mode (no account, no network); what it logged is read back from the
offline run file with a small reader of its record log (below), so the test sees the values W&B
would upload, not just that a file appeared.
"""

from __future__ import annotations

import json
import struct
import sys
from pathlib import Path

import pytest
from conftest import make_train_data, run_lss

from lss_cli.config import TrainConfig
from lss_cli.errors import ConfigError
from lss_cli.runtime.metrics import WANDB_ID_FILE, MetricsWriter, WandbRun, read_metrics
from lss_cli.train.inputs import check_inputs

OFFLINE = {"WANDB_MODE": "offline", "WANDB_SILENT": "true"}


def wandb_history(run_dir: Path) -> list[dict]:
    """The history rows of every offline W&B run under `run_dir/wandb`, in the order logged.

    The .wandb file is a LevelDB-style record log: a 7-byte header (":W&B", magic, version), then
    32 KiB blocks of chunks, each with a 7-byte header (crc32, little-endian length, type:
    1 full, 2 first, 3 middle, 4 last); a record is one full chunk or first..last. Each record is a
    protobuf `Record`; history rows carry `item`s of key and JSON value."""
    from wandb.proto import wandb_internal_pb2 as pb

    rows = []
    for path in sorted(run_dir.glob("wandb/offline-run-*/run-*.wandb")):
        data = path.read_bytes()
        assert data[:4] == b":W&B", path
        pos, pending = 7, b""
        while pos + 7 <= len(data):
            left_in_block = 32768 - pos % 32768
            if left_in_block < 7:  # a block's tail too short for a header is padding
                pos += left_in_block
                continue
            _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
            chunk = data[pos + 7:pos + 7 + length]
            pos += 7 + length
            if kind == 0 and length == 0:
                break  # zero fill after the last record
            pending = chunk if kind in (1, 2) else pending + chunk
            if kind in (1, 4):
                record = pb.Record()
                record.ParseFromString(pending)
                if record.WhichOneof("record_type") == "history":
                    rows.append({i.key or "/".join(i.nested_key): json.loads(i.value_json)
                                 for i in record.history.item})
    return rows


def test_wandb_offline_logs_every_numeric_field_and_keeps_one_run_id(tmp_path, monkeypatch):
    for k, v in OFFLINE.items():
        monkeypatch.setenv(k, v)
    run = WandbRun(project="lss-test", name=tmp_path.name, config={"optim": {"lr": 0.1}})
    with MetricsWriter(tmp_path / "metrics.jsonl", wandb=run) as m:
        m.write({"step": 1, "loss": 2.5, "lr": 0.1, "note": "text is not a metric"})
        m.write({"step": 2, "loss": 2.25, "lr": 0.05})
    run_id = (tmp_path / WANDB_ID_FILE).read_text().strip()
    # A resumed run appends to the same W&B run, and may log a step again (redone after its checkpoint).
    with MetricsWriter(tmp_path / "metrics.jsonl", wandb=run) as m:
        m.write({"step": 2, "loss": 2.0, "lr": 0.05})
    assert (tmp_path / WANDB_ID_FILE).read_text().strip() == run_id
    # Two W&B runs started in the same second get a "-1" folder suffix: the id is in the run file's name.
    runs = sorted(tmp_path.glob("wandb/offline-run-*"))
    assert len(runs) == 2 and all((p / f"run-{run_id}.wandb").is_file() for p in runs), [p.name for p in runs]
    rows = [{k: v for k, v in r.items() if not k.startswith("_")} for r in wandb_history(tmp_path)]
    assert rows == [{"step": 1, "loss": 2.5, "lr": 0.1}, {"step": 2, "loss": 2.25, "lr": 0.05},
                    {"step": 2, "loss": 2.0, "lr": 0.05}]


def test_tensorboard_mirrors_numeric_fields(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    with MetricsWriter(tmp_path / "m.jsonl", tensorboard=True) as m:
        m.write({"step": 3, "loss": 2.0})
    events = EventAccumulator(str(tmp_path))
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("loss")] == [(3, 2.0)]


@pytest.mark.parametrize(("key", "module", "extra"), [("log.wandb", "wandb", "wandb"),
                                                      ("log.tensorboard", "torch.utils.tensorboard", "tensorboard")])
def test_missing_tracking_package_is_named_before_any_work(tmp_path, monkeypatch, key, module, extra):
    monkeypatch.setitem(sys.modules, module, None)  # `import module` now raises ImportError
    cfg = TrainConfig()
    setattr(cfg.log, key.split(".")[1], True)
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")) as e:
        check_inputs(cfg)
    assert f"lss-cli[{extra}]" in e.value.hint


@pytest.mark.slow
def test_train_with_wandb_offline_logs_what_metrics_jsonl_holds(tmp_path):
    """`lss train log.wandb=true` under WANDB_MODE=offline: the W&B run holds metrics.jsonl's
    numbers step by step, and `--json` on stdout stays parseable."""
    data = make_train_data(tmp_path / "data")
    run = tmp_path / "run"
    r = run_lss("train", "synthetic_tiny", f"data.root={data}", f"loss.concepts={data / 'concepts.safetensors'}",
                "data.batch_size=4", "data.num_workers=0", "views.global_frames=4", "views.local_views=2",
                "views.local_frames=[2]", "model.num_frames=4", "optim.epochs=1", "log.every=1",
                "model.pretrained=none", "log.wandb=true", "log.wandb_project=lss-test", "--device", "cpu",
                "--output-dir", run, "--json", env={**OFFLINE, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads(r.stdout)["steps"] == 4
    logged = [{k: v for k, v in row.items() if not k.startswith("_")} for row in wandb_history(run)]
    expected = [{k: v for k, v in rec.items() if isinstance(v, (int, float)) and v is not None}
                for rec in read_metrics(run / "metrics.jsonl")]
    assert [row["step"] for row in logged] == [1, 2, 3, 4]
    assert logged == expected
