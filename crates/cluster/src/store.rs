//! The on-disk store: Raft log, vote, committed index and snapshots in one redb
//! database per node. Log appends go to one writer thread that commits them
//! in order, several at a time when they queue up (group commit), and reports
//! each batch durable only after its fsync; meanwhile the entries are readable
//! from memory, so the leader replicates while it writes. Vote, truncation
//! and purge wait for their own fsync. A `kill -9` at any point loses nothing
//! that was acknowledged.
//!
//! Log entries and snapshots are sealed with the storage key before they are
//! written (invariant 6); the vote and log positions hold no secrets and are
//! stored plain. The state machine lives in memory and is rebuilt at start from
//! the last snapshot, after which openraft re-applies the committed log.

// openraft's traits fix the error type (StorageError, ~200 bytes); helpers
// return the same so `?` works throughout. Errors here are rare and fatal.
#![allow(clippy::result_large_err)]

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;
use std::io::Cursor;
use std::ops::{Bound, RangeBounds};
use std::sync::{Arc, Mutex, RwLock};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage, RaftStateMachine, Snapshot};
use openraft::{
    Entry, EntryPayload, LogId, OptionalSend, RaftLogReader, RaftSnapshotBuilder, SnapshotMeta,
    StorageError, StorageIOError, StoredMembership, Vote,
};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::command::{Change, decode, encode};
use crate::lease::LeaseWatch;
use crate::seal::StorageKey;
use crate::state::{ClusterState, Outcome};
use crate::{Member, NodeId, TypeConfig};

const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");

const VOTE: &str = "vote";
const COMMITTED: &str = "committed";
const LAST_PURGED: &str = "last_purged";
const SNAPSHOT_META: &str = "snapshot_meta";
const SNAPSHOT_DATA: &str = "snapshot_data";

type SError = StorageError<NodeId>;
type StoredSnapshot = (SnapshotMeta<NodeId, Member>, Vec<u8>);

fn read_err(e: impl std::error::Error + 'static) -> SError {
    StorageIOError::read(&e).into()
}

fn write_err(e: impl std::error::Error + 'static) -> SError {
    StorageIOError::write(&e).into()
}

fn read_logs_err(e: impl std::error::Error + 'static) -> SError {
    StorageIOError::read_logs(&e).into()
}

fn write_logs_err(e: impl std::error::Error + 'static) -> SError {
    StorageIOError::write_logs(&e).into()
}

const LEGACY_SNAPSHOT_AAD: &[u8] = b"snapshot";

/// A snapshot written before WIRE_VERSION 4: its state had no revocations
/// (the last field, so an empty set's one byte completes it), and its
/// reservations were keyed by outbound SPI; they are keyed by the child's
/// inbound SPI now.
fn upgrade_v3_snapshot(plain: &[u8]) -> Result<Applied, crate::command::CodecError> {
    let mut bytes = zeroize::Zeroizing::new(plain.to_vec());
    bytes.push(0);
    let mut applied: Applied = decode(&bytes)?;
    let state = &mut applied.state;
    let by_outbound = std::mem::take(&mut state.seq_reservations);
    for (outbound_spi, r) in by_outbound {
        if let Some(child) = state
            .child_sas
            .values()
            .find(|c| c.outbound_spi == outbound_spi)
        {
            state.seq_reservations.insert(child.inbound_spi, r);
        }
    }
    Ok(applied)
}

/// What the state machine tells the gateway after applying.
#[derive(Debug, Clone)]
pub enum StateEvent {
    /// One committed entry's changes, in log order, with its log index.
    Applied { index: u64, changes: Vec<Change> },
    /// A snapshot replaced the whole state: read it again.
    Reset,
}

/// The state machine's contents, as the snapshot holds them.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Applied {
    pub last_applied: Option<LogId<NodeId>>,
    pub membership: StoredMembership<NodeId, Member>,
    pub state: ClusterState,
}

