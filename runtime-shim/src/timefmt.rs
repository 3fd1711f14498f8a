//! RFC 3339 timestamps (UTC, nanoseconds) for state files and logs.

use time::format_description::BorrowedFormatItem;
use time::macros::format_description;
use time::OffsetDateTime;

/// Always nine fraction digits, so timestamps of one file sort as text.
const RFC3339_NANOS: &[BorrowedFormatItem<'static>] =
    format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:9]Z");

pub fn now_rfc3339() -> String {
    format_rfc3339(OffsetDateTime::now_utc())
}

fn format_rfc3339(t: OffsetDateTime) -> String {
    // Only years past 9999 cannot be written in this form.
    t.format(RFC3339_NANOS).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: i64, nanos: i64) -> String {
        format_rfc3339(
            OffsetDateTime::from_unix_timestamp_nanos(secs as i128 * 1_000_000_000 + nanos as i128)
                .unwrap(),
        )
    }

    #[test]
    fn known_instants() {
        assert_eq!(at(0, 0), "1970-01-01T00:00:00.000000000Z");
        assert_eq!(at(951_782_400, 5), "2000-02-29T00:00:00.000000005Z");
        assert_eq!(at(1_700_000_000, 0), "2023-11-14T22:13:20.000000000Z");
    }
}
