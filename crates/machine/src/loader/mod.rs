//! Image loaders: they place a kernel image (and what it needs to boot) into guest
//! RAM and say where the CPU should start. They only write memory; setting up the CPU
//! state the boot protocol asks for is the caller's job.
//!
//! Every loader treats the image as untrusted: each offset and size read from it is
//! bounds-checked, and a bad image is a [`LoaderError`], never a panic.

pub mod linux;
pub mod multiboot;

use thiserror::Error;

/// A CPU feature a kernel image can need.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CpuFeature {
    /// Long mode (Intel 64 / AMD64): CPUID 8000_0001h EDX bit 29 (LM).
    LongMode,
}

impl CpuFeature {
    /// Whether the CPU whose CPUID is `cpuid(leaf, subleaf) -> [EAX, EBX, ECX,
    /// EDX]` has the feature. An extended leaf counts only when CPUID 8000_0000h
    /// reports it (Intel SDM Vol. 2A, CPUID: "Extended Function CPUID
    /// Information").
    pub fn present(self, cpuid: impl Fn(u32, u32) -> [u32; 4]) -> bool {
        match self {
            CpuFeature::LongMode => {
                cpuid(0x8000_0000, 0)[0] >= 0x8000_0001 && cpuid(0x8000_0001, 0)[3] & (1 << 29) != 0
            }
        }
    }

    /// What the feature is called, and the CPUID bit that reports it.
    pub fn describe(self) -> &'static str {
        match self {
            CpuFeature::LongMode => "long mode (CPUID 8000_0001h EDX.LM)",
        }
    }
}

/// A CPU feature an image needs, and the header field that says so.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CpuRequirement {
    /// The feature.
    pub feature: CpuFeature,
    /// What the image is, with the evidence: "a 64-bit kernel (bzImage
    /// xloadflags XLF_KERNEL_64)".
    pub kind: &'static str,
}

/// The CPU features a kernel image's headers say it needs: a Linux bzImage's
/// ([`linux::cpu_requirements`]) or a Multiboot kernel's
/// ([`multiboot::cpu_requirements`]); none for anything else.
pub fn cpu_requirements(image: &[u8]) -> Vec<CpuRequirement> {
    if linux::is_bzimage(image) {
        linux::cpu_requirements(image)
    } else if multiboot::is_multiboot(image) {
        multiboot::cpu_requirements(image)
    } else {
        Vec::new()
    }
}

/// The requirements of `image` that the CPU answering `cpuid` does not meet.
pub fn missing_cpu_features(
    image: &[u8],
    cpuid: impl Fn(u32, u32) -> [u32; 4] + Copy,
) -> Vec<CpuRequirement> {
    cpu_requirements(image)
        .into_iter()
        .filter(|r| !r.feature.present(cpuid))
        .collect()
}

/// One line telling that `file` needs what this CPU lacks, without a prefix:
/// "FILE is a 64-bit kernel (bzImage xloadflags XLF_KERNEL_64) and this CPU has
/// no long mode (CPUID 8000_0001h EDX.LM); it will stop early". `None` when
/// nothing is missing.
pub fn missing_features_line(file: &str, missing: &[CpuRequirement]) -> Option<String> {
    let first = missing.first()?;
    let lacks: Vec<&str> = missing.iter().map(|r| r.feature.describe()).collect();
    Some(format!(
        "{file} is {} and this CPU has no {}; it will stop early",
        first.kind,
        lacks.join(", no ")
    ))
}

