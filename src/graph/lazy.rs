//! A part of a node decoded from a graph snapshot only when it is first used. A no-op plan of a
//! large matrix reads ids, keys and edges; the parameters and variables of its nodes are needed
//! only for the nodes that run, are explained or are refreshed, so they stay encoded until then.

use std::fmt;
use std::ops::Deref;
use std::sync::OnceLock;

use bytes::Bytes;
use serde::de::DeserializeOwned;

/// A value, or the bytes it is decoded from on first use. Dereferences to the value.
pub struct Lazy<T> {
    value: OnceLock<T>,
    /// A part of a snapshot's verified body (see `graph::snapshot`): bytes read into memory,
    /// never a mapping of the file, so what is decoded later is what was checked.
    encoded: Option<Bytes>,
}

impl<T> Lazy<T> {
    pub fn new(value: T) -> Lazy<T> {
        Lazy {
            value: OnceLock::from(value),
            encoded: None,
        }
    }

    /// The value that `bytes` (postcard, verified by the caller) decode to.
    pub(super) fn encoded(bytes: Bytes) -> Lazy<T> {
        Lazy {
            value: OnceLock::new(),
            encoded: Some(bytes),
        }
    }
}

impl<T: DeserializeOwned> Deref for Lazy<T> {
    type Target = T;

    fn deref(&self) -> &T {
        self.value.get_or_init(|| {
            let bytes = self
                .encoded
                .as_ref()
                .expect("a lazy value is set or encoded");
            // The bytes were written by this kiln binary (the snapshot key names it) and their
            // checksum verified when the snapshot was read: they cannot fail to decode.
            postcard::from_bytes(bytes).expect("a verified graph snapshot decodes")
        })
    }
}

impl<T: Clone> Clone for Lazy<T> {
    fn clone(&self) -> Lazy<T> {
        Lazy {
            value: self.value.clone(),
            encoded: self.encoded.clone(),
        }
    }
}

impl<T: DeserializeOwned + fmt::Debug> fmt::Debug for Lazy<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        (**self).fmt(f)
    }
}

impl<T: PartialEq + DeserializeOwned> PartialEq for Lazy<T> {
    fn eq(&self, other: &Lazy<T>) -> bool {
        **self == **other
    }
}

impl<T: Default> Default for Lazy<T> {
    fn default() -> Lazy<T> {
        Lazy::new(T::default())
    }
}

impl<T> From<T> for Lazy<T> {
    fn from(value: T) -> Lazy<T> {
        Lazy::new(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_encoded_value_decodes_on_first_use_and_clones_either_way() {
        let bytes = postcard::to_allocvec(&vec!["a".to_string(), "b".into()]).unwrap();
        let mut body = b"xx".to_vec();
        body.extend_from_slice(&bytes);
        let lazy: Lazy<Vec<String>> = Lazy::encoded(Bytes::from(body).slice(2..));
        let copy = lazy.clone();
        assert!(lazy.value.get().is_none());
        assert_eq!(*lazy, ["a", "b"]);
        assert_eq!(*copy, ["a", "b"]);
        assert_eq!(lazy.clone().value.get().map(Vec::len), Some(2));
        assert_eq!(Lazy::new(vec!["a".to_string(), "b".into()]), lazy);
    }
}
