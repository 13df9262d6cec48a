//! `meshctl token`: a random API token for the signaling proxy and the hashed entry the proxy is
//! configured with (`MESH_API_TOKENS` / `MESH_API_TOKENS_FILE`, proto/SIGNALING.md).

use anyhow::bail;
use base64::Engine as _;
use sha2::{Digest, Sha256};

pub fn run(name: &str, role: &str, json: bool) -> anyhow::Result<()> {
    if name.is_empty() || name.contains([':', ',', '\n']) {
        bail!("--name must be non-empty without ':' or ','");
    }
    let mut bytes = [0u8; 32];
    // The OS RNG: a driver, so it may.
    #[allow(clippy::disallowed_methods)]
    rand::Rng::fill_bytes(&mut rand::rng(), &mut bytes);
    let token = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    let entry = format!(
        "{name}:{role}:{}",
        hex::encode(Sha256::digest(token.as_bytes()))
    );
    #[allow(clippy::print_stdout)] // The command's output.
    if json {
        println!(
            "{}",
            serde_json::json!({"name": name, "role": role, "token": token, "entry": entry})
        );
    } else {
        println!("token (give to the client, shown once): {token}");
        println!("MESH_API_TOKENS entry (give to the proxy): {entry}");
    }
    Ok(())
}
