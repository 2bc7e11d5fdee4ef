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
# On Linux x86_64 PyPI's torch is the CUDA build: about 6 GB in the venv, plus pip's unpacked copies
# under TMPDIR while it installs. A full disk otherwise surfaces only as pip's bare "[Errno 28]".
NEEDED_GB=8
free_gb() { df -Pk "$1" 2>/dev/null | awk 'NR == 2 { print int($4 / 1048576) }'; }

explain_failed_install() {
    local dir
    for dir in "$VENV" "${TMPDIR:-/tmp}"; do
        local gb
        gb=$(free_gb "$dir")
        if [ -n "$gb" ] && [ "$gb" -lt "$NEEDED_GB" ]; then
            cat >&2 <<MSG
setup: the install failed with only ${gb} GB free on the disk holding $dir; it needs about ${NEEDED_GB} GB
  (torch with its CUDA libraries). Free some space (old virtual environments, clones, caches), or put the
  environment and pip's temporary files elsewhere:  make setup VENV=/big/disk/venv TMPDIR=/big/disk/tmp
MSG
            return
        fi
    done
}

echo "setup: installing lss_cli into $VENV (pinned by constraints.txt)" >&2
if ! "$VENV/bin/python" -m pip install -q --disable-pip-version-check -c constraints.txt -e ".[dev,plots,tensorboard,wandb]" \
    2> >(grep -v "is ignored: it is neither a file nor a directory" >&2); then
    explain_failed_install
    exit 1
fi
echo "setup: done" >&2
