//! Signing keys in Nix's key-file format: a secret key is `NAME:BASE64` of the 64-byte ed25519
//! keypair (seed, then public key), a public key `NAME:BASE64` of the 32-byte public key, and a
//! signature `NAME:BASE64` of the 64-byte signature. `nix key generate-secret --key-name ci-1`
//! writes keys kiln reads, and `nix key convert-secret-to-public` prints the trusted key.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};

/// Why a key could not be read. Never carries the key's bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("expected NAME:BASE64 (a name, a colon, then the base64 key)")]
    Shape,
    #[error("the key name is empty")]
    NoName,
    #[error("the part after the colon is not base64")]
    Base64,
    #[error("the key is {found} bytes long, expected {expected}")]
    Length { found: usize, expected: usize },
    #[error("the secret key's public half does not match its seed")]
    Mismatch,
}

/// A secret signing key and its name.
pub struct SecretKey {
    pub name: String,
    key: SigningKey,
}

// Never print a secret key, whatever prints the value.
impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SecretKey({})", self.name)
    }
}

/// A public key readers trust, and its name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicKey {
    pub name: String,
    key: VerifyingKey,
}

fn split(text: &str) -> Result<(&str, Vec<u8>), KeyError> {
    let (name, b64) = text.trim().split_once(':').ok_or(KeyError::Shape)?;
    if name.is_empty() {
        return Err(KeyError::NoName);
    }
    let bytes = B64.decode(b64.trim()).map_err(|_| KeyError::Base64)?;
    Ok((name, bytes))
}

impl SecretKey {
    /// A new random key.
    pub fn generate(name: &str) -> Result<SecretKey, String> {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(|e| format!("no randomness available: {e}"))?;
        Ok(SecretKey {
            name: name.to_string(),
            key: SigningKey::from_bytes(&seed),
        })
    }

    pub fn parse(text: &str) -> Result<SecretKey, KeyError> {
        let (name, bytes) = split(text)?;
        let pair: [u8; 64] = bytes.as_slice().try_into().map_err(|_| KeyError::Length {
            found: bytes.len(),
            expected: 64,
        })?;
        let key = SigningKey::from_keypair_bytes(&pair).map_err(|_| KeyError::Mismatch)?;
        Ok(SecretKey {
            name: name.to_string(),
            key,
        })
    }

    /// The secret key file's contents (`NAME:BASE64`, no newline, as Nix writes it).
    pub fn to_file_text(&self) -> String {
        format!("{}:{}", self.name, B64.encode(self.key.to_keypair_bytes()))
    }

    pub fn public(&self) -> PublicKey {
        PublicKey {
            name: self.name.clone(),
            key: self.key.verifying_key(),
        }
    }

    /// `NAME:BASE64` of the signature over `message`.
    pub fn sign(&self, message: &[u8]) -> String {
        let sig = self.key.sign(message);
        format!("{}:{}", self.name, B64.encode(sig.to_bytes()))
    }
}

impl PublicKey {
    pub fn parse(text: &str) -> Result<PublicKey, KeyError> {
        let (name, bytes) = split(text)?;
        let raw: [u8; 32] = bytes.as_slice().try_into().map_err(|_| KeyError::Length {
            found: bytes.len(),
            expected: 32,
        })?;
        let key = VerifyingKey::from_bytes(&raw).map_err(|_| KeyError::Mismatch)?;
        Ok(PublicKey {
            name: name.to_string(),
            key,
        })
    }

    /// Whether `sig` (`NAME:BASE64`) is this key's signature over `message`.
    pub fn verifies(&self, message: &[u8], sig: &str) -> bool {
        let Ok((name, bytes)) = split(sig) else {
            return false;
        };
        let Ok(raw) = <[u8; 64]>::try_from(bytes.as_slice()) else {
            return false;
        };
        name == self.name
            && self
                .key
                .verify_strict(message, &Signature::from_bytes(&raw))
                .is_ok()
    }
}

impl std::fmt::Display for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.name, B64.encode(self.key.as_bytes()))
    }
}

/// Parses a space- or newline-separated list of public keys (`KILN_TRUSTED_KEYS`).
pub fn parse_trusted(list: &str) -> Result<Vec<PublicKey>, (String, KeyError)> {
    list.split_whitespace()
        .map(|k| PublicKey::parse(k).map_err(|e| (k.chars().take(40).collect(), e)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_sign_verify() {
        let sk = SecretKey::generate("ci-1").unwrap();
        let again = SecretKey::parse(&sk.to_file_text()).unwrap();
        let pk = PublicKey::parse(&sk.public().to_string()).unwrap();
        let sig = again.sign(b"hello");
        assert!(pk.verifies(b"hello", &sig));
        assert!(!pk.verifies(b"hellO", &sig));
        let other = SecretKey::generate("ci-1").unwrap().public();
        assert!(
            !other.verifies(b"hello", &sig),
            "another key of the same name"
        );
        let renamed = sig.replacen("ci-1", "ci-2", 1);
        assert!(!pk.verifies(b"hello", &renamed));
    }

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn nix_key_file_format_with_the_rfc_8032_vector() {
        // RFC 8032, section 7.1, test 1: the secret seed, its public key, and the signature of
        // the empty message. Nix's secret key file is the seed followed by the public key.
        let seed = hex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60");
        let public = hex("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a");
        let sig = hex(concat!(
            "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555",
            "fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b"
        ));
        let file = format!("ci-1:{}", B64.encode([seed, public.clone()].concat()));
        let sk = SecretKey::parse(&format!("{file}\n")).unwrap();
        assert_eq!(
            sk.public().to_string(),
            format!("ci-1:{}", B64.encode(&public))
        );
        assert_eq!(sk.sign(b""), format!("ci-1:{}", B64.encode(&sig)));
        assert_eq!(sk.to_file_text(), file);
        // A keypair whose public half is not the seed's is refused.
        let mut bad = hex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60");
        bad.extend(std::iter::repeat_n(7u8, 32));
        let bad = format!("ci-1:{}", B64.encode(bad));
        assert_eq!(SecretKey::parse(&bad).unwrap_err(), KeyError::Mismatch);
    }

    #[test]
    fn errors_name_the_problem() {
        assert_eq!(PublicKey::parse("nocolon").unwrap_err(), KeyError::Shape);
        assert_eq!(PublicKey::parse(":AAAA").unwrap_err(), KeyError::NoName);
        assert_eq!(PublicKey::parse("a:!!").unwrap_err(), KeyError::Base64);
        assert_eq!(
            PublicKey::parse("a:AAAA").unwrap_err(),
            KeyError::Length {
                found: 3,
                expected: 32
            }
        );
        let sk = SecretKey::generate("k").unwrap();
        assert!(!format!("{sk:?}").contains(&sk.to_file_text()[2..]));
    }
}
