//! Save and restore of the platform's state, for snapshots.
//!
//! Every device implements [`crate::Device::save`] and
//! [`crate::Device::restore`] (the trait has no default for either, so a new
//! device does not build until it says what its state is). A device's state
//! is one variant of [`DeviceState`]: plain serde data, everything that
//! decides what the device does next (registers, FIFOs, timers' anchors in
//! virtual time, transfers in progress). What a device is wired to (its IRQ
//! line handles, its output writer, the shared system-control signals, its
//! disk's file) is not state: it stays with the device a state is restored
//! into, which the machine was built with from the same options.
//!
//! Shared pieces are saved once, by one owner: the ISA lines and the system
//! control signals by the machine, a PCI function's configuration space by
//! its device, the PIRQ router by the PCI host, the PM block's location by
//! the ACPI PM device.
//!
//! The state of each device is written out field by field: a device's
//! `save` and `restore` destructure the device without `..`, so a field
//! added to a device that is neither saved nor named as wiring fails to
//! compile.
//!
//! The encoding is the front end's choice (postcard); nothing here depends on
//! it. A change to any saved struct changes the format: the front end's
//! format version must move with it.

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// A saved state that does not fit what it is restored into.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum StateError {
    /// The state of one kind of device offered to another (the snapshot was
    /// made for a machine with other devices, or in another order).
    #[error("device {device}: the snapshot holds the state of a {found}")]
    WrongKind {
        /// The device restored into.
        device: &'static str,
        /// The kind of state found.
        found: &'static str,
    },
    /// The snapshot was made for a machine of another shape (RAM size, CPU
    /// count, devices, disks, firmware); the text says what differs.
    #[error("{0}")]
    Mismatch(String),
    /// Saving needed the host (a disk image's contents) and the host failed.
    #[error("{0}")]
    Io(String),
}

/// Refuses `found` for `device` (a helper for `restore`).
pub fn wrong_kind(device: &'static str, found: &DeviceState) -> StateError {
    StateError::WrongKind {
        device,
        found: found.kind(),
    }
}

/// One device's saved state.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum DeviceState {
    /// A device with no state of its own (the debug-exit port; the FPU error
    /// latch, whose state is its IRQ line's level).
    Stateless,
    /// The 8254 PIT.
    Pit(crate::devices::pit::PitState),
    /// The MC146818 CMOS/RTC.
    Cmos(crate::devices::cmos::CmosState),
    /// A 16550A UART.
    Uart(crate::devices::uart::UartState),
    /// The 8042 keyboard controller.
    I8042(crate::devices::i8042::I8042State),
    /// Port 0x92.
    Port92(u8),
    /// A debug console.
    DebugCon(crate::devices::debugcon::DebugConState),
    /// The PCI host bridge with the PIIX3/PIIX4 functions.
    PciHost(Box<crate::devices::pci::PciHostState>),
    /// The PIIX4 ACPI PM block.
    AcpiPm(crate::devices::acpi_pm::AcpiPmState),
    /// The ACPI hot-plug registers.
    AcpiHotplug(crate::devices::acpi_hotplug::AcpiHotplug),
    /// fw_cfg.
    FwCfg(crate::devices::fw_cfg::FwCfgState),
    /// The POST-code ports.
    Post(crate::devices::post::PostState),
    /// The HPET.
    Hpet(crate::devices::hpet::HpetState),
    /// The PIIX3 IDE function with its drives.
    Ide(Box<crate::devices::ide::IdeState>),
    /// A virtio-blk function.
    VirtioBlk(Box<crate::devices::virtio_blk::VirtioBlkState>),
    /// QEMU's edu device.
    Edu(Box<crate::devices::edu::EduState>),
    /// The VGA.
    Vga(crate::devices::vga::Vga),
}

impl DeviceState {
    /// The kind of device this is the state of, for error messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Stateless => "device without state",
            Self::Pit(_) => "PIT",
            Self::Cmos(_) => "CMOS/RTC",
            Self::Uart(_) => "UART",
            Self::I8042(_) => "i8042",
            Self::Port92(_) => "port 0x92",
            Self::DebugCon(_) => "debug console",
            Self::PciHost(_) => "PCI host",
            Self::AcpiPm(_) => "ACPI PM block",
            Self::AcpiHotplug(_) => "ACPI hot-plug block",
            Self::FwCfg(_) => "fw_cfg",
            Self::Post(_) => "POST-code port",
            Self::Hpet(_) => "HPET",
            Self::Ide(_) => "IDE controller",
            Self::VirtioBlk(_) => "virtio-blk",
            Self::Edu(_) => "edu",
            Self::Vga(_) => "VGA",
        }
    }
}

