#!/usr/bin/env bash
# Run the benchmark and regenerate docs/benchmarks.md (run it on a quiet machine: check `uptime` first).
# Extra arguments go to `shadowcam bench` (e.g. --quick --out /tmp/bench.md).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg) on $(nproc) cores" >&2
exec .venv/bin/shadowcam bench "$@"
