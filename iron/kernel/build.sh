#!/usr/bin/env bash
# Builds Iron's test kernel: unpacks Debian's linux-source-6.12, applies the patch series in
# iron/kernel/patches (in the order of patches/series), writes a small config (tinyconfig +
# config.fragment), builds bzImage and an initramfs (busybox, iproute2, the Iron tools and the
# in-VM tests). Everything lives in a cache directory outside the repository, so a second run
# only rebuilds what changed.
#
# usage: iron/kernel/build.sh [--stock] [--no-irqtime] [--objects] [--each] [--no-initramfs]
#   --stock         build the unpatched kernel (same config without Iron) into its own build dir
#   --no-irqtime    the patched kernel without CONFIG_IRQ_TIME_ACCOUNTING (softirq time then stays
#                   on the interrupted task, and Iron credits its group), in build-iron-noirqtime
#   --objects       only compile the objects the series touches (fast CI check), no bzImage
#   --each          with --objects: check every prefix of the series compiles (one per concern)
#   --no-initramfs  skip the initramfs
# environment:
#   IRON_CACHE      cache directory (default ${XDG_CACHE_HOME:-$HOME/.cache}/iron)
#   IRON_TOOLS      directory holding iron-bench / iron-governor binaries to put in the initramfs
#                   (default: $CARGO_TARGET_DIR/release, then target/release)
#   IRON_JOBS       make -j (default: number of CPUs)
# prints the paths of bzImage and initramfs on its last lines (KERNEL=..., INITRD=...).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
cache=${IRON_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/iron}
jobs=${IRON_JOBS:-$(nproc)}
stock=0; objects=0; each=0; initramfs=1; noirqtime=0
for a in "$@"; do
  case "$a" in
    --stock) stock=1 ;;
    --no-irqtime) noirqtime=1 ;;
    --objects) objects=1 ;;
    --each) each=1 ;;
    --no-initramfs) initramfs=0 ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    *) echo "build.sh: unknown argument $a (try --help)" >&2; exit 2 ;;
  esac
done
log() { echo "build.sh: $*" >&2; }
mkdir -p "$cache"

# 1. source tarball (bookworm-backports) and an unpacked git tree tagged `base`.
tarball=$(ls /usr/src/linux-source-6.12.tar.* 2>/dev/null | head -1 || true)
if [ -z "$tarball" ]; then
  log "linux-source-6.12 missing; installing it from bookworm-backports"
  "$here/deps.sh"
  tarball=$(ls /usr/src/linux-source-6.12.tar.* | head -1)
fi
tree="$cache/linux-source-6.12"
if ! git -C "$tree" rev-parse -q --verify base >/dev/null 2>&1; then
  log "unpacking $tarball into $cache"
  rm -rf "$tree"
  tar -C "$cache" -xf "$tarball"
  # Debian's .gitignore ignores the whole top level; -f tracks the pristine tree anyway.
  git -C "$tree" init -q
  git -C "$tree" add -f -A .
  git -C "$tree" -c user.name=iron -c user.email=iron@localhost commit -q -m "Linux 6.12 (Debian linux-source-6.12)"
  git -C "$tree" tag base
fi
G() { git -C "$tree" -c user.name=iron -c user.email=iron@localhost "$@"; }

