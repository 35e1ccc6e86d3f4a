#!/usr/bin/env bash
# The GPU server path benchmark (issue 14) on a lent GPU device, as one short, prepared sequence.
#
#   bash scripts/gpu_bench.sh prepare     # here, no device time: clips + onnxruntime-gpu pieces, then prints the plan
#   bash scripts/gpu_bench.sh plan        # prints the plan again (the device calls, in order)
#   bash scripts/gpu_bench.sh device N    # on the device, every call: keep what it carried; with all N pieces, run
#
# Why transfers: the device gets a copy of the working tree (at most 64 MiB a call) and nothing else can be reached
# from it. Its image has torch, OpenCV (no H.264 encoder) and a CPU-only onnxruntime, no pydantic, no PyAV. So:
# - the H.264 clips are written here (PyAV's libx264) into .gpu/gpu_bench/streams (ignored by .gitignore), ~8 MB,
#   and carried in the first call with the wheel's checksum;
# - onnxruntime-gpu (~255 MB) goes in pieces of <= 52 MB, one per call (../shared/tools/ort-gpu-pieces.sh), and is
#   installed on the device into /tmp/site (PYTHONPATH), which shadows its CPU-only onnxruntime;
# - scripts/gpu_bench.py needs nothing else there (numpy, cv2, onnx, onnxruntime, torch, torchvision).
# Each call should follow the previous one within the machine's 30 s warm window (a cold start costs minutes of the
# session's 15 minutes of device time). The results come back as $OUT/gpu_bench.json; put them into the document with
#   .venv/bin/python scripts/gpu_bench.py --from-json FILES_AT/gpu_bench.json
# GPU_BENCH_ARGS (environment, device side) adds arguments to the run, e.g. "--cameras 16,48 --seconds 6".
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
carry=.gpu/gpu_bench
clips=4  # distinct 1080p clips; the cameras share them, each at its own offset

pieces() {  # how many .ortgpuK folders ../shared/tools/ort-gpu-pieces.sh made
  local c=0 d
  for d in .ortgpu[0-9]; do [[ -d $d ]] && c=$((c + 1)); done
  echo "$c"
}

plan() {
  local n k
  n=$(pieces)
  if [[ $n == 0 ]]; then
    echo "No onnxruntime-gpu pieces yet: run 'bash scripts/gpu_bench.sh prepare' first."
    return
  fi
  echo "Device sequence: $n run calls back to back (the machine stays warm 30 s after each), then render here:"
  echo "  call 1:    run(carry=[\"$carry\", \".ortgpu$n\"], timeout_s=120, command=\"bash scripts/gpu_bench.sh device $n\")"
  echo "             (clips, checksum and the last, smallest piece; checks the GPU, the image and the clips)"
  for k in $(seq 1 $((n - 1))); do
    if ((k < n - 1)); then
      echo "  call $((k + 1)):    run(carry=[\".ortgpu$k\"], timeout_s=120, command=\"bash scripts/gpu_bench.sh device $n\")"
    else
      echo "  call $((k + 1)):    run(carry=[\".ortgpu$k\"], timeout_s=540, command=\"bash scripts/gpu_bench.sh device $n\")"
      echo "             (all pieces there: installs onnxruntime-gpu, runs scripts/gpu_bench.py --gpu; about 3-4 minutes)"
    fi
  done
  echo "  then here: .venv/bin/python scripts/gpu_bench.py --from-json <files_at>/gpu_bench.json   (then give_back)"
}

prepare() {
  .venv/bin/python scripts/gpu_bench.py --generate-only --clips "$clips" --streams-dir "$carry/streams"
  if [[ ${1:-} != --no-ort ]]; then
    bash "$root/../shared/tools/ort-gpu-pieces.sh" >/dev/null
    wheel=$(ls .ortgpu-wheel/onnxruntime_gpu-*-cp312-*.whl | head -n 1)
    echo "$(sha256sum "$wheel" | cut -d' ' -f1) $(basename "$wheel")" >"$carry/ort-wheel.txt"
  fi
  du -sh "$carry" .ortgpu[0-9] 2>/dev/null || true
  plan
}

device() {  # whatever this call carried is kept in /tmp; once all N pieces are there, install and run
  local n=$1 have d
  mkdir -p /tmp/ortparts /tmp/gpubench
  if [[ -d $carry && ! -f /tmp/gpubench/.checked ]]; then  # the first call: keep the clips, check the machine once
    cp -r "$carry/." /tmp/gpubench/
    touch /tmp/gpubench/.checked
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
    echo "cores: $(nproc)"
    python3 -c "import sys, cv2, numpy, onnx, torch, torchvision; print(sys.version.split()[0], 'cv2', cv2.__version__, 'torch', torch.__version__, 'cuda', torch.cuda.is_available())"
    python3 scripts/gpu_bench.py --help >/dev/null && echo "scripts/gpu_bench.py imports"
    python3 -c "
import cv2, glob
for p in sorted(glob.glob('/tmp/gpubench/streams/*.mp4')):
    ok, f = cv2.VideoCapture(p).read(); print(p, 'decodes' if ok else 'DOES NOT DECODE', None if f is None else f.shape)"
  fi
  for d in .ortgpu[0-9]; do
    [[ -d $d ]] && cp "$d"/piece.* /tmp/ortparts/
  done
  have=$(find /tmp/ortparts -name 'piece.*' | wc -l)
  echo "pieces on this machine: $have of $n"
  ((have == n)) || return 0
  [[ -f /tmp/gpubench/ort-wheel.txt ]] || { echo "no /tmp/gpubench/ort-wheel.txt: carry $carry first" >&2; exit 1; }
  read -r sum name </tmp/gpubench/ort-wheel.txt
  cat /tmp/ortparts/piece.* >"/tmp/$name"
  echo "$sum  /tmp/$name" | sha256sum -c -
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site "/tmp/$name"
  export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1
  # shellcheck disable=SC2086
  python3 scripts/gpu_bench.py --gpu --clips "$clips" --streams-dir /tmp/gpubench/streams --workdir /tmp/gpubench/work \
    --no-docs --json "$OUT/gpu_bench.json" ${GPU_BENCH_ARGS:-} 2>&1 | tee "$OUT/gpu_bench.log"
}

case ${1:-plan} in
  prepare) shift; prepare "$@" ;;
  plan) plan ;;
  device) device "$2" ;;
  *) echo "usage: $0 prepare [--no-ort] | plan | device N" >&2; exit 2 ;;
esac
