//! Group commit of records: nodes that finish while a commit is on its way share the next one
//! (one `syncfs`, one append of all their lines, one `fdatasync`).

use std::sync::Arc;
use std::sync::mpsc;

use tokio::sync::oneshot;

use crate::store::{LocalStore, Record};

type Request = (Record, oneshot::Sender<Result<(), String>>);

/// A thread that appends records to `records.log` in batches.
pub struct Committer {
    tx: mpsc::Sender<Request>,
}

impl Committer {
    pub fn start(store: Arc<LocalStore>) -> Committer {
        let (tx, rx) = mpsc::channel::<Request>();
        std::thread::Builder::new()
            .name("kiln-commit".into())
            .spawn(move || {
                // Ends when every sender is gone.
                while let Ok(first) = rx.recv() {
                    let mut batch = vec![first];
                    batch.extend(rx.try_iter());
                    let records: Vec<Record> = batch.iter().map(|(r, _)| r.clone()).collect();
                    let done = store.append_records(&records).map_err(|e| e.to_string());
                    for (_, reply) in batch {
                        let _ = reply.send(done.clone());
                    }
                }
            })
            .expect("starting the commit thread");
        Committer { tx }
    }

    /// Appends `record` (with others that are waiting) and returns once it is durable.
    pub async fn commit(&self, record: Record) -> Result<(), String> {
        let (reply, done) = oneshot::channel();
        self.tx
            .send((record, reply))
            .map_err(|_| "the commit thread is gone".to_string())?;
        done.await
            .map_err(|_| "the commit thread is gone".to_string())?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_commits_all_land_once() {
        let dir = tempfile::TempDir::new().unwrap();
        let store = Arc::new(LocalStore::open(dir.path()).unwrap());
        store.defer_sync(true);
        let committer = Arc::new(Committer::start(store.clone()));
        let mut tasks = Vec::new();
        for i in 0..64 {
            let committer = committer.clone();
            tasks.push(tokio::spawn(async move {
                committer
                    .commit(Record {
                        id: format!("node-{i}"),
                        key: crate::hash::Digest::of_bytes(&[i]),
                        unix_ms: i as u64,
                    })
                    .await
            }));
        }
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        let history = store.record_history().unwrap();
        assert_eq!(history.len(), 64);
        assert_eq!(store.load_records().unwrap().len(), 64);
    }
}
