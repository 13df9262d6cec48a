//! The conformance suite against the real Firestore emulator (started by scripts/test.sh). Each
//! test uses its own project id, so tests sharing the emulator never see each other's data.
#![allow(clippy::unwrap_used)] // Tests fail loudly by design.

mod conformance;

use std::sync::Arc;

use mesh_store::SharedStore;
use mesh_store::firestore::FirestoreStore;

async fn make() -> (SharedStore, ()) {
    let host = mesh_testkit::firestore_emulator_host();
    let project = mesh_testkit::unique_project("conformance");
    let store = FirestoreStore::connect(&project, None)
        .await
        .unwrap_or_else(|e| panic!("cannot reach the Firestore emulator at {host}: {e}"));
    (Arc::new(store), ())
}

conformance!(make);
