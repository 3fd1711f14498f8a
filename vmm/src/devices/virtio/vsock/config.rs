//! Configuration of the vsock device: the guest's CID and the host-side unix socket path.
//!
//! Command-line form: `cid=N,path=SOCK`, the same keys as the config file.

use std::path::PathBuf;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::config::key_value::{KeyValueError, KeyValueFlag};

/// CIDs 0 (hypervisor), 1 (local) and 2 (host) are reserved, and so is u32::MAX
/// (VMADDR_CID_ANY); Linux keeps CIDs in 32 bits.
pub const MIN_GUEST_CID: u64 = 3;
pub const MAX_GUEST_CID: u64 = u32::MAX as u64 - 1;

/// Room for `_<port>` after the path in a sockaddr_un (108 bytes including the NUL).
pub const MAX_PATH_LEN: usize = 107 - 11;

const VSOCK_FLAG: KeyValueFlag = KeyValueFlag {
    name: "--vsock",
    keys: &["cid", "path"],
    skip_empty_items: true,
};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VsockConfigError {
    #[error(transparent)]
    Flag(#[from] KeyValueError),
    #[error("vsock guest CID `{0}` is invalid: expected a number from {MIN_GUEST_CID} to {MAX_GUEST_CID}")]
    InvalidCid(String),
    #[error(
        "vsock socket path `{0}` is invalid: it must be non-empty and at most {MAX_PATH_LEN} bytes"
    )]
    InvalidPath(String),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VsockConfig {
    /// The guest's context ID.
    pub cid: u64,
    /// Host-side unix socket: host clients connect here; guest connections to host port P
    /// go to `<path>_<P>`.
    pub path: PathBuf,
}

impl VsockConfig {
    pub fn validate(&self) -> Result<(), VsockConfigError> {
        if !(MIN_GUEST_CID..=MAX_GUEST_CID).contains(&self.cid) {
            return Err(VsockConfigError::InvalidCid(self.cid.to_string()));
        }
        let len = self.path.as_os_str().len();
        if len == 0 || len > MAX_PATH_LEN {
            return Err(VsockConfigError::InvalidPath(
                self.path.display().to_string(),
            ));
        }
        Ok(())
    }
}

impl FromStr for VsockConfig {
    type Err = VsockConfigError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let values = VSOCK_FLAG.parse(s)?;
        let cid = values.require("cid")?;
        let config = VsockConfig {
            cid: cid
                .parse()
                .map_err(|_| VsockConfigError::InvalidCid(cid.to_string()))?,
            path: PathBuf::from(values.require("path")?),
        };
        config.validate()?;
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_cid_and_path() {
        let c: VsockConfig = "cid=3,path=/run/vm/v.sock".parse().unwrap();
        assert_eq!(c.cid, 3);
        assert_eq!(c.path, PathBuf::from("/run/vm/v.sock"));
        let c: VsockConfig = "path=/tmp/x,cid=4294967294".parse().unwrap();
        assert_eq!(c.cid, MAX_GUEST_CID);
    }

    #[test]
    fn rejects_bad_input_with_named_problem() {
        for cid in ["0", "1", "2", "4294967295", "-3", "abc"] {
            assert!(
                matches!(
                    format!("cid={cid},path=/tmp/s").parse::<VsockConfig>(),
                    Err(VsockConfigError::InvalidCid(_))
                ),
                "{cid}"
            );
        }
        assert!(matches!(
            "cid=3".parse::<VsockConfig>(),
            Err(VsockConfigError::Flag(KeyValueError::MissingKey {
                key: "path",
                ..
            }))
        ));
        assert!(matches!(
            "path=/tmp/s".parse::<VsockConfig>(),
            Err(VsockConfigError::Flag(KeyValueError::MissingKey {
                key: "cid",
                ..
            }))
        ));
        assert_eq!(
            "cid=3,path=/a,port=5".parse::<VsockConfig>(),
            Err(VsockConfigError::Flag(KeyValueError::UnknownKey {
                flag: "--vsock",
                key: "port".into(),
                known: VSOCK_FLAG.keys
            }))
        );
        assert_eq!(
            "cid=3,cid=4,path=/a".parse::<VsockConfig>(),
            Err(VsockConfigError::Flag(KeyValueError::DuplicateKey {
                flag: "--vsock",
                key: "cid"
            }))
        );
        let long = format!("cid=3,path=/{}", "x".repeat(MAX_PATH_LEN));
        assert!(matches!(
            long.parse::<VsockConfig>(),
            Err(VsockConfigError::InvalidPath(_))
        ));
        assert!(matches!(
            "cid=3,path=".parse::<VsockConfig>(),
            Err(VsockConfigError::InvalidPath(_))
        ));
    }

    #[test]
    fn config_file_form() {
        let c: VsockConfig = serde_json::from_str(r#"{"cid":7,"path":"/tmp/v.sock"}"#).unwrap();
        assert_eq!(c.cid, 7);
        assert!(serde_json::from_str::<VsockConfig>(r#"{"cid":7}"#).is_err());
    }
}
