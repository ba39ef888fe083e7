#!/usr/bin/env python3
"""Host instructions per guest instruction of x86bt's translator (issue 15),
counted by valgrind instead of hardware counters.

For each C workload of `x86bt bench --native` (bench/c/) it runs
`x86bt run --engine jit` on the workload's Multiboot kernel twice, with N and
2N iterations, under

    valgrind --tool=callgrind --smc-check=all --dump-instr=yes

with X86BT_PERF_MAP=1, so that /tmp/perf-PID.map names every fragment of
translated code and the translator's stubs (enter, leave, helper and fill
calls) by host address. From callgrind's per-instruction costs it adds up the
host instructions executed inside those ranges ("code buffer") and in the
whole process ("total"; x86bt's run loop, helpers, translation, libc, all of
it, in user space), and divides the differences between the 2N and the N run
by the guest instructions of N iterations, which x86bt's `--stats` reports for
each run. Start-up, boot and translation cancel in the differences, as in the
bench's MIPS.

Why valgrind: this host has no hardware counters (`perf stat -e
instructions:u` says <not supported>). Callgrind counts each executed
instruction (Ir) exactly. --smc-check=all makes it check the bytes of every
translated block before each run, so code that x86bt writes through the
buffer's writable view (fragments, and link jumps patched later) is seen at
the executable view's addresses; without it the second version of a block is
missed (`--self-check` shows both).

Usage: scripts/host_insns.py [--arch 32|64|both] [--only NAME,...]
                             [--budget GUEST_INSNS] [--top K] [-v]
       scripts/host_insns.py --self-check
       scripts/host_insns.py --cross-check [--arch ...] [--only ...] [--budget ...]

--cross-check counts one iteration of each workload a second way, with the
CPU's trap flag (scripts/ptrace_steps.c, PTRACE_SINGLESTEP; no valgrind), and
prints it beside callgrind's figure: the per-instruction oracle checked
against the hardware.
(X86BT=path picks another x86bt binary; the default is target/release/x86bt.)
Python 3 standard library only; needs valgrind and gcc (the kernels are the
ones `x86bt bench --native` builds; when none is built yet, this runs it once).
"""
import argparse, bisect, glob, math, os, re, shutil, subprocess, sys, tempfile, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
X86BT = os.environ.get("X86BT", os.path.join(ROOT, "target", "release", "x86bt"))
WORKLOADS = ["strlen", "memcpy", "sieve", "crc32", "qsort"]
# x86bt's exit status when the kernel writes EXIT_PASS (0x10) to port 0xF4.
PASS_STATUS = (0x10 << 1) | 1
VALGRIND = ["valgrind", "--tool=callgrind", "--smc-check=all", "--dump-instr=yes"]


def cmdline(workload, iters):
    """The kernel command line, as bench_native::cmdline writes it."""
    return "workload=%s iters=%010d" % (workload, iters)


def x86bt_cmd(kernel, workload, iters):
    """The run that `x86bt bench --native` counts with perf (plus --stats)."""
    return [X86BT, "run", "--engine", "jit", "--kernel", kernel,
            "--append", cmdline(workload, iters), "-m", "64",
            "--serial", "null", "--no-reboot", "--stats"]


def guest_insns(text):
    m = re.search(r"^instructions retired: (\d+)$", text, re.M)
    if not m:
        sys.exit("no 'instructions retired' line in x86bt's output:\n" + text[-2000:])
    return int(m.group(1))


def run_native(kernel, workload, iters):
    """Guest instructions of a run outside valgrind."""
    p = subprocess.run(x86bt_cmd(kernel, workload, iters), capture_output=True, text=True)
    if p.returncode != PASS_STATUS:
        sys.exit("%s %d: x86bt exited %d, not %d\n%s"
                 % (workload, iters, p.returncode, PASS_STATUS, p.stderr[-2000:]))
    return guest_insns(p.stdout + p.stderr)


# --- the kernels -----------------------------------------------------------

