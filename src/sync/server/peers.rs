//! The server's peers: the `peers` file of its directory, and the
//! credentials it knows them by (kept only as a hash).

use std::path::Path;

use super::super::{SyncError, hex, random32, write_private};

const PEERS: &str = "peers";
const CREDENTIAL_CONTEXT: &str = "zippyfs sync credential 2026-12-04";

/// A peer the server knows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerEntry {
    pub id: u32,
    pub name: String,
    pub volume: String,
    /// Hex of the credential's hash.
    pub hash: String,
}

pub(super) fn credential_hash(credential: &str) -> String {
    hex(&blake3::derive_key(
        CREDENTIAL_CONTEXT,
        credential.trim().as_bytes(),
    ))
}

pub fn load_peers(dir: &Path) -> Result<Vec<PeerEntry>, SyncError> {
    let path = dir.join(PEERS);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(SyncError::io(&path, e)),
    };
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        let f: Vec<&str> = line.split('\t').collect();
        let (Some(id), Some(name), Some(volume), Some(hash)) = (
            f.first().and_then(|s| s.parse().ok()),
            f.get(1),
            f.get(2),
            f.get(3),
        ) else {
            return Err(SyncError::Config(format!(
                "{}: line {} is not `id<TAB>name<TAB>volume<TAB>hash`",
                path.display(),
                n + 1
            )));
        };
        out.push(PeerEntry {
            id,
            name: name.to_string(),
            volume: volume.to_string(),
            hash: hash.to_string(),
        });
    }
    Ok(out)
}

fn save_peers(dir: &Path, peers: &[PeerEntry]) -> Result<(), SyncError> {
    let mut text = String::from("# id\tname\tvolume\tcredential hash (zippyfs serve add-peer)\n");
    for p in peers {
        text.push_str(&format!("{}\t{}\t{}\t{}\n", p.id, p.name, p.volume, p.hash));
    }
    write_private(&dir.join(PEERS), text.as_bytes())
}

fn good_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

/// Makes peer `name`'s credential for `volume`; returns it (shown once).
pub fn add_peer(dir: &Path, name: &str, volume: &str) -> Result<String, SyncError> {
    if !good_label(name) || !good_label(volume) {
        return Err(SyncError::Config(
            "peer and volume names are 1 to 64 letters, digits, '-', '_' or '.'".into(),
        ));
    }
    std::fs::create_dir_all(dir).map_err(|e| SyncError::io(dir, e))?;
    let mut peers = load_peers(dir)?;
    if peers.iter().any(|p| p.name == name) {
        return Err(SyncError::Config(format!(
            "peer {name} exists: remove-peer it first to make a new credential"
        )));
    }
    let credential = format!("zpc1-{}", hex(&random32()?));
    let id = peers.iter().map(|p| p.id).max().unwrap_or(0) + 1;
    peers.push(PeerEntry {
        id,
        name: name.to_string(),
        volume: volume.to_string(),
        hash: credential_hash(&credential),
    });
    save_peers(dir, &peers)?;
    Ok(credential)
}

/// Revokes peer `name`: its credential no longer connects.
pub fn remove_peer(dir: &Path, name: &str) -> Result<(), SyncError> {
    let mut peers = load_peers(dir)?;
    let before = peers.len();
    peers.retain(|p| p.name != name);
    if peers.len() == before {
        return Err(SyncError::Config(format!("no peer named {name}")));
    }
    save_peers(dir, &peers)
}