/// The `save` and `restore` methods of a [`crate::Device`] whose state is
/// the listed fields, copied into and out of a state struct with the same
/// field names (`DeviceState::Variant(StateStruct)`). `wiring` names the
/// fields that are not state. Both lists are checked against the device
/// and the state struct by destructuring without `..`: a field missing from
/// either list, or from the state struct, does not compile.
///
/// `whole` makes the device's own (`Clone` + serde) struct the state.
#[macro_export]
macro_rules! state_methods {
    ($variant:ident($state:ident) {
        wiring: [$($w:ident),* $(,)?],
        state: [$($f:ident),* $(,)?] $(,)?
    }) => {
        fn save(
            &mut self,
        ) -> ::core::result::Result<$crate::snapshot::DeviceState, $crate::snapshot::StateError>
        {
            let Self { $($w: _,)* $($f,)* } = self;
            Ok($crate::snapshot::DeviceState::$variant($state {
                $($f: ::core::clone::Clone::clone($f),)*
            }))
        }

        fn restore(
            &mut self,
            state: &$crate::snapshot::DeviceState,
        ) -> ::core::result::Result<(), $crate::snapshot::StateError> {
            let $crate::snapshot::DeviceState::$variant(s) = state else {
                return Err($crate::snapshot::wrong_kind(self.name(), state));
            };
            let $state { $($f,)* } = ::core::clone::Clone::clone(s);
            let Self { $($w: _,)* $($f: _,)* } = self;
            $(self.$f = $f;)*
            Ok(())
        }
    };
    ($variant:ident(whole)) => {
        fn save(
            &mut self,
        ) -> ::core::result::Result<$crate::snapshot::DeviceState, $crate::snapshot::StateError>
        {
            Ok($crate::snapshot::DeviceState::$variant(::core::clone::Clone::clone(self)))
        }

        fn restore(
            &mut self,
            state: &$crate::snapshot::DeviceState,
        ) -> ::core::result::Result<(), $crate::snapshot::StateError> {
            let $crate::snapshot::DeviceState::$variant(s) = state else {
                return Err($crate::snapshot::wrong_kind(self.name(), state));
            };
            *self = ::core::clone::Clone::clone(s);
            Ok(())
        }
    };
    (stateless) => {
        fn save(
            &mut self,
        ) -> ::core::result::Result<$crate::snapshot::DeviceState, $crate::snapshot::StateError>
        {
            Ok($crate::snapshot::DeviceState::Stateless)
        }

        fn restore(
            &mut self,
            state: &$crate::snapshot::DeviceState,
        ) -> ::core::result::Result<(), $crate::snapshot::StateError> {
            match state {
                $crate::snapshot::DeviceState::Stateless => Ok(()),
                other => Err($crate::snapshot::wrong_kind(self.name(), other)),
            }
        }
    };
}

/// An LZ4 block with its uncompressed length: a RAM run, a disk cluster.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lz4 {
    /// Bytes before compression.
    pub len: u64,
    /// The LZ4 block.
    #[serde(with = "bytes")]
    pub data: Vec<u8>,
}

impl std::fmt::Debug for Lz4 {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(f, "Lz4({} -> {} bytes)", self.len, self.data.len())
    }
}

impl Lz4 {
    /// Compresses `data`.
    pub fn compress(data: &[u8]) -> Self {
        Self {
            len: data.len() as u64,
            data: lz4_flex::block::compress(data),
        }
    }

    /// The bytes, or `None` if the block is damaged (it does not decompress
    /// to exactly `len` bytes).
    pub fn decompress(&self) -> Option<Vec<u8>> {
        let len = usize::try_from(self.len).ok()?;
        let out = lz4_flex::block::decompress(&self.data, len).ok()?;
        (out.len() == len).then_some(out)
    }

