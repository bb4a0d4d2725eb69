#!/usr/bin/env bash
# Installs what the tests need on a Debian machine (as root or through sudo) and runs them.
# Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
SUDO=""
[ "$(id -u)" = 0 ] || SUDO=sudo
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
# gcc/python3-dev: for any dependency without a wheel here; time: peak-RSS checks; util-linux: setpriv;
# mariadb-server, postgresql: the tests start their own throwaway servers (the packaged services are not used);
# chromium: the dashboard is checked in a real headless browser
$SUDO apt-get install -y -qq python3 python3-venv python3-dev gcc time util-linux mariadb-server mariadb-client \
    postgresql chromium >/dev/null
python3 -m venv .venv
.venv/bin/pip install -q --upgrade pip
.venv/bin/pip install -q -e '.[test]'
.venv/bin/ruff check agent tests bench
exec .venv/bin/pytest "$@"
