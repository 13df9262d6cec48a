//! Worker fixtures, shared with other services' tests through mesh-testkit.
#![allow(unused_imports)]

pub use mesh_testkit::workers::{Mesh, Peer};
