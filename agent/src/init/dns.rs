//! /etc/resolv.conf from the runtime's DNS settings.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use crate::protocol::DnsConfig;

#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    #[error("dns.{field}: {value:?} contains whitespace or a control character")]
    BadEntry { field: &'static str, value: String },
    #[error("write {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

fn check(field: &'static str, values: &[String]) -> Result<(), DnsError> {
    match values
        .iter()
        .find(|v| v.is_empty() || v.chars().any(|c| c.is_whitespace() || c.is_control()))
    {
        Some(v) => Err(DnsError::BadEntry {
            field,
            value: v.clone(),
        }),
        None => Ok(()),
    }
}

/// The file's text. Entries are checked so that a value cannot inject extra lines.
pub fn render(dns: &DnsConfig) -> Result<String, DnsError> {
    check("search", &dns.search)?;
    check("options", &dns.options)?;
    let mut out = String::new();
    for ns in &dns.nameservers {
        out.push_str(&format!("nameserver {ns}\n"));
    }
    if !dns.search.is_empty() {
        out.push_str(&format!("search {}\n", dns.search.join(" ")));
    }
    if !dns.options.is_empty() {
        out.push_str(&format!("options {}\n", dns.options.join(" ")));
    }
    Ok(out)
}

/// Writes `<root>/etc/resolv.conf` atomically (a temporary file renamed over it).
pub fn write_resolv_conf(root: &Path, dns: &DnsConfig) -> Result<(), DnsError> {
    let text = render(dns)?;
    let etc = root.join("etc");
    let path = etc.join("resolv.conf");
    let tmp = etc.join(".resolv.conf.tmp");
    let wrap = |source| DnsError::Write {
        path: path.clone(),
        source,
    };
    fs::create_dir_all(&etc).map_err(wrap)?;
    fs::write(&tmp, text).map_err(wrap)?;
    fs::rename(&tmp, &path).map_err(wrap)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_and_writes() {
        let dns = DnsConfig {
            nameservers: vec!["10.0.0.1".parse().unwrap(), "fd00::53".parse().unwrap()],
            search: vec!["example.com".into(), "svc.local".into()],
            options: vec!["ndots:5".into()],
        };
        let text = render(&dns).unwrap();
        assert_eq!(
            text,
            "nameserver 10.0.0.1\nnameserver fd00::53\nsearch example.com svc.local\noptions ndots:5\n"
        );
        let dir = std::env::temp_dir().join(format!("agent-dns-{}", std::process::id()));
        write_resolv_conf(&dir, &dns).unwrap();
        assert_eq!(
            fs::read_to_string(dir.join("etc/resolv.conf")).unwrap(),
            text
        );
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn refuses_injected_lines() {
        let dns = DnsConfig {
            search: vec!["a.com\nnameserver 6.6.6.6".into()],
            ..Default::default()
        };
        let err = render(&dns).unwrap_err();
        assert!(err.to_string().starts_with("dns.search:"), "{err}");
    }
}
