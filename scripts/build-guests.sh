#!/usr/bin/env bash
# Builds the Debian i386 Linux guest into ./guests/ (git-ignored) from Debian's
# packages only:
#   guests/vmlinuz-686              the bzImage of the kernel linux-image-686:i386
#                                   depends on (guests/vmlinuz-686.version names it)
#   guests/initramfs-shell.cpio.gz  /init mounts proc, sys and devtmpfs, prints
#                                   X86BT-GUEST-READY, runs an interactive shell on
#                                   /dev/ttyS0, and powers off when it exits
#   guests/vmlinuz-amd64            the bzImage of linux-image-amd64's kernel
#   guests/initramfs-run.cpio.gz    /init does the same mounts, prints the marker,
#                                   runs /commands, then `poweroff -f`
#   guests/initramfs-{shell,run}-amd64.cpio.gz
#                                   the same two images with busybox-static:amd64,
#                                   for the amd64 kernel
# and installs Debian's memtest86+ package, whose /boot/memtest86+ia32.bin and
# /boot/memtest86+x64.bin tests/memtest.rs boots.
#
# /commands defaults to `uname -a; cat /proc/cpuinfo; ls /; echo nproc=$(nproc);
# cat /proc/interrupts; echo done`; set
# X86BT_GUEST_COMMANDS to replace it (one shell command list; newlines allowed).
#
# Safe to run again: the .deb files are kept in guests/cache/ and only downloaded
# when missing, and the initramfs images are rebuilt reproducibly (fixed mtimes,
# sorted cpio list, no gzip timestamp), so an unchanged input gives identical bytes.
# Runs as root on a bare Debian bookworm machine; as another user it uses sudo for
# the package steps.
set -euo pipefail
cd "$(dirname "$0")/.."

MARKER=X86BT-GUEST-READY
DEFAULT_COMMANDS='uname -a; cat /proc/cpuinfo; ls /; echo nproc=$(nproc); cat /proc/interrupts; echo done'
COMMANDS=${X86BT_GUEST_COMMANDS:-$DEFAULT_COMMANDS}
# The fixed timestamp of every file in the initramfs images.
EPOCH=${SOURCE_DATE_EPOCH:-0}

out=guests
cache=$out/cache
work=$out/work
script=build-guests
# shellcheck source=scripts/guest-lib.sh
. scripts/guest-lib.sh

