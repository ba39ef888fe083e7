//! The storage options, in QEMU's syntax: `-drive`, `-hda`..`-hdd`, `-cdrom`
//! and `-boot`. They are parsed and every image is opened (and locked) before
//! the guest starts, so a missing, unreadable, locked or unknown image is one
//! clear error line and the run never begins.

use crate::error::Error;
use std::path::PathBuf;
use x86bt_machine::block::{self, BlockBackend, Format, ImageSpec};
use x86bt_machine::devices::ide::{DriveSpec, Media};

/// A drive as the options describe it, before its image is opened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DriveOpt {
    /// The image and how to open it.
    pub image: ImageSpec,
    /// Disk or CD.
    pub media: Media,
    /// The interface (only `ide` so far).
    pub interface: Interface,
    /// The IDE position 0-3 (channel = index / 2, unit = index % 2), if given.
    pub index: Option<u8>,
}

/// Which controller a drive hangs off.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Interface {
    /// The PIIX3 IDE controller.
    Ide,
    /// A virtio-blk PCI function of its own.
    Virtio,
}

fn on_off(key: &str, v: &str) -> Result<bool, Error> {
    match v {
        "on" | "yes" | "true" => Ok(true),
        "off" | "no" | "false" => Ok(false),
        _ => Err(Error::Usage(format!(
            "-drive {key}={v}: expected on or off"
        ))),
    }
}

/// Parses one `-drive` value: `file=F[,format=raw|qcow2][,if=ide]
/// [,media=disk|cdrom][,readonly=on][,snapshot=on][,index=N][,bus=B,unit=U]`
/// (and `cache=`, `id=`, `aio=`, which change nothing here).
pub fn parse_drive(spec: &str) -> Result<DriveOpt, Error> {
    let mut file = None;
    let mut format = None;
    let mut media = Media::Disk;
    let mut read_only = false;
    let mut snapshot = false;
    let mut interface = Interface::Ide;
    let mut index = None;
    let (mut bus, mut unit) = (None, None);
    let num = |k: &str, v: &str, max: u8| -> Result<u8, Error> {
        v.parse::<u8>()
            .ok()
            .filter(|&n| n <= max)
            .ok_or_else(|| Error::Usage(format!("-drive {k}={v}: expected 0 to {max}")))
    };
    for part in spec.split(',') {
        let (k, v) = part.split_once('=').unwrap_or((part, ""));
        match k {
            "file" => file = Some(PathBuf::from(v)),
            "format" => {
                format = Some(
                    v.parse::<Format>()
                        .map_err(|e| Error::Usage(format!("-drive {e}")))?,
                )
            }
            "if" => {
                interface = match v {
                    "ide" => Interface::Ide,
                    "virtio" => Interface::Virtio,
                    other => {
                        return Err(Error::Usage(format!(
                            "-drive if={other}: x86bt has the ide and virtio interfaces"
                        )))
                    }
                }
            }
            "media" => {
                media = match v {
                    "disk" => Media::Disk,
                    "cdrom" => Media::Cdrom,
                    other => {
                        return Err(Error::Usage(format!(
                            "-drive media={other}: expected disk or cdrom"
                        )))
                    }
                }
            }
            "readonly" => read_only = on_off(k, v)?,
            "snapshot" => snapshot = on_off(k, v)?,
            "index" => index = Some(num(k, v, 3)?),
            "bus" => bus = Some(num(k, v, 1)?),
            "unit" => unit = Some(num(k, v, 1)?),
            // Host cache modes and names: every write is synchronous and a
            // guest flush is an fsync whatever is asked.
            "cache" | "id" | "aio" | "discard" => {}
            _ => {
                return Err(Error::Usage(format!(
                    "-drive: unknown option {k:?} (x86bt takes file, format, if, media, \
                     readonly, snapshot, index, bus, unit, cache)"
                )))
            }
        }
    }
    if interface == Interface::Virtio && media == Media::Cdrom {
        return Err(Error::Usage(format!(
            "-drive {spec}: media=cdrom needs if=ide (virtio-blk is a disk)"
        )));
    }
    let Some(path) = file.filter(|p| !p.as_os_str().is_empty()) else {
        return Err(Error::Usage(format!("-drive {spec}: file= is missing")));
    };
    if bus.is_some() || unit.is_some() {
        let at = bus.unwrap_or(0) * 2 + unit.unwrap_or(0);
        if index.is_some_and(|i| i != at) {
            return Err(Error::Usage(format!(
                "-drive {spec}: index= and bus=/unit= disagree"
            )));
        }
        index = Some(at);
    }
    Ok(DriveOpt {
        image: ImageSpec {
            path,
            format,
            // A CD is read-only, as the medium is.
            read_only: read_only || media == Media::Cdrom,
            snapshot,
        },
        media,
        interface,
        index,
    })
}

/// The drive `-hdX` or `-cdrom` gives: QEMU's index 0-3 (`-cdrom` is the
/// secondary master, index 2).
pub fn shorthand(path: &std::path::Path, media: Media, index: u8) -> DriveOpt {
    DriveOpt {
        image: ImageSpec {
            path: path.to_owned(),
            format: None,
            read_only: media == Media::Cdrom,
            snapshot: false,
        },
        media,
        interface: Interface::Ide,
        index: Some(index),
    }
}

