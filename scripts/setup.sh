#!/usr/bin/env bash
# Installs what x86bt's guests and tests need on a bare Debian machine, and builds
# x86bt in release mode. Safe to run again: it only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

need_pkgs=()
[ -f /usr/share/seabios/bios-256k.bin ] || need_pkgs+=(seabios)
if ! command -v cargo >/dev/null 2>&1; then
  need_pkgs+=(cargo rustc)
fi
if [ ${#need_pkgs[@]} -gt 0 ]; then
  echo "setup: installing ${need_pkgs[*]} from Debian's packages"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}"
fi

cargo build --release --locked
echo "setup: built target/release/x86bt"