# cpio is not in a minimal Debian; gzip is Essential but check anyway. The
# memtest86+ images are used as installed (the package's amd64 build ships both).
need_pkgs=()
command -v cpio >/dev/null 2>&1 || need_pkgs+=(cpio)
command -v gzip >/dev/null 2>&1 || need_pkgs+=(gzip)
[ -f /boot/memtest86+ia32.bin ] || need_pkgs+=(memtest86+)
if [ ${#need_pkgs[@]} -gt 0 ]; then
  apt_install "${need_pkgs[@]}"
fi

# Packages come from the i386 lists: add the architecture once.
if [ "$(dpkg --print-architecture)" != i386 ] &&
  ! dpkg --print-foreign-architectures | grep -qx i386; then
  echo "build-guests: enabling the i386 architecture"
  as_root dpkg --add-architecture i386
fi

# The versioned kernel package the meta-package depends on, for example
# linux-image-6.1.0-37-686. Empty when apt does not know the i386 lists yet.
kernel_package() {
  apt-cache depends linux-image-686:i386 2>/dev/null |
    grep -oE 'linux-image-[0-9][^ :]*-686(:i386)?$' | head -1 | sed 's/:i386$//' || true
}

# Sets kpkg, kdeb and bdeb. Fails when the lists do not know the packages yet,
# or name files the mirror no longer has (stale lists).
fetch() {
  kpkg=$(kernel_package)
  [ -n "$kpkg" ] || return 1
  kdeb=$(download "$kpkg:i386" "${kpkg}_*_i386.deb") || return 1
  bdeb=$(download busybox-static:i386 "busybox-static_*_i386.deb") || return 1
}

mkdir -p "$cache" "$work"
if ! fetch; then
  update_lists
  if ! fetch; then
    echo "build-guests: cannot get linux-image-686:i386's kernel and busybox-static:i386" >&2
    exit 1
  fi
fi
echo "build-guests: kernel package $kpkg:i386 ($(basename "$kdeb"))"

kdir=$(extract "$kdeb")
bdir=$(extract "$bdeb")

vmlinuz=$(compgen -G "$kdir/boot/vmlinuz-*" | head -1 || true)
if [ -z "$vmlinuz" ]; then
  echo "build-guests: $kdeb holds no boot/vmlinuz-*" >&2
  exit 1
fi
cp "$vmlinuz" "$out/vmlinuz-686"
echo "${vmlinuz##*/vmlinuz-}" >"$out/vmlinuz-686.version"

# Debian's amd64 kernel (guests/vmlinuz-amd64), the version linux-image-amd64
# depends on: the loader's tests read its header (a 64-bit kernel needs long
# mode), and it is the x86-64 guest.
amd64_package() {
  apt-cache depends linux-image-amd64 2>/dev/null |
    grep -oE 'linux-image-[0-9][^ :]*-amd64$' | head -1 || true
}
apkg=$(amd64_package)
if [ -z "$apkg" ]; then
  update_lists
  apkg=$(amd64_package)
fi
adeb=""
[ -z "$apkg" ] || adeb=$(download "$apkg" "${apkg}_*_amd64.deb") || adeb=""
if [ -z "$adeb" ]; then
  echo "build-guests: cannot get linux-image-amd64's kernel" >&2
  exit 1
fi
adir=$(extract "$adeb")
avmlinuz=$(compgen -G "$adir/boot/vmlinuz-*" | head -1 || true)
[ -n "$avmlinuz" ] || {
  echo "build-guests: $adeb holds no boot/vmlinuz-*" >&2
  exit 1
}
cp "$avmlinuz" "$out/vmlinuz-amd64"
echo "${avmlinuz##*/vmlinuz-}" >"$out/vmlinuz-amd64.version"
echo "build-guests: amd64 kernel ${avmlinuz##*/vmlinuz-} in $out/vmlinuz-amd64"
abdeb=$(download busybox-static:amd64 "busybox-static_*_amd64.deb") || {
  update_lists
  abdeb=$(download busybox-static:amd64 "busybox-static_*_amd64.deb")
} || {
  echo "build-guests: cannot get busybox-static:amd64" >&2
  exit 1
}
abdir=$(extract "$abdeb")
busybox=$bdir/bin/busybox
[ -x "$busybox" ] || {
  echo "build-guests: $bdeb holds no bin/busybox" >&2
  exit 1
}

# The part of /init both images share. The applet links are made at boot by
# busybox itself, so the i386 binary never has to run on the build host.
init_common() {
  cat <<EOF
#!/bin/busybox sh
/bin/busybox mkdir -p /bin /sbin /usr/bin /usr/sbin /proc /sys /dev /tmp /root
/bin/busybox --install -s
export PATH=/sbin:/bin:/usr/sbin:/usr/bin HOME=/root TERM=vt100
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
echo $MARKER
EOF
}

# setsid gives the shell its own session, so opening /dev/ttyS0 makes the port
# its controlling terminal (job control and ^C work). When it exits, power off
# rather than let init die (which would panic the kernel).
init_shell() {
  init_common
  cat <<'EOF'
setsid sh -c 'exec sh -i </dev/ttyS0 >/dev/ttyS0 2>&1'
poweroff -f
EOF
}

init_run() {
  init_common
  cat <<'EOF'
sh /commands
poweroff -f
EOF
}

# Builds $1 (an initramfs path) with the busybox binary $2 from the /init text
# on stdin, plus optional extra files given as name=content pairs.
build_initramfs() {
  local image=$1 bb=$2 root
  shift 2
  root=$(mktemp -d "$work/root.XXXXXX")
  mkdir -p "$root/bin" "$root/dev" "$root/proc" "$root/sys"
  cp "$bb" "$root/bin/busybox"
  cat >"$root/init"
  chmod 755 "$root/init"
  local pair
  for pair in "$@"; do
    printf '%s\n' "${pair#*=}" >"$root/${pair%%=*}"
  done
  # The kernel opens /dev/console for init before devtmpfs is mounted. Debian's
  # kernel carries a built-in initramfs with that node, but add it when we can.
  if [ "$(id -u)" -eq 0 ]; then
    mknod -m 600 "$root/dev/console" c 5 1
  fi
  find "$root" -exec touch -h -d "@$EPOCH" {} +
  (cd "$root" && find . -mindepth 1 | LC_ALL=C sort |
    cpio --quiet -o -H newc -R 0:0 --reproducible | gzip -9 -n) >"$image.tmp"
  mv "$image.tmp" "$image"
  rm -rf "$root"
}

init_shell | build_initramfs "$out/initramfs-shell.cpio.gz" "$busybox"
init_run | build_initramfs "$out/initramfs-run.cpio.gz" "$busybox" "commands=$COMMANDS"
abusybox=$abdir/bin/busybox
[ -x "$abusybox" ] || {
  echo "build-guests: $abdeb holds no bin/busybox" >&2
  exit 1
}
init_shell | build_initramfs "$out/initramfs-shell-amd64.cpio.gz" "$abusybox"
init_run | build_initramfs "$out/initramfs-run-amd64.cpio.gz" "$abusybox" "commands=$COMMANDS"

echo "build-guests: built (kernel $(cat "$out/vmlinuz-686.version")):"
for f in vmlinuz-686 initramfs-shell.cpio.gz initramfs-run.cpio.gz vmlinuz-amd64 \
  initramfs-shell-amd64.cpio.gz initramfs-run-amd64.cpio.gz; do
  printf '  %-40s %9d bytes\n' "$out/$f" "$(stat -c %s "$out/$f")"
done
echo "build-guests: /commands in initramfs-run: $COMMANDS"
for f in /boot/memtest86+ia32.bin /boot/memtest86+x64.bin; do
  printf '  %-40s %9d bytes\n' "$f" "$(stat -c %s "$f")"
done
scripts/build-disk-guests.sh
