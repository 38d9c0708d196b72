#!/usr/bin/env bash
# The test command: install the package when needed (install.sh; --no-install skips it), then run
# every test (the notebooks at profile=smoke included). Other arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")"
if [ "${1:-}" = "--no-install" ]; then shift; else bash install.sh; fi
exec python3 -m pytest "$@"
