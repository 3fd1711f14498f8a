//! What a disk is: the image file, whether the guest may write it, and the serial the guest
//! reads through GET_ID.
//!
//! The command-line form is `path=IMG[,ro=on|off][,id=ID]`, the same keys the config file uses.

use std::path::PathBuf;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The serial number field of virtio-blk is 20 bytes, NUL-padded.
pub const BLOCK_ID_LEN: usize = 20;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BlockConfigError {
    #[error("--disk needs `path=IMG`, got `{0}`")]
    MissingPath(String),
    #[error("--disk: unknown key `{0}` (expected path, ro, id)")]
    UnknownKey(String),
    #[error("--disk: `{0}` is not key=value")]
    NotKeyValue(String),
    #[error("--disk: key `{0}` given twice")]
    DuplicateKey(String),
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
        let mut path = None;
        let mut read_only = None;
        let mut id = None;
        for part in s.split(',') {
            let (key, value) = part
                .split_once('=')
                .ok_or_else(|| BlockConfigError::NotKeyValue(part.to_string()))?;
            let dup = || BlockConfigError::DuplicateKey(key.to_string());
            match key {
                "path" => {
                    if value.is_empty() {
                        return Err(BlockConfigError::MissingPath(s.to_string()));
                    }
                    if path.replace(PathBuf::from(value)).is_some() {
                        return Err(dup());
                    }
                }
                "ro" => {
                    let v = match value {
                        "on" => true,
                        "off" => false,
                        _ => return Err(BlockConfigError::InvalidReadOnly(value.to_string())),
                    };
                    if read_only.replace(v).is_some() {
                        return Err(dup());
                    }
                }
                "id" => {
                    validate_id(value)?;
                    if id.replace(value.to_string()).is_some() {
                        return Err(dup());
                    }
                }
                _ => return Err(BlockConfigError::UnknownKey(key.to_string())),
            }
        }
        Ok(BlockConfig {
            path: path.ok_or_else(|| BlockConfigError::MissingPath(s.to_string()))?,
            read_only: read_only.unwrap_or(false),
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
        let cases = [
            ("ro=on", BlockConfigError::MissingPath("ro=on".into())),
            ("path=", BlockConfigError::MissingPath("path=".into())),
            ("path=a,size=3", BlockConfigError::UnknownKey("size".into())),
            ("path=a,ro", BlockConfigError::NotKeyValue("ro".into())),
            (
                "path=a,path=b",
                BlockConfigError::DuplicateKey("path".into()),
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
