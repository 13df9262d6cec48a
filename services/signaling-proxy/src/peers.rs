//! The peer registry's rules, the same for the HTTP API and for registration on `/ws`: who is
//! registered, which ids no peer may take, and whom the allowlist lets in. Each refusal is made
//! here only, so a client meets one code and one message for it whichever way it came.
//!
//! A leaf: it uses no other module of the crate, so the API and `/ws` can both depend on it.

use axum::http::StatusCode;
use mesh_service::ApiError;
use mesh_store::{ErrorKind, SharedStore, StoreError};
use mesh_types::{Peer, PeerId, PublicKey};

/// Ids the server assigns to anonymous WebSocket clients start with this; no peer may register
/// one, so no registered key can take over an anonymous client's id (they are listed to
/// everyone).
pub const ANONYMOUS_PREFIX: &str = "anon-";

/// Who may register: peer ids and/or public keys. Empty: everyone.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Allowlist {
    pub ids: Vec<PeerId>,
    pub keys: Vec<PublicKey>,
}

impl Allowlist {
    pub fn is_open(&self) -> bool {
        self.ids.is_empty() && self.keys.is_empty()
    }

    pub fn allows(&self, id: &PeerId, key: &PublicKey) -> bool {
        self.is_open() || self.ids.contains(id) || self.keys.contains(key)
    }
}

/// 400 `reserved_id` for an id only the server hands out.
pub fn check_not_reserved(id: &PeerId) -> Result<(), ApiError> {
    if id.as_str().starts_with(ANONYMOUS_PREFIX) {
        return Err(ApiError::bad_request(
            "reserved_id",
            format!(
                "ids starting with {ANONYMOUS_PREFIX} are assigned to anonymous WebSocket clients"
            ),
        ));
    }
    Ok(())
}

/// 403 `not_allowed` unless `allowlist` lets `id` with `key` in.
pub fn check_allowed(allowlist: &Allowlist, id: &PeerId, key: &PublicKey) -> Result<(), ApiError> {
    if allowlist.allows(id, key) {
        return Ok(());
    }
    Err(ApiError::new(
        StatusCode::FORBIDDEN,
        "not_allowed",
        format!(
            "peer {id} (key {}) is not on this mesh's allowlist",
            key.key_id()
        ),
    ))
}

/// The registered peer `id`, or 404 `unknown_peer`.
pub async fn lookup(store: &SharedStore, id: &PeerId) -> Result<Peer, ApiError> {
    find(store, id).await?.ok_or_else(|| unknown_peer(id))
}

/// The registered peer `id`, if there is one: for callers to whom an unknown id is no refusal.
pub async fn find(store: &SharedStore, id: &PeerId) -> Result<Option<Peer>, StoreError> {
    not_found_as_none(store.get_peer(id).await)
}

fn not_found_as_none<T>(read: Result<T, StoreError>) -> Result<Option<T>, StoreError> {
    match read {
        Ok(found) => Ok(Some(found)),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

fn unknown_peer(id: &PeerId) -> ApiError {
    ApiError::not_found("unknown_peer", format!("peer {id} is not registered"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> PeerId {
        PeerId::new(s).unwrap()
    }

    fn key(seed: u64) -> PublicKey {
        mesh_testkit::identity("k", seed).public_key()
    }

    /// A refusal as a client sees it: status, code and message.
    fn seen(result: Result<(), ApiError>) -> Option<(u16, String, String)> {
        result
            .err()
            .map(|e| (e.status.as_u16(), e.code.into_owned(), e.message))
    }

    #[test]
    fn anonymous_ids_are_reserved() {
        #[track_caller]
        fn check(peer: &str, expect: Option<(u16, &str, &str)>) {
            let expect = expect.map(|(s, c, m)| (s, c.to_string(), m.to_string()));
            assert_eq!(seen(check_not_reserved(&id(peer))), expect, "{peer}");
        }
        let refused = Some((
            400,
            "reserved_id",
            "ids starting with anon- are assigned to anonymous WebSocket clients",
        ));
        check("alice", None);
        check("anonymous", None);
        check("anon-3f2a", refused);
        check("anon-", refused);
    }

    #[test]
    fn the_allowlist_lets_in_listed_ids_and_keys_or_everyone_when_empty() {
        let listed = Allowlist {
            ids: vec![id("alpha")],
            keys: vec![key(3)],
        };
        #[track_caller]
        fn check(list: &Allowlist, peer: &str, seed: u64, refused: bool) {
            let expect = refused.then(|| {
                (
                    403,
                    "not_allowed".to_string(),
                    format!(
                        "peer {peer} (key {}) is not on this mesh's allowlist",
                        key(seed).key_id()
                    ),
                )
            });
            assert_eq!(seen(check_allowed(list, &id(peer), &key(seed))), expect);
        }
        check(&Allowlist::default(), "anyone", 9, false);
        check(&listed, "alpha", 1, false);
        check(&listed, "charlie", 3, false);
        check(&listed, "bravo", 2, true);
    }

    #[test]
    fn only_not_found_reads_as_no_peer() {
        let not_found = || StoreError::NotFound {
            what: "peer",
            id: "x".into(),
        };
        assert_eq!(not_found_as_none(Ok(7)).unwrap(), Some(7));
        assert_eq!(not_found_as_none::<u8>(Err(not_found())).unwrap(), None);
        let unavailable = not_found_as_none::<u8>(Err(StoreError::Unavailable("down".into())));
        assert_eq!(unavailable.unwrap_err().kind(), ErrorKind::Unavailable);
        let e = unknown_peer(&id("zulu"));
        assert_eq!(
            (e.status.as_u16(), e.code.as_ref(), e.message.as_str()),
            (404, "unknown_peer", "peer zulu is not registered")
        );
    }
}
