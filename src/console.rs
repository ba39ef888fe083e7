//! The interactive serial console (`--serial stdio` on a terminal): the host
//! terminal goes into raw mode, a reader thread feeds typed bytes to COM1,
//! Ctrl-A x quits and Ctrl-A s saves a snapshot, as in QEMU. The terminal is restored when the guard drops,
//! which every exit path of `x86bt run` passes through; SIGTERM, SIGHUP and
//! SIGINT stop the run so that it does (`run::watch_signals`).

use std::io::Read;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use x86bt_machine::devices::uart::SerialInput;

/// Raw mode on stdin, undone on drop.
pub struct RawTerminal {
    saved: Option<libc::termios>,
}

/// The terminal settings from before raw mode, for a thread that must restore
/// them itself (the signal watcher, when the run does not stop in time).
#[derive(Clone, Copy)]
pub struct SavedTerminal(libc::termios);

impl SavedTerminal {
    /// Puts the settings back on stdin.
    pub fn restore(&self) {
        // SAFETY: restores settings read from the same descriptor.
        unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &self.0) };
    }
}

/// Whether stdin is a terminal.
pub fn stdin_is_tty() -> bool {
    // SAFETY: isatty only inspects the descriptor number.
    unsafe { libc::isatty(libc::STDIN_FILENO) == 1 }
}

impl RawTerminal {
    /// Switches stdin to raw mode if it is a terminal.
    pub fn enter() -> Self {
        if !stdin_is_tty() {
            return Self { saved: None };
        }
        // SAFETY: termios is plain old data; tcgetattr fills it for a valid fd.
        let mut t: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: STDIN_FILENO is open and `t` is a valid termios to fill.
        if unsafe { libc::tcgetattr(libc::STDIN_FILENO, &mut t) } != 0 {
            return Self { saved: None };
        }
        let saved = t;
        // SAFETY: cfmakeraw only edits the struct it is given.
        unsafe { libc::cfmakeraw(&mut t) };
        // Keep output post-processing so the guest's "\n" still returns the carriage.
        t.c_oflag |= libc::OPOST;
        // SAFETY: `t` is a valid termios derived from the current settings.
        unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &t) };
        Self { saved: Some(saved) }
    }
}

impl RawTerminal {
    /// The settings to restore, if raw mode was entered.
    pub fn saved(&self) -> Option<SavedTerminal> {
        self.saved.map(SavedTerminal)
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        if let Some(t) = self.saved.take() {
            // SAFETY: restores the settings read from the same descriptor.
            unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &t) };
        }
    }
}

/// Starts the stdin reader: bytes go to `input`, except Ctrl-A x, which raises
/// `quit` and `stop`, Ctrl-A s, which raises `snapshot` (the run saves a
/// snapshot between two units and goes on), and Ctrl-A Ctrl-A, which sends
/// one Ctrl-A.
pub fn spawn_reader(
    input: SerialInput,
    quit: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    snapshot: Arc<AtomicBool>,
) {
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin();
        let mut buf = [0u8; 256];
        let mut escape = false;
        loop {
            let n = match stdin.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            let mut out = Vec::with_capacity(n);
            for &b in &buf[..n] {
                if escape {
                    escape = false;
                    match b {
                        b'x' | b'X' => {
                            quit.store(true, Ordering::SeqCst);
                            stop.store(true, Ordering::SeqCst);
                            return;
                        }
                        b's' | b'S' => snapshot.store(true, Ordering::SeqCst),
                        0x01 => out.push(0x01),
                        _ => {}
                    }
                } else if b == 0x01 {
                    escape = true;
                } else {
                    out.push(b);
                }
            }
            if !out.is_empty() {
                input.push(&out);
            }
        }
    });
}
