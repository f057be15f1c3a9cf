use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use tempfile::TempDir;

use super::*;
use crate::hash::Digest;
use crate::store::{ActionResult, Output, Record, now_unix_ms};

fn store() -> (TempDir, LocalStore) {
    let dir = TempDir::new().unwrap();
    let store = LocalStore::open(&dir.path().join("cache")).unwrap();
    (dir, store)
}

fn key(n: u32) -> Digest {
    Digest::of_bytes(format!("key {n}").as_bytes())
}

/// A result for `id` under key `n` with one output and a log, both stored as blobs.
fn action(store: &LocalStore, id: &str, n: u32) -> ActionResult {
    let out = format!("output of {id} #{n}");
    let digest = store.put_blob(out.as_bytes()).unwrap();
    let log = store
        .put_blob(format!("log of {id} #{n}").as_bytes())
        .unwrap();
    let result = ActionResult {
        key: key(n),
        id: id.to_string(),
        recipe: Digest::of_bytes(id.as_bytes()),
        dep_outputs: BTreeMap::from([("dep".to_string(), Digest::of_bytes(b"dep"))]),
        outputs: vec![Output {
            name: "image".into(),
            digest,
            size: out.len() as u64,
        }],
        facts: BTreeMap::from([("ami".to_string(), format!("ami-{n}"))]),
        manifest: BTreeMap::from([("k8s".to_string(), "1.31".to_string())]),
        attempts: 1,
        started_unix_ms: 1000,
        duration_ms: 5,
        log: Some(log),
    };
    store.put_action(&result).unwrap();
    result
}

fn record(store: &LocalStore, id: &str, n: u32, unix_ms: u64) {
    store
        .append_record(&Record {
            id: id.to_string(),
            key: key(n),
            unix_ms,
        })
        .unwrap();
}

fn make_writable(path: &Path) {
    let mut perms = std::fs::metadata(path).unwrap().permissions();
    #[allow(clippy::permissions_set_readonly_false)]
    perms.set_readonly(false);
    std::fs::set_permissions(path, perms).unwrap();
}

fn flip_byte(path: &Path, at: usize) {
    make_writable(path);
    let mut bytes = std::fs::read(path).unwrap();
    bytes[at] ^= 0x01;
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn blob_round_trip() {
    let (_dir, store) = store();
    let d = store.put_blob(b"hello").unwrap();
    assert_eq!(d, Digest::of_bytes(b"hello"));
    assert_eq!(store.put_blob(b"hello").unwrap(), d);
    assert!(store.has_blob(&d));
    assert_eq!(store.get_blob(&d).unwrap().unwrap(), b"hello");
    let path = store.blob_path(&d).unwrap().unwrap();
    assert!(path.starts_with(store.root().join("cas").join(&d.to_hex()[..2])));
    let missing = Digest::of_bytes(b"absent");
    assert!(!store.has_blob(&missing));
    assert_eq!(store.get_blob(&missing).unwrap(), None);
    assert_eq!(store.blob_path(&missing).unwrap(), None);
    assert!(store.take_warnings().is_empty());
}

#[test]
fn put_file_round_trip() {
    let (dir, store) = store();
    let src = dir.path().join("image.raw");
    let bytes: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(&src, &bytes).unwrap();
    let (d, size) = store.put_file(&src).unwrap();
    assert_eq!(d, Digest::of_bytes(&bytes));
    assert_eq!(size, bytes.len() as u64);
    assert_eq!(store.get_blob(&d).unwrap().unwrap(), bytes);
    // Already present: same answer, nothing copied.
    assert_eq!(store.put_file(&src).unwrap(), (d, size));
    assert!(store.blob_path(&d).unwrap().is_some());
    assert!(store.put_file(&dir.path().join("nope")).is_err());
}

/// Files with the same bytes, linked into the store from several threads at once: every call
/// succeeds, one blob remains, and every file is still there under its own name.
#[test]
fn identical_files_stored_concurrently() {
    let (dir, store) = store();
    let store = Arc::new(store);
    let content = b"the same log, written by several nodes\n";
    let paths: Vec<_> = (0..16)
        .map(|i| {
            let p = dir.path().join(format!("log-{i}"));
            std::fs::write(&p, content).unwrap();
            p
        })
        .collect();
    for round in 0..2 {
        let barrier = Arc::new(std::sync::Barrier::new(paths.len()));
        let handles: Vec<_> = paths
            .iter()
            .cloned()
            .map(|p| {
                let (store, barrier) = (store.clone(), barrier.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    store.put_copy(&p, None).unwrap()
                })
            })
            .collect();
        for h in handles {
            assert_eq!(
                h.join().unwrap(),
                (Digest::of_bytes(content), content.len() as u64),
                "round {round}"
            );
        }
    }
    let d = Digest::of_bytes(content);
    assert_eq!(store.get_blob(&d).unwrap().unwrap(), content);
    for p in &paths {
        assert_eq!(std::fs::read(p).unwrap(), content);
    }
    let blobs = std::fs::read_dir(store.blob_location(&d).parent().unwrap())
        .unwrap()
        .count();
    assert_eq!(blobs, 1);
    assert_eq!(std::fs::read_dir(store.tmp_dir()).unwrap().count(), 0);
    assert!(store.verify().unwrap().is_ok());
}

