//! Peer identities on disk: one base64 Ed25519 seed per file, readable by its owner only.

use std::io::Write as _;
use std::path::Path;

use anyhow::{Context as _, bail};
use mesh_types::{Identity, PeerId};

/// Loads the identity in `path`, or creates one there if the file does not exist.
/// Returns the identity and whether it was created.
pub fn load_or_create(id: &PeerId, path: &Path) -> anyhow::Result<(Identity, bool)> {
    match std::fs::read_to_string(path) {
        Ok(seed) => {
            let identity = Identity::from_seed_base64(id.clone(), &seed)
                .with_context(|| format!("reading the key of {id} from {}", path.display()))?;
            Ok((identity, false))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok((create(id, path)?, true)),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// Generates an identity and writes its seed to `path`, which must not exist.
pub fn create(id: &PeerId, path: &Path) -> anyhow::Result<Identity> {
    // The OS RNG: a driver, so it may.
    #[allow(clippy::disallowed_methods)]
    let identity = Identity::generate(id.clone(), &mut rand::rng());
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options
        .open(path)
        .with_context(|| format!("creating {} (it must not exist yet)", path.display()))?;
    file.write_all(identity.seed_base64().as_bytes())?;
    file.write_all(b"\n")?;
    file.sync_all()?;
    Ok(identity)
}

/// `meshctl keygen`: a new identity in `out`; with `register`, also registered with the proxy.
pub async fn keygen(
    id: &str,
    out: &Path,
    register: Option<(&crate::client::Remote, Option<String>, Option<String>)>,
    json: bool,
) -> anyhow::Result<()> {
    let id = PeerId::new(id)?;
    if out.exists() {
        bail!("{} exists; refusing to overwrite a key", out.display());
    }
    let identity = create(&id, out)?;
    if let Some((remote, region, endpoint)) = register {
        return crate::commands::register(remote, &identity, region, endpoint, json, out)
            .await
            .with_context(|| {
                format!(
                    "registering {id} (the key is kept in {}; register it again with the same \
                     seed once the proxy is reachable)",
                    out.display()
                )
            });
    }
    let key = identity.public_key();
    let mut stdout = std::io::stdout().lock();
    if json {
        let v = serde_json::json!({"id": id, "pubKey": key, "kid": key.key_id(), "seedFile": out});
        writeln!(stdout, "{v}")?;
    } else {
        writeln!(stdout, "peer     {id}")?;
        writeln!(stdout, "pubKey   {key}")?;
        writeln!(stdout, "kid      {}", key.key_id())?;
        writeln!(
            stdout,
            "seed in  {} (set MESH_SIGNING_KEY_FILE to it)",
            out.display()
        )?;
    }
    Ok(())
}
