//! What a store keeps of its sync, and what it shows: `sync.conf` (the
//! server and the credential, written by `zippyfs join`), `sync.state`
//! (the peer's counters and the version of its tree store, `sync.tree/`,
//! that holds its synced tree; format in `wire/state.rs`), and
//! the status `daemon.json` and `zippyfs status` print.
//!
//! ## `sync.conf` (readable by its owner only)
//!
//! ```text
//! server = quic://HOST:PORT/VOLUME
//! fingerprint = <SHA-256 of the server's certificate, hex>
//! credential = <the peer's credential>
//! ```

use std::collections::HashMap;
use std::path::Path;

use super::peer::Peer;
use super::tree::{Tree, TreeStore};
use super::wire::state;
use super::{SyncError, write_private};

/// The sync threads' nice value unless `-o sync_nice` says otherwise:
/// sync is background work, and on a machine whose CPUs are busy with the
/// mount's own writes it takes what they leave and catches up after
/// (`tuning.md` has the measured effect).
pub const DEFAULT_NICE: i32 = 10;

/// The most files, names and entries of changes not yet pushed a mount
/// holds in memory before it spills them into the tree store, unless
/// `-o sync_spill` says otherwise: about 8 MiB of small files' changes.
pub const DEFAULT_SPILL_AT: usize = 16_384;

pub const CONF_FILE: &str = "sync.conf";
pub const STATE_FILE: &str = "sync.state";

/// Where a store syncs to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyncConf {
    pub host: String,
    pub port: u16,
    pub volume: String,
    pub fingerprint: String,
    pub credential: String,
    /// Bytes of blocks held or asked for, at most, for change-sets not
    /// yet applied (`-o sync_window`; [`DEFAULT_WINDOW`]).
    pub window: u64,
    /// The nice value of the sync threads (`-o sync_nice`; [`DEFAULT_NICE`]).
    pub nice: i32,
    /// Changes not yet pushed held in memory before a spill (`-o
    /// sync_spill`; [`DEFAULT_SPILL_AT`]).
    pub spill_at: usize,
}

impl SyncConf {
    /// Parses `quic://HOST:PORT/VOLUME`.
    pub fn parse_url(url: &str) -> Result<(String, u16, String), SyncError> {
        let bad = || SyncError::Config(format!("{url:?} is not quic://HOST:PORT/VOLUME"));
        let rest = url.strip_prefix("quic://").ok_or_else(bad)?;
        let (addr, volume) = rest.split_once('/').ok_or_else(bad)?;
        let (host, port) = addr.rsplit_once(':').ok_or_else(bad)?;
        let port = port.parse().map_err(|_| bad())?;
        if host.is_empty() || volume.is_empty() || volume.contains('/') {
            return Err(bad());
        }
        Ok((
            host.trim_matches(['[', ']']).to_string(),
            port,
            volume.to_string(),
        ))
    }

    pub fn url(&self) -> String {
        format!("quic://{}:{}/{}", self.host, self.port, self.volume)
    }

    /// The store's sync configuration, if it has one.
    pub fn load(store: &Path) -> Result<Option<SyncConf>, SyncError> {
        let path = store.join(CONF_FILE);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(SyncError::io(&path, e)),
        };
        let mut fields: HashMap<&str, &str> = HashMap::new();
        for line in text.lines() {
            if let Some((k, v)) = line.split_once('=') {
                fields.insert(k.trim(), v.trim());
            }
        }
        let get = |k: &str| {
            fields.get(k).map(|v| v.to_string()).ok_or_else(|| {
                SyncError::Config(format!("{}: no `{k} = ...` line", path.display()))
            })
        };
        let (host, port, volume) = SyncConf::parse_url(&get("server")?)?;
        Ok(Some(SyncConf {
            host,
            port,
            volume,
            fingerprint: get("fingerprint")?,
            credential: get("credential")?,
            window: DEFAULT_WINDOW,
            nice: DEFAULT_NICE,
            spill_at: DEFAULT_SPILL_AT,
        }))
    }

    pub fn save(&self, store: &Path) -> Result<(), SyncError> {
        let text = format!(
            "server = {}\nfingerprint = {}\ncredential = {}\n",
            self.url(),
            self.fingerprint,
            self.credential
        );
        write_private(&store.join(CONF_FILE), text.as_bytes())
    }
}

