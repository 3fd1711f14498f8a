//! A private network for a test: two network namespaces joined by a veth pair, one standing
//! for the host side (a server or client of the test's) and one given to the container, as a
//! CNI plugin would prepare it. Both are deleted when the value is dropped, and the veth with
//! them.

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

pub struct TestNet {
    pub host_ns: String,
    pub container_ns: String,
    pub host_addr: &'static str,
    pub container_addr: &'static str,
}

fn ip(args: &[&str]) -> Output {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run ip (iproute2)");
    assert!(
        out.status.success(),
        "ip {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

impl TestNet {
    pub fn new(tag: &str) -> TestNet {
        let pid = std::process::id();
        let net = TestNet {
            host_ns: format!("sbxh-{tag}-{pid}"),
            container_ns: format!("sbxc-{tag}-{pid}"),
            host_addr: "10.77.0.1",
            container_addr: "10.77.0.2",
        };
        let (vh, vc) = (format!("vh{pid}"), format!("vc{pid}"));
        ip(&["netns", "add", &net.host_ns]);
        ip(&["netns", "add", &net.container_ns]);
        ip(&["link", "add", &vh, "type", "veth", "peer", "name", &vc]);
        ip(&["link", "set", &vh, "netns", &net.host_ns]);
        ip(&["link", "set", &vc, "netns", &net.container_ns]);
        for (ns, dev, addr) in [
            (&net.host_ns, &vh, net.host_addr),
            (&net.container_ns, &vc, net.container_addr),
        ] {
            ip(&["-n", ns, "addr", "add", &format!("{addr}/24"), "dev", dev]);
            ip(&["-n", ns, "link", "set", dev, "up"]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
        }
        net
    }

    /// The container's namespace as `--network` and OCI specs name it.
    pub fn container_ns_path(&self) -> PathBuf {
        PathBuf::from("/var/run/netns").join(&self.container_ns)
    }

    /// A command run inside the host-side namespace.
    pub fn on_host_side(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.host_ns, program]);
        c
    }

    /// The names of the links in the container's namespace.
    pub fn container_links(&self) -> Vec<String> {
        let out = ip(&["-n", &self.container_ns, "-o", "link", "show"]);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split(':').nth(1))
            .map(|n| n.trim().split('@').next().unwrap_or("").to_string())
            .collect()
    }
}

impl Drop for TestNet {
    fn drop(&mut self) {
        for ns in [&self.host_ns, &self.container_ns] {
            let _ = Command::new("ip")
                .args(["netns", "del", ns])
                .stderr(Stdio::null())
                .status();
        }
    }
}
