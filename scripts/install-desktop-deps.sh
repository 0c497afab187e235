#!/usr/bin/env bash
# Installs the system packages that the desktop helper needs (Debian/Ubuntu): the libraries the
# Tauri 2 app links against, the native clients, servers and X tools its end-to-end tests
# drive under Xvfb, and the Tauri bundler (npm) that packages it. Idempotent: when every
# package is already installed it returns at once, without touching apt or npm.
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
  # the app's Debian package (packaging/desktop/build.sh, app/tests/package.rs): Depends from
  # dpkg-shlibdeps, the binary's libraries read with readelf
  dpkg-dev
  binutils
)
# The Tauri bundler is the prebuilt npm package @tauri-apps/cli (packaging/desktop).
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  PACKAGES+=(nodejs npm)
fi

apt_install_missing install-desktop-deps "${PACKAGES[@]}"

bundler="$(dirname "${BASH_SOURCE[0]}")/../packaging/desktop"
pinned="$(node -p 'require(process.argv[1]).devDependencies["@tauri-apps/cli"]' "$(cd "$bundler" && pwd)/package.json")"
have="$(node -p 'require(process.argv[1]).version' "$(cd "$bundler" && pwd)/node_modules/@tauri-apps/cli/package.json" 2>/dev/null || true)"
if [ "$have" != "$pinned" ] || [ ! -x "$bundler/node_modules/.bin/tauri" ]; then
  echo "install-desktop-deps: npm ci in packaging/desktop (the Tauri bundler)" >&2
  (cd "$bundler" && npm ci --no-audit --no-fund --loglevel=error)
fi
