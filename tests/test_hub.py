"""Sharing on the Hugging Face Hub without a network: the Hub-ready export folder and its card,
`hf-hub:` names resolved from a local Hub cache filled by the test (HF_HUB_OFFLINE=1), and
`lss push` against a local HTTP server that speaks the few endpoints huggingface_hub calls.

The round trip (the issue's "done when") uses a short training run of the demo's tiny model,
exported the way the demo exports, rather than the whole demo."""

from __future__ import annotations

import json
import os
import shutil
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
import yaml
from conftest import ROOT, run_lss

from lss_cli.config import TrainConfig, load_config

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def fill_hub_cache(cache: Path, repo: str, files: dict[str, Path], commit: str = COMMIT) -> Path:
    """The Hub cache layout huggingface_hub reads offline: models--org--name/refs/main holds the
    commit, snapshots/<commit>/ the files (real caches link them to blobs/; copies work the same)."""
    storage = cache / f"models--{repo.replace('/', '--')}"
    snap = storage / "snapshots" / commit
    snap.mkdir(parents=True)
    (storage / "refs").mkdir()
    (storage / "refs" / "main").write_text(commit)
    for name, src in files.items():
        shutil.copy(src, snap / name)
    return snap


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """An empty Hub cache for in-process loads (subprocesses get HF_HUB_CACHE)."""
    from huggingface_hub import constants

    cache = tmp_path / "hub-cache"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return cache


@pytest.fixture(scope="module")
def trained(tmp_path_factory, synth_dataset):
    """A 2-step training run of lss-tiny, its plain export, and a zero-shot eval of that export
    through the CLI in runs/eval-zero-shot/ (where `lss export --hub` looks by default)."""
    from lss_cli.train.loop import train

    tmp = tmp_path_factory.mktemp("hub")
    cfg = load_config(TrainConfig, ROOT / "examples" / "synthetic_tiny.yaml", [
        f"data.root={synth_dataset}", f"loss.concepts={tmp / 'concepts.safetensors'}", "data.batch_size=4",
        "data.num_workers=0", "optim.epochs=1", "optim.lr=0.05", "optim.temporal_lr=0.5", "optim.warmup_epochs=0",
        "teacher.momentum=0.5", "teacher.momentum_end=0.5", "views.global_frames=4", "views.local_views=2",
        f"run.output_dir={tmp / 'train'}"])
    train(cfg)
    (tmp / "link").symlink_to(tmp / "train")  # the same run by another path: the export file's bytes differ
    r = run_lss("export", tmp / "link", "--out", tmp / "model.safetensors")
    assert r.returncode == 0, r.stderr
    eval_dir = tmp / "runs" / "eval-zero-shot" / "file"
    r = eval_cli(synth_dataset, tmp, "--checkpoint", tmp / "model.safetensors", "--output-dir", eval_dir, cwd=tmp)
    assert r.returncode == 0, r.stderr
    return {"dir": tmp, "run": tmp / "train", "file": tmp / "model.safetensors",
            "results": json.loads((eval_dir / "results.json").read_text())}


def eval_cli(root: Path, tmp: Path, *args, env: dict | None = None, cwd: Path | None = None):
    return run_lss("eval", "zero-shot", f"cache_dir={tmp / 'feature-cache'}", "num_workers=0", "--dataset", "synthetic",
                   "--root", root, "--num-frames", "4", "--device", "cpu", *args, env=env, cwd=cwd)


def front_matter(card: str) -> dict:
    assert card.startswith("---\n")
    return yaml.safe_load(card.split("---\n")[1])


