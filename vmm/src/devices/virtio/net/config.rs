//! What a NIC is attached to: the TAP interface and the MAC the guest sees.
//!
//! The command-line form is `tap=NAME[,mac=MAC]`, the same keys the config file uses.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::config::key_value::{KeyValueError, KeyValueFlag};

/// Longest interface name the kernel accepts (IFNAMSIZ minus the terminating NUL).
pub const MAX_TAP_NAME_LEN: usize = 15;

const NET_FLAG: KeyValueFlag = KeyValueFlag {
    name: "--net",
    keys: &["tap", "mac"],
    skip_empty_items: true,
};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NetConfigError {
    #[error(transparent)]
    Flag(#[from] KeyValueError),
    #[error("TAP name `{0}` is invalid: 1 to 15 bytes, no `/`, `:`, whitespace or NUL")]
    InvalidTapName(String),
    #[error("MAC address `{0}` is invalid: expected six hex bytes like 52:54:00:12:34:56")]
    InvalidMac(String),
    #[error("MAC address {0} is a multicast address; a NIC needs a unicast one")]
    MulticastMac(MacAddr),
}

/// A 48-bit Ethernet address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    pub fn bytes(&self) -> [u8; 6] {
        self.0
    }

    fn is_multicast(&self) -> bool {
        self.0[0] & 1 == 1
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

impl FromStr for MacAddr {
    type Err = NetConfigError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let invalid = || NetConfigError::InvalidMac(s.to_string());
        let mut bytes = [0u8; 6];
        let mut parts = s.split(':');
        for byte in bytes.iter_mut() {
            let part = parts.next().ok_or_else(invalid)?;
            if part.len() != 2 {
                return Err(invalid());
            }
            *byte = u8::from_str_radix(part, 16).map_err(|_| invalid())?;
        }
        if parts.next().is_some() {
            return Err(invalid());
        }
        let mac = MacAddr(bytes);
        if mac.is_multicast() {
            return Err(NetConfigError::MulticastMac(mac));
        }
        Ok(mac)
    }
}

impl Serialize for MacAddr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for MacAddr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// One NIC of a VM.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetConfig {
    /// Name of the TAP interface; created if it does not exist (which needs CAP_NET_ADMIN).
    pub tap: String,
    /// MAC address announced to the guest; without it the guest driver picks a random one.
    #[serde(default)]
    pub mac: Option<MacAddr>,
}

impl NetConfig {
    /// Checks what the parser cannot check through types alone (the config-file path).
    pub fn validate(&self) -> Result<(), NetConfigError> {
        validate_tap_name(&self.tap)?;
        if let Some(mac) = self.mac {
            if mac.is_multicast() {
                return Err(NetConfigError::MulticastMac(mac));
            }
        }
        Ok(())
    }
}

pub fn validate_tap_name(name: &str) -> Result<(), NetConfigError> {
    let bad = name.is_empty()
        || name.len() > MAX_TAP_NAME_LEN
        || name == "."
        || name == ".."
        || name
            .bytes()
            .any(|b| b == b'/' || b == b':' || b == 0 || b.is_ascii_whitespace());
    if bad {
        return Err(NetConfigError::InvalidTapName(name.to_string()));
    }
    Ok(())
}

impl FromStr for NetConfig {
    type Err = NetConfigError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let values = NET_FLAG.parse(s)?;
        let config = NetConfig {
            tap: values.require("tap")?.to_string(),
            mac: values.get("mac").map(str::parse).transpose()?,
        };
        config.validate()?;
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_tap_and_mac() {
        let c: NetConfig = "tap=tap0,mac=52:54:00:AB:cd:01".parse().unwrap();
        assert_eq!(c.tap, "tap0");
        assert_eq!(c.mac, Some(MacAddr([0x52, 0x54, 0, 0xab, 0xcd, 1])));
        let c: NetConfig = "tap=vm-eth1".parse().unwrap();
        assert_eq!(c.mac, None);
    }

    #[test]
    fn rejects_bad_input_with_named_problem() {
        let flag_error = |e| Err(NetConfigError::Flag(e));
        assert_eq!(
            "mac=52:54:00:00:00:01".parse::<NetConfig>(),
            flag_error(KeyValueError::MissingKey {
                flag: "--net",
                key: "tap",
                spec: "mac=52:54:00:00:00:01".into()
            })
        );
        assert_eq!(
            "tap=a,speed=10".parse::<NetConfig>(),
            flag_error(KeyValueError::UnknownKey {
                flag: "--net",
                key: "speed".into(),
                known: NET_FLAG.keys
            })
        );
        assert_eq!(
            "tap=a,tap=b".parse::<NetConfig>(),
            flag_error(KeyValueError::DuplicateKey {
                flag: "--net",
                key: "tap"
            })
        );
        assert_eq!(
            "tap".parse::<NetConfig>(),
            flag_error(KeyValueError::NotKeyValue {
                flag: "--net",
                item: "tap".into()
            })
        );
        assert_eq!(
            "tap=a,,".parse::<NetConfig>().map(|c| c.tap),
            Ok("a".to_string())
        );
        assert!(matches!(
            "tap=".parse::<NetConfig>(),
            Err(NetConfigError::InvalidTapName(_))
        ));
        assert!(matches!(
            "tap=0123456789abcdef".parse::<NetConfig>(),
            Err(NetConfigError::InvalidTapName(_))
        ));
        assert!(matches!(
            "tap=a/b".parse::<NetConfig>(),
            Err(NetConfigError::InvalidTapName(_))
        ));
        for mac in [
            "52:54:00:00:00",
            "52:54:00:00:00:01:02",
            "5:54:00:00:00:01",
            "zz:54:00:00:00:01",
        ] {
            assert!(
                matches!(
                    format!("tap=a,mac={mac}").parse::<NetConfig>(),
                    Err(NetConfigError::InvalidMac(_))
                ),
                "{mac}"
            );
        }
        assert!(matches!(
            "tap=a,mac=01:00:5e:00:00:01".parse::<NetConfig>(),
            Err(NetConfigError::MulticastMac(_))
        ));
    }

    #[test]
    fn config_file_form_round_trips() {
        let c: NetConfig =
            serde_json::from_str(r#"{"tap":"tap1","mac":"02:00:00:00:00:07"}"#).unwrap();
        assert_eq!(c.mac.unwrap().to_string(), "02:00:00:00:00:07");
        let back: NetConfig = serde_json::from_str(&serde_json::to_string(&c).unwrap()).unwrap();
        assert_eq!(back, c);
        assert!(serde_json::from_str::<NetConfig>(r#"{"tap":"t","mac":"nonsense"}"#).is_err());
        assert!(serde_json::from_str::<NetConfig>(r#"{"tap":"t","extra":1}"#).is_err());
    }
}
