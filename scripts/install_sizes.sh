#!/usr/bin/env bash
# Measure the disk size of each install of shadowcam in fresh virtualenvs (for the README's install table):
#   runtime   pip install shadowcam            (an edge box: ingestion, ONNX Runtime, store, labeling, evaluator)
#   train     pip install "shadowcam[train]"   (+ torch, torchvision, albumentations)
# Usage: scripts/install_sizes.sh [OUT_DIR]   (default: a temporary folder, removed afterwards)
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
out=${1:-$(mktemp -d)}
PY=${PYTHON:-python3}
src="$out/src"
rm -rf "$src" && mkdir -p "$src"
(cd "$root" && git ls-files -co --exclude-standard pyproject.toml README.md 'pipeline/*' 'models/*' 'apps/*' | while read -r f; do [[ -f $f ]] && echo "$f"; done | tar -cf - -T -) | tar -xf - -C "$src"
for extra in runtime train; do
  venv="$out/$extra"
  rm -rf "$venv"
  $PY -m venv "$venv"
  spec="$src"; [[ $extra == train ]] && spec="$src[train]"
  # torch pinned to the build this project tests with (as scripts/setup.sh does)
  pins=(); [[ $extra == train && $(uname -m) == x86_64 ]] && pins=("torch==2.14.1" "torchvision==0.29.1")
  t0=$(date +%s)
  "$venv/bin/python" -m pip install -q "${pins[@]}" "$spec" 2>&1 | grep -v "^WARNING: Location" || true
  site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  torch=$("$venv/bin/python" -c 'import importlib.util as u; print("yes" if u.find_spec("torch") else "no")')
  printf '%-8s %8s  %4d packages  torch: %-3s  (%d s to install)\n' "$extra" "$(du -sh "$site" | cut -f1)" \
    "$("$venv/bin/python" -m pip list 2>/dev/null | tail -n +3 | wc -l)" "$torch" "$(( $(date +%s) - t0 ))"
done
[[ -z ${1:-} ]] && rm -rf "$out"
