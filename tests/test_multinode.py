"""Training on a cluster, rehearsed on one machine: two torchrun "nodes" joined by a c10d
rendezvous against one process, and the SLURM batch scripts of examples/slurm/ run with stand-ins
for srun, scancel and scontrol (stop before the time limit, requeue, resume on the restart).

Everything drives the real CLI in subprocesses, on a small synthetic dataset with the tiny model.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT, make_train_data, run_lss

from lss_cli.runtime.checkpoint import load_checkpoint

EXAMPLE = ROOT / "examples" / "synthetic_tiny.yaml"
SCRIPTS = [ROOT / "examples" / "slurm" / name for name in ("train_1node_8gpu.sbatch", "train_multinode.sbatch")]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
JOB_ID = "4242"


@pytest.fixture(scope="module")
def small_data(tmp_path_factory) -> Path:
    """16 training clips of 4 classes and their concept bank (tiny model, seed 0)."""
    return make_train_data(tmp_path_factory.mktemp("multinode-data"))


def _overrides(root: Path, **extra: str) -> list[str]:
    """Overrides of the example config for a fast run: 16 clips, 4-frame global views, 2 local views."""
    cfg = {"data.root": str(root), "loss.concepts": str(root / "concepts.safetensors"), "data.batch_size": "4",
           "data.num_workers": "0", "views.global_frames": "4", "views.local_views": "2",
           "views.local_frames": "[2]", "model.num_frames": "4", "log.every": "1", "run.device": "cpu",
           "model.pretrained": "none", **extra}
    return [f"{k}={v}" for k, v in cfg.items()]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(cmd: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    """`cmd` in the background, its stdout and stderr appended to `log` (as SLURM's --output does)."""
    with log.open("a") as out:  # the child keeps its own copy of the file
        return subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)


def _metrics(run: Path) -> dict[int, dict]:
    """Last record per step (a resumed run rewrites the steps after its checkpoint)."""
    records = (json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip())
    return {r["step"]: r for r in records}


def _wait_for_steps(run: Path, steps: int, proc: subprocess.Popen, log: Path) -> None:
    """Until metrics.jsonl has `steps` lines; fails if the job ends first or takes over 120 s."""
    deadline = time.monotonic() + 120
    path = run / "metrics.jsonl"
    while time.monotonic() < deadline:
        if path.is_file() and len(path.read_text().splitlines()) >= steps:
            return
        assert proc.poll() is None, f"the job ended (exit {proc.returncode}) before step {steps}:\n" \
                                    + log.read_text()[-3000:]
        time.sleep(0.05)
    pytest.fail(f"no step {steps} within 120 s:\n" + log.read_text()[-3000:])


