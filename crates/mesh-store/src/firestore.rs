//! The Firestore backend: collections `mesh_peers`, `mesh_links` and `mesh_gossip_audit` holding
//! the same documents as the embedded store. Works against production Firestore with Application
//! Default Credentials and, when `FIRESTORE_EMULATOR_HOST` is set, against the Google emulator.
//!
//! Read-modify-write runs in Firestore transactions (retried on contention by the client), so
//! the shared rules in [`crate::rules`] hold under concurrent writers exactly as they do in SQLite.

use std::future::Future;
use std::pin::Pin;

use async_trait::async_trait;
use firestore::errors::{BackoffError, FirestoreError};
use firestore::{
    FirestoreDb, FirestoreDbOptions, FirestoreTransaction, FirestoreWritePrecondition,
};
use mesh_types::transfer::TransferRecord;
use mesh_types::{AuditRecord, GossipEntry, Link, LinkId, Peer, PeerId, PublicKey};
use serde::{Deserialize, Serialize};

use crate::{
    AUDIT, GOSSIP_STATE, LINKS, LinkQuery, LinkWrite, PEERS, PeerUpsert, Result, Store, StoreError,
    TRANSFERS, rules,
};

/// Firestore commits at most this many writes at once.
const MAX_WRITES_PER_COMMIT: usize = 500;

#[derive(Clone)]
pub struct FirestoreStore {
    db: FirestoreDb,
}

impl std::fmt::Debug for FirestoreStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FirestoreStore").finish_non_exhaustive()
    }
}

impl FirestoreStore {
    /// Connects to `project_id`'s database (`(default)` unless `database_id` names another).
    pub async fn connect(project_id: &str, database_id: Option<&str>) -> Result<Self> {
        let mut options = FirestoreDbOptions::new(project_id.to_string());
        if let Some(db) = database_id {
            options = options.with_database_id(db.to_string());
        }
        let db = FirestoreDb::with_options(options).await.map_err(map_err)?;
        Ok(FirestoreStore { db })
    }
}

/// The error kinds callers branch on, from the client's.
fn map_err(e: FirestoreError) -> StoreError {
    match e {
        FirestoreError::DataNotFoundError(e) => StoreError::NotFound {
            what: "document",
            id: e.to_string(),
        },
        FirestoreError::DataConflictError(e) => StoreError::Conflict(e.to_string()),
        FirestoreError::InvalidParametersError(e) => StoreError::InvalidInput(e.to_string()),
        FirestoreError::SerializeError(e) => StoreError::InvalidInput(e.to_string()),
        FirestoreError::DeserializeError(e) => StoreError::Corrupt(e.to_string()),
        FirestoreError::ErrorInTransaction(e) => match e.source.downcast::<StoreError>() {
            Ok(ours) => *ours,
            Err(other) => StoreError::Unavailable(other.to_string()),
        },
        FirestoreError::DatabaseError(ref db) => match db.public.code.as_str() {
            "NotFound" => StoreError::NotFound {
                what: "document",
                id: db.details.clone(),
            },
            "AlreadyExists" | "Aborted" => StoreError::Conflict(e.to_string()),
            "InvalidArgument" | "FailedPrecondition" | "OutOfRange" => {
                StoreError::InvalidInput(e.to_string())
            }
            _ => StoreError::Unavailable(e.to_string()),
        },
        other => StoreError::Unavailable(other.to_string()),
    }
}

type TxFuture<'b, T> =
    Pin<Box<dyn Future<Output = std::result::Result<T, BackoffError<StoreError>>> + Send + 'b>>;

/// Our own errors inside a transaction are final; the client retries its contention errors.
fn permanent(e: StoreError) -> BackoffError<StoreError> {
    BackoffError::permanent(e)
}

async fn read<T>(db: &FirestoreDb, collection: &str, id: &str) -> Result<Option<T>>
where
    T: for<'de> serde::Deserialize<'de> + Send,
{
    db.fluent()
        .select()
        .by_id_in(collection)
        .obj::<T>()
        .one(id)
        .await
        .map_err(map_err)
}

fn write<T: Serialize + for<'de> Deserialize<'de> + Sync + Send>(
    tx: &mut FirestoreTransaction<'_>,
    db: &FirestoreDb,
    collection: &str,
    id: &str,
    doc: &T,
) -> Result<()> {
    db.fluent()
        .update()
        .in_col(collection)
        .document_id(id)
        .object(doc)
        .add_to_transaction(tx)
        .map_err(map_err)?;
    Ok(())
}

