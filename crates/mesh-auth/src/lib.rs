//! Who is calling a meshrtc service: bearer API tokens (kept as SHA-256 hashes, each with a
//! role) and OIDC ID tokens (what Cloud Scheduler and service-to-service calls send), resolved
//! by one axum layer into a [`Principal`]. The signaling proxy and the gossip-push job share it.

pub mod auth;
pub mod config;
pub mod oidc;
pub mod principal;

pub use auth::{Caller, Credentials, TokenEntry, authenticate, sha256, sha256_hex};
pub use config::AuthConfig;
pub use oidc::{Oidc, OidcConfig, OidcError};
pub use principal::{Principal, Role, UnknownRole};
