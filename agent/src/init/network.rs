//! Brings up the guest's network from the runtime's description: loopback, then each
//! interface (MAC check, MTU, up, addresses), then the routes.

use std::io;

use crate::protocol::{InterfaceConfig, RouteConfig};

use super::netlink::{Netlink, RouteSpec};

#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error("cannot open a netlink socket: {0}")]
    Socket(#[source] io::Error),
    #[error("interface {name:?}: {action}: {source}")]
    Interface {
        name: String,
        action: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("interface {name:?}: MAC address is {actual}, the runtime expected {expected}")]
    MacMismatch {
        name: String,
        expected: String,
        actual: String,
    },
    #[error("interface {name:?}: {mac:?} is not a MAC address (expected aa:bb:cc:dd:ee:ff)")]
    BadMac { name: String, mac: String },
    #[error("route {route}: {problem}")]
    BadRoute { route: String, problem: String },
    #[error("route {route}: {source}")]
    Route {
        route: String,
        #[source]
        source: io::Error,
    },
}

fn parse_mac(name: &str, mac: &str) -> Result<Vec<u8>, NetworkError> {
    let bytes: Vec<u8> = mac
        .split(':')
        .map(|part| {
            if part.len() == 2 {
                u8::from_str_radix(part, 16).ok()
            } else {
                None
            }
        })
        .collect::<Option<_>>()
        .filter(|b: &Vec<u8>| b.len() == 6)
        .ok_or_else(|| NetworkError::BadMac {
            name: name.to_owned(),
            mac: mac.to_owned(),
        })?;
    Ok(bytes)
}

