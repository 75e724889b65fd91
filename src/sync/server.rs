//! `zippyfs serve`: the server that orders each volume's change-sets,
//! keeps them and their blocks, and streams them to every peer.
//!
//! ## The server directory
//!
//! ```text
//! server.crt, server.key   its certificate and key (made on first start)
//! reset.key                its QUIC stateless-reset key (made on first start)
//! peers                    one line per peer: id, name, volume, and the
//!                          BLAKE3 (derive_key) hash of its credential, tab-
//!                          separated; the credential itself is never kept
//! store/                   the store engine: logs and blocks
//! status.json              bytes and blocks moved, connections (for tests
//!                          and operators)
//! ```
//!
//! ## Keys in the store
//!
//! ```text
//! L volume 0x00 seq u64 BE      a change-set (wire encoding), origin and
//!                                time set by the server
//! H hash                         a block's bytes (deduplicated by hash)
//! C volume 0x00 peer u32 BE      the last push taken: counter u64 LE, and
//!                                its sequence u64 LE (absent in stores
//!                                written before protocol 4)
//! K volume                       the cut: the log's sequences up to it are
//!                                gone, folded into the snapshot, u64 LE
//! S volume 0x00 part u32 BE      the snapshot, the volume as of the cut: a
//!                                Snapshot frame's body per part
//!                                (`snapshot.rs`)
//! ```
//!
//! A push is durable (one store commit: its blocks, the change-set, the
//! counter) before it is acknowledged or streamed: nothing acknowledged is
//! lost if the server is killed at any moment. One thread serves every
//! connection; a malformed frame or a protocol violation closes that one
//! connection.
//!
//! ## Cutting the log
//!
//! A volume keeps its last `keep_log` change-sets (`serve --keep-log`).
//! When it holds twice that, the older half is folded into the snapshot
//! with the function every peer applies the log with (`apply.rs`), and
//! dropped, and every block that neither a snapshot nor a change-set of
//! any volume named before the cut, nor names after it, is deleted (a
//! block the cut leaves unnamed goes at the next one, so that a peer
//! fetching it meanwhile gets it): one store commit, so a crash leaves
//! either the old log or the new cut. A peer whose last applied sequence is below
//! the cut gets the snapshot's parts in place of the log up to it
//! (`Peer::on_snapshot`). Cutting scans every volume's snapshot and log,
//! once per `keep_log` pushes.
//!
//! It is off unless asked for (`keep_log` 0), for these reasons. A push
//! of a peer's own taken but not acknowledged before the peer restarted
//! (the Welcome's `taken` tells a peer that kept running; a restarted one
//! has forgotten the push), then passed by a cut, is rebased by the peer
//! as still pending: what came after it (a delete, an overwrite) is
//! undone or becomes a conflict copy. A peer still fetching the
//! blocks of change-sets folded away two cuts ago is refused them (the
//! sweep deleted them) and starts again from the snapshot. And a snapshot is
//! applied as one change-set: its blocks are held in memory together, not
//! a window at a time.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::sync::watch;

use super::stream::Counted;
use super::tree::{ChangeSet, Hash, Op};
use super::wire::Msg;
use super::{SyncError, random32, tls, write_atomic, write_private};
use crate::store::{Store, StoreOptions};

mod conn;
mod cut;
mod peers;

use cut::cut_if_due;
pub use peers::{PeerEntry, add_peer, load_peers, remove_peer};

fn log_key(volume: &str, seq: u64) -> Vec<u8> {
    let mut k = vec![b'L'];
    k.extend_from_slice(volume.as_bytes());
    k.push(0);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

fn block_key(h: &Hash) -> Vec<u8> {
    let mut k = vec![b'H'];
    k.extend_from_slice(h);
    k
}

fn counter_key(volume: &str, peer: u32) -> Vec<u8> {
    let mut k = vec![b'C'];
    k.extend_from_slice(volume.as_bytes());
    k.push(0);
    k.extend_from_slice(&peer.to_be_bytes());
    k
}

/// The last push taken from `peer`: (counter, sequence; 0 if not kept).
fn last_taken(st: &State, volume: &str, peer: u32) -> Result<(u64, u64), SyncError> {
    let snap = st.store.latest()?;
    let v = snap.get(&counter_key(volume, peer))?.unwrap_or_default();
    let word = |at: usize| {
        v.get(at..at + 8)
            .and_then(|b| b.try_into().ok())
            .map_or(0, u64::from_le_bytes)
    };
    Ok((word(0), word(8)))
}

/// Every block hash a change-set names.
pub fn hashes_of(cs: &ChangeSet) -> Vec<Hash> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for op in &cs.ops {
        if let Op::Node { blocks, .. } = op {
            for h in blocks.iter().filter_map(|(_, h)| *h) {
                if seen.insert(h) {
                    out.push(h);
                }
            }
        }
    }
    out
}

