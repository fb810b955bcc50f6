//! Timestamps as both codecs write them: RFC 3339 in UTC, exactly as chrono's own `Serialize`
//! writes them (`SecondsFormat::AutoSi`, `Z`), but formatted into a buffer on the stack.
//! chrono's goes through `collect_str`, which builds a `String` a character at a time, and
//! every reply carries a timestamp.

use chrono::{DateTime, Datelike, Timelike, Utc};
use serde::{Serialize, Serializer};

/// `serialize_with` for a `DateTime<Utc>` field.
pub fn rfc3339<S: Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
    let mut buf = [0u8; 30];
    match format(t, &mut buf) {
        Some(text) => s.serialize_str(text),
        // Years past four digits and leap seconds: chrono's own, rare and slow.
        None => t.serialize(s),
    }
}

/// A timestamp to serialize with [`rfc3339`].
pub struct Rfc3339<'a>(pub &'a DateTime<Utc>);

impl Serialize for Rfc3339<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        rfc3339(self.0, s)
    }
}

/// Digits and separators written into a fixed buffer.
struct Digits<'b> {
    buf: &'b mut [u8; 30],
    len: usize,
}

impl Digits<'_> {
    fn number(&mut self, mut value: u32, digits: usize) {
        for at in (self.len..self.len + digits).rev() {
            self.buf[at] = b'0' + (value % 10) as u8;
            value /= 10;
        }
        self.len += digits;
    }

    fn byte(&mut self, b: u8) {
        self.buf[self.len] = b;
        self.len += 1;
    }
}

/// `YYYY-MM-DDTHH:MM:SS[.mmm|.uuuuuu|.nnnnnnnnn]Z`, or `None` where chrono writes otherwise.
fn format<'b>(t: &DateTime<Utc>, buf: &'b mut [u8; 30]) -> Option<&'b str> {
    let nanos = t.timestamp_subsec_nanos();
    if nanos >= 1_000_000_000 {
        return None;
    }
    // The fields of the UTC date and time, taken once: `DateTime`'s own accessors each apply
    // the (zero) offset again.
    let (date, time) = (t.date_naive(), t.time());
    let year = u32::try_from(date.year()).ok().filter(|y| *y <= 9999)?;
    let mut d = Digits { buf, len: 0 };
    d.number(year, 4);
    for (sep, value) in [
        (b'-', date.month()),
        (b'-', date.day()),
        (b'T', time.hour()),
    ] {
        d.byte(sep);
        d.number(value, 2);
    }
    for value in [time.minute(), time.second()] {
        d.byte(b':');
        d.number(value, 2);
    }
    let (fraction, digits) = match nanos {
        0 => (0, 0),
        n if n % 1_000_000 == 0 => (n / 1_000_000, 3),
        n if n % 1_000 == 0 => (n / 1_000, 6),
        n => (n, 9),
    };
    if digits > 0 {
        d.byte(b'.');
        d.number(fraction, digits);
    }
    d.byte(b'Z');
    let len = d.len;
    std::str::from_utf8(&buf[..len]).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use proptest::prelude::*;

    fn ours(t: &DateTime<Utc>) -> String {
        serde_json::to_string(&Rfc3339(t)).unwrap()
    }

    fn chronos(t: &DateTime<Utc>) -> String {
        serde_json::to_string(t).unwrap()
    }

    #[test]
    fn every_fraction_width_and_the_fallbacks_match_chrono() {
        let base = Utc.with_ymd_and_hms(2026, 12, 2, 7, 8, 9).unwrap();
        for nanos in [0, 1, 1_000, 120_000, 123_456_000, 5_000_000, 999_999_999] {
            let t = base + chrono::Duration::nanoseconds(nanos);
            assert_eq!(ours(&t), chronos(&t), "{nanos} ns");
        }
        for t in [
            Utc.with_ymd_and_hms(0, 1, 1, 0, 0, 0).unwrap(),
            Utc.with_ymd_and_hms(9999, 12, 31, 23, 59, 59).unwrap(),
            Utc.with_ymd_and_hms(10000, 1, 1, 0, 0, 0).unwrap(),
            Utc.with_ymd_and_hms(-1, 1, 1, 0, 0, 0).unwrap(),
            DateTime::<Utc>::MIN_UTC,
            DateTime::<Utc>::MAX_UTC,
        ] {
            assert_eq!(ours(&t), chronos(&t));
        }
        // A leap second, which chrono writes as :60.
        let leap = chrono::NaiveDate::from_ymd_opt(2016, 12, 31)
            .and_then(|d| d.and_hms_nano_opt(23, 59, 59, 1_500_000_000))
            .unwrap()
            .and_utc();
        assert_eq!(ours(&leap), chronos(&leap));
    }

    proptest! {
        #[test]
        fn any_microsecond_timestamp_matches_chrono(micros in any::<i64>()) {
            if let Some(t) = DateTime::<Utc>::from_timestamp_micros(micros) {
                prop_assert_eq!(ours(&t), chronos(&t));
            }
        }

        #[test]
        fn any_nanosecond_timestamp_matches_chrono(nanos in any::<i64>()) {
            let t = DateTime::<Utc>::from_timestamp_nanos(nanos);
            prop_assert_eq!(ours(&t), chronos(&t));
        }
    }
}