/// Where a node keeps its log and snapshots.
#[derive(Debug, Clone)]
pub enum Disk {
    /// A redb file in this directory, written by a writer thread that
    /// fsyncs: what tandemd uses.
    Dir(std::path::PathBuf),
    /// A redb database in memory, written inline: the failover simulator's
    /// disk. It outlives a crash of the node that wrote it as long as the
    /// simulator keeps the handle, as a synced disk outlives a power cut.
    Memory(MemoryDisk),
}

/// An in-memory database; clones share it.
#[derive(Clone)]
pub struct MemoryDisk(Arc<Database>);

impl MemoryDisk {
    pub fn new() -> std::io::Result<Self> {
        let db = Database::builder()
            .create_with_backend(redb::backends::InMemoryBackend::new())
            .map_err(std::io::Error::other)?;
        Ok(Self(Arc::new(db)))
    }
}

impl Debug for MemoryDisk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MemoryDisk")
    }
}

/// Opens (or creates) a node's store on `disk`.
pub fn open(
    disk: &Disk,
    key: StorageKey,
) -> Result<(LogStore, StateMachine, mpsc::UnboundedReceiver<StateEvent>), SError> {
    let db = match disk {
        Disk::Dir(dir) => {
            std::fs::create_dir_all(dir).map_err(write_err)?;
            Arc::new(Database::create(dir.join("tandem.redb")).map_err(write_err)?)
        }
        Disk::Memory(m) => m.0.clone(),
    };
    let shared = Arc::new(Shared { db, key });
    {
        let txn = shared.db.begin_write().map_err(write_err)?;
        txn.open_table(LOG).map_err(write_err)?;
        txn.open_table(META).map_err(write_err)?;
        txn.commit().map_err(write_err)?;
    }
    let applied = match shared.snapshot()? {
        Some((meta, data)) => shared.open_snapshot(meta.last_log_id, &data)?,
        None => Applied::default(),
    };
    let (events, rx) = mpsc::unbounded_channel();
    let pending = Arc::new(Mutex::new(BTreeMap::new()));
    let writer = match disk {
        Disk::Dir(_) => {
            let (ops, queue) = std::sync::mpsc::channel();
            let (shared, pending) = (shared.clone(), pending.clone());
            std::thread::Builder::new()
                .name("raft-log".into())
                .spawn(move || write_log(&shared, &pending, &queue))
                .map_err(write_err)?;
            Writer::Thread(ops)
        }
        // No thread: a simulation must not depend on the OS scheduler.
        Disk::Memory(_) => Writer::Inline,
    };
    let leases = Arc::new(Mutex::new(LeaseWatch::new(crate::now())));
    Ok((
        LogStore {
            shared: shared.clone(),
            pending,
            writer,
            leases: leases.clone(),
        },
        StateMachine {
            shared,
            applied: Arc::new(RwLock::new(applied)),
            events,
            leases,
        },
        rx,
    ))
}

#[derive(Debug)]
struct Shared {
    db: Arc<Database>,
    key: StorageKey,
}

impl Shared {
    fn meta<T: serde::de::DeserializeOwned>(&self, name: &str) -> Result<Option<T>, SError> {
        let txn = self.db.begin_read().map_err(read_err)?;
        let table = txn.open_table(META).map_err(read_err)?;
        let Some(v) = table.get(name).map_err(read_err)? else {
            return Ok(None);
        };
        decode(v.value()).map(Some).map_err(read_err)
    }

    /// Writes one meta value; `durable: false` skips the fsync (the value
    /// reaches disk with the next durable write, or is lost in a crash).
    fn put_meta<T: Serialize>(&self, name: &str, value: &T, durable: bool) -> Result<(), SError> {
        let mut txn = self.db.begin_write().map_err(write_err)?;
        if !durable {
            txn.set_durability(redb::Durability::None)
                .map_err(write_err)?;
        }
        {
            let mut table = txn.open_table(META).map_err(write_err)?;
            table
                .insert(name, encode(value).as_slice())
                .map_err(write_err)?;
        }
        txn.commit().map_err(write_err)
    }

