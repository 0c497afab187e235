#!/usr/bin/env bash
# Audits a running broker's SSH listener with ssh-audit (PyPI; installed by
# scripts/install-scan-deps.sh) and fails on any "fail" or "warn" finding, post-quantum notes
# excepted (OpenSSH 9.2 agents have no key exchange that russh and ssh-audit both count as
# post-quantum). The per-source connection rate (DHEat) test runs too, so scan from an address
# that is not otherwise connecting.
# usage: bash scripts/scan-ssh.sh HOST PORT
# exit 0: clean; 1: findings (printed); 2: usage or scanner error.
set -euo pipefail
host="${1:?usage: scan-ssh.sh HOST PORT}"
port="${2:?usage: scan-ssh.sh HOST PORT}"
tools="${PASSERELLE_TOOLS:-/var/cache/passerelle/tools}"
audit="$tools/ssh-audit-venv/bin/ssh-audit"
if [ ! -x "$audit" ]; then
  bash "$(dirname "${BASH_SOURCE[0]}")/install-scan-deps.sh"
fi
report="$(mktemp)"
trap 'rm -f "$report"' EXIT
# ssh-audit's exit code is non-zero for warnings too: judge by its report instead.
NO_COLOR=1 "$audit" --no-colors --timeout 10 --port "$port" "$host" >"$report" 2>&1 || true
cat "$report"
if ! grep -q '^# general' "$report"; then
  echo "scan-ssh: ssh-audit did not complete a scan of $host:$port" >&2
  exit 2
fi
# Findings read "(kex) NAME -- [warn] why" or, for a second reason, "`- [fail] why"; "(rec)"
# lines are the changes ssh-audit recommends; the connection-rate (DHEat) finding is a note.
findings="$(grep -E '\[(fail|warn)\]|^\(rec\)|DHEat' "$report" | grep -viE 'post-quantum' || true)"
if [ -n "$findings" ]; then
  echo "scan-ssh: findings:" >&2
  echo "$findings" >&2
  exit 1
fi
echo "scan-ssh: no failure and no warning (post-quantum notes aside)"
