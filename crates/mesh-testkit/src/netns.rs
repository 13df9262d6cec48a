//! Two sites behind NAT on one machine, with network namespaces (needs root; CI runs as root):
//!
//! ```text
//!  host-1 (192.168.1.2) ── nat-1 (MASQUERADE, 100.64.1.2) ─┐
//!                                                          pub (router; STUN/TURN 100.64.1.1)
//!  host-2 (192.168.2.2) ── nat-2 (MASQUERADE, 100.64.2.2) ─┘        │
//!                                                          this namespace (100.64.9.2)
//! ```
//!
//! Each NAT forwards one TCP port (the worker's HTTP) to its host, so the test can drive the
//! workers; UDP from the hosts leaves through the NAT like any home or office network. The
//! public router can drop UDP between the two NATs (TURN must then relay) or cut a NAT's uplink
//! (a partition). Everything is removed when the fixture is dropped.

use std::process::{Child, Command, Stdio};

/// The worker HTTP port forwarded by each NAT.
pub const WORKER_PORT: u16 = 8080;
/// Where STUN and TURN listen, in `pub`.
pub const TURN_ADDR: &str = "100.64.1.1";

#[derive(Debug)]
pub struct Sites {
    /// Namespace names: `[pub, nat-1, host-1, nat-2, host-2]`.
    names: [String; 5],
    turn: Option<Child>,
    _dir: tempfile::TempDir,
}

fn sh(args: &[&str]) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}", args.join(" ")));
    assert!(
        out.status.success(),
        "{} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn in_ns(ns: &str, cmd: &str) {
    let args: Vec<&str> = ["ip", "netns", "exec", ns]
        .into_iter()
        .chain(cmd.split_whitespace())
        .collect();
    sh(&args);
}

impl Sites {
    /// Builds the namespaces; `tag` prefixes their names and interfaces (short: interface names
    /// are limited to 15 characters). The addresses are fixed, so one `Sites` at a time: a
    /// second one would take over the first's route.
    pub fn new(tag: &str) -> Self {
        assert!(
            Command::new("id")
                .arg("-u")
                .output()
                .is_ok_and(|o| o.stdout.starts_with(b"0\n")),
            "multi-host tests need root for network namespaces (CI runs as root)"
        );
        let names = ["pub", "nat1", "h1", "nat2", "h2"].map(|n| format!("mr{tag}{n}"));
        let [pubn, nat1, h1, nat2, h2] = &names;
        let dir = tempfile::tempdir().unwrap();
        let sites = Sites {
            names: names.clone(),
            turn: None,
            _dir: dir,
        };
        // A run killed before its clean-up leaves these behind; start from nothing.
        for n in &names {
            let _ = Command::new("ip").args(["netns", "del", n]).output();
        }
        let _ = Command::new("ip")
            .args(["link", "del", &format!("{tag}r9")])
            .output();
        let _ = Command::new("ip")
            .args(["route", "del", "100.64.0.0/16"])
            .output();
        for n in &names {
            sh(&["ip", "netns", "add", n]);
            in_ns(n, "ip link set lo up");
        }
        // veth pairs: (namespace, interface, address) on both ends.
        let link = |a: &str, ai: &str, aa: &str, b: &str, bi: &str, ba: &str| {
            let ai = format!("{tag}{ai}");
            let bi = format!("{tag}{bi}");
            sh(&[
                "ip", "link", "add", &ai, "type", "veth", "peer", "name", &bi,
            ]);
            for (ns, i, addr) in [(a, &ai, aa), (b, &bi, ba)] {
                if ns.is_empty() {
                    sh(&["ip", "addr", "add", addr, "dev", i]);
                    sh(&["ip", "link", "set", i, "up"]);
                } else {
                    sh(&["ip", "link", "set", i, "netns", ns]);
                    in_ns(ns, &format!("ip addr add {addr} dev {i}"));
                    in_ns(ns, &format!("ip link set {i} up"));
                }
            }
        };
        link(pubn, "p1", "100.64.1.1/24", nat1, "n1u", "100.64.1.2/24");
        link(pubn, "p2", "100.64.2.1/24", nat2, "n2u", "100.64.2.2/24");
        link(pubn, "p9", "100.64.9.1/24", "", "r9", "100.64.9.2/24");
        link(nat1, "n1l", "192.168.1.1/24", h1, "h1e", "192.168.1.2/24");
        link(nat2, "n2l", "192.168.2.1/24", h2, "h2e", "192.168.2.2/24");
        sh(&["ip", "route", "add", "100.64.0.0/16", "via", "100.64.9.1"]);
        in_ns(pubn, "sysctl -qw net.ipv4.ip_forward=1");
        for (nat, host, up, lan, private) in [
            (nat1, h1, format!("{tag}n1u"), "192.168.1.1", "192.168.1.2"),
            (nat2, h2, format!("{tag}n2u"), "192.168.2.1", "192.168.2.2"),
        ] {
            let gw = if nat == nat1 {
                "100.64.1.1"
            } else {
                "100.64.2.1"
            };
            in_ns(nat, "sysctl -qw net.ipv4.ip_forward=1");
            in_ns(nat, &format!("ip route add default via {gw}"));
            in_ns(
                nat,
                &format!("iptables -t nat -A POSTROUTING -o {up} -j MASQUERADE"),
            );
            in_ns(
                nat,
                &format!(
                    "iptables -t nat -A PREROUTING -i {up} -p tcp --dport {WORKER_PORT} -j DNAT --to-destination {private}:{WORKER_PORT}"
                ),
            );
            in_ns(host, &format!("ip route add default via {lan}"));
        }
        sites
    }

