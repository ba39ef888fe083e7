#!/usr/bin/env bash
# Builds the boot-loader guests into ./guests/ (git-ignored) from what
# scripts/build-guests.sh left there (the kernels, their initramfs images, and
# the .deb files in guests/cache/ with their extracted trees in guests/work/):
#   guests/grub.iso        GRUB 2 El Torito CD (BIOS only): serial console,
#                          timeout 1 s; the default entry boots vmlinuz-686 with
#                          initramfs-run.cpio.gz, the second vmlinuz-amd64 with
#                          initramfs-run-amd64.cpio.gz (console=ttyS0 panic=-1)
#   guests/isolinux.iso    the same two kernels behind ISOLINUX (default label
#                          "686", second label "amd64", 1 s boot: prompt)
#   guests/di-i386.iso     Debian's installer for i386 (the text-mode netboot
#                          kernel and initrd.gz of the package
#                          debian-installer-12-netboot-i386) behind ISOLINUX:
#                          label "install", the installer's own "Install" entry
#                          with vga=normal nomodeset, booted after 1 s, so it
#                          comes up on the VGA text screen at
#                          "[!!] Select a language"
#   guests/disk-686.img    a 64 MiB raw disk: MBR with GRUB in the MBR gap, one
#                          bootable Linux partition at sector 2048 holding ext4
#                          with /boot (kernel, initrd, GRUB) and a busybox root
#   guests/disk-amd64.img  the same for the amd64 kernel and busybox
#
# The disk boot chain: GRUB (default entry: the kernel; second entry: the same
# with x86bt.shell=1) -> boot/initrd-<arch>.gz, which insmods the IDE (ata_piix)
# and virtio-blk drivers and ext4, waits for the partition (root=UUID=...),
# mounts it read-write and switch_roots to /sbin/init. That init prints
#   X86BT-DISK-READY
#   X86BT-DISK-COUNTER none|<n>   (the value an earlier boot left in /data/counter)
#   X86BT-DISK-WROTE <n+1>        (after writing it back and sync)
# then runs /commands when present (set X86BT_DISK_COMMANDS to put one on the
# disks; none by default) and powers off, or with x86bt.shell=1 on the kernel
# command line runs a shell on /dev/ttyS0 first. A second boot of the same image
# therefore shows whether the first one's write reached the disk.
#
# Nothing is mounted and no loop device is used: the ext4 filesystem is made from
# a directory with mkfs.ext4 -d and copied into the partition with dd, and GRUB's
# boot.img and core.img are written into the image directly (see install_grub).
#
# Every run rebuilds everything; timestamps are fixed (SOURCE_DATE_EPOCH, default
# 0), and so are the filesystem UUIDs, hash seeds and disk identifiers, so an
# unchanged input gives identical bytes. Runs as root on a bare Debian bookworm
# machine; as another user it uses sudo for the package steps.
set -euo pipefail
cd "$(dirname "$0")/.."

EPOCH=${SOURCE_DATE_EPOCH:-0}
# xorriso and mke2fs take a time of 0 as "not set" and use the current time, so
# they get one second past the epoch instead.
STAMP=$((EPOCH > 0 ? EPOCH : 1))
STAMP_ISO=$(date -u -d "@$STAMP" +%Y%m%d%H%M%S00)
export SOURCE_DATE_EPOCH=$STAMP

CMDLINE='console=ttyS0 panic=-1'
DISK_MARKER=X86BT-DISK-READY
DISK_COMMANDS=${X86BT_DISK_COMMANDS:-}
DISK_MIB=64
PART_START=2048 # sectors: the usual 1 MiB alignment leaves GRUB the gap before it
GRUB_DIR=/usr/lib/grub/i386-pc
# Modules built into the disks' core.img: enough to read the ext4 partition and
# run grub.cfg without loading anything. The rest of $GRUB_DIR is copied into
# the filesystem too (as grub-install does), for commands typed at the prompt.
GRUB_CORE_MODULES="biosdisk part_msdos ext2 normal configfile linux serial terminal echo test"
# The kernel modules each disk's initrd loads, in this order, after their own
# dependencies (from modules.dep). ext4 and jbd2 only name crc32c as a soft
# dependency (crypto-crc32c), which insmod does not follow, and mounting a
# metadata_csum filesystem fails without it: so crc32c_generic is listed.
INITRD_MODULES="ata_piix ata_generic sd_mod virtio_pci virtio_blk crc32c_generic ext4"

