//! The durable build queue: SQLite (WAL) in the cache directory, written before a request is
//! answered. One writer thread owns the writing connection and commits what arrived together in
//! one transaction (a group commit: one fsync for a burst of requests); it is also where
//! duplicate deliveries and requests for the nodes of a queued or running build are coalesced,
//! so two racing requests never both start a build.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::mpsc;

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use serde::Serialize;
use tokio::sync::oneshot;

/// The queue's file in the cache directory.
pub const QUEUE_FILE: &str = "serve.db";

/// How many operations one transaction takes at most.
const MAX_BATCH: usize = 512;

pub type BuildId = i64;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    Queued,
    Running,
    Succeeded,
    Failed,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Queued => "queued",
            State::Running => "running",
            State::Succeeded => "succeeded",
            State::Failed => "failed",
        }
    }

    fn parse(s: &str) -> State {
        match s {
            "queued" => State::Queued,
            "running" => State::Running,
            "succeeded" => State::Succeeded,
            _ => State::Failed,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("the build queue {path}: {source}")]
    Sql {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("the build queue's writer has stopped")]
    Stopped,
}

/// A request accepted for building.
#[derive(Debug, Clone)]
pub struct NewBuild {
    /// What was asked (origin, version, provider, lock change), as the API shows it.
    pub request: serde_json::Value,
    pub cells: Vec<String>,
    /// The keys of every node of those cells: a request whose keys are all those of a queued or
    /// running build is that build.
    pub keys: Vec<String>,
    /// `X-GitHub-Delivery`: a delivery seen before is the build it made.
    pub delivery: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Coalesced {
    /// The same `X-GitHub-Delivery` was accepted before.
    Delivery,
    /// A queued or running build has every node this request asks for.
    SameNodes,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Submitted {
    pub id: BuildId,
    pub coalesced: Option<Coalesced>,
}

/// A node's outcome in a finished build.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NodeRow {
    pub id: String,
    pub outcome: String,
    pub duration_ms: u64,
    pub attempts: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// How a build ended.
#[derive(Debug, Clone)]
pub struct Finished {
    pub ok: bool,
    pub summary: String,
    pub error: Option<String>,
    pub nodes: Vec<NodeRow>,
}

/// A build as `GET /v1/builds/ID` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct BuildView {
    pub id: BuildId,
    pub state: State,
    pub cells: Vec<String>,
    pub request: serde_json::Value,
    /// How many requests this build answers (coalesced ones included).
    pub requests: u32,
    pub created_unix_ms: u64,
    pub started_unix_ms: Option<u64>,
    pub finished_unix_ms: Option<u64>,
    /// How many times a worker started it (more than 1: it was interrupted and resumed).
    pub attempts: u32,
    pub summary: Option<String>,
    pub error: Option<String>,
    pub nodes: Vec<NodeRow>,
}

/// A build waiting for the worker.
#[derive(Debug, Clone)]
pub struct Queued {
    pub id: BuildId,
    pub cells: Vec<String>,
}

enum Op {
    Submit(NewBuild, oneshot::Sender<Result<Submitted, String>>),
    Start(BuildId, oneshot::Sender<Result<(), String>>),
    Finish(BuildId, Finished, oneshot::Sender<Result<(), String>>),
    Requeue(BuildId, oneshot::Sender<Result<(), String>>),
}

pub struct Queue {
    /// How many builds a killed server left running, queued again by [`Queue::open`].
    pub resumed: usize,
    path: PathBuf,
    ops: Mutex<Option<mpsc::Sender<Op>>>,
    read: Mutex<Connection>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// Wakes the worker when a build is queued.
    wake: Mutex<Option<mpsc::Sender<()>>>,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS builds (
    id INTEGER PRIMARY KEY,
    state TEXT NOT NULL,
    request TEXT NOT NULL,
    cells TEXT NOT NULL,
    keys TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    started_ms INTEGER,
    finished_ms INTEGER,
    attempts INTEGER NOT NULL DEFAULT 0,
    summary TEXT,
    error TEXT
);
CREATE INDEX IF NOT EXISTS builds_state ON builds(state, id);
CREATE TABLE IF NOT EXISTS requests (
    id INTEGER PRIMARY KEY,
    build INTEGER NOT NULL REFERENCES builds(id),
    delivery TEXT UNIQUE,
    received_ms INTEGER NOT NULL,
    request TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS requests_build ON requests(build);
CREATE TABLE IF NOT EXISTS nodes (
    build INTEGER NOT NULL REFERENCES builds(id),
    id TEXT NOT NULL,
    outcome TEXT NOT NULL,
    duration_ms INTEGER NOT NULL,
    attempts INTEGER NOT NULL,
    error TEXT,
    PRIMARY KEY (build, id)
);
";

fn connect(path: &Path) -> rusqlite::Result<Connection> {
    let c = Connection::open(path)?;
    c.busy_timeout(std::time::Duration::from_secs(10))?;
    c.pragma_update(None, "journal_mode", "WAL")?;
    // Every commit is on disk before the request is answered.
    c.pragma_update(None, "synchronous", "FULL")?;
    c.pragma_update(None, "foreign_keys", "ON")?;
    Ok(c)
}

impl Queue {
    /// Opens (or creates) the queue in `cache_dir`. Builds left `running` by a server that was
    /// killed are queued again: they resume from the cache. With `durable` false nothing is
    /// written (ids are counted in memory): what `bench/serve.sh` compares the queue against.
    pub fn open(cache_dir: &Path, durable: bool) -> Result<Queue, QueueError> {
        let path = cache_dir.join(QUEUE_FILE);
        let sql = |source| QueueError::Sql {
            path: path.clone(),
            source,
        };
        let write = connect(&path).map_err(sql)?;
        write.execute_batch(SCHEMA).map_err(sql)?;
        let resumed = write
            .execute(
                "UPDATE builds SET state = 'queued' WHERE state = 'running'",
                [],
            )
            .map_err(sql)?;
        let mut active = BTreeMap::new();
        {
            let mut st = write
                .prepare("SELECT id, keys FROM builds WHERE state IN ('queued', 'running')")
                .map_err(sql)?;
            let rows = st
                .query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)))
                .map_err(sql)?;
            for row in rows {
                let (id, keys) = row.map_err(sql)?;
                let keys: BTreeSet<String> = serde_json::from_str(&keys).unwrap_or_default();
                active.insert(id, keys);
            }
        }
        let next_id = write
            .query_row("SELECT COALESCE(MAX(id), 0) + 1 FROM builds", [], |r| {
                r.get::<_, i64>(0)
            })
            .map_err(sql)?;
        let read = connect(&path).map_err(sql)?;
        let (tx, rx) = mpsc::channel();
        let (wake_tx, _) = mpsc::channel();
        let queue = Queue {
            resumed,
            path: path.clone(),
            ops: Mutex::new(Some(tx)),
            read: Mutex::new(read),
            writer: Mutex::new(None),
            wake: Mutex::new(Some(wake_tx)),
        };
        let mut w = Writer {
            conn: write,
            durable,
            active,
            next_id,
            delivered: BTreeMap::new(),
        };
        let handle = std::thread::Builder::new()
            .name("kiln-queue".into())
            .spawn(move || w.run(rx))
            .map_err(|e| QueueError::Sql {
                path: path.clone(),
                source: rusqlite::Error::ToSqlConversionFailure(Box::new(e)),
            })?;
        *queue.writer.lock().unwrap_or_else(|e| e.into_inner()) = Some(handle);
        Ok(queue)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The channel the worker is woken on when a build is queued.
    pub fn subscribe(&self) -> mpsc::Receiver<()> {
        let (tx, rx) = mpsc::channel();
        *self.wake.lock().unwrap_or_else(|e| e.into_inner()) = Some(tx);
        rx
    }