def cache_root():
    if os.environ.get("XDG_CACHE_HOME"):
        return os.path.join(os.environ["XDG_CACHE_HOME"], "x86bt")
    if os.environ.get("HOME"):
        return os.path.join(os.environ["HOME"], ".cache", "x86bt")
    return os.path.join(tempfile.gettempdir(), "x86bt-cache")


def matching_build():
    """The newest native-* build directory whose sources are this tree's
    bench/c/ (x86bt embeds those sources, so its build is one of these)."""
    src = os.path.join(ROOT, "bench", "c")
    names = os.listdir(src)
    best = None
    for d in glob.glob(os.path.join(cache_root(), "native-*")):
        if ".tmp-" in d or not all(os.path.isfile(os.path.join(d, "kernel%d.bin" % b))
                                   for b in (32, 64)):
            continue
        same = all(os.path.isfile(os.path.join(d, n))
                   and open(os.path.join(d, n), "rb").read() == open(os.path.join(src, n), "rb").read()
                   for n in names)
        if same and (best is None or os.path.getmtime(d) > os.path.getmtime(best)):
            best = d
    return best


def kernels_dir():
    d = matching_build()
    if d is None:
        # The build is part of `x86bt bench --native`; one short run makes it.
        subprocess.run([X86BT, "bench", "--native", "--arch", "32", "--engines", "jit",
                        "--only", "strlen", "--quick"], check=True, stdout=subprocess.DEVNULL)
        d = matching_build()
    if d is None:
        sys.exit("no build of bench/c/ under %s" % cache_root())
    return d


# --- callgrind -------------------------------------------------------------

def parse_callgrind(path, ranges, per_addr=None):
    """Self cost (Ir) in all and inside `ranges` (sorted (start, end, kind)),
    from a callgrind file written with --dump-instr=yes.

    Format (callgrind manual, "Callgrind Format Specification"): a cost line
    is "ADDR LINE COST", each position absolute (0x.. or decimal), relative
    to the same position of the previous cost line (+N, -N) or equal to it
    (*). A "calls=COUNT TARGET" line makes the next cost line the call's
    inclusive cost, which is not the caller's own: skipped here, but its
    position still counts for the next relative one. Names are compressed as
    "(id) name" the first time and "(id)" later. Code without an ELF file
    behind it (the JIT's memfd) is object "???", at absolute addresses.
    Returns (total, [Ir per range], Ir of "???" outside the ranges); with
    per_addr (a dict), also adds up the Ir of each "???" address in it."""
    starts = [r[0] for r in ranges]
    obj_names = {}
    obj = None
    last = [0, 0]
    in_call = False
    total = 0
    unknown_outside = 0
    inside = [0] * len(ranges)
    summary = None
    with open(path) as f:
        for line in f:
            c = line[0]
            if c in "0123456789+-*":
                fields = line.split()
                pos = []
                for i, tok in enumerate(fields[:2]):
                    if tok == "*":
                        v = last[i]
                    elif tok[0] == "+":
                        v = last[i] + int(tok[1:], 0)
                    elif tok[0] == "-":
                        v = last[i] - int(tok[1:], 0)
                    else:
                        v = int(tok, 0)
                    pos.append(v)
                last = pos
                if in_call:
                    in_call = False
                    continue
                ir = int(fields[2]) if len(fields) > 2 else 0
                total += ir
                if obj == "???":
                    a = pos[0]
                    if per_addr is not None:
                        per_addr[a] = per_addr.get(a, 0) + ir
                    k = bisect.bisect_right(starts, a) - 1
                    if k >= 0 and a < ranges[k][1]:
                        inside[k] += ir
                    else:
                        unknown_outside += ir
            elif line.startswith("calls="):
                in_call = True
            elif line.startswith("ob="):
                m = re.match(r"ob=\((\d+)\)(?: (.*))?$", line.rstrip("\n"))
                if m.group(2) is not None:
                    obj_names[m.group(1)] = m.group(2)
                obj = obj_names[m.group(1)]
            elif line.startswith("cob="):
                m = re.match(r"cob=\((\d+)\)(?: (.*))?$", line.rstrip("\n"))
                if m.group(2) is not None:
                    obj_names[m.group(1)] = m.group(2)
            elif line.startswith("summary:"):
                summary = int(line.split()[1])
    if summary is None or summary != total:
        sys.exit("%s: parsed self cost %d is not the summary %s" % (path, total, summary))
    return total, inside, unknown_outside