/// What can go wrong while loading a kernel image.
#[derive(Debug, Error)]
pub enum LoaderError {
    /// No valid Multiboot header (magic, flags, checksum) 4-byte aligned in the
    /// first 8192 bytes of the image.
    #[error("not a Multiboot kernel: no valid header in the first 8192 bytes")]
    NotMultiboot,
    /// The header asks for a feature in bits 0-15 this loader does not know; the
    /// Multiboot spec (§3.1.2) says the loader must then fail.
    #[error("Multiboot header requires unsupported features (flags {flags:#010x})")]
    UnsupportedFlags {
        /// The header's flags word.
        flags: u32,
    },
    /// The image ends before a structure or segment it describes.
    #[error("image truncated: {what} needs bytes up to offset {need}, file has {have}")]
    Truncated {
        /// What was being read.
        what: &'static str,
        /// The file offset one past the last byte needed.
        need: u64,
        /// The file's size.
        have: usize,
    },
    /// Without the a.out kludge the image must be a little-endian ELF32 i386 or
    /// ELF64 x86-64 executable, and this one is not (or is malformed).
    #[error("bad ELF image: {reason}")]
    BadElf {
        /// What is wrong.
        reason: &'static str,
    },
    /// The Multiboot header's address fields (flag bit 16) are inconsistent.
    #[error("bad Multiboot address fields: {reason}")]
    BadAddressFields {
        /// What is wrong.
        reason: &'static str,
    },
    /// A size in the image is larger than guest RAM, or reaches past 4 GiB.
    #[error("{what} of {len:#x} bytes at {addr:#x} is larger than guest memory allows")]
    TooLarge {
        /// What was being placed.
        what: &'static str,
        /// Its guest-physical start.
        addr: u64,
        /// Its size in bytes.
        len: u64,
    },
    /// Part of a segment, module or the boot information would miss guest RAM.
    #[error("{what} of {len:#x} bytes at {addr:#x} does not fit in guest RAM")]
    OutOfRam {
        /// What was being placed.
        what: &'static str,
        /// Its guest-physical start.
        addr: u64,
        /// Its size in bytes.
        len: u64,
    },
    /// No bzImage signature: the boot sector lacks 0xAA55 at offset 510 or the
    /// setup header lacks "HdrS" at offset 0x202 (Linux boot protocol, "The real-mode
    /// kernel header").
    #[error("not a Linux bzImage: no boot sector signature or no \"HdrS\" setup header")]
    NotBzImage,
    /// The kernel's boot protocol predates 2.06, the oldest this loader speaks
    /// (it needs the cmdline_size field that 2.06 added).
    #[error("Linux boot protocol {major}.{minor:02} is too old: 2.06 or later is required")]
    ProtocolTooOld {
        /// The protocol's major version.
        major: u8,
        /// The protocol's minor version.
        minor: u8,
    },
    /// The Linux setup header is inconsistent.
    #[error("bad Linux setup header: {reason}")]
    BadSetupHeader {
        /// What is wrong.
        reason: &'static str,
    },
    /// The kernel command line is longer than the kernel's cmdline_size (or the
    /// loader's command line area) allows.
    #[error("kernel command line of {len} bytes is too long: at most {max} allowed")]
    CmdlineTooLong {
        /// The command line's length in bytes, without the terminating NUL.
        len: usize,
        /// The longest accepted.
        max: usize,
    },
    /// The initrd does not fit between the end of the kernel's area and the
    /// highest address the kernel accepts an initrd at (and the top of RAM).
    #[error("initrd of {len:#x} bytes does not fit in guest RAM between {low:#x} and {high:#x}")]
    InitrdTooLarge {
        /// The initrd's size in bytes.
        len: u64,
        /// The lowest address it may use (the end of the kernel's area).
        low: u64,
        /// One past the highest address it may use.
        high: u64,
    },
    /// The boot information (with the command line, module strings and memory
    /// map) fits in no free RAM next to what the kernel and modules load.
    #[error("boot information needs {need} bytes, only {room} free where it may go")]
    InfoTooLarge {
        /// Bytes needed.
        need: u64,
        /// Bytes available.
        room: u64,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A CPUID whose extended leaves go up to `max_ext` and whose 8000_0001h
    /// EDX is `edx`.
    fn cpuid(max_ext: u32, edx: u32) -> impl Fn(u32, u32) -> [u32; 4] + Copy {
        move |leaf, _| match leaf {
            0x8000_0000 => [max_ext, 0, 0, 0],
            0x8000_0001 => [0, 0, 0, edx],
            _ => [0; 4],
        }
    }

    #[test]
    fn long_mode_is_present_only_with_lm_in_a_reported_leaf() {
        let lm = 1 << 29;
        assert!(CpuFeature::LongMode.present(cpuid(0x8000_0008, lm)));
        assert!(!CpuFeature::LongMode.present(cpuid(0x8000_0008, 1 << 20)));
        // Leaf 8000_0001h beyond the reported maximum does not count.
        assert!(!CpuFeature::LongMode.present(cpuid(0x8000_0000, lm)));
    }

    #[test]
    fn missing_features_line_names_file_evidence_and_cpuid_bit() {
        let missing = [CpuRequirement {
            feature: CpuFeature::LongMode,
            kind: "a 64-bit kernel (bzImage xloadflags XLF_KERNEL_64)",
        }];

        let line = missing_features_line("k.bin", &missing);

        assert_eq!(
            line.as_deref(),
            Some(
                "k.bin is a 64-bit kernel (bzImage xloadflags XLF_KERNEL_64) and this CPU has \
                 no long mode (CPUID 8000_0001h EDX.LM); it will stop early"
            )
        );
        assert_eq!(missing_features_line("k.bin", &[]), None);
    }

    #[test]
    fn missing_cpu_features_is_empty_when_the_cpu_has_them() {
        let mut img = vec![0u8; 64];
        img[..4].copy_from_slice(b"\x7fELF");
        img[4] = 2;
        // A Multiboot header (magic, flags 0, checksum) so the image is one.
        img[16..20].copy_from_slice(&0x1BAD_B002u32.to_le_bytes());
        img[24..28].copy_from_slice(&0u32.wrapping_sub(0x1BAD_B002).to_le_bytes());

        assert_eq!(
            missing_cpu_features(&img, cpuid(0x8000_0001, 1 << 29)),
            vec![]
        );
        assert_eq!(missing_cpu_features(&img, cpuid(0x8000_0001, 0)).len(), 1);
        assert!(missing_cpu_features(&[0u8; 64], cpuid(0x8000_0001, 0)).is_empty());
    }
}