    fn send(&self, op: Op) -> Result<(), QueueError> {
        let ops = self.ops.lock().unwrap_or_else(|e| e.into_inner());
        ops.as_ref()
            .ok_or(QueueError::Stopped)?
            .send(op)
            .map_err(|_| QueueError::Stopped)
    }

    fn failed(&self, message: String) -> QueueError {
        QueueError::Sql {
            path: self.path.clone(),
            source: rusqlite::Error::InvalidParameterName(message),
        }
    }

    /// Writes a request to the queue (or finds the build it duplicates); returns once that is
    /// committed.
    pub async fn submit(&self, build: NewBuild) -> Result<Submitted, QueueError> {
        let (tx, rx) = oneshot::channel();
        self.send(Op::Submit(build, tx))?;
        let submitted = rx
            .await
            .map_err(|_| QueueError::Stopped)?
            .map_err(|m| self.failed(m))?;
        if submitted.coalesced.is_none()
            && let Some(w) = self.wake.lock().unwrap_or_else(|e| e.into_inner()).as_ref()
        {
            let _ = w.send(());
        }
        Ok(submitted)
    }

    fn blocking(
        &self,
        op: impl FnOnce(oneshot::Sender<Result<(), String>>) -> Op,
    ) -> Result<(), QueueError> {
        let (tx, rx) = oneshot::channel();
        self.send(op(tx))?;
        rx.blocking_recv()
            .map_err(|_| QueueError::Stopped)?
            .map_err(|m| self.failed(m))
    }

