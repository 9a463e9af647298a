//! The key/value store behind `/kv/{key}`, kept in an embedded [redb] database.
//!
//! # Where the data lives
//!
//! [`Store::open`] keeps the database in the file [`DB_FILE_NAME`] (`kv.redb`) of a directory
//! (`--data-dir`), so the data survives process and pod restarts when that directory is on a
//! persistent volume. [`Store::in_memory`] runs the very same code on redb's
//! [`InMemoryBackend`], for replicas started without `--data-dir` and for tests: the data is then
//! lost when the process exits.
//!
//! # Why redb
//!
//! redb is pure Rust (no C toolchain, so the static musl image stays simple), ACID, and commits with
//! one `fsync` per transaction at [`Durability::Immediate`] (its default); its file format is stable
//! (the v3 format, unchanged since redb 3.0: format changes come only with a major version and with
//! a documented upgrade path) and it needs no tuning. fjall, the other pure-Rust candidate, is an
//! LSM tree whose writes become durable only through explicit persist calls, which is one more
//! thing a handler could forget before answering.
//!
//! # Durability
//!
//! Every [`Store::put`] and [`Store::delete`] is its own write transaction, committed with
//! [`Durability::Immediate`]: `commit` returns only once the data and the new commit slot have been
//! `fsync`ed, and the HTTP handler answers only after that. A write that got its 2xx therefore
//! survives SIGKILL, an OOM kill or a node crash; nothing depends on a graceful shutdown. A process
//! killed during a commit leaves the previous commit intact, and redb repairs the file on the next
//! open. A DELETE of a missing key aborts its transaction instead of committing an empty one.
//!
//! # Blocking
//!
//! redb's API is synchronous and a commit waits for `fsync` (milliseconds on a local disk, more on a
//! network volume; a read may also wait for the disk on a cache miss). Every operation therefore runs
//! on tokio's blocking pool through [`tokio::task::spawn_blocking`], never on the runtime's worker
//! threads. The blocking task finishes even when the client goes away, so a write is either
//! committed or not, never half done.
//!
//! # Failures
//!
//! A database error (disk full, I/O error, corruption) is logged and returned as [`StoreError`],
//! never a panic; the service answers 503 for I/O-like failures and 500 for the rest (see
//! [`StoreError::is_unavailable`]). After a failed operation redb may refuse further writes until the
//! database is reopened, so a file-backed store closes and reopens the file before its next
//! operation: once the disk has room again, writes succeed without a restart.
//!
//! Only one process may have the file open (redb locks it); [`Store::open`] fails with
//! [`StoreError::AlreadyOpen`], naming the file, when another process holds it.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use parking_lot::RwLock;
use redb::backends::InMemoryBackend;
use redb::{
    Database, DatabaseError, Durability, ReadableDatabase, ReadableTableMetadata, StorageBackend,
    TableDefinition,
};

/// Name of the database file inside the data directory.
pub const DB_FILE_NAME: &str = "kv.redb";

/// The one table: keys are the path segment after `/kv/`, values opaque bytes.
const KV: TableDefinition<&str, &[u8]> = TableDefinition::new("kv");

/// Errors of the store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// Creating or syncing the data directory failed.
    #[error("{action} data directory {}: {error}", path.display())]
    Dir {
        /// What was being done (`creating`, `syncing`).
        action: &'static str,
        /// The directory.
        path: PathBuf,
        /// The I/O error.
        error: std::io::Error,
    },
    /// Another process has the database file open.
    #[error(
        "database {} is already open in another process (redb allows one process per database file)",
        path.display()
    )]
    AlreadyOpen {
        /// The database file.
        path: PathBuf,
    },
    /// Opening (or initialising) the database failed.
    #[error("opening database {location}: {error}")]
    Open {
        /// The database file, or `memory`.
        location: String,
        /// The redb error.
        error: Box<redb::Error>,
    },
    /// An operation on the open database failed.
    #[error("{op} failed in database {location}: {error}")]
    Db {
        /// The operation (`put`, `get`, `delete`, `len`, `close`).
        op: &'static str,
        /// The database file, or `memory`.
        location: String,
        /// The redb error.
        error: Box<redb::Error>,
    },
    /// The database was closed ([`Store::close`]) or could not be reopened after an error.
    #[error("database {location} is closed")]
    Closed {
        /// The database file, or `memory`.
        location: String,
    },
    /// The blocking task running the operation panicked or was cancelled.
    #[error("{op} task in database {location} failed: {error}")]
    Task {
        /// The operation.
        op: &'static str,
        /// The database file, or `memory`.
        location: String,
        /// What the task reported.
        error: String,
    },
}

