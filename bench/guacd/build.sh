#!/usr/bin/env bash
# Builds Apache guacd with only its VNC protocol, for the screen benchmark's stack (c)
# (`passerelle-bench --screen`). guacd is not packaged in Debian 12; this builds it from the
# apache/guacamole-server sources with Debian's -dev packages (scripts/install-bench-deps.sh).
#
# usage: bench/guacd/build.sh SRC_DIR PREFIX
#   SRC_DIR  a guacamole-server source tree (e.g. `git archive 1.6.0` of apache/guacamole-server)
#   PREFIX   where to install; guacd lands in PREFIX/sbin/guacd and its libraries in PREFIX/lib
#
# The build happens in SRC_DIR (autotools); nothing outside PREFIX is installed. Optional parts
# guacd does not need for VNC (RDP, SSH, telnet, Kubernetes, audio, the recording tools, the
# video encoder) are switched off, so that a missing library cannot change what is measured.
set -euo pipefail

if [ $# -ne 2 ]; then
  echo "usage: $0 SRC_DIR PREFIX" >&2
  exit 2
fi
src=$(realpath "$1")
mkdir -p "$2"
prefix=$(realpath "$2")
[ -f "$src/configure.ac" ] || { echo "$src has no configure.ac: not a guacamole-server tree" >&2; exit 1; }

for tool in autoreconf libtoolize pkg-config make cc; do
  command -v "$tool" >/dev/null || { echo "$tool missing: run scripts/install-bench-deps.sh" >&2; exit 1; }
done
for lib in cairo libpng libjpeg uuid libvncclient; do
  pkg-config --exists "$lib" || { echo "pkg-config finds no $lib: run scripts/install-bench-deps.sh" >&2; exit 1; }
done

cd "$src"
[ -x configure ] || autoreconf -fi
./configure --prefix="$prefix" \
  --with-vnc --without-rdp --without-ssh --without-telnet --disable-kubernetes \
  --without-pulse --without-vorbis --without-pango --without-terminal \
  --without-libavcodec --without-libavformat --without-libavutil --without-libswscale \
  --disable-guacenc --disable-guaclog --without-websockets \
  --with-webp --without-ssl
# -j2: the machine this runs on has two cores; MAKEFLAGS overrides it.
make ${MAKEFLAGS:+$MAKEFLAGS} -j"${GUACD_JOBS:-2}"
make install
"$prefix/sbin/guacd" -v
echo "built $prefix/sbin/guacd (VNC only)"