/// A stored copy is a file of its own: writing to the source afterwards, through a descriptor
/// opened before, changes nothing stored; a wrong digest expected stores nothing; a blob of the
/// wrong size under the digest's name is replaced by a good copy; a step's copy of a blob is its
/// own too.
#[test]
fn stored_copies_are_their_own_files_and_replace_damaged_ones() {
    use std::io::Write;
    let (dir, store) = store();
    let p = dir.path().join("out");
    std::fs::write(&p, b"output one").unwrap();
    let mut still_open = std::fs::OpenOptions::new().append(true).open(&p).unwrap();
    let (d, size) = store.put_copy(&p, None).unwrap();
    assert_eq!((d, size), (Digest::of_bytes(b"output one"), 10));
    still_open.write_all(b" and more").unwrap();
    std::fs::remove_file(&p).unwrap();
    assert_eq!(store.get_blob(&d).unwrap().unwrap(), b"output one");

    let wrong = Some((Digest::of_bytes(b"other"), 5));
    std::fs::write(&p, b"other!").unwrap();
    assert!(matches!(
        store.put_copy(&p, wrong),
        Err(StoreError::SourceChanged { .. })
    ));
    assert!(!store.has_blob(&Digest::of_bytes(b"other!")));

    let q = dir.path().join("b.log");
    std::fs::write(&q, b"log two").unwrap();
    let d2 = Digest::of_bytes(b"log two");
    let dest = store.blob_location(&d2);
    std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
    std::fs::write(&dest, b"log tw").unwrap();
    assert_eq!(store.put_copy(&q, Some((d2, 7))).unwrap(), (d2, 7));
    assert_eq!(store.get_blob(&d2).unwrap().unwrap(), b"log two");
    assert!(store.take_warnings().is_empty());

    let mine = dir.path().join("mine");
    assert!(store.copy_blob_to(&d, &mine).unwrap());
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&mine)
        .unwrap();
    f.write_all(b"!").unwrap();
    assert_eq!(store.get_blob(&d).unwrap().unwrap(), b"output one");
    assert!(
        !store
            .copy_blob_to(&Digest::of_bytes(b"nothing"), &dir.path().join("x"))
            .unwrap()
    );
    // A damaged blob: no copy, and the blob is moved aside.
    std::fs::write(store.blob_location(&d2), b"log 2wo").unwrap();
    assert!(!store.copy_blob_to(&d2, &dir.path().join("y")).unwrap());
    assert!(!dir.path().join("y").exists());
    assert_eq!(store.take_warnings().len(), 1);
    assert!(store.verify().unwrap().is_ok());
}

