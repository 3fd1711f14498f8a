//! Shim options: how containerd's runtime configuration reaches the shim, and which
//! isolation a sandbox gets.
//!
//! containerd hands a non-runc runtime its options as `runtimeoptions.v1.Options`
//! (`TypeUrl`, `ConfigPath`, `ConfigBody`), both from the CRI runtime handler's `options`
//! table and from `ctr run --runtime-config-path`. The shim reads `ConfigBody`, else the
//! file named by `ConfigPath`, as TOML:
//!
//! ```toml
//! isolation = "native"               # or "vm" (the default)
//! allow_isolation_annotation = true  # may a pod pick its isolation with io.sandbox.isolation?
//! allow_slow_kvm = false             # run vm isolation on a KVM that cannot be identified
//! root = "/run/sandbox-shim"         # per-sandbox state (agent socket, logs)
//! image_store = "/var/lib/sandbox/images"
//! ```
//!
//! `allow_slow_kvm` never lets vm isolation start on kvm-pvm or without KVM, where no guest
//! can run. `SANDBOX_ALLOW_SLOW_KVM=1` in the shim's environment allows the same.
//!
//! The annotation `io.sandbox.isolation` on a sandbox's first container overrides the
//! configured isolation unless `allow_isolation_annotation = false`.

use std::collections::HashMap;
use std::path::PathBuf;

use serde::Deserialize;

use crate::state::Isolation;

use super::error::{Result, ShimError};

pub const ISOLATION_ANNOTATION: &str = "io.sandbox.isolation";
pub const RUNTIME_OPTIONS_TYPE: &str = "runtimeoptions.v1.Options";
pub const DEFAULT_ROOT: &str = "/run/sandbox-shim";
pub const ROOT_ENV: &str = "SANDBOX_SHIM_ROOT";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShimOptions {
    pub isolation: Isolation,
    pub allow_isolation_annotation: bool,
    pub allow_slow_kvm: bool,
    pub root: PathBuf,
    pub image_store: PathBuf,
}

impl Default for ShimOptions {
    fn default() -> Self {
        ShimOptions {
            isolation: Isolation::Vm,
            allow_isolation_annotation: true,
            allow_slow_kvm: false,
            root: std::env::var_os(ROOT_ENV)
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(DEFAULT_ROOT)),
            image_store: PathBuf::from("/var/lib/sandbox/images"),
        }
    }
}

impl ShimOptions {
    /// Options from containerd's runtime options (`type_url`, `value` of the Any), if any.
    pub fn from_runtime_options(type_url: &str, value: &[u8]) -> Result<ShimOptions> {
        let mut opts = ShimOptions::default();
        if type_url.is_empty() && value.is_empty() {
            return Ok(opts);
        }
        let name = type_url.rsplit('/').next().unwrap_or_default();
        if name != RUNTIME_OPTIONS_TYPE {
            return Err(ShimError::Options(format!(
                "runtime options of type {type_url:?}: expected {RUNTIME_OPTIONS_TYPE} \
                 (ConfigPath / ConfigBody)"
            )));
        }
        let ro = RuntimeOptions::decode(value)?;
        let text = if !ro.config_body.is_empty() {
            String::from_utf8(ro.config_body)
                .map_err(|_| ShimError::Options("ConfigBody is not UTF-8 text".into()))?
        } else if !ro.config_path.is_empty() {
            std::fs::read_to_string(&ro.config_path).map_err(|e| {
                ShimError::Options(format!("cannot read ConfigPath {}: {e}", ro.config_path))
            })?
        } else {
            return Ok(opts);
        };
        opts.apply_config(&text)?;
        Ok(opts)
    }