/// What the server has moved, for `status.json` (bytes are counted by
/// every connection into `State::bytes`).
#[derive(Default)]
struct Totals {
    blocks_in: u64,
    blocks_out: u64,
    /// Of those, how many came or went as a patch.
    patches_in: u64,
    patches_out: u64,
    pushes: u64,
    connections: u64,
    /// Snapshots sent in place of a cut log, and logs cut.
    snapshots_out: u64,
    cuts: u64,
    blocks_deleted: u64,
}

struct State {
    dir: PathBuf,
    store: Store,
    server_id: [u8; 16],
    heads: RefCell<HashMap<String, watch::Sender<u64>>>,
    totals: RefCell<Totals>,
    /// Frame bytes read and written, all connections.
    bytes: Arc<Counted>,
    /// The change-sets each volume keeps (see "Cutting the log"); 0: all.
    keep_log: u64,
    /// The room there was ([`State::room`]) when a push last could not be
    /// stored for lack of it, and when: until there is more, or for
    /// [`FULL_FOR`], a push that needs blocks is refused before they cross
    /// the network, not after.
    full: std::cell::Cell<Option<(u64, std::time::Instant, Full)>>,
}

impl State {
    fn head(&self, volume: &str) -> Result<watch::Receiver<u64>, SyncError> {
        if let Some(tx) = self.heads.borrow().get(volume) {
            return Ok(tx.subscribe());
        }
        let snap = self.store.latest()?;
        let (from, to) = (log_key(volume, 0), log_key(volume, u64::MAX));
        let mut head = 0;
        for item in snap.range(&from[..]..&to[..])? {
            let (k, _) = item?;
            head = k
                .get(k.len().saturating_sub(8)..)
                .and_then(|b| b.try_into().ok())
                .map_or(0, u64::from_be_bytes);
        }
        drop(snap);
        // A log cut to nothing still ends at its cut.
        let head = head.max(self.cut(volume)?);
        let (tx, rx) = watch::channel(head);
        self.heads.borrow_mut().insert(volume.to_string(), tx);
        Ok(rx)
    }

    fn change_set(&self, volume: &str, seq: u64) -> Result<ChangeSet, SyncError> {
        let snap = self.store.latest()?;
        let bytes = snap
            .get(&log_key(volume, seq))?
            .ok_or_else(|| SyncError::Protocol(format!("sequence {seq} of {volume} is missing")))?;
        match Msg::decode(4, bytes)? {
            Msg::Push(cs) => Ok(cs),
            _ => Err(SyncError::Protocol("a stored change-set is not one".into())),
        }
    }

    /// Bytes the store could grow into: the free space of the disk
    /// holding it, and its own free pages.
    fn room(&self) -> u64 {
        let free_pages = self.store.stats().free_pages * crate::store::PAGE_SIZE as u64;
        let host =
            crate::fs::host_statvfs(&self.dir).map_or(0, |v| v.f_bavail.saturating_mul(v.f_frsize));
        host + free_pages
    }

    /// Refuses a push that needs blocks while the disk is as full as when
    /// the last one failed; lets it through once there is more room.
    fn room_for_blocks(&self) -> Result<(), SyncError> {
        if let Some((then, at, kind)) = self.full.get() {
            let now = self.room();
            // Past FULL_FOR a push tries again (a smaller one may fit, a
            // quota may have been raised, which statvfs does not show).
            if now <= then && at.elapsed() < FULL_FOR {
                return Err(SyncError::Store(match kind {
                    Full::Disk => crate::store::StoreError::NoSpace,
                    Full::Quota => crate::store::StoreError::Quota,
                }));
            }
            tracing::info!(room = now, "room again for pushes");
            self.full.set(None);
        }
        Ok(())
    }

    fn has_block(&self, h: &Hash) -> Result<bool, SyncError> {
        Ok(self.store.latest()?.get(&block_key(h))?.is_some())
    }

    fn block(&self, h: &Hash) -> Result<Option<Vec<u8>>, SyncError> {
        Ok(self.store.latest()?.get(&block_key(h))?.map(<[u8]>::to_vec))
    }

    fn write_status(&self) {
        let t = self.totals.borrow();
        let heads: BTreeMap<String, u64> = self
            .heads
            .borrow()
            .iter()
            .map(|(v, tx)| (v.clone(), *tx.borrow()))
            .collect();
        let json = serde_json::json!({
            "bytes_in": self.bytes.read.load(Ordering::Relaxed),
            "bytes_out": self.bytes.written.load(Ordering::Relaxed),
            "blocks_in": t.blocks_in,
            "blocks_out": t.blocks_out,
            "patches_in": t.patches_in,
            "patches_out": t.patches_out,
            "pushes": t.pushes,
            "connections": t.connections,
            "snapshots_out": t.snapshots_out,
            "cuts": t.cuts,
            "blocks_deleted": t.blocks_deleted,
            "heads": heads,
        });
        let _ = write_atomic(&self.dir.join("status.json"), json.to_string().as_bytes());
    }
}

/// Runs the server in `dir` on `listen` until the process is stopped;
/// `ready` is told the address bound and the certificate's fingerprint.
/// The change-sets a volume keeps unless `serve --keep-log` says: 0, all
/// of them (the log is never cut; see "Cutting the log" for why not yet).
pub const DEFAULT_KEEP_LOG: u64 = 0;

