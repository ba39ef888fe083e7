//! The loaders on arbitrary images: the first byte picks the Linux bzImage
//! loader (the rest split into kernel and initrd), the Multiboot loader (ELF
//! or a.out kludge, with a module), or a disk image opened by format probe
//! (raw or qcow2, through a file in the temporary directory). A bad image
//! gives an error, never a panic.

#![no_main]

use libfuzzer_sys::fuzz_target;
use x86bt_machine::block::{self, ImageSpec};
use x86bt_machine::loader::{self, linux, multiboot};
use x86bt_machine::{MemoryLayout, PhysMemory};

fuzz_target!(|data: &[u8]| {
    x86bt_fuzz::keep_last(data);
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let split = usize::from(sel >> 2) * rest.len() / 64;
    let (image, extra) = rest.split_at(split.min(rest.len()));
    match sel & 3 {
        0 => {
            let mut mem = PhysMemory::new(16 << 20, MemoryLayout::Pc).expect("16 MiB");
            let _ = linux::is_bzimage(rest);
            let _ = loader::cpu_requirements(rest);
            let _ = linux::load(&mut mem, rest, Some(extra), "console=ttyS0");
            let _ = linux::load(&mut mem, image, None, "");
        }
        1 => {
            let mut mem = PhysMemory::new(16 << 20, MemoryLayout::Pc).expect("16 MiB");
            let _ = multiboot::is_multiboot(rest);
            let _ = multiboot::load(&mut mem, rest, "x", &[("m a".into(), extra.to_vec())]);
            let _ = multiboot::load(&mut mem, image, "", &[]);
        }
        _ => {
            let path = std::env::temp_dir().join(format!("x86bt-fuzz-{}.img", std::process::id()));
            if std::fs::write(&path, rest).is_err() {
                return;
            }
            let spec = ImageSpec {
                path: path.clone(),
                format: None,
                read_only: sel & 4 != 0,
                snapshot: sel & 8 != 0,
            };
            if let Ok(mut disk) = block::open(&spec) {
                let mut buf = vec![0u8; 4096];
                let len = disk.size();
                for off in [0, len / 2, len.saturating_sub(4096)] {
                    let _ = disk.read_at(off, &mut buf);
                }
                let _ = disk.write_at(0, &buf[..512]);
                let _ = disk.flush();
            }
            let _ = std::fs::remove_file(&path);
        }
    }
});
