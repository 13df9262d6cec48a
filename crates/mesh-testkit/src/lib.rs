//! Fixtures shared by meshrtc's tests: deterministic identities, throw-away data directories,
//! the Firestore emulator that the test script (scripts/test.sh) starts once per run, and service
//! binaries run as real processes.
//!
//! Fixtures panic with a message that says what to do: they run only inside tests.
// Fixtures drive real processes against wall-clock deadlines, and fail loudly: they are test
// drivers, so the clock and unwrap are theirs to use.
#![allow(clippy::unwrap_used, clippy::disallowed_methods)]

pub mod browser;
pub mod firestore;
pub mod netns;
pub mod oidc;
pub mod process;
pub mod turn;
pub mod workers;

use std::sync::atomic::{AtomicU32, Ordering};

use mesh_types::{Identity, PeerId};
use rand::SeedableRng;

/// The variable the Google emulator (and the firestore crate) use to find each other.
pub const FIRESTORE_EMULATOR_HOST: &str = "FIRESTORE_EMULATOR_HOST";

/// A peer identity derived from `seed`, the same in every run.
pub fn identity(id: &str, seed: u64) -> Identity {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    Identity::generate(PeerId::new(id).unwrap(), &mut rng)
}

pub fn peer_id(id: &str) -> PeerId {
    PeerId::new(id).unwrap()
}

/// A fresh data directory, removed when dropped.
pub fn data_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("meshrtc-test-")
        .tempdir()
        .unwrap()
}

/// The address of the running Firestore emulator. Fails (never skips) when there is none: the
/// Firestore tests are part of the suite, and scripts/test.sh starts the emulator for them.
pub fn firestore_emulator_host() -> String {
    match std::env::var(FIRESTORE_EMULATOR_HOST) {
        Ok(host) if !host.is_empty() => host,
        _ => panic!(
            "{FIRESTORE_EMULATOR_HOST} is not set: run the tests with scripts/test.sh, which starts \
             the Firestore emulator, or start one (`gcloud emulators firestore start`) and export it"
        ),
    }
}

/// A project id no other test uses, so tests sharing one emulator never see each other's data.
pub fn unique_project(prefix: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let salt: u32 = rand::random();
    format!("{prefix}-{}-{n}-{salt:08x}", std::process::id())
}

/// The path of workspace binary `bin` (package `package`), for tests that run another
/// package's service: `CARGO_BIN_EXE_*` covers only a test's own package. Looks next to the
/// test executable (`target/<profile>/`); builds the binary with cargo if it is not there
/// (`cargo nextest run --workspace` has already built it).
pub fn workspace_bin(package: &str, bin: &str) -> std::path::PathBuf {
    let exe = std::env::current_exe().unwrap();
    // target/<profile>/deps/<test> → target/<profile>/<bin>
    let profile_dir = exe.parent().and_then(|d| d.parent()).unwrap();
    let path = profile_dir.join(bin);
    if !path.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = std::process::Command::new(cargo);
        cmd.args(["build", "-p", package, "--bin", bin]);
        if profile_dir.file_name().is_some_and(|p| p == "release") {
            cmd.arg("--release");
        }
        let status = cmd.status().unwrap();
        assert!(status.success(), "building {bin} for this test failed");
    }
    assert!(
        path.exists(),
        "{} not found after building it",
        path.display()
    );
    path
}
