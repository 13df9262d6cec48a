//! Service binaries run as real processes, the way operators run them: environment in, JSON logs
//! out. The fixture learns the bound port from the service's "serving" log line (services are
//! started with `PORT=0`), keeps the log for failure messages, and kills the process when dropped.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::deadline::Deadline;

/// A running service process.
#[derive(Debug)]
pub struct ServiceProcess {
    child: Child,
    /// `http://127.0.0.1:<port>`.
    pub url: String,
    log: Arc<Mutex<Vec<String>>>,
}

impl ServiceProcess {
    /// Starts `bin` with `env` (plus `PORT=0` and JSON logs) and waits up to 30 s for the log line
    /// whose message is `ready_message` and whose `fields.local` names the bound address.
    pub fn start(bin: impl AsRef<Path>, env: &[(&str, String)], ready_message: &str) -> Self {
        Self::start_with_args(bin, &[], env, ready_message)
    }

    /// [`start`](Self::start) with command-line arguments (a subcommand, say).
    pub fn start_with_args(
        bin: impl AsRef<Path>,
        args: &[&str],
        env: &[(&str, String)],
        ready_message: &str,
    ) -> Self {
        let mut cmd = Command::new(bin.as_ref());
        cmd.args(args)
            .env("PORT", "0")
            .env("MESH_LOG_FORMAT", "json")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if std::env::var_os("RUST_LOG").is_none() {
            cmd.env("RUST_LOG", "info");
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.as_ref().display()));
        let log: Arc<Mutex<Vec<String>>> = Arc::default();
        let (port_tx, port_rx) = std::sync::mpsc::channel::<u16>();
        let stdout = child.stdout.take().unwrap();
        let stderr = child.stderr.take().unwrap();
        let ready = ready_message.to_string();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line)
                    && v["message"] == ready.as_str()
                    && let Some(port) = v["fields"]["local"]
                        .as_str()
                        .and_then(|a| a.rsplit(':').next())
                        .and_then(|p| p.parse().ok())
                {
                    let _ = port_tx.send(port);
                }
                sink.lock().unwrap().push(line);
            }
        });
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(format!("stderr: {line}"));
            }
        });
        match port_rx.recv_timeout(Duration::from_secs(30)) {
            Ok(port) => ServiceProcess {
                child,
                url: format!("http://127.0.0.1:{port}"),
                log,
            },
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "{} did not report {ready_message:?}; its log:\n{}",
                    bin.as_ref().display(),
                    log.lock().unwrap().join("\n")
                );
            }
        }
    }

    /// Everything the process has logged so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `signal` (`"-KILL"`, `"-STOP"`, `"-CONT"`, …) with `kill(1)`; panics if it fails.
    pub fn signal(&self, signal: &str) {
        let sent = Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .is_ok_and(|s| s.success());
        assert!(sent, "kill {signal} {} failed", self.child.id());
    }

    /// Sends SIGTERM and waits (up to `within`) for the exit status.
    pub fn terminate(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Deadline::after(within);
        while !deadline.passed() {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for ServiceProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `check` until it returns `Some` or `within` passes; panics with `what` on time-out.
/// For conditions only observable by asking (another process's state), not a sleep in disguise:
/// it returns as soon as the condition holds.
pub async fn eventually<T, F, Fut>(within: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Deadline::after(within);
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if deadline.passed() {
            panic!("timed out after {within:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}
