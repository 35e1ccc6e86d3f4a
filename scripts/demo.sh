#!/usr/bin/env bash
# Quick start, command 1: set up .venv (idempotent) and run the whole shadowcam story.
# Extra arguments go to `shadowcam demo` (e.g. --fast, --workdir DIR).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bash "$root/scripts/setup.sh"
cd "$root"
exec .venv/bin/shadowcam demo "$@"
