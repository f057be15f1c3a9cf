//! Content digests and the canonical, versioned encoding that node keys are hashed from.
//!
//! A key is never derived from `Debug` output or from a `HashMap`'s iteration order: callers feed
//! typed fields into a [`KeyHasher`], which frames every field with a tag and a length, so two
//! different recipes can never encode to the same byte stream.

use std::fmt;
use std::str::FromStr;

/// Bumped whenever the key encoding changes, so old cache entries are never mistaken for new ones.
pub const KEY_ENCODING_VERSION: &str = "kiln-key-v2";

/// A set of digests with a fast hasher: digests are uniformly random already.
pub type DigestSet = std::collections::HashSet<Digest, rustc_hash::FxBuildHasher>;

/// A blake3 digest: the address of a blob, the key of a node, the digest of an input file.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Digest([u8; 32]);

impl Digest {
    pub fn of_bytes(bytes: &[u8]) -> Digest {
        Digest(*blake3::hash(bytes).as_bytes())
    }

    pub fn from_bytes(bytes: [u8; 32]) -> Digest {
        Digest(bytes)
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    pub fn to_hex(&self) -> String {
        blake3::Hash::from_bytes(self.0).to_hex().to_string()
    }

    /// The first 12 hex digits, as plans print them.
    pub fn short(&self) -> String {
        self.short_display().to_string()
    }

    /// [`Digest::short`] without allocating, for writing many of them.
    pub fn short_display(&self) -> impl fmt::Display + '_ {
        struct Short<'a>(&'a Digest);
        impl fmt::Display for Short<'_> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                let mut out = [0u8; 12];
                for (i, b) in self.0.0[..6].iter().enumerate() {
                    out[2 * i] = HEX[(b >> 4) as usize];
                    out[2 * i + 1] = HEX[(b & 15) as usize];
                }
                f.write_str(std::str::from_utf8(&out).expect("hex digits"))
            }
        }
        Short(self)
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({})", self.short())
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("not a blake3 digest: expected 64 hex digits")]
pub struct ParseDigestError;

impl FromStr for Digest {
    type Err = ParseDigestError;
    fn from_str(s: &str) -> Result<Digest, ParseDigestError> {
        blake3::Hash::from_hex(s)
            .map(|h| Digest(*h.as_bytes()))
            .map_err(|_| ParseDigestError)
    }
}

/// Hex in human-readable formats (JSON); the 32 raw bytes in binary ones.
impl serde::Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.serialize_str(&self.to_hex())
        } else {
            s.serialize_bytes(&self.0)
        }
    }
}

impl<'de> serde::Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Digest, D::Error> {
        if d.is_human_readable() {
            let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
            s.parse().map_err(serde::de::Error::custom)
        } else {
            let b = <&'de [u8]>::deserialize(d)?;
            b.try_into()
                .map(Digest)
                .map_err(|_| serde::de::Error::invalid_length(b.len(), &"32 bytes"))
        }
    }
}

/// Frames typed fields into a canonical byte stream and hashes it.
///
/// Every field is written as `tag byte, u64 length, bytes`; maps must be fed in sorted order
/// (callers pass `BTreeMap`s), so the encoding does not depend on insertion order.
pub struct KeyHasher {
    inner: blake3::Hasher,
}

impl KeyHasher {
    pub fn new(domain: &str) -> KeyHasher {
        let mut h = KeyHasher {
            inner: blake3::Hasher::new(),
        };
        h.str(KEY_ENCODING_VERSION);
        h.str(domain);
        h
    }

    fn frame(&mut self, tag: u8, bytes: &[u8]) {
        self.inner.update(&[tag]);
        self.inner.update(&(bytes.len() as u64).to_le_bytes());
        self.inner.update(bytes);
    }

    pub fn str(&mut self, s: &str) -> &mut Self {
        self.frame(b's', s.as_bytes());
        self
    }

    pub fn digest(&mut self, d: &Digest) -> &mut Self {
        self.frame(b'd', d.as_bytes());
        self
    }

    pub fn u64(&mut self, n: u64) -> &mut Self {
        self.frame(b'u', &n.to_le_bytes());
        self
    }

    /// Opens a list or map of `len` entries; the entries follow.
    pub fn begin(&mut self, what: &str, len: usize) -> &mut Self {
        self.frame(b'[', what.as_bytes());
        self.u64(len as u64)
    }

    pub fn finish(&self) -> Digest {
        Digest(*self.inner.finalize().as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip() {
        let d = Digest::of_bytes(b"kiln");
        assert_eq!(d.to_hex().parse::<Digest>().unwrap(), d);
        assert_eq!(d.short().len(), 12);
        assert!("zz".parse::<Digest>().is_err());
    }

    #[test]
    fn framing_separates_fields() {
        let a = KeyHasher::new("t").str("ab").str("c").finish();
        let b = KeyHasher::new("t").str("a").str("bc").finish();
        assert_ne!(a, b);
        let c = KeyHasher::new("t").str("ab").str("c").finish();
        assert_eq!(a, c);
    }
}