# --------------------------------------------------------------------------------------------
# Two nodes, one process
# --------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_two_nodes_match_one_process(tmp_path, small_data):
    """Two torchrun launchers (`--nnodes 2`, one process each) meeting at a c10d rendezvous on
    127.0.0.1, batch 4 per process, give the losses and gradient norms of one process with batch 8.

    As in the single-node DDP test: no warm-up and a large lr, so step 2 depends on step 1's update;
    the device-side colour/flip draws are per rank, so they are off."""
    common = _overrides(small_data, **{"views.flip_p": "0", "views.color_jitter_p": "0", "views.grayscale_p": "0",
                                       "optim.epochs": "1", "optim.warmup_epochs": "0", "optim.lr": "0.8",
                                       "optim.temporal_lr": "0.8", "log.save_every": "100"})
    one = tmp_path / "one"
    r = run_lss("train", EXAMPLE, *common, "data.batch_size=8", "--output-dir", one, env={"OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-3000:]

    two = tmp_path / "two"  # both launchers name it; rank 0 creates it
    rdzv = ["--nnodes", "2", "--nproc-per-node", "1", "--rdzv-backend", "c10d",
            "--rdzv-endpoint", f"127.0.0.1:{_free_port()}", "--rdzv-id", "lss-two-nodes"]
    logs = [tmp_path / f"node{i}.log" for i in range(2)]
    nodes = [_start([sys.executable, "-m", "torch.distributed.run", *rdzv, "-m", "lss_cli", "train", str(EXAMPLE),
                     *common, "data.batch_size=4", "--output-dir", str(two)], ENV, log)
             for log in logs]
    try:
        codes = [node.wait(timeout=300) for node in nodes]
    finally:
        for node in nodes:
            if node.poll() is None:
                node.kill()
    assert codes == [0, 0], "\n".join(log.read_text()[-2000:] for log in logs)

    a, b = _metrics(one), _metrics(two)
    assert sorted(a) == sorted(b) == [1, 2]
    assert abs(a[2]["loss"] - a[1]["loss"]) > 1e-3  # step 1 moved the weights
    for step in a:
        for key in ("loss", "cd_category", "cd_description", "ca", "uniform", "grad_norm"):
            assert b[step][key] == pytest.approx(a[step][key], rel=1e-4, abs=1e-5), (step, key)
    assert load_checkpoint(two).step == 2


def _worker_ranks(agent: int) -> dict[int, int]:
    """{RANK: pid} of the processes torchrun `agent` started (read from /proc)."""
    ranks = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            environ = (stat.parent / "environ").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile, or not ours
        rank = [v[5:] for v in environ if v.startswith(b"RANK=")]
        if ppid == agent and rank:
            ranks[int(rank[0])] = int(stat.parent.name)
    return ranks


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/environ").is_file(), reason="finds the workers through /proc")
def test_a_stop_that_reaches_the_ranks_a_step_apart_still_saves(tmp_path, small_data):
    """On a cluster the stop reaches the nodes at different moments (scancel goes to each node's
    slurmd), so rank 1 may finish step k and stop while rank 0, not signalled yet, enters step k+1.
    Here SIGTERM reaches rank 1 only (torchrun then stops rank 0): a checkpoint of the last
    logged step must still be saved."""
    run, log = tmp_path / "run", tmp_path / "torchrun.log"
    args = _overrides(small_data, **{"optim.epochs": "40", "log.save_every": "1000"})
    proc = _start([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                   "-m", "lss_cli", "train", str(EXAMPLE), *args, "--output-dir", str(run)], ENV, log)
    try:
        _wait_for_steps(run, 3, proc, log)
        ranks = _worker_ranks(proc.pid)
        assert sorted(ranks) == [0, 1]
        os.kill(ranks[1], signal.SIGTERM)
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    saved = load_checkpoint(run)
    assert saved.step == max(_metrics(run)) < 160
    # Rank 0 was not signalled itself; it says why it stopped.
    assert f"another rank was asked to stop: stopped at step {saved.step}, checkpoint saved" in log.read_text()


# --------------------------------------------------------------------------------------------
# The batch scripts
# --------------------------------------------------------------------------------------------


def test_batch_scripts_parse_and_ask_for_the_stop_signal():
    """Both scripts are valid bash, and their #SBATCH lines ask for what the requeue relies on: the
    warning signal to the batch shell only (B:), requeueing allowed, one log appended to."""
    for script in SCRIPTS:
        r = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
        assert r.returncode == 0, (script.name, r.stderr)
        directives = {line.split()[1] for line in script.read_text().splitlines() if line.startswith("#SBATCH ")}
        assert {"--signal=B:USR1@180", "--requeue", "--open-mode=append"} <= directives, script.name


SHIMS = {
    # srun: log, drop srun's own options (all written --opt=value), then become the command, as the
    # one task of the step; its pid is what scancel signals.
    "srun": """echo "srun $*" >> "$SHIM_LOG"
while [ "${1#-}" != "$1" ]; do shift; done
echo $$ > "$SHIM_DIR/step.pid"
exec "$@"
""",
    # scancel --signal=SIG JOB: the signal to the step's processes (here: torchrun).
    "scancel": """echo "scancel $*" >> "$SHIM_LOG"
sig=TERM
for a in "$@"; do case $a in --signal=*) sig=${a#--signal=} ;; esac; done
kill -s "$sig" "$(cat "$SHIM_DIR/step.pid")"
""",
    # scontrol show hostnames LIST: one name per line; anything else (requeue) is only logged.
    "scontrol": """echo "scontrol $*" >> "$SHIM_LOG"
if [ "$1 $2" = "show hostnames" ]; then tr , '\\n' <<< "$3"; fi
""",
}


def _slurm_env(tmp_path: Path, run: Path) -> dict[str, str]:
    """A job's environment on this machine: the stand-ins first on PATH, then this Python's torchrun."""
    shims = tmp_path / "shims"
    shims.mkdir()
    for name, body in SHIMS.items():
        (shims / name).write_text("#!/bin/bash\n" + body)
        (shims / name).chmod(0o755)
    env = {k: v for k, v in ENV.items() if not k.startswith("SLURM_")}
    return {**env, "PATH": f"{shims}{os.pathsep}{Path(sys.executable).parent}{os.pathsep}{env['PATH']}",
            "SHIM_LOG": str(tmp_path / "calls.log"), "SHIM_DIR": str(shims),
            "SLURM_JOB_ID": JOB_ID, "SLURM_JOB_NAME": "lss-test", "SLURM_NNODES": "1",
            "SLURM_JOB_NODELIST": "127.0.0.1", "SLURM_CPUS_PER_TASK": "1",
            "CONFIG": str(EXAMPLE), "RUN": str(run), "NPROC": "1", "RDZV_PORT": str(_free_port())}


@pytest.mark.slow
@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.stem)
def test_batch_script_stops_requeues_and_resumes(tmp_path, small_data, script):
    """The job's USR1 (what `--signal=B:USR1@180` sends before the time limit) makes the script
    stop the training through scancel (finish the step, save, exit) and requeue the job; the
    restart, the same script with SLURM_RESTART_COUNT=1, resumes from that checkpoint and finishes."""
    run = tmp_path / "run"
    env = _slurm_env(tmp_path, run)
    calls = tmp_path / "calls.log"
    log = tmp_path / "job.out"  # what --output=%x-%j.out collects: stdout and stderr, appended to
    args = _overrides(small_data, **{"optim.epochs": "6", "log.save_every": "100"})  # 24 steps, no periodic save

    job = _start(["bash", str(script), *args], env, log)
    try:
        _wait_for_steps(run, 2, job, log)
        job.send_signal(signal.SIGUSR1)
        job.wait(timeout=120)
    finally:
        if job.poll() is None:
            job.kill()
    first = log.read_text()
    assert job.returncode != 0, first[-3000:]
    assert f"scancel --signal=TERM {JOB_ID}" in calls.read_text(), calls.read_text()
    assert f"scontrol requeue {JOB_ID}" in calls.read_text(), first[-3000:]
    assert "SIGTERM: stopped at step" in first and "checkpoint saved" in first, first[-3000:]
    saved = load_checkpoint(run)
    assert saved.step == max(_metrics(run)) < 24
    assert "step 1/24" in first  # stderr is a file: plain progress lines

    restart = _start(["bash", str(script), *args], {**env, "SLURM_RESTART_COUNT": "1"}, log)
    assert restart.wait(timeout=300) == 0, log.read_text()[len(first):][-3000:]
    second = log.read_text()[len(first):]
    assert f"resumed from {run / 'checkpoints' / f'step_{saved.step:08d}'}" in second, second[-3000:]
    srun_calls = [line for line in calls.read_text().splitlines() if line.startswith("srun ")]
    assert len(srun_calls) == 2 and "--resume" not in srun_calls[0] and srun_calls[1].endswith("--resume")
    assert calls.read_text().count("requeue") == 1  # the finished run is not requeued
    assert sorted(_metrics(run)) == list(range(1, 25))
    assert load_checkpoint(run).step == 24


def test_cleanup_leaves_a_callers_own_process_group_alone(tmp_path):
    """`lss_cli.api.export_features` inside a user's DDP program: our cleanup used to destroy the
    user's process group; it destroys only the one init_distributed made."""
    import torch.distributed as dist

    from lss_cli.runtime.dist import cleanup, init_distributed

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        init_distributed("cpu")
        cleanup()
        assert dist.is_initialized()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
