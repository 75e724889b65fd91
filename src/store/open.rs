//! Opening a store: the file and its lock, making a new store (whole or
//! not at all), choosing the commit slot to open at, and loading the
//! allocator state a clean close saved.

use super::*;

impl Store {
    /// Opens the store in `dir`, creating the directory and the store if they
    /// do not exist. Another process holding it open gets [`StoreError::InUse`].
    ///
    /// A new store is made whole under a temporary name and renamed into
    /// place, so a `zippy.store` that exists always had its first commit
    /// written: one that is empty was damaged (or truncated) and is refused,
    /// never taken for a new store.
    pub fn open(dir: &Path, opts: StoreOptions) -> StoreResult<Store> {
        std::fs::create_dir_all(dir)
            .map_err(|e| StoreError::io(format!("create store directory {}", dir.display()), e))?;
        let path = dir.join(STORE_FILE);
        let file = match open_rw(&path, false) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => create(dir, &path)?,
            Err(e) => return Err(StoreError::io(format!("open {}", path.display()), e)),
        };
        lock(&file, &path)?;
        let len = file
            .metadata()
            .map_err(|e| StoreError::io(format!("stat {}", path.display()), e))?
            .len();
        if len == 0 {
            return Err(StoreError::NotAStore(format!(
                "{} exists but is empty: its contents were lost (a new store is never \
                 empty); move it away to start a new store there",
                path.display()
            )));
        }
        let lock = file
            .try_clone()
            .map_err(|e| StoreError::io("duplicate store file handle", e))?;
        let backend = FileBackend::new(file, opts.map_size, opts.write_path)?;
        let mut store = Self::open_backend(Box::new(backend), opts)?;
        store.path = Some(path);
        store._lock = Some(lock);
        Ok(store)
    }

    /// The versions of the store in `dir` as its newest whole commit lists
    /// them, read without taking the lock and without writing anything: a
    /// file that can only be read is enough, and a daemon may have it open
    /// (a commit it makes meanwhile can make this fail; try again).
    pub fn peek_versions(dir: &Path, opts: &StoreOptions) -> StoreResult<Vec<VersionInfo>> {
        let path = dir.join(STORE_FILE);
        let file =
            File::open(&path).map_err(|e| StoreError::io(format!("open {}", path.display()), e))?;
        let backend = FileBackend::new(file, opts.map_size, WritePath::Pwritev)?;
        let verified = Verified::new(opts.map_size);
        let (slot, _) = choose_slot(&backend, &verified)?;
        let pages = Pages {
            backend: &backend,
            verified: &verified,
        };
        let versions = fsck::load_versions(pages, slot.system_root)?;
        Ok(versions.into_values().map(|m| m.info).collect())
    }

    /// Opens a store on any backend (crash tests use [`SimBackend`]).
    pub fn open_backend(backend: Box<dyn Backend>, opts: StoreOptions) -> StoreResult<Store> {
        let verified = Verified::new(opts.map_size);
        if backend.is_empty() {
            init(&*backend)?;
        }
        let (slot, discarded) = choose_slot(&*backend, &verified)?;
        let retention = opts.retention.clone();
        let mut store = Store {
            backend,
            verified,
            writer: Mutex::new(WriterState {
                alloc: Allocator::new(slot.hwm),
                dead: Deadlists::default(),
                slot,
                poisoned: false,
                last_nodes: [txn::FIRST_NODES_GUESS; 2],
            }),
            shared: Mutex::new(Shared::default()),
            opts,
            path: None,
            _lock: None,
            opened: OpenReport {
                discarded_commit: discarded,
                rebuilt_allocator: false,
            },
            poison_pending: std::sync::atomic::AtomicBool::new(false),
            retention: Mutex::new(retention),
            policy_stored: std::sync::atomic::AtomicBool::new(false),
        };
        if let Err(e) = store.load(slot) {
            // Nothing may be written to a store that failed to open (its
            // drop would save allocator state, growing a truncated file).
            store.writer.get_mut().poisoned = true;
            return Err(e);
        }
        Ok(store)
    }

    /// Reads the version table and the allocator state of the newest commit.
    fn load(&mut self, slot: Slot) -> StoreResult<()> {
        let file_pages = self.backend.len() / PAGE;
        let short = slot.hwm > file_pages;
        self.load_slot(slot).map_err(|e| match e {
            // Say what the damage most likely is, the same way for every
            // command that opens the store.
            StoreError::Corrupt { page, reason } if short => StoreError::Corrupt {
                page,
                reason: format!(
                    "{reason} (the store file is {} bytes, shorter than the {} its last \
                     commit uses: it was truncated)",
                    self.backend.len(),
                    slot.hwm * PAGE
                ),
            },
            e => e,
        })
    }

    fn load_slot(&mut self, mut slot: Slot) -> StoreResult<()> {
        let file_pages = self.backend.len() / PAGE;
        let mut rebuild = slot.alloc_page == 0;
        if slot.hwm > file_pages {
            // The file was shrunk after a commit that still counted the tail;
            // only free pages live there, which the rebuild walk checks.
            tracing::info!(
                hwm = slot.hwm,
                file_pages,
                "store file shorter than its high-water mark"
            );
            slot.hwm = file_pages;
            rebuild = true;
        }
        let versions = fsck::load_versions(self.pages(), slot.system_root)?;
        if let Some(policy) = txn::load_policy(self.pages(), slot.system_root)? {
            *self.retention.get_mut() = policy;
            *self.policy_stored.get_mut() = true;
        }
        let w = self.writer.get_mut();
        w.slot = slot;
        if !rebuild {
            match load_alloc_state(&*self.backend, &slot) {
                Ok((alloc, dead)) => {
                    w.alloc = alloc;
                    w.dead = dead;
                }
                Err(e) => {
                    tracing::warn!("saved allocator state unusable ({e}); rebuilding it");
                    rebuild = true;
                }
            }
        }
        if rebuild {
            let started = std::time::Instant::now();
            let pages = Pages {
                backend: &*self.backend,
                verified: &self.verified,
            };
            let progress = self.opts.progress;
            let report = move |done: u64, total: u64| {
                if let Some(p) = progress {
                    p(done, total);
                }
            };
            let (alloc, dead) = fsck::rebuild(pages, &slot, &versions, &report)?;
            tracing::info!(
                elapsed = ?started.elapsed(),
                pages = slot.hwm,
                "rebuilt allocator state by walking every kept version"
            );
            w.alloc = alloc;
            w.dead = dead;
            self.opened.rebuilt_allocator = true;
        }
        self.shared.get_mut().versions = versions;
        Ok(())
    }
}