/// Fan-out directories are made on first use, also after someone removed one.
#[test]
fn fanout_directories_are_created_when_missing() {
    let (_dir, store) = store();
    let d = store.put_blob(b"first").unwrap();
    let prefix = store.blob_location(&d).parent().unwrap().to_path_buf();
    std::fs::remove_dir_all(&prefix).unwrap();
    store.put_blob(b"first").unwrap();
    assert_eq!(store.get_blob(&d).unwrap().unwrap(), b"first");
    let r = action(&store, "x", 7);
    assert_eq!(store.get_action(&r.key).unwrap().unwrap(), r);
}

#[test]
fn corrupt_blob_is_a_miss_with_a_warning() {
    let (_dir, store) = store();
    let d = store.put_blob(b"precious bytes").unwrap();
    let path = store.blob_path(&d).unwrap().unwrap();
    flip_byte(&path, 3);

    let report = store.verify().unwrap();
    assert!(!report.is_ok());
    assert_eq!(report.problems.len(), 1);
    assert_eq!(report.problems[0].kind, ProblemKind::CorruptBlob);
    assert_eq!(report.problems[0].path, path);
    assert!(path.exists(), "verify changes nothing");

    assert_eq!(store.get_blob(&d).unwrap(), None);
    let warnings = store.take_warnings();
    assert_eq!(warnings.len(), 1);
    assert_eq!(warnings[0].kind, EntryKind::Blob);
    assert_eq!(warnings[0].path, path);
    assert!(warnings[0].moved_to.as_ref().unwrap().exists());
    assert!(warnings[0].to_string().contains("treated as missing"));
    assert!(!store.has_blob(&d));
    assert!(store.take_warnings().is_empty());
    assert!(store.verify().unwrap().is_ok());

    // Storing it again heals it.
    store.put_blob(b"precious bytes").unwrap();
    assert_eq!(store.get_blob(&d).unwrap().unwrap(), b"precious bytes");
}

#[test]
fn corrupt_blob_via_blob_path() {
    let (_dir, store) = store();
    let d = store.put_blob(b"big image").unwrap();
    flip_byte(&store.blob_location(&d), 0);
    assert_eq!(store.blob_path(&d).unwrap(), None);
    assert_eq!(store.take_warnings().len(), 1);
}

#[test]
fn action_round_trip() {
    let (_dir, store) = store();
    let a = action(&store, "aws/ubuntu-2404/1.31/build", 1);
    assert_eq!(store.get_action(&a.key).unwrap().unwrap(), a);
    assert_eq!(store.get_action(&key(2)).unwrap(), None);

    let mut b = a.clone();
    b.outputs.reverse();
    assert_eq!(a.outputs_digest(), b.outputs_digest());
    b.outputs[0].size += 1;
    assert_ne!(a.outputs_digest(), b.outputs_digest());
    // A fact is handed on too: a new artifact id is a new upstream result.
    let mut c = a.clone();
    c.facts.insert("artifact_id".into(), "ami-2".into());
    assert_ne!(a.outputs_digest(), c.outputs_digest());

    assert!(store.remove_action(&a.key).unwrap());
    assert!(!store.remove_action(&a.key).unwrap());
    assert_eq!(store.get_action(&a.key).unwrap(), None);
    assert!(store.take_warnings().is_empty());
}

#[test]
fn truncated_action_is_a_miss_with_a_warning() {
    let (_dir, store) = store();
    let a = action(&store, "x", 1);
    let path = store.action_location(&a.key);
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();

    let report = store.verify().unwrap();
    assert_eq!(report.problems.len(), 1);
    assert_eq!(report.problems[0].kind, ProblemKind::CorruptAction);

    assert_eq!(store.get_action(&a.key).unwrap(), None);
    let warnings = store.take_warnings();
    assert_eq!(warnings.len(), 1);
    assert_eq!(warnings[0].kind, EntryKind::Action);
    assert!(!path.exists());
}

#[test]
fn action_under_the_wrong_key_is_a_miss() {
    let (_dir, store) = store();
    let a = action(&store, "x", 1);
    let wrong = store.action_location(&key(2));
    std::fs::create_dir_all(wrong.parent().unwrap()).unwrap();
    std::fs::copy(store.action_location(&a.key), &wrong).unwrap();
    assert_eq!(store.get_action(&key(2)).unwrap(), None);
    assert!(store.take_warnings()[0].problem.contains("not for the key"));
    assert_eq!(store.get_action(&a.key).unwrap().unwrap(), a);
}

