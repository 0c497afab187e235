#!/usr/bin/env bash
# Installs schemathesis (PyPI, pinned), the property-based API tester that tests/tests/openapi.rs
# runs against a live broker, in a virtualenv under $PASSERELLE_TOOLS (default
# /var/cache/passerelle/tools), so that the system's Python is left alone. Idempotent: an
# installed pinned version returns at once.
set -euo pipefail
# shellcheck source=lib/apt.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/apt.sh"

SCHEMATHESIS_VERSION=4.32.5
tools="${PASSERELLE_TOOLS:-/var/cache/passerelle/tools}"
venv="$tools/schemathesis-venv"

if [ -x "$venv/bin/schemathesis" ] && "$venv/bin/pip" show schemathesis 2>/dev/null | grep -qx "Version: $SCHEMATHESIS_VERSION"; then
  exit 0
fi
if ! command -v python3 >/dev/null 2>&1 || ! python3 -m venv --help >/dev/null 2>&1; then
  apt_install_missing install-api-test-deps python3 python3-venv
fi
mkdir -p "$tools"
rm -rf "$venv"
python3 -m venv "$venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$SCHEMATHESIS_VERSION"
echo "install-api-test-deps: schemathesis $SCHEMATHESIS_VERSION in $venv" >&2
