#!/usr/bin/env bash
# The main job: install the package when needed (install.sh), then execute every notebook headless
# with papermill.
#   bash run_all.sh [--no-install] [--profile smoke|quick|paper] [--data-root DIR] [--device auto|cpu|cuda]
#                   [--only 02 05] [--output DIR] [--runs-dir DIR] [--jobs N] [--param KEY=VALUE ...]
# Without a data root (or $SOSVAE_DATA_ROOT) it runs the quick profile on the bundled synthetic portraits.
# Executed notebooks, figures and summary.json go to ./outputs (git-ignored).
set -euo pipefail
cd "$(dirname "$0")"
if [ "${1:-}" = "--no-install" ]; then shift; else bash install.sh; fi
exec python3 -m sosvae_core.runner "$@"
