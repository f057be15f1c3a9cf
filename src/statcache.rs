//! File and directory digests through a stat cache: (path, size, mtime, inode) → digest, kept by
//! the store (a [`crate::store::Memo::StatCache`]), so a re-plan with nothing changed reads no
//! file contents.

use std::collections::HashMap;
use std::fs;
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use rayon::prelude::*;

use crate::graph::{Content, DirEntry};
use crate::hash::Digest;

/// Files above this size are hashed with memory mapping over all cores.
const MMAP_THRESHOLD: u64 = 16 * 1024 * 1024;
const HEADER: &str = "kiln-statcache-v1";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    size: u64,
    mtime_ns: i128,
    ctime_ns: i128,
    ino: u64,
}

impl Stamp {
    fn of(meta: &fs::Metadata) -> Stamp {
        Stamp {
            size: meta.len(),
            mtime_ns: meta.mtime() as i128 * 1_000_000_000 + meta.mtime_nsec() as i128,
            ctime_ns: meta.ctime() as i128 * 1_000_000_000 + meta.ctime_nsec() as i128,
            ino: meta.ino(),
        }
    }
}

pub struct StatCache {
    entries: Mutex<HashMap<PathBuf, (Stamp, Digest)>>,
    dirty: AtomicBool,
    hashed: std::sync::atomic::AtomicUsize,
}

fn parse_line(line: &str) -> Option<(PathBuf, (Stamp, Digest))> {
    let mut it = line.splitn(6, ' ');
    let digest = it.next()?.parse().ok()?;
    let size = it.next()?.parse().ok()?;
    let mtime_ns = it.next()?.parse().ok()?;
    let ctime_ns = it.next()?.parse().ok()?;
    let ino = it.next()?.parse().ok()?;
    let path = PathBuf::from(it.next()?);
    Some((
        path,
        (
            Stamp {
                size,
                mtime_ns,
                ctime_ns,
                ino,
            },
            digest,
        ),
    ))
}

impl StatCache {
    /// The cache saved as `saved` by [`StatCache::encode`] (missing or unreadable: start empty).
    pub fn decode(saved: Option<&[u8]>) -> StatCache {
        let mut entries = HashMap::new();
        if let Some(text) = saved.and_then(|b| std::str::from_utf8(b).ok()) {
            let mut lines = text.lines();
            if lines.next() == Some(HEADER) {
                entries.extend(lines.filter_map(parse_line));
            }
        }
        StatCache {
            entries: Mutex::new(entries),
            dirty: AtomicBool::new(false),
            hashed: Default::default(),
        }
    }

    /// How many files had their contents read (the rest were answered from the cache).
    pub fn files_hashed(&self) -> usize {
        self.hashed.load(Ordering::Relaxed)
    }

    /// The digest of a regular file's contents.
    pub fn file(&self, path: &Path) -> io::Result<Digest> {
        let meta = fs::metadata(path)?;
        let stamp = Stamp::of(&meta);
        if let Some((s, d)) = self.entries.lock().expect("stat cache lock").get(path)
            && *s == stamp
        {
            return Ok(*d);
        }
        let mut h = blake3::Hasher::new();
        if meta.len() >= MMAP_THRESHOLD {
            h.update_mmap_rayon(path)?;
        } else {
            h.update(&fs::read(path)?);
        }
        let d = Digest::from_bytes(*h.finalize().as_bytes());
        self.hashed.fetch_add(1, Ordering::Relaxed);
        self.entries
            .lock()
            .expect("stat cache lock")
            .insert(path.to_path_buf(), (stamp, d));
        self.dirty.store(true, Ordering::Relaxed);
        Ok(d)
    }

    /// Every file below a directory with its digest and executable bit, sorted by relative
    /// path. Symlinks are followed.
    pub fn dir(&self, path: &Path) -> io::Result<Vec<DirEntry>> {
        let mut entries = Vec::new();
        self.walk(path, String::new(), &mut entries)?;
        entries.sort_by(|a, b| a.rel.cmp(&b.rel));
        Ok(entries)
    }

