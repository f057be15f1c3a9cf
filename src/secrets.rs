//! The values of a node's secrets, read when a step runs (or a claim is refreshed) from their
//! environment variables or files: never hashed, logged, cached or printed.

use crate::config::SecretSource;
use crate::graph::Node;

/// The largest secret file kiln reads (a service-account key is a few KiB).
const MAX_SECRET_BYTES: u64 = 1024 * 1024;

/// The value of one of a node's secrets, from its environment variable or file: only a regular
/// file, of at most [`MAX_SECRET_BYTES`].
fn secret_value(s: &crate::config::Secret) -> Result<(String, String), String> {
    match &s.source {
        SecretSource::Env(var) => std::env::var(var)
            .ok()
            .filter(|v| !v.is_empty())
            .map(|v| (s.name.clone(), v))
            .ok_or_else(|| {
                format!(
                    "secret `{}` needs the environment variable {var} (unset or empty)",
                    s.name
                )
            }),
        SecretSource::File(p) => crate::config::files::read_regular(p, MAX_SECRET_BYTES)
            .map_err(|e| e.to_string())
            .and_then(|b| String::from_utf8(b).map_err(|_| "it is not UTF-8".to_string()))
            .map(|v| (s.name.clone(), v.trim_end_matches('\n').to_string()))
            .map_err(|e| format!("secret `{}`: cannot read {}: {e}", s.name, p.display())),
    }
}

/// Every secret of the node: a step runs only with all of them.
pub fn values(node: &Node) -> Result<Vec<(String, String)>, String> {
    node.secrets.iter().map(secret_value).collect()
}

/// Why a secret cannot be had (its variable is unset or empty, its file unreadable), if so.
pub fn problem(s: &crate::config::Secret) -> Option<String> {
    secret_value(s).err()
}

/// The secrets of the node that can be had: a refresh that needs a missing one says so itself
/// (a `file://` bucket needs none).
pub fn available(node: &Node) -> Vec<(String, String)> {
    node.secrets
        .iter()
        .filter_map(|s| secret_value(s).ok())
        .collect()
}
