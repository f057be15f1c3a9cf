//! A pack: the index of every result a signing runner has for one graph, so that a fresh runner
//! plans that graph with one request instead of one per node.
//!
//! ```text
//! kiln-pack-v1
//! graph <digest of the graph's sorted node keys, hex>
//! body <blake3 of the body, hex>
//! sig <NAME:BASE64>
//!
//! <JSON array of {key, facts}>
//! ```
//!
//! The signature is over `kiln-pack-v1;<graph>;<body digest>`: a trusted signer vouches that
//! each listed key has a result in the remote (its record and blobs were written before the
//! pack). Facts are carried for publish results only: the refresh checks their claims without
//! fetching their records. Records themselves are fetched when a build needs them.

use std::collections::BTreeMap;

use super::keys::{PublicKey, SecretKey};
use super::signed::{Envelope, Rejected};
use crate::hash::{Digest, KeyHasher};

const HEADER: &str = "kiln-pack-v1";

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PackEntry {
    pub key: Digest,
    /// The result's facts, for publish results.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub facts: Option<BTreeMap<String, String>>,
}

/// The name of a graph's pack: a digest of its node keys, in any order.
pub fn graph_digest(keys: &[Digest]) -> Digest {
    let mut sorted = keys.to_vec();
    sorted.sort();
    let mut h = KeyHasher::new(HEADER);
    h.begin("keys", sorted.len());
    for k in &sorted {
        h.digest(k);
    }
    h.finish()
}

fn fingerprint(graph: &Digest, body: &Digest) -> String {
    format!("{HEADER};{};{}", graph.to_hex(), body.to_hex())
}

pub fn encode(graph: &Digest, entries: &[PackEntry], key: &SecretKey) -> Vec<u8> {
    let body = serde_json::to_vec(entries).expect("pack entries serialize");
    let digest = Digest::of_bytes(&body);
    let sig = key.sign(fingerprint(graph, &digest).as_bytes());
    let mut out = format!(
        "{HEADER}\ngraph {}\nbody {}\nsig {sig}\n\n",
        graph.to_hex(),
        digest.to_hex()
    )
    .into_bytes();
    out.extend_from_slice(&body);
    out
}

/// Checks a pack fetched for `graph` (or, with `None`, for whatever graph it names) and decodes
/// its entries.
pub fn decode(
    bytes: &[u8],
    graph: Option<&Digest>,
    trusted: &[PublicKey],
) -> Result<Vec<PackEntry>, Rejected> {
    let env = Envelope::open(bytes, HEADER)?;
    let named: Digest = env
        .field("graph")?
        .parse()
        .map_err(|_| Rejected::Garbled("the graph line is not a digest".into()))?;
    if let Some(g) = graph
        && *g != named
    {
        return Err(Rejected::WrongKey {
            stored: g.to_hex(),
            inside: named.to_hex(),
        });
    }
    let body = env.body_digest()?;
    env.signer(&fingerprint(&named, &body), trusted)?;
    serde_json::from_slice(env.body).map_err(|e| Rejected::Garbled(format!("body: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packs_verify_and_bind_their_graph() {
        let sk = SecretKey::generate("ci-1").unwrap();
        let trusted = [sk.public()];
        let keys = [Digest::of_bytes(b"a"), Digest::of_bytes(b"b")];
        let g = graph_digest(&keys);
        assert_eq!(
            g,
            graph_digest(&[keys[1], keys[0]]),
            "order does not matter"
        );
        let entries = vec![
            PackEntry {
                key: keys[0],
                facts: None,
            },
            PackEntry {
                key: keys[1],
                facts: Some(BTreeMap::from([("sha256".into(), "ab".into())])),
            },
        ];
        let bytes = encode(&g, &entries, &sk);
        assert_eq!(decode(&bytes, Some(&g), &trusted).unwrap(), entries);
        assert_eq!(decode(&bytes, None, &trusted).unwrap(), entries);
        let other = graph_digest(&keys[..1]);
        assert!(matches!(
            decode(&bytes, Some(&other), &trusted),
            Err(Rejected::WrongKey { .. })
        ));
        let text = String::from_utf8(bytes)
            .unwrap()
            .replace("\"ab\"", "\"cd\"");
        assert_eq!(
            decode(text.as_bytes(), Some(&g), &trusted).unwrap_err(),
            Rejected::Tampered
        );
        let stranger = SecretKey::generate("ci-9").unwrap();
        assert_eq!(
            decode(&encode(&g, &entries, &stranger), Some(&g), &trusted).unwrap_err(),
            Rejected::Untrusted("ci-9".into())
        );
    }
}
