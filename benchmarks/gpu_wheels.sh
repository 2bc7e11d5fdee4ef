#!/usr/bin/env bash
# Run HERE (not on the device machine) before benchmarks/gpu_check.sh: the GPU image has torch 2.11,
# timm, torchvision, safetensors, rich, typer and pyyaml, but not open_clip_torch and its ftfy/wcwidth.
# Downloads their pure-Python wheels into .whl/ (git-ignored); name ".whl" in the device call's carry.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}
$PY -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d .whl \
    open_clip_torch==3.3.0 ftfy==6.3.1 wcwidth==0.2.13
ls -la .whl
