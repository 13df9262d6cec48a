//! The embedded backend: one SQLite database in WAL mode under the data directory, shared safely
//! by every local process (workers, proxy, gossip job). See docs/adr/0001-embedded-store-sqlite.md.
//!
//! Each table keeps the document as JSON (`doc`, the same shape as Firestore's) beside the
//! columns queries filter and sort on. Read-modify-write runs in `BEGIN IMMEDIATE` transactions
//! so that concurrent writers from other processes serialise on SQLite's lock instead of losing
//! updates; `busy_timeout` makes them wait for it.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use mesh_types::transfer::TransferRecord;
use mesh_types::{AuditRecord, GossipEntry, Link, LinkId, Peer, PeerId, PublicKey};
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::{
    AUDIT, GOSSIP_STATE, LINKS, LinkQuery, LinkWrite, PEERS, PeerUpsert, Result, Store, StoreError,
    TRANSFERS, rules,
};

/// The database file inside the data directory.
pub const DB_FILE: &str = "meshrtc.sqlite3";

/// How long a writer waits for another process's write lock before reporting `Unavailable`.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// Schema version in `PRAGMA user_version`; migrations step from one to the next.
const SCHEMA_VERSION: i64 = 3;

#[derive(Debug, Clone)]
pub struct EmbeddedStore {
    path: PathBuf,
    // rusqlite connections are not Sync; one per store, used from blocking threads.
    conn: Arc<Mutex<Connection>>,
}

impl EmbeddedStore {
    /// Opens (creating if needed) the store in `dir`.
    pub async fn open(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref().to_path_buf();
        tokio::task::spawn_blocking(move || Self::open_blocking(&dir))
            .await
            .map_err(|e| StoreError::Unavailable(format!("opening the store: {e}")))?
    }

