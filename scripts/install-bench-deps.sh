#!/usr/bin/env bash
# Installs what the benchmark harness (bench/, `passerelle-bench`) drives besides the broker:
# OpenSSH's sshd and ssh (the baseline stack and the agent of both stacks) and websockify (the
# baseline's WebSocket bridge); for the screen benchmark (`passerelle-bench screen`), the
# workstation's display (Xvfb, x11vnc, xterm, ffmpeg's ffplay), headless Chromium, Node.js (the
# playwright-core driver and guacamole-lite) and what bench/guacd/build.sh needs to build Apache
# guacd (VNC only) from source. Idempotent: packages already installed are skipped, and
# `apt-get update` runs at most once, only when something is missing.
set -euo pipefail
# shellcheck source=lib/apt.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/apt.sh"

packages=(openssh-server openssh-client websockify)
# The screen benchmark: the workstation's display and the browser.
packages+=(xvfb x11vnc x11-xserver-utils xterm ffmpeg chromium nodejs)
# guacd from source (bench/guacd/build.sh): autotools, and the -dev packages of its VNC protocol.
packages+=(autoconf automake libtool-bin make gcc pkg-config libcairo2-dev libjpeg62-turbo-dev
  libpng-dev uuid-dev libvncserver-dev libwebp-dev libssl-dev)
# The cluster benchmark (`passerelle-bench --cluster`): HAProxy and a throwaway PostgreSQL.
packages+=(haproxy postgresql)
# The package's own sshd service is not needed: the harness starts its own sshd from a temp config.
apt_install_missing install-bench-deps "${packages[@]}"
if ! command -v npm >/dev/null; then
  # Debian's nodejs ships npm separately; NodeSource's includes it.
  apt_install_missing install-bench-deps npm
fi