/// Parses `-boot`: `order=LETTERS`, `once=LETTERS` (taken as the order),
/// `menu=on|off`, or bare letters. `c` is the first hard disk, `d` the first
/// CD; x86bt has no floppy (`a`, `b`) or network boot (`n`).
pub fn parse_boot(spec: &str) -> Result<(String, bool), Error> {
    let mut order = String::new();
    let mut menu = false;
    for part in spec.split(',') {
        let (k, v) = match part.split_once('=') {
            Some(kv) => kv,
            None => ("order", part),
        };
        match k {
            "order" | "once" => order = v.to_string(),
            "menu" => menu = on_off("menu", v)?,
            "splash-time" | "reboot-timeout" | "strict" => {}
            _ => {
                return Err(Error::Usage(format!(
                    "-boot {k}: expected order=, once= or menu="
                )))
            }
        }
    }
    if let Some(bad) = order.chars().find(|c| !matches!(c, 'c' | 'd')) {
        return Err(Error::Usage(format!(
            "-boot order={order}: '{bad}' is not a boot device x86bt has (c: hard disk, d: CD)"
        )));
    }
    Ok((order, menu))
}

/// Opens a drive's image; a disk must hold at least one sector.
fn open_image(o: &DriveOpt) -> Result<Box<dyn BlockBackend>, Error> {
    let b = block::open(&o.image).map_err(|e| Error::Usage(e.to_string()))?;
    if o.media == Media::Disk && b.size() < block::SECTOR {
        return Err(Error::Usage(format!(
            "{}: an empty disk image ({} bytes)",
            o.image.path.display(),
            b.size()
        )));
    }
    Ok(b)
}

/// Opens the images of the virtio-blk drives, in order.
pub fn open_virtio(opts: &[DriveOpt]) -> Result<Vec<Box<dyn BlockBackend>>, Error> {
    opts.iter()
        .filter(|o| o.interface == Interface::Virtio)
        .map(open_image)
        .collect()
}

/// Places the IDE drives on the controller (given indexes first, then the
/// rest in the first free places) and opens their images.
pub fn open_all(opts: &[DriveOpt]) -> Result<Vec<DriveSpec>, Error> {
    let opts: Vec<&DriveOpt> = opts
        .iter()
        .filter(|o| o.interface == Interface::Ide)
        .collect();
    let mut taken = [false; 4];
    let mut placed = Vec::new();
    for o in opts.iter().filter(|o| o.index.is_some()) {
        let i = o.index.unwrap_or(0);
        if std::mem::replace(&mut taken[usize::from(i)], true) {
            return Err(Error::Usage(format!(
                "two drives at IDE index {i} (bus {}, unit {})",
                i / 2,
                i % 2
            )));
        }
        placed.push((i, o));
    }
    for o in opts.iter().filter(|o| o.index.is_none()) {
        let Some(i) = taken.iter().position(|t| !t) else {
            return Err(Error::Usage(
                "more than four IDE drives (the controller has two channels of two)".into(),
            ));
        };
        taken[i] = true;
        placed.push((i as u8, o));
    }
    placed.sort_by_key(|&(i, _)| i);
    placed
        .into_iter()
        .map(|(i, o)| {
            Ok(DriveSpec {
                media: o.media,
                backend: open_image(o)?,
                channel: i / 2,
                unit: i % 2,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drive_options_parse_as_in_qemu() {
        let d = parse_drive("file=a.img,format=raw,if=ide,snapshot=on,index=1").expect("parses");
        assert_eq!(d.image.path, PathBuf::from("a.img"));
        assert_eq!(d.image.format, Some(Format::Raw));
        assert!(d.image.snapshot && !d.image.read_only);
        assert_eq!(d.index, Some(1));
        let c = parse_drive("file=x.iso,media=cdrom,bus=1,unit=0").expect("parses");
        assert_eq!(
            (c.media, c.index, c.image.read_only),
            (Media::Cdrom, Some(2), true)
        );
        assert!(parse_drive("format=raw").is_err(), "no file");
        assert!(parse_drive("file=a,format=vmdk").is_err());
        assert!(parse_drive("file=a,bogus=1").is_err());
        assert!(parse_drive("file=a,index=4").is_err());
        assert!(parse_drive("file=a,snapshot=maybe").is_err());
    }

    #[test]
    fn boot_orders_take_c_and_d() {
        assert_eq!(parse_boot("d").expect("bare"), ("d".into(), false));
        assert_eq!(
            parse_boot("order=dc,menu=on").expect("keys"),
            ("dc".into(), true)
        );
        assert!(parse_boot("order=n").is_err());
        assert!(parse_boot("order=a").is_err());
    }

    #[test]
    fn two_drives_at_one_index_are_refused() {
        let a = shorthand(std::path::Path::new("/nonexistent"), Media::Disk, 0);
        let e = open_all(&[a.clone(), a]).err().expect("refused");
        assert!(e.to_string().contains("two drives at IDE index 0"), "{e}");
    }
}