/// This mount's own commits not yet wholly on the server, oldest first,
/// as runs of (the last version of the run, versions in it, bytes they
/// wrote). Past [`QUEUED_RUNS`] the two oldest runs become one, so it
/// stays small however long a peer is offline (a run goes once its last
/// version is on the server: merged, it may show a little long).
#[derive(Clone, Debug, Default)]
pub struct Queued {
    runs: std::collections::VecDeque<(u64, u64, u64)>,
    /// Not yet known whether an earlier mount left changes unpushed (the
    /// first push, or the first look that finds nothing to push, tells).
    pub unchecked: bool,
}

const QUEUED_RUNS: usize = 256;

impl Queued {
    /// At a mount's start: nothing counted yet, and what an earlier mount
    /// left is not yet known.
    pub fn unchecked() -> Queued {
        Queued {
            unchecked: true,
            ..Queued::default()
        }
    }

    /// Commit `version`, made here, wrote `bytes`.
    pub fn add(&mut self, version: u64, bytes: u64) {
        self.runs.push_back((version, 1, bytes));
        if self.runs.len() > QUEUED_RUNS
            && let Some((_, n, b)) = self.runs.pop_front()
            && let Some(next) = self.runs.front_mut()
        {
            next.1 += n;
            next.2 += b;
        }
    }

    /// Everything this mount committed up to `version` is on the server.
    pub fn through(&mut self, version: u64) {
        while self.runs.front().is_some_and(|r| r.0 <= version) {
            self.runs.pop_front();
        }
        self.unchecked = false;
    }

    /// Versions and bytes queued.
    pub fn totals(&self) -> (u64, u64) {
        (self.runs.iter()).fold((0, 0), |(n, b), r| (n + r.1, b + r.2))
    }
}

/// What `status` and `daemon.json` show of sync.
#[derive(Clone, Debug, Default)]
pub struct Status {
    pub connected: bool,
    pub why: String,
    pub server: String,
    pub peer: String,
    pub applied: u64,
    pub pushed: u64,
    pub in_flight: bool,
    /// The changes in the push in flight.
    pub in_flight_ops: u64,
    pub conflicts: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub queued: Queued,
    /// How often this mount moved changes not yet pushed out of memory
    /// into its tree store (`-o sync_spill`).
    pub spills: u64,
}

impl Status {
    pub fn json(&self) -> serde_json::Value {
        let (queued_versions, queued_bytes) = self.queued.totals();
        serde_json::json!({
            "connected": self.connected,
            "why": self.why,
            "server": self.server,
            "peer": self.peer,
            "applied": self.applied,
            "pushed": self.pushed,
            "in_flight": self.in_flight,
            "in_flight_ops": self.in_flight_ops,
            "conflicts": self.conflicts,
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out,
            "queued_versions": queued_versions,
            "queued_bytes": queued_bytes,
            "queued_unchecked": self.queued.unchecked,
            "spills": self.spills,
        })
    }
}

/// What a store that is not mounted says of its sync: the server it joined
/// and the last sequence it applied (`None`: it does not sync). `stored`
/// is the sequence the store's newest tagged version records as applied
/// (`fs::Origin::carried`): the saved state may be older (it is saved now
/// and then, the journal holds what came since), and the journal is
/// replayed onto it here as the next mount will, without writing.
pub fn offline_status(store: &Path, stored: u64) -> Result<Option<Status>, SyncError> {
    let Some(conf) = SyncConf::load(store)? else {
        return Ok(None);
    };
    // The counters alone: the tree store is not opened (it would be
    // written to), and replaying onto an empty tree moves them as it
    // would move them onto the tree.
    let mut peer = load_peer(store, None)?;
    super::client::replay_journal(store, &mut peer, stored)?;
    Ok(Some(Status {
        server: conf.url(),
        why: "not mounted".into(),
        applied: peer.applied,
        queued: Queued::unchecked(),
        ..Default::default()
    }))
}

/// Bytes of blocks held or asked for, at most, for change-sets not yet
/// applied; past it, change-sets wait to be asked for.
pub const DEFAULT_WINDOW: u64 = 128 << 20;

/// Folds the peer's synced tree into its tree store and writes the state
/// naming the version that made, so that the journal can start afresh.
pub(super) fn save_peer(store: &Path, trees: &TreeStore, p: &mut Peer) -> Result<(), SyncError> {
    let cause = format!("synced through sequence {}", p.applied);
    let version = trees.fold(&mut p.synced, &mut p.local, trees.named(), &cause)?;
    let path = store.join(STATE_FILE);
    let bytes = state::encode(p.id, p.applied, p.counter, version);
    super::write_atomic_in_pieces(&path, &mut |f| {
        use std::io::Write;
        f.write_all(&bytes).map_err(|e| SyncError::io(&path, e))
    })?;
    trees.set_named(version);
    Ok(())
}

