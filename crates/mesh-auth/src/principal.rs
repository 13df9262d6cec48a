//! Who a credential speaks for and what it may do: the [`Principal`] and its [`Role`]. Both ways
//! of authenticating (API tokens in `auth`, ID tokens in `oidc`) end here, so this module uses
//! neither.

use std::str::FromStr;

use axum::http::StatusCode;
use mesh_service::ApiError;

/// What a credential may do; each role includes the ones before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// Read peers and links.
    Read,
    /// Also register itself and signal (dial, offer, answer): what a worker needs.
    Peer,
    /// Also connect any two peers and manage the registry.
    Operator,
}

/// A role name in configuration that is none of ours.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown role {0:?}: expected read, peer or operator")]
pub struct UnknownRole(pub String);

impl FromStr for Role {
    type Err = UnknownRole;

    fn from_str(s: &str) -> Result<Self, UnknownRole> {
        match s {
            "read" => Ok(Role::Read),
            "peer" => Ok(Role::Peer),
            "operator" => Ok(Role::Operator),
            _ => Err(UnknownRole(s.to_string())),
        }
    }
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Read => "read",
            Role::Peer => "peer",
            Role::Operator => "operator",
        }
    }
}

/// The authenticated caller of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub name: String,
    pub role: Role,
}

impl Principal {
    /// Refuses (403) a caller whose role is below `role`.
    pub fn require(&self, role: Role) -> Result<(), ApiError> {
        if self.role >= role {
            Ok(())
        } else {
            Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                format!(
                    "credential {} has role {}; this needs {}",
                    self.name,
                    self.role.as_str(),
                    role.as_str()
                ),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_include_lower_ones() {
        let who = |role| Principal {
            name: "t".into(),
            role,
        };
        assert!(who(Role::Operator).require(Role::Peer).is_ok());
        assert!(who(Role::Peer).require(Role::Read).is_ok());
        let err = who(Role::Read).require(Role::Operator).unwrap_err();
        assert_eq!(
            (err.status, err.code.as_ref()),
            (StatusCode::FORBIDDEN, "forbidden")
        );
    }

    #[test]
    fn roles_parse_from_their_names_only() {
        #[track_caller]
        fn check(input: &str, expect: Result<Role, &str>) {
            let got = input.parse::<Role>().map_err(|e| e.to_string());
            assert_eq!(got, expect.map_err(str::to_string), "{input:?}");
        }
        check("read", Ok(Role::Read));
        check("peer", Ok(Role::Peer));
        check("operator", Ok(Role::Operator));
        check(
            "admin",
            Err(r#"unknown role "admin": expected read, peer or operator"#),
        );
        check(
            "Operator",
            Err(r#"unknown role "Operator": expected read, peer or operator"#),
        );
        check(
            "",
            Err(r#"unknown role "": expected read, peer or operator"#),
        );
    }

    #[test]
    fn a_role_parses_back_from_its_name() {
        for role in [Role::Read, Role::Peer, Role::Operator] {
            assert_eq!(role.as_str().parse::<Role>(), Ok(role));
        }
    }
}
