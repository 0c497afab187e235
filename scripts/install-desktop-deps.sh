#!/usr/bin/env bash
# Installs the system packages that the desktop helper needs (Debian/Ubuntu): the libraries the
# Tauri 2 app links against, and the native clients, servers and X tools its end-to-end tests
# drive under Xvfb. Idempotent: when every package is already installed it returns at once,
# without touching apt.
set -euo pipefail
# shellcheck source=lib/apt.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/apt.sh"

PACKAGES=(
  # Tauri 2 (WebKitGTK 4.1, GTK 3, tray, SVG icons, xdo for menus)
  build-essential
  pkg-config
  libwebkit2gtk-4.1-dev
  libgtk-3-dev
  libayatana-appindicator3-dev
  librsvg2-dev
  libxdo-dev
  libssl-dev
  # end-to-end tests: X server, native clients, remote desktops, screenshots
  xvfb
  x11vnc
  tigervnc-viewer
  freerdp2-x11
  freerdp2-shadow-x11
  winpr-utils
  imagemagick
  x11-xserver-utils
  x11-utils
  xdotool
  openssh-client
  dbus-x11
  desktop-file-utils
  xdg-utils
)

apt_install_missing install-desktop-deps "${PACKAGES[@]}"
