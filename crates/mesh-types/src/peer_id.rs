//! `PeerId`: the validated name of a peer, safe as a Firestore document id, a URL path segment
//! and one half of a canonical link id.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::Error;

/// Longest id accepted; keeps link ids and log lines bounded.
pub const MAX_PEER_ID_LEN: usize = 64;

/// A peer's name: 1 to 64 ASCII letters, digits, `-`, `_` or `.`, starting with a letter or digit.
///
/// The alphabet excludes `/` (a Firestore path separator), `<` and `>` (the link id separator)
/// and anything that needs escaping in a URL, so an id can be used anywhere unchanged.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct PeerId(String);

impl PeerId {
    pub fn new(id: impl Into<String>) -> Result<Self, Error> {
        let id = id.into();
        let invalid = |reason| {
            Err(Error::InvalidPeerId {
                id: id.clone(),
                reason,
            })
        };
        let Some(first) = id.chars().next() else {
            return invalid("must not be empty");
        };
        if id.len() > MAX_PEER_ID_LEN {
            return invalid("longer than 64 characters");
        }
        if !first.is_ascii_alphanumeric() {
            return invalid("must start with a letter or digit");
        }
        if !id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            return invalid("only letters, digits, '-', '_' and '.' are allowed");
        }
        Ok(PeerId(id))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for PeerId {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        PeerId::new(s)
    }
}

impl TryFrom<String> for PeerId {
    type Error = Error;
    fn try_from(s: String) -> Result<Self, Error> {
        PeerId::new(s)
    }
}

impl From<PeerId> for String {
    fn from(id: PeerId) -> String {
        id.0
    }
}

impl AsRef<str> for PeerId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(input: &str, ok: bool) {
        assert_eq!(PeerId::new(input).is_ok(), ok, "{input:?}");
    }

    #[test]
    fn validates_the_alphabet_and_length() {
        check("peer-a", true);
        check("us-east1.w_1", true);
        check("A1", true);
        check(&"x".repeat(64), true);
        check(&"x".repeat(65), false);
        check("", false);
        check("-lead", false);
        check("a/b", false);
        check("a<->b", false);
        check("a b", false);
        check("é", false);
    }

    #[test]
    fn deserialising_validates() {
        assert!(serde_json::from_str::<PeerId>("\"ok-1\"").is_ok());
        let err = serde_json::from_str::<PeerId>("\"bad/id\"").unwrap_err();
        assert!(err.to_string().contains("invalid peer id"), "{err}");
    }
}