# 2. apply the series unless the tree already carries exactly this series. The record in
# $cache/applied is not enough on its own: a run stopped inside --each leaves the tree checked
# out at an earlier patch, and building from there would give a kernel without the later
# patches. So the checkout itself is checked too: on master, one commit per patch above base,
# no local changes; a tree that is only checked out elsewhere goes back to master first.
mapfile -t series < <(grep -v '^#' "$here/patches/series" | sed '/^$/d')
want=$(cd "$here/patches" && cat series "${series[@]}" | sha256sum | cut -c1-16)
have=$(cat "$cache/applied" 2>/dev/null || true)
if [ "$stock" = 1 ]; then want=stock; fi
npatches=${#series[@]}
[ "$stock" = 1 ] && npatches=0
if [ "$want" = "$have" ] && [ "$(G symbolic-ref -q HEAD || true)" != refs/heads/master ]; then
  log "tree left at $(G log -1 --format='%h %s' HEAD); back to master"
  G checkout -q -f master || have=
fi
if [ "$want" = "$have" ] && { [ "$(G rev-list --count base..HEAD 2>/dev/null || true)" != "$npatches" ] ||
                             ! G diff --quiet HEAD --; }; then
  log "tree does not hold exactly the recorded series; re-applying"
  have=
fi
if [ "$want" != "$have" ]; then
  log "resetting tree to base and applying ${#series[@]} patches"
  G am --abort >/dev/null 2>&1 || true
  G checkout -q -f master 2>/dev/null || true
  G reset -q --hard base
  G clean -q -fdx
  if [ "$stock" = 0 ]; then
    for p in "${series[@]}"; do
      G am -q --whitespace=nowarn "$here/patches/$p" || { log "patch $p does not apply"; G am --abort || true; exit 1; }
    done
  fi
  echo "$want" > "$cache/applied"
fi

# 3. config: tinyconfig + fragment, redone only when the fragment changes.
if [ "$stock" = 1 ]; then out="$cache/build-stock"; else out="$cache/build-iron"; fi
[ "$noirqtime" = 1 ] && out="$out-noirqtime"
mkdir -p "$out"
frag=$(sha256sum "$here/config.fragment" | cut -c1-16)
[ "$noirqtime" = 1 ] && frag="$frag-noirqtime"
if [ "$(cat "$out/.fragment" 2>/dev/null || true)" != "$frag" ] || [ ! -f "$out/.config" ]; then
  log "configuring $out"
  make -s -C "$tree" O="$out" tinyconfig >/dev/null
  "$tree/scripts/kconfig/merge_config.sh" -m -O "$out" "$out/.config" "$here/config.fragment" >/dev/null
  make -s -C "$tree" O="$out" olddefconfig >/dev/null
  if [ "$noirqtime" = 1 ]; then
    "$tree/scripts/config" --file "$out/.config" --disable IRQ_TIME_ACCOUNTING
    make -s -C "$tree" O="$out" olddefconfig >/dev/null
  fi
  echo "$frag" > "$out/.fragment"
fi
if [ "$stock" = 0 ] && ! grep -q '^CONFIG_CGROUP_IRON=y' "$out/.config"; then
  # The option only exists once the series is applied: enable it now.
  "$tree/scripts/config" --file "$out/.config" --enable CGROUP_IRON
  make -s -C "$tree" O="$out" olddefconfig >/dev/null
  grep -q '^CONFIG_CGROUP_IRON=y' "$out/.config" || { log "CONFIG_CGROUP_IRON cannot be enabled (missing dependency?)"; exit 1; }
fi

# Objects the series touches: every .c file it modifies or adds, or, for a file that is
# #included into a bigger unit (kernel/sched/cputime.c is built inside build_policy.c), that
# unit; such a file does not compile on its own.
touched_objects() {
  G diff --name-only "$1" "$2" -- '*.c' | while read -r f; do
    unit=$(grep -lF "#include \"$(basename "$f")\"" "$tree/$(dirname "$f")"/*.c 2>/dev/null | head -1 || true)
    [ -n "$unit" ] && f=$(dirname "$f")/$(basename "$unit")
    echo "${f%.c}.o"
  done | sort -u
}

# 4a. fast check: touched objects compile (optionally for every prefix of the series).
if [ "$objects" = 1 ]; then
  make -s -C "$tree" O="$out" -j"$jobs" prepare >/dev/null
  if [ "$each" = 1 ] && [ "$stock" = 0 ]; then
    # The commits are listed once, from master: HEAD moves as the loop checks them out.
    mapfile -t commits < <(G rev-list --reverse base..master)
    n=${#commits[@]}
    # Back to the full series however this loop ends (the next run checks it too).
    trap 'G checkout -q -f master' EXIT
    trap 'exit 130' INT TERM
    for i in $(seq 1 "$n"); do
      c=${commits[$((i - 1))]}
      G checkout -q "$c"
      objs=$(touched_objects base "$c")
      log "patch $i/$n $(G log -1 --format=%s "$c"): $(echo $objs)"
      make -s -C "$tree" O="$out" -j"$jobs" $objs
    done
    G checkout -q master
    trap - EXIT INT TERM
  fi
  objs=$(touched_objects base HEAD)
  [ -n "$objs" ] || objs="kernel/sched/fair.o kernel/softirq.o net/core/dev.o"
  log "compiling touched objects: $(echo $objs)"
  make -s -C "$tree" O="$out" -j"$jobs" $objs
  log "objects OK"
  exit 0
fi

# 4b. the kernel.
log "building bzImage in $out (make -j$jobs)"
start=$(date +%s)
make -s -C "$tree" O="$out" -j"$jobs" bzImage
log "bzImage built in $(( $(date +%s) - start )) s"
kernel="$out/arch/x86/boot/bzImage"

# 5. initramfs: busybox, iproute2's ip (with its shared libraries), the Iron tools, vm scripts.
initrd="$cache/initramfs-$( [ "$stock" = 1 ] && echo stock || echo iron ).cpio.gz"
if [ "$initramfs" = 1 ]; then
  root="$cache/initramfs-root"
  rm -rf "$root"
  mkdir -p "$root"/{bin,sbin,etc,proc,sys,dev,tmp,run,var/run/netns,lib64,usr/bin,sys/fs/cgroup}
  cp /bin/busybox "$root/bin/busybox"
  for app in $("$root/bin/busybox" --list); do
    [ -e "$root/bin/$app" ] || ln -s busybox "$root/bin/$app"
  done
  rm -f "$root/bin/ip"
  copy_with_libs() {
    local bin=$1 dest=$2
    rm -f "$root/$dest"
    cp "$bin" "$root/$dest"
    ldd "$bin" 2>/dev/null | grep -o '/[^ ]*' | while read -r lib; do
      mkdir -p "$root$(dirname "$lib")"
      [ -e "$root$lib" ] || cp -L "$lib" "$root$lib"
    done
  }
  copy_with_libs "$(command -v ip)" bin/ip
  tc=$(command -v tc || echo /usr/sbin/tc)
  [ -x "$tc" ] && copy_with_libs "$tc" bin/tc
  et=$(command -v ethtool || echo /usr/sbin/ethtool)
  [ -x "$et" ] && copy_with_libs "$et" bin/ethtool
  tools=${IRON_TOOLS:-}
  if [ -z "$tools" ]; then
    for d in "${CARGO_TARGET_DIR:-}/release" "$repo/target/release"; do
      [ -x "$d/iron-bench" ] && { tools=$d; break; }
    done
  fi
  for t in iron-bench iron-governor; do
    if [ -n "$tools" ] && [ -x "$tools/$t" ]; then copy_with_libs "$tools/$t" "bin/$t"; else log "no $t binary (set IRON_TOOLS); in-VM benchmarks need it"; fi
  done
  cp "$here"/vm/iron-*.sh "$root/bin/"
  cp "$here/vm/init" "$root/init"
  chmod +x "$root/init" "$root"/bin/*.sh
  (cd "$root" && find . | cpio -o -H newc --quiet | gzip -1 > "$initrd")
  log "initramfs $(du -h "$initrd" | cut -f1)"
fi
echo "KERNEL=$kernel"
echo "INITRD=$initrd"