fn format_mac(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn describe(route: &RouteConfig) -> String {
    let dst = route
        .destination
        .map(|d| d.to_string())
        .unwrap_or_else(|| "default".to_owned());
    match (&route.gateway, &route.device) {
        (Some(gw), Some(dev)) => format!("{dst} via {gw} dev {dev}"),
        (Some(gw), None) => format!("{dst} via {gw}"),
        (None, Some(dev)) => format!("{dst} dev {dev}"),
        (None, None) => dst,
    }
}

/// Applies interfaces and routes in the calling thread's network namespace.
pub fn configure(
    interfaces: &[InterfaceConfig],
    routes: &[RouteConfig],
) -> Result<(), NetworkError> {
    let mut nl = Netlink::open().map_err(NetworkError::Socket)?;

    let iface_err = |name: &str, action: &'static str| {
        let name = name.to_owned();
        move |source| NetworkError::Interface {
            name,
            action,
            source,
        }
    };

    let lo = nl.link_by_name("lo").map_err(iface_err("lo", "look up"))?;
    nl.set_link_up(lo.index, None)
        .map_err(iface_err("lo", "set up"))?;

    for iface in interfaces {
        let link = nl
            .link_by_name(&iface.name)
            .map_err(iface_err(&iface.name, "look up"))?;
        if let Some(expected) = &iface.mac {
            let want = parse_mac(&iface.name, expected)?;
            let actual = link.mac.clone().unwrap_or_default();
            if actual != want {
                return Err(NetworkError::MacMismatch {
                    name: iface.name.clone(),
                    expected: format_mac(&want),
                    actual: format_mac(&actual),
                });
            }
        }
        nl.set_link_up(link.index, iface.mtu)
            .map_err(iface_err(&iface.name, "set up / MTU"))?;
        for addr in &iface.addresses {
            nl.add_address(link.index, addr.address, addr.prefix_len)
                .map_err(iface_err(&iface.name, "add address"))?;
        }
    }

    for route in routes {
        let name = describe(route);
        let ipv6 = match (&route.destination, &route.gateway) {
            (Some(d), Some(g)) if d.address.is_ipv6() != g.is_ipv6() => {
                return Err(NetworkError::BadRoute {
                    route: name,
                    problem: "destination and gateway are of different address families".into(),
                })
            }
            (Some(d), _) => d.address.is_ipv6(),
            (None, Some(g)) => g.is_ipv6(),
            (None, None) => {
                return Err(NetworkError::BadRoute {
                    route: name,
                    problem: "a default route needs a gateway".into(),
                })
            }
        };
        if route.gateway.is_none() && route.device.is_none() {
            return Err(NetworkError::BadRoute {
                route: name,
                problem: "a route without a gateway needs a device".into(),
            });
        }
        let oif = match &route.device {
            Some(dev) => Some(
                nl.link_by_name(dev)
                    .map_err(|source| NetworkError::Route {
                        route: name.clone(),
                        source,
                    })?
                    .index,
            ),
            None => None,
        };
        let spec = RouteSpec {
            destination: route.destination.map(|d| (d.address, d.prefix_len)),
            gateway: route.gateway,
            oif,
            metric: route.metric,
            ipv6,
        };
        nl.add_route(&spec).map_err(|source| NetworkError::Route {
            route: name,
            source,
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;
    use std::thread;

    fn run(args: &[&str]) -> String {
        let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// eth0 as the guest would see it, with a peer that is up so that the link has carrier.
    fn add_veth(mac: &str) {
        run(&[
            "ip", "link", "add", "eth0", "address", mac, "type", "veth", "peer", "name", "peer0",
        ]);
        run(&["ip", "link", "set", "peer0", "up"]);
    }

    /// Runs `f` on a thread that has its own network namespace; the namespace (and the
    /// links made in it) goes away when the thread ends.
    fn in_new_netns<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: needs root to create a network namespace");
            return None;
        }
        Some(
            thread::spawn(move || {
                nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
                    .expect("unshare(CLONE_NEWNET)");
                f()
            })
            .join()
            .unwrap(),
        )
    }

    #[test]
    fn configures_addresses_mtu_and_routes_in_a_private_netns() {
        in_new_netns(|| {
            add_veth("02:00:00:aa:bb:01");
            let interfaces = vec![InterfaceConfig {
                name: "eth0".into(),
                mac: Some("02:00:00:AA:BB:01".into()),
                mtu: Some(1400),
                addresses: vec![
                    "10.20.0.2/24".parse().unwrap(),
                    "fd00:20::2/64".parse().unwrap(),
                ],
            }];
            let routes = vec![
                RouteConfig {
                    destination: None,
                    gateway: Some("10.20.0.1".parse().unwrap()),
                    device: Some("eth0".into()),
                    metric: None,
                },
                RouteConfig {
                    destination: Some("192.168.50.0/24".parse().unwrap()),
                    gateway: Some("10.20.0.254".parse().unwrap()),
                    device: None,
                    metric: Some(20),
                },
                RouteConfig {
                    destination: None,
                    gateway: Some("fd00:20::1".parse().unwrap()),
                    device: Some("eth0".into()),
                    metric: None,
                },
            ];
            configure(&interfaces, &routes).unwrap();

            let link = run(&["ip", "-o", "link", "show", "eth0"]);
            assert!(link.contains("mtu 1400"), "{link}");
            assert!(link.contains(",UP"), "{link}");
            let lo = run(&["ip", "-o", "link", "show", "lo"]);
            assert!(lo.contains(",UP"), "{lo}");
            let addrs = run(&["ip", "-o", "addr", "show", "dev", "eth0"]);
            assert!(addrs.contains("inet 10.20.0.2/24"), "{addrs}");
            assert!(addrs.contains("inet6 fd00:20::2/64"), "{addrs}");
            let v4 = run(&["ip", "route", "show"]);
            assert!(v4.contains("default via 10.20.0.1 dev eth0"), "{v4}");
            assert!(
                v4.contains("192.168.50.0/24 via 10.20.0.254 dev eth0"),
                "{v4}"
            );
            assert!(v4.contains("metric 20"), "{v4}");
            let v6 = run(&["ip", "-6", "route", "show"]);
            assert!(v6.contains("default via fd00:20::1 dev eth0"), "{v6}");

            // Applying the same configuration again is harmless (a restarted agent).
            configure(&interfaces, &routes).unwrap();
        });
    }

    #[test]
    fn refuses_the_wrong_nic_and_bad_input() {
        in_new_netns(|| {
            add_veth("02:00:00:aa:bb:02");
            let mut iface = InterfaceConfig {
                name: "eth0".into(),
                mac: Some("02:00:00:aa:bb:99".into()),
                mtu: None,
                addresses: vec![],
            };
            let err = configure(std::slice::from_ref(&iface), &[]).unwrap_err();
            assert!(matches!(err, NetworkError::MacMismatch { .. }), "{err}");
            assert!(err.to_string().contains("02:00:00:aa:bb:02"), "{err}");

            iface.mac = Some("not-a-mac".into());
            let err = configure(std::slice::from_ref(&iface), &[]).unwrap_err();
            assert!(matches!(err, NetworkError::BadMac { .. }), "{err}");

            iface.mac = None;
            iface.name = "eth9".into();
            let err = configure(&[iface], &[]).unwrap_err();
            assert!(err.to_string().contains("eth9"), "{err}");

            let route = RouteConfig {
                destination: Some("10.0.0.0/8".parse().unwrap()),
                gateway: Some("fd00::1".parse().unwrap()),
                device: None,
                metric: None,
            };
            let err = configure(&[], &[route]).unwrap_err();
            assert!(matches!(err, NetworkError::BadRoute { .. }), "{err}");

            // The kernel's refusal reaches the caller: a gateway that is not reachable.
            let route = RouteConfig {
                destination: None,
                gateway: Some("172.31.0.1".parse().unwrap()),
                device: None,
                metric: None,
            };
            let err = configure(&[], &[route]).unwrap_err();
            assert!(matches!(err, NetworkError::Route { .. }), "{err}");
        });
    }
}
