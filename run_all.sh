#!/usr/bin/env bash
# The main job: install the package, then execute every notebook headless with papermill.
#   bash run_all.sh [--profile smoke|quick|paper] [--data-root DIR] [--device auto|cpu|cuda] [--only 02 05] [--output DIR]
# Without a data root (or $SOSVAE_DATA_ROOT) it runs the quick profile on the bundled synthetic portraits.
# Executed notebooks, figures and summary.json go to ./outputs (git-ignored).
set -euo pipefail
cd "$(dirname "$0")"
python3 -m pip install -q --disable-pip-version-check -e ".[all]"
exec python3 -m sosvae_core.runner "$@"
