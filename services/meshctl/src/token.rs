//! `meshctl token`: a random API token for the signaling proxy and the hashed entry the proxy is
//! configured with (`MESH_API_TOKENS` / `MESH_API_TOKENS_FILE`, proto/SIGNALING.md).

use std::io::Write as _;

use anyhow::bail;
use base64::Engine as _;

/// A fresh random token (32 bytes from the OS, URL-safe base64).
pub fn generate() -> String {
    let mut bytes = [0u8; 32];
    // The OS RNG: a driver, so it may.
    #[allow(clippy::disallowed_methods)]
    rand::Rng::fill_bytes(&mut rand::rng(), &mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// The proxy's configuration entry for `token`: it holds only the hash.
pub fn entry(name: &str, role: &str, token: &str) -> String {
    format!("{name}:{role}:{}", mesh_auth::sha256_hex(token))
}

pub fn run(name: &str, role: &str, json: bool) -> anyhow::Result<()> {
    if name.is_empty() || name.contains([':', ',', '\n']) {
        bail!("--name must be non-empty without ':' or ','");
    }
    let token = generate();
    let entry = entry(name, role, &token);
    let mut out = std::io::stdout().lock();
    if json {
        let v = serde_json::json!({"name": name, "role": role, "token": token, "entry": entry});
        writeln!(out, "{v}")?;
    } else {
        writeln!(out, "token (give to the client, shown once): {token}")?;
        writeln!(out, "MESH_API_TOKENS entry (give to the proxy): {entry}")?;
    }
    Ok(())
}
