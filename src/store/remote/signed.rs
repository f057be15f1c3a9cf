//! A result record as the remote cache holds it: the [`ActionResult`] as JSON, signed by the
//! runner that built it, like a Nix narinfo.
//!
//! ```text
//! kiln-signed-action-v1
//! key <node key, hex>
//! body <blake3 of the body, hex>
//! sig <NAME:BASE64>          one or more
//!
//! <the ActionResult as JSON>
//! ```
//!
//! The signature is over the fingerprint `kiln-signed-action-v1;<key>;<body digest>`, so it
//! binds the record to the key it is stored under and to every byte of its body.

use super::keys::{PublicKey, SecretKey};
use crate::hash::Digest;
use crate::store::ActionResult;

const HEADER: &str = "kiln-signed-action-v1";

/// Why a record from the remote was not trusted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejected {
    #[error("it is not a signed kiln record ({0})")]
    Garbled(String),
    #[error("it is stored under {stored} but made for {inside}")]
    WrongKey { stored: String, inside: String },
    #[error("its body does not match its digest (changed after it was signed)")]
    Tampered,
    #[error("it carries no signature")]
    Unsigned,
    #[error("it is signed only by {0}, which is not a trusted key")]
    Untrusted(String),
    #[error("its signature by {0} does not verify (changed after it was signed)")]
    BadSignature(String),
}

fn fingerprint(key: &Digest, body: &Digest) -> String {
    format!("{HEADER};{};{}", key.to_hex(), body.to_hex())
}

/// Encodes and signs `result`.
pub fn encode(result: &ActionResult, key: &SecretKey) -> Vec<u8> {
    let body = serde_json::to_vec(result).expect("an action result serializes");
    let digest = Digest::of_bytes(&body);
    let sig = key.sign(fingerprint(&result.key, &digest).as_bytes());
    let mut out = format!(
        "{HEADER}\nkey {}\nbody {}\nsig {sig}\n\n",
        result.key.to_hex(),
        digest.to_hex()
    )
    .into_bytes();
    out.extend_from_slice(&body);
    out
}

/// A record that passed every check, and the name of the trusted key that signed it.
#[derive(Debug)]
pub struct Verified {
    pub result: ActionResult,
    pub signer: String,
}

/// A signed object's parts: its header fields (`name value` lines after the first line), its
/// signatures and its body.
pub(super) struct Envelope<'a> {
    fields: Vec<(&'a str, &'a str)>,
    sigs: Vec<&'a str>,
    pub body: &'a [u8],
}

impl<'a> Envelope<'a> {
    /// Splits `bytes` whose first line must be `header`.
    pub(super) fn open(bytes: &'a [u8], header: &str) -> Result<Envelope<'a>, Rejected> {
        let garbled = |what: &str| Rejected::Garbled(what.to_string());
        let split = bytes
            .windows(2)
            .position(|w| w == b"\n\n")
            .ok_or_else(|| garbled("no blank line after the header"))?;
        let head = std::str::from_utf8(&bytes[..split]).map_err(|_| garbled("header not UTF-8"))?;
        let mut lines = head.lines();
        if lines.next() != Some(header) {
            return Err(garbled("wrong first line"));
        }
        let mut env = Envelope {
            fields: Vec::new(),
            sigs: Vec::new(),
            body: &bytes[split + 2..],
        };
        for line in lines {
            match line.split_once(' ') {
                Some(("sig", v)) => env.sigs.push(v),
                Some((k, v)) => env.fields.push((k, v)),
                None => return Err(garbled("a header line without a value")),
            }
        }
        Ok(env)
    }

    /// The value of header field `name`.
    pub(super) fn field(&self, name: &str) -> Result<&'a str, Rejected> {
        self.fields
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| *v)
            .ok_or_else(|| Rejected::Garbled(format!("no {name} line")))
    }

    /// The digest of the body, checked against the `body` field.
    pub(super) fn body_digest(&self) -> Result<Digest, Rejected> {
        let actual = Digest::of_bytes(self.body);
        if self.field("body")? != actual.to_hex() {
            return Err(Rejected::Tampered);
        }
        Ok(actual)
    }

    /// The name of the trusted key whose signature over `message` verifies.
    pub(super) fn signer(&self, message: &str, trusted: &[PublicKey]) -> Result<String, Rejected> {
        let mut untrusted = Vec::new();
        for sig in &self.sigs {
            let name = sig.split_once(':').map_or(*sig, |(n, _)| n);
            let shown: String = name.chars().take(64).collect();
            match trusted.iter().find(|k| k.name == name) {
                Some(k) if k.verifies(message.as_bytes(), sig) => return Ok(k.name.clone()),
                Some(_) => return Err(Rejected::BadSignature(shown)),
                None => untrusted.push(shown),
            }
        }
        if untrusted.is_empty() {
            Err(Rejected::Unsigned)
        } else {
            Err(Rejected::Untrusted(untrusted.join(", ")))
        }
    }
}