    /// Marks a build running (from the worker's thread).
    pub fn start(&self, id: BuildId) -> Result<(), QueueError> {
        self.blocking(|tx| Op::Start(id, tx))
    }

    /// Records how a build ended (from the worker's thread).
    pub fn finish(&self, id: BuildId, f: Finished) -> Result<(), QueueError> {
        self.blocking(|tx| Op::Finish(id, f, tx))
    }

    /// Puts an interrupted build back in the queue (from the worker's thread).
    pub fn requeue(&self, id: BuildId) -> Result<(), QueueError> {
        self.blocking(|tx| Op::Requeue(id, tx))
    }

    /// Stops the writer after what was sent to it is committed.
    pub fn close(&self) {
        self.ops.lock().unwrap_or_else(|e| e.into_inner()).take();
        self.wake.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(h) = self.writer.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = h.join();
        }
    }

    fn read<T>(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> Result<T, QueueError> {
        let conn = self.read.lock().unwrap_or_else(|e| e.into_inner());
        f(&conn).map_err(|source| QueueError::Sql {
            path: self.path.clone(),
            source,
        })
    }

    /// The build an earlier request with this delivery id made.
    pub fn delivery(&self, delivery: &str) -> Result<Option<BuildId>, QueueError> {
        self.read(|c| {
            c.query_row(
                "SELECT build FROM requests WHERE delivery = ?1",
                [delivery],
                |r| r.get(0),
            )
            .optional()
        })
    }

    /// The oldest queued build.
    pub fn next_queued(&self) -> Result<Option<Queued>, QueueError> {
        self.read(|c| {
            c.query_row(
                "SELECT id, cells FROM builds WHERE state = 'queued' ORDER BY id LIMIT 1",
                [],
                |r| {
                    let cells: String = r.get(1)?;
                    Ok(Queued {
                        id: r.get(0)?,
                        cells: serde_json::from_str(&cells).unwrap_or_default(),
                    })
                },
            )
            .optional()
        })
    }

    /// How many builds are in each state.
    pub fn counts(&self) -> Result<BTreeMap<&'static str, u64>, QueueError> {
        let mut out: BTreeMap<&'static str, u64> = [
            State::Queued,
            State::Running,
            State::Succeeded,
            State::Failed,
        ]
        .into_iter()
        .map(|s| (s.as_str(), 0))
        .collect();
        let rows = self.read(|c| {
            let mut st = c.prepare("SELECT state, COUNT(*) FROM builds GROUP BY state")?;
            let rows = st.query_map([], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64))
            })?;
            rows.collect::<rusqlite::Result<Vec<_>>>()
        })?;
        for (state, n) in rows {
            out.insert(State::parse(&state).as_str(), n);
        }
        Ok(out)
    }

    pub fn get(&self, id: BuildId) -> Result<Option<BuildView>, QueueError> {
        Ok(self
            .select("WHERE id = ?1", params![id])?
            .into_iter()
            .next())
    }

    /// The most recent builds, newest first; only those in `state` when it is given.
    pub fn list(&self, state: Option<State>, limit: u32) -> Result<Vec<BuildView>, QueueError> {
        match state {
            Some(s) => self.select(
                "WHERE state = ?1 ORDER BY id DESC LIMIT ?2",
                params![s.as_str(), limit],
            ),
            None => self.select("ORDER BY id DESC LIMIT ?1", params![limit]),
        }
    }

    fn select(
        &self,
        tail: &str,
        args: &[&dyn rusqlite::ToSql],
    ) -> Result<Vec<BuildView>, QueueError> {
        self.read(|c| {
            let sql = format!(
                "SELECT id, state, cells, request, created_ms, started_ms, finished_ms, attempts,
                        summary, error,
                        (SELECT COUNT(*) FROM requests WHERE requests.build = builds.id)
                 FROM builds {tail}"
            );
            let mut st = c.prepare(&sql)?;
            let rows = st.query_map(args, |r| {
                let cells: String = r.get(2)?;
                let request: String = r.get(3)?;
                Ok(BuildView {
                    id: r.get(0)?,
                    state: State::parse(&r.get::<_, String>(1)?),
                    cells: serde_json::from_str(&cells).unwrap_or_default(),
                    request: serde_json::from_str(&request).unwrap_or_default(),
                    requests: r.get(10)?,
                    created_unix_ms: r.get::<_, i64>(4)? as u64,
                    started_unix_ms: r.get::<_, Option<i64>>(5)?.map(|v| v as u64),
                    finished_unix_ms: r.get::<_, Option<i64>>(6)?.map(|v| v as u64),
                    attempts: r.get(7)?,
                    summary: r.get(8)?,
                    error: r.get(9)?,
                    nodes: Vec::new(),
                })
            })?;
            let mut builds = rows.collect::<rusqlite::Result<Vec<_>>>()?;
            let mut st = c.prepare(
                "SELECT id, outcome, duration_ms, attempts, error FROM nodes WHERE build = ?1 ORDER BY rowid",
            )?;
            for b in &mut builds {
                let rows = st.query_map([b.id], |r| {
                    Ok(NodeRow {
                        id: r.get(0)?,
                        outcome: r.get(1)?,
                        duration_ms: r.get::<_, i64>(2)? as u64,
                        attempts: r.get(3)?,
                        error: r.get(4)?,
                    })
                })?;
                b.nodes = rows.collect::<rusqlite::Result<Vec<_>>>()?;
            }
            Ok(builds)
        })
    }
}