def test_hub_folder_round_trips_through_an_offline_hub_cache(trained, synth_dataset, tmp_path):
    # export --hub finds the eval of the plain export file (same checkpoint and step, other bytes).
    out = tmp_path / "hub" / "tiny"
    r = run_lss("export", trained["run"], "--hub", "--out", out, "--repo", "lss-test/tiny-video", "--json",
                cwd=trained["dir"])
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    assert sorted(summary["files"]) == ["README.md", "config.json", "model.safetensors"]
    assert len(summary["results"]) == 1
    assert [p.name for p in out.parent.iterdir()] == ["tiny"]  # no temporary folder left beside it

    cache = tmp_path / "cache"
    fill_hub_cache(cache, "lss-test/tiny-video", {n: out / n for n in summary["files"]})
    env = {"HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    runs = {}
    for name, checkpoint in (("hub", "hf-hub:lss-test/tiny-video"), ("file", out / "model.safetensors")):
        r = eval_cli(synth_dataset, tmp_path, "--checkpoint", checkpoint, "--out", tmp_path / f"{name}.json", env=env)
        assert r.returncode == 0, r.stderr
        runs[name] = json.loads((tmp_path / f"{name}.json").read_text())
    assert runs["hub"]["checkpoint"] == f"hf-hub:lss-test/tiny-video@{COMMIT}"  # pinned to the commit it loaded
    assert runs["hub"]["model_id"] == runs["file"]["model_id"]
    assert runs["hub"]["splits"][0]["predictions"] == runs["file"]["splits"][0]["predictions"]
    assert runs["hub"]["summary"] == runs["file"]["summary"]
    # The trained model itself: the hub copy predicts what the demo-style export predicted.
    assert runs["hub"]["splits"][0]["predictions"] == trained["results"]["splits"][0]["predictions"]


def test_hub_load_gives_the_exported_weights(trained, tmp_path, hub_cache, synth_dataset):
    from lss_cli.data.datasets import load_dataset
    from lss_cli.eval.features import Views, extract_features
    from lss_cli.models.artefact import load_video_model
    from lss_cli.share import export_folder

    out = tmp_path / "tiny"
    export_folder(trained["run"], out, search_root=tmp_path)  # nothing to find there: no results
    fill_hub_cache(hub_cache, "lss-test/tiny-video", {n: out / n for n in ("model.safetensors", "config.json", "README.md")})
    hub = load_video_model("hf-hub:lss-test/tiny-video")
    local = load_video_model(trained["file"])
    baseline = load_video_model("none", model="lss-tiny", pretrained=None, seed=0)
    assert hub.source == f"hf-hub:lss-test/tiny-video@{COMMIT}"
    assert load_video_model(f"hf-hub:lss-test/tiny-video@{COMMIT}").model_id == hub.model_id  # a pinned revision
    videos = load_dataset("synthetic", synth_dataset, "test")
    f = {name: extract_features(m, videos, Views(num_frames=4), num_workers=0).feats
         for name, m in (("hub", hub), ("local", local), ("baseline", baseline))}
    torch.testing.assert_close(f["hub"], f["local"], atol=0, rtol=0)
    assert (f["hub"] - f["baseline"]).abs().max() > 1e-4  # a trained model: the comparison can fail
    assert load_video_model(out).model_id == hub.model_id  # the folder itself is a --checkpoint too


def test_the_card_and_config_describe_the_model(trained, tmp_path):
    from lss_cli.share import export_folder

    out = tmp_path / "tiny"
    results = trained["dir"] / "runs" / "eval-zero-shot" / "file" / "results.json"
    summary = export_folder(trained["run"], out, results=[results], repo="lss-test/tiny-video")
    assert summary["results"] == [str(results)]
    card = (out / "README.md").read_text()
    meta = front_matter(card)
    assert meta["library_name"] == "lss-cli"
    assert meta["license"] == "mit"  # random-init base weights: lss-cli's own licence
    assert {"video-classification", "zero-shot", "clip"} <= set(meta["tags"])
    assert "base_model" not in meta  # not an hf-hub: base
    (entry,) = meta["model-index"][0]["results"]
    top1 = trained["results"]["summary"]["top1"]["mean"]
    assert entry["metrics"][0]["value"] == round(100 * top1, 2)
    assert entry["dataset"]["name"] == "synthetic"
    config = json.loads((out / "config.json").read_text())
    bank = config["concept_bank"]
    assert bank["available"] and bank["categories"] == 4 and len(bank["sha256"]) == 64
    assert config["architecture"]["clip_model"] == "lss-tiny"
    assert config["model_id"] == load_model_id(out / "model.safetensors")
    assert bank["sha256"] in card and "--checkpoint hf-hub:lss-test/tiny-video" in card
    assert "lss eval zero-shot" in card  # the eval's command line, from its results
    assert "zero-shot" in card.split("## Evaluation")[1] and "config.yaml" in card


def load_model_id(path: Path) -> str:
    from lss_cli.models.artefact import load_video_model

    return load_video_model(path).model_id


def test_export_folder_refuses_other_results_and_never_leaves_a_partial_folder(trained, tmp_path, monkeypatch):
    from lss_cli import share
    from lss_cli.errors import ConfigError, InputFileError

    other = dict(trained["results"], model_id="sha256:" + "0" * 64, checkpoint="elsewhere.safetensors")
    (tmp_path / "other.json").write_text(json.dumps(other))
    with pytest.raises(InputFileError, match="another model"):
        share.export_folder(trained["run"], tmp_path / "a", results=[tmp_path / "other.json"])
    # A folder of results (the demo's eval/: baseline and trained) contributes only this model's.
    mixed = tmp_path / "mixed"
    for name, doc in (("baseline", other), ("trained", trained["results"])):
        (mixed / name).mkdir(parents=True)
        (mixed / name / "results.json").write_text(json.dumps(doc))
    summary = share.export_folder(trained["run"], tmp_path / "ok", results=[mixed])
    assert summary["results"] == [str(mixed / "trained" / "results.json")]
    shutil.rmtree(mixed)
    shutil.rmtree(tmp_path / "ok")

    def broken(info):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(share, "model_card", broken)
    with pytest.raises(share.LssError, match="No space left"):
        share.export_folder(trained["run"], tmp_path / "b", search_root=tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other.json"]  # no a/, b/ or hidden temp folder
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "x").write_text("keep")
    with pytest.raises(ConfigError, match="not empty"):
        share.export_folder(trained["run"], tmp_path / "c")


def test_open_clip_hub_model_and_weights_load_offline(tmp_path, hub_cache, tiny_clip):
    from lss_cli.models.clip import CONFIG_DIR, load_clip, save_weights

    save_weights(tiny_clip.model, tmp_path / "open_clip_model.safetensors")
    model_cfg = json.loads((CONFIG_DIR / "lss-tiny.json").read_text())
    (tmp_path / "open_clip_config.json").write_text(json.dumps({"model_cfg": model_cfg, "preprocess_cfg": {}}))
    fill_hub_cache(hub_cache, "lss-test/tiny-clip", {n: tmp_path / n for n in ("open_clip_config.json",
                                                                                "open_clip_model.safetensors")})
    as_model = load_clip("hf-hub:lss-test/tiny-clip")
    as_weights = load_clip("lss-tiny", "hf-hub:lss-test/tiny-clip")
    assert as_model.weights_id == as_weights.weights_id == tiny_clip.weights_id  # identified by content
    assert as_model.weights_source == f"hf-hub:lss-test/tiny-clip@{COMMIT}"
    tokens = tiny_clip.tokenizer(["a person juggling"])
    with torch.no_grad():
        torch.testing.assert_close(as_model.model.encode_text(tokens), tiny_clip.model.encode_text(tokens), atol=0, rtol=0)


def test_open_clip_hub_model_in_the_cli(tmp_path, tiny_clip, synth_dataset):
    from lss_cli.models.clip import CONFIG_DIR, save_weights

    weights = tmp_path / "open_clip_model.safetensors"
    save_weights(tiny_clip.model, weights)
    (tmp_path / "open_clip_config.json").write_text(json.dumps(
        {"model_cfg": json.loads((CONFIG_DIR / "lss-tiny.json").read_text()), "preprocess_cfg": {}}))
    cache = tmp_path / "cache"
    fill_hub_cache(cache, "lss-test/tiny-clip", {n: tmp_path / n for n in ("open_clip_config.json", weights.name)})
    env = {"HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    runs = {}
    for name, flags in (("hub", ["--model", "hf-hub:lss-test/tiny-clip"]),
                        ("file", ["--model", "lss-tiny", "--pretrained", weights])):
        r = eval_cli(synth_dataset, tmp_path, "--checkpoint", "none", *flags, "--out", tmp_path / f"{name}.json", env=env)
        assert r.returncode == 0, r.stderr
        runs[name] = json.loads((tmp_path / f"{name}.json").read_text())
    assert runs["hub"]["splits"][0]["predictions"] == runs["file"]["splits"][0]["predictions"]


def test_a_name_not_in_the_cache_offline_is_a_clear_error(hub_cache, tmp_path):
    from lss_cli.errors import ConfigError, LssError
    from lss_cli.models.artefact import load_video_model
    from lss_cli.models.clip import load_clip

    with pytest.raises(LssError, match=r"hf-hub:lss-test/missing is not in the local Hub cache.*HF_HUB_OFFLINE=1") as e:
        load_video_model("hf-hub:lss-test/missing")
    assert "hf download lss-test/missing" in str(e.value)
    with pytest.raises(LssError, match="lss-test/missing-clip.*HF_HUB_OFFLINE"):
        load_clip("hf-hub:lss-test/missing-clip")
    with pytest.raises(ConfigError, match="not a Hub model name"):
        load_video_model("hf-hub:no-org")
    # An open_clip repo is not a video model, and says which flag it belongs to.
    (tmp_path / "open_clip_config.json").write_text("{}")
    fill_hub_cache(hub_cache, "lss-test/clip-only", {"open_clip_config.json": tmp_path / "open_clip_config.json"})
    with pytest.raises(LssError, match="holds no model.safetensors"):
        load_video_model("hf-hub:lss-test/clip-only")


def test_a_missing_hub_model_in_the_cli_names_repo_and_variable(tmp_path, synth_dataset):
    r = eval_cli(synth_dataset, tmp_path, "--checkpoint", "hf-hub:lss-test/absent",
                 env={"HF_HUB_CACHE": str(tmp_path / "empty"), "HF_HUB_OFFLINE": "1"})
    assert r.returncode != 0
    assert "hf-hub:lss-test/absent" in r.stderr and "HF_HUB_OFFLINE" in r.stderr
    assert "Traceback" not in r.stderr


# --------------------------------------------------------------------------------------------
# lss push, against a local stand-in for the Hub
# --------------------------------------------------------------------------------------------
class FakeHub(BaseHTTPRequestHandler):
    """Answers create_repo, create_branch, validate-yaml, preupload and commit the way the Hub does
    (regular uploads only); records each request. The card's YAML is parsed as the Hub would."""

    calls: list[tuple[str, str, bytes]] = []

    def _reply(self, code: int, doc: dict) -> None:
        data = json.dumps(doc).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self):  # noqa: N802 (http.server's name)
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.calls.append((self.path, self.headers.get("Authorization", ""), body))
        endpoint = os.environ["HF_ENDPOINT"]
        if self.path == "/api/repos/create":
            doc = json.loads(body)
            return self._reply(200, {"url": f"{endpoint}/{doc['organization']}/{doc['name']}"})
        if self.path == "/api/validate-yaml":
            content = json.loads(body)["content"]
            try:
                front_matter(content)
            except Exception as e:
                return self._reply(400, {"errors": [{"message": str(e)}]})
            return self._reply(200, {})
        if "/branch/" in self.path:
            return self._reply(200, {})
        if "/preupload/" in self.path:
            files = json.loads(body)["files"]
            return self._reply(200, {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                                               for f in files]})
        if "/commit/" in self.path:
            repo = self.path.split("/api/models/")[1].split("/commit/")[0]
            return self._reply(200, {"commitUrl": f"{endpoint}/{repo}/commit/{COMMIT}", "commitOid": COMMIT})
        return self._reply(404, {"error": f"not implemented: {self.path}"})

    def log_message(self, *args):  # quiet
        pass


