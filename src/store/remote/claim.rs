//! Publish claims: of two runners that reach the same publish node at once, one publishes and
//! the other takes its result. A claim is `claims/<node key>/<generation>`, written with a
//! conditional put, holding its runner and a lease the runner renews while it publishes.

use object_store::ObjectStoreExt;
use object_store::path::Path as ObjectPath;

use super::Remote;
use super::signed::Verified;
use crate::hash::Digest;

/// A claim on publishing one node, as stored at `claims/<key>/<generation>`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct PublishClaim {
    pub owner: String,
    /// The host and process holding the claim: a claim of a process that is gone from this
    /// very host is over at once.
    #[serde(default)]
    pub host: String,
    #[serde(default)]
    pub pid: u32,
    pub expires_unix_ms: u64,
}

/// How long a claim lasts unless its holder renews it (every third of this, while it publishes):
/// a runner that dies holding a claim holds up the others this long at most.
pub const CLAIM_LEASE: std::time::Duration = std::time::Duration::from_secs(60);

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "localhost".into())
}

impl PublishClaim {
    fn new(owner: &str) -> PublishClaim {
        PublishClaim {
            owner: owner.to_string(),
            host: host_name(),
            pid: std::process::id(),
            expires_unix_ms: crate::store::now_unix_ms() + CLAIM_LEASE.as_millis() as u64,
        }
    }

    /// Whether the claim still holds: not expired, and not held by a process that this host
    /// no longer runs.
    fn live(&self) -> bool {
        let gone = self.host == host_name()
            && self.pid != 0
            && !std::path::Path::new(&format!("/proc/{}", self.pid)).exists();
        !gone && crate::store::now_unix_ms() < self.expires_unix_ms
    }
}

/// What [`Remote::claim`] found.
#[derive(Debug)]
pub enum Claimed {
    /// This runner publishes; [`Remote::release`] the claim if it fails.
    Mine { generation: u32 },
    /// Another runner published meanwhile: its result.
    Done(Box<Verified>),
    /// The remote cannot coordinate (down, or this runner does not write): publish as if alone.
    Alone,
}

/// This runner's name in claims: `KILN_RUNNER_NAME`, else the host name and process id.
pub fn runner_name() -> String {
    std::env::var("KILN_RUNNER_NAME")
        .ok()
        .filter(|n| !n.trim().is_empty())
        .unwrap_or_else(|| format!("{}:{}", host_name(), std::process::id()))
}

/// How often a runner waiting on another's publish looks for its record.
const POLL: std::time::Duration = std::time::Duration::from_millis(500);

impl Remote {
    fn claim_path(&self, key: &Digest, generation: u32) -> ObjectPath {
        self.path("claims", &format!("{}/{generation}", key.to_hex()))
    }

    /// The claim another runner holds on publishing `key`, if any holds now.
    pub async fn current_claim(&self, key: &Digest) -> Option<PublishClaim> {
        let mut held = None;
        let mut generation = 0;
        while let Some(bytes) = self.get_bytes(&self.claim_path(key, generation)).await {
            if let Ok(claim) = serde_json::from_slice::<PublishClaim>(&bytes)
                && claim.live()
            {
                held = Some(claim);
            }
            generation += 1;
        }
        held
    }

    /// Claims publishing `key` for `owner` for a [`CLAIM_LEASE`], so that of two runners reaching the same
    /// publish node only one publishes: a conditional put of `claims/<key>/<n>`. A runner that
    /// finds a live claim of another waits for that runner's record and returns it; an expired
    /// claim is taken over by claiming the next generation.
    pub async fn claim(&self, key: &Digest, owner: &str) -> Claimed {
        if !self.writes() || self.is_down() {
            return Claimed::Alone;
        }
        let mut generation = 0;
        loop {
            if let Some(done) = self.get_action(key).await {
                return Claimed::Done(Box::new(done));
            }
            if self.is_down() {
                return Claimed::Alone;
            }
            let claim = PublishClaim::new(owner);
            let path = self.claim_path(key, generation);
            let body = serde_json::to_vec(&claim).expect("a claim serializes");
            match self.backend.create(&path, body.into()).await {
                Ok(true) => return Claimed::Mine { generation },
                Ok(false) => {}
                Err(e) => {
                    self.failed(e);
                    return Claimed::Alone;
                }
            }
            let Some(theirs) = self
                .get_bytes(&path)
                .await
                .and_then(|b| serde_json::from_slice::<PublishClaim>(&b).ok())
            else {
                // Unreadable or gone: try the next generation.
                generation += 1;
                continue;
            };
            // Wait for their record while their claim lasts (its holder renews it).
            let record = self.path("ac", &key.to_hex());
            let mut theirs = theirs;
            while theirs.live() {
                match self.exists(&record).await {
                    // A record this runner does not trust is no result for it: it publishes.
                    Some(true) => {
                        return match self.get_action(key).await {
                            Some(done) => Claimed::Done(Box::new(done)),
                            None => Claimed::Alone,
                        };
                    }
                    Some(false) => {}
                    None => return Claimed::Alone,
                }
                tokio::time::sleep(POLL).await;
                match self
                    .get_bytes(&path)
                    .await
                    .and_then(|b| serde_json::from_slice::<PublishClaim>(&b).ok())
                {
                    Some(renewed) => theirs = renewed,
                    // Released: they are done (or failed).
                    None => break,
                }
            }
            generation += 1;
        }
    }

    /// Extends this runner's claim by another lease.
    pub async fn renew(&self, key: &Digest, generation: u32, owner: &str) {
        if self.is_down() {
            return;
        }
        let body = serde_json::to_vec(&PublishClaim::new(owner)).expect("a claim serializes");
        self.count();
        let path = self.claim_path(key, generation);
        if let Err(e) = self.store().put(&path, body.into()).await {
            self.fail(&format!("renew {path}"), &e);
        }
    }

    /// Gives up a claim once its publish is over (its record written, or failed), so another
    /// runner waits no longer.
    pub async fn release(&self, key: &Digest, generation: u32) {
        if self.is_down() {
            return;
        }
        self.count();
        let _ = self.store().delete(&self.claim_path(key, generation)).await;
    }
}
