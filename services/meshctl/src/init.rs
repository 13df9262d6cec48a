//! `meshctl init`: identities and signed registrations for a local mesh in the embedded store.
//! Each registration is signed with the peer's key and verified, as the proxy verifies remote
//! registrations, before it is stored.

use std::io::Write as _;
use std::path::Path;

use anyhow::Context as _;
use mesh_store::embedded::EmbeddedStore;
use mesh_store::{PeerUpsert, Store};
use mesh_types::peer::INITIAL_TRUST;
use mesh_types::signing::Signed;
use mesh_types::{Endpoints, PeerId, PeerRegistration, Verifier, VerifierConfig};
use serde::Serialize;

use crate::keys;

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Row {
    id: PeerId,
    kid: String,
    pub_key: String,
    trust: f64,
    last_seen_at: u64,
    /// `new` when this run created the peer's key, `resumed` when it was already there.
    status: &'static str,
}

pub async fn run(peers: u16, data_dir: &Path, region: &str, json: bool) -> anyhow::Result<()> {
    let store = EmbeddedStore::open(data_dir.join("store"))
        .await
        .with_context(|| format!("opening the embedded store in {}", data_dir.display()))?;
    let mut verifier = Verifier::new(VerifierConfig::default());
    let mut rows = Vec::new();
    for n in 1..=peers {
        let id = PeerId::new(format!("peer-{n}"))?;
        let (identity, created) =
            keys::load_or_create(&id, &data_dir.join("keys").join(format!("{id}.seed")))?;
        let now = mesh_service::now_ms();
        let mut registration = PeerRegistration::new(
            id.clone(),
            identity.public_key(),
            Some(region.to_string()),
            Endpoints::default(),
            now,
        );
        registration.sign(&identity)?;
        verifier
            .verify(&registration, &registration.pub_key, now)
            .with_context(|| format!("verifying the registration of {id}"))?;
        let stored = store
            .upsert_peer(&PeerUpsert {
                id: registration.id.clone(),
                pub_key: registration.pub_key,
                region: registration.region.clone(),
                endpoints: registration.endpoints.clone(),
                seen_at: registration.ts,
                initial_trust: INITIAL_TRUST,
            })
            .await
            .with_context(|| format!("registering {id}"))?;
        rows.push(Row {
            id: stored.id,
            kid: stored.pub_key.key_id().to_string(),
            pub_key: stored.pub_key.to_base64(),
            trust: stored.trust,
            last_seen_at: stored.last_seen_at,
            status: if created { "new" } else { "resumed" },
        });
    }

    let mut out = std::io::stdout().lock();
    if json {
        writeln!(
            out,
            "{}",
            serde_json::to_string_pretty(
                &serde_json::json!({"peers": rows, "store": store.path()})
            )?
        )?;
        return Ok(());
    }
    writeln!(
        out,
        "{:<12} {:<18} {:>6}  {:<8}",
        "PEER", "KEY ID", "TRUST", "STATUS"
    )?;
    for r in &rows {
        writeln!(
            out,
            "{:<12} {:<18} {:>6.3}  {:<8}",
            r.id.as_str(),
            r.kid,
            r.trust,
            r.status
        )?;
    }
    writeln!(
        out,
        "\n{} peers registered in {}",
        rows.len(),
        store.path().display()
    )?;
    Ok(())
}
