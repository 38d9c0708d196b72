#!/usr/bin/env bash
# Install the package with the dependency versions CI tests (pip install -e ".[all]" -c constraints.txt),
# only when needed: when this Python cannot import sosvae_core, imports it from another checkout, or
# pyproject.toml or constraints.txt changed since the last install.
#   bash install.sh [--force]
# run_all.sh and test.sh call it first; give them --no-install to skip it.
# SOSVAE_PIP replaces the install command (default: python3 -m pip install ... -e ".[all]" -c constraints.txt).
set -euo pipefail
cd "$(dirname "$0")"
checkout="$(pwd)"
stamp=".install-stamp"  # git-ignored: the Python, pyproject.toml and constraints.txt of the last install
want="$(command -v python3) $(cat pyproject.toml constraints.txt | sha256sum | cut -d' ' -f1)"
if [ "${1:-}" != "--force" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] \
        && (cd / && python3 -c "import pathlib, sys, sosvae_core
sys.exit(pathlib.Path(sosvae_core.__file__).resolve().parents[1] != pathlib.Path(sys.argv[1]).resolve())" "$checkout") \
        2>/dev/null; then
    echo "sosvae-core is installed from this checkout and pyproject.toml and constraints.txt are unchanged: not reinstalling (bash install.sh --force does)"
    exit 0
fi
echo "installing sosvae-core and the dependency versions CI tests (pip install -e \".[all]\" -c constraints.txt) ..."
if [ -n "${SOSVAE_PIP:-}" ]; then
    bash -c "$SOSVAE_PIP"
else
    python3 -m pip install -q --disable-pip-version-check -e ".[all]" -c constraints.txt
fi
echo "$want" > "$stamp"
