//! The conformance suite against the embedded (SQLite) store.
#![allow(clippy::unwrap_used)] // Tests fail loudly by design.

mod conformance;

use std::sync::Arc;

use mesh_store::SharedStore;
use mesh_store::embedded::EmbeddedStore;

async fn make() -> (SharedStore, tempfile::TempDir) {
    let dir = mesh_testkit::data_dir();
    let store = EmbeddedStore::open(dir.path()).await.unwrap();
    (Arc::new(store), dir)
}

conformance!(make);