def perf_map_ranges(path):
    """The code buffer's ranges from X86BT_PERF_MAP's file: (start, end,
    'stubs' or 'fragments', the line's text), sorted."""
    ranges = []
    with open(path) as f:
        for line in f:
            a, n, name = line.split(" ", 2)
            start = int(a, 16)
            kind = "stubs" if name.startswith("x86bt-jit stubs") else "fragments"
            ranges.append((start, start + int(n, 16), kind, name.strip()))
    ranges.sort()
    for (_, e0, _, _), (s1, _, _, _) in zip(ranges, ranges[1:]):
        if s1 < e0:
            sys.exit("%s: overlapping ranges at %x" % (path, s1))
    if not any(r[2] == "stubs" for r in ranges):
        sys.exit("%s names no stubs (an x86bt older than this script?)" % path)
    return ranges


def callgrind(cmd, expect, workdir, env=None):
    """Runs cmd under callgrind; returns (its output, out file, pid)."""
    out = os.path.join(workdir, "callgrind.out.%p")
    p = subprocess.run(VALGRIND + ["--callgrind-out-file=" + out] + cmd,
                       capture_output=True, text=True, env=env)
    m = re.search(r"^==(\d+)==", p.stderr, re.M)
    if p.returncode != expect or not m:
        sys.exit("%s: exit status %d under valgrind, not %d\n%s"
                 % (" ".join(cmd), p.returncode, expect, p.stderr[-3000:]))
    pid = m.group(1)
    return p.stdout + p.stderr, out.replace("%p", pid), pid


def measure_run(kernel, workload, iters, workdir):
    """One run under callgrind: (guest insns, host total, code buffer by kind,
    '???' outside the buffer, seconds, {range name: Ir})."""
    env = dict(os.environ, X86BT_PERF_MAP="1")
    t0 = time.time()
    text, out, pid = callgrind(x86bt_cmd(kernel, workload, iters), PASS_STATUS, workdir, env)
    secs = time.time() - t0
    map_path = "/tmp/perf-%s.map" % pid
    ranges = perf_map_ranges(map_path)
    total, per_range, outside = parse_callgrind(out, ranges)
    os.remove(map_path)
    os.remove(out)
    kinds, named = {}, {}
    for r, ir in zip(ranges, per_range):
        kinds[r[2]] = kinds.get(r[2], 0) + ir
        named["%x %s" % (r[1] - r[0], r[3])] = ir
    return guest_insns(text), total, kinds, outside, secs, named


# --- the check of the method -----------------------------------------------

SELF_CHECK_C = r"""
/* The shape of x86bt's code buffer: one memfd mapped writable and executable.
   A loop "mov ecx, K; L: dec ecx; jnz L; ret" is written through the writable
   view and run, then its K is rewritten through the writable view and it runs
   again: 2 + 2*K1 and then 2 + 2*K2 instructions at the executable view. */
#define _GNU_SOURCE
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>
int main(int argc, char **argv) {
    unsigned k1 = 100000, k2 = 300000;
    int fd = memfd_create("check", 0);
    if (fd < 0 || ftruncate(fd, 4096)) return 2;
    unsigned char *rw = mmap(0, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    unsigned char *rx = mmap(0, 4096, PROT_READ | PROT_EXEC, MAP_SHARED, fd, 0);
    if (rw == MAP_FAILED || rx == MAP_FAILED) return 2;
    unsigned char code[] = {0xB9, 0, 0, 0, 0, 0xFF, 0xC9, 0x75, 0xFC, 0xC3};
    memcpy(rw, code, sizeof code);
    memcpy(rw + 1, &k1, 4);
    ((void (*)(void))rx)();
    memcpy(rw + 1, &k2, 4);
    ((void (*)(void))rx)();
    printf("%lx %u %u\n", (unsigned long)rx, 2 + 2 * k1, 2 + 2 * k2);
    return 0;
}
"""


