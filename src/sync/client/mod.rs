//! The mount's sync thread: connects to the server named in
//! `<store>/sync.conf` (`conf.rs`), pushes each local commit, applies what
//! other peers pushed, and reconnects (1 to 5 s apart) when the connection
//! goes. It runs on its own thread (`zippy-sync`), off the FUSE and commit
//! threads; the connection and the reading of messages run on a tokio
//! worker thread of their own (`zippy-sync-net`).
//!
//! A session pushes what commits changed (read through `view.rs`, only
//! what each commit touched), and receives change-sets: `incoming.rs` asks
//! for their blocks and applies them, then the kernel is told which inodes
//! and names changed (`Fs::changed_elsewhere`).

mod incoming;
mod journal;
mod outgoing;

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::Notify;

use super::conf::{Status, SyncConf, load_peer, save_peer};
use super::local::{read_whole, to_remote};
use super::peer::Peer;
use super::stream::{Counted, Outbox, reader, send_msg};
use super::tree::{ChangeSet, FileId, Hash, TreeStore};
use super::view::{LocalView, Touched};
use super::wire::{MAX_WANT, Msg, PROTO_MAX, PROTO_MIN};
use super::{SyncError, tls};
use crate::fs::Fs;
use crate::fs::remote::Applied;
use incoming::Incoming;
use journal::Journal;
use outgoing::PUSH_GAP;

/// The running sync thread.
pub struct Client {
    stop: Arc<AtomicBool>,
    wake: Arc<Wake>,
    thread: Option<std::thread::JoinHandle<()>>,
    pub status: Arc<Mutex<Status>>,
}

impl Client {
    /// Starts syncing `fs` (the store in `store`) as `conf` says.
    pub fn start(fs: Arc<Fs>, store: PathBuf, conf: SyncConf) -> Result<Client, SyncError> {
        // Blocks told of are looked for here before they are fetched.
        fs.keep_block_index()?;
        let stop = Arc::new(AtomicBool::new(false));
        let wake = Arc::new(Wake::default());
        let status = Arc::new(Mutex::new(Status {
            server: conf.url(),
            why: "connecting".into(),
            queued: crate::sync::conf::Queued::unchecked(),
            ..Default::default()
        }));
        let touched = Arc::new(Mutex::new(Touched::default()));
        {
            let (wake, touched, st) = (wake.clone(), touched.clone(), status.clone());
            fs.on_commit(Box::new(move |c| {
                // Counted before the sync thread can read the commit (and
                // find it pushed, or nothing to push).
                if c.own && !(c.inodes.is_empty() && c.entries.is_empty()) {
                    st.lock().queued.add(c.version, c.bytes);
                }
                touched.lock().add(c);
                wake.committed();
            }));
            let status = status.clone();
            fs.on_status(Box::new(move || status.lock().json()));
        }
        // The tree store, once the sync thread has opened it, for a live
        // `fsck` (the version its saved state names).
        let trees: Arc<std::sync::OnceLock<Arc<TreeStore>>> = Arc::default();
        {
            let trees = trees.clone();
            fs.on_fsck(Box::new(move || match trees.get() {
                Some(t) => crate::sync::conf::fsck_text(t.fsck(t.named())),
                None => (
                    format!(
                        "sync tree ({}/): not checked: sync has not opened it (starting, or off)\n",
                        crate::sync::tree::TREE_DIR
                    ),
                    0,
                ),
            }));
        }
        let (s, w, st) = (stop.clone(), wake.clone(), status.clone());
        let nice = conf.nice;
        let thread = std::thread::Builder::new()
            .name("zippy-sync".into())
            .spawn(move || {
                lower_priority(nice);
                // The session runs on this thread and blocks in applying a
                // change-set; the connection and the reading of messages
                // run on one worker thread of their own meanwhile.
                let rt = match tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(1)
                    .thread_name("zippy-sync-net")
                    .on_thread_start(move || lower_priority(nice))
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        tracing::error!("sync cannot start its runtime: {e}");
                        return;
                    }
                };
                let shared = Shared {
                    status: st,
                    touched,
                    trees,
                };
                rt.block_on(run(fs, store, conf, s, w, shared));
            })
            .map_err(|e| SyncError::Net(format!("cannot start the sync thread: {e}")))?;
        Ok(Client {
            stop,
            wake,
            thread: Some(thread),
            status,
        })
    }

    /// Stops the thread (what is not pushed goes at the next mount). It
    /// pushes what is left for up to [`FINAL_PUSH_WAIT`]; a thread still
    /// running [`STOP_MARGIN`] after that is left to end with the process,
    /// so that it cannot hold the unmount.
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.wake.now();
        let Some(t) = self.thread.take() else {
            return;
        };
        let deadline = std::time::Instant::now() + FINAL_PUSH_WAIT + STOP_MARGIN;
        while !t.is_finished() {
            if std::time::Instant::now() > deadline {
                tracing::error!(
                    "sync: its thread did not stop within {:?}; unmounting without it \
                     (what it did not push goes at the next mount)",
                    FINAL_PUSH_WAIT + STOP_MARGIN
                );
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = t.join();
    }
}

