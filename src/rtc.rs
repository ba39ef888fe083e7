//! `--rtc base=...,clock=...`, as in QEMU: where the guest's real-time clock
//! starts.
//!
//! - `base=utc` (the default): the host's current date and time, in UTC;
//! - `base=localtime`: the host's current local date and time;
//! - `base=YYYY-MM-DD` or `base=YYYY-MM-DDTHH:MM:SS`: that date (UTC).
//!
//! From there the RTC runs on virtual time, like every other clock of the
//! machine, so `clock=vm` is the only clock accepted. A run that must be
//! bit-identical to another gives a fixed `base`: the host's date is an input.

use crate::error::Error;
use x86bt_machine::devices::cmos::{days_in_month, unix_from_civil, Civil};

/// The RTC's start, in seconds since 1970-01-01 00:00:00 as the guest will read
/// it (local time already folded in for `base=localtime`).
pub fn parse_base(spec: &str) -> Result<i64, Error> {
    let bad = |why: &str| Error::Usage(format!("--rtc {spec:?}: {why}"));
    let mut base = None;
    for part in spec.split(',') {
        let (key, value) = part
            .split_once('=')
            .ok_or_else(|| bad("expected base=utc|localtime|DATE and optionally clock=vm"))?;
        match key {
            "base" => base = Some(value),
            "clock" if value == "vm" => {}
            "clock" => {
                return Err(bad(
                    "only clock=vm is supported (the RTC runs on the machine's virtual time)",
                ))
            }
            "driftfix" if value == "none" => {}
            _ => return Err(bad(&format!("unknown parameter {key:?}"))),
        }
    }
    match base.unwrap_or("utc") {
        "utc" => Ok(host_now()),
        "localtime" => Ok(host_now() + host_utc_offset()),
        date => parse_date(date).ok_or_else(|| {
            bad("base is utc, localtime, or a date as YYYY-MM-DD or YYYY-MM-DDTHH:MM:SS")
        }),
    }
}

/// The host's current time in seconds since the epoch (UTC).
pub fn host_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(0))
}

/// The host's local-time offset from UTC, in seconds, right now.
fn host_utc_offset() -> i64 {
    let now: libc::time_t = host_now() as libc::time_t;
    // SAFETY: `tm` is plain old data that localtime_r fills; both pointers are
    // valid for the call, and localtime_r is the thread-safe variant.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let ok = unsafe { !libc::localtime_r(&now, &mut tm).is_null() };
    if ok {
        i64::from(tm.tm_gmtoff as i32)
    } else {
        0
    }
}

/// `YYYY-MM-DD` or `YYYY-MM-DDTHH:MM:SS` (UTC) to seconds since the epoch.
pub fn parse_date(s: &str) -> Option<i64> {
    let (date, time) = match s.split_once('T') {
        Some((d, t)) => (d, Some(t)),
        None => (s, None),
    };
    let num = |t: &str, digits: usize| -> Option<i64> {
        (t.len() == digits && t.bytes().all(|b| b.is_ascii_digit()))
            .then(|| t.parse().ok())
            .flatten()
    };
    let mut d = date.split('-');
    let (y, m, day) = (num(d.next()?, 4)?, num(d.next()?, 2)?, num(d.next()?, 2)?);
    if d.next().is_some() || !(1..=12).contains(&m) || day < 1 || day > days_in_month(y, m) {
        return None;
    }
    let (hour, minute, second) = match time {
        None => (0, 0, 0),
        Some(t) => {
            let mut f = t.split(':');
            let (h, mi, se) = (num(f.next()?, 2)?, num(f.next()?, 2)?, num(f.next()?, 2)?);
            if f.next().is_some() || h > 23 || mi > 59 || se > 59 {
                return None;
            }
            (h, mi, se)
        }
    };
    Some(unix_from_civil(Civil {
        year: y,
        month: m,
        day,
        hour,
        minute,
        second,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rtc_date_known_epochs_match_posix_time() {
        // Values from `date -u -d ... +%s` (GNU coreutils), an independent source.
        assert_eq!(parse_date("1970-01-01"), Some(0));
        assert_eq!(parse_date("2000-02-29T12:34:56"), Some(951_827_696));
        assert_eq!(parse_date("2026-12-06"), Some(1_796_515_200));
        assert_eq!(parse_date("1969-12-31T23:59:59"), Some(-1));
    }

    #[test]
    fn rtc_date_malformed_is_rejected() {
        for bad in [
            "2026-13-01",
            "2026-02-29",
            "26-01-01",
            "2026-01-01T24:00:00",
            "x",
        ] {
            assert_eq!(parse_date(bad), None, "{bad}");
        }
    }

    #[test]
    fn rtc_spec_bad_clock_or_key_is_a_usage_error() {
        assert!(parse_base("base=utc,clock=host").is_err());
        assert!(parse_base("speed=2").is_err());
        assert!(parse_base("utc").is_err());
        assert_eq!(
            parse_base("base=2001-09-09T01:46:40").ok(),
            Some(1_000_000_000)
        );
    }

    #[test]
    fn rtc_default_base_is_the_host_date() {
        let base = parse_base("clock=vm").expect("default base");
        assert!((base - host_now()).abs() <= 2);
    }
}
