#!/usr/bin/env bash
# Prepares a host to run chc-dataplane on real NICs: reserves hugepages, loads vfio-pci, binds
# the chosen NICs to it with dpdk-devbind.py, creates /etc/chc and /var/lib/chc-store, and
# (optionally) installs the systemd units. Every step is printed; --dry-run prints them
# without running anything. Safe to run again: steps already done are skipped.
set -euo pipefail

usage() {
  cat <<'USAGE'
Usage: deploy/setup-host.sh [options] [--nic PCI_ADDRESS]...

  --nic PCI          bind this NIC (e.g. 0000:3b:00.0) to the DPDK driver; repeatable
  --driver NAME      driver to bind to (default vfio-pci; uio_pci_generic for old hosts)
  --hugepages N      hugepages to reserve per NUMA node (default 1024)
  --hugepage-size S  2M (default) or 1G (1G pages usually need hugepagesz=1G on the
                     kernel command line; the script says so when the kernel refuses)
  --noiommu          allow vfio without an IOMMU (unsafe; for VMs without vIOMMU)
  --persist          keep hugepages and the driver across reboots (sysctl.d, modules-load.d;
                     the units re-bind the NICs listed in /etc/chc/dataplane.env at start)
  --install-units    copy deploy/systemd/*.service to /etc/systemd/system and reload
  --dry-run          print every step, change nothing
  --status           show hugepages and NIC bindings, change nothing
  -h, --help         this text
USAGE
}

NICS=()
DRIVER=vfio-pci
PAGES=1024
SIZE=2M
NOIOMMU=0
UNITS=0
PERSIST=0
DRY=0
STATUS=0
HERE="$(cd "$(dirname "$0")" && pwd)"

while [ $# -gt 0 ]; do
  case "$1" in
    --nic) NICS+=("${2:?--nic needs a PCI address}"); shift 2 ;;
    --driver) DRIVER="${2:?--driver needs a name}"; shift 2 ;;
    --hugepages) PAGES="${2:?--hugepages needs a count}"; shift 2 ;;
    --hugepage-size) SIZE="${2:?--hugepage-size needs 2M or 1G}"; shift 2 ;;
    --noiommu) NOIOMMU=1; shift ;;
    --install-units) UNITS=1; shift ;;
    --persist) PERSIST=1; shift ;;
    --dry-run) DRY=1; shift ;;
    --status) STATUS=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "setup-host: unknown option $1" >&2; usage >&2; exit 2 ;;
  esac
done

case "$SIZE" in
  2M) KB=2048 ;;
  1G) KB=1048576 ;;
  *) echo "setup-host: --hugepage-size must be 2M or 1G, not $SIZE" >&2; exit 2 ;;
esac
[[ "$PAGES" =~ ^[0-9]+$ ]] || { echo "setup-host: --hugepages must be a number" >&2; exit 2; }
for nic in "${NICS[@]}"; do
  [[ "$nic" =~ ^([0-9a-fA-F]{4}:)?[0-9a-fA-F]{2}:[0-9a-fA-F]{2}\.[0-7]$ ]] ||
    { echo "setup-host: $nic is not a PCI address like 0000:3b:00.0" >&2; exit 2; }
done

# Prints a step, then runs it unless --dry-run.
run() {
  echo "+ $*"
  [ "$DRY" -eq 1 ] || "$@"
}
# Writes VALUE to FILE (sysfs or a config file), printed like a command.
write() {
  echo "+ echo $2 > $1"
  [ "$DRY" -eq 1 ] || echo "$2" > "$1"
}
note() { echo "# $*"; }

if [ "$STATUS" -eq 1 ]; then
  grep -H . /sys/kernel/mm/hugepages/hugepages-*/nr_hugepages 2>/dev/null || true
  grep -s hugetlbfs /proc/mounts || echo "no hugetlbfs mounted"
  command -v dpdk-devbind.py >/dev/null || { echo "dpdk-devbind.py missing: apt-get install dpdk"; exit 1; }
  dpdk-devbind.py --status-dev net
  exit 0
fi

if [ "$DRY" -eq 0 ] && [ "$(id -u)" -ne 0 ]; then
  echo "setup-host: run as root (or with --dry-run to see the steps)" >&2
  exit 1
fi

note "1. packages: DPDK runtime and tools"
if ! command -v dpdk-devbind.py >/dev/null; then
  run apt-get install -y --no-install-recommends dpdk
fi

note "2. hugepages: $PAGES x $SIZE per NUMA node"
nodes=(/sys/devices/system/node/node[0-9]*)
[ -e "${nodes[0]}" ] || nodes=("")
for node in "${nodes[@]}"; do
  if [ -n "$node" ]; then
    f="$node/hugepages/hugepages-${KB}kB/nr_hugepages"
  else
    f="/sys/kernel/mm/hugepages/hugepages-${KB}kB/nr_hugepages"
  fi
  if [ ! -e "$f" ]; then
    note "the kernel has no ${SIZE} pages ($f missing): add 'default_hugepagesz=$SIZE hugepagesz=$SIZE hugepages=$PAGES' to the kernel command line and reboot"
    continue
  fi
  if [ "$(cat "$f")" -ge "$PAGES" ]; then
    note "$f already has $(cat "$f") pages"
  else
    write "$f" "$PAGES"
    if [ "$DRY" -eq 0 ] && [ "$(cat "$f")" -lt "$PAGES" ]; then
      note "only $(cat "$f") of $PAGES pages could be reserved (memory fragmented); reserve them at boot instead"
    fi
  fi
done
if ! grep -qs "^hugetlbfs /dev/hugepages " /proc/mounts; then
  run mkdir -p /dev/hugepages
  run mount -t hugetlbfs -o pagesize="$SIZE" nodev /dev/hugepages
else
  note "hugetlbfs already mounted on /dev/hugepages"
fi

note "3. kernel driver: $DRIVER"
if [ "$DRIVER" = vfio-pci ]; then
  if [ -z "$(ls -A /sys/kernel/iommu_groups 2>/dev/null)" ]; then
    if [ "$NOIOMMU" -eq 1 ]; then
      note "no IOMMU: enabling vfio's unsafe no-IOMMU mode as asked"
      run modprobe vfio enable_unsafe_noiommu_mode=1
      write /sys/module/vfio/parameters/enable_unsafe_noiommu_mode 1
    else
      note "no IOMMU groups: enable VT-d/AMD-Vi in firmware and boot with intel_iommu=on iommu=pt (or amd_iommu=on), or pass --noiommu"
    fi
  fi
fi
if lsmod 2>/dev/null | grep -q "^${DRIVER//-/_} "; then
  note "$DRIVER already loaded"
else
  run modprobe "$DRIVER"
fi

note "4. NICs: ${NICS[*]:-none given}"
for nic in "${NICS[@]}"; do
  full="$nic"
  [[ "$full" =~ ^[0-9a-fA-F]{4}: ]] || full="0000:$full"
  dev="/sys/bus/pci/devices/$full"
  if [ "$DRY" -eq 0 ] && [ ! -e "$dev" ]; then
    echo "setup-host: no PCI device $full (see 'lspci -D | grep -i ether')" >&2
    exit 1
  fi
  current="$(basename "$(readlink "$dev/driver" 2>/dev/null)" 2>/dev/null || true)"
  if [ "$current" = "$DRIVER" ]; then
    note "$full already bound to $DRIVER"
    continue
  fi
  for ifc in "$dev"/net/*; do
    [ -e "$ifc" ] || continue
    run ip link set dev "$(basename "$ifc")" down
  done
  run dpdk-devbind.py --bind="$DRIVER" "$full"
done

note "5. directories for the services"
run mkdir -p /etc/chc /var/lib/chc-store
if [ ! -e /etc/chc/chain.toml ]; then
  note "write the chain to /etc/chc/chain.toml (ports as PCI addresses, see deploy/README.md)"
fi

if [ "$PERSIST" -eq 1 ]; then
  note "6. keep it across reboots"
  if [ "$SIZE" = 2M ]; then
    write /etc/sysctl.d/80-chc-hugepages.conf "vm.nr_hugepages = $PAGES"
  else
    note "1G pages are reserved on the kernel command line only (see step 2)"
  fi
  write /etc/modules-load.d/chc-dpdk.conf "$DRIVER"
  if [ ${#NICS[@]} -gt 0 ] && ! grep -qs '^CHC_NICS=' /etc/chc/dataplane.env; then
    echo "+ echo 'CHC_NICS=\"${NICS[*]}\"' >> /etc/chc/dataplane.env"
    [ "$DRY" -eq 1 ] || echo "CHC_NICS=\"${NICS[*]}\"" >> /etc/chc/dataplane.env
  fi
fi

if [ "$UNITS" -eq 1 ]; then
  note "7. systemd units"
  for unit in "$HERE"/systemd/*.service; do
    run install -m 0644 "$unit" /etc/systemd/system/
  done
  run systemctl daemon-reload
fi

note "done; check with: deploy/setup-host.sh --status"
