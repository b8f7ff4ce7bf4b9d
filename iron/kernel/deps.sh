#!/usr/bin/env bash
# Installs what building and booting Iron's test kernel needs that scripts/apt-packages.txt
# cannot list: Debian's linux-source-6.12 (packaged in bookworm-backports only) and
# qemu-system-x86. Idempotent: does nothing when both are present.
#
# bookworm-backports is added as its own sources file when no configured source names it. Only
# the packages named here are taken from it (pkg/bookworm-backports), so nothing else on the
# machine is upgraded. qemu-system-x86 comes from bookworm unless the image already carries
# backports' qemu-utils (whose version breaks bookworm's qemu-system-common); then the matching
# qemu set comes from backports too.
set -euo pipefail
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
have_src() { ls /usr/src/linux-source-6.12.tar.* >/dev/null 2>&1; }
have_qemu() { command -v qemu-system-x86_64 >/dev/null 2>&1; }
if have_src && have_qemu; then
  echo "deps: linux-source-6.12 and qemu-system-x86_64 present"
  exit 0
fi
list=/etc/apt/sources.list.d/iron-bookworm-backports.sources
if ! grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
  echo "deps: adding bookworm-backports ($list)"
  $SUDO tee "$list" >/dev/null <<'SRC'
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
fi
$SUDO apt-get update -q
pkgs=()
have_src || pkgs+=(linux-source-6.12/bookworm-backports)
if ! have_qemu; then
  if dpkg-query -W -f='${Version}' qemu-utils 2>/dev/null | grep -q bpo; then
    pkgs+=(qemu-system-x86/bookworm-backports qemu-system-common/bookworm-backports
           qemu-system-data/bookworm-backports seabios/bookworm-backports)
  else
    pkgs+=(qemu-system-x86)
  fi
fi
echo "deps: installing ${pkgs[*]}"
$SUDO apt-get install -y -q --no-install-recommends "${pkgs[@]}"
have_src && have_qemu
