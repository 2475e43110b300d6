//! `SYNCLAG__SECTION__KEY=value` environment overrides, applied to the parsed
//! YAML before validation so that overridden values are validated like any other.
//!
//! - Path segments are lower-cased: `SYNCLAG__KAFKA__BOOTSTRAP_SERVERS`.
//! - A list element is named by its index or by its `name`:
//!   `SYNCLAG__WORKFLOWS__ORDER_IMPORT__WINDOW=45m`.
//! - Under `kafka.properties`, `_` becomes `.` (librdkafka property names):
//!   `SYNCLAG__KAFKA__PROPERTIES__SASL_PASSWORD` sets `sasl.password`.
//! - Values are read as YAML scalars, so `true` and `42` keep their types.

use super::Problem;
use serde_norway::{Mapping, Value};

const PREFIX: &str = "SYNCLAG__";

/// Applies every `SYNCLAG__…` variable; returns a problem for each that cannot be applied.
pub fn apply_overrides(
    root: &mut Value,
    env: impl IntoIterator<Item = (String, String)>,
) -> Vec<Problem> {
    let mut vars: Vec<(String, String)> = env
        .into_iter()
        .filter(|(k, _)| k.starts_with(PREFIX))
        .collect();
    // Deterministic order, so the same environment always gives the same result.
    vars.sort();
    let mut problems = Vec::new();
    for (key, raw) in vars {
        let segments: Vec<String> = key[PREFIX.len()..]
            .split("__")
            .map(str::to_lowercase)
            .collect();
        if segments.iter().any(String::is_empty) {
            problems.push(Problem {
                path: format!("env {key}"),
                message: "empty path segment; write SYNCLAG__SECTION__KEY".into(),
            });
            continue;
        }
        let value = parse_scalar(&raw);
        if let Err(message) = set_path(root, &segments, value) {
            problems.push(Problem {
                path: format!("env {key}"),
                message,
            });
        }
    }
    problems
}

fn parse_scalar(raw: &str) -> Value {
    match serde_norway::from_str::<Value>(raw) {
        Ok(v @ (Value::Bool(_) | Value::Number(_))) => v,
        _ => Value::String(raw.to_string()),
    }
}

fn set_path(root: &mut Value, segments: &[String], value: Value) -> Result<(), String> {
    let mut node = root;
    let mut in_properties = false;
    for (i, seg) in segments.iter().enumerate() {
        let last = i + 1 == segments.len();
        if node.is_null() {
            *node = Value::Mapping(Mapping::new());
        }
        let key = if in_properties {
            seg.replace('_', ".")
        } else {
            seg.clone()
        };
        node = match node {
            Value::Mapping(map) => {
                if last {
                    map.insert(Value::String(key), value);
                    return Ok(());
                }
                in_properties = i == 1 && segments[0] == "kafka" && key == "properties";
                map.entry(Value::String(key)).or_insert(Value::Null)
            }
            Value::Sequence(items) => {
                let pos = match seg.parse::<usize>() {
                    Ok(idx) if idx < items.len() => idx,
                    _ => items
                        .iter()
                        .position(|item| {
                            item.get("name")
                                .and_then(Value::as_str)
                                .map(str::to_lowercase)
                                .as_deref()
                                == Some(seg.as_str())
                        })
                        .ok_or_else(|| format!("no list element with index or name `{seg}`"))?,
                };
                if last {
                    items[pos] = value;
                    return Ok(());
                }
                &mut items[pos]
            }
            _ => {
                return Err(format!(
                    "`{seg}` is below a plain value; it cannot be overridden"
                ))
            }
        };
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn yaml(s: &str) -> Value {
        serde_norway::from_str(s).unwrap()
    }

    #[test]
    fn sets_nested_keys_lists_and_properties() {
        let mut v = yaml("kafka:\n  bootstrap_servers: a:1\nworkflows:\n  - name: order_import\n    window: 30m\n");
        let problems = apply_overrides(
            &mut v,
            vec![
                (
                    "SYNCLAG__KAFKA__BOOTSTRAP_SERVERS".to_string(),
                    "b:2".to_string(),
                ),
                (
                    "SYNCLAG__KAFKA__PROPERTIES__SASL_PASSWORD".to_string(),
                    "secret".to_string(),
                ),
                (
                    "SYNCLAG__WORKFLOWS__ORDER_IMPORT__WINDOW".to_string(),
                    "45m".to_string(),
                ),
                ("SYNCLAG__STORE__MAX_PENDING".to_string(), "42".to_string()),
                ("OTHER".to_string(), "x".to_string()),
            ],
        );
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(v["kafka"]["bootstrap_servers"].as_str(), Some("b:2"));
        assert_eq!(
            v["kafka"]["properties"]["sasl.password"].as_str(),
            Some("secret")
        );
        assert_eq!(v["workflows"][0]["window"].as_str(), Some("45m"));
        assert_eq!(v["store"]["max_pending"].as_u64(), Some(42));
    }

    #[test]
    fn reports_what_cannot_be_applied() {
        let mut v = yaml("workflows:\n  - name: a\n");
        let problems = apply_overrides(
            &mut v,
            vec![
                (
                    "SYNCLAG__WORKFLOWS__NOPE__WINDOW".to_string(),
                    "1m".to_string(),
                ),
                (
                    "SYNCLAG__WORKFLOWS__A__NAME__X".to_string(),
                    "1".to_string(),
                ),
                ("SYNCLAG____X".to_string(), "1".to_string()),
            ],
        );
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert!(problems.iter().any(|p| p
            .message
            .contains("no list element with index or name `nope`")));
        assert!(problems
            .iter()
            .any(|p| p.message.contains("below a plain value")));
    }
}