/// Checks a record fetched as `ac/<key>` and decodes it.
pub fn decode(bytes: &[u8], key: &Digest, trusted: &[PublicKey]) -> Result<Verified, Rejected> {
    let env = Envelope::open(bytes, HEADER)?;
    let stored_key = env.field("key")?;
    if stored_key != key.to_hex() {
        return Err(Rejected::WrongKey {
            stored: key.to_hex(),
            inside: stored_key.chars().take(64).collect(),
        });
    }
    let body = env.body_digest()?;
    let signer = env.signer(&fingerprint(key, &body), trusted)?;
    let result: ActionResult =
        serde_json::from_slice(env.body).map_err(|e| Rejected::Garbled(format!("body: {e}")))?;
    if result.key != *key {
        return Err(Rejected::WrongKey {
            stored: key.to_hex(),
            inside: result.key.to_hex(),
        });
    }
    Ok(Verified { result, signer })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn result() -> ActionResult {
        ActionResult {
            key: Digest::of_bytes(b"k"),
            id: "local/ubuntu-2404/1.32/build".into(),
            recipe: Digest::of_bytes(b"r"),
            dep_outputs: BTreeMap::new(),
            outputs: vec![],
            facts: BTreeMap::from([("format".into(), "qcow2".into())]),
            manifest: BTreeMap::new(),
            attempts: 1,
            started_unix_ms: 1,
            duration_ms: 2,
            log: None,
        }
    }

    #[test]
    fn signed_records_verify_and_tampering_is_caught() {
        let sk = SecretKey::generate("ci-1").unwrap();
        let trusted = [sk.public()];
        let r = result();
        let bytes = encode(&r, &sk);
        let v = decode(&bytes, &r.key, &trusted).unwrap();
        assert_eq!((v.result, v.signer.as_str()), (r.clone(), "ci-1"));

        // A changed fact, with or without a fixed-up body digest.
        let text = String::from_utf8(bytes.clone()).unwrap();
        let changed = text.replace("qcow2", "raw  ");
        assert_eq!(
            decode(changed.as_bytes(), &r.key, &trusted).unwrap_err(),
            Rejected::Tampered
        );
        let body = &changed[changed.find("\n\n").unwrap() + 2..];
        let old = Digest::of_bytes(&bytes[text.find("\n\n").unwrap() + 2..]).to_hex();
        let fixed = changed.replace(&old, &Digest::of_bytes(body.as_bytes()).to_hex());
        assert_eq!(
            decode(fixed.as_bytes(), &r.key, &trusted).unwrap_err(),
            Rejected::BadSignature("ci-1".into())
        );
        // Stored under another key.
        let other = Digest::of_bytes(b"other");
        assert!(matches!(
            decode(&bytes, &other, &trusted),
            Err(Rejected::WrongKey { .. })
        ));
        // Signed by a key nobody trusts, or by none.
        let stranger = SecretKey::generate("ci-2").unwrap();
        assert_eq!(
            decode(&encode(&r, &stranger), &r.key, &trusted).unwrap_err(),
            Rejected::Untrusted("ci-2".into())
        );
        let unsigned: String = text
            .lines()
            .filter(|l| !l.starts_with("sig "))
            .collect::<Vec<_>>()
            .join("\n");
        assert_eq!(
            decode(unsigned.as_bytes(), &r.key, &trusted).unwrap_err(),
            Rejected::Unsigned
        );
        assert!(matches!(
            decode(b"garbage", &r.key, &trusted),
            Err(Rejected::Garbled(_))
        ));
    }
}
