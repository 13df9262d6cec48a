//! Headless Chromium (Debian package `chromium`) as a real browser peer: it loads a page and
//! runs until dropped. Flags follow what works on this closed network: no background
//! networking, no component updates, a fresh profile, no sandbox (tests run as root).

use std::process::{Child, Command, Stdio};

#[derive(Debug)]
pub struct Chromium {
    child: Child,
    _profile: tempfile::TempDir,
}

impl Chromium {
    /// Opens `url` in a new headless Chromium; extra flags are appended.
    pub fn open(url: &str, extra_flags: &[&str]) -> Self {
        let profile = tempfile::tempdir().unwrap();
        // `MESH_CHROMIUM` names another Chromium build (CI images without Debian's package).
        let binary = std::env::var("MESH_CHROMIUM").unwrap_or_else(|_| "chromium".into());
        let child = Command::new(&binary)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-default-apps",
                "--mute-audio",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .args(extra_flags)
            .arg(url)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start {binary} (Debian package chromium, or set MESH_CHROMIUM): {e}")
            });
        Chromium {
            child,
            _profile: profile,
        }
    }
}

impl Drop for Chromium {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Test bytes the interop pages know how to check: byte `i` is `(i * 7 + seed) % 251` (the
/// pages' `pattern`/`matches` compute the same).
pub fn pattern(n: usize, seed: usize) -> Vec<u8> {
    (0..n).map(|i| ((i * 7 + seed) % 251) as u8).collect()
}