out=guests
cache=$out/cache
work=$out/work
script=build-disk-guests
# shellcheck source=scripts/guest-lib.sh
. scripts/guest-lib.sh
start_time=$SECONDS

# Runs a chatty tool (xorriso prints a page per image) and shows its output only
# when it fails.
quietly() {
  local log
  log=$(mktemp)
  if ! "$@" >"$log" 2>&1; then
    cat "$log" >&2
    rm -f "$log"
    return 1
  fi
  rm -f "$log"
}

# grub-pc-bin: boot.img, core.img modules and the El Torito image, without
# grub-pc's maintainer scripts (which would install GRUB on the host's disk).
# grub-common: grub-mkrescue, grub-mkimage. fdisk: sfdisk. kmod: depmod.
# xz-utils: for kernels that ship .ko.xz modules (busybox insmod cannot read them).
pkgs=(grub-pc-bin grub-common xorriso mtools isolinux syslinux-common fdisk
  e2fsprogs kmod xz-utils cpio gzip)
need_pkgs=()
for p in "${pkgs[@]}"; do
  if [ "$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null)" != installed ]; then
    need_pkgs+=("$p")
  fi
done
if [ ${#need_pkgs[@]} -gt 0 ]; then
  apt_install "${need_pkgs[@]}"
fi

for f in vmlinuz-686 vmlinuz-686.version initramfs-run.cpio.gz \
  vmlinuz-amd64 vmlinuz-amd64.version initramfs-run-amd64.cpio.gz; do
  [ -f "$out/$f" ] || {
    echo "build-disk-guests: $out/$f is missing; run scripts/build-guests.sh first" >&2
    exit 1
  }
done
kver686=$(cat "$out/vmlinuz-686.version")
kveramd64=$(cat "$out/vmlinuz-amd64.version")

# Prints the cached .deb of package $1 (glob $2), fetching it when missing
# (or when build-guests.sh's cache lost it); a failed download retries once
# after refreshing the lists.
package_deb() {
  local deb
  deb=$(download "$1" "$2") || {
    update_lists >&2
    deb=$(download "$1" "$2")
  } || {
    echo "build-disk-guests: cannot get $1" >&2
    return 1
  }
  echo "$deb"
}

# Prints the extracted package directory for package $1 (glob $2).
package_dir() {
  local deb
  deb=$(package_deb "$1" "$2") || return 1
  extract "$deb"
}

mkdir -p "$cache" "$work"
kdir686=$(package_dir "linux-image-$kver686:i386" "linux-image-${kver686}_*_i386.deb")
kdiramd64=$(package_dir "linux-image-$kveramd64" "linux-image-${kveramd64}_*_amd64.deb")
bb686=$(package_dir busybox-static:i386 "busybox-static_*_i386.deb")/bin/busybox
bbamd64=$(package_dir busybox-static:amd64 "busybox-static_*_amd64.deb")/bin/busybox

# The modules must come from the very build of the kernel the disk boots (a
# package revision with the same ABI name would still refuse to load them).
check_kernel() {
  local kdir=$1 kver=$2 vmlinuz=$3
  cmp -s "$kdir/boot/vmlinuz-$kver" "$vmlinuz" || {
    echo "build-disk-guests: $vmlinuz is not $kdir/boot/vmlinuz-$kver;" \
      "run scripts/build-guests.sh again" >&2
    exit 1
  }
  [ -d "$kdir/lib/modules/$kver/kernel" ] || {
    echo "build-disk-guests: $kdir has no lib/modules/$kver" >&2
    exit 1
  }
}
check_kernel "$kdir686" "$kver686" "$out/vmlinuz-686"
check_kernel "$kdiramd64" "$kveramd64" "$out/vmlinuz-amd64"
for bb in "$bb686" "$bbamd64"; do
  [ -x "$bb" ] || {
    echo "build-disk-guests: $bb is missing" >&2
    exit 1
  }
done

tmp=$(mktemp -d "$work/disk-guests.XXXXXX")
trap 'rm -rf "$tmp"' EXIT

# Sets every timestamp under $1 to the epoch, so the images do not depend on
# when the files were copied.
fix_times() {
  find "$1" -exec touch -h -d "@$EPOCH" {} +
}

# The console part every grub.cfg starts with: GRUB's menu on the first serial
# port, chosen after one second.
grub_cfg_header() {
  cat <<'EOF'
serial --unit=0 --speed=115200
terminal_input serial
terminal_output serial
set timeout=1
set default=0
EOF
}

# ---------------------------------------------------------------------------
# 1. guests/grub.iso
# ---------------------------------------------------------------------------
iso=$tmp/grub-iso
mkdir -p "$iso/boot/grub"
cp "$out/vmlinuz-686" "$out/initramfs-run.cpio.gz" "$out/vmlinuz-amd64" \
  "$out/initramfs-run-amd64.cpio.gz" "$iso/boot/"
{
  grub_cfg_header
  cat <<EOF

menuentry 'x86bt 686 (Linux $kver686)' {
  linux /boot/vmlinuz-686 $CMDLINE
  initrd /boot/initramfs-run.cpio.gz
}

menuentry 'x86bt amd64 (Linux $kveramd64)' {
  linux /boot/vmlinuz-amd64 $CMDLINE
  initrd /boot/initramfs-run-amd64.cpio.gz
}
EOF
} >"$iso/boot/grub/grub.cfg"
fix_times "$iso"
# -d $GRUB_DIR makes a BIOS-only image (El Torito plus the hybrid MBR), so no
# EFI partition image is built. No fonts, locales or themes: the menu is text on
# the serial port. grub-mkrescue passes the trailing options to
# `xorriso -as mkisofs`; it sets --modification-date to the current time itself,
# and the later option wins. --set_all_file_dates covers the GRUB files it
# copies into a temporary directory with the current time.
echo "build-disk-guests: building $out/grub.iso"
quietly grub-mkrescue -d "$GRUB_DIR" --fonts= --locales= --themes= \
  -o "$out/grub.iso.tmp" "$iso" \
  --modification-date="$STAMP_ISO" --set_all_file_dates "$STAMP_ISO"
mv "$out/grub.iso.tmp" "$out/grub.iso"

# ---------------------------------------------------------------------------
# 2. guests/isolinux.iso
# ---------------------------------------------------------------------------
iso=$tmp/isolinux-iso
mkdir -p "$iso/isolinux" "$iso/boot"
cp "$out/vmlinuz-686" "$out/initramfs-run.cpio.gz" "$out/vmlinuz-amd64" \
  "$out/initramfs-run-amd64.cpio.gz" "$iso/boot/"
# ISOLINUX 6 loads ldlinux.c32 from its own directory; nothing else is needed
# without a menu.
cp /usr/lib/ISOLINUX/isolinux.bin /usr/lib/syslinux/modules/bios/ldlinux.c32 "$iso/isolinux/"
# `serial` must be the first line to take effect for everything ISOLINUX prints.
# prompt 1 shows a "boot:" prompt on the serial port for the timeout (tenths of
# a second), so typing "amd64" there picks the second label.
cat >"$iso/isolinux/isolinux.cfg" <<EOF
serial 0 115200
default 686
prompt 1
timeout 10

label 686
  kernel /boot/vmlinuz-686
  append initrd=/boot/initramfs-run.cpio.gz $CMDLINE

label amd64
  kernel /boot/vmlinuz-amd64
  append initrd=/boot/initramfs-run-amd64.cpio.gz $CMDLINE
EOF
fix_times "$iso"
echo "build-disk-guests: building $out/isolinux.iso"
quietly xorriso -as mkisofs -o "$out/isolinux.iso.tmp" -r -V X86BT_ISOLINUX \
  --modification-date="$STAMP_ISO" --set_all_file_dates "$STAMP_ISO" \
  -b isolinux/isolinux.bin -c isolinux/boot.cat \
  -no-emul-boot -boot-load-size 4 -boot-info-table "$iso"
mv "$out/isolinux.iso.tmp" "$out/isolinux.iso"

# ---------------------------------------------------------------------------
# 3. guests/di-i386.iso
# ---------------------------------------------------------------------------
# The package (architecture all, about 105 MB) holds netboot trees, not a
# mini.iso: gtk/ and text/, each with debian-installer/i386/{linux,initrd.gz}
# and the PXELINUX menu. Only the text/ kernel and initrd.gz, its version.info
# and the menu entry are taken out of it, straight into the ISO's directory
# (the .deb stays in the cache; no unpacked copy is kept). The package's own
# menu (vesamenu.c32, `timeout 0`) waits for a key forever and its "Install"
# entry asks for a VESA mode (vga=788), so the ISO has a plain ISOLINUX config
# instead: that entry's command line with vga=normal nomodeset (anything else,
# such as the "--- quiet", unchanged), booted after one second. vga=normal alone
# does not keep the text screen: udev loads the bochs DRM driver for a QEMU or
# Bochs VGA adapter, fbcon takes the console and the installer draws its menus
# on the framebuffer (bterm). nomodeset stops DRM drivers from loading, and with
# the BIOS text mode there is no firmware framebuffer for simpledrm either, so
# the console stays on vgacon at 0xb8000.
DI_PKG=debian-installer-12-netboot-i386
DI_TREE=./usr/lib/debian-installer/images/12/i386/text
di_deb=$(package_deb "$DI_PKG" "${DI_PKG}_*_all.deb")
iso=$tmp/di-iso
mkdir -p "$iso/isolinux" "$iso/install"
# tar names the members it did not find and fails (pipefail), so a package
# laid out differently stops the build here. --transform drops the directories.
dpkg-deb --fsys-tarfile "$di_deb" |
  tar -x -C "$iso/install" --transform='s|.*/||' \
    "$DI_TREE/version.info" \
    "$DI_TREE/debian-installer/i386/linux" \
    "$DI_TREE/debian-installer/i386/initrd.gz" \
    "$DI_TREE/debian-installer/i386/boot-screens/txt.cfg"
# The "install" label's append line, e.g. "vga=788 initrd=... --- quiet".
di_append=$(awk '$1 == "label" { l = $2 } l == "install" && $1 == "append" {
    sub(/^[ \t]*append[ \t]+/, ""); print; exit }' "$iso/install/txt.cfg")
rm "$iso/install/txt.cfg"
case " $di_append " in
*" initrd="*) ;;
*)
  echo "build-disk-guests: $di_deb: no \"install\" entry with an initrd= in txt.cfg" >&2
  exit 1
  ;;
