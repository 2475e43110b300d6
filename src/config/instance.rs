//! `service.instance_id`: the consumer's `group.instance.id` (static membership; see
//! `ingest::membership`), its default and Kafka's rules for it.

/// Kafka's limit for a `group.instance.id` (the same rule as for topic names).
pub const MAX_INSTANCE_ID_LEN: usize = 249;

fn legal(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')
}

/// The default `service.instance_id`: `<group_id>-<hostname>`, with characters Kafka
/// does not accept in an instance id replaced by `_`. Stable across restarts on one host;
/// two instances on one host (or a host name reused by pods) must set their own.
pub fn default_instance_id(group_id: &str) -> String {
    let raw = format!("{group_id}-{}", hostname());
    let mut id: String = raw
        .chars()
        .map(|c| if legal(c) { c } else { '_' })
        .collect();
    id.truncate(MAX_INSTANCE_ID_LEN);
    id
}

/// Why `id` cannot be a `group.instance.id`, if it cannot.
pub fn check_instance_id(id: &str) -> Result<(), String> {
    if id.is_empty() {
        return Err("empty instance id".into());
    }
    if id == "." || id == ".." {
        return Err(format!("`{id}` is not a valid instance id"));
    }
    if id.len() > MAX_INSTANCE_ID_LEN {
        return Err(format!(
            "{} characters; Kafka accepts at most {MAX_INSTANCE_ID_LEN}",
            id.len()
        ));
    }
    if let Some(bad) = id.chars().find(|c| !legal(*c)) {
        return Err(format!(
            "`{id}` contains `{bad}`; allowed are ASCII letters, digits, `.`, `_` and `-`"
        ));
    }
    Ok(())
}

/// The host name, from the kernel, else `$HOSTNAME`, else `localhost`.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_instance_ids_are_valid_and_stable() {
        let a = default_instance_id("synclag prod/eu");
        assert_eq!(a, default_instance_id("synclag prod/eu"));
        assert!(a.starts_with("synclag_prod_eu-"), "{a}");
        assert_eq!(check_instance_id(&a), Ok(()));
        let long = default_instance_id(&"g".repeat(400));
        assert_eq!(long.len(), MAX_INSTANCE_ID_LEN);
        assert_eq!(check_instance_id(&long), Ok(()));
    }
}