    /// Applies an options file (TOML); unknown keys and malformed values are errors naming
    /// the line.
    pub fn apply_config(&mut self, text: &str) -> Result<()> {
        let file: OptionsFile = toml::from_str(text).map_err(|e| {
            let line = e
                .span()
                .map(|span| text[..span.start.min(text.len())].matches('\n').count() + 1);
            let at = line.map(|n| format!("line {n}: ")).unwrap_or_default();
            ShimError::Options(format!("{at}{}", e.message().trim_end()))
        })?;
        if let Some(isolation) = file.isolation {
            self.isolation = isolation;
        }
        if let Some(allow) = file.allow_isolation_annotation {
            self.allow_isolation_annotation = allow;
        }
        if let Some(allow) = file.allow_slow_kvm {
            self.allow_slow_kvm = allow;
        }
        if let Some(root) = file.root {
            self.root = root;
        }
        if let Some(store) = file.image_store {
            self.image_store = store;
        }
        if !self.root.is_absolute() {
            return Err(ShimError::Options(format!(
                "root {} is not an absolute path",
                self.root.display()
            )));
        }
        Ok(())
    }

    /// The isolation of a new sandbox whose first container carries `annotations`.
    pub fn isolation_for(&self, annotations: &HashMap<String, String>) -> Result<Isolation> {
        match annotations.get(ISOLATION_ANNOTATION) {
            None => Ok(self.isolation),
            Some(v) => {
                let wanted = parse_isolation(v).map_err(|e| {
                    ShimError::Options(format!("annotation {ISOLATION_ANNOTATION}: {e}"))
                })?;
                if wanted != self.isolation && !self.allow_isolation_annotation {
                    return Err(ShimError::Options(format!(
                        "annotation {ISOLATION_ANNOTATION}={v} is not allowed: this runtime \
                         is configured for {} isolation with allow_isolation_annotation = false",
                        self.isolation
                    )));
                }
                Ok(wanted)
            }
        }
    }
}

/// The options file, as the keys of the module comment.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OptionsFile {
    #[serde(default, deserialize_with = "isolation_value")]
    isolation: Option<Isolation>,
    allow_isolation_annotation: Option<bool>,
    allow_slow_kvm: Option<bool>,
    root: Option<PathBuf>,
    image_store: Option<PathBuf>,
}

fn isolation_value<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<Option<Isolation>, D::Error> {
    let name = String::deserialize(d)?;
    parse_isolation(&name)
        .map(Some)
        .map_err(serde::de::Error::custom)
}

fn parse_isolation(v: &str) -> std::result::Result<Isolation, String> {
    match v {
        "vm" => Ok(Isolation::Vm),
        "native" => Ok(Isolation::Native),
        _ => Err(format!("isolation {v:?}: expected \"vm\" or \"native\"")),
    }
}

/// `runtimeoptions.v1.Options`: field 1 type_url, 2 config_path (strings), 3 config_body
/// (bytes). Decoded by hand: it is the only message of that package the shim reads.
#[derive(Debug, Default, PartialEq, Eq)]
struct RuntimeOptions {
    type_url: String,
    config_path: String,
    config_body: Vec<u8>,
}

impl RuntimeOptions {
    fn decode(mut buf: &[u8]) -> Result<RuntimeOptions> {
        let bad = |why: &str| ShimError::Options(format!("runtime options: {why}"));
        let mut out = RuntimeOptions::default();
        while !buf.is_empty() {
            let tag = read_varint(&mut buf).ok_or_else(|| bad("truncated tag"))?;
            let (field, wire) = (tag >> 3, tag & 7);
            match wire {
                0 => {
                    read_varint(&mut buf).ok_or_else(|| bad("truncated varint"))?;
                }
                1 | 5 => {
                    let n = if wire == 1 { 8 } else { 4 };
                    if buf.len() < n {
                        return Err(bad("truncated fixed field"));
                    }
                    buf = &buf[n..];
                }
                2 => {
                    let len = read_varint(&mut buf).ok_or_else(|| bad("truncated length"))?;
                    let len = usize::try_from(len).map_err(|_| bad("length too large"))?;
                    if buf.len() < len {
                        return Err(bad("field runs past the end"));
                    }
                    let (data, rest) = buf.split_at(len);
                    buf = rest;
                    let text =
                        || String::from_utf8(data.to_vec()).map_err(|_| bad("string is not UTF-8"));
                    match field {
                        1 => out.type_url = text()?,
                        2 => out.config_path = text()?,
                        3 => out.config_body = data.to_vec(),
                        _ => {}
                    }
                }
                _ => return Err(bad("unsupported wire type")),
            }
        }
        Ok(out)
    }
}

