//! Networking for vm isolation, the way Kata's tc-filter mode does it: the network namespace
//! that CNI (or the user) prepared keeps its veth; the runtime adds a TAP beside it and joins
//! the two with tc ingress redirects in both directions, so every frame the veth receives goes
//! to the VM and back. The VMM runs inside that namespace to open the TAP, and the agent gives
//! the guest's eth0 the veth's MAC, addresses and routes.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use agent::protocol::{InterfaceConfig, IpCidr, RouteConfig};
use serde_json::Value;

use crate::error::{Error, Result};
use crate::state::TapRecord;

/// What the guest's NIC must look like, and the TAP that carries it.
#[derive(Clone, Debug)]
pub struct GuestNic {
    pub tap: String,
    pub veth: String,
    pub mac: String,
    pub interface: InterfaceConfig,
    pub routes: Vec<RouteConfig>,
}

/// Runs `cmd args` inside the network namespace at `netns`.
fn in_netns(netns: &Path, args: &[&str]) -> Result<String> {
    let out = Command::new("nsenter")
        .arg(format!("--net={}", netns.display()))
        .arg("--")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| Error::Other(format!("cannot run nsenter: {e}")))?;
    if !out.status.success() {
        return Err(Error::Other(format!(
            "in network namespace {}: `{}` failed: {}",
            netns.display(),
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Finds the namespace's ethernet interface and puts a TAP named `tap` behind it.
pub fn prepare(netns: &Path, tap: &str) -> Result<GuestNic> {
    let links: Value = serde_json::from_str(&in_netns(netns, &["ip", "-j", "addr", "show"])?)
        .map_err(|e| Error::Other(format!("ip -j addr: {e}")))?;
    let veth = links
        .as_array()
        .into_iter()
        .flatten()
        .find(|l| l["link_type"] == "ether" && l["ifname"].as_str() != Some(tap))
        .ok_or_else(|| {
            Error::Other(format!(
                "network namespace {} has no ethernet interface to give the VM",
                netns.display()
            ))
        })?;
    let name = veth["ifname"].as_str().unwrap_or_default().to_string();
    let mac = veth["address"].as_str().unwrap_or_default().to_string();
    let mtu = veth["mtu"].as_u64().map(|m| m as u32);
    let mut addresses = Vec::new();
    for a in veth["addr_info"].as_array().into_iter().flatten() {
        // Link-local IPv6 addresses belong to the link, and the guest makes its own.
        if a["scope"] != "global" {
            continue;
        }
        if let (Some(local), Some(len)) = (a["local"].as_str(), a["prefixlen"].as_u64()) {
            if let Ok(c) = format!("{local}/{len}").parse::<IpCidr>() {
                addresses.push(c);
            }
        }
    }
    let mut routes = Vec::new();
    for family in ["-4", "-6"] {
        let text = in_netns(netns, &["ip", "-j", family, "route", "show"])?;
        let list: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        for r in list.as_array().into_iter().flatten() {
            if r["dev"].as_str() != Some(name.as_str()) || r["protocol"] == "kernel" {
                continue;
            }
            let destination = match r["dst"].as_str() {
                Some("default") | None => None,
                Some(d) => d.parse::<IpCidr>().ok(),
            };
            let gateway = r["gateway"].as_str().and_then(|g| g.parse().ok());
            if destination.is_none() && gateway.is_none() {
                continue;
            }
            routes.push(RouteConfig {
                destination,
                gateway,
                device: Some("eth0".into()),
                metric: r["metric"].as_u64().map(|m| m as u32),
            });
        }
    }

    in_netns(netns, &["ip", "tuntap", "add", "dev", tap, "mode", "tap"])?;
    let wired = (|| -> Result<()> {
        if let Some(mtu) = mtu {
            in_netns(
                netns,
                &["ip", "link", "set", "dev", tap, "mtu", &mtu.to_string()],
            )?;
        }
        in_netns(netns, &["ip", "link", "set", "dev", tap, "up"])?;
        for (from, to) in [(name.as_str(), tap), (tap, name.as_str())] {
            in_netns(netns, &["tc", "qdisc", "add", "dev", from, "ingress"])?;
            in_netns(
                netns,
                &[
                    "tc", "filter", "add", "dev", from, "parent", "ffff:", "protocol", "all",
                    "u32", "match", "u8", "0", "0", "action", "mirred", "egress", "redirect",
                    "dev", to,
                ],
            )?;
        }
        Ok(())
    })();
    if let Err(e) = wired {
        release(&TapRecord {
            name: tap.to_string(),
            netns: Some(netns.to_path_buf()),
            veth: Some(name.clone()),
        });
        return Err(e);
    }
    Ok(GuestNic {
        tap: tap.to_string(),
        veth: name,
        mac: mac.clone(),
        interface: InterfaceConfig {
            name: "eth0".into(),
            mac: Some(mac),
            mtu,
            addresses,
        },
        routes,
    })
}

/// Removes the TAP and the veth's redirect; the namespace and veth stay (they are CNI's).
pub fn release(tap: &TapRecord) {
    let run = |args: &[&str]| match &tap.netns {
        Some(ns) => {
            let _ = in_netns(ns, args);
        }
        None => {
            let _ = Command::new(args[0])
                .args(&args[1..])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    };
    if let Some(veth) = &tap.veth {
        run(&["tc", "qdisc", "del", "dev", veth, "ingress"]);
    }
    run(&["ip", "link", "del", "dev", &tap.name]);
}

/// The network namespace path the spec names, if any (`linux.namespaces[type=network].path`).
pub fn spec_netns(spec: &oci_spec::runtime::Spec) -> Option<PathBuf> {
    spec.linux()
        .as_ref()?
        .namespaces()
        .as_ref()?
        .iter()
        .find(|n| n.typ() == oci_spec::runtime::LinuxNamespaceType::Network)
        .and_then(|n| n.path().clone())
}

/// A TAP name unique to the container (IFNAMSIZ allows 15 characters).
pub fn tap_name(id: &str) -> String {
    use sha2::Digest;
    let h = sha2::Sha256::digest(id.as_bytes());
    format!("sbx{}", crate::image::tree_hash::hex(&h[..5]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(args: &[&str]) -> bool {
        Command::new(args[0])
            .args(&args[1..])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    }

    /// Builds a namespace as CNI would (veth with an address and a default route), wires a TAP
    /// behind it, checks what the guest would be told and the redirects, then releases it.
    #[test]
    fn tap_behind_a_cni_style_veth() {
        if !nix::unistd::geteuid().is_root() || !Path::new("/dev/net/tun").exists() {
            let _ = std::io::Write::write_all(
                &mut std::io::stderr(),
                b"SKIP tap_behind_a_cni_style_veth: needs root and /dev/net/tun\n",
            );
            return;
        }
        let ns = format!("sbxnet{}", std::process::id());
        let path = PathBuf::from("/var/run/netns").join(&ns);
        let host_if = format!("vh{}", std::process::id() % 100000);
        assert!(sh(&["ip", "netns", "add", &ns]));
        let setup = sh(&[
            "ip", "link", "add", &host_if, "type", "veth", "peer", "name", "eth0", "netns", &ns,
        ]) && sh(&[
            "ip",
            "-n",
            &ns,
            "link",
            "set",
            "eth0",
            "address",
            "02:11:22:33:44:55",
        ]) && sh(&[
            "ip",
            "-n",
            &ns,
            "addr",
            "add",
            "10.77.0.2/24",
            "dev",
            "eth0",
        ]) && sh(&["ip", "-n", &ns, "link", "set", "eth0", "up"])
            && sh(&[
                "ip",
                "-n",
                &ns,
                "route",
                "add",
                "default",
                "via",
                "10.77.0.1",
            ]);
        let result = std::panic::catch_unwind(|| {
            assert!(setup, "could not build the test namespace");
            let tap = tap_name("net-test");
            assert!(tap.len() <= 15);
            let nic = prepare(&path, &tap).unwrap();
            assert_eq!(nic.veth, "eth0");
            assert_eq!(nic.interface.mac.as_deref(), Some("02:11:22:33:44:55"));
            assert_eq!(nic.interface.addresses[0].to_string(), "10.77.0.2/24");
            assert_eq!(nic.routes.len(), 1);
            assert_eq!(nic.routes[0].gateway.unwrap().to_string(), "10.77.0.1");
            let links = in_netns(&path, &["ip", "link", "show", "dev", &tap]).unwrap();
            assert!(links.contains(&tap));
            let filters =
                in_netns(&path, &["tc", "filter", "show", "dev", "eth0", "ingress"]).unwrap();
            assert!(filters.contains(&tap), "no redirect to the TAP: {filters}");
            let back = in_netns(&path, &["tc", "filter", "show", "dev", &tap, "ingress"]).unwrap();
            assert!(
                back.contains("eth0"),
                "no redirect back to the veth: {back}"
            );
            release(&TapRecord {
                name: tap.clone(),
                netns: Some(path.clone()),
                veth: Some("eth0".into()),
            });
            assert!(in_netns(&path, &["ip", "link", "show", "dev", &tap]).is_err());
            let qdiscs = in_netns(&path, &["tc", "qdisc", "show", "dev", "eth0"]).unwrap();
            assert!(!qdiscs.contains("ingress"), "{qdiscs}");
            // A namespace without an ethernet interface is refused clearly.
            assert!(sh(&["ip", "-n", &ns, "link", "del", "eth0"]));
            let err = prepare(&path, &tap).unwrap_err().to_string();
            assert!(err.contains("no ethernet interface"), "{err}");
        });
        let _ = sh(&["ip", "link", "del", &host_if]);
        assert!(sh(&["ip", "netns", "del", &ns]));
        if let Err(p) = result {
            std::panic::resume_unwind(p);
        }
    }
}