/// The peer as its saved state left it, its synced tree read from
/// `trees` as it is asked for (or held whole, from a state of an older
/// version, until the next save moves it there). Without `trees`, its
/// counters over an empty tree.
pub(super) fn load_peer(store: &Path, trees: Option<&TreeStore>) -> Result<Peer, SyncError> {
    let path = store.join(STATE_FILE);
    let mut p = match std::fs::read(&path) {
        Ok(b) => {
            let s = state::decode(&b)
                .map_err(|e| SyncError::Config(format!("{}: {e}", path.display())))?;
            let tree = match s.synced {
                state::Synced::Stored(v) => match trees {
                    Some(trees) => {
                        trees.set_named(v);
                        trees.tree(v)?
                    }
                    None => Tree::default(),
                },
                state::Synced::Inline(t) => *t,
            };
            let mut p = Peer::new(s.id, "", tree);
            p.applied = s.applied;
            // Pushes made after the last save may have been taken (the
            // client saves before it makes COUNTER_LEAP / 4 more); the
            // server ignores a counter it has seen, so start past them.
            p.counter = s.counter.saturating_add(COUNTER_LEAP);
            p
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Peer::new(0, "", Tree::default()),
        Err(e) => return Err(SyncError::io(&path, e)),
    };
    p.folds_in_store();
    Ok(p)
}

/// The check of a store's tree store (`sync.tree/`, see
/// [`TreeStore::fsck`]) at the version its saved state names, if it has
/// one; the store must not be mounted.
pub fn fsck_tree_store(
    store: &Path,
) -> Result<Option<(crate::store::FsckReport, Vec<String>)>, SyncError> {
    let file = store
        .join(super::tree::TREE_DIR)
        .join(crate::store::STORE_FILE);
    if !file.exists() {
        return Ok(None);
    }
    let path = store.join(STATE_FILE);
    let version = match std::fs::read(&path) {
        Ok(b) => match state::decode(&b)
            .map_err(|e| SyncError::Config(format!("{}: {e}", path.display())))?
            .synced
        {
            state::Synced::Stored(v) => v,
            state::Synced::Inline(_) => 0,
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
        Err(e) => return Err(SyncError::io(&path, e)),
    };
    Ok(Some(TreeStore::open(store)?.fsck(version)?))
}

/// What `fsck` prints of a tree store's check (see [`TreeStore::fsck`]),
/// and how many problems it found.
pub fn fsck_text(
    check: Result<(crate::store::FsckReport, Vec<String>), SyncError>,
) -> (String, usize) {
    let dir = super::tree::TREE_DIR;
    let (mut text, n) = match check {
        Ok((report, problems)) => {
            let mut text = format!("sync tree ({dir}/): {report}");
            for p in &problems {
                text.push_str(&format!("  {p}\n"));
            }
            let n = report.problems.len() + problems.len();
            (text, n)
        }
        Err(e) => (format!("sync tree ({dir}/): cannot be read: {e}\n"), 1),
    };
    if n > 0 {
        text.push_str(&format!(
            "  (sync stays off while it cannot be read; to join again, remove sync.state, \
             sync.journal and {dir}/ with the store not mounted)\n"
        ));
    }
    (text, n)
}

/// More pushes than a peer makes between two saves of its state.
pub(super) const COUNTER_LEAP: u64 = 1 << 20;

#[cfg(test)]
mod tests {
    use super::*;

    /// However many commits wait, the runs stay few; a merged run goes
    /// only once its last version is on the server, and counts stay exact.
    #[test]
    fn queued_commits_stay_few_runs_and_go_once_the_server_has_them() {
        let mut q = Queued::unchecked();
        for v in 1..=1000u64 {
            q.add(v, 10);
        }
        assert_eq!(q.totals(), (1000, 10_000));
        assert!(q.runs.len() <= QUEUED_RUNS);
        assert!(q.unchecked);
        q.through(900);
        assert!(!q.unchecked);
        assert_eq!(q.totals(), (100, 1000));
        q.through(999);
        assert_eq!(q.totals(), (1, 10));
        q.through(1000);
        assert_eq!(q.totals(), (0, 0));
    }
}