@pytest.fixture
def fake_hub(monkeypatch):
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeHub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    FakeHub.calls = []
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def small_export(tmp_path: Path) -> Path:
    folder = tmp_path / "export"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"\0" * 64)
    (folder / "config.json").write_text("{}\n")
    (folder / "README.md").write_text("---\nlibrary_name: lss-cli\nlicense: mit\n---\n# card\n")
    return folder


def test_push_uploads_the_folder_as_one_commit(tmp_path, fake_hub, monkeypatch):
    import base64

    folder = small_export(tmp_path)
    (folder / ".hidden").write_text("not uploaded")
    env = {"HF_ENDPOINT": fake_hub, "HF_TOKEN": "hf_test_token", "HF_HUB_OFFLINE": "0",
           "HF_HUB_DISABLE_TELEMETRY": "1", "HF_HOME": str(tmp_path / "hf-home")}
    monkeypatch.setenv("HF_ENDPOINT", fake_hub)  # the server's own replies name it
    r = run_lss("push", folder, "--repo", "lss-test/tiny-video", "--revision", "v1", "--json", env=env)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["commit"] == COMMIT and out["revision"] == "v1"
    paths = [p for p, _, _ in FakeHub.calls]
    assert paths[0] == "/api/repos/create"
    assert "/api/models/lss-test/tiny-video/branch/v1" in paths
    assert paths[-1] == "/api/models/lss-test/tiny-video/commit/v1"
    assert all(auth == "Bearer hf_test_token" for _, auth, _ in FakeHub.calls)  # the token from HF_TOKEN
    lines = [json.loads(line) for line in FakeHub.calls[-1][2].decode().splitlines()]
    files = {d["value"]["path"]: base64.b64decode(d["value"]["content"]) for d in lines if d["key"] == "file"}
    assert files == {n: (folder / n).read_bytes() for n in ("README.md", "config.json", "model.safetensors")}