esac
di_append=$(printf ' %s \n' "$di_append" | sed -E \
  -e 's| initrd=[^ ]*| initrd=/install/initrd.gz|' -e 's/ vga=[^ ]*//g' \
  -e 's/ nomodeset / /g' -e 's/^ +/vga=normal nomodeset /' -e 's/ +$//')
di_build=$(sed -n 's/^Installer build: *//p' "$iso/install/version.info")
cp /usr/lib/ISOLINUX/isolinux.bin /usr/lib/syslinux/modules/bios/ldlinux.c32 "$iso/isolinux/"
# As in isolinux.iso, the boot: prompt is on the screen and the serial port;
# typing e.g. "install console=ttyS0" there adds to the command line.
cat >"$iso/isolinux/isolinux.cfg" <<EOF
serial 0 115200
default install
prompt 1
timeout 10

label install
  kernel /install/linux
  append $di_append
EOF
fix_times "$iso"
echo "build-disk-guests: building $out/di-i386.iso (installer build $di_build: $di_append)"
quietly xorriso -as mkisofs -o "$out/di-i386.iso.tmp" -r -V X86BT_DI_I386 \
  --modification-date="$STAMP_ISO" --set_all_file_dates "$STAMP_ISO" \
  -b isolinux/isolinux.bin -c isolinux/boot.cat \
  -no-emul-boot -boot-load-size 4 -boot-info-table "$iso"