fn read_varint(buf: &mut &[u8]) -> Option<u64> {
    let mut v: u64 = 0;
    for i in 0..10 {
        let (&b, rest) = buf.split_first()?;
        *buf = rest;
        v |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(n: u8, data: &[u8]) -> Vec<u8> {
        let mut v = vec![(n << 3) | 2, data.len() as u8];
        v.extend_from_slice(data);
        v
    }

    #[test]
    fn config_body_selects_isolation() {
        let mut msg = field(1, b"x");
        msg.extend(field(
            3,
            b"isolation = \"native\" # comment\nallow_slow_kvm = true\n",
        ));
        let o = ShimOptions::from_runtime_options(RUNTIME_OPTIONS_TYPE, &msg).unwrap();
        assert_eq!(o.isolation, Isolation::Native);
        assert!(o.allow_slow_kvm);
    }

    #[test]
    fn config_path_is_read() {
        let p = std::env::temp_dir().join(format!("shim-opts-{}.toml", std::process::id()));
        std::fs::write(&p, "isolation = \"native\"\nroot = \"/tmp/x\"\n").unwrap();
        let msg = field(2, p.to_str().unwrap().as_bytes());
        let o = ShimOptions::from_runtime_options(
            "type.googleapis.com/runtimeoptions.v1.Options",
            &msg,
        )
        .unwrap();
        std::fs::remove_file(&p).unwrap();
        assert_eq!(o.isolation, Isolation::Native);
        assert_eq!(o.root, PathBuf::from("/tmp/x"));
    }

    #[test]
    fn bad_options_name_the_problem() {
        let err = ShimOptions::default()
            .apply_config("isolation = \"kvm\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 1") && err.contains("kvm"), "{err}");
        let err = ShimOptions::default()
            .apply_config("\n\nspeed = 3")
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 3") && err.contains("speed"), "{err}");
        let err = ShimOptions::default()
            .apply_config("root = \"/run/x\"\nallow_slow_kvm = \"yes\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 2") && err.contains("bool"), "{err}");
        assert!(!err.contains('\n'), "one line for containerd's log: {err}");
        let err = ShimOptions::from_runtime_options("containerd.runc.v1.Options", b"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("runtimeoptions.v1.Options"), "{err}");
        assert!(ShimOptions::from_runtime_options(RUNTIME_OPTIONS_TYPE, &[0x12, 0x09]).is_err());
        let missing = field(2, b"/nonexistent/shim.toml");
        let err = ShimOptions::from_runtime_options(RUNTIME_OPTIONS_TYPE, &missing)
            .unwrap_err()
            .to_string();
        assert!(err.contains("/nonexistent/shim.toml"), "{err}");
    }

    #[test]
    fn annotation_overrides_unless_locked() {
        let mut a = HashMap::new();
        a.insert(ISOLATION_ANNOTATION.to_string(), "native".to_string());
        let mut o = ShimOptions::default();
        assert_eq!(o.isolation_for(&a).unwrap(), Isolation::Native);
        assert_eq!(o.isolation_for(&HashMap::new()).unwrap(), Isolation::Vm);
        o.allow_isolation_annotation = false;
        assert!(o.isolation_for(&a).is_err());
        a.insert(ISOLATION_ANNOTATION.to_string(), "bogus".to_string());
        o.allow_isolation_annotation = true;
        assert!(o.isolation_for(&a).is_err());
    }
}
