//! Patches on image-builder's packer templates.
//!
//! - `append`: for every top-level key of the patch, what `jq '.[KEY] += $patch[0][KEY]'` does
//!   for arrays, objects and absent keys: arrays are appended (`.provisioners += …`), objects
//!   are merged shallowly (the patch's entries win), a key the template lacks (or holds `null`)
//!   is set. Any other pair (a string, number or boolean on either side, or an array against an
//!   object) is an error: jq would add numbers and concatenate strings, which no template wants;
//!   use `merge` to replace values.
//! - `merge`: an RFC 7396 JSON merge patch.

use serde_json::{Map, Value};

use crate::config::PatchOp;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatchError {
    #[error("the {0} is not a JSON object")]
    NotAnObject(&'static str),
    #[error(
        "cannot append to `{key}`: the template holds {template} and the patch {patch}; append works on arrays and objects, use op=\"merge\" to replace a value"
    )]
    Mismatch {
        key: String,
        template: &'static str,
        patch: &'static str,
    },
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// `op="append"`: see the module documentation.
pub fn append(template: &mut Value, patch: &Value) -> Result<(), PatchError> {
    let Value::Object(patch) = patch else {
        return Err(PatchError::NotAnObject("patch"));
    };
    let Value::Object(template) = template else {
        return Err(PatchError::NotAnObject("template"));
    };
    for (key, add) in patch {
        match (template.get_mut(key), add) {
            (None | Some(Value::Null), _) => {
                template.insert(key.clone(), add.clone());
            }
            (Some(_), Value::Null) => {}
            (Some(Value::Array(have)), Value::Array(more)) => have.extend(more.iter().cloned()),
            (Some(Value::Object(have)), Value::Object(more)) => {
                for (k, v) in more {
                    have.insert(k.clone(), v.clone());
                }
            }
            (Some(have), add) => {
                return Err(PatchError::Mismatch {
                    key: key.clone(),
                    template: kind(have),
                    patch: kind(add),
                });
            }
        }
    }
    Ok(())
}

/// RFC 7396: objects merge recursively, `null` removes a member, anything else replaces.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let Value::Object(map) = target else {
        unreachable!("made an object above")
    };
    for (k, v) in patch {
        if v.is_null() {
            map.remove(k);
        } else {
            merge_patch(map.entry(k.clone()).or_insert(Value::Null), v);
        }
    }
}

/// Applies one patch with its op.
pub fn apply_patch(template: &mut Value, patch: &Value, op: PatchOp) -> Result<(), PatchError> {
    match op {
        PatchOp::Append => append(template, patch),
        PatchOp::Merge => {
            merge_patch(template, patch);
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn append_concatenates_arrays_like_jq() {
        let mut t =
            json!({"provisioners": [{"a": 1}], "builders": [{"b": 1}], "variables": {"x": "1"}});
        append(&mut t, &json!({"provisioners": [{"c": 2}]})).unwrap();
        assert_eq!(
            t,
            json!({"provisioners": [{"a": 1}, {"c": 2}], "builders": [{"b": 1}], "variables": {"x": "1"}})
        );
    }

    #[test]
    fn append_sets_missing_keys_and_merges_objects_shallowly() {
        let mut t = json!({"variables": {"x": "1", "y": {"deep": 1}}, "n": null});
        append(
            &mut t,
            &json!({"variables": {"y": {"other": 2}, "z": "3"}, "post-processors": [1], "n": [2]}),
        )
        .unwrap();
        assert_eq!(
            t,
            json!({"variables": {"x": "1", "y": {"other": 2}, "z": "3"}, "n": [2], "post-processors": [1]})
        );
    }

    #[test]
    fn append_refuses_scalars_and_mismatched_types() {
        let mut t = json!({"min_packer_version": "1.6.0", "provisioners": []});
        let e = append(&mut t, &json!({"min_packer_version": "1.9.0"})).unwrap_err();
        assert!(e.to_string().contains("use op=\"merge\""), "{e}");
        let e = append(&mut t, &json!({"provisioners": {"a": 1}})).unwrap_err();
        assert_eq!(
            e,
            PatchError::Mismatch {
                key: "provisioners".into(),
                template: "an array",
                patch: "an object"
            }
        );
        assert_eq!(
            append(&mut t, &json!([1])),
            Err(PatchError::NotAnObject("patch"))
        );
    }

    /// The examples of RFC 7396, appendix A.
    #[test]
    fn merge_patch_follows_rfc_7396() {
        let cases = [
            (json!({"a": "b"}), json!({"a": "c"}), json!({"a": "c"})),
            (
                json!({"a": "b"}),
                json!({"b": "c"}),
                json!({"a": "b", "b": "c"}),
            ),
            (json!({"a": "b"}), json!({"a": null}), json!({})),
            (
                json!({"a": "b", "b": "c"}),
                json!({"a": null}),
                json!({"b": "c"}),
            ),
            (json!({"a": ["b"]}), json!({"a": "c"}), json!({"a": "c"})),
            (json!({"a": "c"}), json!({"a": ["b"]}), json!({"a": ["b"]})),
            (
                json!({"a": {"b": "c"}}),
                json!({"a": {"b": "d", "c": null}}),
                json!({"a": {"b": "d"}}),
            ),
            (
                json!({"a": [{"b": "c"}]}),
                json!({"a": [1]}),
                json!({"a": [1]}),
            ),
            (json!(["a", "b"]), json!(["c", "d"]), json!(["c", "d"])),
            (json!({"a": "b"}), json!(["c"]), json!(["c"])),
            (json!({"a": "foo"}), json!(null), json!(null)),
            (json!({"a": "foo"}), json!("bar"), json!("bar")),
            (
                json!({"e": null}),
                json!({"a": 1}),
                json!({"e": null, "a": 1}),
            ),
            (
                json!([1, 2]),
                json!({"a": "b", "c": null}),
                json!({"a": "b"}),
            ),
            (
                json!({}),
                json!({"a": {"bb": {"ccc": null}}}),
                json!({"a": {"bb": {}}}),
            ),
        ];
        for (target, patch, want) in cases {
            let mut t = target.clone();
            merge_patch(&mut t, &patch);
            assert_eq!(t, want, "{target} + {patch}");
        }
    }
}