impl Drop for Queue {
    fn drop(&mut self) {
        self.close();
    }
}

/// The writer thread's state.
struct Writer {
    conn: Connection,
    durable: bool,
    /// Queued and running builds, by id, with their node keys.
    active: BTreeMap<BuildId, BTreeSet<String>>,
    next_id: BuildId,
    /// Without persistence: the deliveries seen, in memory.
    delivered: BTreeMap<String, BuildId>,
}

enum Reply {
    Submit(oneshot::Sender<Result<Submitted, String>>, Submitted),
    Done(oneshot::Sender<Result<(), String>>),
}

impl Writer {
    fn run(&mut self, rx: mpsc::Receiver<Op>) {
        while let Ok(first) = rx.recv() {
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(op) => batch.push(op),
                    Err(_) => break,
                }
            }
            self.commit(batch);
        }
    }

    /// Applies a batch in one transaction, then answers each operation.
    fn commit(&mut self, batch: Vec<Op>) {
        let before = self.active.clone();
        let (next_before, delivered_before) = (self.next_id, self.delivered.clone());
        let mut replies = Vec::with_capacity(batch.len());
        let mut refused = Vec::new();
        let result = (|| -> rusqlite::Result<()> {
            let tx = if self.durable {
                Some(
                    self.conn
                        .transaction_with_behavior(TransactionBehavior::Immediate)?,
                )
            } else {
                None
            };
            for op in batch {
                match op {
                    Op::Submit(b, reply) => match submit(
                        tx.as_deref(),
                        &mut self.active,
                        &mut self.next_id,
                        &mut self.delivered,
                        b,
                    ) {
                        Ok(s) => replies.push(Reply::Submit(reply, s)),
                        Err(e) => refused.push((
                            Reply::Submit(
                                reply,
                                Submitted {
                                    id: 0,
                                    coalesced: None,
                                },
                            ),
                            e.to_string(),
                        )),
                    },
                    Op::Start(id, reply) => {
                        if let Some(tx) = &tx {
                            tx.execute(
                                "UPDATE builds SET state = 'running', started_ms = ?2, attempts = attempts + 1 WHERE id = ?1",
                                params![id, now_ms()],
                            )?;
                        }
                        replies.push(Reply::Done(reply));
                    }
                    Op::Requeue(id, reply) => {
                        if let Some(tx) = &tx {
                            tx.execute("UPDATE builds SET state = 'queued' WHERE id = ?1", [id])?;
                        }
                        replies.push(Reply::Done(reply));
                    }
                    Op::Finish(id, f, reply) => {
                        if let Some(tx) = &tx {
                            finish(tx, id, &f)?;
                        }
                        self.active.remove(&id);
                        replies.push(Reply::Done(reply));
                    }
                }
            }
            if let Some(tx) = tx {
                tx.commit()?;
            }
            Ok(())
        })();
        match result {
            Ok(()) => {
                for r in replies {
                    match r {
                        Reply::Submit(tx, s) => {
                            let _ = tx.send(Ok(s));
                        }
                        Reply::Done(tx) => {
                            let _ = tx.send(Ok(()));
                        }
                    }
                }
                for (r, e) in refused {
                    if let Reply::Submit(tx, _) = r {
                        let _ = tx.send(Err(e));
                    }
                }
            }
            Err(e) => {
                // Nothing of the batch was committed: forget what it changed in memory.
                self.active = before;
                self.next_id = next_before;
                self.delivered = delivered_before;
                let msg = e.to_string();
                for r in replies
                    .into_iter()
                    .chain(refused.into_iter().map(|(r, _)| r))
                {
                    match r {
                        Reply::Submit(tx, _) => {
                            let _ = tx.send(Err(msg.clone()));
                        }
                        Reply::Done(tx) => {
                            let _ = tx.send(Err(msg.clone()));
                        }
                    }
                }
            }
        }
    }
}