pub fn serve(
    dir: &Path,
    listen: SocketAddr,
    keep_log: u64,
    ready: impl FnOnce(SocketAddr, &str),
) -> Result<(), SyncError> {
    serve_until(
        dir,
        listen,
        keep_log,
        ready,
        Arc::new(tokio::sync::Notify::new()),
    )
}

/// [`serve`] until `stop` is notified (tests).
pub fn serve_until(
    dir: &Path,
    listen: SocketAddr,
    keep_log: u64,
    ready: impl FnOnce(SocketAddr, &str),
    stop: Arc<tokio::sync::Notify>,
) -> Result<(), SyncError> {
    std::fs::create_dir_all(dir).map_err(|e| SyncError::io(dir, e))?;
    let (cert, key) = tls::server_identity(dir)?;
    let fingerprint = tls::fingerprint(&cert);
    let store_dir = dir.join("store");
    std::fs::create_dir_all(&store_dir).map_err(|e| SyncError::io(&store_dir, e))?;
    let store = Store::open(&store_dir, StoreOptions::default())?;
    let mut server_id = [0u8; 16];
    server_id.copy_from_slice(&blake3::hash(&cert).as_bytes()[..16]);
    let state = Rc::new(State {
        dir: dir.to_path_buf(),
        store,
        server_id,
        heads: RefCell::new(HashMap::new()),
        totals: RefCell::new(Totals::default()),
        bytes: Arc::new(Counted::default()),
        keep_log,
        full: std::cell::Cell::new(None),
    });
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| SyncError::Net(e.to_string()))?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async move {
        // The stateless-reset key outlives the process: after a restart, a
        // peer's packet on its old connection is answered with a reset it
        // can verify, and it reconnects at once instead of waiting out the
        // idle timeout.
        // So does the key connection ids are made with, or the new process
        // drops those packets as carrying ids it never made.
        let keys = reset_key(&state.dir)?;
        let reset = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &keys);
        let cid_key = u64::from_le_bytes(keys[..8].try_into().unwrap_or_default())
            ^ u64::from_le_bytes(keys[24..].try_into().unwrap_or_default());
        let mut config = quinn::EndpointConfig::new(Arc::new(reset));
        config.cid_generator(move || {
            Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_key))
        });
        let socket = std::net::UdpSocket::bind(listen)
            .map_err(|e| SyncError::Net(format!("cannot listen on {listen}: {e}")))?;
        let endpoint = quinn::Endpoint::new(
            config,
            Some(tls::server_config(cert, key)?),
            socket,
            Arc::new(quinn::TokioRuntime),
        )
        .map_err(|e| SyncError::Net(format!("cannot listen on {listen}: {e}")))?;
        let bound = endpoint
            .local_addr()
            .map_err(|e| SyncError::Net(e.to_string()))?;
        ready(bound, &fingerprint);
        // status.json, twice a second while anything moves.
        let st = state.clone();
        tokio::task::spawn_local(async move {
            let mut last = (u64::MAX, u64::MAX);
            loop {
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                let now = (
                    st.bytes.read.load(Ordering::Relaxed),
                    st.bytes.written.load(Ordering::Relaxed),
                );
                if now != last {
                    st.write_status();
                    last = now;
                }
            }
        });
        loop {
            let incoming = tokio::select! {
                i = endpoint.accept() => i,
                _ = stop.notified() => None,
            };
            let Some(incoming) = incoming else {
                endpoint.close(0u32.into(), b"server stopping");
                break;
            };
            let st = state.clone();
            tokio::task::spawn_local(async move {
                let remote = incoming.remote_address();
                let bytes = st.bytes.clone();
                let r = conn::connection(&st, incoming, &bytes).await;
                st.write_status();
                match r {
                    Ok(()) => tracing::info!(%remote, "connection closed"),
                    Err(e) => tracing::warn!(%remote, "connection closed: {e}"),
                }
            });
        }
        Ok(())
    })
}

/// The server's stateless-reset key (`reset.key`), made on first start.
fn reset_key(dir: &Path) -> Result<[u8; 32], SyncError> {
    let path = dir.join("reset.key");
    match std::fs::read(&path) {
        Ok(b) if b.len() == 32 => {
            let mut k = [0u8; 32];
            k.copy_from_slice(&b);
            Ok(k)
        }
        Ok(_) => Err(SyncError::Config(format!(
            "{} is not 32 bytes",
            path.display()
        ))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let k = random32()?;
            write_private(&path, &k)?;
            Ok(k)
        }
        Err(e) => Err(SyncError::io(&path, e)),
    }
}

/// What ran out when a push last could not be stored (the refusal says).
#[derive(Clone, Copy)]
enum Full {
    Disk,
    Quota,
}

/// How long a full disk refuses pushes that need blocks while it has no
/// more room than when the last one failed.
const FULL_FOR: std::time::Duration = std::time::Duration::from_secs(60);