    fn walk(&self, dir: &Path, prefix: String, out: &mut Vec<DirEntry>) -> io::Result<()> {
        for e in fs::read_dir(dir)? {
            let e = e?;
            let rel = format!("{prefix}{}", e.file_name().to_string_lossy());
            let meta = fs::metadata(e.path())?;
            if meta.is_dir() {
                self.walk(&e.path(), format!("{rel}/"), out)?;
            } else {
                let exec = meta.permissions().mode() & 0o111 != 0;
                out.push(DirEntry {
                    rel,
                    digest: self.file(&e.path())?,
                    exec,
                });
            }
        }
        Ok(())
    }

    /// Digests many paths in parallel; the first error is returned with its path.
    pub fn digest_all(
        &self,
        paths: &[(PathBuf, bool)],
    ) -> Result<HashMap<PathBuf, Content>, (PathBuf, io::Error)> {
        paths
            .par_iter()
            .map(|(p, is_dir)| {
                let c = if *is_dir {
                    self.dir(p).map(Content::Dir)
                } else {
                    self.file(p).map(Content::File)
                };
                c.map(|c| (p.clone(), c)).map_err(|e| (p.clone(), e))
            })
            .collect()
    }

    /// Writes the cache back atomically, if anything was hashed.
    /// The cache to save, `None` when nothing changed since it was decoded.
    pub fn encode(&self) -> Option<Vec<u8>> {
        if !self.dirty.load(Ordering::Relaxed) {
            return None;
        }
        let entries = self.entries.lock().expect("stat cache lock");
        let mut text = String::with_capacity(entries.len() * 120);
        text.push_str(HEADER);
        text.push('\n');
        for (path, (s, d)) in entries.iter() {
            let Some(p) = path.to_str().filter(|p| !p.contains('\n')) else {
                continue;
            };
            text.push_str(&format!(
                "{d} {} {} {} {} {p}\n",
                s.size, s.mtime_ns, s.ctime_ns, s.ino
            ));
        }
        Some(text.into_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caches_by_stat_and_notices_changes() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("a.sh");
        fs::write(&f, "echo 1\n").unwrap();
        let c = StatCache::decode(None);
        let d1 = c.file(&f).unwrap();
        assert_eq!(d1, Digest::of_bytes(b"echo 1\n"));
        let saved = c.encode().unwrap();

        let c2 = StatCache::decode(Some(&saved));
        assert_eq!(c2.file(&f).unwrap(), d1);
        assert_eq!(
            c2.files_hashed(),
            0,
            "an unchanged file is answered from the cache"
        );

        fs::write(&f, "echo 22\n").unwrap();
        assert!(c2.encode().is_none(), "nothing changed, nothing to save");
        let c3 = StatCache::decode(Some(&saved));
        assert_eq!(c3.file(&f).unwrap(), Digest::of_bytes(b"echo 22\n"));
        assert_eq!(c3.files_hashed(), 1);
    }

    #[test]
    fn dir_listing_tracks_names_contents_and_mode() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("scripts");
        fs::create_dir_all(d.join("sub")).unwrap();
        fs::write(d.join("b.sh"), "b").unwrap();
        fs::write(d.join("sub/a.sh"), "a").unwrap();
        fs::set_permissions(d.join("b.sh"), fs::Permissions::from_mode(0o755)).unwrap();
        let c = StatCache::decode(None);
        let listing = c.dir(&d).unwrap();
        let names: Vec<(&str, bool)> = listing.iter().map(|e| (e.rel.as_str(), e.exec)).collect();
        assert_eq!(names, [("b.sh", true), ("sub/a.sh", false)]);
        assert_eq!(listing[1].digest, Digest::of_bytes(b"a"));
    }
}