mv "$out/di-i386.iso.tmp" "$out/di-i386.iso"
rm -rf "$iso"

# ---------------------------------------------------------------------------
# 4. guests/disk-686.img and guests/disk-amd64.img
# ---------------------------------------------------------------------------

# Sets REPLY to the name modprobe uses for the module path $1: no directory,
# no .ko[.xz|...] suffix, and '-' spelled '_'. (A variable rather than output:
# it runs for each of the kernel's thousands of modules.)
module_name() {
  REPLY=${1##*/}
  REPLY=${REPLY%%.ko*}
  REPLY=${REPLY//-/_}
}

# Prints the paths (relative to lib/modules/$2) of the $INITRD_MODULES of the
# kernel tree $1 and of their dependencies, one a line, each after everything it
# depends on. The package ships no modules.dep (depmod makes it when the package
# is installed), so depmod -n prints it: modules.dep comes first in its output,
# before the first "#" header of the other files.
module_load_order() {
  local kdir=$1 kver=$2 line wanted moddep
  local -A path deps seen builtin
  local order=()
  moddep=$(depmod -b "$kdir" -n "$kver" | awk '/^#/ { done = 1 } !done { print }')
  [ -n "$moddep" ] || {
    echo "build-disk-guests: depmod printed no modules.dep for $kdir" >&2
    return 1
  }
  while IFS= read -r line; do
    module_name "${line%%:*}"
    path[$REPLY]=${line%%:*}
    deps[$REPLY]=${line#*:}
  done <<<"$moddep"
  while IFS= read -r line; do
    module_name "$line"
    builtin[$REPLY]=1
  done <"$kdir/lib/modules/$kver/modules.builtin"
  # Depth first: a module's dependencies go out before it. modules.dep already
  # lists every indirect dependency, but walking each one's own line as well
  # orders them among themselves.
  visit() {
    local n=$1 d
    [ -z "${seen[$n]:-}" ] || return 0
    seen[$n]=1
    for d in ${deps[$n]}; do
      module_name "$d"
      visit "$REPLY"
    done
    order+=("${path[$n]}")
  }
  for wanted in $INITRD_MODULES; do
    if [ -n "${builtin[$wanted]:-}" ]; then
      continue # built into the kernel: nothing to load
    fi
    [ -n "${path[$wanted]:-}" ] || {
      echo "build-disk-guests: kernel $kver has no module $wanted" >&2
      return 1
    }
    visit "$wanted"
  done
  printf '%s\n' "${order[@]}"
}

# /init of a disk's initrd. $1: the module file names in load order.
initrd_init() {
  cat <<EOF
#!/bin/busybox sh
MODULES="$1"
EOF
  cat <<'EOF'
/bin/busybox mkdir -p /bin /sbin /usr/bin /usr/sbin /proc /sys /dev /newroot
/bin/busybox --install -s
export PATH=/sbin:/bin:/usr/sbin:/usr/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev

# Without a root disk there is nothing to switch to: say so (x86bt.shell=1 gets
# a shell to look around) and power off rather than let init exit, which would
# panic the kernel.
fail() {
  echo "X86BT-DISK-ERROR $*"
  cat /proc/partitions
  case " $(cat /proc/cmdline) " in
  *" x86bt.shell=1 "*) setsid sh -c 'exec sh -i </dev/ttyS0 >/dev/ttyS0 2>&1' ;;
  esac
  poweroff -f
}

# A driver without its hardware (IDE or virtio) loads and idles; a failure is
# only reported, as the root may still be reachable through the other one.
for m in $MODULES; do
  insmod "/lib/modules/$m" || echo "initrd: insmod $m failed"
done

# root= names the partition (UUID=... as GRUB passes it, LABEL=... or a
# device); without it, the first partition of a virtio or IDE disk. Disks appear
# asynchronously after the drivers load, so poll for up to 20 s.
root=
for arg in $(cat /proc/cmdline); do
  case $arg in root=*) root=${arg#root=} ;; esac
done
dev=
tries=0
while :; do
  case $root in
  UUID=* | LABEL=*) dev=$(findfs "$root" 2>/dev/null) || dev= ;;
  "") for d in /dev/vda1 /dev/sda1; do [ -b "$d" ] && dev=$d && break; done ;;
  *) dev=$root ;;
  esac
  [ -n "$dev" ] && [ -b "$dev" ] && break
  tries=$((tries + 1))
  [ $tries -lt 200 ] || fail "no root device ${root:-/dev/vda1 or /dev/sda1}"
  usleep 100000