impl StoreError {
    /// Whether the failure is one of availability (I/O error, disk full, database closed or held by
    /// another process), which may go away by itself: the service answers 503 for these and 500 for
    /// the others (corruption, a panicked task).
    pub fn is_unavailable(&self) -> bool {
        match self {
            Self::Dir { .. } | Self::AlreadyOpen { .. } | Self::Closed { .. } => true,
            Self::Open { error, .. } | Self::Db { error, .. } => matches!(
                **error,
                redb::Error::Io(_)
                    | redb::Error::PreviousIo
                    | redb::Error::Backend(_)
                    | redb::Error::DatabaseClosed
                    | redb::Error::DatabaseAlreadyOpen
                    | redb::Error::WouldBlock
            ),
            Self::Task { .. } => false,
        }
    }

    /// Whether the value was too large for the database (redb's limit is about 3 GiB).
    pub fn is_value_too_large(&self) -> bool {
        matches!(self, Self::Db { error, .. } if matches!(**error, redb::Error::ValueTooLarge(_)))
    }
}

/// A thread-safe map from keys to opaque byte values, stored in a redb database. Clones share the
/// database.
#[derive(Debug, Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// `None` once closed, or while a reopen after an error has failed.
    db: RwLock<Option<Database>>,
    /// The database file; `None` for a backend that cannot be reopened (memory).
    path: Option<PathBuf>,
    /// The file's path, or `memory`, for messages.
    location: String,
    /// Set after a failed operation: the next operation closes and reopens the file first.
    reopen: AtomicBool,
}

