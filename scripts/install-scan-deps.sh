#!/usr/bin/env bash
# Installs the outside scanners the tests and scripts/scan-ssh.sh run: ssh-audit (PyPI, pinned)
# in a virtualenv under $PASSERELLE_TOOLS (default /var/cache/passerelle/tools), so that the
# system's Python is left alone. Idempotent: an installed pinned version returns at once.
set -euo pipefail
# shellcheck source=lib/apt.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/apt.sh"

SSH_AUDIT_VERSION=3.9.0
tools="${PASSERELLE_TOOLS:-/var/cache/passerelle/tools}"
venv="$tools/ssh-audit-venv"

if [ -x "$venv/bin/ssh-audit" ] && "$venv/bin/pip" show ssh-audit 2>/dev/null | grep -qx "Version: $SSH_AUDIT_VERSION"; then
  exit 0
fi
if ! command -v python3 >/dev/null 2>&1 || ! python3 -m venv --help >/dev/null 2>&1; then
  apt_install_missing install-scan-deps python3 python3-venv
fi
mkdir -p "$tools"
rm -rf "$venv"
python3 -m venv "$venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check "ssh-audit==$SSH_AUDIT_VERSION"
echo "install-scan-deps: ssh-audit $SSH_AUDIT_VERSION in $venv" >&2
