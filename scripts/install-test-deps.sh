#!/usr/bin/env bash
# Installs the system packages the end-to-end tests drive (Debian/Ubuntu). Idempotent: when
# every package is already installed it returns at once, without touching apt.
set -euo pipefail
# shellcheck source=lib/apt.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/apt.sh"

# One list: add packages here.
PACKAGES=(
  openssh-client
  openssh-server
  ca-certificates
  # Fault tests: network namespaces and veth pairs (ip), a tmpfs (mount, in util-linux).
  iproute2
  # `script` gives a test's process a terminal (the admin key and the helper's question).
  bsdutils
  # VNC in the browser and recordings: a real desktop, real VNC servers, a real browser.
  xvfb
  x11vnc
  x11-xserver-utils
  tigervnc-standalone-server
  tigervnc-tools
  xterm
  chromium
  fonts-dejavu-core
  # `passerelle recording export --video` pipes frames into ffmpeg; ffprobe checks the result.
  ffmpeg
  # RDP in the browser: FreeRDP's shadow server (TLS and NLA, a SAM file from winpr-hash) and
  # xrdp with its Xorg backend (TLS, credentials injected); xdotool reads window sizes.
  freerdp2-shadow-x11
  winpr-utils
  xrdp
  xorgxrdp
  xdotool
  # A real PROXY protocol v2 sender in front of the SSH listener (trusted_proxies).
  haproxy
  # The PostgreSQL store backend: a throwaway server per test run (scripts/lib/postgres.sh),
  # with the contrib modules (pg_trgm for the terminal search).
  postgresql
  postgresql-contrib
  # The Debian package (packaging/deb/build.sh, tests/tests/package.rs): strip, dpkg-shlibdeps,
  # and systemd-analyze to verify the unit (installs cleanly in a container without systemd).
  binutils
  dpkg-dev
  systemd
)
# Node.js drives Chromium (playwright-core, no browser download); the image may bring its own.
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  PACKAGES+=(nodejs npm)
fi

install_page_driver() {
  local dir
  dir="$(dirname "${BASH_SOURCE[0]}")/../tests/browser"
  if [ ! -d "$dir/node_modules/playwright-core" ]; then
    echo "install-test-deps: npm ci in tests/browser" >&2
    (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error)
  fi
  # The OpenID provider of the console sign-in tests (tests/oidc/provider.mjs).
  dir="$(dirname "${BASH_SOURCE[0]}")/../tests/oidc"
  if [ ! -d "$dir/node_modules/oidc-provider" ]; then
    echo "install-test-deps: npm ci in tests/oidc" >&2
    (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error)
  fi
}

# The terminal tests (tests/tests/terminal.rs) start their own sshd and log in as this user.
# Its password is random, made once, and kept where only root reads it (the tests run as root).
ensure_terminal_test_user() {
  local user=passerelle-term dir=/var/lib/passerelle-tests
  if [ "$(id -u)" != 0 ]; then
    echo "install-test-deps: not root: skipping the terminal tests' user $user" >&2
    return
  fi
  if ! id -u "$user" >/dev/null 2>&1; then
    useradd --create-home --shell /bin/bash "$user"
  fi
  if [ ! -s "$dir/term-password" ]; then
    install -d -m 0700 "$dir"
    (umask 077 && head -c 18 /dev/urandom | base64 > "$dir/term-password")
  fi
  echo "$user:$(cat "$dir/term-password")" | chpasswd
}

apt_install_missing install-test-deps "${PACKAGES[@]}"
install_page_driver
ensure_terminal_test_user
# ssh-audit (PyPI) for the SSH listener's scan test.
bash "$(dirname "${BASH_SOURCE[0]}")/install-scan-deps.sh"
# schemathesis (PyPI) for the OpenAPI document's property-based test.
bash "$(dirname "${BASH_SOURCE[0]}")/install-api-test-deps.sh"
