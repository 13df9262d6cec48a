//! A Firestore emulator of a test's own (the Google emulator from the gcloud SDK), for tests
//! that stop and resume it: the one `scripts/test.sh` starts is shared by every test.

use std::os::unix::process::CommandExt as _;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

#[derive(Debug)]
pub struct Emulator {
    child: Child,
    /// `127.0.0.1:<port>`, for `FIRESTORE_EMULATOR_HOST`.
    pub host: String,
}

impl Emulator {
    /// Starts an emulator on a free loopback port (its own process group: the gcloud wrapper
    /// and its Java child are stopped, resumed and killed together) and waits until it answers.
    pub async fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let host = format!("127.0.0.1:{port}");
        let child = Command::new("gcloud")
            .args(["emulators", "firestore", "start", "--quiet"])
            .arg(format!("--host-port={host}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start the Firestore emulator (gcloud): {e}"));
        let emulator = Emulator { child, host };
        let url = format!("http://{}/", emulator.host);
        crate::process::eventually(
            Duration::from_secs(120),
            "the Firestore emulator to answer",
            || {
                let url = url.clone();
                async move {
                    reqwest::get(&url)
                        .await
                        .ok()
                        .filter(|r| r.status().is_success())
                }
            },
        )
        .await;
        emulator
    }

    fn signal(&self, sig: &str) -> bool {
        let group = format!("-{}", self.child.id());
        Command::new("kill")
            .args([sig, "--", &group])
            .status()
            .is_ok_and(|s| s.success())
    }

    /// Stops the emulator (SIGSTOP): connections hang, as with a store that stopped answering.
    pub fn pause(&self) {
        assert!(self.signal("-STOP"), "cannot stop the emulator");
    }

    /// Resumes it (SIGCONT), with everything it held.
    pub fn resume(&self) {
        assert!(self.signal("-CONT"), "cannot resume the emulator");
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        self.signal("-CONT");
        self.signal("-KILL");
        let _ = self.child.wait();
    }
}
