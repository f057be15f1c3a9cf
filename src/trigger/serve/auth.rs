//! Who may ask for a build: a body signed with the webhook secret (GitHub's
//! `X-Hub-Signature-256: sha256=HEX`, HMAC-SHA256 over the raw body) or a bearer token. Both are
//! compared in constant time, and neither is ever printed: `Debug` names only which is set.

use hmac::{Hmac, Mac};
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq;

/// The header GitHub signs webhook bodies in.
pub const SIGNATURE_HEADER: &str = "x-hub-signature-256";

/// The configured credentials (`KILN_WEBHOOK_SECRET`, `KILN_API_TOKEN`).
#[derive(Clone, Default)]
pub struct Auth {
    webhook_secret: Option<Vec<u8>>,
    /// The SHA-256 of the token: comparing digests takes the same time whatever the length of
    /// what a client sends.
    token_digest: Option<[u8; 32]>,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field(
                "webhook_secret",
                &self.webhook_secret.as_ref().map(|_| "***"),
            )
            .field("api_token", &self.token_digest.as_ref().map(|_| "***"))
            .finish()
    }
}

/// What a request presents, read from its headers before its body is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Presented<'a> {
    /// `Authorization: Bearer TOKEN`.
    Bearer(&'a str),
    /// `X-Hub-Signature-256: …` (checked once the body is read).
    Signature(&'a str),
    Nothing,
}

/// Why a request is refused (a 401).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error(
        "no credentials: sign the body with the webhook secret (X-Hub-Signature-256: sha256=HEX) or send Authorization: Bearer TOKEN"
    )]
    Missing,
    #[error("the bearer token is not the server's")]
    BadToken,
    #[error("the X-Hub-Signature-256 header is not `sha256=` and 64 hex digits")]
    MalformedSignature,
    #[error("the body's signature does not match: it was not signed with the webhook secret")]
    BadSignature,
    #[error("this server takes no {0}: it was started without one")]
    NotConfigured(&'static str),
}

impl AuthError {
    /// The header the error is about.
    pub fn field(&self) -> &'static str {
        match self {
            AuthError::Missing | AuthError::MalformedSignature | AuthError::BadSignature => {
                "X-Hub-Signature-256"
            }
            AuthError::BadToken => "Authorization",
            AuthError::NotConfigured(what) => {
                if what.contains("token") {
                    "Authorization"
                } else {
                    "X-Hub-Signature-256"
                }
            }
        }
    }
}

impl Auth {
    pub fn new(webhook_secret: Option<Vec<u8>>, api_token: Option<Vec<u8>>) -> Auth {
        Auth {
            webhook_secret: webhook_secret.filter(|s| !s.is_empty()),
            token_digest: api_token
                .filter(|t| !t.is_empty())
                .map(|t| Sha256::digest(&t).into()),
        }
    }

    /// Whether any credential is configured (a server without one would refuse everything).
    pub fn any(&self) -> bool {
        self.webhook_secret.is_some() || self.token_digest.is_some()
    }

    /// Reads the credential a request presents from its `Authorization` and
    /// `X-Hub-Signature-256` headers (a bearer token wins).
    pub fn presented<'a>(
        authorization: Option<&'a str>,
        signature: Option<&'a str>,
    ) -> Presented<'a> {
        let bearer = authorization.and_then(|a| {
            let (scheme, token) = a.trim().split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        });
        match (bearer, signature) {
            (Some(t), _) => Presented::Bearer(t),
            (None, Some(s)) => Presented::Signature(s),
            (None, None) => Presented::Nothing,
        }
    }

    /// Checks a bearer token (before the body is read).
    pub fn check_token(&self, token: &str) -> Result<(), AuthError> {
        let Some(want) = &self.token_digest else {
            return Err(AuthError::NotConfigured("bearer token (KILN_API_TOKEN)"));
        };
        let got: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        if bool::from(got.ct_eq(want)) {
            Ok(())
        } else {
            Err(AuthError::BadToken)
        }
    }

    /// Checks `sha256=HEX` against the HMAC-SHA256 of `body` under the webhook secret.
    pub fn check_signature(&self, header: &str, body: &[u8]) -> Result<(), AuthError> {
        let Some(secret) = &self.webhook_secret else {
            return Err(AuthError::NotConfigured(
                "signed requests (KILN_WEBHOOK_SECRET)",
            ));
        };
        let hex_sig = header
            .trim()
            .strip_prefix("sha256=")
            .ok_or(AuthError::MalformedSignature)?;
        let sig = hex::decode(hex_sig).map_err(|_| AuthError::MalformedSignature)?;
        if sig.len() != 32 {
            return Err(AuthError::MalformedSignature);
        }
        let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
        mac.update(body);
        // `verify_slice` compares in constant time.
        mac.verify_slice(&sig).map_err(|_| AuthError::BadSignature)
    }
}

