//! A minimal rtnetlink client: just the messages PID 1 needs to bring up a guest's network
//! (look up a link, set it up with an MTU, add addresses and routes).
//!
//! Messages are built by hand from the layouts in `linux/netlink.h`, `linux/rtnetlink.h`,
//! `linux/if_link.h` and `linux/if_addr.h`; every request asks for an acknowledgement so that
//! each failure reaches the caller with the kernel's errno.

use std::io;
use std::net::IpAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

const NLMSG_HDR_LEN: usize = 16;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;

const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_REPLACE: u16 = 0x100;
const NLM_F_CREATE: u16 = 0x400;

const RTM_NEWLINK: u16 = 16;
const RTM_GETLINK: u16 = 18;
const RTM_NEWADDR: u16 = 20;
const RTM_NEWROUTE: u16 = 24;

const IFLA_ADDRESS: u16 = 1;
const IFLA_IFNAME: u16 = 3;
const IFLA_MTU: u16 = 4;

const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
/// `IFA_F_NODAD`: a guest's addresses are assigned by the runtime, so duplicate address
/// detection would only delay IPv6 by a second or two.
const IFA_F_NODAD: u8 = 0x02;

const RTA_DST: u16 = 1;
const RTA_OIF: u16 = 4;
const RTA_GATEWAY: u16 = 5;
const RTA_PRIORITY: u16 = 6;

const RT_TABLE_MAIN: u8 = 254;
const RTPROT_BOOT: u8 = 3;
const RT_SCOPE_UNIVERSE: u8 = 0;
const RT_SCOPE_LINK: u8 = 253;
const RTN_UNICAST: u8 = 1;

/// What the kernel reported about a link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkInfo {
    pub index: u32,
    pub mac: Option<Vec<u8>>,
    pub mtu: Option<u32>,
}

/// A route to add, with the device already resolved to an index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteSpec {
    /// Destination and prefix length; `None` is the default route.
    pub destination: Option<(IpAddr, u8)>,
    pub gateway: Option<IpAddr>,
    pub oif: Option<u32>,
    pub metric: Option<u32>,
    /// Address family of the route, taken from the destination or the gateway.
    pub ipv6: bool,
}

/// An open NETLINK_ROUTE socket.
#[derive(Debug)]
pub struct Netlink {
    fd: OwnedFd,
    seq: u32,
}

/// Appends a netlink attribute, padded to 4 bytes.
fn push_attr(buf: &mut Vec<u8>, kind: u16, data: &[u8]) {
    let len = 4 + data.len();
    buf.extend_from_slice(&(len as u16).to_ne_bytes());
    buf.extend_from_slice(&kind.to_ne_bytes());
    buf.extend_from_slice(data);
    buf.resize(align4(buf.len()), 0);
}

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

fn ip_bytes(addr: &IpAddr) -> Vec<u8> {
    match addr {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

fn family(addr: &IpAddr) -> u8 {
    if addr.is_ipv4() {
        libc::AF_INET as u8
    } else {
        libc::AF_INET6 as u8
    }
}

/// Iterates over the (type, payload) attributes in `buf`.
fn attrs(mut buf: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        if buf.len() < 4 {
            return None;
        }
        let len = u16::from_ne_bytes([buf[0], buf[1]]) as usize;
        let kind = u16::from_ne_bytes([buf[2], buf[3]]) & 0x3fff;
        if len < 4 || len > buf.len() {
            return None;
        }
        let data = &buf[4..len];
        buf = &buf[align4(len).min(buf.len())..];
        Some((kind, data))
    })
}

