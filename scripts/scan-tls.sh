#!/usr/bin/env bash
# Scans the broker's HTTPS listener the way an outside reviewer would: testssl.sh (Debian
# package) against a fresh broker with its generated certificate, on the console page (so that
# the page headers are checked too). Prints the report and keeps it in FILE (default
# tls-scan.txt). SECURITY.md ("What outside scanners report") summarizes the last run.
#   usage: bash scripts/scan-tls.sh [FILE]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=lib/apt.sh
source scripts/lib/apt.sh
apt_install_missing scan-tls testssl.sh bsdextrautils
out="${1:-tls-scan.txt}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/cache/passerelle/target}"
cargo build --quiet -p passerelle --bin passerelle
bin="$CARGO_TARGET_DIR/debug/passerelle"

work="$(mktemp -d)"
pid=""
cleanup() {
  if [ -n "$pid" ]; then kill -TERM "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT
mkfifo "$work/banner"
"$bin" serve --data-dir "$work/data" --ssh-listen 127.0.0.1:0 --http-listen 127.0.0.1:0 \
  >"$work/banner" 2>"$work/broker.log" &
pid=$!
url=""
while read -r line; do
  case "$line" in
    "http listening on "*) url="${line#http listening on }"; break ;;
  esac
done <"$work/banner"
# Keep draining the banner so that the broker never blocks on its stdout.
cat "$work/banner" >/dev/null &
if [ -z "$url" ]; then
  echo "scan-tls: the broker did not start:" >&2
  cat "$work/broker.log" >&2
  exit 1
fi
# Debian installs it as `testssl`; upstream's name is testssl.sh.
testssl="$(command -v testssl || command -v testssl.sh)"
echo "scan-tls: scanning $url/console with testssl.sh $(dpkg-query -W -f='${Version}' testssl.sh 2>/dev/null || true)" >&2
# testssl.sh exits with the number of findings; the report is what matters here.
"$testssl" --quiet --color 0 --warnings batch "$url/console" | tee "$out" || true
echo "scan-tls: report kept in $out" >&2
