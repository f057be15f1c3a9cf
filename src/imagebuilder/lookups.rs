//! What image-builder looks up while it runs, outside every key: `make build-…-flatcar` asks the
//! Flatcar release server for the current version (`hack/image-grok-latest-flatcar-version.sh`)
//! unless `FLATCAR_VERSION` is set, so two builds of one key can install different Flatcar
//! releases. `kiln check` warns about every provider that builds Flatcar unpinned. Pure.

use std::collections::BTreeMap;

use crate::config::{BuilderKind, Config, Diag, Diags, Value};
use crate::graph::Graph;

/// A warning per provider whose image-builder steps build Flatcar without
/// `env "FLATCAR_VERSION" "…"`, naming its first such node.
pub fn warnings(config: &Config, graph: &Graph) -> Diags {
    let mut first: BTreeMap<&str, &str> = BTreeMap::new();
    for ix in graph.order() {
        let n = graph.node(ix);
        if n.builder != BuilderKind::ImageBuilder {
            continue;
        }
        let target = n.recipe.params.get("target").map(Value::render);
        if !target.is_some_and(|t| super::builds_flatcar(&t)) {
            continue;
        }
        if super::plain_env(n)
            .iter()
            .any(|(k, _)| k == "FLATCAR_VERSION")
        {
            continue;
        }
        first.entry(&n.provider).or_insert(&n.id);
    }
    let mut out = Diags::default();
    for (provider, node) in first {
        let Some(p) = config.providers.get(provider) else {
            continue;
        };
        out.push(
            Diag::warning(
                "kiln::image-builder::run-time-lookup",
                format!(
                    "provider `{provider}` builds Flatcar ({node}) without a pinned FLATCAR_VERSION: image-builder looks the current release up when the build runs, and no key covers it"
                ),
            )
            .label(&config.sources, p.loc, "builds Flatcar with whatever is current")
            .help("pin it: `env \"FLATCAR_VERSION\" \"4152.2.3\"` in the provider (or an `override os=\"flatcar\"`); `env \"FLATCAR_CHANNEL\" \"stable\"` picks the channel"),
        );
    }
    out
}