def self_check(workdir):
    """Compiles the program above and counts it under callgrind with
    --smc-check=all (must be exact) and with --smc-check=none (shows what
    the option is for)."""
    src = os.path.join(workdir, "check.c")
    exe = os.path.join(workdir, "check")
    with open(src, "w") as f:
        f.write(SELF_CHECK_C)
    subprocess.run(["gcc", "-O1", "-o", exe, src], check=True)
    ok = True
    for smc in ("all", "none"):
        global VALGRIND
        saved = VALGRIND
        VALGRIND = [a if not a.startswith("--smc-check=") else "--smc-check=" + smc
                    for a in VALGRIND]
        text, out, _ = callgrind([exe], 0, workdir)
        VALGRIND = saved
        rx, n1, n2 = text.split("\n")[0].split()
        base = int(rx, 16)
        total, inside, outside = parse_callgrind(out, [(base, base + 4096, "buffer", "")])
        os.remove(out)
        got = inside[0]
        want = int(n1) + int(n2)
        print("self-check, --smc-check=%-4s: %d instructions counted in the buffer, "
              "%d executed (%s); %d in the whole process"
              % (smc, got, want, "exact" if got == want else "WRONG", total))
        if smc == "all" and got != want:
            ok = False
    return ok


# --- the cross-check with the CPU's own single steps ------------------------

def by_fragment(per_addr, ranges):
    """{(perf map text, offset in it): Ir} of the addresses in `ranges`: the
    same code has other host addresses in another process."""
    starts = [r[0] for r in ranges]
    d = {}
    for a, c in per_addr.items():
        k = bisect.bisect_right(starts, a) - 1
        if k >= 0 and a < ranges[k][1]:
            key = (ranges[k][3], a - ranges[k][0])
            d[key] = d.get(key, 0) + c
    return d


# At most this many single steps (about an hour at 30 us a step).
STEP_LIMIT = 100_000_000