fn submit(
    tx: Option<&Connection>,
    active: &mut BTreeMap<BuildId, BTreeSet<String>>,
    next_id: &mut BuildId,
    delivered: &mut BTreeMap<String, BuildId>,
    b: NewBuild,
) -> rusqlite::Result<Submitted> {
    let now = now_ms();
    if let Some(d) = &b.delivery {
        let seen = match tx {
            Some(tx) => tx
                .query_row("SELECT build FROM requests WHERE delivery = ?1", [d], |r| {
                    r.get(0)
                })
                .optional()?,
            None => delivered.get(d).copied(),
        };
        if let Some(id) = seen {
            return Ok(Submitted {
                id,
                coalesced: Some(Coalesced::Delivery),
            });
        }
    }
    let keys: BTreeSet<String> = b.keys.iter().cloned().collect();
    let same = active
        .iter()
        .find(|(_, have)| keys.is_subset(have))
        .map(|(id, _)| *id);
    let request = b.request.to_string();
    let (id, coalesced) = match same {
        Some(id) => (id, Some(Coalesced::SameNodes)),
        None => {
            let id = match tx {
                Some(tx) => {
                    tx.execute(
                        "INSERT INTO builds (state, request, cells, keys, created_ms) VALUES ('queued', ?1, ?2, ?3, ?4)",
                        params![
                            request,
                            serde_json::to_string(&b.cells).unwrap_or_default(),
                            serde_json::to_string(&keys).unwrap_or_default(),
                            now
                        ],
                    )?;
                    tx.last_insert_rowid()
                }
                None => *next_id,
            };
            *next_id = id + 1;
            active.insert(id, keys);
            (id, None)
        }
    };
    match tx {
        Some(tx) => {
            tx.execute(
                "INSERT INTO requests (build, delivery, received_ms, request) VALUES (?1, ?2, ?3, ?4)",
                params![id, b.delivery, now, request],
            )?;
        }
        None => {
            if let Some(d) = b.delivery {
                delivered.insert(d, id);
            }
        }
    }
    Ok(Submitted { id, coalesced })
}

fn now_ms() -> i64 {
    crate::store::now_unix_ms() as i64
}