    fn log_aad(index: u64) -> Vec<u8> {
        [b"log ".as_slice(), &index.to_be_bytes()].concat()
    }

    fn seal_entry(&self, entry: &Entry<TypeConfig>) -> Vec<u8> {
        let plain = zeroize::Zeroizing::new(encode(entry));
        self.key.seal(&Self::log_aad(entry.log_id.index), &plain)
    }

    fn open_entry(&self, index: u64, sealed: &[u8]) -> Result<Entry<TypeConfig>, SError> {
        let plain = self
            .key
            .open(&Self::log_aad(index), sealed)
            .map_err(|e| StorageIOError::read_log_at_index(index, &e))?;
        decode(&plain).map_err(|e| StorageIOError::read_log_at_index(index, &e).into())
    }

    fn snapshot(&self) -> Result<Option<StoredSnapshot>, SError> {
        let Some(meta) = self.meta::<SnapshotMeta<NodeId, Member>>(SNAPSHOT_META)? else {
            return Ok(None);
        };
        let txn = self.db.begin_read().map_err(read_err)?;
        let table = txn.open_table(META).map_err(read_err)?;
        let data = table
            .get(SNAPSHOT_DATA)
            .map_err(read_err)?
            .map(|v| v.value().to_vec())
            .unwrap_or_default();
        Ok(Some((meta, data)))
    }

    /// What a snapshot is sealed to: the log position its metadata names,
    /// so a snapshot cannot be put back under another's metadata.
    fn snapshot_aad(last: Option<LogId<NodeId>>) -> Vec<u8> {
        let mut aad = b"snapshot at ".to_vec();
        if let Some(l) = last {
            aad.extend_from_slice(&l.leader_id.term.to_be_bytes());
            aad.extend_from_slice(&l.leader_id.node_id.to_be_bytes());
            aad.extend_from_slice(&l.index.to_be_bytes());
        }
        aad
    }

    fn open_snapshot(&self, last: Option<LogId<NodeId>>, sealed: &[u8]) -> Result<Applied, SError> {
        let fail = |e: &dyn std::error::Error| -> SError {
            StorageIOError::read_snapshot(None, openraft::AnyError::error(e.to_string())).into()
        };
        let plain = match self.key.open(&Self::snapshot_aad(last), sealed) {
            Ok(plain) => plain,
            // Builds before WIRE_VERSION 4 sealed every snapshot to the same
            // words; such a snapshot is read once (the next one is bound),
            // never one that says it is newer.
            Err(crate::seal::SealError::Authentication) => {
                let plain = self
                    .key
                    .open(LEGACY_SNAPSHOT_AAD, sealed)
                    .map_err(|e| fail(&e))?;
                match crate::command::version_of(&plain) {
                    Some(v) if v < 4 => plain,
                    _ => return Err(fail(&crate::seal::SealError::Authentication)),
                }
            }
            Err(e) => return Err(fail(&e)),
        };
        match crate::command::version_of(&plain) {
            Some(v) if v < 4 => upgrade_v3_snapshot(&plain).map_err(|e| fail(&e)),
            _ => decode(&plain).map_err(|e| fail(&e)),
        }
    }

    fn save_snapshot(
        &self,
        meta: &SnapshotMeta<NodeId, Member>,
        sealed: &[u8],
    ) -> Result<(), SError> {
        let err = |e: &dyn std::error::Error| -> SError {
            StorageIOError::write_snapshot(
                Some(meta.signature()),
                openraft::AnyError::error(e.to_string()),
            )
            .into()
        };
        let txn = self.db.begin_write().map_err(|e| err(&e))?;
        {
            let mut table = txn.open_table(META).map_err(|e| err(&e))?;
            table
                .insert(SNAPSHOT_META, encode(meta).as_slice())
                .map_err(|e| err(&e))?;
            table.insert(SNAPSHOT_DATA, sealed).map_err(|e| err(&e))?;
        }
        txn.commit().map_err(|e| err(&e))
    }
}

