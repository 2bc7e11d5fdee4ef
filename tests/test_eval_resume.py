"""Resumable feature extraction: the cache is checkpointed while a list is encoded and saved when
the run stops (Ctrl-C, SIGTERM, a crash), holding exactly the finished videos; a rerun encodes
only the rest, with the same features; per-rank partial files under torch.distributed are found
by a rerun of any world size; damaged files are ignored with a warning."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import counting_batches, die_when_asked, run_lss

import lss_cli.eval.features as features
from lss_cli.data.datasets import load_dataset
from lss_cli.eval.features import FeatureCache, Views, extract_features
from lss_cli.models.artefact import load_video_model

VIEWS = Views(num_frames=2)


@pytest.fixture(scope="module")
def eight(zs):
    return load_dataset("list", zs["root"], "test", zs["list"]).subset(range(8))


@pytest.fixture(scope="module")
def reference(zs_model, eight):
    """Features of an uninterrupted run, same batches (2 videos each)."""
    return extract_features(zs_model, eight, VIEWS, batch_size=2, num_workers=0)


@pytest.fixture
def reads(monkeypatch):
    """The paths the eval dataset decodes, in order."""
    import lss_cli.data.loader as loader

    calls: list[str] = []
    real = loader.EvalClips.reader
    monkeypatch.setattr(loader.EvalClips, "reader",
                        staticmethod(lambda path, *a, **k: (calls.append(path), real(path, *a, **k))[1]))
    return calls


def _key(model) -> dict:
    return {"model": model.model_id, "kind": "proj", "views": VIEWS.__dict__, "image_size": 64}


def _on_disk(cache_dir: Path, model) -> set[str]:
    """The videos a fresh process would find in the cache (main file + partial files)."""
    return set(FeatureCache(cache_dir, _key(model)).entries)


def _fail_on_call(monkeypatch, model, n: int, exc: BaseException, seen: list | None = None, cache_dir=None):
    """Make the n-th encoder forward raise `exc`; before raising, record what is on disk."""
    real, calls = model.encoder.encode, []

    def encode(*a, **k):
        calls.append(1)
        if len(calls) == n:
            if seen is not None:
                seen.append(_on_disk(cache_dir, model))
            raise exc
        return real(*a, **k)

    monkeypatch.setattr(model.encoder, "encode", encode)


def _paths(videos, idx) -> set[str]:
    return {os.path.abspath(videos.path(i)) for i in idx}


@pytest.mark.parametrize("exc", [KeyboardInterrupt(), RuntimeError("CUDA out of memory")], ids=["ctrl-c", "crash"])
def test_stopped_run_keeps_exactly_the_finished_videos_and_resumes(zs_model, eight, reference, reads, tmp_path,
                                                                   monkeypatch, exc):
    # Default interval (60 s): nothing is checkpointed during this short run, so what is on disk
    # afterwards was written on the way out.
    seen: list[set[str]] = []
    with monkeypatch.context() as m:
        _fail_on_call(m, zs_model, 3, exc, seen, tmp_path)
        with pytest.raises(type(exc)):
            extract_features(zs_model, eight, VIEWS, cache_dir=tmp_path, batch_size=2, num_workers=0)
    assert seen == [set()]  # at the 3rd batch, nothing saved yet
    assert _on_disk(tmp_path, zs_model) == _paths(eight, range(4))  # batches 1-2 done, batch 3 not
    assert not list(tmp_path.glob(".*tmp*"))  # no temp file left behind
    reads.clear()
    again = extract_features(zs_model, eight, VIEWS, cache_dir=tmp_path, batch_size=2, num_workers=0)
    assert again.decoded == 4 and set(reads) == {eight.path(i) for i in range(4, 8)}
    assert torch.equal(again.feats, reference.feats) and torch.equal(again.ok, reference.ok)
    assert extract_features(zs_model, eight, VIEWS, cache_dir=tmp_path, num_workers=0).decoded == 0


def test_cache_is_checkpointed_during_the_run(zs_model, eight, tmp_path, monkeypatch):
    # A zero interval: a checkpoint after every batch. A batch reaches the cache once the next
    # batch's forward is queued (features.py reads them one batch late), so at the 3rd forward batch
    # 1 is on disk and batch 2 is on its way; the failure still delivers batch 2 before propagating.
    monkeypatch.setattr(features, "SAVE_EVERY_S", 0.0)
    monkeypatch.setattr(features, "SAVE_COST_FACTOR", 0.0)
    saves: list[int] = []
    real_save = FeatureCache.save
    monkeypatch.setattr(FeatureCache, "save", lambda self: (saves.append(len(self.entries)), real_save(self))[1])
    seen: list[set[str]] = []
    _fail_on_call(monkeypatch, zs_model, 3, KeyboardInterrupt(), seen, tmp_path)
    with pytest.raises(KeyboardInterrupt):
        extract_features(zs_model, eight, VIEWS, cache_dir=tmp_path, batch_size=2, num_workers=0)
    assert seen == [_paths(eight, range(2))]
    assert saves == [2, 4]  # one per finished batch; nothing new to save on the way out
    assert _on_disk(tmp_path, zs_model) == _paths(eight, range(4))


def test_sigterm_is_an_interrupt_only_while_encoding(zs_model, eight, tmp_path, monkeypatch):
    previous = signal.getsignal(signal.SIGTERM)
    real = zs_model.encoder.encode
    calls = []

    def encode(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGTERM)  # handled at the next bytecode: inside this batch
        return real(*a, **k)

    monkeypatch.setattr(zs_model.encoder, "encode", encode)
    with pytest.raises(KeyboardInterrupt):
        extract_features(zs_model, eight, VIEWS, cache_dir=tmp_path, batch_size=2, num_workers=0)
    assert signal.getsignal(signal.SIGTERM) is previous  # restored
    assert _on_disk(tmp_path, zs_model) == _paths(eight, range(2))


# --------------------------------------------------------------------------------------------
# Partial files (torch.distributed) and damaged files
# --------------------------------------------------------------------------------------------


def _partial_run(zs_model, videos, cache_dir: Path, world: int) -> None:
    """What an interrupted run of `world` ranks leaves: rank r's finished share in its partial file."""
    for rank in range(world):
        cache = FeatureCache(cache_dir, _key(zs_model))
        for i in range(rank, len(videos), world):
            cache.add(os.path.abspath(videos.path(i)), torch.full((1, 64), float(i)), True, "")
        cache.save_partial(rank)


