//! Frames over a QUIC stream: read with the header checked before the
//! body is allocated, written whole; bytes counted both ways.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

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
