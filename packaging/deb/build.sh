#!/usr/bin/env bash
# Builds the broker's Debian package (passerelle_VERSION_ARCH.deb) with dpkg-deb alone: stages
# the tree (binary, systemd unit, conffile from passerelle.example.toml, maintainer scripts,
# docs) and packs it.
#
#   packaging/deb/build.sh [--binary PATH] [--out DIR] [--compress xz|gzip|zstd|none] [--no-strip]
#
# Without --binary it builds the release binary (cargo build --release -p passerelle --bin
# passerelle; CARGO_TARGET_DIR is respected). The binary is stripped into the package unless
# --no-strip. Prints the .deb's path on stdout.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"

usage() {
  sed -n '2,10p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
  exit 2
}
die() {
  echo "packaging/deb/build.sh: $*" >&2
  exit 1
}

binary=""
out="$root/target/deb"
compress=xz
strip=1
while [ $# -gt 0 ]; do
  case "$1" in
    --binary) [ $# -ge 2 ] || die "--binary needs a path"; binary="$2"; shift 2 ;;
    --out) [ $# -ge 2 ] || die "--out needs a directory"; out="$2"; shift 2 ;;
    --compress) [ $# -ge 2 ] || die "--compress needs xz, gzip, zstd or none"; compress="$2"; shift 2 ;;
    --no-strip) strip=0; shift ;;
    -h|--help) usage ;;
    *) echo "packaging/deb/build.sh: unknown argument: $1" >&2; usage ;;
  esac
done
case "$compress" in xz|gzip|zstd|none) ;; *) die "--compress: $compress is not xz, gzip, zstd or none" ;; esac

for tool in dpkg-deb dpkg; do
  command -v "$tool" >/dev/null 2>&1 || die "$tool is missing (Debian package dpkg)"
done

if [ -z "$binary" ]; then
  target="${CARGO_TARGET_DIR:-$root/target}"
  (cd "$root" && cargo build --release -p passerelle --bin passerelle) >&2
  binary="$target/release/passerelle"
fi
[ -e "$binary" ] || die "no broker binary at $binary (build it, or give --binary PATH)"
if [ ! -f "$binary" ] || [ ! -x "$binary" ]; then die "$binary is not an executable file"; fi
head -c 4 "$binary" | grep -q "ELF" || die "$binary is not an ELF executable"

version="$(sed -n 's/^version = "\(.*\)"$/\1/p' "$root/Cargo.toml" | head -n 1)"
[ -n "$version" ] || die "no version in $root/Cargo.toml"
arch="$(dpkg --print-architecture)"

# Runtime dependencies from the binary's shared libraries.
depends=""
if command -v dpkg-shlibdeps >/dev/null 2>&1; then
  shl="$(mktemp -d)"
  mkdir "$shl/debian"
  printf 'Source: passerelle\n\nPackage: passerelle\nArchitecture: any\n' > "$shl/debian/control"
  depends="$(cd "$shl" && dpkg-shlibdeps -O "$binary" 2>/dev/null | sed -n 's/^shlibs:Depends=//p')" || depends=""
  rm -rf "$shl"
fi
if [ -z "$depends" ]; then
  glibc="$(objdump -T "$binary" 2>/dev/null | grep -o 'GLIBC_[0-9.]*' | sed 's/GLIBC_//' | sort -uV | tail -n 1)" || glibc=""
  depends="libc6${glibc:+ (>= $glibc)}, libgcc-s1"
fi
depends="adduser, $depends"

stage="$(mktemp -d)"
trap 'rm -rf "$stage"' EXIT
pkg="$stage/passerelle"
install -d -m 0755 "$pkg/DEBIAN" "$pkg/usr/bin" "$pkg/lib/systemd/system" \
  "$pkg/etc/passerelle" "$pkg/usr/share/doc/passerelle"

if [ "$strip" = 1 ]; then
  strip --strip-unneeded -o "$pkg/usr/bin/passerelle" "$binary" || die "strip failed on $binary"
  chmod 0755 "$pkg/usr/bin/passerelle"
else
  install -m 0755 "$binary" "$pkg/usr/bin/passerelle"
fi
install -m 0644 "$here/passerelle.service" "$pkg/lib/systemd/system/passerelle.service"

# The conffile: the example configuration with the data in /var/lib/passerelle.
sed -e 's|^data_dir = "./passerelle-data"$|data_dir = "/var/lib/passerelle"|' \
  -e 's|^# recordings_dir = "./passerelle-data/recordings"$|# recordings_dir = "/var/lib/passerelle/recordings"|' \
  "$root/passerelle.example.toml" > "$pkg/etc/passerelle/passerelle.toml"
grep -qx 'data_dir = "/var/lib/passerelle"' "$pkg/etc/passerelle/passerelle.toml" \
  || die "passerelle.example.toml has no 'data_dir = \"./passerelle-data\"' line to point at /var/lib/passerelle"
if grep -q 'passerelle-data' "$pkg/etc/passerelle/passerelle.toml"; then
  die "passerelle.example.toml still names ./passerelle-data after the rewrite: update build.sh"
fi
chmod 0644 "$pkg/etc/passerelle/passerelle.toml"
echo /etc/passerelle/passerelle.toml > "$pkg/DEBIAN/conffiles"

install -m 0644 "$root/README.md" "$root/SECURITY.md" "$pkg/usr/share/doc/passerelle/"
install -m 0644 "$root/passerelle.example.toml" "$pkg/usr/share/doc/passerelle/passerelle.example.toml"
cat > "$pkg/usr/share/doc/passerelle/copyright" <<COPYRIGHT
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: passerelle

Files: *
License: AGPL-3.0-or-later
 On Debian systems the GNU Affero General Public License is not in
 /usr/share/common-licenses; see https://www.gnu.org/licenses/agpl-3.0.html.
COPYRIGHT

for script in postinst prerm postrm; do
  install -m 0755 "$here/$script" "$pkg/DEBIAN/$script"
done

size_kib="$(du -sk --exclude=DEBIAN "$pkg" | cut -f1)"
cat > "$pkg/DEBIAN/control" <<CONTROL
Package: passerelle
Version: $version
Architecture: $arch
Maintainer: Passerelle developers <passerelle@localhost>
Installed-Size: $size_kib
Depends: $depends
Section: net
Priority: optional
Description: remote-control tunnel broker
 Workstations announce VNC, RDP and SSH with a stock OpenSSH client
 (ssh -R); operators open sessions from a web console and the broker
 carries them over WebSocket to a browser viewer. Runs as the systemd
 service passerelle.service with its data in /var/lib/passerelle.
CONTROL

mkdir -p "$out"
deb="$out/passerelle_${version}_${arch}.deb"
dpkg-deb --root-owner-group -Z"$compress" --build "$pkg" "$deb" >&2
echo "$deb"
