#!/usr/bin/env bash
# The test command: install the package with its pinned dependencies, then run every test
# (the notebooks at profile=smoke included). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")"
python3 -m pip install -q --disable-pip-version-check -e ".[all]"
# The browser test drives Debian's Chromium; install it when we may (root, apt reachable).
if ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
        || echo "note: could not install chromium; the browser test will skip and say why"
fi
exec python3 -m pytest "$@"
