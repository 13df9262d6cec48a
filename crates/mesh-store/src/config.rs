//! Choosing a backend: `MESH_STORE` is `embedded` (the default, under the data directory),
//! `embedded:<dir>`, `firestore` (the project from `GOOGLE_CLOUD_PROJECT`) or
//! `firestore:<project>[/<database>]`.

use std::path::PathBuf;
use std::sync::Arc;

use crate::embedded::EmbeddedStore;
use crate::{SharedStore, StoreError};

/// Which store to open; parsed once at start-up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreConfig {
    Embedded {
        dir: PathBuf,
    },
    Firestore {
        project_id: String,
        database_id: Option<String>,
    },
}

impl StoreConfig {
    /// Parses a `MESH_STORE` value. `data_dir` is where a bare `embedded` lives;
    /// `default_project` is used by a bare `firestore`.
    pub fn parse(
        value: Option<&str>,
        data_dir: PathBuf,
        default_project: Option<&str>,
    ) -> Result<Self, String> {
        let value = value
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .unwrap_or("embedded");
        let (kind, arg) = match value.split_once(':') {
            Some((k, a)) => (k, Some(a.trim()).filter(|a| !a.is_empty())),
            None => (value, None),
        };
        match kind {
            "embedded" => Ok(StoreConfig::Embedded {
                dir: arg.map(PathBuf::from).unwrap_or(data_dir),
            }),
            "firestore" => {
                let spec = arg.or(default_project).ok_or(
                    "firestore needs a project: MESH_STORE=firestore:<project> or GOOGLE_CLOUD_PROJECT",
                )?;
                let (project, database) = match spec.split_once('/') {
                    Some((p, d)) => (p, Some(d.to_string())),
                    None => (spec, None),
                };
                if project.is_empty() {
                    return Err("firestore project id is empty".into());
                }
                Ok(StoreConfig::Firestore {
                    project_id: project.to_string(),
                    database_id: database,
                })
            }
            other => Err(format!(
                "unknown store {other:?}: expected embedded, embedded:<dir>, firestore or firestore:<project>[/<database>]"
            )),
        }
    }
}

/// Opens the configured store.
pub async fn open(config: &StoreConfig) -> Result<SharedStore, StoreError> {
    match config {
        StoreConfig::Embedded { dir } => Ok(Arc::new(EmbeddedStore::open(dir).await?)),
        #[cfg(feature = "firestore")]
        StoreConfig::Firestore {
            project_id,
            database_id,
        } => Ok(Arc::new(
            crate::firestore::FirestoreStore::connect(project_id, database_id.as_deref()).await?,
        )),
        #[cfg(not(feature = "firestore"))]
        StoreConfig::Firestore { .. } => Err(StoreError::InvalidInput(
            "this build has no Firestore backend (feature `firestore` is off)".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(value: Option<&str>, project: Option<&str>, expect: Result<StoreConfig, ()>) {
        let got = StoreConfig::parse(value, PathBuf::from("/data"), project).map_err(|_| ());
        assert_eq!(got, expect, "{value:?}");
    }

    #[test]
    fn parses_every_form() {
        let emb = |d: &str| {
            Ok(StoreConfig::Embedded {
                dir: PathBuf::from(d),
            })
        };
        let fs = |p: &str, d: Option<&str>| {
            Ok(StoreConfig::Firestore {
                project_id: p.into(),
                database_id: d.map(Into::into),
            })
        };
        check(None, None, emb("/data"));
        check(Some(""), None, emb("/data"));
        check(Some("embedded"), None, emb("/data"));
        check(Some("embedded:/tmp/x"), None, emb("/tmp/x"));
        check(Some("firestore:proj"), None, fs("proj", None));
        check(Some("firestore:proj/db2"), None, fs("proj", Some("db2")));
        check(Some("firestore"), Some("env-proj"), fs("env-proj", None));
        check(Some("firestore"), None, Err(()));
        check(Some("firestore:/db"), None, Err(()));
        check(Some("postgres"), None, Err(()));
    }
}