def test_partial_files_of_any_world_size_are_folded_in_and_merged(zs_model, eight, reads, tmp_path):
    _partial_run(zs_model, eight.subset(range(6)), tmp_path, world=3)  # 3 ranks, 2 videos each
    assert len(list(tmp_path.glob("*.rank*.partial.safetensors"))) == 3
    got = extract_features(zs_model, eight, VIEWS, cache_dir=tmp_path, num_workers=0)  # 1 process
    assert got.decoded == 2 and set(reads) == {eight.path(6), eight.path(7)}
    assert torch.equal(got.feats[:6, 0, 0], torch.arange(6.0))  # the partial files' rows, in list order
    assert not list(tmp_path.glob("*.partial.*"))  # merged into the main file, then removed
    assert _on_disk(tmp_path, zs_model) == _paths(eight, range(8))


def test_damaged_partial_file_is_ignored_with_a_warning(zs_model, eight, tmp_path, capsys, monkeypatch):
    from lss_cli.runtime import progress

    monkeypatch.setattr(progress.stderr_console, "width", 1000)  # the path on one line, not shortened
    _partial_run(zs_model, eight.subset(range(4)), tmp_path, world=2)
    damaged = FeatureCache(tmp_path, _key(zs_model)).partial_path(1)
    damaged.write_bytes(damaged.read_bytes()[:100])  # a torn write (the atomic replace prevents it)
    (tmp_path / f".{damaged.name}.tmp-12345").write_bytes(b"half")  # a killed writer's temp file
    got = extract_features(zs_model, eight.subset(range(4)), VIEWS, cache_dir=tmp_path, num_workers=0)
    err = capsys.readouterr().err
    assert "ignoring the unreadable feature cache" in err and damaged.name in err and ".tmp-" not in err
    assert got.decoded == 2  # rank 1's videos (1 and 3) again; rank 0's came from its file
    assert torch.equal(got.feats[[0, 2], 0, 0], torch.tensor([0.0, 2.0]))
    assert not damaged.exists()


# ---- a real 2-rank gloo run, stopped on both ranks, resumed by one process --------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stopped_rank(rank: int, world: int, port: int, root: str, weights: str, cache_dir: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        model = load_video_model("none", model="lss-tiny", pretrained=weights)
        videos = load_dataset("list", root, "test", Path(root) / "all.txt").subset(range(8))
        real, calls = model.encoder.encode, []

        def encode(*a, **k):
            calls.append(1)
            if len(calls) == 2:
                raise KeyboardInterrupt
            return real(*a, **k)

        model.encoder.encode = encode
        try:
            extract_features(model, videos, VIEWS, cache_dir=cache_dir, batch_size=2, num_workers=0)
        except KeyboardInterrupt:
            Path(cache_dir, f"stopped{rank}").touch()
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_distributed_run_stopped_then_resumed_with_another_world_size(zs, zs_model, eight, reference, tmp_path):
    torch.multiprocessing.start_processes(
        _stopped_rank, args=(2, _free_port(), str(zs["root"]), str(zs["weights"]), str(tmp_path)), nprocs=2,
        start_method="spawn")
    assert (tmp_path / "stopped0").exists() and (tmp_path / "stopped1").exists()
    assert not list(tmp_path.glob("features-*[0-9a-f].safetensors"))  # no rank wrote the main file
    # Shards 0,2,4,6 and 1,3,5,7; each rank finished its first batch of 2: videos 0, 2 and 1, 3.
    assert len(list(tmp_path.glob("*.partial.safetensors"))) == 2
    assert _on_disk(tmp_path, zs_model) == _paths(eight, range(4))
    got = extract_features(zs_model, eight, VIEWS, cache_dir=tmp_path, batch_size=2, num_workers=0)
    assert got.decoded == 4
    torch.testing.assert_close(got.feats, reference.feats, atol=1e-6, rtol=0)  # other batches: rounding only
    assert not list(tmp_path.glob("*.partial.*"))


