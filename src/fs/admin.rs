//! What the control socket and `daemon.json` ask of a live filesystem:
//! gc, retention, fsck and status; and the commit the same commands make
//! on a store no daemon serves.

use super::*;

/// A commit of a store no daemon serves that changes no file: `change`
/// (a retention policy, or nothing for a gc), which may use the reserve
/// (it frees space), tagged with how far sync had applied
/// ([`Origin::carried`]), and keeping a block index exact in the version
/// before it exact in this one.
pub fn commit_unmounted(
    s: &Store,
    cause: &str,
    change: impl FnOnce(&mut crate::store::WriteTxn<'_>) -> crate::store::StoreResult<()>,
) -> FsResult<()> {
    let latest = s.latest_version().unwrap_or(0);
    let tag = Origin::carried(s).tag();
    let mut t = s.begin_write()?;
    t.use_reserve();
    change(&mut t)?;
    t.tag(&tag);
    blockindex::carry_exact(&mut t, latest)?;
    t.commit(cause)?;
    Ok(())
}

/// The last live `fsck`, kept for `daemon.json`.
#[derive(Clone, Default, Debug)]
pub struct LastFsck {
    /// How many have run since the mount.
    pub runs: u64,
    pub problems: usize,
    pub report: String,
}

impl Fs {
    /// Re-reads the store directory's retention policy and commits at once
    /// (a version even with no changes), so the policy takes effect now.
    pub fn gc(&self) -> FsResult<()> {
        if let Some(why) = self.failure() {
            tracing::debug!("gc refused: {why}");
            return err(libc::EIO);
        }
        // A store that keeps its own policy has it in force already; an
        // older one still reads `retention.conf`.
        if let Some(dir) = &self.store_dir
            && !self.store.has_stored_policy()
        {
            self.store
                .set_retention(load_retention(dir)?.unwrap_or_default());
        }
        self.flush.exclusive(|| {
            let before = self.store.latest_version();
            self.commit_now("gc")?;
            // gc's own commits only free space: they may use the reserve.
            let room = || -> FsResult<()> {
                let mut t = self.store.begin_write()?;
                t.use_reserve();
                t.tag(&self.own_tag());
                self.reported(t.commit("gc")?);
                Ok(())
            };
            // Nothing was pending: commit an empty version so retention runs.
            if self.store.latest_version() == before {
                room()?;
            }
            // Over the space cap each commit lets one more old version go.
            let mut rounds = self.store.versions().len();
            while self.store.over_cap() && self.store.versions().len() > 1 && rounds > 0 {
                room()?;
                rounds -= 1;
            }
            self.gc_runs.fetch_add(1, Ordering::Release);
            Ok(())
        })
    }

    /// Keeps `policy` in the store (a commit that may use the reserve, so
    /// it goes through on a full disk) and applies it at once.
    pub fn set_retention(&self, policy: crate::store::Retention) -> FsResult<()> {
        if let Some(why) = self.failure() {
            tracing::debug!("retention change refused: {why}");
            return err(libc::EIO);
        }
        self.flush.exclusive(|| {
            self.commit_now("retention")?;
            let mut t = self.store.begin_write()?;
            t.use_reserve();
            t.set_retention(policy);
            t.tag(&self.own_tag());
            self.reported(t.commit("retention")?);
            Ok(())
        })
    }

    /// Checks the store while mounted (commits wait meanwhile) and keeps
    /// the report for `daemon.json`.
    pub fn fsck(&self) -> FsResult<crate::store::FsckReport> {
        let progress = |checked: u64, total: u64| {
            self.fsck_progress.0.store(checked, Ordering::Relaxed);
            self.fsck_progress.1.store(total, Ordering::Relaxed);
        };
        let report = self.store.fsck_with_progress(&progress)?;
        let mut f = self.fsck.lock();
        *f = LastFsck {
            runs: f.runs + 1,
            problems: report.problems.len(),
            report: report.to_string(),
        };
        Ok(report)
    }

    /// Whether the final commit has begun.
    pub fn unmounting(&self) -> bool {
        self.unmounting.load(Ordering::Acquire)
    }

    /// What `.zippy/daemon.json` and `zippyfs status` show: the store's
    /// space, the versions, the last live fsck, whether the filesystem still
    /// takes changes, and what the kernel side adds (see [`KernelSide`]).
    pub fn status(&self) -> serde_json::Value {
        let st = self.store.stats();
        let fsck = self.fsck_report();
        let (checked, total) = self.fsck_progress();
        let state = if self.unmounting() {
            "unmounting"
        } else if self.failure().is_some() {
            "failed"
        } else {
            "serving"
        };
        let mut v = serde_json::json!({
            "pid": std::process::id(),
            "store": self.store_dir().map(|p| p.display().to_string()).unwrap_or_default(),
            "file_bytes": st.file_bytes,
            "free_pages": st.free_pages,
            "retained_pages": st.retained_pages,
            "dirty_bytes": self.dirty_bytes(),
            "promised_bytes": self.promised_bytes(),
            "versions": st.versions,
            "gc_runs": self.gc_runs(),
            "fsck_runs": fsck.runs,
            "fsck_problems": fsck.problems,
            "fsck_report": fsck.report,
            "fsck_checked": checked,
            "fsck_total": total,
            "failed": self.failure(),
            "state": state,
            "retention": self.store.retention().to_text(),
            "heap_bytes": heap_bytes(),
        });
        if let (Some(s), Some(obj)) = (self.sync_status.get(), v.as_object_mut()) {
            obj.insert("sync".into(), s());
        }
        if let (Some(k), Some(obj)) = (self.kernel.get(), v.as_object_mut()) {
            obj.extend(k.status());
        }
        v
    }

    /// Lets `kernel` add its figures to the status (once, when the mount
    /// is live).
    pub fn attach_kernel(&self, kernel: Arc<dyn KernelSide>) {
        let _ = self.kernel.set(kernel);
    }

    /// (pages checked, pages in the store) of the `fsck` under way.
    pub fn fsck_progress(&self) -> (u64, u64) {
        (
            self.fsck_progress.0.load(Ordering::Relaxed),
            self.fsck_progress.1.load(Ordering::Relaxed),
        )
    }

    /// The last live `fsck`.
    pub fn fsck_report(&self) -> LastFsck {
        self.fsck.lock().clone()
    }

    pub fn gc_runs(&self) -> u64 {
        self.gc_runs.load(Ordering::Acquire)
    }

    /// The store directory, for a filesystem opened with [`Fs::mount`].
    pub fn store_dir(&self) -> Option<&Path> {
        self.store_dir.as_deref()
    }
}

/// Bytes the daemon's allocator has handed out and not had back (glibc's
/// `mallinfo2`: in use in its arenas, and in blocks mapped on their own):
/// what the daemon holds in memory, which its resident size (the store's
/// mapped pages, memory freed but kept by the allocator) does not tell.
#[cfg(target_env = "gnu")]
fn heap_bytes() -> Option<u64> {
    // SAFETY: `mallinfo2` takes no arguments and only reads the
    // allocator's counters, under its own locks.
    let m = unsafe { libc::mallinfo2() };
    Some((m.uordblks + m.hblkhd) as u64)
}

#[cfg(not(target_env = "gnu"))]
fn heap_bytes() -> Option<u64> {
    None
}