done
echo "initrd: root $dev"
mount -t ext4 -o rw "$dev" /newroot || fail "cannot mount $dev"
[ -x /newroot/sbin/init ] || fail "$dev has no /sbin/init"
# The disk's init mounts these itself.
umount /proc /sys /dev
exec switch_root /newroot /sbin/init
EOF
}

# /sbin/init on a disk's root filesystem.
disk_init() {
  cat <<EOF
#!/bin/busybox sh
/bin/busybox --install -s
export PATH=/sbin:/bin:/usr/sbin:/usr/bin HOME=/root TERM=vt100
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
echo $DISK_MARKER
EOF
  cat <<'EOF'
# The boot counter shows whether an earlier boot's write reached the disk.
old=
[ -f /data/counter ] && old=$(cat /data/counter)
case $old in
"")
  echo "X86BT-DISK-COUNTER none"
  new=1
  ;;
*[!0-9]*)
  echo "X86BT-DISK-COUNTER $old"
  new=1
  ;;
*)
  echo "X86BT-DISK-COUNTER $old"
  new=$((old + 1))
  ;;
esac
mkdir -p /data
echo "$new" >/data/counter
sync
echo "X86BT-DISK-WROTE $new"
[ -f /commands ] && sh /commands
# setsid gives the shell its own session, so opening /dev/ttyS0 makes the port
# its controlling terminal (job control and ^C work).
case " $(cat /proc/cmdline) " in
*" x86bt.shell=1 "*) setsid sh -c 'exec sh -i </dev/ttyS0 >/dev/ttyS0 2>&1' ;;
esac
# Read-only before the power goes: the journal is checkpointed and the
# filesystem left clean, so GRUB (which ignores the journal) and the next boot
# see everything in place.
sync
mount -o remount,ro / 2>/dev/null || sync
poweroff -f
EOF
}