impl Netlink {
    /// Opens a route netlink socket in the calling thread's network namespace.
    pub fn open() -> io::Result<Self> {
        // SAFETY: plain socket(2) call; the result is checked before use.
        let raw = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_ROUTE,
            )
        };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a fresh descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: an all-zero sockaddr_nl is valid (pid 0: the kernel assigns one).
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        // SAFETY: `addr` is a valid sockaddr_nl of the size passed.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                &addr as *const libc::sockaddr_nl as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Netlink { fd, seq: 0 })
    }

    /// Sends one request with `NLM_F_ACK` and returns the payloads of the messages that came
    /// back before the acknowledgement.
    fn request(&mut self, kind: u16, flags: u16, payload: &[u8]) -> io::Result<Vec<Vec<u8>>> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let mut msg = Vec::with_capacity(NLMSG_HDR_LEN + payload.len());
        msg.extend_from_slice(&((NLMSG_HDR_LEN + payload.len()) as u32).to_ne_bytes());
        msg.extend_from_slice(&kind.to_ne_bytes());
        msg.extend_from_slice(&(flags | NLM_F_REQUEST | NLM_F_ACK).to_ne_bytes());
        msg.extend_from_slice(&seq.to_ne_bytes());
        msg.extend_from_slice(&0u32.to_ne_bytes());
        msg.extend_from_slice(payload);
        // SAFETY: sends `msg.len()` bytes from a live buffer to the kernel (default dest).
        let sent = unsafe {
            libc::send(
                self.fd.as_raw_fd(),
                msg.as_ptr() as *const libc::c_void,
                msg.len(),
                0,
            )
        };
        if sent < 0 {
            return Err(io::Error::last_os_error());
        }

        let mut replies = Vec::new();
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            // SAFETY: receives into a live buffer of the given length.
            let n = unsafe {
                libc::recv(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr() as *mut libc::c_void,
                    buf.len(),
                    0,
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            let mut rest = &buf[..n as usize];
            while rest.len() >= NLMSG_HDR_LEN {
                let len = u32::from_ne_bytes(rest[0..4].try_into().unwrap()) as usize;
                let msg_type = u16::from_ne_bytes([rest[4], rest[5]]);
                let msg_seq = u32::from_ne_bytes(rest[8..12].try_into().unwrap());
                if len < NLMSG_HDR_LEN || len > rest.len() {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "truncated netlink message",
                    ));
                }
                let body = &rest[NLMSG_HDR_LEN..len];
                rest = &rest[align4(len).min(rest.len())..];
                if msg_seq != seq {
                    continue;
                }
                match msg_type {
                    NLMSG_ERROR => {
                        if body.len() < 4 {
                            return Err(io::Error::new(
                                io::ErrorKind::InvalidData,
                                "short netlink error message",
                            ));
                        }
                        let errno = i32::from_ne_bytes(body[0..4].try_into().unwrap());
                        return if errno == 0 {
                            Ok(replies)
                        } else {
                            Err(io::Error::from_raw_os_error(-errno))
                        };
                    }
                    NLMSG_DONE => return Ok(replies),
                    _ => replies.push(body.to_vec()),
                }
            }
        }
    }

    /// Looks a link up by name.
    pub fn link_by_name(&mut self, name: &str) -> io::Result<LinkInfo> {
        if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.contains('\0') {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{name:?} is not a valid interface name"),
            ));
        }
        let mut payload = vec![0u8; 16]; // struct ifinfomsg, family AF_UNSPEC
        let mut cname = name.as_bytes().to_vec();
        cname.push(0);
        push_attr(&mut payload, IFLA_IFNAME, &cname);
        let replies = self.request(RTM_GETLINK, 0, &payload)?;
        let body = replies.first().filter(|b| b.len() >= 16).ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidData, "no link in RTM_GETLINK reply")
        })?;
        let index = i32::from_ne_bytes(body[4..8].try_into().unwrap()) as u32;
        let mut info = LinkInfo {
            index,
            mac: None,
            mtu: None,
        };
        for (kind, data) in attrs(&body[16..]) {
            match kind {
                IFLA_ADDRESS => info.mac = Some(data.to_vec()),
                IFLA_MTU if data.len() == 4 => {
                    info.mtu = Some(u32::from_ne_bytes(data.try_into().unwrap()))
                }
                _ => {}
            }
        }
        Ok(info)
    }

    /// Sets a link up, with a new MTU when given.
    pub fn set_link_up(&mut self, index: u32, mtu: Option<u32>) -> io::Result<()> {
        let mut payload = Vec::with_capacity(32);
        payload.push(libc::AF_UNSPEC as u8);
        payload.push(0);
        payload.extend_from_slice(&0u16.to_ne_bytes()); // ifi_type
        payload.extend_from_slice(&(index as i32).to_ne_bytes());
        payload.extend_from_slice(&(libc::IFF_UP as u32).to_ne_bytes()); // ifi_flags
        payload.extend_from_slice(&(libc::IFF_UP as u32).to_ne_bytes()); // ifi_change
        if let Some(mtu) = mtu {
            push_attr(&mut payload, IFLA_MTU, &mtu.to_ne_bytes());
        }
        self.request(RTM_NEWLINK, 0, &payload).map(drop)
    }

    /// Adds (or replaces) an address on a link.
    pub fn add_address(&mut self, index: u32, address: IpAddr, prefix_len: u8) -> io::Result<()> {
        let mut payload = Vec::with_capacity(40);
        payload.push(family(&address));
        payload.push(prefix_len);
        payload.push(if address.is_ipv6() { IFA_F_NODAD } else { 0 });
        payload.push(RT_SCOPE_UNIVERSE);
        payload.extend_from_slice(&index.to_ne_bytes());
        let bytes = ip_bytes(&address);
        push_attr(&mut payload, IFA_LOCAL, &bytes);
        push_attr(&mut payload, IFA_ADDRESS, &bytes);
        self.request(RTM_NEWADDR, NLM_F_CREATE | NLM_F_REPLACE, &payload)
            .map(drop)
    }

    /// Adds (or replaces) a route in the main table.
    pub fn add_route(&mut self, route: &RouteSpec) -> io::Result<()> {
        let fam = if route.ipv6 {
            libc::AF_INET6 as u8
        } else {
            libc::AF_INET as u8
        };
        let dst_len = route.destination.map(|(_, len)| len).unwrap_or(0);
        let mut payload = Vec::with_capacity(64);
        payload.push(fam);
        payload.push(dst_len);
        payload.push(0); // src_len
        payload.push(0); // tos
        payload.push(RT_TABLE_MAIN);
        payload.push(RTPROT_BOOT);
        payload.push(if route.gateway.is_some() {
            RT_SCOPE_UNIVERSE
        } else {
            RT_SCOPE_LINK
        });
        payload.push(RTN_UNICAST);
        payload.extend_from_slice(&0u32.to_ne_bytes()); // rtm_flags
        if let Some((dst, _)) = &route.destination {
            push_attr(&mut payload, RTA_DST, &ip_bytes(dst));
        }
        if let Some(gw) = &route.gateway {
            push_attr(&mut payload, RTA_GATEWAY, &ip_bytes(gw));
        }
        if let Some(oif) = route.oif {
            push_attr(&mut payload, RTA_OIF, &oif.to_ne_bytes());
        }
        if let Some(metric) = route.metric {
            push_attr(&mut payload, RTA_PRIORITY, &metric.to_ne_bytes());
        }
        self.request(RTM_NEWROUTE, NLM_F_CREATE | NLM_F_REPLACE, &payload)
            .map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_are_padded_and_parse_back() {
        let mut buf = Vec::new();
        push_attr(&mut buf, IFLA_IFNAME, b"eth0\0");
        push_attr(&mut buf, IFLA_MTU, &1500u32.to_ne_bytes());
        assert_eq!(buf.len(), 12 + 8);
        let parsed: Vec<_> = attrs(&buf).collect();
        assert_eq!(parsed[0], (IFLA_IFNAME, &b"eth0\0"[..]));
        assert_eq!(parsed[1], (IFLA_MTU, &1500u32.to_ne_bytes()[..]));
    }

    #[test]
    fn malformed_attributes_stop_parsing() {
        // A length that runs past the buffer must not be trusted.
        let buf = [200u8, 0, 1, 0, 1, 2, 3, 4];
        assert_eq!(attrs(&buf).count(), 0);
        let buf = [2u8, 0, 1, 0];
        assert_eq!(attrs(&buf).count(), 0);
    }

    #[test]
    fn bad_interface_names_are_refused_before_the_kernel() {
        let mut nl = Netlink::open().unwrap();
        assert!(nl.link_by_name("").is_err());
        assert!(nl.link_by_name("a-name-that-is-far-too-long").is_err());
    }
}
