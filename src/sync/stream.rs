//! Frames over a QUIC stream: read with the header checked before the
//! body is allocated, written whole; bytes counted both ways.
//!
//! Both ends of a connection read on a task of their own ([`reader`]) and
//! write on a task of their own ([`Outbox`]), so that the session between
//! them never awaits the network. It must not: each side sends runs of
//! blocks (a peer its push's, the server a fetch's and the log), and if
//! both sessions awaited a write while neither read, each would wait for
//! the other for ever (keep-alives hold such a connection up).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use super::SyncError;
use super::wire::{HEADER, Msg, header};

/// Bytes that crossed a connection.
#[derive(Default, Debug)]
pub struct Counted {
    pub read: AtomicU64,
    pub written: AtomicU64,
}

/// Reads one message; `None` when the other side finished the stream.
pub async fn read_msg(
    recv: &mut quinn::RecvStream,
    bytes: &Counted,
) -> Result<Option<Msg>, SyncError> {
    let mut h = [0u8; HEADER];
    match recv.read_exact(&mut h).await {
        Ok(()) => {}
        Err(quinn::ReadExactError::FinishedEarly(0)) => return Ok(None),
        Err(e) => return Err(SyncError::Net(e.to_string())),
    }
    let (kind, len) = header(&h)?;
    let mut body = vec![0u8; len];
    recv.read_exact(&mut body)
        .await
        .map_err(|e| SyncError::Net(e.to_string()))?;
    bytes
        .read
        .fetch_add((HEADER + len) as u64, Ordering::Relaxed);
    Ok(Some(Msg::decode(kind, &body)?))
}

pub async fn send_msg(
    send: &mut quinn::SendStream,
    m: &Msg,
    bytes: &Counted,
) -> Result<(), SyncError> {
    let mut buf = Vec::new();
    m.encode(&mut buf)?;
    send.write_all(&buf)
        .await
        .map_err(|e| SyncError::Net(e.to_string()))?;
    bytes.written.fetch_add(buf.len() as u64, Ordering::Relaxed);
    Ok(())
}

/// The sending half of a connection. [`Outbox::send`] queues a frame and
/// returns at once; a task writes the queue to the stream in order.
///
/// What a session sends is of two kinds. Answers and requests (a Want, an
/// Ack, a Push) are bounded in number by the protocol and are queued as
/// they come. Runs of blocks and of the log are not: a session makes the
/// next of those only while [`Outbox::has_room`], and waits for room with
/// [`Outbox::room`] beside its reading, so the queue holds at most
/// [`ROOM`] bytes of them plus one frame.
pub struct Outbox {
    tx: tokio::sync::mpsc::UnboundedSender<Vec<u8>>,
    queued: Arc<AtomicUsize>,
    room: Arc<tokio::sync::Notify>,
    /// Why the writer stopped, when it did.
    failed: Arc<parking_lot::Mutex<Option<String>>>,
    task: tokio::task::JoinHandle<()>,
}

/// The bytes of frames queued and not yet written beyond which a session
/// makes no more runs of blocks or of the log (enough to keep loopback
/// busy between two wakes of the session).
pub const ROOM: usize = 1 << 20;

impl Outbox {
    pub fn new(mut send: quinn::SendStream, bytes: Arc<Counted>) -> Outbox {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Vec<u8>>();
        let queued = Arc::new(AtomicUsize::new(0));
        let room = Arc::new(tokio::sync::Notify::new());
        let failed = Arc::new(parking_lot::Mutex::new(None));
        let (q, r, f) = (queued.clone(), room.clone(), failed.clone());
        let task = tokio::spawn(async move {
            while let Some(buf) = rx.recv().await {
                if let Err(e) = send.write_all(&buf).await {
                    *f.lock() = Some(e.to_string());
                    // Whoever waits for room must learn that none comes.
                    r.notify_one();
                    return;
                }
                bytes.written.fetch_add(buf.len() as u64, Ordering::Relaxed);
                q.fetch_sub(buf.len(), Ordering::Relaxed);
                r.notify_one();
            }
            // The session dropped its end: what it queued is written.
            let _ = send.finish();
        });
        Outbox {
            tx,
            queued,
            room,
            failed,
            task,
        }
    }

    /// Queues `m`; an error only if the writer has stopped (the
    /// connection is gone).
    pub fn send(&self, m: &Msg) -> Result<(), SyncError> {
        self.check()?;
        let mut buf = Vec::new();
        m.encode(&mut buf)?;
        let n = buf.len();
        self.queued.fetch_add(n, Ordering::Relaxed);
        self.tx.send(buf).map_err(|_| self.gone())
    }

    fn gone(&self) -> SyncError {
        SyncError::Net(match &*self.failed.lock() {
            Some(e) => format!("cannot send: {e}"),
            None => "cannot send: the connection's writer stopped".into(),
        })
    }

    fn check(&self) -> Result<(), SyncError> {
        if self.failed.lock().is_some() || self.tx.is_closed() {
            return Err(self.gone());
        }
        Ok(())
    }

    /// Whether a run may queue its next frame.
    pub fn has_room(&self) -> bool {
        self.queued.load(Ordering::Relaxed) < ROOM
    }

    /// Returns once the queue has room, or with an error once the writer
    /// has stopped. Safe to cancel (as a `select!` branch).
    pub async fn room(&self) -> Result<(), SyncError> {
        loop {
            self.check()?;
            if self.has_room() {
                return Ok(());
            }
            // The writer notifies after each frame; a notification given
            // between the check and here is kept for this wait.
            self.room.notified().await;
        }
    }

    /// Lets the writer write what is queued and finish the stream, waiting
    /// for it at most `within`.
    pub async fn finish(self, within: std::time::Duration) {
        let Outbox { tx, task, .. } = self;
        drop(tx);
        let _ = tokio::time::timeout(within, task).await;
    }
}

/// Reads messages into a channel of `depth` messages, so that a `select!`
/// never cancels a read half way through a frame, and so that reading goes
/// on (on another of the runtime's threads) while the reader of the
/// channel is busy.
pub fn reader(
    mut recv: quinn::RecvStream,
    bytes: Arc<Counted>,
    depth: usize,
) -> tokio::sync::mpsc::Receiver<Result<Msg, SyncError>> {
    let (tx, rx) = tokio::sync::mpsc::channel(depth.max(1));
    tokio::spawn(async move {
        loop {
            let m = read_msg(&mut recv, &bytes).await;
            let end = !matches!(m, Ok(Some(_)));
            let item = match m {
                Ok(Some(m)) => Ok(m),
                Ok(None) => Err(SyncError::Net("the other side closed the stream".into())),
                Err(e) => Err(e),
            };
            if tx.send(item).await.is_err() || end {
                return;
            }
        }
    });
    rx
}