# Writes a reproducible gzip'd newc cpio of the directory $1 to $2.
make_cpio() {
  local dir=$1 image=$2
  fix_times "$dir"
  (cd "$dir" && find . -mindepth 1 | LC_ALL=C sort |
    cpio --quiet -o -H newc -R 0:0 --reproducible | gzip -9 -n) >"$image"
}

# Makes core.img and puts GRUB into the first MiB of the image $1, which
# already holds the partition table. grub-bios-setup cannot do it on a plain
# file here: it insists on guessing a root device from the directory holding
# core.img (the host's disk) and fails. What it would write is simple, and is
# written directly:
#  - boot.img's first 440 bytes into the MBR (the disk identifier and partition
#    table after them stay). boot.img already reads core.img from LBA 1
#    (kernel_sector, at 0x5c) from the drive the BIOS booted (boot_drive 0xff,
#    at 0x64). Like grub-bios-setup on a hard disk, the 2-byte jump at 0x66 is
#    replaced by NOPs, so a BIOS passing a floppy number in DL gets 0x80.
#  - core.img from LBA 1 on: its first sector (diskboot.img) loads the rest from
#    LBA 2 by its built-in block list, which grub-mkimage fills in for exactly
#    that place.
# The prefix (,msdos1)/boot/grub means "partition 1 of the boot drive", so the
# disk boots as any BIOS drive number.
install_grub() {
  local img=$1 core=$tmp/core.img sectors
  grub-mkimage -O i386-pc -d "$GRUB_DIR" -p '(,msdos1)/boot/grub' -o "$core" \
    $GRUB_CORE_MODULES
  sectors=$((($(stat -c %s "$core") + 511) / 512))
  [ "$sectors" -lt "$PART_START" ] || {
    echo "build-disk-guests: core.img ($sectors sectors) does not fit before the partition" >&2
    exit 1
  }
  # Check the layout this relies on, so another GRUB version fails here rather
  # than at boot.
  [ "$(od -An -tu8 -j $((0x5c)) -N 8 "$GRUB_DIR/boot.img" | tr -d ' ')" = 1 ] &&
    [ "$(od -An -tx1 -j $((0x64)) -N 1 "$GRUB_DIR/boot.img" | tr -d ' ')" = ff ] &&
    [ "$(od -An -tx1 -j $((0x66)) -N 1 "$GRUB_DIR/boot.img" | tr -d ' ')" = eb ] &&
    [ "$(od -An -tu8 -j $((512 - 12)) -N 8 "$core" | tr -d ' ')" = 2 ] || {
    echo "build-disk-guests: $GRUB_DIR/boot.img or core.img is not laid out as expected" >&2
    exit 1
  }
  dd if="$GRUB_DIR/boot.img" of="$img" bs=440 count=1 conv=notrunc status=none
  printf '\220\220' | dd of="$img" bs=1 seek=$((0x66)) conv=notrunc status=none
  dd if="$core" of="$img" bs=512 seek=1 conv=notrunc status=none
  echo "  GRUB core.img: $sectors sectors at LBA 1 (modules: $GRUB_CORE_MODULES)"
}