# --------------------------------------------------------------------------------------------
# The CLI: a real signal, exit 130, the rerun decodes fewer
# --------------------------------------------------------------------------------------------

# Runs `lss` like `python -m lss_cli` but sends `sig` to itself when the 3rd video is read (in
# the main process: num_workers=0), so the interruption lands at the same place every time.
_SIGNAL_AT_3RD_READ = """
import os, runpy, signal, sys
import lss_cli.data.loader as loader
real, calls, sig = loader.EvalClips.reader, [], getattr(signal, sys.argv[1])
def reader(path, *a, **k):
    calls.append(path)
    if len(calls) == 3:
        os.kill(os.getpid(), sig)
    return real(path, *a, **k)
loader.EvalClips.reader = staticmethod(reader)
sys.argv = ["lss", *sys.argv[2:]]
runpy.run_module("lss_cli", run_name="__main__", alter_sys=True)
"""


@pytest.mark.slow
def test_cli_interrupted_by_signals_resumes(zs, tmp_path):
    args = ["eval", "zero-shot", "--dataset", "list", "--list-file", str(zs["list"]), "--root", str(zs["root"]),
            "--checkpoint", "none", "--model", "lss-tiny", "--pretrained", str(zs["weights"]), "--device", "cpu",
            "--num-frames", "2", f"cache_dir={tmp_path / 'cache'}", "num_workers=0", "batch_size=2"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    for n, sig in enumerate(("SIGTERM", "SIGINT"), 1):
        r = subprocess.run([sys.executable, "-c", _SIGNAL_AT_3RD_READ, sig, *args, "--output-dir", str(tmp_path / sig)],
                           capture_output=True, text=True, timeout=300, env=env)
        assert r.returncode == 130, r.stderr
        assert "interrupted" in r.stderr and "features of the 2 video(s) finished are in the cache" in r.stderr
        assert len(_entries(tmp_path / "cache")) == 2 * n  # one batch of 2 per stopped run
    r = run_lss(*args, "--output-dir", tmp_path / "done")
    assert r.returncode == 0, r.stderr
    split = json.loads((tmp_path / "done" / "results.json").read_text())["splits"][0]
    assert split["videos_listed"] == 20 and split["videos_decoded"] == 16


def _entries(cache_dir: Path) -> list:
    from safetensors import safe_open

    (path,) = cache_dir.glob("features-*.safetensors")
    with safe_open(str(path), framework="pt") as f:
        return json.loads(f.metadata()["rows"])


def test_a_killed_worker_is_named_and_the_finished_videos_kept(zs_model, eight, tmp_path, monkeypatch):
    """A data-loading worker killed (the kernel's out-of-memory killer, most often) used to surface as
    an "unexpected RuntimeError, probably a bug"; now it is named, with what to do, and the videos
    finished before it are in the cache. The worker dies only once the 3rd batch has been asked
    for, so the death surfaces where it is waited for (PyTorch's SIGCHLD handler could raise it anywhere)."""
    import lss_cli.data.loader as loader
    from lss_cli.errors import LssError

    asked, calls = tmp_path / "asked", []
    plain_item, plain_build = loader.EvalClips.__getitem__, features.build_eval_loader

    def item(self, index):
        calls.append(index)
        if len(calls) == 5:  # the first video of the 3rd batch of 2, inside the worker
            die_when_asked(asked, 3)
        return plain_item(self, index)

    class Asking:
        """The loader, counting the batches asked for (`counting_batches`)."""

        def __init__(self, dl):
            self.dl = dl

        def __getattr__(self, name):
            return getattr(self.dl, name)

        def __iter__(self):
            return counting_batches(self.dl, asked)

    monkeypatch.setattr(loader.EvalClips, "__getitem__", item)
    monkeypatch.setattr(features, "build_eval_loader", lambda *a, **k: Asking(plain_build(*a, **k)))
    with pytest.raises(LssError) as e:
        extract_features(zs_model, eight, VIEWS, cache_dir=tmp_path / "cache", batch_size=2, num_workers=1)
    assert e.value.message.startswith("a data-loading process died: DataLoader worker (pid")
    assert "out-of-memory" in e.value.hint and "a rerun encodes only the videos not yet in the feature cache" in e.value.hint
    assert _on_disk(tmp_path / "cache", zs_model) == _paths(eight, range(4))