impl Store {
    /// Opens (or creates) the database `dir/kv.redb`, creating `dir` if missing. Blocking: call it
    /// before serving or from a blocking task.
    ///
    /// Fails with [`StoreError::AlreadyOpen`] when another process has the file open.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self, StoreError> {
        let dir = dir.as_ref();
        let dir_existed = dir.is_dir();
        std::fs::create_dir_all(dir).map_err(|error| StoreError::Dir {
            action: "creating",
            path: dir.to_owned(),
            error,
        })?;
        let path = dir.join(DB_FILE_NAME);
        let file_existed = path.exists();
        let db = open_file(&path)?;
        // A new file's directory entry (and a new directory's) is durable only once its parent
        // directory has been synced; the commits sync the file's contents only.
        if !file_existed {
            sync_dir(dir)?;
        }
        if !dir_existed && let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
            sync_dir(parent)?;
        }
        Ok(Self::from_db(
            db,
            Some(path.clone()),
            path.display().to_string(),
        ))
    }

    /// A database on redb's in-memory backend: the same code path as [`Store::open`], but the data
    /// is lost when the store is dropped.
    pub fn in_memory() -> Result<Self, StoreError> {
        Self::with_backend(InMemoryBackend::new(), "memory")
    }

    /// A database on any storage backend (tests inject failing ones). Such a store is not reopened
    /// after an error.
    pub(crate) fn with_backend(
        backend: impl StorageBackend,
        location: &str,
    ) -> Result<Self, StoreError> {
        let open_error = |error: redb::Error| StoreError::Open {
            location: location.to_owned(),
            error: Box::new(error),
        };
        let db = Database::builder()
            .create_with_backend(backend)
            .map_err(|e| open_error(e.into()))?;
        create_table(&db).map_err(open_error)?;
        Ok(Self::from_db(db, None, location.to_owned()))
    }

    fn from_db(db: Database, path: Option<PathBuf>, location: String) -> Self {
        Self {
            inner: Arc::new(Inner {
                db: RwLock::new(Some(db)),
                path,
                location,
                reopen: AtomicBool::new(false),
            }),
        }
    }

    /// The database file's path, or `memory`.
    pub fn location(&self) -> &str {
        &self.inner.location
    }

    /// Stores `value` under `key`, durably; returns `true` when the key did not exist before.
    pub async fn put(&self, key: &str, value: Bytes) -> Result<bool, StoreError> {
        let key = key.to_owned();
        self.blocking("put", move |db| {
            let mut txn = db.begin_write()?;
            txn.set_durability(Durability::Immediate)?;
            let created = {
                let mut table = txn.open_table(KV)?;
                table.insert(key.as_str(), &value[..])?.is_none()
            };
            txn.commit()?;
            Ok(created)
        })
        .await
    }

    /// Returns the value stored under `key`, if any.
    pub async fn get(&self, key: &str) -> Result<Option<Bytes>, StoreError> {
        let key = key.to_owned();
        self.blocking("get", move |db| {
            let txn = db.begin_read()?;
            let table = txn.open_table(KV)?;
            Ok(table
                .get(key.as_str())?
                .map(|v| Bytes::copy_from_slice(v.value())))
        })
        .await
    }

    /// Removes `key`, durably; returns `true` when it existed.
    pub async fn delete(&self, key: &str) -> Result<bool, StoreError> {
        let key = key.to_owned();
        self.blocking("delete", move |db| {
            let mut txn = db.begin_write()?;
            txn.set_durability(Durability::Immediate)?;
            let existed = {
                let mut table = txn.open_table(KV)?;
                table.remove(key.as_str())?.is_some()
            };
            if existed {
                txn.commit()?;
            } else {
                txn.abort()?;
            }
            Ok(existed)
        })
        .await
    }

    /// Number of stored keys.
    pub async fn len(&self) -> Result<u64, StoreError> {
        self.blocking("len", |db| {
            let txn = db.begin_read()?;
            Ok(txn.open_table(KV)?.len()?)
        })
        .await
    }

    /// Whether the store holds no key.
    pub async fn is_empty(&self) -> Result<bool, StoreError> {
        Ok(self.len().await? == 0)
    }

    /// Closes the database, after the operations in progress; later operations fail with
    /// [`StoreError::Closed`]. Dropping the last clone closes it too, but without reporting errors.
    pub async fn close(&self) -> Result<(), StoreError> {
        let store = self.clone();
        let location = self.inner.location.clone();
        tokio::task::spawn_blocking(move || store.close_blocking())
            .await
            .map_err(|e| StoreError::Task {
                op: "close",
                location,
                error: e.to_string(),
            })?
    }

    fn close_blocking(&self) -> Result<(), StoreError> {
        let db = {
            let mut guard = self.inner.db.write();
            self.inner.reopen.store(false, Ordering::Release);
            guard.take()
        };
        match db {
            Some(db) => db.close().map_err(|e| StoreError::Db {
                op: "close",
                location: self.inner.location.clone(),
                error: Box::new(e.into()),
            }),
            None => Ok(()),
        }
    }

    /// Runs `f` against the database on the blocking pool.
    async fn blocking<T, F>(&self, op: &'static str, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Database) -> Result<T, redb::Error> + Send + 'static,
    {
        let store = self.clone();
        match tokio::task::spawn_blocking(move || store.run(op, f)).await {
            Ok(result) => result,
            Err(e) => {
                let error = StoreError::Task {
                    op,
                    location: self.inner.location.clone(),
                    error: e.to_string(),
                };
                tracing::error!(error = %error, "database task failed");
                Err(error)
            }
        }
    }

    /// Runs `f` against the database on the current thread, reopening the file first if an earlier
    /// operation failed. Errors are logged here.
    fn run<T>(
        &self,
        op: &'static str,
        f: impl FnOnce(&Database) -> Result<T, redb::Error>,
    ) -> Result<T, StoreError> {
        if self.inner.reopen.load(Ordering::Acquire) {
            self.reopen()?;
        }
        let guard = self.inner.db.read();
        let Some(db) = guard.as_ref() else {
            return Err(StoreError::Closed {
                location: self.inner.location.clone(),
            });
        };
        f(db).map_err(|error| {
            // After an I/O error or a failed commit redb refuses further writes until the database
            // is reopened; a value that is too large leaves it in good order.
            let reopen =
                self.inner.path.is_some() && !matches!(error, redb::Error::ValueTooLarge(_));
            if reopen {
                self.inner.reopen.store(true, Ordering::Release);
            }
            let error = StoreError::Db {
                op,
                location: self.inner.location.clone(),
                error: Box::new(error),
            };
            tracing::error!(error = %error, reopen, "database operation failed");
            error
        })
    }

    /// Closes and reopens the database file, unless another thread just did.
    fn reopen(&self) -> Result<(), StoreError> {
        let Some(path) = &self.inner.path else {
            return Ok(());
        };
        let mut guard = self.inner.db.write();
        if !self.inner.reopen.load(Ordering::Acquire) {
            return Ok(());
        }
        if let Some(old) = guard.take()
            && let Err(e) = old.close()
        {
            // Expected after an I/O error (redb reports it again); the reopen repairs the file.
            tracing::debug!(database = %path.display(), error = %e, "closing the database before reopening it failed");
        }
        match open_file(path) {
            Ok(db) => {
                *guard = Some(db);
                self.inner.reopen.store(false, Ordering::Release);
                tracing::info!(database = %path.display(), "database reopened after an error");
                Ok(())
            }
            Err(error) => {
                // Stays closed, with `reopen` set: the next operation tries again.
                tracing::error!(error = %error, "reopening the database failed");
                Err(error)
            }
        }
    }
}

