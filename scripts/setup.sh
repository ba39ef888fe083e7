#!/usr/bin/env bash
# Installs what x86bt's guests and tests need on a bare Debian machine, builds
# x86bt in release mode, and builds the Linux guest (scripts/build-guests.sh).
# Safe to run again: it only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

need_pkgs=()
[ -f /usr/share/seabios/bios-256k.bin ] || need_pkgs+=(seabios)
# qemu-img and qemu-io: the qcow2 tests check x86bt's images with QEMU's tools.
command -v qemu-img >/dev/null 2>&1 || need_pkgs+=(qemu-utils)
# gcc (with binutils) builds the C workloads of `x86bt bench --native` and
# tests/native_kernels.rs; no gcc-multilib is needed (nothing links libc).
command -v gcc >/dev/null 2>&1 && command -v objcopy >/dev/null 2>&1 || need_pkgs+=(gcc binutils)
# gdb: tests/gdb.rs drives x86bt's GDB server with Debian's gdb in batch mode.
command -v gdb >/dev/null 2>&1 || need_pkgs+=(gdb)
if ! command -v cargo >/dev/null 2>&1; then
  need_pkgs+=(cargo rustc)
fi
if [ ${#need_pkgs[@]} -gt 0 ]; then
  echo "setup: installing ${need_pkgs[*]} from Debian's packages"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}"
fi

# QEMU 10 from bookworm-backports (the image's qemu-utils comes from there, so
# bookworm's own qemu-system-x86 cannot be installed beside it). The archive URI
# is taken from the existing Debian source entry, so no host is written here.
if ! command -v qemu-system-i386 >/dev/null 2>&1 && [ "${X86BT_NO_QEMU:-}" != 1 ]; then
  list=/etc/apt/sources.list.d/x86bt-backports.sources
  if [ ! -f "$list" ] && ! grep -rqs bookworm-backports /etc/apt/sources.list /etc/apt/sources.list.d/; then
    uri=$(sed -n 's/^URIs: *//p' /etc/apt/sources.list.d/debian.sources | head -1)
    printf 'Types: deb\nURIs: %s\nSuites: bookworm-backports\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' "$uri" \
      | as_root tee "$list" >/dev/null
  fi
  echo "setup: installing qemu-system-x86 from bookworm-backports"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    -t bookworm-backports qemu-system-x86
fi

cargo build --release --locked
echo "setup: built target/release/x86bt"

# The Linux guest (Debian's linux-image-686 and busybox-static, into guests/).
if [ "${X86BT_NO_GUESTS:-}" != 1 ]; then
  scripts/build-guests.sh
fi
