#!/usr/bin/env bash
# Scripted retraining (cron/CI friendly): original data + production labels -> verified ONNX -> alias `challenger`.
# Usage: scripts/retrain.sh --db work/shadowcam.db --data data/train --register conveyor --workdir work
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
exec "$root/.venv/bin/shadowcam" retrain "$@"
