#!/usr/bin/env python3
"""Side by side, in one run: the Linux 686 guest (or, with --arch amd64, the
amd64 guest) booted by x86bt and by qemu-system-i386 (qemu-system-x86_64)
-accel tcg, on the same kernel, initramfs and command line.

For each emulator it reports the wall time until the guest prints the marker
(X86BT-GUEST-READY) and until the guest powers off after running its commands,
measured from process start by reading the serial console as it is written.
x86bt also reports the guest instructions it executed to each point (its own
--stats; the count to the marker comes from a second run that stops there with
--until) and the host CPU time of the whole run, so that time the guest spends
halted can be seen to cost almost nothing.

With several engines (--engine interp,jit) the runs interleave: each round
runs every x86bt engine and QEMU once, and medians are taken per column.

Usage: scripts/compare_linux.py [--arch 686|amd64] [--engine interp[,jit]]
                                [--runs N] [-m MiB]
(X86BT=path picks another x86bt binary; the default is target/release/x86bt.)
"""
import argparse, os, re, resource, statistics, subprocess, sys, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MARKER = b"X86BT-GUEST-READY"
GUESTS = {
    "686": ("vmlinuz-686", "initramfs-run.cpio.gz", "qemu-system-i386"),
    "amd64": ("vmlinuz-amd64", "initramfs-run-amd64.cpio.gz", "qemu-system-x86_64"),
}
KERNEL = INITRD = QEMU = None
APPEND = "console=ttyS0 panic=-1"


def timed(cmd, timeout):
    """Runs cmd; returns (marker time, exit time, stdout, stderr, child CPU s)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out = b""
    marker = None
    os.set_blocking(p.stdout.fileno(), False)
    while True:
        chunk = p.stdout.read()
        if chunk:
            out += chunk
            if marker is None and MARKER in out:
                marker = time.perf_counter() - t0
        if p.poll() is not None:
            rest = p.stdout.read()
            if rest:
                out += rest
            break
        if time.perf_counter() - t0 > timeout:
            p.kill()
            sys.exit(f"{cmd[0]} did not finish in {timeout} s")
        time.sleep(0.002)
    end = time.perf_counter() - t0
    err = p.stderr.read().decode(errors="replace")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    if marker is None or b"reboot: Power down" not in out:
        sys.exit(f"{cmd[0]}: no marker or no power-off\n{err}\n{out.decode(errors='replace')[-2000:]}")
    return marker, end, out, err, cpu


def x86bt_cmd(engine, mib, extra=()):
    exe = os.environ.get("X86BT", os.path.join(ROOT, "target", "release", "x86bt"))
    return [exe, "run", "--engine", engine, "--kernel", KERNEL, "--initrd", INITRD,
            "--append", APPEND, "-m", str(mib), "--serial", "stdio", "--no-reboot",
            "--stats", *extra]


def insns(stderr):
    m = re.search(r"instructions retired: (\d+)", stderr)
    return int(m.group(1)) if m else None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--engine", default="interp")
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("-m", type=int, default=256)
    ap.add_argument("--timeout", type=float, default=1800.0)
    ap.add_argument("--arch", default="686", choices=sorted(GUESTS))
    a = ap.parse_args()
    global KERNEL, INITRD, QEMU
    k, i, QEMU = GUESTS[a.arch]
    KERNEL = os.path.join(ROOT, "guests", k)
    INITRD = os.path.join(ROOT, "guests", i)
    engines = a.engine.split(",")
    for f in (KERNEL, INITRD):
        if not os.path.exists(f):
            sys.exit(f"{f} is missing: run scripts/build-guests.sh")

    # x86bt: instructions to the marker (a run that stops there).
    p = subprocess.run(x86bt_cmd(engines[0], a.m, ["--until", MARKER.decode()]),
                       capture_output=True, text=True, timeout=a.timeout)
    to_marker = insns(p.stderr)

    cols = [f"x86bt {e}" for e in engines] + ["qemu"]
    rows = {c: [] for c in cols}
    for _ in range(a.runs):
        for e in engines:
            mk, end, _, err, cpu = timed(x86bt_cmd(e, a.m), a.timeout)
            rows[f"x86bt {e}"].append((mk, end, cpu, insns(err)))
        q = [QEMU, "-accel", "tcg", "-nodefaults", "-display", "none",
             "-no-reboot", "-m", str(a.m), "-kernel", KERNEL, "-initrd", INITRD,
             "-append", APPEND, "-serial", "stdio", "-monitor", "none"]
        mk, end, _, _, cpu = timed(q, a.timeout)
        rows["qemu"].append((mk, end, cpu, None))

    med = lambda xs: statistics.median(xs)
    print(f"Linux {a.arch} boot, {a.runs} run(s) each, interleaved, median; -m {a.m}")
    print(f"{'':12} {'to marker':>10} {'to power-off':>13} {'host CPU':>9}  guest instructions")
    for name, r in rows.items():
        mk = med([x[0] for x in r])
        end = med([x[1] for x in r])
        cpu = med([x[2] for x in r])
        if name.startswith("x86bt"):
            total = r[0][3]
            extra = f"{to_marker:,} to marker, {total:,} to power-off"
        else:
            extra = "(not counted)"
        print(f"{name:12} {mk:9.2f}s {end:12.2f}s {cpu:8.2f}s  {extra}")
    qm = med([x[0] for x in rows["qemu"]])
    qe = med([x[1] for x in rows["qemu"]])
    for e in engines:
        r = rows[f"x86bt {e}"]
        xm = med([x[0] for x in r])
        xe = med([x[1] for x in r])
        print(f"x86bt {e}/QEMU wall time: {xm / qm:.2f}x to marker, {xe / qe:.2f}x to power-off")


if __name__ == "__main__":
    main()
