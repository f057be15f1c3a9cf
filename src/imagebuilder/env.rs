//! The environment an image-builder step runs with, beside its var file: plain `env` variables
//! from the config (part of the key), `IB_VERSION` from the pin, and the quoting that a value
//! needs to pass through make unchanged. Pure.

use crate::config::Value;
use crate::graph::Node;

/// An `env "NAME" "VALUE"` of a provider, override or module is stored among the variables, and
/// one of a step among its parameters, under this prefix (so it is part of the key, and never
/// in a var file).
pub const ENV_PREFIX: &str = "env ";

/// Names kiln sets itself, or that would change how a step's programs are found.
const RESERVED: &[&str] = &[
    "PACKER_VAR_FILES",
    "PACKER_FLAGS",
    "PACKER_LOG",
    "IB_VERSION",
    "PATH",
    "HOME",
    "KILN_NODE",
    "KILN_ATTEMPT",
];

/// Whether `name` can be an `env` of the config.
pub fn check_env_name(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !ok {
        return Err(
            "an environment variable name is letters, digits and `_`, not starting with a digit"
                .into(),
        );
    }
    if RESERVED.contains(&name) {
        return Err(format!("kiln sets {name} itself"));
    }
    Ok(())
}

/// The node's plain environment, sorted by name: the provider's and module's `env` (among the
/// variables), then the step's own (among the parameters), which win.
pub fn plain_env(node: &Node) -> Vec<(String, String)> {
    let from = |it: &mut dyn Iterator<Item = (&String, &Value)>| -> Vec<(String, String)> {
        it.filter_map(|(k, v)| Some((k.strip_prefix(ENV_PREFIX)?.to_string(), v.render())))
            .collect()
    };
    let mut env: std::collections::BTreeMap<String, String> =
        from(&mut node.recipe.vars.iter()).into_iter().collect();
    env.extend(from(&mut node.recipe.params.iter()));
    env.into_iter().collect()
}

/// The value `IB_VERSION` gets: the pinned version (`v0.1.55`). image-builder's Makefile
/// otherwise runs `git describe` in its tree, which is empty in a staged copy and the user's
/// own tag when their config directory is a git repository; it feeds the image's
/// `image_builder_version` label.
pub fn ib_version(pin: &str) -> String {
    pin.split_whitespace().next().unwrap_or(pin).to_string()
}

/// A value make reads from the environment and expands in a recipe (PACKER_FLAGS): `$` is
/// doubled so that `a$HOME` reaches packer as `a$HOME`.
pub fn escape_for_make(s: &str) -> String {
    s.replace('$', "$$")
}

/// Whether a make target builds Flatcar, whose version image-builder's Makefile looks up at
/// run time unless `FLATCAR_VERSION` is set.
pub fn builds_flatcar(target: &str) -> bool {
    target.contains("flatcar")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_names() {
        assert!(check_env_name("FLATCAR_VERSION").is_ok());
        assert!(check_env_name("_x1").is_ok());
        assert!(check_env_name("1X").is_err());
        assert!(check_env_name("A-B").is_err());
        assert!(check_env_name("").is_err());
        assert!(
            check_env_name("PACKER_FLAGS")
                .unwrap_err()
                .contains("kiln sets")
        );
    }

    #[test]
    fn make_escaping() {
        assert_eq!(escape_for_make("a$HOME"), "a$$HOME");
        assert_eq!(escape_for_make("$$"), "$$$$");
        assert_eq!(escape_for_make("plain"), "plain");
    }

    #[test]
    fn ib_version_is_the_pin() {
        assert_eq!(ib_version("v0.1.55"), "v0.1.55");
    }
}