/// `sha256=HEX` for `body` under `secret`: what a client puts in `X-Hub-Signature-256`.
pub fn sign(secret: &[u8], body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// GitHub's documented example ("Validating webhook deliveries").
    const GITHUB_SECRET: &str = "It's a Secret to Everybody";
    const GITHUB_BODY: &str = "Hello, World!";
    const GITHUB_SIGNATURE: &str =
        "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";

    fn webhook() -> Auth {
        Auth::new(Some(GITHUB_SECRET.into()), None)
    }

    #[test]
    fn github_documented_vector() {
        assert_eq!(
            sign(GITHUB_SECRET.as_bytes(), GITHUB_BODY.as_bytes()),
            GITHUB_SIGNATURE
        );
        assert_eq!(
            webhook().check_signature(GITHUB_SIGNATURE, GITHUB_BODY.as_bytes()),
            Ok(())
        );
    }

    #[test]
    fn a_changed_body_or_signature_is_refused() {
        let a = webhook();
        assert_eq!(
            a.check_signature(GITHUB_SIGNATURE, b"Hello, World?"),
            Err(AuthError::BadSignature)
        );
        let mut flipped = GITHUB_SIGNATURE.to_string();
        flipped.replace_range(70.., "0");
        assert_eq!(
            a.check_signature(&flipped, GITHUB_BODY.as_bytes()),
            Err(AuthError::BadSignature)
        );
        for bad in [
            "",
            "sha256=",
            "sha1=abcd",
            "sha256=zz",
            &GITHUB_SIGNATURE[..40],
        ] {
            assert_eq!(
                a.check_signature(bad, GITHUB_BODY.as_bytes()),
                Err(AuthError::MalformedSignature),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn tokens() {
        let a = Auth::new(None, Some(b"tok-123".to_vec()));
        assert_eq!(a.check_token("tok-123"), Ok(()));
        assert_eq!(a.check_token("tok-124"), Err(AuthError::BadToken));
        assert_eq!(a.check_token(""), Err(AuthError::BadToken));
        assert!(matches!(
            a.check_signature(GITHUB_SIGNATURE, b""),
            Err(AuthError::NotConfigured(_))
        ));
        assert!(matches!(
            webhook().check_token("x"),
            Err(AuthError::NotConfigured(_))
        ));
    }

    #[test]
    fn presented_credentials() {
        assert_eq!(
            Auth::presented(Some("Bearer abc"), Some("sha256=00")),
            Presented::Bearer("abc")
        );
        assert_eq!(
            Auth::presented(Some("Basic abc"), Some("sha256=00")),
            Presented::Signature("sha256=00")
        );
        assert_eq!(Auth::presented(None, None), Presented::Nothing);
    }

    #[test]
    fn debug_never_shows_a_secret() {
        let a = Auth::new(Some(b"hunter2".to_vec()), Some(b"tok-123".to_vec()));
        let text = format!("{a:?}");
        assert!(
            !text.contains("hunter2") && !text.contains("tok-123"),
            "{text}"
        );
    }
}