fn open_rw(path: &Path, create: bool) -> std::io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(create)
        .truncate(false)
        .mode(0o600)
        .open(path)
}

/// Takes the store's lock (held for as long as the file is open), or says
/// who has it.
fn lock(file: &File, path: &Path) -> StoreResult<()> {
    // SAFETY: flock on a descriptor we own; no memory is passed.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
            return Err(StoreError::InUse {
                path: path.display().to_string(),
            });
        }
        return Err(StoreError::io(format!("lock {}", path.display()), e));
    }
    Ok(())
}

/// Makes a new store at `path`: its first commit written and synced under
/// a temporary name (locked, so two processes cannot make it at once), then
/// renamed into place, never over a store another process made meanwhile.
/// Returns the file, locked.
fn create(dir: &Path, path: &Path) -> StoreResult<File> {
    let tmp = dir.join(format!("{STORE_FILE}.new"));
    let file =
        open_rw(&tmp, true).map_err(|e| StoreError::io(format!("create {}", tmp.display()), e))?;
    lock(&file, &tmp)?;
    let io = |what: &str, e| StoreError::io(format!("{what} {}", tmp.display()), e);
    // A leftover of a crash during an earlier attempt is started over.
    file.set_len(0).map_err(|e| io("truncate", e))?;
    let slot = first_slot();
    let (at, sector) = slot_sector(&slot);
    file.set_len(2 * PAGE).map_err(|e| io("grow", e))?;
    std::os::unix::fs::FileExt::write_all_at(&file, &sector, at).map_err(|e| io("write", e))?;
    file.sync_all().map_err(|e| io("sync", e))?;
    let (Ok(from), Ok(to)) = (
        std::ffi::CString::new(tmp.as_os_str().as_encoded_bytes()),
        std::ffi::CString::new(path.as_os_str().as_encoded_bytes()),
    ) else {
        return Err(StoreError::NotAStore(format!(
            "{} holds a NUL byte",
            path.display()
        )));
    };
    // SAFETY: two valid NUL-terminated paths; no other memory is passed.
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            from.as_ptr(),
            libc::AT_FDCWD,
            to.as_ptr(),
            libc::RENAME_NOREPLACE,
        )
    };
    if rc != 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EEXIST) {
            // Another process made the store first: open theirs.
            let _ = std::fs::remove_file(&tmp);
            return open_rw(path, false)
                .map_err(|e| StoreError::io(format!("open {}", path.display()), e));
        }
        return Err(StoreError::io(
            format!("rename {} into place", tmp.display()),
            e,
        ));
    }
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| StoreError::io(format!("sync directory {}", dir.display()), e))?;
    Ok(file)
}

