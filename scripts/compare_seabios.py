#!/usr/bin/env python3
"""Side by side, in one run: guest instructions and wall time until SeaBIOS prints
"No bootable device", under x86bt and under qemu-system-i386 -accel tcg.

x86bt reports its retired instructions itself (--until ... --stats). QEMU's
wall time is measured by polling its debug-console log for the text. QEMU's own
instruction count needs a TCG plugin, which Debian does not ship; with --count,
it is taken instead from an exec trace with one instruction per translation
block (slow, and the traced run's time is not reported as QEMU's speed).

Usage: scripts/compare_seabios.py [--bios FILE] [--runs N] [--count]
"""
import argparse, os, re, statistics, subprocess, sys, tempfile, time

TEXT = "No bootable device"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def x86bt(bios):
    exe = os.path.join(ROOT, "target", "release", "x86bt")
    t0 = time.perf_counter()
    p = subprocess.run([exe, "run", "--bios", bios, "--debugcon", "null", "-m", "128",
                        "--until", TEXT, "--stats"], capture_output=True, text=True)
    wall = time.perf_counter() - t0
    m = re.search(r"instructions retired: (\d+)", p.stderr)
    if p.returncode != 0 or not m:
        sys.exit(f"x86bt did not reach {TEXT!r}: {p.stderr}")
    return int(m.group(1)), wall


def qemu(bios, extra=(), timeout=120.0):
    with tempfile.TemporaryDirectory() as d:
        log = os.path.join(d, "debugcon.log")
        open(log, "w").close()
        cmd = ["qemu-system-i386", "-accel", "tcg", "-nodefaults", "-display", "none",
               "-no-reboot", "-m", "128", "-bios", bios,
               "-chardev", f"file,id=d,path={log}", "-device", "isa-debugcon,iobase=0x402,chardev=d",
               *extra]
        t0 = time.perf_counter()
        p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            while time.perf_counter() - t0 < timeout:
                with open(log, "rb") as f:
                    if TEXT.encode() in f.read():
                        return time.perf_counter() - t0, d
                if p.poll() is not None:
                    sys.exit("qemu exited early")
                time.sleep(0.0005)
            sys.exit("qemu did not reach the text in time")
        finally:
            p.kill()
            p.wait()


def qemu_count(bios):
    with tempfile.TemporaryDirectory() as d:
        trace = os.path.join(d, "exec.log")
        log = os.path.join(d, "debugcon.log")
        open(log, "w").close()
        cmd = ["qemu-system-i386", "-accel", "tcg,one-insn-per-tb=on", "-nodefaults", "-display", "none",
               "-no-reboot", "-m", "128", "-bios", bios, "-d", "exec,nochain", "-D", trace,
               "-chardev", f"file,id=d,path={log}", "-device", "isa-debugcon,iobase=0x402,chardev=d"]
        p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            while True:
                with open(log, "rb") as f:
                    if TEXT.encode() in f.read():
                        break
                time.sleep(0.01)
        finally:
            p.kill()
            p.wait()
        with open(trace, "rb") as f:
            return sum(1 for line in f if line.startswith(b"Trace "))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bios", default="/usr/share/seabios/bios-256k.bin")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--count", action="store_true", help="also count QEMU's instructions (slow)")
    a = ap.parse_args()
    xs, qs = [], []
    insns = None
    for _ in range(a.runs):
        insns, w = x86bt(a.bios)
        xs.append(w)
        qs.append(qemu(a.bios)[0])
    xm, qm = statistics.median(xs), statistics.median(qs)
    print(f"until {TEXT!r}, median of {a.runs} runs each, same bios image {a.bios}:")
    print(f"  x86bt (interp):           {xm * 1000:8.1f} ms wall, {insns} guest instructions")
    print(f"  qemu-system-i386 -accel tcg: {qm * 1000:8.1f} ms wall")
    if a.count:
        print(f"  qemu guest instructions (one-insn-per-tb exec trace): {qemu_count(a.bios)}")
    print(f"  ratio qemu/x86bt wall time: {qm / xm:.2f}x")


if __name__ == "__main__":
    main()
