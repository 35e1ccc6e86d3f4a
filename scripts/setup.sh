#!/usr/bin/env bash
# Idempotent setup: system packages (when root), .venv, shadowcam with its dev extras.
# Safe to run again: each step is skipped when already done.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

APT_PACKAGES=(python3-gi gir1.2-gst-rtsp-server-1.0 gstreamer1.0-plugins-base gstreamer1.0-plugins-good
              gstreamer1.0-plugins-ugly chromium postgresql)

if [[ ${SHADOWCAM_SKIP_APT:-0} != 1 ]] && command -v apt-get >/dev/null && [[ $(id -u) == 0 ]]; then
  missing=()
  for p in "${APT_PACKAGES[@]}"; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
  done
  if ((${#missing[@]})); then
    echo "setup: installing system packages: ${missing[*]}"
    apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
  fi
elif [[ $(id -u) != 0 ]]; then
  echo "setup: not root, skipping system packages (${APT_PACKAGES[*]}); tests that need them are skipped"
fi

PY=${PYTHON:-python3}
if [[ ! -x .venv/bin/python ]]; then
  echo "setup: creating .venv with $($PY --version)"
  $PY -m venv .venv
fi
stamp=.venv/.shadowcam-setup
want=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)
if [[ ! -f $stamp || $(cat "$stamp") != "$want" ]]; then
  echo "setup: installing Python packages into .venv (first time: a few minutes)"
  .venv/bin/python -m pip install -q --upgrade pip
  # torch first, pinned to the builds this machine image carries on disk (pip only; a CUDA build, fine on CPU)
  if [[ $(uname -m) == x86_64 ]]; then
    .venv/bin/python -m pip install -q "torch==2.14.1" "torchvision==0.29.1" \
      || .venv/bin/python -m pip install -q "torch>=2.4" "torchvision>=0.19"
  fi
  # the runtime, the training stack, MLflow's full package (ui/server) and the test tools
  .venv/bin/python -m pip install -q -e ".[train,server,dev]"
  echo "$want" >"$stamp"
fi
