//! `ac.verified`: the action entries found intact, each with its stat at that moment (size,
//! modification and change times, inode), and the stat of each of the 256 fan-out directories
//! when they were checked. Like a stat cache: an entry whose stat is unchanged is not read again,
//! and the entries of a directory whose stat is unchanged are not even stat-ed (creating,
//! removing or renaming an entry changes its directory's times). Only a speed-up: a missing or
//! garbled index just means every entry is checked.
//!
//! Binary, so tens of thousands of entries load in one read: the magic, 256 directory stamps
//! (all zero: unknown), then fixed-size entry records (key, then the stamp) sorted by key and
//! looked up by binary search. A stamp is six little-endian 64-bit fields.

use crate::hash::Digest;

const MAGIC: &[u8] = b"kiln-verified-v2";
const STAMP: usize = 6 * 8;
const RECORD: usize = 32 + STAMP;
const DIRS: usize = 256;

/// What is remembered of a file's stat: it changes whenever the file is written, replaced or
/// restored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Stamp {
    pub size: u64,
    pub mtime: (i64, i64),
    pub ctime: (i64, i64),
    pub ino: u64,
}

impl Stamp {
    // The field types of `stat` differ between targets.
    #[allow(clippy::unnecessary_cast)]
    pub fn of(st: &rustix::fs::Stat) -> Stamp {
        Stamp {
            size: st.st_size as u64,
            mtime: (st.st_mtime as i64, st.st_mtime_nsec as i64),
            ctime: (st.st_ctime as i64, st.st_ctime_nsec as i64),
            ino: st.st_ino as u64,
        }
    }

    fn write(&self, out: &mut Vec<u8>) {
        for f in [
            self.size,
            self.mtime.0 as u64,
            self.mtime.1 as u64,
            self.ctime.0 as u64,
            self.ctime.1 as u64,
            self.ino,
        ] {
            out.extend_from_slice(&f.to_le_bytes());
        }
    }

    fn read(b: &[u8]) -> Stamp {
        let f = |i: usize| u64::from_le_bytes(b[i * 8..i * 8 + 8].try_into().expect("8 bytes"));
        Stamp {
            size: f(0),
            mtime: (f(1) as i64, f(2) as i64),
            ctime: (f(3) as i64, f(4) as i64),
            ino: f(5),
        }
    }
}

/// A loaded index, borrowing its bytes.
pub(crate) struct Verified<'a> {
    dirs: Vec<Option<Stamp>>,
    records: &'a [u8],
}