/// Gives the calling thread the nice value `nice` (Linux sets it per
/// thread), so that sync takes the CPU the mount's own work leaves; a
/// failure only costs that, so it is logged, not returned.
fn lower_priority(nice: i32) {
    // SAFETY: gettid has no preconditions and cannot fail.
    let tid = unsafe { libc::gettid() };
    // SAFETY: setpriority reads only its integer arguments; a thread id is
    // a valid `who` for PRIO_PROCESS on Linux.
    let r = unsafe { libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, nice) };
    if r != 0 {
        tracing::warn!(
            "sync: cannot set its threads' nice value to {nice}: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// How commits wake the sync thread: only while it waits for one. With a
/// push in flight or a gap to wait out it has its next step already, and
/// an fsync loop commits thousands of times a second: a wake per commit
/// cost two context switches each, on the CPUs the writer needs.
#[derive(Default)]
struct Wake {
    notify: Notify,
    /// The thread waits for a commit. Set by it before it waits, taken by
    /// the first commit after (which then wakes it).
    idle: AtomicBool,
}

impl Wake {
    /// From the commit hook, after the version is published.
    fn committed(&self) {
        if self.idle.swap(false, Ordering::SeqCst) {
            self.notify.notify_one();
        }
    }

    /// Whatever the thread is doing (stop).
    fn now(&self) {
        self.notify.notify_one();
    }
}

/// The journal a peer lets grow before it saves its state: a save folds
/// what the synced tree changed into the tree store (a commit, O(changes)),
/// and bounds what a restart replays.
const SAVE_JOURNAL_MIN: u64 = 4 << 20;

/// The most files, names and entries the synced tree holds changed in
/// memory before a save folds them into the tree store.
const FOLD_AT: usize = 16_384;

/// How long a peer away from its server keeps the commit its local tree
/// was last read at (`LocalView::read_pin`).
const READ_PIN_OFFLINE: Duration = Duration::from_secs(60);

/// The longest an unmount waits for the server to take the last changes.
const FINAL_PUSH_WAIT: Duration = Duration::from_secs(10);

/// How much longer than [`FINAL_PUSH_WAIT`] an unmount waits for the sync
/// thread before it goes without it. The session never awaits a network
/// write (`stream::Outbox`), but it runs a change-set's apply to its end
/// and the stop is seen between messages: a margin for that, and a bound
/// on an unmount whatever the thread meets.
const STOP_MARGIN: Duration = Duration::from_secs(5);

/// What the sync thread shares with the mount: its status, what the
/// commits changed, and its tree store once open (for a live `fsck`).
struct Shared {
    status: Arc<Mutex<Status>>,
    touched: Arc<Mutex<Touched>>,
    trees: Arc<std::sync::OnceLock<Arc<TreeStore>>>,
}

async fn run(
    fs: Arc<Fs>,
    store: PathBuf,
    conf: SyncConf,
    stop: Arc<AtomicBool>,
    wake: Arc<Wake>,
    shared: Shared,
) {
    let Shared {
        status,
        touched,
        trees: open,
    } = shared;
    let mut view = LocalView {
        touched,
        ..Default::default()
    };
    let sync_off = |why: &str| {
        tracing::error!("sync is off: {why}");
        status.lock().why = format!("off: {why}");
    };
    let (trees, mut peer, mut journal) = match start(&fs, &store) {
        Ok(s) => s,
        Err(e) => return sync_off(&e.to_string()),
    };
    let trees = Arc::new(trees);
    let _ = open.set(trees.clone());
    view.saved_counter = peer.counter;
    let mut backoff = Duration::from_secs(1);
    let mut connected_at = std::time::Instant::now();
    while !stop.load(Ordering::Relaxed) {
        // The commit last read stays held while the peer reconnects (the
        // next read is then in part), not while it is away for long: it
        // keeps the space of what was deleted since from being reused.
        if connected_at.elapsed() > READ_PIN_OFFLINE {
            view.read_pin = None;
        }
        let mut s = Session {
            fs: &fs,
            store: &store,
            trees: &trees,
            peer: &mut peer,
            status: &status,
            bytes: Arc::new(Counted::default()),
            view: &mut view,
            journal: &mut journal,
            push_places: HashMap::new(),
            push_snap: None,
            base_snap: None,
            patched: HashSet::new(),
            pushed_through: 0,
            whole_at: None,
            read_at: 0,
            inc: Incoming::new(conf.window, fs.block_size()),
            spill_at: conf.spill_at,
            snapshot: Default::default(),
            acked: false,
            last_push: None,
            push_later: false,
            out: None,
            owed: VecDeque::new(),
            welcome_head: 0,
            gap: PUSH_GAP,
        };
        let r = s.run(&conf, &stop, &wake).await;
        if status.lock().connected {
            connected_at = std::time::Instant::now();
        }
        if let Err(e) = s.save_now() {
            tracing::error!("sync: cannot save its state: {e}");
        }
        {
            let mut st = status.lock();
            st.connected = false;
            st.in_flight = false;
            st.why = match &r {
                Ok(()) => "stopped".into(),
                Err(e) => e.to_string(),
            };
        }
        // What the trees read since a read of the tree store failed may be
        // wrong: nothing more is done from them.
        if let Some(d) = trees.damage() {
            return sync_off(&d);
        }
        if let Err(e) = r {
            tracing::warn!("sync: {e}; connecting again in {backoff:?}");
            wake.idle.store(true, Ordering::SeqCst);
            let _ = tokio::time::timeout(backoff, wake.notify.notified()).await;
            backoff = (backoff * 2).min(Duration::from_secs(5));
        } else {
            break;
        }
        // A connection that lived resets the wait.
        if status.lock().applied > 0 {
            backoff = backoff.min(Duration::from_secs(2));
        }
    }
}

/// Brings `peer`, as its saved state left it, up to the journal entries
/// the store holds (its newest tagged version applied sequence `stored`),
/// writing nothing; returns how many sequences that moved it.
pub(in crate::sync) fn replay_journal(
    store: &Path,
    peer: &mut Peer,
    stored: u64,
) -> Result<u64, SyncError> {
    journal::replay(store, peer, stored)
}

/// What the sync thread starts from: the tree store, the peer as its
/// state left it, and the journal, replayed onto it first (what the store
/// applied after the state was saved, when killed between the two).
fn start(fs: &Fs, store: &Path) -> Result<(TreeStore, Peer, Journal), SyncError> {
    let trees = TreeStore::open(store)?;
    let mut peer = load_peer(store, Some(&trees))?;
    let journal = recover(fs, store, &trees, &mut peer)?;
    Ok((trees, peer, journal))
}

/// Replays the journal onto `peer` as far as the store holds it, saves
/// the state, and returns the journal emptied.
fn recover(
    fs: &Fs,
    store: &Path,
    trees: &TreeStore,
    peer: &mut Peer,
) -> Result<Journal, SyncError> {
    let replayed = replay_journal(store, peer, fs.synced_seq())?;
    if replayed > 0 {
        tracing::info!(
            replayed,
            applied = peer.applied,
            "sync: the journal brought the synced state up to the store"
        );
        save_peer(store, trees, peer)?;
    }
    let mut j = Journal::open(store)?;
    j.clear()?;
    Ok(j)
}

struct Session<'a> {
    fs: &'a Arc<Fs>,
    store: &'a Path,
    /// Where the synced tree is kept (`tree/stored/`).
    trees: &'a TreeStore,
    peer: &'a mut Peer,
    status: &'a Arc<Mutex<Status>>,
    bytes: Arc<Counted>,
    view: &'a mut LocalView,
    /// What was applied and acknowledged since the state was saved
    /// (`journal.rs`).
    journal: &'a mut Journal,
    /// The blocks of the push in flight: hash → (file, index).
    push_places: HashMap<Hash, (FileId, u64)>,
    /// The commit the push in flight was read from, held open so that its
    /// blocks stay readable until the server has them (retention may let
    /// the version go otherwise, under many commits).
    push_snap: Option<crate::store::Snapshot<'a>>,
    /// The commit the last acknowledged push was read from, held open:
    /// its blocks are what the server has, so a block of the next push
    /// can go as a patch against them.
    base_snap: Option<crate::store::Snapshot<'a>>,
    /// Blocks of the push in flight already offered as a patch: asked
    /// again, they go whole.
    patched: HashSet<Hash>,
    /// The last commit (`Touched::through`) the last push was read with:
    /// a commit past it keeps the gap after a push ([`Session::gap_now`]).
    pushed_through: u64,
    /// The push in flight (its counter) holds everything this mount
    /// committed up to this version: once acknowledged, none of it is
    /// queued any more.
    whole_at: Option<(u64, u64)>,
    /// The last commit (`Touched::through`) whose changes the local tree
    /// was read with and pushed, when nothing was pending after it (0:
    /// read it at the next push).
    read_at: u64,
    /// What came from the server and is not applied yet.
    inc: Incoming,
    /// The parts of a snapshot come so far.
    snapshot: crate::sync::snapshot::Assembler,
    /// An ack freed the push slot: push what is waiting.
    acked: bool,
    /// When the last push went, and whether one waits for the gap after it
    /// (`gap`, [`push_gap`]) to pass.
    last_push: Option<tokio::time::Instant>,
    push_later: bool,
    /// Where messages to the server queue (`stream::Outbox`), once
    /// connected.
    out: Option<Outbox>,
    /// Blocks of the push in flight the server asked for, not yet queued:
    /// made one at a time while the outbox has room.
    owed: VecDeque<Hash>,
    /// The volume's head when the server welcomed this session: nothing
    /// is pushed before the log up to it is applied, so that a push never
    /// carries again what this peer pushed before and the server took
    /// (an ack lost with a connection), as a change made on an old base.
    welcome_head: u64,
    /// The least time from the last push to the next ([`push_gap`]).
    gap: Duration,
    /// The most changes the local tree holds in memory before they are
    /// spilled into the tree store (`-o sync_spill`).
    spill_at: usize,
}

impl Session<'_> {
    async fn run(
        &mut self,
        conf: &SyncConf,
        stop: &AtomicBool,
        wake: &Wake,
    ) -> Result<(), SyncError> {
        let addr = tokio::net::lookup_host((conf.host.as_str(), conf.port))
            .await
            .map_err(|e| SyncError::Net(format!("cannot resolve {}: {e}", conf.host)))?
            .next()
            .ok_or_else(|| SyncError::Net(format!("{} has no address", conf.host)))?;
        let bind: std::net::SocketAddr = if addr.is_ipv6() {
            "[::]:0".parse()
        } else {
            "0.0.0.0:0".parse()
        }
        .map_err(|_| SyncError::Net("bad bind address".into()))?;
        let mut endpoint =
            quinn::Endpoint::client(bind).map_err(|e| SyncError::Net(e.to_string()))?;
        endpoint.set_default_client_config(tls::client_config(&conf.fingerprint)?);
        let conn = endpoint
            .connect(addr, tls::SERVER_NAME)
            .map_err(|e| SyncError::Net(e.to_string()))?
            .await
            .map_err(|e| SyncError::Net(format!("cannot connect to {}: {e}", conf.url())))?;
        let (mut send, recv) = conn
            .open_bi()
            .await
            .map_err(|e| SyncError::Net(e.to_string()))?;
        let mut store_id = [0u8; 16];
        store_id.copy_from_slice(
            &blake3::hash(self.store.as_os_str().as_encoded_bytes()).as_bytes()[..16],
        );
        send_msg(
            &mut send,
            &Msg::Hello {
                proto_min: PROTO_MIN,
                proto_max: PROTO_MAX,
                volume: conf.volume.clone(),
                credential: conf.credential.clone(),
                store_id,
                last_applied: self.peer.applied,
            },
            &self.bytes,
        )
        .await?;
        // Room for a window of blocks: they keep coming while a change-set
        // is applied (the window bounds what was asked for).
        let depth = (self.inc.window_blocks()) + 64;
        let mut rx = reader(recv, self.bytes.clone(), depth);
        let first = rx.recv().await;
        self.out = Some(Outbox::new(send, self.bytes.clone()));
        match first {
            Some(Ok(Msg::Welcome {
                peer,
                peer_name,
                head,
                taken,
                ..
            })) => {
                if self.peer.id != 0 && self.peer.id != peer {
                    return Err(SyncError::Config(format!(
                        "this store synced as peer {} and the credential is peer {peer}",
                        self.peer.id
                    )));
                }
                let first_time = self.peer.id == 0;
                self.peer.id = peer;
                self.peer.name = peer_name.clone();
                if first_time {
                    // Saved before anything is journaled: replay knows this
                    // peer's own entries by its id.
                    self.view.unsaved = true;
                    self.save_now()?;
                }
                self.peer.disconnected();
                self.peer.on_welcome(taken.0, taken.1);
                self.welcome_head = head;
                let mut st = self.status.lock();
                st.connected = true;
                st.why = "connected".into();
                st.peer = peer_name;
            }
            Some(Ok(Msg::Refuse { reason, .. })) => return Err(SyncError::Refused(reason)),
            Some(Ok(_)) => {
                return Err(SyncError::Protocol("the first reply is not Welcome".into()));
            }
            Some(Err(e)) => return Err(e),
            None => return Err(SyncError::Net("the server closed the stream".into())),
        }
        tracing::info!(server = %conf.url(), peer = %self.peer.name, applied = self.peer.applied, "sync connected");
        let r = self.connected(&mut rx, stop, wake).await;
        if r.is_ok()
            && let Some(out) = self.out.take()
        {
            out.finish(Duration::from_secs(1)).await;
        }
        // The outbox's writer holds the stream, and with it the
        // connection: closed here, or a server that stopped reading would
        // keep it.
        conn.close(0u32.into(), b"unmount");
        r
    }

    /// The session's loop, from the Welcome until the mount stops (`Ok`)
    /// or the connection fails.
    async fn connected(
        &mut self,
        rx: &mut tokio::sync::mpsc::Receiver<Result<Msg, SyncError>>,
        stop: &AtomicBool,
        wake: &Wake,
    ) -> Result<(), SyncError> {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            if stop.load(Ordering::Relaxed) {
                return self.push_the_rest(rx).await;
            }
            self.drain()?;
            self.fill()?;
            // Commits wake this thread only while it waits for one; a
            // commit whose hook ran before the flag went up is found here
            // (one after it wakes the thread). Then it waits as always, so
            // that a stream of commits sync has nothing to push for does
            // not keep it from the messages and the tick.
            let idle = !self.peer.in_flight() && !self.push_later && self.inc.is_empty();
            wake.idle.store(idle, Ordering::SeqCst);
            if idle && self.view.touched.lock().through > self.read_at {
                self.push()?;
            }
            let out = self.outbox()?;
            tokio::select! {
                m = rx.recv() => {
                    let m = m.ok_or_else(|| SyncError::Net("connection lost".into()))??;
                    self.on_msg(m)?;
                }
                r = out.room(), if !self.owed.is_empty() => r?,
                _ = wake.notify.notified() => self.push()?,
                _ = tokio::time::sleep_until(
                    self.last_push.map_or_else(tokio::time::Instant::now, |t| t + self.gap_now())
                ), if self.push_later => {
                    self.push_later = false;
                    self.push()?;
                }
                _ = tokio::time::sleep_until(
                    self.inc.retry_at().unwrap_or_else(tokio::time::Instant::now)
                ), if self.inc.retry_at().is_some() => self.inc.retry_now(),
                _ = tick.tick() => self.push()?,
            }
            let mut st = self.status.lock();
            st.bytes_in = self.bytes.read.load(Ordering::Relaxed);
            st.bytes_out = self.bytes.written.load(Ordering::Relaxed);
            st.applied = self.peer.applied;
            st.in_flight = self.peer.in_flight();
        }
    }

    /// At unmount (the final commit made): pushes what is not yet pushed
    /// and waits until the server has all of it, for at most
    /// [`FINAL_PUSH_WAIT`]; what does not make it goes at the next mount.
    async fn push_the_rest(
        &mut self,
        rx: &mut tokio::sync::mpsc::Receiver<Result<Msg, SyncError>>,
    ) -> Result<(), SyncError> {
        let deadline = tokio::time::Instant::now() + FINAL_PUSH_WAIT;
        loop {
            self.drain()?;
            if self.inc.no_room.is_some() {
                // Waiting for room blocks what is behind it (an ack
                // included): nothing more goes before the next mount.
                return Ok(());
            }
            self.last_push = None;
            self.push()?;
            self.fill()?;
            if !self.peer.in_flight() && self.inc.is_empty() {
                return Ok(());
            }
            let out = self.outbox()?;
            let next = async {
                tokio::select! {
                    m = rx.recv() => Some(m),
                    r = out.room(), if !self.owed.is_empty() => r.err().map(|e| Some(Err(e))),
                }
            };
            match tokio::time::timeout_at(deadline, next).await {
                Ok(None) => {}
                Ok(Some(Some(m))) => self.on_msg(m?)?,
                Ok(Some(None)) => return Err(SyncError::Net("connection lost".into())),
                Err(_) => {
                    tracing::warn!(
                        "sync: the server did not take the last changes within {FINAL_PUSH_WAIT:?}; \
                         they go at the next mount"
                    );
                    return Ok(());
                }
            }
        }
    }

    fn on_msg(&mut self, m: Msg) -> Result<(), SyncError> {
        match m {
            Msg::Deliver { seq, cs } => self.on_deliver(seq, cs, None)?,
            Msg::Snapshot {
                seq,
                last,
                cs,
                stamps,
            } => {
                let done = self
                    .snapshot
                    .add(seq, last, &cs, &stamps)
                    .map_err(|e| SyncError::Protocol(format!("snapshot: {e}")))?;
                if let Some((seq, tree)) = done {
                    // Queued as a change-set of what differs from what this
                    // peer has, so that its blocks are asked for as any
                    // change-set's; applied as the snapshot it is.
                    let cs = ChangeSet {
                        origin: 0,
                        origin_name: "server snapshot".into(),
                        counter: 0,
                        base: self.peer.applied,
                        time: 0,
                        ops: crate::sync::tree::diff(&self.peer.synced, &tree, None),
                    };
                    tracing::info!(
                        seq,
                        files = tree.nodes.len(),
                        "sync: a snapshot in place of the log"
                    );
                    self.on_deliver(seq, cs, Some(Arc::new(tree)))?;
                }
            }
            Msg::Ack { counter, seq, time } => {
                if seq <= self.inc.back_seq().max(self.peer.applied) {
                    // Within a snapshot queued or applied before it (the
                    // server cut its log past this push while it waited
                    // to send): the push's commit is no base for patches.
                    self.peer
                        .on_ack_within_snapshot(counter, seq)
                        .map_err(|v| SyncError::Protocol(v.to_string()))?;
                    self.push_snap = None;
                    self.read_at = 0;
                    self.acked = true;
                } else {
                    self.inc.ack(seq, counter, time);
                }
            }
            Msg::Block { hash, data } => self.inc.on_block(hash, data)?,
            Msg::Patch { hash, base, patch } => self.on_patch(hash, base, patch)?,
            Msg::Want { wants } => self.owed.extend(wants.iter().map(|w| w.hash)),
            Msg::Refuse { reason, .. } => return Err(SyncError::Refused(reason)),
            _ => return Err(SyncError::Protocol("an unexpected message".into())),
        }
        Ok(())
    }

    fn outbox(&self) -> Result<&Outbox, SyncError> {
        self.out
            .as_ref()
            .ok_or_else(|| SyncError::Net("not connected".into()))
    }

    /// Queues `m` for the server (never waits for the network).
    fn send(&self, m: &Msg) -> Result<(), SyncError> {
        self.outbox()?.send(m)
    }

    /// Saves the peer's state once the journal holds [`SAVE_JOURNAL_MIN`],
    /// the synced tree changed [`FOLD_AT`] files and names since the
    /// last save (what it holds in memory), or before the push counter
    /// runs past what a restart skips; the end of the session saves what
    /// is left.
    fn state_changed(&mut self) -> Result<(), SyncError> {
        self.view.unsaved = true;
        let pushes = self.peer.counter.saturating_sub(self.view.saved_counter);
        if self.journal.len() >= SAVE_JOURNAL_MIN
            || self.peer.synced.changes() >= FOLD_AT
            || pushes >= crate::sync::conf::COUNTER_LEAP / 4
        {
            match self.save_now() {
                // Saved later: the journal holds what it would have.
                Err(e) if e.is_no_space() => {
                    tracing::warn!("sync: the state is not saved yet: {e}");
                }
                r => r?,
            }
        }
        Ok(())
    }

    fn save_now(&mut self) -> Result<(), SyncError> {
        if self.view.unsaved {
            save_peer(self.store, self.trees, self.peer)?;
            self.view.saved_counter = self.peer.counter;
            self.journal.clear()?;
            self.view.unsaved = false;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A commit wakes the thread only while it waits for one, and once.
    #[test]
    fn commits_wake_the_sync_thread_only_while_it_is_idle() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let woken = |w: &Wake| {
            rt.block_on(async {
                tokio::time::timeout(Duration::from_millis(20), w.notify.notified())
                    .await
                    .is_ok()
            })
        };
        let w = Wake::default();
        w.committed();
        assert!(!woken(&w), "woken while busy");
        w.idle.store(true, Ordering::SeqCst);
        w.committed();
        w.committed();
        assert!(woken(&w), "not woken while idle");
        assert!(!woken(&w), "woken twice for one wait");
        w.now();
        assert!(woken(&w), "stop must always wake");
    }
}
