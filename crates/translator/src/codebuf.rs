//! The executable code buffer: one shared-memory object mapped twice, writable
//! at one address and executable at another.
//!
//! Committing a fragment is then a plain copy into the writable view, with no
//! `mprotect` per translation (which cost more than the translation itself), and
//! no address is ever writable and executable at once. The buffer never moves,
//! so the executable base address stays valid for the buffer's life. Code is
//! appended, and only the 32-bit displacements of link jumps are ever written
//! again ([`CodeBuffer::patch_rel32`]); a full flush maps a fresh buffer rather
//! than overwriting code that ran. The one thread that runs translated code is
//! the one that writes it, and x86 notices a write to an instruction it has
//! fetched by its physical address (SDM vol. 3A §11.6), whichever view the
//! write went through, so no stale instruction bytes can be fetched.

use memmap2::{Mmap, MmapMut, MmapOptions};
use std::fs::File;
use std::io;

/// Fragments start on this alignment (a cache line): a loop then sits in the
/// same fetch blocks whatever was translated before it (with 16 the copy and
/// sieve loops ran 20-25% slower or faster from one build to the next).
const ALIGN: usize = 64;

/// Bytes at the buffer's start kept for data that translated code reads
/// RIP-relative and its out-of-line paths write through the writable view
/// (the predicted fast-TLB entries, `emit::Emitter::probe`). Whole pages, so
/// that no code shares a page (or a cache line) with data that is written.
pub const DATA_BYTES: usize = 64 << 10;

/// A writable view and an executable view of the same memory.
pub struct CodeBuffer {
    rw: MmapMut,
    rx: Mmap,
    used: usize,
}

impl CodeBuffer {
    /// Maps `capacity` bytes twice.
    pub fn new(capacity: usize) -> io::Result<Self> {
        let file = shared_file(capacity as u64)?;
        // SAFETY: the file is private to this process (an anonymous memfd, or an
        // unlinked temporary file), sized to `capacity` above and never truncated,
        // so both mappings stay backed for their whole life.
        let rw = unsafe { MmapOptions::new().len(capacity).map_mut(&file)? };
        // SAFETY: as above; this view is read and executed only.
        let rx = unsafe { MmapOptions::new().len(capacity).map_exec(&file)? };
        let used = DATA_BYTES.min(capacity);
        Ok(Self { rw, rx, used })
    }

    /// The executable view's and the writable view's addresses of the data
    /// area ([`DATA_BYTES`] at offset 0), if the buffer has one.
    pub fn data(&self) -> Option<(u64, u64)> {
        (self.rw.len() > DATA_BYTES).then(|| (self.rx.as_ptr() as u64, self.rw.as_ptr() as u64))
    }

    /// The executable address of offset 0.
    pub fn exec_base(&self) -> *const u8 {
        self.rx.as_ptr()
    }

    /// Bytes in use.
    pub fn used(&self) -> usize {
        self.used
    }

    /// Bytes still free.
    pub fn free(&self) -> usize {
        self.rw.len() - self.used
    }

    /// The executable address where the next fragment will start.
    pub fn next_exec_addr(&self) -> usize {
        self.rx.as_ptr() as usize + self.used
    }

    /// The displacement of the 5-byte `JMP rel32` that ends at offset `end`
    /// (so its displacement is the 4 bytes before `end`).
    pub fn rel32_at(&self, end: usize) -> i32 {
        let mut b = [0u8; 4];
        b.copy_from_slice(&self.rw[end - 4..end]);
        i32::from_le_bytes(b)
    }

    /// Points the 5-byte `JMP rel32` that ends at offset `end` at offset
    /// `target`: a link jump, linked or reset to its stub (`end` itself).
    /// Returns `false`, writing nothing, where `end` is not in code already
    /// written or the distance does not fit.
    pub fn patch_rel32(&mut self, end: usize, target: usize) -> bool {
        let Ok(rel) = i32::try_from(target as i64 - end as i64) else {
            return false;
        };
        if end < DATA_BYTES + 5 || end > self.used || target >= self.used {
            return false;
        }
        self.rw[end - 4..end].copy_from_slice(&rel.to_le_bytes());
        true
    }

    /// Copies `code` in; returns its offset, or `None` when it does not fit.
    pub fn append(&mut self, code: &[u8]) -> Option<usize> {
        let at = self.used;
        let end = at.checked_add(code.len())?;
        if end > self.rw.len() {
            return None;
        }
        self.rw[at..end].copy_from_slice(code);
        self.used = end.next_multiple_of(ALIGN).min(self.rw.len());
        Some(at)
    }
}

/// A shared-memory object of `len` bytes: an anonymous memfd.
#[cfg(target_os = "linux")]
fn shared_file(len: u64) -> io::Result<File> {
    use std::os::fd::FromRawFd;
    // SAFETY: a NUL-terminated name and valid flags; the call has no other
    // preconditions.
    let fd = unsafe { libc::memfd_create(c"x86bt-jit".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor that nothing else owns.
    let file = unsafe { File::from_raw_fd(fd) };
    file.set_len(len)?;
    Ok(file)
}

/// A shared-memory object of `len` bytes: a temporary file, unlinked at once.
#[cfg(not(target_os = "linux"))]
fn shared_file(len: u64) -> io::Result<File> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let path = std::env::temp_dir().join(format!(
        "x86bt-jit-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)?;
    let _ = std::fs::remove_file(&path);
    file.set_len(len)?;
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codebuf_append_is_visible_in_the_executable_view() {
        let mut b = CodeBuffer::new(1 << 17).expect("map");
        let at = b.append(&[0xC3, 0x90]).expect("fits");
        assert_eq!(at, DATA_BYTES, "code after the data area");
        assert_eq!(b.used(), DATA_BYTES + ALIGN);
        // SAFETY: the executable view maps the same bytes and is readable.
        let seen = unsafe { std::slice::from_raw_parts(b.exec_base().add(at), 2) };
        assert_eq!(seen, &[0xC3, 0x90]);
        assert!(b.append(&vec![0; 1 << 16]).is_none(), "too big");
    }
}
