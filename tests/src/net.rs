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

    /// Runs `f` on a thread of its own inside the host-side namespace.
    pub fn on_host_side<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> std::thread::JoinHandle<T> {
        let ns = std::fs::File::open(PathBuf::from("/var/run/netns").join(&self.host_ns))
            .expect("open the host-side namespace");
        std::thread::spawn(move || {
            nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)
                .expect("enter the host-side namespace");
            f()
        })
    }

    /// An HTTP server on the host side that answers one GET with `body`, then stops.
    pub fn serve_once(&self, port: u16, body: &'static str) -> std::thread::JoinHandle<()> {
        let addr = format!("{}:{port}", self.host_addr);
        let (bound, listening) = std::sync::mpsc::channel();
        let server = self.on_host_side(move || {
            let listener = std::net::TcpListener::bind(&addr).expect("bind on the host side");
            bound.send(()).unwrap();
            let (mut conn, _) = listener.accept().expect("accept on the host side");
            read_request(&mut conn);
            let reply = format!(
                "HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
            std::io::Write::write_all(&mut conn, reply.as_bytes()).unwrap();
        });
        listening
            .recv()
            .expect("the host-side server did not start");
        server
    }

    /// GETs `http://addr:port/` from the host side: the body, or why not.
    pub fn get_from_host_side(&self, addr: &str, port: u16) -> Result<String, String> {
        let target = format!("{addr}:{port}");
        self.on_host_side(move || -> Result<String, String> {
            use std::io::{Read, Write};
            let sock: std::net::SocketAddr = target.parse().map_err(|e| format!("{e}"))?;
            let timeout = std::time::Duration::from_secs(10);
            let mut conn = std::net::TcpStream::connect_timeout(&sock, timeout)
                .map_err(|e| format!("connect {target}: {e}"))?;
            conn.set_read_timeout(Some(timeout))
                .map_err(|e| e.to_string())?;
            conn.write_all(b"GET / HTTP/1.0\r\n\r\n")
                .map_err(|e| format!("send to {target}: {e}"))?;
            let mut reply = String::new();
            conn.read_to_string(&mut reply)
                .map_err(|e| format!("read from {target}: {e}"))?;
            let (head, body) = reply
                .split_once("\r\n\r\n")
                .ok_or_else(|| format!("{target} sent no HTTP reply: {reply:?}"))?;
            if !head.starts_with("HTTP/1.") || !head.contains(" 200 ") {
                return Err(format!("{target} answered {head:?}"));
            }
            Ok(body.to_string())
        })
        .join()
        .expect("the host-side client panicked")
    }

    /// Fails if anything but loopback and the veth is left in the container's namespace (a
    /// TAP the runtime put there, say).
    pub fn assert_only_the_veth_left(&self) {
        let links = self.container_links();
        assert!(
            links.iter().all(|l| l == "lo" || l.starts_with("vc")),
            "links left in the container's namespace: {links:?}"
        );
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

/// Reads an HTTP request's head (up to the blank line), bounded in size and time.
fn read_request(conn: &mut std::net::TcpStream) {
    use std::io::Read;
    let _ = conn.set_read_timeout(Some(std::time::Duration::from_secs(30)));
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while head.len() < 8192 && !head.ends_with(b"\r\n\r\n") {
        match conn.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => return,
        }
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
