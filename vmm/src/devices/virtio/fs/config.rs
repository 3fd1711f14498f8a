//! Configuration of a virtio-fs device and the device's configuration space.
//!
//! Command-line form: `tag=T,socket=PATH`, the same keys as the config file.

use std::path::PathBuf;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::config::key_value::{KeyValueError, KeyValueFlag};

/// The tag field of the configuration space (virtio spec 5.11.4): UTF-8, NUL-padded, not
/// NUL-terminated when it fills the field.
pub const TAG_LEN: usize = 36;
/// The configuration space: the tag, then `num_request_queues` (le32).
pub const CONFIG_SPACE_LEN: usize = TAG_LEN + 4;
/// A sockaddr_un holds 107 bytes of path and the NUL.
pub const MAX_SOCKET_PATH_LEN: usize = 107;

const FS_FLAG: KeyValueFlag = KeyValueFlag {
    name: "--fs",
    keys: &["tag", "socket"],
    skip_empty_items: true,
};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FsConfigError {
    #[error(transparent)]
    Flag(#[from] KeyValueError),
    #[error(
        "virtio-fs tag `{0}` is invalid: it must be 1 to {TAG_LEN} bytes with no NUL, `,` or `=`"
    )]
    InvalidTag(String),
    #[error(
        "virtio-fs socket path `{0}` is invalid: it must be non-empty and at most \
         {MAX_SOCKET_PATH_LEN} bytes"
    )]
    InvalidSocket(String),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FsConfig {
    /// The name the guest mounts: `mount -t virtiofs <tag> <dir>`.
    pub tag: String,
    /// The vhost-user socket the backend (virtiofsd) listens on.
    pub socket: PathBuf,
}

impl FsConfig {
    pub fn validate(&self) -> Result<(), FsConfigError> {
        let tag = self.tag.as_bytes();
        if tag.is_empty() || tag.len() > TAG_LEN || tag.iter().any(|b| matches!(b, 0 | b',' | b'='))
        {
            return Err(FsConfigError::InvalidTag(self.tag.clone()));
        }
        let len = self.socket.as_os_str().len();
        if len == 0 || len > MAX_SOCKET_PATH_LEN {
            return Err(FsConfigError::InvalidSocket(
                self.socket.display().to_string(),
            ));
        }
        Ok(())
    }

    /// The bytes the driver reads from the configuration space; one request queue.
    pub fn config_space(&self) -> [u8; CONFIG_SPACE_LEN] {
        let mut space = [0u8; CONFIG_SPACE_LEN];
        let tag = self.tag.as_bytes();
        let n = tag.len().min(TAG_LEN);
        space[..n].copy_from_slice(&tag[..n]);
        space[TAG_LEN..].copy_from_slice(&1u32.to_le_bytes());
        space
    }
}

impl FromStr for FsConfig {
    type Err = FsConfigError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let values = FS_FLAG.parse(s)?;
        let config = FsConfig {
            tag: values.require("tag")?.to_string(),
            socket: PathBuf::from(values.require("socket")?),
        };
        config.validate()?;
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_tag_and_socket() {
        let c: FsConfig = "tag=vol0,socket=/run/fs.sock".parse().unwrap();
        assert_eq!(c.tag, "vol0");
        assert_eq!(c.socket, PathBuf::from("/run/fs.sock"));
        let json: FsConfig =
            serde_json::from_str(r#"{"tag":"vol0","socket":"/run/fs.sock"}"#).unwrap();
        assert_eq!(json, c);
        assert!(serde_json::from_str::<FsConfig>(r#"{"tag":"t"}"#).is_err());
    }

    #[test]
    fn rejects_bad_input_with_named_problem() {
        assert_eq!(
            "socket=/s".parse::<FsConfig>(),
            Err(FsConfigError::Flag(KeyValueError::MissingKey {
                flag: "--fs",
                key: "tag",
                spec: "socket=/s".into()
            }))
        );
        assert_eq!(
            "tag=a,tag=b,socket=/s".parse::<FsConfig>(),
            Err(FsConfigError::Flag(KeyValueError::DuplicateKey {
                flag: "--fs",
                key: "tag"
            }))
        );
        assert_eq!(
            "tag=a,socket=/s,cache=none".parse::<FsConfig>(),
            Err(FsConfigError::Flag(KeyValueError::UnknownKey {
                flag: "--fs",
                key: "cache".into(),
                known: FS_FLAG.keys
            }))
        );
        let long = "x".repeat(TAG_LEN + 1);
        assert_eq!(
            format!("tag={long},socket=/s").parse::<FsConfig>(),
            Err(FsConfigError::InvalidTag(long))
        );
        assert!(matches!(
            "tag=,socket=/s".parse::<FsConfig>(),
            Err(FsConfigError::InvalidTag(_))
        ));
        let deep = format!("/{}", "d".repeat(MAX_SOCKET_PATH_LEN));
        assert!(matches!(
            format!("tag=a,socket={deep}").parse::<FsConfig>(),
            Err(FsConfigError::InvalidSocket(_))
        ));
    }

    #[test]
    fn config_space_holds_the_tag_and_one_request_queue() {
        let c = FsConfig {
            tag: "data".into(),
            socket: "/s".into(),
        };
        let space = c.config_space();
        assert_eq!(&space[..4], b"data");
        assert!(space[4..TAG_LEN].iter().all(|&b| b == 0));
        assert_eq!(&space[TAG_LEN..], &1u32.to_le_bytes());
        let full = FsConfig {
            tag: "t".repeat(TAG_LEN),
            ..c
        };
        assert_eq!(
            &full.config_space()[..TAG_LEN],
            "t".repeat(TAG_LEN).as_bytes()
        );
    }
}
