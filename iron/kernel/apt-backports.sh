#!/usr/bin/env bash
# Makes Debian's linux-source-6.12 installable on Debian 12 and installs it.
# The 6.12 kernel source is packaged in bookworm-backports only; a stock Debian 12 image has that
# suite commented out or missing, so this adds it (pinned low, so nothing else is upgraded from
# it) and installs just the source package. Idempotent: does nothing once the tarball exists.
set -euo pipefail
tarball=$(ls /usr/src/linux-source-6.12.tar.* 2>/dev/null | head -1 || true)
if [ -n "$tarball" ]; then
  echo "apt-backports: $tarball present"
  exit 0
fi
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
list=/etc/apt/sources.list.d/iron-bookworm-backports.sources
if ! grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
  echo "apt-backports: adding bookworm-backports as $list"
  $SUDO tee "$list" >/dev/null <<'SRC'
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
$SUDO apt-get install -y -q --no-install-recommends linux-source-6.12/bookworm-backports
ls -l /usr/src/linux-source-6.12.tar.*