# Builds guests/disk-$1.img. $2: kernel version, $3: extracted kernel package,
# $4: busybox binary, $5: filesystem UUID, $6: MBR disk identifier.
build_disk() {
  local arch=$1 kver=$2 kdir=$3 bb=$4 uuid=$5 diskid=$6
  local img=$out/disk-$arch.img
  local mods=$tmp/modules-$arch initrd=$tmp/initrd-$arch root=$tmp/root-$arch
  local fs=$tmp/fs-$arch.img disk=$tmp/disk-$arch.img
  local m src name names=
  local part_sectors=$((DISK_MIB * 2048 - PART_START))
  echo "build-disk-guests: building $img (kernel $kver)"

  # The initrd: busybox, /init and the modules, decompressed (busybox insmod
  # reads neither .ko.xz nor .ko.zst).
  mkdir -p "$initrd/bin" "$initrd/dev" "$initrd/proc" "$initrd/sys" \
    "$initrd/newroot" "$initrd/lib/modules"
  cp "$bb" "$initrd/bin/busybox"
  module_load_order "$kdir" "$kver" >"$mods"
  while IFS= read -r m; do
    src=$kdir/lib/modules/$kver/$m
    name=$(basename "${m%%.ko*}").ko
    case $m in
    *.ko) cp "$src" "$initrd/lib/modules/$name" ;;
    *.ko.xz) xz -dc "$src" >"$initrd/lib/modules/$name" ;;
    *) echo "build-disk-guests: cannot decompress $m" >&2 && exit 1 ;;
    esac
    names="${names:+$names }$name"
  done <"$mods"
  echo "  initrd modules: $names"
  initrd_init "$names" >"$initrd/init"
  chmod 755 "$initrd/init"
  # The kernel opens /dev/console for init before devtmpfs is mounted.
  if [ "$(id -u)" -eq 0 ]; then
    mknod -m 600 "$initrd/dev/console" c 5 1
  fi

  # The root filesystem. mkfs.ext4 -d copies modes and owners, so the
  # directories get theirs here (mktemp -d makes its directory 0700).
  mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,boot/grub/i386-pc,data,dev,etc,proc,root,sys,tmp}
  chmod 755 "$root"
  chmod 1777 "$root/tmp"
  cp "$bb" "$root/bin/busybox"
  disk_init >"$root/sbin/init"
  chmod 755 "$root/sbin/init"
  if [ -n "$DISK_COMMANDS" ]; then
    printf '%s\n' "$DISK_COMMANDS" >"$root/commands"
  fi
  cp "$kdir/boot/vmlinuz-$kver" "$root/boot/vmlinuz-$arch"
  make_cpio "$initrd" "$root/boot/initrd-$arch.gz"
  cp "$GRUB_DIR"/*.mod "$GRUB_DIR"/*.lst "$root/boot/grub/i386-pc/"
  {
    grub_cfg_header
    cat <<EOF

menuentry 'x86bt disk $arch (Linux $kver)' {
  linux /boot/vmlinuz-$arch $CMDLINE root=UUID=$uuid
  initrd /boot/initrd-$arch.gz
}

menuentry 'x86bt disk $arch (Linux $kver), shell on ttyS0' {
  linux /boot/vmlinuz-$arch $CMDLINE root=UUID=$uuid x86bt.shell=1
  initrd /boot/initrd-$arch.gz
}
EOF
  } >"$root/boot/grub/grub.cfg"
  fix_times "$root"

  # -T default: 4 KiB blocks and 256-byte inodes (a filesystem this small would
  # otherwise get the "small" type's 1 KiB blocks). The inode tables and the
  # journal are written now rather than by the kernel on first mount, so the
  # guest's first boot does not rewrite the disk in the background.
  # metadata_csum_seed is an incompatible feature GRUB 2.06 may refuse, and
  # orphan_file is new: neither is asked for. E2FSPROGS_FAKE_TIME (libext2fs's
  # switch for a fixed clock) fixes the superblock's times.
  truncate -s $((part_sectors * 512)) "$fs"
  E2FSPROGS_FAKE_TIME=$STAMP quietly mkfs.ext4 -F -T default -L "x86bt-$arch" -U "$uuid" \
    -O ^metadata_csum_seed,^orphan_file \
    -E "hash_seed=$uuid,root_owner=0:0,lazy_itable_init=0,lazy_journal_init=0" \
    -d "$root" "$fs"
  # mke2fs -d copies each file's ctime, which touch cannot set: set them in the
  # filesystem instead (debugfs recomputes the inode checksums, and the fixed
  # clock keeps its superblock write time).
  (cd "$root" && find . -mindepth 1) | LC_ALL=C sort |
    sed -e 's|^\.||' -e "s|.*|sif \"&\" ctime @$EPOCH|" >"$tmp/ctimes-$arch"
  printf 'sif / ctime @%s\nsif /lost+found ctime @%s\n' "$EPOCH" "$EPOCH" >>"$tmp/ctimes-$arch"
  # debugfs exits 0 whatever its commands do; anything but its banner and the
  # echoed commands is an error.
  E2FSPROGS_FAKE_TIME=$STAMP debugfs -w -f "$tmp/ctimes-$arch" "$fs" >"$tmp/debugfs.log" 2>&1
  if grep -v '^debugfs' "$tmp/debugfs.log" | grep -q .; then
    cat "$tmp/debugfs.log" >&2
    exit 1
  fi

  # The disk: partition table, GRUB, then the filesystem at sector $PART_START.
  # sparse keeps the image's unwritten blocks as holes on the host.
  truncate -s "${DISK_MIB}M" "$disk"
  quietly sfdisk --no-reread --no-tell-kernel "$disk" <<EOF
label: dos
label-id: $diskid
unit: sectors

start=$PART_START, size=$part_sectors, type=83, bootable
EOF
  install_grub "$disk"
  dd if="$fs" of="$disk" bs=1M oflag=seek_bytes seek=$((PART_START * 512)) \
    conv=notrunc,sparse status=none
  mv "$disk" "$img"
}

build_disk 686 "$kver686" "$kdir686" "$bb686" \
  7838362d-6274-4000-8000-000000000686 0x78626686
build_disk amd64 "$kveramd64" "$kdiramd64" "$bbamd64" \
  7838362d-6274-4000-8000-00000000a064 0x78626064

echo "build-disk-guests: built (kernels $kver686 and $kveramd64) in $((SECONDS - start_time)) s:"
for f in grub.iso isolinux.iso di-i386.iso disk-686.img disk-amd64.img; do
  printf '  %-40s %9d bytes\n' "$out/$f" "$(stat -c %s "$out/$f")"
done
echo "build-disk-guests: /commands on the disks: ${DISK_COMMANDS:-(none)}"
