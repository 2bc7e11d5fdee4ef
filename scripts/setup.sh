#!/usr/bin/env bash
# Creates .venv with lss_cli (editable; extras dev, plots, tensorboard and wandb, all of them tested)
# under constraints.txt, and makes sure FFmpeg's shared libraries (needed by torchcodec) are present.
# Safe to run again.
set -euo pipefail
PY=${PY:-python3}
VENV=${VENV:-.venv}

have_ffmpeg_libs() {
    # Capture first: `ldconfig -p | grep -q` under pipefail fails when grep exits early (SIGPIPE).
    local libs
    libs=$(ldconfig -p 2>/dev/null || true)
    [[ $libs == *libavcodec.so.* && $libs == *libavformat.so.* && $libs == *libswscale.so.* ]]
}

if ! have_ffmpeg_libs; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "setup: installing FFmpeg shared libraries (Debian package ffmpeg) for torchcodec" >&2
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends ffmpeg >/dev/null
    else
        cat >&2 <<'MSG'
setup: FFmpeg shared libraries (libavcodec, libavformat, ...) were not found; torchcodec needs them.
  Debian/Ubuntu:  sudo apt-get install ffmpeg
  conda:          conda install -c conda-forge "ffmpeg<8"
  macOS:          brew install ffmpeg
Continuing; video decoding will fail until they are installed.
MSG
    fi
fi

if [ ! -x "$VENV/bin/python" ]; then
    echo "setup: creating $VENV" >&2
    "$PY" -m venv "$VENV"
fi
echo "setup: installing lss_cli into $VENV (pinned by constraints.txt)" >&2
"$VENV/bin/python" -m pip install -q --disable-pip-version-check -c constraints.txt -e ".[dev,plots,tensorboard,wandb]" \
    2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
echo "setup: done" >&2