fn first_slot() -> Slot {
    Slot {
        txn: 1,
        hwm: format::FIRST_DATA_PAGE,
        ..Slot::default()
    }
}

/// Writes the first commit of a new store.
fn init(backend: &dyn Backend) -> StoreResult<()> {
    // SAFETY: an empty device: nothing has been read from it.
    unsafe { backend.set_len(2 * PAGE)? };
    write_slot(backend, &first_slot())?;
    Ok(())
}

/// The sector holding a commit slot, and where it goes: the slot its txn's
/// parity names. One 512-byte sector, which devices write whole or not at all.
pub(crate) fn slot_sector(slot: &Slot) -> (u64, [u8; 512]) {
    let mut sector = [0u8; 512];
    sector[..format::SLOT_SIZE].copy_from_slice(&slot.encode());
    ((slot.txn % 2) * PAGE, sector)
}

/// Writes a commit slot and syncs it.
pub(super) fn write_slot(backend: &dyn Backend, slot: &Slot) -> StoreResult<()> {
    let (at, sector) = slot_sector(slot);
    // SAFETY: the commit slots are only ever read with `read_copy`, never
    // borrowed.
    unsafe { backend.write_all(&[(at, &sector)])? };
    backend.sync()
}

/// The newest commit that is whole: the newest valid slot, unless it is a
/// commit whose pages did not all reach the disk, in which case the one
/// before it (see `txn.rs`, the commit protocol).
fn choose_slot(backend: &dyn Backend, verified: &Verified) -> StoreResult<(Slot, Option<u64>)> {
    let mut slots = read_slots(backend)?;
    slots.sort_by_key(|s| std::cmp::Reverse(s.txn));
    let pages = Pages { backend, verified };
    let mut last_err = None;
    let mut discarded = None;
    for s in slots {
        if let Err(why) = s.validate() {
            tracing::warn!(txn = s.txn, "commit slot refused: {why}");
            last_err = Some(StoreError::corrupt(
                s.txn % 2,
                format!("commit slot of txn {}: {why}", s.txn),
            ));
            discarded = Some(s.txn);
            continue;
        }
        if s.alloc_page != 0 {
            // A clean close synced everything before writing its slot.
            return Ok((s, discarded));
        }
        match fsck::verify_commit(pages, &s) {
            Ok(()) => return Ok((s, discarded)),
            Err(e) => {
                tracing::warn!(
                    txn = s.txn,
                    "newest commit did not fully reach the disk ({e}); opening the one before it"
                );
                discarded = Some(s.txn);
                last_err = Some(e);
            }
        }
    }
    Err(last_err.unwrap_or_else(|| StoreError::corrupt(0, "no usable commit slot")))
}

/// Reads both commit slots and returns the valid ones.
fn read_slots(backend: &dyn Backend) -> StoreResult<Vec<Slot>> {
    if backend.len() < 2 * PAGE {
        return Err(StoreError::NotAStore(format!(
            "file of {} bytes is too short to hold the commit slots",
            backend.len()
        )));
    }
    let mut valid = Vec::new();
    let mut magic_seen = false;
    for i in 0..2u64 {
        let mut b = [0u8; format::SLOT_SIZE];
        backend.read_copy(i * PAGE, &mut b)?;
        magic_seen |= b[..8] == format::MAGIC;
        if let Some(s) = Slot::decode(&b)? {
            valid.push(s);
        }
    }
    match valid.is_empty() {
        false => Ok(valid),
        true if magic_seen => Err(StoreError::corrupt(0, "both commit slots are damaged")),
        true => Err(StoreError::NotAStore("no commit slot found".into())),
    }
}

fn load_alloc_state(backend: &dyn Backend, slot: &Slot) -> StoreResult<(Allocator, Deadlists)> {
    let (off, len) = format::run_span(slot.alloc_page, slot.alloc_pages)?;
    let run = backend.read(off, len)?;
    verify_run(run, slot.alloc_page, &[KIND_ALLOC])?;
    let (alloc, dead) = alloc::load_state(run, slot.alloc_page, slot.alloc_pages)?;
    if alloc.hwm() != slot.hwm {
        return Err(StoreError::corrupt(
            slot.alloc_page,
            "allocator state of another commit",
        ));
    }
    Ok((alloc, dead))
}