    /// Decompresses into `out`, which must be exactly `len` bytes long;
    /// false if the block is damaged.
    pub fn decompress_into(&self, out: &mut [u8]) -> bool {
        let want = out.len();
        want as u64 == self.len
            && matches!(lz4_flex::block::decompress_into(&self.data, out), Ok(n) if n == want)
    }
}

/// A fast 64-bit hash of bytes (not cryptographic): the snapshot file's
/// checksum and a disk image's identity. Eight bytes at a time, each word
/// multiplied into the state, and the length folded in at the end.
pub fn hash64(data: &[u8]) -> u64 {
    const K: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut h: u64 = 0x243F_6A88_85A3_08D3;
    let mut words = data.chunks_exact(8);
    for w in &mut words {
        let mut b = [0u8; 8];
        b.copy_from_slice(w);
        h = (h ^ u64::from_le_bytes(b)).wrapping_mul(K).rotate_left(29);
    }
    for &b in words.remainder() {
        h = (h ^ u64::from(b)).wrapping_mul(K).rotate_left(29);
    }
    // Every step is a bijection of the state, so one changed word (or a
    // changed length) always changes the result.
    let h = h ^ data.len() as u64;
    let h = (h ^ (h >> 31)).wrapping_mul(K);
    h ^ (h >> 29)
}

/// A running [`hash64`] over pieces (a disk read in chunks): the hash of
/// each chunk folded into the state.
#[derive(Clone, Copy, Debug, Default)]
pub struct Hasher64(u64);

impl Hasher64 {
    /// Folds `data` in.
    pub fn update(&mut self, data: &[u8]) {
        self.0 = hash64(&[self.0.to_le_bytes(), hash64(data).to_le_bytes()].concat());
    }
    /// The hash so far.
    pub fn finish(&self) -> u64 {
        self.0
    }
}

/// serde for byte vectors as one byte string (postcard writes a length and
/// the bytes, not one element call per byte).
pub mod bytes {
    use serde::de::{Deserializer, Error, SeqAccess, Visitor};
    use serde::Serializer;

    /// Serializes `v` as a byte string.
    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(v)
    }

    /// Deserializes a byte string.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        d.deserialize_byte_buf(BytesVisitor)
    }

    pub(super) struct BytesVisitor;

    impl<'de> Visitor<'de> for BytesVisitor {
        type Value = Vec<u8>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a byte string")
        }
        fn visit_bytes<E: Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
            Ok(v.to_vec())
        }
        fn visit_byte_buf<E: Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
            Ok(v)
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
            let mut out = Vec::new();
            while let Some(b) = seq.next_element()? {
                out.push(b);
            }
            Ok(out)
        }
    }
}

/// serde for byte arrays of any length (serde's own impls stop at 32), as
/// one byte string of exactly that length.
pub mod byte_array {
    use serde::de::{Deserializer, Error};
    use serde::Serializer;

    /// Serializes `v` as a byte string.
    pub fn serialize<S: Serializer, const N: usize>(v: &[u8; N], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(v)
    }

    /// Deserializes a byte string of exactly `N` bytes.
    pub fn deserialize<'de, D: Deserializer<'de>, const N: usize>(
        d: D,
    ) -> Result<[u8; N], D::Error> {
        let v = d.deserialize_byte_buf(super::bytes::BytesVisitor)?;
        let len = v.len();
        v.try_into()
            .map_err(|_| D::Error::custom(format!("{len} bytes where {N} were expected")))
    }
}

/// serde for a boxed byte array (a device's large buffer).
pub mod boxed_byte_array {
    use serde::{Deserializer, Serializer};

    /// Serializes `v` as a byte string.
    pub fn serialize<S: Serializer, const N: usize>(v: &[u8; N], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(v)
    }

    /// Deserializes a byte string of exactly `N` bytes.
    pub fn deserialize<'de, D: Deserializer<'de>, const N: usize>(
        d: D,
    ) -> Result<Box<[u8; N]>, D::Error> {
        super::byte_array::deserialize(d).map(Box::new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash64_sees_every_byte_and_the_length() {
        let a = vec![0u8; 4099];
        let mut b = a.clone();
        b[4098] = 1;
        assert_ne!(hash64(&a), hash64(&b));
        assert_ne!(hash64(&a), hash64(&a[..4098]));
        assert_eq!(hash64(&a), hash64(&a.clone()));
    }
}