#[derive(Serialize, Deserialize)]
struct TrustOnly {
    trust: f64,
}

#[async_trait]
impl Store for FirestoreStore {
    async fn upsert_peer(&self, peer: &PeerUpsert) -> Result<Peer> {
        self.db
            .run_transaction(|db, tx| -> TxFuture<'_, Peer> {
                let upsert = peer.clone();
                Box::pin(async move {
                    let existing = read::<Peer>(&db, PEERS, upsert.id.as_str())
                        .await
                        .map_err(permanent)?;
                    let merged = rules::merge_peer(existing, &upsert).map_err(permanent)?;
                    write(tx, &db, PEERS, merged.id.as_str(), &merged).map_err(permanent)?;
                    Ok(merged)
                })
            })
            .await
            .map_err(map_err)
    }

    async fn replace_peer_key(&self, id: &PeerId, key: &PublicKey) -> Result<Peer> {
        self.db
            .run_transaction(|db, tx| -> TxFuture<'_, Peer> {
                let (id, key) = (id.clone(), *key);
                Box::pin(async move {
                    let existing = read::<Peer>(&db, PEERS, id.as_str())
                        .await
                        .map_err(permanent)?
                        .ok_or_else(|| {
                            permanent(StoreError::NotFound {
                                what: "peer",
                                id: id.to_string(),
                            })
                        })?;
                    let replaced = rules::replace_key(existing, &key);
                    write(tx, &db, PEERS, id.as_str(), &replaced).map_err(permanent)?;
                    Ok(replaced)
                })
            })
            .await
            .map_err(map_err)
    }

    async fn get_peer(&self, id: &PeerId) -> Result<Peer> {
        read(&self.db, PEERS, id.as_str())
            .await?
            .ok_or_else(|| StoreError::NotFound {
                what: "peer",
                id: id.to_string(),
            })
    }

    async fn list_peers(&self) -> Result<Vec<Peer>> {
        self.db
            .fluent()
            .select()
            .from(PEERS)
            .order(|o| o.fields([o.field("id").asc()]))
            .obj()
            .query()
            .await
            .map_err(map_err)
    }

    async fn set_trust(&self, scores: &[(PeerId, f64)]) -> Result<()> {
        rules::validate_scores(scores)?;
        // One commit is atomic; beyond 500 peers each chunk of 500 is.
        for chunk in scores.chunks(MAX_WRITES_PER_COMMIT) {
            let mut tx = self.db.begin_transaction().await.map_err(map_err)?;
            for (id, trust) in chunk {
                self.db
                    .fluent()
                    .update()
                    .fields(["trust"])
                    .in_col(PEERS)
                    .precondition(FirestoreWritePrecondition::Exists(true))
                    .document_id(id.as_str())
                    .object(&TrustOnly { trust: *trust })
                    .add_to_transaction(&mut tx)
                    .map_err(map_err)?;
            }
            tx.commit().await.map_err(|e| match map_err(e) {
                StoreError::NotFound { .. } => StoreError::NotFound {
                    what: "peer",
                    id: chunk
                        .iter()
                        .map(|(id, _)| id.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                        + " (one of)",
                },
                other => other,
            })?;
        }
        Ok(())
    }

    async fn upsert_link(&self, link: &Link) -> Result<LinkWrite> {
        link.validate()?;
        self.db
            .run_transaction(|db, tx| -> TxFuture<'_, LinkWrite> {
                let link = link.clone();
                Box::pin(async move {
                    let existing = read::<Link>(&db, LINKS, link.id.as_str())
                        .await
                        .map_err(permanent)?;
                    let outcome = rules::link_write(existing.as_ref(), &link);
                    if outcome == LinkWrite::Applied {
                        write(tx, &db, LINKS, link.id.as_str(), &link).map_err(permanent)?;
                    }
                    Ok(outcome)
                })
            })
            .await
            .map_err(map_err)
    }

    async fn get_link(&self, id: &LinkId) -> Result<Link> {
        read(&self.db, LINKS, id.as_str())
            .await?
            .ok_or_else(|| StoreError::NotFound {
                what: "link",
                id: id.to_string(),
            })
    }

    async fn list_links(&self, query: &LinkQuery) -> Result<Vec<Link>> {
        let limit = rules::limit(query.limit)?;
        let peer = query.peer.as_ref().map(|p| p.to_string());
        let health = query.health.map(|h| h.as_str());
        self.db
            .fluent()
            .select()
            .from(LINKS)
            .filter(|q| {
                q.for_all([
                    peer.as_ref().and_then(|p| {
                        q.for_any([q.field("a").eq(p.as_str()), q.field("b").eq(p.as_str())])
                    }),
                    health.and_then(|h| q.field("health").eq(h)),
                ])
            })
            // Firestore breaks ties by document id in the direction of the last order: descending.
            .order(|o| o.fields([o.field("lastTs").desc()]))
            .limit(limit as u32)
            .obj()
            .query()
            .await
            .map_err(map_err)
    }

    async fn append_audit(&self, record: &AuditRecord) -> Result<()> {
        let _: AuditRecord = self
            .db
            .fluent()
            .insert()
            .into(AUDIT)
            .document_id(&record.id)
            .object(record)
            .execute()
            .await
            .map_err(|e| match map_err(e) {
                StoreError::Conflict(_) => StoreError::Conflict(format!(
                    "audit record {} exists; audit is append-only",
                    record.id
                )),
                other => other,
            })?;
        Ok(())
    }

    async fn list_audit(&self, limit: usize) -> Result<Vec<AuditRecord>> {
        let limit = rules::limit(limit)?;
        self.db
            .fluent()
            .select()
            .from(AUDIT)
            .order(|o| o.fields([o.field("ts").desc()]))
            .limit(limit as u32)
            .obj()
            .query()
            .await
            .map_err(map_err)
    }

    async fn put_transfer(&self, record: &TransferRecord) -> Result<bool> {
        let id = record.id.to_string();
        self.db
            .run_transaction(|db, tx| -> TxFuture<'_, bool> {
                let record = record.clone();
                let id = id.clone();
                Box::pin(async move {
                    let existing = read::<TransferRecord>(&db, TRANSFERS, &id)
                        .await
                        .map_err(permanent)?;
                    if existing.is_some_and(|e| e.version >= record.version) {
                        return Ok(false);
                    }
                    write(tx, &db, TRANSFERS, &id, &record).map_err(permanent)?;
                    Ok(true)
                })
            })
            .await
            .map_err(map_err)
    }

    async fn list_transfers(&self, limit: usize) -> Result<Vec<TransferRecord>> {
        let limit = rules::limit(limit)?;
        self.db
            .fluent()
            .select()
            .from(TRANSFERS)
            .order(|o| o.fields([o.field("updatedAt").desc()]))
            .limit(limit as u32)
            .obj()
            .query()
            .await
            .map_err(map_err)
    }

    async fn merge_gossip(&self, entries: &[GossipEntry]) -> Result<usize> {
        for e in entries {
            e.validate()?;
        }
        self.db
            .run_transaction(|db, tx| -> TxFuture<'_, usize> {
                let entries = entries.to_vec();
                Box::pin(async move {
                    // Firestore transactions read everything before they write.
                    let mut winners = Vec::new();
                    for entry in entries {
                        let existing = read::<GossipEntry>(&db, GOSSIP_STATE, &entry.doc_id())
                            .await
                            .map_err(permanent)?;
                        if existing.is_none_or(|old| entry.supersedes(&old)) {
                            winners.push(entry);
                        }
                    }
                    for entry in &winners {
                        write(tx, &db, GOSSIP_STATE, &entry.doc_id(), entry).map_err(permanent)?;
                    }
                    Ok(winners.len())
                })
            })
            .await
            .map_err(map_err)
    }

    async fn list_gossip(&self, limit: usize) -> Result<Vec<GossipEntry>> {
        let limit = rules::limit(limit)?;
        // Ordered by stamp (a composite index in production: deploy/firestore.indexes.json).
        self.db
            .fluent()
            .select()
            .from(GOSSIP_STATE)
            .order(|o| o.fields([o.field("hlc.wallMs").desc(), o.field("hlc.counter").desc()]))
            .limit(limit as u32)
            .obj()
            .query()
            .await
            .map_err(map_err)
    }

    async fn ping(&self) -> Result<()> {
        // A read of a document that need not exist: one round trip, no side effects.
        let _: Option<Peer> = read(&self.db, PEERS, "readiness-probe").await?;
        Ok(())
    }
}
