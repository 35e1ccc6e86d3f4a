#!/usr/bin/env bash
# Quick start, command 2: set up .venv (idempotent) and run the test suite.
# Extra arguments go to pytest (e.g. -k store, -x).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bash "$root/scripts/setup.sh"
cd "$root"
exec .venv/bin/python -m pytest "$@"
