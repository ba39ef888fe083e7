/* ptrace_steps: runs a command one host instruction at a time (PTRACE_SINGLESTEP,
 * the CPU's trap flag) and counts the steps at each instruction address.
 *
 * A second, valgrind-free count for scripts/host_insns.py --cross-check: the
 * CPU itself says where every instruction was, so JIT code written through
 * another mapping needs no special care. Single-threaded commands only (x86bt
 * with --serial null makes no thread); signals are passed on to the command.
 *
 * Usage: ptrace_steps [-b ADDR -n STEPS [-s SKIP] [-p]] OUT COMMAND [ARGS...]
 * With -b, the command runs at full speed until it executes ADDR (a hardware
 * breakpoint, DR0) for the SKIP+1-th time, then STEPS instructions are
 * counted and the command is killed: a window of a long run (single steps
 * cost about 30 us on this VM). With -p the window ends earlier, when ADDR
 * comes next (one period of a loop that passes ADDR once a round). Without -b every instruction from exec to exit is counted.
 * At the command's exit (PTRACE_O_TRACEEXIT, so /tmp/perf-PID.map is
 * complete), or at the window's end, OUT gets "pid PID", "status S" (the exit status), "signals K"
 * (delivered to the command), "steps N", then
 * one "ADDR COUNT" line (hex address) per distinct instruction address.
 * Built by host_insns.py: gcc -O2 -o ptrace_steps ptrace_steps.c
 */
#include <errno.h>
#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/ptrace.h>
#include <sys/user.h>
#include <sys/wait.h>
#include <unistd.h>

/* Open addressing, keys are instruction addresses (never 0 in user space). */
static uint64_t *keys, *counts;
static size_t cap = 1 << 20, used;

static void grow(void);

static void add(uint64_t rip) {
    size_t i = (size_t)((rip * 0x9E3779B97F4A7C15ull) >> 20) & (cap - 1);
    while (keys[i] && keys[i] != rip)
        i = (i + 1) & (cap - 1);
    if (!keys[i]) {
        keys[i] = rip;
        if (++used * 2 > cap) {
            counts[i]++;
            grow();
            return;
        }
    }
    counts[i]++;
}

static void grow(void) {
    uint64_t *ok = keys, *oc = counts;
    size_t ocap = cap;
    cap *= 2;
    keys = calloc(cap, 8);
    counts = calloc(cap, 8);
    if (!keys || !counts) {
        perror("calloc");
        exit(2);
    }
    used = 0;
    for (size_t j = 0; j < ocap; j++)
        if (ok[j]) {
            size_t i = (size_t)((ok[j] * 0x9E3779B97F4A7C15ull) >> 20) & (cap - 1);
            while (keys[i])
                i = (i + 1) & (cap - 1);
            keys[i] = ok[j];
            counts[i] = oc[j];
            used++;
        }
    free(ok);
    free(oc);
}