def cross_check(arch, workload, kernel, budget, workdir, stepper):
    """One iteration counted by ptrace_steps.c (PTRACE_SINGLESTEP) against
    callgrind's (2N - N) / N. The window runs from one entry of a fragment
    that callgrind saw entered once an iteration to its next entry, in the
    third iteration, with ASLR off so that a run outside valgrind can tell
    the stepped run where that fragment is."""
    one, two = run_native(kernel, workload, 1), run_native(kernel, workload, 2)
    n = max(2, round(budget / (two - one)))
    env = dict(os.environ, X86BT_PERF_MAP="1")
    cg = []
    for iters in (n, 2 * n):
        text, out, pid = callgrind(x86bt_cmd(kernel, workload, iters), PASS_STATUS, workdir, env)
        map_path = "/tmp/perf-%s.map" % pid
        ranges = perf_map_ranges(map_path)
        per_addr = {}
        total, _, _ = parse_callgrind(out, ranges, per_addr)
        os.remove(out)
        os.remove(map_path)
        cg.append((guest_insns(text), total, by_fragment(per_addr, ranges)))
    guest = (cg[1][0] - cg[0][0]) / n
    total_cg = (cg[1][1] - cg[0][1]) / n
    frags = {k: v - cg[0][2].get(k, 0) for k, v in cg[1][2].items()}
    buf_cg = sum(frags.values()) / n
    once = sorted(k for k, v in frags.items() if k[1] == 0 and v == n and cg[0][2].get(k))
    if not once:
        sys.exit("%s: no fragment is entered once an iteration" % workload)
    mark = once[0][0]
    norandom = ["setarch", "-R"]
    p = subprocess.Popen(norandom + x86bt_cmd(kernel, workload, n), env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    p.wait()
    map_path = "/tmp/perf-%d.map" % p.pid
    addr = [r[0] for r in perf_map_ranges(map_path) if r[3] == mark][0]
    os.remove(map_path)
    out = os.path.join(workdir, "steps.txt")
    subprocess.run(norandom + [stepper, "-b", "%x" % addr, "-s", "2", "-p", "-n", str(STEP_LIMIT),
                               out] + x86bt_cmd(kernel, workload, n), env=env, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    lines = open(out).read().split("\n")
    head = dict(l.split() for l in lines[:4])
    map_path = "/tmp/perf-%s.map" % head["pid"]
    ranges = perf_map_ranges(map_path)
    os.remove(map_path)
    if [r[0] for r in ranges if r[3] == mark] != [addr]:
        sys.exit("%s: the stepped run put the fragment elsewhere (ASLR?)" % workload)
    per_addr = {int(a, 16): int(c) for a, c in (l.split() for l in lines[4:] if l)}
    buf_st = sum(by_fragment(per_addr, ranges).values())
    steps = int(head["steps"])
    if steps >= STEP_LIMIT:
        sys.exit("%s: no second entry of the fragment in %d steps" % (workload, steps))
    print("%-4d %-8s %9.0f %11.0f %11d %7.4f %7.4f %11.0f %11d %7.4f %7.4f"
          % (arch, workload, guest, buf_cg, buf_st, buf_cg / guest, buf_st / guest,
             total_cg, steps, total_cg / guest, steps / guest))
    sys.stdout.flush()


# --- the table ---------------------------------------------------------------

def measure(arch, workload, kernel, budget, workdir, verbose, top):
    # Guest instructions of one iteration, outside valgrind: N is chosen so
    # that N iterations are about `budget` guest instructions.
    one, two = run_native(kernel, workload, 1), run_native(kernel, workload, 2)
    per_iter = two - one
    n = max(1, round(budget / per_iter))
    runs = []
    for iters in (n, 2 * n):
        g, total, inside, outside, secs, named = measure_run(kernel, workload, iters, workdir)
        native = run_native(kernel, workload, iters)
        if g != native:
            sys.exit("%s %d: %d guest instructions under valgrind, %d outside"
                     % (workload, iters, g, native))
        if verbose:
            print("  %d-bit %s N=%d: guest %d, host %d, fragments %d, stubs %d, "
                  "'???' outside the buffer %d, %.1f s"
                  % (arch, workload, iters, g, total, inside.get("fragments", 0),
                     inside.get("stubs", 0), outside, secs), file=sys.stderr)
        runs.append((g, total, inside, named))
    (g1, t1, i1, n1), (g2, t2, i2, n2) = runs
    if top:
        # The fragments the extra N iterations ran in (same code, same
        # names: sizes and guest addresses do not change between the runs).
        diff = sorted(((n2[k] - n1.get(k, 0), k) for k in n2), reverse=True)[:top]
        for ir, k in diff:
            print("  %d-bit %s: %12d host insns (%5.2f per guest insn) in %s"
                  % (arch, workload, ir, ir / (g2 - g1), k[:150]), file=sys.stderr)
    guest = g2 - g1
    if guest != n * per_iter:
        sys.exit("%s: %d guest instructions for N iterations, not N x %d"
                 % (workload, guest, per_iter))
    frag = i2.get("fragments", 0) - i1.get("fragments", 0)
    stubs = i2.get("stubs", 0) - i1.get("stubs", 0)
    return dict(arch=arch, name=workload, n=n, guest=guest, frag=frag, stubs=stubs,
                total=t2 - t1)


def print_row(r):
    buf = r["frag"] + r["stubs"]
    print("%-4d %-8s %6d %13d %13d %11d %13d %7.2f %7.2f %7.2f"
          % (r["arch"], r["name"], r["n"], r["guest"], buf, r["stubs"], r["total"],
             r["frag"] / r["guest"], buf / r["guest"], r["total"] / r["guest"]))
    sys.stdout.flush()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--arch", choices=["32", "64", "both"], default="both")
    ap.add_argument("--only", default=",".join(WORKLOADS),
                    help="workloads, comma-separated (default: the five scalar ones)")
    ap.add_argument("--budget", type=float, default=5e6,
                    help="guest instructions in N iterations (N is rounded; default 5e6)")
    ap.add_argument("--kernels", help="a native-* build directory (default: found)")
    ap.add_argument("--self-check", action="store_true",
                    help="only check the counting on a dual-mapped loop of known length")
    ap.add_argument("--cross-check", action="store_true",
                    help="instead of the table, count one iteration of each workload with "
                    "ptrace single steps (scripts/ptrace_steps.c) and compare with callgrind")
    ap.add_argument("--top", type=int, default=0,
                    help="also print the K fragments with the most host instructions (stderr)")
    ap.add_argument("-v", "--verbose", action="store_true",
                    help="also print each run's raw counts (stderr)")
    a = ap.parse_args()
    for tool in ("valgrind", "gcc"):
        if shutil.which(tool) is None:
            sys.exit("%s is not on PATH (Debian: apt-get install %s)" % (tool, tool))
    if not os.path.isfile(X86BT):
        sys.exit("%s does not exist (cargo build --release, or X86BT=path)" % X86BT)
    with tempfile.TemporaryDirectory(prefix="host-insns-") as workdir:
        if a.self_check:
            sys.exit(0 if self_check(workdir) else 1)
        kdir = a.kernels or kernels_dir()
        arches = [32, 64] if a.arch == "both" else [int(a.arch)]
        names = [w for w in a.only.split(",") if w]
        if a.cross_check:
            if shutil.which("setarch") is None:
                sys.exit("setarch is not on PATH (Debian: util-linux)")
            stepper = os.path.join(workdir, "ptrace_steps")
            subprocess.run(["gcc", "-O2", "-o", stepper,
                            os.path.join(ROOT, "scripts", "ptrace_steps.c")], check=True)
            print("one iteration: host instructions in the code buffer and in all, by "
                  "callgrind ((2N - N) / N) and by ptrace single steps (the 3rd iteration)")
            print("%-4s %-8s %9s %11s %11s %7s %7s %11s %11s %7s %7s"
                  % ("arch", "workload", "guest", "buf cg", "buf ptrace", "cg/g", "pt/g",
                     "total cg", "total pt", "cg/g", "pt/g"))
            sys.stdout.flush()
            for arch in arches:
                for w in names:
                    cross_check(arch, w, os.path.join(kdir, "kernel%d.bin" % arch),
                                a.budget, workdir, stepper)
            return
        print("host instructions per guest instruction, x86bt --engine jit, counted by "
              "callgrind (--smc-check=all): differences between runs of 2N and N "
              "iterations")
        print("buffer = translated code (fragments and the stubs); total = the whole "
              "x86bt process in user space; frag/g, buf/g, total/g per guest instruction")
        print("%-4s %-8s %6s %13s %13s %11s %13s %7s %7s %7s"
              % ("arch", "workload", "N", "guest", "host buffer", "of it stubs",
                 "host total", "frag/g", "buf/g", "total/g"))
        sys.stdout.flush()
        rows = []
        for arch in arches:
            kernel = os.path.join(kdir, "kernel%d.bin" % arch)
            for w in names:
                r = measure(arch, w, kernel, a.budget, workdir, a.verbose, a.top)
                print_row(r)
                rows.append(r)
            mine = [r for r in rows if r["arch"] == arch]
            if len(mine) > 1:
                gm = lambda f: math.exp(sum(math.log(f(r)) for r in mine) / len(mine))
                print("%-4d %-8s %6s %13s %13s %11s %13s %7.2f %7.2f %7.2f"
                      % (arch, "geomean", "", "", "", "", "",
                         gm(lambda r: r["frag"] / r["guest"]),
                         gm(lambda r: (r["frag"] + r["stubs"]) / r["guest"]),
                         gm(lambda r: r["total"] / r["guest"])))
        print("x86bt: %s; kernels: %s" % (X86BT, kdir))


if __name__ == "__main__":
    main()
