# Sourced by the install-*-deps.sh scripts: installs the Debian packages given that are not
# installed yet. Without anything missing it touches nothing; otherwise `apt-get update` runs
# once per process tree (PASSERELLE_APT_UPDATED is exported after the first), then one install.
# Another apt run (a second checkout installing at the same time) is waited for, not failed on.
# usage: apt_install_missing TAG PACKAGE...
apt_install_missing() {
  local tag="$1" pkg
  shift
  local missing=()
  for pkg in "$@"; do
    if [ "$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)" != "install ok installed" ]; then
      missing+=("$pkg")
    fi
  done
  if [ "${#missing[@]}" -eq 0 ]; then
    return 0
  fi
  echo "$tag: installing ${missing[*]}" >&2
  local sudo=()
  if [ "$(id -u)" -ne 0 ]; then
    sudo=(sudo)
  fi
  if [ -z "${PASSERELLE_APT_UPDATED:-}" ]; then
    "${sudo[@]}" apt-get -o DPkg::Lock::Timeout=600 update -qq
    export PASSERELLE_APT_UPDATED=1
  fi
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${missing[@]}"
}