int main(int argc, char **argv) {
    uint64_t bp = 0, window = 0, skip = 0;
    int opt, period = 0;
    while ((opt = getopt(argc, argv, "+b:n:s:p")) != -1) {
        if (opt == 'b')
            bp = strtoull(optarg, 0, 16);
        else if (opt == 'n')
            window = strtoull(optarg, 0, 10);
        else if (opt == 's')
            skip = strtoull(optarg, 0, 10);
        else if (opt == 'p')
            period = 1;
        else
            return 2;
    }
    argc -= optind - 1;
    argv += optind - 1;
    if (argc < 3 || !bp != !window) {
        fprintf(stderr, "usage: ptrace_steps [-b HEXADDR -n STEPS [-s SKIP] [-p]] OUT COMMAND [ARGS...]\n");
        return 2;
    }
    keys = calloc(cap, 8);
    counts = calloc(cap, 8);
    pid_t pid = fork();
    if (pid == 0) {
        ptrace(PTRACE_TRACEME, 0, 0, 0);
        execvp(argv[2], argv + 2);
        perror("execvp");
        _exit(127);
    }
    int st;
    /* The stop at exec: from here on every instruction is the command's. */
    if (waitpid(pid, &st, 0) < 0 || !WIFSTOPPED(st)) {
        fprintf(stderr, "ptrace_steps: the command did not start\n");
        return 2;
    }
    ptrace(PTRACE_SETOPTIONS, pid, 0, PTRACE_O_TRACEEXIT | PTRACE_O_EXITKILL);
    if (bp) {
        /* DR0 = ADDR, DR7 = L0 with R/W0 = 00 (instruction fetch), LEN0 = 00
           (SDM vol. 3B, 17.2.4); the fault comes before ADDR executes. */
        size_t dr = offsetof(struct user, u_debugreg);
        if (ptrace(PTRACE_POKEUSER, pid, dr, bp) < 0 ||
            ptrace(PTRACE_POKEUSER, pid, dr + 7 * 8, 1) < 0) {
            perror("setting DR0/DR7");
            return 2;
        }
        int sig = 0;
        for (;;) {
            ptrace(PTRACE_CONT, pid, 0, sig);
            if (waitpid(pid, &st, 0) < 0 || !WIFSTOPPED(st) ||
                st >> 8 == (SIGTRAP | (PTRACE_EVENT_EXIT << 8))) {
                fprintf(stderr, "ptrace_steps: the command never reached %llx\n",
                        (unsigned long long)bp);
                return 2;
            }
            sig = WSTOPSIG(st) == SIGTRAP ? 0 : WSTOPSIG(st);
            if (sig)
                continue;
            if (!skip--)
                break;
            /* Past the breakpoint (a fault: ADDR has not run yet) with DR7
               off for one step, then on again. */
            ptrace(PTRACE_POKEUSER, pid, dr + 7 * 8, 0);
            ptrace(PTRACE_SINGLESTEP, pid, 0, 0);
            if (waitpid(pid, &st, 0) < 0 || !WIFSTOPPED(st) || WSTOPSIG(st) != SIGTRAP) {
                fprintf(stderr, "ptrace_steps: stepping past %llx failed\n",
                        (unsigned long long)bp);
                return 2;
            }
            ptrace(PTRACE_POKEUSER, pid, dr + 7 * 8, 1);
        }
        ptrace(PTRACE_POKEUSER, pid, dr + 7 * 8, 0);
    }
    uint64_t steps = 0, signals = 0;
    int sig = 0, status = -1;
    for (;;) {
        /* Where the next instruction is; the trap after the step says it ran. */
        errno = 0;
        uint64_t rip = (uint64_t)ptrace(PTRACE_PEEKUSER, pid,
                                        offsetof(struct user_regs_struct, rip), 0);
        if (errno) {
            perror("PTRACE_PEEKUSER");
            return 2;
        }
        if (period && steps && rip == bp)
            break;
        if (ptrace(PTRACE_SINGLESTEP, pid, 0, sig) < 0) {
            perror("PTRACE_SINGLESTEP");
            return 2;
        }
        sig = 0;
        if (waitpid(pid, &st, 0) < 0) {
            perror("waitpid");
            return 2;
        }
        if (WIFEXITED(st) || WIFSIGNALED(st))
            break;
        if (st >> 8 == (SIGTRAP | (PTRACE_EVENT_EXIT << 8))) {
            unsigned long code;
            ptrace(PTRACE_GETEVENTMSG, pid, 0, &code);
            status = WIFEXITED(code) ? WEXITSTATUS(code) : 128 + WTERMSIG(code);
            break;
        }
        if (WSTOPSIG(st) != SIGTRAP) {
            /* A signal for the command (the instruction at rip did not
               complete): deliver it; counted apart, as a handler's entry
               may then cost one step that ran nothing. */
            sig = WSTOPSIG(st);
            signals++;
            continue;
        }
        steps++;
        add(rip);
        if (window && steps == window)
            break;
    }
    FILE *f = fopen(argv[1], "w");
    if (!f) {
        perror(argv[1]);
        return 2;
    }
    fprintf(f, "pid %d\nstatus %d\nsignals %llu\nsteps %llu\n", (int)pid, status,
            (unsigned long long)signals, (unsigned long long)steps);
    for (size_t j = 0; j < cap; j++)
        if (keys[j])
            fprintf(f, "%llx %llu\n", (unsigned long long)keys[j],
                    (unsigned long long)counts[j]);
    fclose(f);
    if (window) {
        kill(pid, SIGKILL);
        waitpid(pid, &st, 0);
    } else if (WIFSTOPPED(st)) {
        ptrace(PTRACE_CONT, pid, 0, 0);
        waitpid(pid, &st, 0);
    }
    return 0;
}
