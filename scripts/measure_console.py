#!/usr/bin/env python3
"""Times the README's first guest as a user meets it: boots the Linux 686 guest
under the translator on a pseudo-terminal (an interactive console, so
--icount sleep=on) and with stdin a pipe (sleep=off), interleaved, N rounds;
prints the wall time to the shell prompt, the wall time of `sleep 2` in the
guest, and the guest's `date -u` beside the host's time. Run from the
repository root after scripts/setup.sh: scripts/measure_console.py [N]."""
import os, pty, sys, time, select, subprocess, statistics
CMD = ['target/release/x86bt','run','--engine','jit','--kernel','guests/vmlinuz-686','--initrd','guests/initramfs-shell.cpio.gz','--append','console=ttyS0','-m','256','--serial','stdio']
def session(use_pty):
    t0 = time.time()
    if use_pty:
        pid, fd = pty.fork()
        if pid == 0:
            os.execvp(CMD[0], CMD)
        rd = fd; wr = fd; proc = None
    else:
        proc = subprocess.Popen(CMD, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        rd = proc.stdout.fileno(); wr = proc.stdin.fileno()
    buf = b''
    def wait_for(pat, timeout=300, start=0):
        nonlocal buf
        end = time.time() + timeout
        while time.time() < end:
            if pat.encode() in buf[start:]:
                return time.time()
            r,_,_ = select.select([rd],[],[],0.2)
            if r:
                try: d = os.read(rd, 4096)
                except OSError: return None
                if not d: return None
                buf += d
        return None
    wait_for('X86BT-GUEST-READY')
    tp = wait_for('/ # ')
    prompt = tp - t0
    n = len(buf)
    os.write(wr, b'date -u; sleep 2; echo SL""EPT\n' if not use_pty else b'date -u; sleep 2; echo SL""EPT\r')
    ts = wait_for('SL""EPT', 20, n)
    te = wait_for('SLEPT', 60, n)
    sleep_wall = te - ts
    date_line = [l for l in buf[n:].decode(errors='replace').splitlines() if 'UTC' in l]
    os.write(wr, b'poweroff -f\n' if not use_pty else b'poweroff -f\r')
    time.sleep(1)
    if proc: proc.kill()
    else:
        try: os.kill(pid, 9)
        except: pass
    return prompt, sleep_wall, date_line[:1]
res = {True: [], False: []}
for i in range(int(sys.argv[1]) if len(sys.argv) > 1 else 3):
    for tty in (True, False):
        p, s, d = session(tty)
        res[tty].append((p, s))
        print(('tty ' if tty else 'pipe'), 'prompt %.2f s, sleep 2 took %.2f s' % (p, s), d, 'host', time.strftime('%H:%M:%S', time.gmtime()), flush=True)
for tty in (True, False):
    print(('tty ' if tty else 'pipe'), 'median prompt %.2f s, median sleep %.2f s' % (statistics.median(x[0] for x in res[tty]), statistics.median(x[1] for x in res[tty])))