/// Entries handed to the writer thread and not yet durable, by index.
type Pending = Arc<Mutex<BTreeMap<u64, Entry<TypeConfig>>>>;

/// Log entries sealed for the disk, with their ids.
type Sealed = Vec<(LogId<NodeId>, Vec<u8>)>;

/// A write the writer thread runs in its turn.
type WriteFn = Box<dyn FnOnce(&Shared) -> Result<(), SError> + Send>;

/// Work for the writer thread, done in the order it was sent.
enum Op {
    /// Sealed entries; the callback learns when they are durable.
    Append(Sealed, LogFlushed<TypeConfig>),
    /// Any other write; the reply, if one waits, carries its result.
    Write(
        WriteFn,
        Option<tokio::sync::oneshot::Sender<Result<(), SError>>>,
    ),
}

fn lock<T>(shared: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Both guarded maps (entries queued for the writer, lease times) change
    // by single calls: a panic while one was held left it whole.
    shared
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The writer thread: appends that queue up while one commits share the next
/// transaction, so concurrent proposals share an fsync.
fn write_log(
    shared: &Shared,
    pending: &Mutex<BTreeMap<u64, Entry<TypeConfig>>>,
    queue: &std::sync::mpsc::Receiver<Op>,
) {
    let mut next = None;
    loop {
        let op = match next.take() {
            Some(op) => op,
            None => match queue.recv() {
                Ok(op) => op,
                // Every LogStore is gone: the node shut down.
                Err(_) => return,
            },
        };
        match op {
            Op::Write(write, reply) => run_write(shared, write, reply),
            Op::Append(entries, callback) => {
                let mut batch = vec![(entries, callback)];
                while let Ok(op) = queue.try_recv() {
                    match op {
                        Op::Append(e, c) => batch.push((e, c)),
                        other => {
                            next = Some(other);
                            break;
                        }
                    }
                }
                run_appends(shared, pending, batch);
            }
        }
    }
}

fn run_write(
    shared: &Shared,
    write: WriteFn,
    reply: Option<tokio::sync::oneshot::Sender<Result<(), SError>>>,
) {
    let result = write(shared);
    match reply {
        Some(reply) => {
            let _ = reply.send(result);
        }
        None => {
            if let Err(e) = result {
                tracing::error!(error = %e, "Raft store write failed");
            }
        }
    }
}

/// Commits a batch of appends in one transaction and tells each caller.
fn run_appends(
    shared: &Shared,
    pending: &Mutex<BTreeMap<u64, Entry<TypeConfig>>>,
    batch: Vec<(Sealed, LogFlushed<TypeConfig>)>,
) {
    let result = commit_entries(shared, batch.iter().flat_map(|(e, _)| e));
    if result.is_ok() {
        let mut p = lock(pending);
        for (log_id, _) in batch.iter().flat_map(|(e, _)| e) {
            // A truncation may have replaced it meanwhile.
            if p.get(&log_id.index).is_some_and(|e| e.log_id == *log_id) {
                p.remove(&log_id.index);
            }
        }
    }
    for (_, callback) in batch {
        let r = result
            .as_ref()
            .map(|_| ())
            .map_err(|e| std::io::Error::other(e.to_string()));
        callback.log_io_completed(r);
    }
}

/// Where the log store's writes go.
#[derive(Clone)]
enum Writer {
    /// The writer thread (a file disk).
    Thread(std::sync::mpsc::Sender<Op>),
    /// Done at once, on the caller's task (a memory disk).
    Inline,
}

fn commit_entries<'a>(
    shared: &Shared,
    entries: impl Iterator<Item = &'a (LogId<NodeId>, Vec<u8>)>,
) -> Result<(), redb::Error> {
    let txn = shared.db.begin_write()?;
    {
        let mut table = txn.open_table(LOG)?;
        for (log_id, bytes) in entries {
            table.insert(log_id.index, bytes.as_slice())?;
        }
    }
    txn.commit()?;
    Ok(())
}

