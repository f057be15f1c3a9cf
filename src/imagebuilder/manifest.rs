//! packer's manifest post-processor output (`manifest.json`) → facts of a build node.

use std::collections::BTreeMap;

use serde_json::Value;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    #[error("manifest.json is not valid JSON: {0}")]
    Json(String),
    #[error("manifest.json lists no build of the last run")]
    NoBuild,
}

/// The facts of the last run's builds:
///
/// - `artifact_id`: as packer wrote it;
/// - for `region:id` lists (amazon builders: `eu-central-1:ami-1,us-east-1:ami-2`), one fact
///   per region, `ami.<region>=<id>` (`artifact.<region>` for other builders);
/// - otherwise `image=<id>` (googlecompute), `snapshot=<id>` (hcloud) or `artifact=<id>`;
/// - `builder_type`, `build_name` (the build's `name`), and `custom.<key>` for every string,
///   number or boolean of `custom_data`.
///
/// packer appends to an existing manifest, so only builds of `last_run_uuid` count.
pub fn manifest_facts(text: &str) -> Result<BTreeMap<String, String>, ManifestError> {
    let doc: Value = serde_json::from_str(text).map_err(|e| ManifestError::Json(e.to_string()))?;
    let last = doc.get("last_run_uuid").and_then(Value::as_str);
    let builds: Vec<&Value> = doc
        .get("builds")
        .and_then(Value::as_array)
        .map(|b| {
            b.iter()
                .filter(|b| {
                    last.is_none() || b.get("packer_run_uuid").and_then(Value::as_str) == last
                })
                .collect()
        })
        .unwrap_or_default();
    if builds.is_empty() {
        return Err(ManifestError::NoBuild);
    }
    let mut facts = BTreeMap::new();
    for b in builds {
        let s = |k: &str| b.get(k).and_then(Value::as_str).unwrap_or("").to_string();
        let builder = s("builder_type");
        let artifact = s("artifact_id");
        if !builder.is_empty() {
            facts.insert("builder_type".into(), builder.clone());
        }
        if !s("name").is_empty() {
            facts.insert("build_name".into(), s("name"));
        }
        if !artifact.is_empty() {
            facts.insert("artifact_id".into(), artifact.clone());
            let pairs: Option<Vec<(&str, &str)>> =
                artifact.split(',').map(|p| p.split_once(':')).collect();
            match pairs {
                Some(pairs) => {
                    let prefix = if builder.starts_with("amazon") {
                        "ami"
                    } else {
                        "artifact"
                    };
                    for (region, id) in pairs {
                        facts.insert(format!("{prefix}.{}", region.trim()), id.trim().into());
                    }
                }
                None => {
                    let name = match builder.as_str() {
                        "googlecompute" => "image",
                        "hcloud" => "snapshot",
                        _ => "artifact",
                    };
                    facts.insert(name.into(), artifact.clone());
                }
            }
        }
        if let Some(Value::Object(custom)) = b.get("custom_data") {
            for (k, v) in custom {
                let v = match v {
                    Value::String(s) => s.clone(),
                    Value::Number(n) => n.to_string(),
                    Value::Bool(b) => b.to_string(),
                    _ => continue,
                };
                facts.insert(format!("custom.{k}"), v);
            }
        }
    }
    Ok(facts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amazon_artifacts_become_one_fact_per_region() {
        let text = r#"{
          "builds": [
            {"name": "old", "builder_type": "amazon-ebs", "artifact_id": "us-east-1:ami-old", "packer_run_uuid": "r0"},
            {"name": "ubuntu-24.04", "builder_type": "amazon-ebs", "build_time": 1,
             "artifact_id": "eu-central-1:ami-0123,us-east-1:ami-4567", "packer_run_uuid": "r1",
             "custom_data": {"kubernetes_version": "v1.31.4", "n": 3, "nested": {"x": 1}}}
          ],
          "last_run_uuid": "r1"
        }"#;
        let f = manifest_facts(text).unwrap();
        assert_eq!(f["ami.eu-central-1"], "ami-0123");
        assert_eq!(f["ami.us-east-1"], "ami-4567");
        assert_eq!(f["build_name"], "ubuntu-24.04");
        assert_eq!(f["custom.kubernetes_version"], "v1.31.4");
        assert_eq!(f["custom.n"], "3");
        assert!(!f.contains_key("custom.nested"));
    }

    #[test]
    fn other_builders_name_their_artifact() {
        let one = |builder: &str| {
            manifest_facts(&format!(
                r#"{{"builds": [{{"builder_type": "{builder}", "artifact_id": "12345"}}]}}"#
            ))
            .unwrap()
        };
        assert_eq!(one("hcloud")["snapshot"], "12345");
        assert_eq!(one("googlecompute")["image"], "12345");
        assert_eq!(one("qemu")["artifact"], "12345");
        assert_eq!(
            manifest_facts(r#"{"builds": [], "last_run_uuid": "x"}"#),
            Err(ManifestError::NoBuild)
        );
        assert!(matches!(manifest_facts("{"), Err(ManifestError::Json(_))));
    }
}
