#!/usr/bin/env bash
# The one prepared GPU check for issue 8 (and issue 6's benchmark numbers). Run ONCE on an H100/H200:
#
#   here:        bash benchmarks/gpu_wheels.sh          # open_clip + ftfy + wcwidth wheels into .whl/
#   device tool: run(command="bash benchmarks/gpu_check.sh", carry=[".whl"], timeout_s=570)
#
# Phases, most important first; each gets what is left of BUDGET seconds (default 480) and is skipped
# when less than its minimum is left, so the whole check ends inside ~8 minutes of device time:
#   train_b32  ViT-B-16 step, B=32: correctness vs eager (+ fp32), compile vs eager, frame-wise baseline,
#              SDPA backend check, profile of the compiled step            (the MFU >= 55% / 1.6x target)
#   train_b32_ac  only if compile OOMed at B=32: the same with activation checkpointing
#   train_b64  B=64 with activation checkpointing: fits in 80 GB? per-clip memory, speed
#   eval       feature-extraction forward, ViT-B-16 8x224 bf16, B=64, eager vs compile (MFU >= 50%)
#   syncs      host syncs per step of the production step incl. GPU augmentation (sync debug mode)
#   extras     B=32 checkpointing cost (compile-ac vs compile) and the compiled baseline (reference figure: 101 clips/s)
# Results: $OUT/*.json, $OUT/gpu_check.log and $OUT/table.md (printed last); copy the table into
# benchmarks/RESULTS.md with the card and the date.
# Dry run of the script logic on a CPU (seconds per phase, numbers meaningless):
#   OUT=/tmp/gc EXTRA_ARGS="--tiny --device cpu --backend aot_eager --batch 2 --steps 1 --repeats 1" \
#       bash benchmarks/gpu_check.sh
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu_check}
mkdir -p "$OUT"
BUDGET=${BUDGET:-480}
LOG="$OUT/gpu_check.log"
PY=${PY:-python3}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
T0=$SECONDS

if ! $PY -c "import open_clip" 2>/dev/null; then
    if ! ls .whl/*.whl >/dev/null 2>&1; then
        echo "open_clip is not installed and .whl/ is empty: run benchmarks/gpu_wheels.sh here and carry .whl"
        exit 2
    fi
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/lss_site .whl/*.whl || exit 2
    export PYTHONPATH="$PYTHONPATH:/tmp/lss_site"
fi
{
    date -u
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm,power.limit --format=csv \
        || echo "no nvidia-smi"
    $PY -c "import torch, open_clip, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, \
'open_clip', open_clip.__version__, 'triton', triton.__version__)"
} 2>&1 | tee "$LOG"

phase() {  # phase NAME MIN_SECONDS ARGS... : run benchmarks/ARGS with what is left of the budget
    local name=$1 min=$2 left rc
    shift 2
    left=$((BUDGET - (SECONDS - T0)))
    if ((left < min)); then
        echo "=== SKIP $name: ${left}s left, needs ~${min}s" | tee -a "$LOG"
        return 0
    fi
    echo "=== $name (up to ${left}s): $*" | tee -a "$LOG"
    # shellcheck disable=SC2086 # EXTRA_ARGS is a list of flags (a CPU dry run: "--tiny --batch 2 ...")
    timeout --signal=INT --kill-after=15 "$left" $PY "$@" --json "$OUT/$name.json" ${EXTRA_ARGS:-} >>"$LOG" 2>&1
    rc=$?
    echo "=== $name: exit $rc after $((SECONDS - T0))s" | tee -a "$LOG"
}

compiled_ok() {  # did variant $2 of $1.json produce a timing?
    $PY - "$OUT/$1.json" "$2" <<'PY' 2>/dev/null
import json, sys
rows = json.load(open(sys.argv[1]))["rows"]
sys.exit(0 if any(r["variant"] == sys.argv[2] and "clips_s" in r for r in rows) else 1)
PY
}

phase train_b32 150 benchmarks/train_step.py --batch 32 --variants compile,eager --sdpa-check --profile
compiled_ok train_b32 compile || phase train_b32_ac 130 benchmarks/train_step.py --batch 32 --variants compile-ac \
    --no-baseline --check-steps 1
phase train_b64 120 benchmarks/train_step.py --batch 64 --variants compile-ac --no-baseline --check-steps 1 --repeats 2
phase eval 60 benchmarks/eval_forward.py --batch 64 --variants eager,compile
phase syncs 30 benchmarks/train_step.py --batch 4 --augment --variants none --no-baseline --sync-debug
phase extras 150 benchmarks/train_step.py --batch 32 --variants compile-ac --no-baseline --baseline-compile \
    --check-steps 1

$PY benchmarks/results_table.py "$OUT"/train_b32.json "$OUT"/train_b32_ac.json "$OUT"/train_b64.json \
    "$OUT"/eval.json "$OUT"/syncs.json "$OUT"/extras.json >"$OUT/table.md"
echo "=== done after $((SECONDS - T0))s; log $LOG"
cat "$OUT/table.md"
