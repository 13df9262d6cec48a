//! A real TURN server for relay tests: coturn (Debian package `coturn`) on loopback with a
//! long-term credential, started per test and killed when dropped.

use std::net::UdpSocket;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::deadline::Deadline;

pub const TURN_USER: &str = "mesh";
pub const TURN_PASSWORD: &str = "relay-secret";

#[derive(Debug)]
pub struct Coturn {
    child: Child,
    pub port: u16,
    _dir: tempfile::TempDir,
}

fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Coturn {
    /// Starts `turnserver` on a free loopback port and waits until it answers STUN. The port is
    /// free when picked but may be taken again before coturn binds it (other tests' workers
    /// bind ephemeral UDP ports all the time): then a new port, up to three times.
    pub fn start() -> Self {
        let mut last_log = String::new();
        for _ in 0..3 {
            let turn = Self::spawn();
            if try_stun(("127.0.0.1", turn.port), Duration::from_secs(10)) {
                return turn;
            }
            last_log = std::fs::read_to_string(turn._dir.path().join("turn.log"))
                .unwrap_or_else(|e| format!("(no log: {e})"));
        }
        panic!("coturn did not answer STUN on three ports; its last log:\n{last_log}");
    }

    fn spawn() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = free_udp_port();
        let relay_base = 40_000 + (port % 1000) * 20;
        // coturn on loopback needs loopback listening and relay addresses, loopback peers
        // allowed, long-term credentials with a realm, and a CLI password (or no CLI).
        let conf = format!(
            "listening-ip=127.0.0.1\nrelay-ip=127.0.0.1\nlistening-port={port}\nmin-port={relay_base}\nmax-port={}\n\
             lt-cred-mech\nuser={TURN_USER}:{TURN_PASSWORD}\nrealm=meshrtc.test\nallow-loopback-peers\nno-cli\n\
             no-tls\nno-dtls\nno-tcp-relay\nfingerprint\nsimple-log\nlog-file={}/turn.log\npidfile={}/turn.pid\n\
             userdb={}/turndb\n",
            relay_base + 19,
            dir.path().display(),
            dir.path().display(),
            dir.path().display(),
        );
        let conf_path = dir.path().join("turnserver.conf");
        std::fs::write(&conf_path, conf).unwrap();
        let child = Command::new("turnserver")
            .arg("-c")
            .arg(&conf_path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start turnserver (Debian package coturn): {e}"));
        Coturn {
            child,
            port,
            _dir: dir,
        }
    }

    /// The `ICE_SERVERS` value a worker needs to use this server.
    pub fn ice_servers_json(&self) -> String {
        format!(
            r#"[{{"urls":["turn:127.0.0.1:{}?transport=udp"],"username":"{TURN_USER}","credential":"{TURN_PASSWORD}"}}]"#,
            self.port
        )
    }
}

/// Waits until a STUN server at `addr` answers a Binding Request.
pub fn stun_ready(addr: (&str, u16), within: Duration) {
    assert!(
        try_stun(addr, within),
        "coturn did not answer STUN on {}:{} within {within:?}",
        addr.0,
        addr.1
    );
}

/// Whether a STUN server at `addr` answers a Binding Request within `within`.
fn try_stun(addr: (&str, u16), within: Duration) -> bool {
    let socket = UdpSocket::bind("0.0.0.0:0").unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    // A STUN Binding Request: type 0x0001, length 0, magic cookie, transaction id.
    let mut request = vec![0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xa4, 0x42];
    request.extend_from_slice(b"meshrtc-test");
    let deadline = Deadline::after(within);
    let mut buf = [0u8; 512];
    while !deadline.passed() {
        let _ = socket.send_to(&request, addr);
        if let Ok((n, _)) = socket.recv_from(&mut buf)
            && n >= 20
            && buf[0..2] == [0x01, 0x01]
        {
            return true;
        }
    }
    false
}

impl Drop for Coturn {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