    fn open_blocking(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| {
            StoreError::Unavailable(format!(
                "cannot create data directory {}: {e}",
                dir.display()
            ))
        })?;
        let path = dir.join(DB_FILE);
        // Several processes (or the services of one `meshctl up`) may open a new store at the
        // same moment. Switching to WAL and the first migration can then meet another opener's
        // lock in ways where SQLite reports busy at once instead of calling the busy handler, so
        // opening retries for as long as a write would wait.
        let mut pause = Duration::from_millis(10);
        let mut waited = Duration::ZERO;
        loop {
            match Self::try_open(&path) {
                Ok(store) => return Ok(store),
                Err(OpenError::Sql(e)) if is_busy(&e) && waited < BUSY_TIMEOUT => {
                    std::thread::sleep(pause);
                    waited += pause;
                    pause = (pause * 2).min(Duration::from_millis(200));
                }
                Err(OpenError::Sql(e)) => {
                    return Err(match sql(e) {
                        StoreError::Unavailable(why) => StoreError::Unavailable(format!(
                            "cannot open {}: {why}",
                            path.display()
                        )),
                        other => other,
                    });
                }
                Err(OpenError::Store(e)) => return Err(e),
            }
        }
    }

    fn try_open(path: &Path) -> std::result::Result<Self, OpenError> {
        let conn = Connection::open(path)?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
        // WAL lets readers in other processes proceed while one writes; NORMAL sync in WAL mode
        // survives any process crash (a power cut may lose the last commits, never corrupt).
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        migrate(&conn)?;
        Ok(EmbeddedStore {
            path: path.to_path_buf(),
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` on the connection in a blocking thread.
    async fn with<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T> + Send + 'static,
    {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || {
            let mut guard = conn
                .lock()
                .map_err(|_| StoreError::Unavailable("store connection poisoned".into()))?;
            f(&mut guard)
        })
        .await
        .map_err(|e| StoreError::Unavailable(format!("store task failed: {e}")))?
    }
}

/// Why opening failed: SQLite (maybe only busy, worth a retry) or the store's own verdict.
#[derive(Debug)]
enum OpenError {
    Sql(rusqlite::Error),
    Store(StoreError),
}

impl From<rusqlite::Error> for OpenError {
    fn from(e: rusqlite::Error) -> Self {
        OpenError::Sql(e)
    }
}

fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
    )
}

/// Brings the schema up to [`SCHEMA_VERSION`]. Each step is idempotent (`IF NOT EXISTS`), so two
/// openers that both saw the old version may both run it.
fn migrate(conn: &Connection) -> std::result::Result<(), OpenError> {
    let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if version > SCHEMA_VERSION {
        return Err(OpenError::Store(StoreError::Corrupt(format!(
            "database schema {version} is newer than this build understands ({SCHEMA_VERSION})"
        ))));
    }
    if version < 1 {
        conn.execute_batch(&format!(
            "BEGIN IMMEDIATE;
             CREATE TABLE IF NOT EXISTS {PEERS} (id TEXT PRIMARY KEY, doc TEXT NOT NULL);
             CREATE TABLE IF NOT EXISTS {LINKS} (
                 id TEXT PRIMARY KEY, a TEXT NOT NULL, b TEXT NOT NULL, health TEXT NOT NULL,
                 last_ts INTEGER NOT NULL, doc TEXT NOT NULL);
             CREATE INDEX IF NOT EXISTS links_by_ts ON {LINKS} (last_ts DESC, id DESC);
             CREATE INDEX IF NOT EXISTS links_by_a ON {LINKS} (a, last_ts DESC, id DESC);
             CREATE INDEX IF NOT EXISTS links_by_b ON {LINKS} (b, last_ts DESC, id DESC);
             CREATE TABLE IF NOT EXISTS {AUDIT} (id TEXT PRIMARY KEY, ts INTEGER NOT NULL, doc TEXT NOT NULL);
             CREATE INDEX IF NOT EXISTS audit_by_ts ON {AUDIT} (ts DESC, id DESC);
             PRAGMA user_version = 1;
             COMMIT;"
        ))?;
    }
    if version < 2 {
        conn.execute_batch(&format!(
            "BEGIN IMMEDIATE;
             CREATE TABLE IF NOT EXISTS {GOSSIP_STATE} (
                 id TEXT PRIMARY KEY, wall_ms INTEGER NOT NULL, counter INTEGER NOT NULL,
                 doc TEXT NOT NULL);
             CREATE INDEX IF NOT EXISTS gossip_by_hlc ON {GOSSIP_STATE} (wall_ms DESC, counter DESC, id DESC);
             PRAGMA user_version = 2;
             COMMIT;"
        ))?;
    }
    if version < 3 {
        conn.execute_batch(&format!(
            "BEGIN IMMEDIATE;
             CREATE TABLE IF NOT EXISTS {TRANSFERS} (
                 id TEXT PRIMARY KEY, version INTEGER NOT NULL, updated_at INTEGER NOT NULL,
                 doc TEXT NOT NULL);
             CREATE INDEX IF NOT EXISTS transfers_by_update ON {TRANSFERS} (updated_at DESC, id DESC);
             PRAGMA user_version = 3;
             COMMIT;"
        ))?;
    }
    Ok(())
}

/// Maps SQLite errors to kinds: lock time-outs and IO are `Unavailable`, constraint violations
/// `Conflict`.
fn sql(e: rusqlite::Error) -> StoreError {
    use rusqlite::ErrorCode::*;
    match e.sqlite_error_code() {
        Some(ConstraintViolation) => StoreError::Conflict(e.to_string()),
        Some(DatabaseCorrupt | NotADatabase) => StoreError::Corrupt(e.to_string()),
        _ => StoreError::Unavailable(e.to_string()),
    }
}

fn to_doc<T: Serialize>(value: &T) -> Result<String> {
    serde_json::to_string(value).map_err(|e| StoreError::InvalidInput(e.to_string()))
}

/// Statements through the connection's cache: SQLite parses each once per connection, not once
/// per call (parsing cost more than the write itself on the QoS and gossip paths).
trait Cached {
    fn prepare_cached_row<T, P: rusqlite::Params>(
        &self,
        sql: &str,
        params: P,
        f: impl FnOnce(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
    ) -> rusqlite::Result<T>;
    fn prepare_cached_exec<P: rusqlite::Params>(
        &self,
        sql: &str,
        params: P,
    ) -> rusqlite::Result<usize>;
}

impl Cached for Connection {
    fn prepare_cached_row<T, P: rusqlite::Params>(
        &self,
        sql: &str,
        params: P,
        f: impl FnOnce(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
    ) -> rusqlite::Result<T> {
        self.prepare_cached(sql)?.query_row(params, f)
    }

    fn prepare_cached_exec<P: rusqlite::Params>(
        &self,
        sql: &str,
        params: P,
    ) -> rusqlite::Result<usize> {
        self.prepare_cached(sql)?.execute(params)
    }
}

/// Room for every statement this store runs (the default cache holds 16).
const STATEMENT_CACHE: usize = 64;

fn from_doc<T: DeserializeOwned>(doc: &str) -> Result<T> {
    serde_json::from_str(doc).map_err(|e| StoreError::Corrupt(format!("{e}: {doc}")))
}

fn get_peer_tx(tx: &Connection, id: &PeerId) -> Result<Option<Peer>> {
    let doc: Option<String> = tx
        .prepare_cached_row(
            &format!("SELECT doc FROM {PEERS} WHERE id = ?1"),
            [id.as_str()],
            |r| r.get(0),
        )
        .optional()
        .map_err(sql)?;
    doc.as_deref().map(from_doc).transpose()
}

fn put_peer_tx(tx: &Connection, peer: &Peer) -> Result<()> {
    tx.prepare_cached_exec(
        &format!("INSERT INTO {PEERS} (id, doc) VALUES (?1, ?2) ON CONFLICT(id) DO UPDATE SET doc = excluded.doc"),
        params![peer.id.as_str(), to_doc(peer)?],
    )
    .map_err(sql)?;
    Ok(())
}

/// The documents a `SELECT doc ... LIMIT ?1` query returns.
fn newest_docs<T: DeserializeOwned>(
    conn: &Connection,
    query: &str,
    limit: usize,
) -> Result<Vec<T>> {
    let mut stmt = conn.prepare_cached(query).map_err(sql)?;
    let docs = stmt
        .query_map([i64::try_from(limit).unwrap_or(i64::MAX)], |r| {
            r.get::<_, String>(0)
        })
        .map_err(sql)?;
    docs.map(|d| from_doc(&d.map_err(sql)?)).collect()
}

fn not_found(what: &'static str, id: impl ToString) -> StoreError {
    StoreError::NotFound {
        what,
        id: id.to_string(),
    }
}

#[async_trait]
impl Store for EmbeddedStore {
    async fn upsert_peer(&self, peer: &PeerUpsert) -> Result<Peer> {
        let upsert = peer.clone();
        self.with(move |conn| {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(sql)?;
            let merged = rules::merge_peer(get_peer_tx(&tx, &upsert.id)?, &upsert)?;
            put_peer_tx(&tx, &merged)?;
            tx.commit().map_err(sql)?;
            Ok(merged)
        })
        .await
    }

    async fn replace_peer_key(&self, id: &PeerId, key: &PublicKey) -> Result<Peer> {
        let (id, key) = (id.clone(), *key);
        self.with(move |conn| {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(sql)?;
            let existing = get_peer_tx(&tx, &id)?.ok_or_else(|| not_found("peer", &id))?;
            let replaced = rules::replace_key(existing, &key);
            put_peer_tx(&tx, &replaced)?;
            tx.commit().map_err(sql)?;
            Ok(replaced)
        })
        .await
    }

    async fn get_peer(&self, id: &PeerId) -> Result<Peer> {
        let id = id.clone();
        self.with(move |conn| get_peer_tx(conn, &id)?.ok_or_else(|| not_found("peer", &id)))
            .await
    }

    async fn list_peers(&self) -> Result<Vec<Peer>> {
        self.with(|conn| {
            let mut stmt = conn
                .prepare_cached(&format!("SELECT doc FROM {PEERS} ORDER BY id"))
                .map_err(sql)?;
            let docs = stmt.query_map([], |r| r.get::<_, String>(0)).map_err(sql)?;
            docs.map(|d| from_doc(&d.map_err(sql)?)).collect()
        })
        .await
    }

    async fn set_trust(&self, scores: &[(PeerId, f64)]) -> Result<()> {
        rules::validate_scores(scores)?;
        let scores = scores.to_vec();
        self.with(move |conn| {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(sql)?;
            for (id, trust) in &scores {
                let peer = get_peer_tx(&tx, id)?.ok_or_else(|| not_found("peer", id))?;
                put_peer_tx(
                    &tx,
                    &Peer {
                        trust: *trust,
                        ..peer
                    },
                )?;
            }
            tx.commit().map_err(sql)
        })
        .await
    }

    async fn upsert_link(&self, link: &Link) -> Result<LinkWrite> {
        link.validate()?;
        let link = link.clone();
        self.with(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(sql)?;
            let existing: Option<Link> = tx
                .prepare_cached_row(&format!("SELECT doc FROM {LINKS} WHERE id = ?1"), [link.id.as_str()], |r| {
                    r.get::<_, String>(0)
                })
                .optional()
                .map_err(sql)?
                .as_deref()
                .map(from_doc)
                .transpose()?;
            let outcome = rules::link_write(existing.as_ref(), &link);
            if outcome == LinkWrite::Applied {
                tx.prepare_cached_exec(
                    &format!(
                        "INSERT INTO {LINKS} (id, a, b, health, last_ts, doc) VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                         ON CONFLICT(id) DO UPDATE SET health = excluded.health,
                             last_ts = excluded.last_ts, doc = excluded.doc"
                    ),
                    params![
                        link.id.as_str(),
                        link.a.as_str(),
                        link.b.as_str(),
                        link.health.as_str(),
                        i64::try_from(link.qos.last_ts).unwrap_or(i64::MAX),
                        to_doc(&link)?
                    ],
                )
                .map_err(sql)?;
            }
            tx.commit().map_err(sql)?;
            Ok(outcome)
        })
        .await
    }

    async fn get_link(&self, id: &LinkId) -> Result<Link> {
        let id = id.clone();
        self.with(move |conn| {
            let doc: Option<String> = conn
                .prepare_cached_row(
                    &format!("SELECT doc FROM {LINKS} WHERE id = ?1"),
                    [id.as_str()],
                    |r| r.get(0),
                )
                .optional()
                .map_err(sql)?;
            from_doc(&doc.ok_or_else(|| not_found("link", &id))?)
        })
        .await
    }

    async fn list_links(&self, query: &LinkQuery) -> Result<Vec<Link>> {
        let limit = rules::limit(query.limit)?;
        let query = query.clone();
        self.with(move |conn| {
            let mut stmt = conn
                .prepare_cached(&format!(
                    "SELECT doc FROM {LINKS}
                     WHERE (?1 IS NULL OR a = ?1 OR b = ?1) AND (?2 IS NULL OR health = ?2)
                     ORDER BY last_ts DESC, id DESC LIMIT ?3"
                ))
                .map_err(sql)?;
            let docs = stmt
                .query_map(
                    params![
                        query.peer.as_ref().map(|p| p.as_str()),
                        query.health.map(|h| h.as_str()),
                        limit as i64
                    ],
                    |r| r.get::<_, String>(0),
                )
                .map_err(sql)?;
            docs.map(|d| from_doc(&d.map_err(sql)?)).collect()
        })
        .await
    }

    async fn append_audit(&self, record: &AuditRecord) -> Result<()> {
        let record = record.clone();
        self.with(move |conn| {
            let inserted = conn
                .prepare_cached_exec(
                    &format!("INSERT INTO {AUDIT} (id, ts, doc) VALUES (?1, ?2, ?3) ON CONFLICT(id) DO NOTHING"),
                    params![record.id, i64::try_from(record.ts).unwrap_or(i64::MAX), to_doc(&record)?],
                )
                .map_err(sql)?;
            if inserted == 0 {
                return Err(StoreError::Conflict(format!("audit record {} exists; audit is append-only", record.id)));
            }
            Ok(())
        })
        .await
    }

    async fn list_audit(&self, limit: usize) -> Result<Vec<AuditRecord>> {
        let limit = rules::limit(limit)?;
        self.with(move |conn| {
            newest_docs(
                conn,
                &format!("SELECT doc FROM {AUDIT} ORDER BY ts DESC, id DESC LIMIT ?1"),
                limit,
            )
        })
        .await
    }

    async fn merge_gossip(&self, entries: &[GossipEntry]) -> Result<usize> {
        for e in entries {
            e.validate()?;
        }
        let entries = entries.to_vec();
        self.with(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(sql)?;
            let mut written = 0;
            for entry in &entries {
                let id = entry.doc_id();
                let existing: Option<GossipEntry> = tx
                    .prepare_cached_row(&format!("SELECT doc FROM {GOSSIP_STATE} WHERE id = ?1"), [&id], |r| {
                        r.get::<_, String>(0)
                    })
                    .optional()
                    .map_err(sql)?
                    .as_deref()
                    .map(from_doc)
                    .transpose()?;
                if existing.as_ref().is_some_and(|old| !entry.supersedes(old)) {
                    continue;
                }
                tx.prepare_cached_exec(
                    &format!(
                        "INSERT INTO {GOSSIP_STATE} (id, wall_ms, counter, doc) VALUES (?1, ?2, ?3, ?4)
                         ON CONFLICT(id) DO UPDATE SET wall_ms = excluded.wall_ms,
                             counter = excluded.counter, doc = excluded.doc"
                    ),
                    params![
                        id,
                        i64::try_from(entry.hlc.wall_ms).unwrap_or(i64::MAX),
                        i64::from(entry.hlc.counter),
                        to_doc(entry)?
                    ],
                )
                .map_err(sql)?;
                written += 1;
            }
            tx.commit().map_err(sql)?;
            Ok(written)
        })
        .await
    }

    async fn put_transfer(&self, record: &TransferRecord) -> Result<bool> {
        let record = record.clone();
        self.with(move |conn| {
            let changed = conn
                .prepare_cached_exec(
                    &format!(
                        "INSERT INTO {TRANSFERS} (id, version, updated_at, doc) VALUES (?1, ?2, ?3, ?4)
                         ON CONFLICT(id) DO UPDATE SET version = excluded.version,
                             updated_at = excluded.updated_at, doc = excluded.doc
                         WHERE excluded.version > {TRANSFERS}.version"
                    ),
                    params![
                        record.id.to_string(),
                        i64::try_from(record.version).unwrap_or(i64::MAX),
                        i64::try_from(record.updated_at).unwrap_or(i64::MAX),
                        to_doc(&record)?
                    ],
                )
                .map_err(sql)?;
            Ok(changed > 0)
        })
        .await
    }

    async fn list_transfers(&self, limit: usize) -> Result<Vec<TransferRecord>> {
        let limit = rules::limit(limit)?;
        self.with(move |conn| {
            newest_docs(
                conn,
                &format!("SELECT doc FROM {TRANSFERS} ORDER BY updated_at DESC, id DESC LIMIT ?1"),
                limit,
            )
        })
        .await
    }

    async fn list_gossip(&self, limit: usize) -> Result<Vec<GossipEntry>> {
        let limit = rules::limit(limit)?;
        self.with(move |conn| {
            newest_docs(
                conn,
                &format!(
                    "SELECT doc FROM {GOSSIP_STATE} ORDER BY wall_ms DESC, counter DESC, id DESC LIMIT ?1"
                ),
                limit,
            )
        })
        .await
    }

    async fn ping(&self) -> Result<()> {
        self.with(|conn| {
            conn.prepare_cached_row("SELECT 1", [], |_| Ok(()))
                .map_err(sql)
        })
        .await
    }
}
