//! Signal names and numbers as runc accepts them: `KILL`, `SIGKILL`, `9`, `RTMIN+3`.

use std::str::FromStr;

use nix::sys::signal::Signal;

use crate::error::{Error, Result};

/// Parses a signal given by name (with or without `SIG`, any case) or number.
pub fn parse_signal(s: &str) -> Result<i32> {
    let bad = || Error::BadSignal(s.to_string());
    if let Ok(n) = s.parse::<i32>() {
        return if (1..=libc::SIGRTMAX()).contains(&n) {
            Ok(n)
        } else {
            Err(bad())
        };
    }
    let upper = s.to_ascii_uppercase();
    let name = upper.strip_prefix("SIG").unwrap_or(&upper);
    if let Some(rest) = name.strip_prefix("RTMIN") {
        let off = if rest.is_empty() {
            0
        } else {
            rest.strip_prefix('+')
                .and_then(|n| n.parse::<i32>().ok())
                .ok_or_else(bad)?
        };
        let n = libc::SIGRTMIN() + off;
        return if n <= libc::SIGRTMAX() {
            Ok(n)
        } else {
            Err(bad())
        };
    }
    if name == "RTMAX" {
        return Ok(libc::SIGRTMAX());
    }
    Signal::from_str(&format!("SIG{name}"))
        .map(|sig| sig as i32)
        .map_err(|_| bad())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_numbers() {
        assert_eq!(parse_signal("KILL").unwrap(), 9);
        assert_eq!(parse_signal("sigterm").unwrap(), 15);
        assert_eq!(parse_signal("SIGUSR1").unwrap(), libc::SIGUSR1);
        assert_eq!(parse_signal("2").unwrap(), 2);
        assert_eq!(parse_signal("RTMIN+1").unwrap(), libc::SIGRTMIN() + 1);
        for bad in ["0", "99", "SIGNOPE", "", "RTMIN+x"] {
            assert!(
                matches!(parse_signal(bad), Err(Error::BadSignal(_))),
                "{bad}"
            );
        }
    }
}
