#!/usr/bin/env bash
# Builds the desktop helper's Linux bundles (a .deb, and an AppImage) with the Tauri bundler:
# the prebuilt @tauri-apps/cli pinned in packaging/desktop/package-lock.json (no tauri-cli
# compilation), installed with `npm ci` on first use.
#
#   packaging/desktop/build.sh [--bundles deb|appimage|deb,appimage] [--debug] [--no-build] [--out DIR]
#
#   --bundles LIST  deb, appimage or deb,appimage (default: deb; the AppImage needs tools
#                   from GitHub, see below)
#   --debug         the debug profile (faster to build; what the test packages)
#   --no-build      bundle the binary already built in $CARGO_TARGET_DIR/{release,debug}
#                   instead of compiling it first (`tauri build --no-bundle`)
#   --out DIR       copy the bundles there (default: target/desktop-bundles)
#
# CARGO_TARGET_DIR is respected. The Depends of the .deb are the list in
# src-desktop/app/tauri.conf.json plus, with dpkg-dev installed, the packages of every library
# the binary links (dpkg-shlibdeps). The AppImage needs linuxdeploy and AppRun, which the
# bundler downloads from GitHub: they must already be in ~/.cache/tauri (see
# src-desktop/README.md). Prints each bundle's path on stdout.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
app="$root/src-desktop/app"

usage() {
  sed -n '2,19p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
  exit 2
}
die() {
  echo "packaging/desktop/build.sh: $*" >&2
  exit 1
}

bundles="deb"
debug=0
build=1
out="$root/target/desktop-bundles"
while [ $# -gt 0 ]; do
  case "$1" in
    --bundles) [ $# -ge 2 ] || die "--bundles needs deb, appimage or deb,appimage"; bundles="$2"; shift 2 ;;
    --debug) debug=1; shift ;;
    --no-build) build=0; shift ;;
    --out) [ $# -ge 2 ] || die "--out needs a directory"; out="$2"; shift 2 ;;
    -h|--help) usage ;;
    *) echo "packaging/desktop/build.sh: unknown argument: $1" >&2; usage ;;
  esac
done
want_deb=0
want_appimage=0
IFS=',' read -r -a list <<< "$bundles"
for b in "${list[@]}"; do
  case "$b" in
    deb) want_deb=1 ;;
    appimage) want_appimage=1 ;;
    *) die "--bundles: $b is not deb or appimage (Windows and macOS bundles are built on those systems)" ;;
  esac
done
[ $((want_deb + want_appimage)) -gt 0 ] || die "--bundles is empty"

command -v node >/dev/null 2>&1 || die "node is missing (scripts/install-desktop-deps.sh)"
if [ ! -x "$here/node_modules/.bin/tauri" ]; then
  echo "packaging/desktop/build.sh: npm ci (the Tauri bundler)" >&2
  (cd "$here" && npm ci --no-audit --no-fund --loglevel=error) >&2
fi
tauri="$here/node_modules/.bin/tauri"

# The AppImage bundler downloads AppRun and linuxdeploy unless they are in its tools folder;
# with no network that download fails deep inside the bundler, so say it here, plainly.
arch="$(uname -m)"
if [ "$want_appimage" = 1 ]; then
  tools="${XDG_CACHE_HOME:-$HOME/.cache}/tauri"
  for tool in "AppRun-$arch" "linuxdeploy-$arch.AppImage" linuxdeploy-plugin-gtk.sh linuxdeploy-plugin-gstreamer.sh; do
    [ -s "$tools/$tool" ] || die "the AppImage needs $tools/$tool, which the Tauri bundler downloads from GitHub and no Debian, PyPI or npm package provides; put it there (see src-desktop/README.md, \"AppImage\") or build --bundles deb"
  done
fi

profile=release
flags=()
if [ "$debug" = 1 ]; then
  profile=debug
  flags+=(--debug)
fi
target="${CARGO_TARGET_DIR:-$root/target}"
binary="$target/$profile/passerelle-desktop-app"

# `tauri build --no-bundle` compiles (with tauri/custom-protocol: the frontend served from the
# binary); dpkg-shlibdeps then reads the binary for the Depends, and `tauri bundle` packs it.
if [ "$build" = 1 ]; then
  (cd "$app" && "$tauri" build "${flags[@]}" --ci --no-bundle) >&2
fi
[ -x "$binary" ] || die "no app binary at $binary (build it, or drop --no-build)"

# Depends: the configured list, plus the packages of the libraries the binary links.
shlibs=""
if command -v dpkg-shlibdeps >/dev/null 2>&1; then
  shl="$(mktemp -d)"
  mkdir "$shl/debian"
  printf 'Source: passerelle-desktop\n\nPackage: passerelle\nArchitecture: any\n' > "$shl/debian/control"
  shlibs="$(cd "$shl" && dpkg-shlibdeps -O "$binary" 2>/dev/null | sed -n 's/^shlibs:Depends=//p')" || shlibs=""
  rm -rf "$shl"
  [ -n "$shlibs" ] || die "dpkg-shlibdeps found no dependencies for $binary"
else
  echo "packaging/desktop/build.sh: no dpkg-shlibdeps (dpkg-dev): Depends is the configured list only" >&2
fi
# The configured names, less those dpkg-shlibdeps also names (its entries carry versions).
override="$(node - "$app/tauri.conf.json" "$shlibs" <<'NODE'
const fs = require("fs");
const [conf, shlibs] = process.argv.slice(2);
const configured = JSON.parse(fs.readFileSync(conf, "utf8")).bundle.linux.deb.depends;
const found = shlibs.split(",").map((s) => s.trim()).filter(Boolean);
const name = (dep) => dep.split(/[\s(|]/)[0];
const names = new Set(found.map(name));
const depends = configured.filter((d) => !names.has(name(d))).concat(found);
process.stdout.write(JSON.stringify({ bundle: { linux: { deb: { depends } } } }));
NODE
)"

cd "$app"
"$tauri" bundle "${flags[@]}" --ci --bundles "$bundles" --config "$override" >&2

mkdir -p "$out"
# Named after the product name of tauri.linux.conf.json (passerelle-desktop: the broker's
# package is passerelle) and the version of tauri.conf.json.
name="$(node -p 'require(process.argv[1]).productName' "$app/tauri.linux.conf.json")"
version="$(node -p 'require(process.argv[1]).version' "$app/tauri.conf.json")"
debarch="$(dpkg --print-architecture 2>/dev/null || echo amd64)"
made=()
if [ "$want_deb" = 1 ]; then made+=("$target/$profile/bundle/deb/${name}_${version}_${debarch}.deb"); fi
if [ "$want_appimage" = 1 ]; then made+=("$target/$profile/bundle/appimage/${name}_${version}_${debarch}.AppImage"); fi
for f in "${made[@]}"; do
  [ -f "$f" ] || die "the bundler made no $f"
  cp "$f" "$out/"
  echo "$out/$(basename "$f")"
done