    pub fn host(&self, site: usize) -> &str {
        &self.names[if site == 1 { 2 } else { 4 }]
    }

    /// The public address of a site (its NAT's uplink).
    pub fn public_ip(site: usize) -> &'static str {
        if site == 1 {
            "100.64.1.2"
        } else {
            "100.64.2.2"
        }
    }

    /// The URL this namespace reaches a site's worker at (through the NAT's port forward).
    pub fn worker_url(site: usize) -> String {
        format!("http://{}:{WORKER_PORT}", Self::public_ip(site))
    }

    /// Starts coturn in `pub` (STUN and TURN on 3478, long-term credential `mesh`).
    pub fn start_turn(&mut self) {
        let conf = self._dir.path().join("turnserver.conf");
        std::fs::write(
            &conf,
            format!(
                "listening-ip={TURN_ADDR}\nrelay-ip={TURN_ADDR}\nlistening-port=3478\nmin-port=49160\nmax-port=49200\n\
                 lt-cred-mech\nuser={}:{}\nrealm=meshrtc.test\nno-cli\nno-tls\nno-dtls\nno-tcp-relay\nfingerprint\n\
                 simple-log\nlog-file={}/turn.log\npidfile={}/turn.pid\nuserdb={}/turndb\n",
                crate::turn::TURN_USER,
                crate::turn::TURN_PASSWORD,
                self._dir.path().display(),
                self._dir.path().display(),
                self._dir.path().display(),
            ),
        )
        .unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", &self.names[0], "turnserver", "-c"])
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start turnserver (Debian package coturn): {e}"));
        self.turn = Some(child);
        crate::turn::stun_ready((TURN_ADDR, 3478), std::time::Duration::from_secs(15));
    }

    /// `ICE_SERVERS` for the workers: STUN and TURN at [`TURN_ADDR`].
    pub fn ice_servers_json() -> String {
        format!(
            r#"[{{"urls":["stun:{TURN_ADDR}:3478","turn:{TURN_ADDR}:3478?transport=udp"],"username":"{}","credential":"{}"}}]"#,
            crate::turn::TURN_USER,
            crate::turn::TURN_PASSWORD
        )
    }

    /// The private address of a site's host.
    pub fn private_ip(site: usize) -> &'static str {
        if site == 1 {
            "192.168.1.2"
        } else {
            "192.168.2.2"
        }
    }

    /// Gives a site's NAT an endpoint-independent mapping and filtering for one UDP port of its
    /// host (what RFC 4787 asks of a NAT, and most home routers do): the host's `port` always
    /// leaves as the NAT's `port`, and anything arriving there goes to the host. Plain
    /// MASQUERADE is endpoint-dependent: a peer's check that reaches the NAT before the host
    /// has sent to that peer claims the port, the host's own packets then leave from another,
    /// and server-reflexive candidates on both sides never meet.
    pub fn endpoint_independent(&self, site: usize, port: u16) {
        let (nat, up) = if site == 1 {
            (&self.names[1], format!("{}n1u", self.tag()))
        } else {
            (&self.names[3], format!("{}n2u", self.tag()))
        };
        let (public, private) = (Self::public_ip(site), Self::private_ip(site));
        in_ns(
            nat,
            &format!(
                "iptables -t nat -I POSTROUTING 1 -o {up} -p udp -s {private} --sport {port} -j SNAT --to-source {public}:{port}"
            ),
        );
        in_ns(
            nat,
            &format!(
                "iptables -t nat -A PREROUTING -i {up} -p udp --dport {port} -j DNAT --to-destination {private}:{port}"
            ),
        );
    }

    /// The public router drops UDP between the two NATs: only TURN (in `pub`) connects them.
    pub fn block_udp_between_sites(&self) {
        for (a, b) in [("100.64.1.2", "100.64.2.2"), ("100.64.2.2", "100.64.1.2")] {
            in_ns(
                &self.names[0],
                &format!("iptables -A FORWARD -p udp -s {a} -d {b} -j DROP"),
            );
        }
    }

    /// Cuts (or restores) a site's uplink: a partition.
    pub fn set_uplink(&self, site: usize, up: bool) {
        let (ns, i) = if site == 1 {
            (&self.names[0], "p1")
        } else {
            (&self.names[0], "p2")
        };
        let iface = format!("{}{i}", self.tag());
        in_ns(
            ns,
            &format!("ip link set {iface} {}", if up { "up" } else { "down" }),
        );
    }

    fn tag(&self) -> &str {
        self.names[0]
            .trim_start_matches("mr")
            .trim_end_matches("pub")
    }
}

impl Drop for Sites {
    fn drop(&mut self) {
        if let Some(turn) = self.turn.as_mut() {
            let _ = turn.kill();
            let _ = turn.wait();
        }
        // Deleting a namespace deletes its interfaces, and with them their veth peers.
        for n in &self.names {
            let _ = Command::new("ip").args(["netns", "del", n]).status();
        }
        let _ = Command::new("ip")
            .args(["link", "del", &format!("{}r9", self.tag())])
            .status();
        let _ = Command::new("ip")
            .args(["route", "del", "100.64.0.0/16"])
            .status();
    }
}