impl<'a> Verified<'a> {
    /// Reads the index from its bytes; anything malformed gives an empty index.
    pub fn decode(bytes: &'a [u8]) -> Verified<'a> {
        let head = MAGIC.len() + DIRS * STAMP;
        if !(bytes.len() >= head
            && bytes.starts_with(MAGIC)
            && (bytes.len() - head).is_multiple_of(RECORD))
        {
            return Verified {
                dirs: vec![None; DIRS],
                records: &[],
            };
        }
        let dirs = bytes[MAGIC.len()..head]
            .chunks(STAMP)
            .map(|b| Some(Stamp::read(b)).filter(|s| s.ino != 0))
            .collect();
        Verified {
            dirs,
            records: &bytes[head..],
        }
    }

    /// The stamp of fan-out directory `b` when its entries were last checked, if it is known.
    pub fn dir(&self, b: u8) -> Option<Stamp> {
        self.dirs[b as usize]
    }

    pub fn len(&self) -> usize {
        self.records.len() / RECORD
    }

    fn record(&self, i: usize) -> &[u8] {
        &self.records[i * RECORD..(i + 1) * RECORD]
    }

    /// The stamp recorded for `key`.
    pub fn get(&self, key: &Digest) -> Option<Stamp> {
        // Keys are uniformly random: comparing their first 8 bytes as a number almost always
        // decides, which is far cheaper than a 32-byte memcmp per step.
        let prefix = |b: &[u8]| u64::from_be_bytes(b[..8].try_into().expect("8 bytes"));
        let want = (prefix(key.as_bytes()), key.as_bytes());
        let (mut lo, mut hi) = (0, self.len());
        while lo < hi {
            let mid = (lo + hi) / 2;
            let r = self.record(mid);
            match (prefix(r), &r[..32]).cmp(&(want.0, &want.1[..])) {
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
                std::cmp::Ordering::Equal => return Some(Stamp::read(&r[32..])),
            }
        }
        None
    }

    /// Every entry recorded under fan-out directory `b`.
    pub fn entries_in(&self, b: u8) -> impl Iterator<Item = (Digest, Stamp)> + '_ {
        let (mut lo, mut hi) = (0, self.len());
        while lo < hi {
            let mid = (lo + hi) / 2;
            if self.record(mid)[0] < b {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        let start = lo;
        self.records[start * RECORD..]
            .chunks(RECORD)
            .take_while(move |r| r[0] == b)
            .map(|r| {
                let key: [u8; 32] = r[..32].try_into().expect("32 bytes");
                (Digest::from_bytes(key), Stamp::read(&r[32..]))
            })
    }

    /// The bytes of an index holding `dirs` (one per fan-out directory) and `entries` (sorted
    /// here).
    pub fn encode(dirs: &[Option<Stamp>], entries: &mut [(Digest, Stamp)]) -> Vec<u8> {
        entries.sort_unstable_by_key(|e| e.0);
        let mut out = Vec::with_capacity(MAGIC.len() + DIRS * STAMP + entries.len() * RECORD);
        out.extend_from_slice(MAGIC);
        let unknown = Stamp {
            size: 0,
            mtime: (0, 0),
            ctime: (0, 0),
            ino: 0,
        };
        for b in 0..DIRS {
            dirs.get(b)
                .copied()
                .flatten()
                .unwrap_or(unknown)
                .write(&mut out);
        }
        for (key, stamp) in entries.iter() {
            out.extend_from_slice(key.as_bytes());
            stamp.write(&mut out);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stamp(n: u64) -> Stamp {
        Stamp {
            size: n,
            mtime: (n as i64 * 10, -1),
            ctime: (n as i64 * 20, 7),
            ino: u64::MAX - n,
        }
    }

    #[test]
    fn every_encoded_entry_is_found_and_nothing_else() {
        let mut entries: Vec<(Digest, Stamp)> = (0..500u64)
            .map(|n| (Digest::of_bytes(&n.to_le_bytes()), stamp(n)))
            .collect();
        let mut dirs = vec![None; 256];
        dirs[7] = Some(stamp(7));
        let bytes = Verified::encode(&dirs, &mut entries.clone());
        let index = Verified::decode(&bytes);
        assert_eq!(index.len(), 500);
        for (k, s) in &entries {
            assert_eq!(index.get(k), Some(*s));
        }
        assert_eq!(index.get(&Digest::of_bytes(b"absent")), None);
        assert_eq!((index.dir(7), index.dir(8)), (Some(stamp(7)), None));
        for b in [0u8, 7, 255] {
            let mut want: Vec<_> = entries
                .iter()
                .filter(|(k, _)| k.as_bytes()[0] == b)
                .collect();
            want.sort_by_key(|(k, _)| *k);
            let got: Vec<_> = index.entries_in(b).collect();
            assert_eq!(got.len(), want.len());
            assert!(got.iter().zip(want).all(|(g, w)| g == w));
        }
        entries.clear();
        assert_eq!(
            Verified::decode(&Verified::encode(&dirs, &mut entries)).len(),
            0
        );
    }

    #[test]
    fn a_garbled_index_is_empty() {
        let mut entries = vec![(Digest::of_bytes(b"a"), stamp(1))];
        let mut bytes = Verified::encode(&[], &mut entries);
        bytes.pop();
        assert_eq!(Verified::decode(&bytes).len(), 0);
        assert_eq!(Verified::decode(b"something else").len(), 0);
        assert_eq!(Verified::decode(&[]).len(), 0);
    }
}