fn finish(tx: &Connection, id: BuildId, f: &Finished) -> rusqlite::Result<()> {
    tx.execute(
        "UPDATE builds SET state = ?2, finished_ms = ?3, summary = ?4, error = ?5 WHERE id = ?1",
        params![
            id,
            if f.ok { "succeeded" } else { "failed" },
            now_ms(),
            f.summary,
            f.error
        ],
    )?;
    tx.execute("DELETE FROM nodes WHERE build = ?1", [id])?;
    let mut st = tx.prepare_cached(
        "INSERT INTO nodes (build, id, outcome, duration_ms, attempts, error) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?;
    for n in &f.nodes {
        st.execute(params![
            id,
            n.id,
            n.outcome,
            n.duration_ms as i64,
            n.attempts,
            n.error
        ])?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build(keys: &[&str], delivery: Option<&str>) -> NewBuild {
        NewBuild {
            request: serde_json::json!({"version": "1.31.4"}),
            cells: vec!["c".into()],
            keys: keys.iter().map(|k| k.to_string()).collect(),
            delivery: delivery.map(str::to_string),
        }
    }

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
    }

    #[test]
    fn coalesces_deliveries_and_nodes_and_survives_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let rt = rt();
        let q = Queue::open(dir.path(), true).unwrap();
        let a = rt
            .block_on(q.submit(build(&["k1", "k2"], Some("d1"))))
            .unwrap();
        assert_eq!(a.coalesced, None);
        let again = rt.block_on(q.submit(build(&["k9"], Some("d1")))).unwrap();
        assert_eq!(
            (again.id, again.coalesced),
            (a.id, Some(Coalesced::Delivery))
        );
        let subset = rt.block_on(q.submit(build(&["k2"], Some("d2")))).unwrap();
        assert_eq!(
            (subset.id, subset.coalesced),
            (a.id, Some(Coalesced::SameNodes))
        );
        let other = rt.block_on(q.submit(build(&["k3"], None))).unwrap();
        assert_ne!(other.id, a.id);
        assert_eq!(q.get(a.id).unwrap().unwrap().requests, 2);
        q.start(a.id).unwrap();
        drop(q);

        // Reopened as after a kill: the running build is queued again, and still coalesces.
        let q = Queue::open(dir.path(), true).unwrap();
        let v = q.get(a.id).unwrap().unwrap();
        assert_eq!((v.state, v.attempts), (State::Queued, 1));
        let s = rt.block_on(q.submit(build(&["k1"], Some("d3")))).unwrap();
        assert_eq!(s.id, a.id);
        assert_eq!(q.next_queued().unwrap().unwrap().id, a.id);
        q.start(a.id).unwrap();
        let node = NodeRow {
            id: "p/x/1.31/build".into(),
            outcome: "built".into(),
            duration_ms: 12,
            attempts: 1,
            error: None,
        };
        q.finish(
            a.id,
            Finished {
                ok: true,
                summary: "1 built, 0 cached".into(),
                error: None,
                nodes: vec![node.clone()],
            },
        )
        .unwrap();
        let v = q.get(a.id).unwrap().unwrap();
        assert_eq!((v.state, v.nodes), (State::Succeeded, vec![node]));
        // A finished build takes no more requests for its nodes, but keeps its deliveries.
        let s = rt.block_on(q.submit(build(&["k1"], None))).unwrap();
        assert_ne!(s.id, a.id);
        let s = rt.block_on(q.submit(build(&["k1"], Some("d1")))).unwrap();
        assert_eq!(s.id, a.id);
        assert_eq!(q.next_queued().unwrap().unwrap().id, other.id);
        let counts = q.counts().unwrap();
        assert_eq!((counts["queued"], counts["succeeded"]), (2, 1));
    }

    #[test]
    fn without_persistence_nothing_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let rt = rt();
        let q = Queue::open(dir.path(), false).unwrap();
        let a = rt.block_on(q.submit(build(&["k1"], Some("d1")))).unwrap();
        let b = rt.block_on(q.submit(build(&["k1"], Some("d1")))).unwrap();
        assert_eq!(
            b,
            Submitted {
                id: a.id,
                coalesced: Some(Coalesced::Delivery)
            }
        );
        assert!(q.next_queued().unwrap().is_none());
        assert_eq!(q.list(None, 10).unwrap().len(), 0);
    }
}
