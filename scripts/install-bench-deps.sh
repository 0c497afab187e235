#!/usr/bin/env bash
# Installs what the benchmark harness (bench/, `passerelle-bench`) drives besides the broker:
# OpenSSH's sshd and ssh (the baseline stack and the agent of both stacks) and websockify (the
# baseline's WebSocket bridge). Idempotent: packages already installed are skipped, and
# `apt-get update` runs at most once, only when something is missing.
set -euo pipefail
# shellcheck source=lib/apt.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/apt.sh"

packages=(openssh-server openssh-client websockify)
# The package's own sshd service is not needed: the harness starts its own sshd from a temp config.
apt_install_missing install-bench-deps "${packages[@]}"
