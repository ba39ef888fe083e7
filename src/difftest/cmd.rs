//! The `x86bt difftest` command: builds what both emulators run, then calls the
//! lockstep differ.

use super::{find_qemu, lockstep, report, DiffSetup};
use crate::cli::DifftestArgs;
use crate::error::Error;
use std::path::PathBuf;

fn temp_file(name: &str, data: &[u8]) -> Result<PathBuf, Error> {
    let dir = std::env::temp_dir().join(format!("x86bt-difftest-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|source| Error::Create {
        path: dir.clone(),
        source,
    })?;
    let p = dir.join(name);
    std::fs::write(&p, data).map_err(|source| Error::Create {
        path: p.clone(),
        source,
    })?;
    Ok(p)
}

/// A 64 KiB ROM whose reset vector jumps to real-mode address `at`.
pub fn jump_rom(at: u64) -> Vec<u8> {
    let mut rom = vec![0xF4u8; 0x1_0000];
    let (seg, off) = ((at >> 4) as u16, (at & 0xF) as u16);
    let [ol, oh] = off.to_le_bytes();
    let [sl, sh] = seg.to_le_bytes();
    rom[0xFFF0..0xFFF5].copy_from_slice(&[0xEA, ol, oh, sl, sh]);
    rom
}

/// `x86bt difftest`.
pub fn difftest_cmd(a: &DifftestArgs) -> Result<u8, Error> {
    let qemu = find_qemu(a.qemu.as_deref(), a.random && a.mode == "long")?;
    let mut setup = DiffSetup {
        qemu,
        bios: PathBuf::new(),
        ram_mib: a.mem_mib,
        qemu_extra: Vec::new(),
        flat: None,
        kernel: None,
        max_insns: a.max_insns,
        skip: a.skip,
        history: a.history,
        inject_bug: a.inject_bug,
        continue_allowed: a.continue_allowed,
        quiet_continue: false,
        engine: a.engine,
    };
    if let Some(bios) = &a.bios {
        setup.bios = bios.clone();
    } else if let Some(kernel) = &a.kernel {
        setup.kernel = Some(kernel.clone());
        setup.qemu_extra = vec!["-kernel".into(), kernel.display().to_string()];
    } else if let Some(flat) = &a.flat {
        let at = a.at.unwrap_or(0x7C00);
        if at + 16 > 0xA_0000 {
            return Err(Error::Usage(format!(
                "--at {at:#x}: a flat binary must load below 0xA0000"
            )));
        }
        let image = crate::run::read_file(flat)?;
        setup.bios = temp_file("jump.rom", &jump_rom(at))?;
        setup.qemu_extra = vec![
            "-device".into(),
            format!("loader,file={},addr={at:#x},force-raw=on", flat.display()),
        ];
        setup.flat = Some((image, at));
    } else {
        return super::campaign::run(a, setup);
    }
    // QEMU's default qemu32 model lacks NX, so it would ignore the EFER.NXE
    // a kernel sets (x86bt reports NX; EFER is compared).
    setup.qemu_extra.extend([
        "-cpu".to_string(),
        "qemu32,+nx,+sse,+sse2,+sse3,+ssse3,+sse4.1,+sse4.2,+popcnt".to_string(),
    ]);
    let (outcome, secs) = lockstep(&setup)?;
    let mut out = std::io::stdout().lock();
    Ok(u8::from(report(&outcome, secs, &mut out)))
}