#[test]
fn action_keys_lists_exactly_the_stored_keys() {
    let (_dir, store) = store();
    assert!(store.action_keys().unwrap().is_empty());
    let keys: std::collections::HashSet<Digest> =
        (0..20).map(|n| action(&store, "x", n).key).collect();
    // Blobs, temp files and strays are not keys.
    std::fs::write(store.tmp_dir().join("junk"), b"").unwrap();
    std::fs::write(store.root().join("ac").join("README"), b"").unwrap();
    assert_eq!(store.action_keys().unwrap(), keys);
    store.remove_action(&key(3)).unwrap();
    assert_eq!(store.action_keys().unwrap().len(), 19);
}

#[test]
fn records_last_per_id_wins_and_torn_lines_are_skipped() {
    let (_dir, store) = store();
    record(&store, "a", 1, 10);
    record(&store, "b", 2, 20);
    record(&store, "a", 3, 30);
    let records = store.load_records().unwrap();
    assert_eq!(records.len(), 2);
    assert_eq!(records["a"].key, key(3));
    assert_eq!(records["b"].key, key(2));
    assert_eq!(store.record_history().unwrap().len(), 3);

    // A crash mid-append leaves a torn last line; the next process opens the store anew.
    let log = store.root().join("records.log");
    let mut bytes = std::fs::read(&log).unwrap();
    bytes.extend_from_slice(br#"{"id":"a","key":"ab"#);
    std::fs::write(&log, bytes).unwrap();
    let store = LocalStore::open(store.root()).unwrap();
    assert_eq!(store.load_records().unwrap()["a"].key, key(3));
    assert_eq!(store.record_history().unwrap().len(), 3);
    let report = store.verify().unwrap();
    assert_eq!(report.problems.len(), 1);
    assert_eq!(report.problems[0].kind, ProblemKind::GarbledRecord);

    // The next append starts on a fresh line and is read back.
    record(&store, "a", 4, 40);
    assert_eq!(store.load_records().unwrap()["a"].key, key(4));
    assert_eq!(store.record_history().unwrap().len(), 4);

    store.repair().unwrap();
    assert!(store.verify().unwrap().is_ok());
    assert_eq!(store.record_history().unwrap().len(), 4);
}

#[test]
fn verify_and_repair() {
    let (_dir, store) = store();
    let good = action(&store, "good", 1);
    let dangling = action(&store, "dangling", 2);
    let corrupt = action(&store, "corrupt", 3);
    record(&store, "good", 1, 1);
    assert!(store.verify().unwrap().is_ok());

    flip_byte(&store.blob_location(&dangling.outputs[0].digest), 0);
    let path = store.action_location(&corrupt.key);
    let mut bytes = std::fs::read(&path).unwrap();
    let at = bytes.len() - 5;
    bytes[at] ^= 0x20;
    std::fs::write(&path, bytes).unwrap();

    let report = store.verify().unwrap();
    let kinds: Vec<ProblemKind> = report.problems.iter().map(|p| p.kind).collect();
    assert_eq!(kinds.len(), 3);
    assert!(kinds.contains(&ProblemKind::CorruptBlob));
    assert!(kinds.contains(&ProblemKind::MissingBlob));
    assert!(kinds.contains(&ProblemKind::CorruptAction));

    let repaired = store.repair().unwrap();
    assert_eq!(repaired.problems.len(), 3);
    assert!(repaired.problems.iter().all(|p| p.repaired));
    assert!(store.verify().unwrap().is_ok());
    assert_eq!(store.action_keys().unwrap(), [good.key].into());
    assert_eq!(store.get_action(&good.key).unwrap().unwrap(), good);
}

#[test]
fn gc_keeps_only_the_latest_by_default_plus_keep_last() {
    let (_dir, store) = store();
    let a1 = action(&store, "a", 1);
    let a2 = action(&store, "a", 2);
    let a3 = action(&store, "a", 3);
    let b4 = action(&store, "b", 4);
    let orphan = action(&store, "orphan", 5);
    let loose = store.put_blob(b"unreferenced").unwrap();
    record(&store, "a", 1, 100);
    record(&store, "a", 2, 200);
    record(&store, "a", 1, 250); // a rebuilt as key 1 again: key 1 is now second newest
    record(&store, "a", 3, 300);
    record(&store, "b", 4, 400);

    let policy = GcPolicy {
        keep_last: Some(2),
        older_than: None,
        dry_run: false,
        now_unix_ms: 1000,
    };
    let report = store.gc(&policy).unwrap();
    assert_eq!(report.actions_removed, 2, "{report:?}");
    assert_eq!(report.actions_kept, 3);
    assert_eq!(report.blobs_removed, 5, "{report:?}"); // 2 outputs + 2 logs + loose
    assert_eq!(report.blobs_kept, 6);
    assert!(report.blob_bytes_freed > 0 && report.action_bytes_freed > 0);
    assert_eq!(report.records_dropped, 1);

    let keys = store.action_keys().unwrap();
    assert_eq!(keys, [a1.key, a3.key, b4.key].into());
    assert!(!store.has_blob(&a2.outputs[0].digest));
    assert!(!store.has_blob(&orphan.log.unwrap()));
    assert!(!store.has_blob(&loose));
    assert!(store.has_blob(&a1.outputs[0].digest));
    assert!(store.has_blob(&b4.log.unwrap()));
    let history = store.record_history().unwrap();
    assert_eq!(history.len(), 4);
    assert!(history.iter().all(|r| r.key != a2.key));
    assert!(store.verify().unwrap().is_ok());

    // keep_last 1: only the latest per id.
    let report = store
        .gc(&GcPolicy {
            keep_last: Some(1),
            ..policy
        })
        .unwrap();
    assert_eq!(report.actions_removed, 1);
    assert_eq!(store.action_keys().unwrap(), [a3.key, b4.key].into());
    assert_eq!(store.load_records().unwrap()["a"].key, a3.key);
}

#[test]
fn gc_older_than_always_keeps_the_latest() {
    let (_dir, store) = store();
    for n in 1..=3 {
        action(&store, "a", n);
    }
    action(&store, "b", 4);
    record(&store, "a", 1, 100);
    record(&store, "a", 2, 900);
    record(&store, "a", 3, 950);
    record(&store, "b", 4, 10); // old, but the latest of b

    let report = store
        .gc(&GcPolicy {
            keep_last: None,
            older_than: Some(Duration::from_millis(500)),
            dry_run: false,
            now_unix_ms: 1000,
        })
        .unwrap();
    assert_eq!(report.actions_removed, 1);
    assert_eq!(
        store.action_keys().unwrap(),
        [key(2), key(3), key(4)].into()
    );
}

#[test]
fn gc_without_limits_keeps_every_recorded_key() {
    let (_dir, store) = store();
    for n in 1..=3 {
        action(&store, "a", n);
        record(&store, "a", n, n as u64);
    }
    let report = store
        .gc(&GcPolicy {
            keep_last: None,
            older_than: None,
            dry_run: false,
            now_unix_ms: 1000,
        })
        .unwrap();
    assert_eq!(report.actions_removed, 0);
    assert_eq!(report.blobs_removed, 0);
    assert_eq!(report.records_dropped, 0);
    assert_eq!(store.action_keys().unwrap().len(), 3);
}

#[test]
fn gc_dry_run_removes_nothing_but_reports_the_same() {
    let (_dir, store) = store();
    for n in 1..=3 {
        action(&store, "a", n);
        record(&store, "a", n, n as u64);
    }
    std::fs::write(store.tmp_dir().join("leftover"), b"partial").unwrap();
    // A work directory a killed build left behind, and one that is not kiln's.
    std::fs::create_dir_all(store.tmp_dir().join("work-1234-0/sub")).unwrap();
    std::fs::write(store.tmp_dir().join("work-1234-0/sub/image.raw"), b"12345").unwrap();
    std::fs::create_dir(store.tmp_dir().join("inspect-me")).unwrap();
    let policy = GcPolicy {
        keep_last: Some(1),
        older_than: None,
        dry_run: true,
        // Far enough ahead that the leftover temp file is stale.
        now_unix_ms: now_unix_ms() + 2 * gc::TEMP_GRACE.as_millis() as u64,
    };
    let before = std::fs::read(store.root().join("records.log")).unwrap();
    let dry = store.gc(&policy).unwrap();
    assert!(dry.dry_run);
    assert_eq!(dry.actions_removed, 2);
    assert_eq!(dry.blobs_removed, 4);
    assert_eq!(dry.temp_files_removed, 2);
    assert_eq!(dry.temp_bytes_freed, 7 + 5);
    assert_eq!(dry.records_dropped, 2);
    assert_eq!(store.action_keys().unwrap().len(), 3);
    assert!(store.tmp_dir().join("leftover").exists());
    assert_eq!(
        std::fs::read(store.root().join("records.log")).unwrap(),
        before
    );
    assert!(store.verify().unwrap().is_ok());

    let real = store
        .gc(&GcPolicy {
            dry_run: false,
            ..policy
        })
        .unwrap();
    assert_eq!(
        GcReport {
            dry_run: true,
            ..real.clone()
        },
        dry
    );
    assert_eq!(store.action_keys().unwrap(), [key(3)].into());
    assert!(!store.tmp_dir().join("leftover").exists());
    assert!(!store.tmp_dir().join("work-1234-0").exists());
    assert!(store.tmp_dir().join("inspect-me").is_dir());
    assert_eq!(store.record_history().unwrap().len(), 1);
}

#[test]
fn gc_leaves_fresh_temp_files() {
    let (_dir, store) = store();
    std::fs::write(store.tmp_dir().join("in-flight"), b"x").unwrap();
    let report = store
        .gc(&GcPolicy {
            keep_last: None,
            older_than: None,
            dry_run: false,
            now_unix_ms: now_unix_ms(),
        })
        .unwrap();
    assert_eq!(report.temp_files_removed, 0);
    assert!(store.tmp_dir().join("in-flight").exists());
}

#[test]
fn lock_without_waiting_fails_while_held() {
    let (dir, first) = store();
    let second = LocalStore::open(&dir.path().join("cache")).unwrap();
    let guard = first.lock(false, |_| panic!("not held")).unwrap();
    match second.lock(false, |_| panic!("must not wait")) {
        Err(StoreError::Locked { holder, path }) => {
            assert!(
                holder.contains(&format!("pid {}", std::process::id())),
                "{holder}"
            );
            assert_eq!(path, guard.path());
        }
        other => panic!("expected Locked, got {other:?}"),
    }
    drop(guard);
    let again = second.lock(false, |_| panic!("not held")).unwrap();
    drop(again);
}

#[test]
fn lock_waiter_gets_it_when_released() {
    let (dir, first) = store();
    let root = dir.path().join("cache");
    let guard = first.lock(true, |_| panic!("not held")).unwrap();
    let released = Arc::new(AtomicBool::new(false));
    let (tx, rx) = mpsc::channel();
    let waiter = {
        let released = released.clone();
        std::thread::spawn(move || {
            let second = LocalStore::open(&root).unwrap();
            let lock = second.lock(true, |holder| tx.send(holder.to_string()).unwrap());
            assert!(lock.is_ok());
            assert!(
                released.load(Ordering::SeqCst),
                "got the lock while it was held"
            );
        })
    };
    let holder = rx.recv_timeout(Duration::from_secs(10)).unwrap();
    assert!(holder.contains("kiln (pid "), "{holder}");
    assert!(holder.contains("lock"), "{holder}");
    std::thread::sleep(Duration::from_millis(50));
    released.store(true, Ordering::SeqCst);
    drop(guard);
    waiter.join().unwrap();
}
