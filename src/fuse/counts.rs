//! Requests served, by transport and by opcode, shown in `daemon.json`
//! (a test compares them with the operations it made, to prove which way
//! requests came; a user sees what a workload costs in round trips).

use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;

use crate::fs::KernelSide;

#[derive(Debug)]
pub struct RequestCounts {
    /// `"uring"` or `"classic"`, once the mount is live.
    pub transport: Mutex<&'static str>,
    /// Requests that came through io_uring queues.
    pub ring: AtomicU64,
    /// Requests read from `/dev/fuse`.
    pub dev: AtomicU64,
    /// Requests by opcode (both transports; opcodes past the end are not
    /// counted).
    by_op: [AtomicU64; 64],
}

impl Default for RequestCounts {
    fn default() -> RequestCounts {
        RequestCounts {
            transport: Mutex::new(""),
            ring: AtomicU64::new(0),
            dev: AtomicU64::new(0),
            by_op: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

impl RequestCounts {
    pub fn count_op(&self, opcode: u32) {
        if let Some(c) = self.by_op.get(opcode as usize) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl KernelSide for RequestCounts {
    fn status(&self) -> serde_json::Map<String, serde_json::Value> {
        let by_op: serde_json::Map<String, serde_json::Value> = self
            .by_op
            .iter()
            .enumerate()
            .map(|(op, c)| (op.to_string(), c.load(Ordering::Relaxed)))
            .filter(|(_, n)| *n > 0)
            .map(|(op, n)| (op, n.into()))
            .collect();
        let mut m = serde_json::Map::new();
        m.insert("transport".into(), (*self.transport.lock()).into());
        m.insert(
            "requests_ring".into(),
            self.ring.load(Ordering::Relaxed).into(),
        );
        m.insert(
            "requests_dev".into(),
            self.dev.load(Ordering::Relaxed).into(),
        );
        m.insert("requests_by_opcode".into(), by_op.into());
        m
    }
}
