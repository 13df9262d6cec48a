//! Fixtures shared by meshrtc's tests: deterministic identities, throw-away data directories,
//! the Firestore emulator that the test script (scripts/test.sh) starts once per run, service
//! binaries run as real processes, and the statistics benchmarks report (`stats`).
//!
//! Fixtures panic with a message that says what to do: they run only inside tests.
// Fixtures fail loudly: they are test drivers, so unwrap is theirs to use. The clock and the OS
// RNG are not blanket-allowed: the few fixtures that need them say why where they read them.
#![allow(clippy::unwrap_used)]

pub mod browser;
mod deadline;
pub mod firestore;
pub mod netns;
pub mod oidc;
pub mod process;
pub mod stats;
pub mod turn;
pub mod workers;

use std::sync::atomic::{AtomicU32, Ordering};

use mesh_types::{Identity, PeerId};
use rand::{Rng, SeedableRng};

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
    // Test processes of other runs share the emulator and may get the same pid: only entropy
    // from the OS tells them apart, so this fixture seeds from it.
    #[allow(clippy::disallowed_methods)]
    let mut rng = rand::rng();
    project_id(prefix, std::process::id(), &mut rng)
}

/// `prefix`, the process, a counter (unique within the process) and a salt from `rng` (unique
/// across runs).
fn project_id(prefix: &str, pid: u32, rng: &mut impl Rng) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let salt = rng.next_u32();
    format!("{prefix}-{pid}-{n}-{salt:08x}")
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn project_ids_differ_within_a_process_and_carry_the_salt() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let salt = rand::rngs::StdRng::seed_from_u64(7).next_u32();
        let first = project_id("conformance", 42, &mut rng);
        let second = project_id("conformance", 42, &mut rng);
        assert_ne!(first, second);
        assert!(first.starts_with("conformance-42-"), "{first}");
        assert!(first.ends_with(&format!("-{salt:08x}")), "{first}");
    }
}