/// Opens or creates the database file and its table.
fn open_file(path: &Path) -> Result<Database, StoreError> {
    let open_error = |error: redb::Error| StoreError::Open {
        location: path.display().to_string(),
        error: Box::new(error),
    };
    let logged = Arc::new(AtomicBool::new(false));
    let shown = path.display().to_string();
    let db = Database::builder()
        .set_repair_callback(move |session| {
            if !logged.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    database = %shown,
                    progress = session.progress(),
                    "database was not closed cleanly; repairing it (committed writes are kept)"
                );
            }
        })
        .create(path)
        .map_err(|e| match e {
            DatabaseError::DatabaseAlreadyOpen => StoreError::AlreadyOpen {
                path: path.to_owned(),
            },
            e => open_error(e.into()),
        })?;
    create_table(&db).map_err(open_error)?;
    Ok(db)
}

/// Creates the table if missing, so that readers always find it.
fn create_table(db: &Database) -> Result<(), redb::Error> {
    let txn = db.begin_write()?;
    txn.open_table(KV)?;
    txn.commit()?;
    Ok(())
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|error| StoreError::Dir {
            action: "syncing",
            path: dir.to_owned(),
            error,
        })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::io;

    /// An in-memory backend whose writes and syncs fail (as on a full disk) while `fail` is set.
    #[derive(Debug, Default)]
    pub(crate) struct FailingBackend {
        inner: InMemoryBackend,
        pub(crate) fail: Arc<AtomicBool>,
    }

    impl FailingBackend {
        fn check(&self) -> io::Result<()> {
            if self.fail.load(Ordering::Relaxed) {
                Err(io::Error::from(io::ErrorKind::StorageFull))
            } else {
                Ok(())
            }
        }
    }

    impl StorageBackend for FailingBackend {
        fn len(&self) -> io::Result<u64> {
            self.inner.len()
        }
        fn read(&self, offset: u64, out: &mut [u8]) -> io::Result<()> {
            self.inner.read(offset, out)
        }
        fn set_len(&self, len: u64) -> io::Result<()> {
            self.check()?;
            self.inner.set_len(len)
        }
        fn sync_data(&self) -> io::Result<()> {
            self.check()?;
            self.inner.sync_data()
        }
        fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
            self.check()?;
            self.inner.write(offset, data)
        }
    }

    #[tokio::test]
    async fn put_get_replace_delete() {
        let s = Store::in_memory().unwrap();
        assert_eq!(s.location(), "memory");
        assert!(s.is_empty().await.unwrap());
        assert!(s.put("a", Bytes::from_static(b"1")).await.unwrap());
        assert!(!s.put("a", Bytes::from_static(b"2")).await.unwrap());
        assert_eq!(s.get("a").await.unwrap().as_deref(), Some(&b"2"[..]));
        assert_eq!(s.len().await.unwrap(), 1);
        assert!(s.delete("a").await.unwrap());
        assert!(!s.delete("a").await.unwrap());
        assert_eq!(s.get("a").await.unwrap(), None);
        assert!(s.is_empty().await.unwrap());
    }

    #[tokio::test]
    async fn data_survives_close_and_reopen() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("nested/data");
        let s = Store::open(&dir).unwrap();
        assert_eq!(
            s.location(),
            dir.join(DB_FILE_NAME).display().to_string().as_str()
        );
        for i in 0..20 {
            let value = Bytes::from(format!("value-{i}").into_bytes());
            assert!(s.put(&format!("key-{i}"), value).await.unwrap());
        }
        assert!(s.put("empty", Bytes::new()).await.unwrap());
        assert!(s.delete("key-3").await.unwrap());
        s.close().await.unwrap();
        assert!(matches!(
            s.get("key-0").await,
            Err(StoreError::Closed { .. })
        ));
        drop(s);

        let s = Store::open(&dir).unwrap();
        assert_eq!(s.len().await.unwrap(), 20);
        for i in (0..20).filter(|&i| i != 3) {
            let got = s.get(&format!("key-{i}")).await.unwrap();
            assert_eq!(got.as_deref(), Some(format!("value-{i}").as_bytes()));
        }
        assert_eq!(s.get("key-3").await.unwrap(), None);
        assert_eq!(s.get("empty").await.unwrap().as_deref(), Some(&b""[..]));

        // Dropping without `close` also keeps the data.
        assert!(s.put("late", Bytes::from_static(b"x")).await.unwrap());
        drop(s);
        let s = Store::open(&dir).unwrap();
        assert_eq!(s.get("late").await.unwrap().as_deref(), Some(&b"x"[..]));
    }

    #[tokio::test]
    async fn reopen_after_an_error_keeps_the_data() {
        let tmp = tempfile::tempdir().unwrap();
        let s = Store::open(tmp.path()).unwrap();
        assert!(s.put("a", Bytes::from_static(b"1")).await.unwrap());
        // As after a failed operation (a full disk cannot be arranged here; a manual run on a small
        // tmpfs answered 503 while full and 201 again once space was freed, without a restart).
        s.inner.reopen.store(true, Ordering::Release);
        assert_eq!(s.get("a").await.unwrap().as_deref(), Some(&b"1"[..]));
        assert!(!s.inner.reopen.load(Ordering::Acquire));
        assert!(s.put("b", Bytes::from_static(b"2")).await.unwrap());
        assert_eq!(s.len().await.unwrap(), 2);
    }

    #[test]
    fn second_open_of_the_same_file_is_refused_and_names_it() {
        let tmp = tempfile::tempdir().unwrap();
        let first = Store::open(tmp.path()).unwrap();
        let error = Store::open(tmp.path()).unwrap_err();
        assert!(matches!(error, StoreError::AlreadyOpen { .. }), "{error:?}");
        let message = error.to_string();
        let file = tmp.path().join(DB_FILE_NAME).display().to_string();
        assert!(message.contains(&file), "{message}");
        assert!(error.is_unavailable());
        drop(first);
        Store::open(tmp.path()).unwrap();
    }

    #[test]
    fn a_file_in_place_of_the_directory_is_a_clear_error() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("not-a-dir");
        std::fs::write(&file, b"x").unwrap();
        let error = Store::open(&file).unwrap_err();
        assert!(
            error.to_string().starts_with("creating data directory"),
            "{error}"
        );
    }

    #[tokio::test]
    async fn write_errors_are_reported_not_panics() {
        let backend = FailingBackend::default();
        let fail = backend.fail.clone();
        let s = Store::with_backend(backend, "failing").unwrap();
        assert!(s.put("kept", Bytes::from_static(b"1")).await.unwrap());
        fail.store(true, Ordering::Relaxed);
        let error = s.put("lost", Bytes::from_static(b"2")).await.unwrap_err();
        assert!(error.is_unavailable(), "{error:?}");
        assert!(
            error
                .to_string()
                .starts_with("put failed in database failing")
        );
        // Reads still see the last commit.
        fail.store(false, Ordering::Relaxed);
        assert_eq!(s.get("kept").await.unwrap().as_deref(), Some(&b"1"[..]));
        assert_eq!(s.get("lost").await.unwrap(), None);
    }
}