/// The Raft log (and vote); cheap to clone for openraft's readers.
#[derive(Clone)]
pub struct LogStore {
    shared: Arc<Shared>,
    pending: Pending,
    writer: Writer,
    /// The state machine's: told when a lease renewal enters the log.
    leases: Arc<Mutex<LeaseWatch>>,
}

impl Debug for LogStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogStore")
            .field("pending", &lock(&self.pending).len())
            .finish_non_exhaustive()
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, SError> {
        let bounds = (range.start_bound().cloned(), range.end_bound().cloned());
        // Pending first: an entry the writer commits between the two reads is
        // then in one or the other, never in neither.
        let mut out: BTreeMap<u64, Entry<TypeConfig>> = lock(&self.pending)
            .range(bounds)
            .map(|(i, e)| (*i, e.clone()))
            .collect();
        let txn = self.shared.db.begin_read().map_err(read_logs_err)?;
        let table = txn.open_table(LOG).map_err(read_logs_err)?;
        for item in table.range::<u64>(bounds).map_err(read_logs_err)? {
            let (k, v) = item.map_err(read_logs_err)?;
            if let std::collections::btree_map::Entry::Vacant(slot) = out.entry(k.value()) {
                slot.insert(self.shared.open_entry(k.value(), v.value())?);
            }
        }
        Ok(out.into_values().collect())
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, SError> {
        let last_purged: Option<LogId<NodeId>> = self.shared.meta(LAST_PURGED)?;
        let last = {
            let txn = self.shared.db.begin_read().map_err(read_logs_err)?;
            let table = txn.open_table(LOG).map_err(read_logs_err)?;
            match table.last().map_err(read_logs_err)? {
                Some((k, v)) => Some(self.shared.open_entry(k.value(), v.value())?.log_id),
                None => None,
            }
        };
        let last_pending = lock(&self.pending).values().next_back().map(|e| e.log_id);
        Ok(LogState {
            last_purged_log_id: last_purged,
            last_log_id: last_pending.or(last).or(last_purged),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), SError> {
        let vote = *vote;
        self.write(move |shared| shared.put_meta(VOTE, &vote, true))
            .await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, SError> {
        self.shared.meta(VOTE)
    }

    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> Result<(), SError> {
        // Not fsynced: it is on every commit's path, and an older committed
        // index after a crash is safe (openraft re-learns it from the leader;
        // it only spares re-applying entries at start).
        // Nor waited for: nothing depends on it being written.
        self.submit(Op::Write(
            Box::new(move |shared| shared.put_meta(COMMITTED, &committed, false)),
            None,
        ))
        .map_err(|_| StorageIOError::write(&WriterGone).into())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>, SError> {
        Ok(self
            .shared
            .meta::<Option<LogId<NodeId>>>(COMMITTED)?
            .flatten())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), SError>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry<TypeConfig>> = entries.into_iter().collect();
        let now = crate::now();
        for e in &entries {
            if let EntryPayload::Normal(cmd) = &e.payload
                && cmd
                    .changes
                    .iter()
                    .any(|c| matches!(c, Change::LeaseRenewed { .. }))
            {
                lock(&self.leases).appended(e.log_id.index, now);
            }
        }
        let sealed = entries
            .iter()
            .map(|e| (e.log_id, self.shared.seal_entry(e)))
            .collect();
        lock(&self.pending).extend(entries.into_iter().map(|e| (e.log_id.index, e)));
        self.submit(Op::Append(sealed, callback))
            .map_err(|_| StorageIOError::write_logs(&WriterGone).into())
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), SError> {
        lock(&self.leases).truncated(log_id.index);
        self.remove((Bound::Included(log_id.index), Bound::Unbounded), None)
            .await
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), SError> {
        self.remove(
            (Bound::Unbounded, Bound::Included(log_id.index)),
            Some(log_id),
        )
        .await
    }
}

/// The writer thread is gone: only after a panic in it.
#[derive(Debug, thiserror::Error)]
#[error("the Raft log writer thread is gone")]
struct WriterGone;

impl LogStore {
    /// Queues `op` for the writer thread, or does it now (inline writer).
    fn submit(&self, op: Op) -> Result<(), WriterGone> {
        match &self.writer {
            Writer::Thread(ops) => ops.send(op).map_err(|_| WriterGone),
            Writer::Inline => {
                match op {
                    Op::Write(write, reply) => run_write(&self.shared, write, reply),
                    Op::Append(entries, callback) => {
                        run_appends(&self.shared, &self.pending, vec![(entries, callback)]);
                    }
                }
                Ok(())
            }
        }
    }

    /// Runs `write` on the writer thread, after every write queued before it,
    /// and waits for its result.
    async fn write(
        &self,
        write: impl FnOnce(&Shared) -> Result<(), SError> + Send + 'static,
    ) -> Result<(), SError> {
        let (reply, result) = tokio::sync::oneshot::channel();
        let gone = || -> SError { StorageIOError::write(&WriterGone).into() };
        self.submit(Op::Write(Box::new(write), Some(reply)))
            .map_err(|_| gone())?;
        result.await.map_err(|_| gone())?
    }

    /// Deletes a range of entries, and records the purge point with it in the
    /// same transaction.
    async fn remove(
        &self,
        range: (Bound<u64>, Bound<u64>),
        purged: Option<LogId<NodeId>>,
    ) -> Result<(), SError> {
        lock(&self.pending).retain(|i, _| !range.contains(i));
        self.write(move |shared| Self::remove_now(shared, range, purged))
            .await
    }

    fn remove_now(
        shared: &Shared,
        range: (Bound<u64>, Bound<u64>),
        purged: Option<LogId<NodeId>>,
    ) -> Result<(), SError> {
        let txn = shared.db.begin_write().map_err(write_logs_err)?;
        {
            let mut table = txn.open_table(LOG).map_err(write_logs_err)?;
            table
                .retain_in::<u64, _>(range, |_, _| false)
                .map_err(write_logs_err)?;
            if let Some(purged) = purged {
                let mut meta = txn.open_table(META).map_err(write_logs_err)?;
                meta.insert(LAST_PURGED, encode(&purged).as_slice())
                    .map_err(write_logs_err)?;
            }
        }
        txn.commit().map_err(write_logs_err)
    }
}

/// The state machine; `applied` is shared with the node for reads.
#[derive(Debug, Clone)]
pub struct StateMachine {
    shared: Arc<Shared>,
    pub(crate) applied: Arc<RwLock<Applied>>,
    events: mpsc::UnboundedSender<StateEvent>,
    /// When each node's lease renewal was applied here, by this node's clock:
    /// local time, so it stays out of the replicated (deterministic) state.
    pub(crate) leases: Arc<Mutex<LeaseWatch>>,
}

impl StateMachine {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, Applied> {
        // A writer that panicked mid-apply leaves state we cannot trust; a
        // node that keeps running on it could answer with stale keys.
        self.applied
            .read()
            .unwrap_or_else(|_| panic!("state machine lock poisoned"))
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Applied> {
        self.applied
            .write()
            .unwrap_or_else(|_| panic!("state machine lock poisoned"))
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = Self;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<NodeId>>, StoredMembership<NodeId, Member>), SError> {
        let a = self.read();
        Ok((a.last_applied, a.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Outcome>, SError>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut out = Vec::new();
        let mut a = self.write();
        for entry in entries {
            a.last_applied = Some(entry.log_id);
            let mut outcome = Outcome::default();
            match entry.payload {
                EntryPayload::Blank => {}
                EntryPayload::Normal(cmd) => {
                    outcome = a.state.apply_command(&cmd.changes);
                    let applied = match &outcome.refused {
                        None => {
                            for change in &cmd.changes {
                                if let Change::LeaseRenewed { node, .. } = change {
                                    lock(&self.leases).observe(
                                        *node,
                                        entry.log_id.index,
                                        crate::now(),
                                    );
                                }
                            }
                            cmd.changes
                        }
                        Some(reason) => {
                            tracing::warn!(
                                index = entry.log_id.index,
                                reason,
                                "committed command refused by the state machine; nothing of it applied"
                            );
                            Vec::new()
                        }
                    };
                    // The receiver may be gone (a witness); nothing to tell then.
                    let _ = self.events.send(StateEvent::Applied {
                        index: entry.log_id.index,
                        changes: applied,
                    });
                }
                EntryPayload::Membership(m) => {
                    a.membership = StoredMembership::new(Some(entry.log_id), m);
                }
            }
            out.push(outcome);
        }
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, SError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, Member>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), SError> {
        let sealed = snapshot.into_inner();
        let applied = self.shared.open_snapshot(meta.last_log_id, &sealed)?;
        self.shared.save_snapshot(meta, &sealed)?;
        *self.write() = applied;
        let _ = self.events.send(StateEvent::Reset);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, SError> {
        Ok(self.shared.snapshot()?.map(|(meta, data)| Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        }))
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, SError> {
        let (sealed, last, membership) = {
            let a = self.read();
            let plain = zeroize::Zeroizing::new(encode(&*a));
            (
                self.shared
                    .key
                    .seal(&Shared::snapshot_aad(a.last_applied), &plain),
                a.last_applied,
                a.membership.clone(),
            )
        };
        let meta = SnapshotMeta {
            last_log_id: last,
            last_membership: membership,
            snapshot_id: match last {
                Some(l) => format!("{}-{}", l.leader_id, l.index),
                None => "empty".into(),
            },
        };
        self.shared.save_snapshot(&meta, &sealed)?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(sealed)),
        })
    }
}

/// The SAs a disk holds, whether or not yet committed.
#[derive(Debug, Default)]
pub struct DurableSas {
    /// Inbound SPIs of child SAs.
    pub children: BTreeSet<u32>,
    /// (initiator SPI, responder SPI) of IKE SAs.
    pub ike: BTreeSet<(u64, u64)>,
}

/// The SAs a memory disk holds durably, in its snapshot or its log. For
/// the failover simulator's check that every SA the peer uses exists on a
/// quorum (DESIGN.md invariant 1).
pub fn durable_sas(disk: &MemoryDisk, key: &StorageKey) -> Result<DurableSas, SError> {
    let shared = Shared {
        db: disk.0.clone(),
        key: key.clone(),
    };
    let mut children = BTreeSet::new();
    let mut ike = BTreeSet::new();
    if let Some((meta, data)) = shared.snapshot()? {
        let applied = shared.open_snapshot(meta.last_log_id, &data)?;
        children.extend(applied.state.child_sas.keys().copied());
        ike.extend(
            applied
                .state
                .ike_sas
                .values()
                .map(|sa| (sa.record.spi_i, sa.record.spi_r)),
        );
    }
    let txn = shared.db.begin_read().map_err(read_logs_err)?;
    let table = txn.open_table(LOG).map_err(read_logs_err)?;
    for row in table.iter().map_err(read_logs_err)? {
        let (index, sealed) = row.map_err(read_logs_err)?;
        let entry = shared.open_entry(index.value(), sealed.value())?;
        if let EntryPayload::Normal(cmd) = entry.payload {
            for change in cmd.changes {
                match change {
                    Change::ChildSaInstalled(c) => {
                        children.insert(c.inbound_spi);
                    }
                    Change::IkeSaCommitted { record, .. } => {
                        ike.insert((record.spi_i, record.spi_r));
                    }
                    _ => {}
                }
            }
        }
    }
    Ok(DurableSas { children, ike })
}
