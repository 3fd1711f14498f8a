//! What a disk is: the image file, whether the guest may write it, and the serial the guest
//! reads through GET_ID.
//!
//! The command-line form is `path=IMG[,ro=on|off][,id=ID]`, the same keys the config file uses.

use std::path::PathBuf;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::config::key_value::{self, KeyValueError, KeyValueFlag};

/// The serial number field of virtio-blk is 20 bytes, NUL-padded.
pub const BLOCK_ID_LEN: usize = 20;

const DISK_FLAG: KeyValueFlag = KeyValueFlag {
    name: "--disk",
    keys: &["path", "ro", "id"],
    skip_empty_items: false,
};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BlockConfigError {
    #[error(transparent)]
    Flag(#[from] KeyValueError),
    #[error("--disk needs `path=IMG`, got `{0}`")]
    MissingPath(String),
    #[error("--disk: ro must be `on` or `off`, got `{0}`")]
    InvalidReadOnly(String),
    #[error("disk id `{0}` is invalid: 1 to 20 printable ASCII characters without `,`")]
    InvalidId(String),
}

/// One disk of a VM.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlockConfig {
    /// Raw image file (or block device) backing the disk.
    pub path: PathBuf,
    /// Offer the disk read-only (VIRTIO_BLK_F_RO) and open the image read-only.
    #[serde(default)]
    pub read_only: bool,
    /// Serial number returned by GET_ID (Linux: /sys/block/vdX/serial, /dev/disk/by-id).
    #[serde(default)]
    pub id: Option<String>,
}

impl BlockConfig {
    /// Checks what the types alone cannot (the config-file path).
    pub fn validate(&self) -> Result<(), BlockConfigError> {
        if self.path.as_os_str().is_empty() {
            return Err(BlockConfigError::MissingPath(String::new()));
        }
        if let Some(id) = &self.id {
            validate_id(id)?;
        }
        Ok(())
    }

    /// The GET_ID answer: the id, NUL-padded to 20 bytes.
    pub fn id_bytes(&self) -> [u8; BLOCK_ID_LEN] {
        let mut out = [0u8; BLOCK_ID_LEN];
        if let Some(id) = &self.id {
            let n = id.len().min(BLOCK_ID_LEN);
            out[..n].copy_from_slice(&id.as_bytes()[..n]);
        }
        out
    }
}

fn validate_id(id: &str) -> Result<(), BlockConfigError> {
    let ok = !id.is_empty()
        && id.len() <= BLOCK_ID_LEN
        && id.bytes().all(|b| b.is_ascii_graphic() && b != b',');
    if ok {
        Ok(())
    } else {
        Err(BlockConfigError::InvalidId(id.to_string()))
    }
}

impl FromStr for BlockConfig {
    type Err = BlockConfigError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let values = DISK_FLAG.parse(s)?;
        let path = PathBuf::from(values.require_non_empty("path")?);
        let read_only = match values.get("ro") {
            Some(ro) => key_value::on_off(ro)
                .ok_or_else(|| BlockConfigError::InvalidReadOnly(ro.to_string()))?,
            None => false,
        };
        let id = values.get("id").map(str::to_string);
        if let Some(id) = &id {
            validate_id(id)?;
        }
        Ok(BlockConfig {
            path,
            read_only,
            id,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_all_keys() {
        let c: BlockConfig = "path=/tmp/a.img,ro=on,id=rootfs".parse().unwrap();
        assert_eq!(c.path, PathBuf::from("/tmp/a.img"));
        assert!(c.read_only);
        assert_eq!(c.id.as_deref(), Some("rootfs"));
        let mut want = [0u8; 20];
        want[..6].copy_from_slice(b"rootfs");
        assert_eq!(c.id_bytes(), want);

        let c: BlockConfig = "path=b.img".parse().unwrap();
        assert!(!c.read_only);
        assert_eq!(c.id_bytes(), [0u8; 20]);
    }

    #[test]
    fn rejects_bad_input_with_named_problem() {
        let flag_error = BlockConfigError::Flag;
        let cases = [
            (
                "ro=on",
                flag_error(KeyValueError::MissingKey {
                    flag: "--disk",
                    key: "path",
                    spec: "ro=on".into(),
                }),
            ),
            (
                "path=",
                flag_error(KeyValueError::EmptyValue {
                    flag: "--disk",
                    key: "path",
                }),
            ),
            (
                "path=a,size=3",
                flag_error(KeyValueError::UnknownKey {
                    flag: "--disk",
                    key: "size".into(),
                    known: DISK_FLAG.keys,
                }),
            ),
            (
                "path=a,ro",
                flag_error(KeyValueError::NotKeyValue {
                    flag: "--disk",
                    item: "ro".into(),
                }),
            ),
            (
                "path=a,",
                flag_error(KeyValueError::NotKeyValue {
                    flag: "--disk",
                    item: "".into(),
                }),
            ),
            (
                "path=a,path=b",
                flag_error(KeyValueError::DuplicateKey {
                    flag: "--disk",
                    key: "path",
                }),
            ),
            (
                "path=a,ro=yes",
                BlockConfigError::InvalidReadOnly("yes".into()),
            ),
            (
                "path=a,id=123456789012345678901",
                BlockConfigError::InvalidId("123456789012345678901".into()),
            ),
            ("path=a,id=", BlockConfigError::InvalidId("".into())),
            ("path=a,id=a b", BlockConfigError::InvalidId("a b".into())),
        ];
        for (input, want) in cases {
            assert_eq!(input.parse::<BlockConfig>(), Err(want), "input {input}");
        }
        // docs/virtio.md quotes this one.
        assert_eq!(
            "path=a,size=3"
                .parse::<BlockConfig>()
                .unwrap_err()
                .to_string(),
            "--disk: unknown key `size` (expected path, ro, id)"
        );
    }

    #[test]
    fn config_file_form_round_trips() {
        let c: BlockConfig = "path=/x.img,ro=on,id=data".parse().unwrap();
        let json = serde_json::to_string(&c).unwrap();
        assert_eq!(serde_json::from_str::<BlockConfig>(&json).unwrap(), c);
        let bad: Result<BlockConfig, _> = serde_json::from_str(r#"{"path":"/x","bogus":1}"#);
        assert!(bad.is_err());
        let c: BlockConfig =
            serde_json::from_str(r#"{"path":"/x","id":"way-too-long-serial-number"}"#).unwrap();
        assert!(c.validate().is_err());
    }
}
