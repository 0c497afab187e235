#!/usr/bin/env bash
# Installs what the benchmark harness (bench/, `passerelle-bench`) drives besides the broker:
# OpenSSH's sshd and ssh (the baseline stack and the agent of both stacks) and websockify (the
# baseline's WebSocket bridge). Idempotent: packages already installed are skipped, and
# `apt-get update` runs at most once, only when something is missing.
set -euo pipefail

packages=(openssh-server openssh-client websockify)
missing=()
for p in "${packages[@]}"; do
    status=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
    if [[ $status != "install ok installed" ]]; then
        missing+=("$p")
    fi
done

if ((${#missing[@]} == 0)); then
    echo "install-bench-deps: all present (${packages[*]})"
    exit 0
fi

SUDO=()
if [[ $(id -u) -ne 0 ]]; then
    SUDO=(sudo)
fi
echo "install-bench-deps: installing ${missing[*]}"
"${SUDO[@]}" apt-get update -qq
# The package's own sshd service is not needed: the harness starts its own sshd from a temp config.
DEBIAN_FRONTEND=noninteractive "${SUDO[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