def test_push_refuses_what_is_not_an_export_and_dry_run_uploads_nothing(tmp_path, fake_hub):
    env = {"HF_ENDPOINT": fake_hub, "HF_TOKEN": "x", "HF_HUB_OFFLINE": "0"}
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "README.md").write_text("hi")
    r = run_lss("push", tmp_path / "notes", "--repo", "lss-test/x", env=env)
    assert r.returncode != 0 and "not an export folder" in r.stderr and "model.safetensors" in r.stderr
    from lss_cli.errors import ConfigError
    from lss_cli.share import push_folder

    plan = push_folder(small_export(tmp_path), "lss-test/x", dry_run=True)
    assert sorted(plan["files"]) == ["README.md", "config.json", "model.safetensors"]
    assert FakeHub.calls == []
    with pytest.raises(ConfigError, match="not a Hub model name"):
        push_folder(tmp_path / "export", "not a repo")


@pytest.mark.slow
def test_the_demos_model_round_trips_through_an_offline_hub_cache(tmp_path, hub_cache):
    """Sharing, end to end: the model `lss demo` trains and exports, made into a Hub folder and
    loaded as `hf-hub:` from an offline Hub cache, predicts exactly what the demo's own evaluation
    of its export predicted (same protocol: the demo's recorded eval config)."""
    import dataclasses

    from lss_cli.config import EvalConfig, from_dict
    from lss_cli.eval.results import evaluate

    out = tmp_path / "demo"
    demo = run_lss("demo", "-o", out, "--classes", "3", "--videos-per-class", "8", "--epochs", "1")
    assert demo.returncode == 0, demo.stderr
    paths = json.loads((out / "summary.json").read_text())["paths"]
    folder = tmp_path / "hub" / "demo"
    r = run_lss("export", paths["train run"], "--hub", "--out", folder, "--repo", "lss-test/demo", "--json")
    assert r.returncode == 0, r.stderr
    fill_hub_cache(hub_cache, "lss-test/demo", {n: folder / n for n in json.loads(r.stdout)["files"]})
    demo_results = json.loads(Path(paths["trained zero-shot"]).read_text())
    cfg = dataclasses.replace(from_dict(EvalConfig, demo_results["config"]), checkpoint="hf-hub:lss-test/demo",
                              cache_dir=str(tmp_path / "cache"), out=None)
    hub_results = evaluate(cfg, "zero-shot", output_dir=tmp_path / "eval")
    assert hub_results["checkpoint"] == f"hf-hub:lss-test/demo@{COMMIT}"
    assert hub_results["splits"][0]["predictions"] == demo_results["splits"][0]["predictions"]
    assert hub_results["summary"] == demo_results["summary"]
