#!/bin/sh
# Passerelle agent kit for Linux, made by `passerelle agent kit` for tenant @@TENANT@@.
# Installs the agent with the system's own OpenSSH client: makes the agent's key HERE (it never
# leaves this machine), enrols it with the broker when the kit carries an enrolment token (else
# prints it for an admin to register), pins the broker's host key and installs a systemd unit
# that keeps `ssh -N -R ...` running.
#
#   sudo sh install.sh [--id ID] [--root DIR] [--no-start]
#
#   --id ID      the agent id (default: the kit's id, else this machine's hostname)
#   --root DIR   install under DIR instead of / (the unit's paths point into DIR; no user is
#                made and nothing is started: to try a kit out, or for tests)
#   --no-start   install and enable nothing in systemd, only write the files
set -eu

BROKER_HOST=@@SSH_HOST@@
BROKER_PORT=@@SSH_PORT@@
PUBLIC_URL=@@PUBLIC_URL@@
AGENT_ID=@@AGENT_ID@@
AGENT_USER=passerelle-agent

KIT_DIR=$(cd "$(dirname "$0")" && pwd)
ROOT=
START=yes

die() { echo "install.sh: $*" >&2; exit 1; }

while [ $# -gt 0 ]; do
    case $1 in
        --id) [ $# -ge 2 ] || die "--id needs a value"; AGENT_ID=$2; shift 2 ;;
        --root) [ $# -ge 2 ] || die "--root needs a value"; ROOT=$2; START=no; shift 2 ;;
        --no-start) START=no; shift ;;
        -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
        *) die "unknown option $1 (see --help)" ;;
    esac
done

if [ -n "$ROOT" ]; then
    mkdir -p "$ROOT"
    ROOT=$(cd "$ROOT" && pwd)
    # The unit names these paths unquoted.
    case $ROOT in
        *[!A-Za-z0-9/._-]*) die "--root must be a path of letters, digits and /._- only" ;;
    esac
fi
[ -n "$AGENT_ID" ] || AGENT_ID=$(hostname)
case $AGENT_ID in
    ''|*[!A-Za-z0-9._-]*) die "agent id '$AGENT_ID' must be ASCII letters, digits, '.', '_', '-' (give --id)" ;;
esac

SSH=$(command -v ssh) || die "the OpenSSH client (ssh) is not installed"
command -v ssh-keygen >/dev/null || die "ssh-keygen is not installed"
ETC=$ROOT/etc/passerelle-agent
UNIT_DIR=$ROOT/etc/systemd/system
umask 077
mkdir -p "$ETC" "$UNIT_DIR"

# The key is made here and never leaves this machine; an existing one is kept (re-install).
if [ ! -f "$ETC/id_ed25519" ]; then
    ssh-keygen -q -t ed25519 -N '' -C "passerelle-agent $AGENT_ID" -f "$ETC/id_ed25519"
fi
PUBLIC_KEY=$(cat "$ETC/id_ed25519.pub")
cp "$KIT_DIR/known_hosts" "$ETC/known_hosts"

if [ -f "$KIT_DIR/enroll-token" ]; then
    command -v curl >/dev/null || die "curl is needed to enrol"
    case $PUBLIC_URL in
        http://*) echo "install.sh: warning: enrolling over plain HTTP: the token travels in clear" >&2 ;;
    esac
    TOKEN=$(cat "$KIT_DIR/enroll-token")
    TMP=$(mktemp -d)
    trap 'rm -rf "$TMP"' EXIT
    # The body goes through a file: a command line is visible to every user.
    printf '{"token": "%s", "id": "%s", "public_key": "%s"}' \
        "$TOKEN" "$AGENT_ID" "$PUBLIC_KEY" >"$TMP/body"
    set -- -sS --max-time 60 -o "$TMP/answer" -w '%{http_code}' \
        -H 'content-type: application/json' --data-binary "@$TMP/body"
    if [ -f "$KIT_DIR/broker-ca.pem" ]; then
        set -- "$@" --cacert "$KIT_DIR/broker-ca.pem"
    fi
    CODE=$(curl "$@" "$PUBLIC_URL/api/v1/enroll") || die "could not reach $PUBLIC_URL"
    if [ "$CODE" != 201 ]; then
        die "enrolment refused ($CODE): $(cat "$TMP/answer")"
    fi
    echo "enrolled as $AGENT_ID: $(cat "$TMP/answer")"
else
    echo "Register this agent's key on the broker (admin), then start the service:"
    echo "  passerelle agent add --tenant @@TENANT_PLAIN@@ $AGENT_ID --public-key '$PUBLIC_KEY'"
fi

BACKOFF=
VERSION=$(systemctl --version 2>/dev/null | sed -n '1s/^systemd \([0-9]*\).*/\1/p')
if [ -n "$VERSION" ] && [ "$VERSION" -ge 254 ]; then
    # Growing delays between restarts (systemd 254 and later): 5 s up to 5 min.
    BACKOFF='RestartSteps=10\nRestartMaxDelaySec=5min'
fi
sed -e "s|@ETC@|$ETC|g" -e "s|@SSH@|$SSH|g" -e "s|@AGENT_ID@|$AGENT_ID|g" \
    -e "s|@BACKOFF@|$BACKOFF|" \
    "$KIT_DIR/passerelle-agent.service.in" >"$UNIT_DIR/passerelle-agent.service"
chmod 0644 "$UNIT_DIR/passerelle-agent.service"

if [ -z "$ROOT" ]; then
    if ! id "$AGENT_USER" >/dev/null 2>&1; then
        useradd --system --no-create-home --home-dir /nonexistent \
            --shell /usr/sbin/nologin "$AGENT_USER"
    fi
    # The agent's user reads its key; the pinned host key and the directory stay root's.
    chown "root:$AGENT_USER" "$ETC"
    chmod 0750 "$ETC"
    chown "$AGENT_USER:" "$ETC/id_ed25519" "$ETC/id_ed25519.pub"
    chown root:root "$ETC/known_hosts"
    chmod 0644 "$ETC/known_hosts"
fi
if [ "$START" = yes ]; then
    systemctl daemon-reload
    systemctl enable --now passerelle-agent.service
    echo "passerelle-agent.service started (to $BROKER_HOST:$BROKER_PORT): journalctl -u passerelle-agent"
else
    echo "installed under ${ROOT:-/} (not started)"
fi
