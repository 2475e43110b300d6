//! `masking.dead_letters: mask`: dead letters without the raw sensitive values.
//!
//! For a record of a configured stream, the values at the stream's correlation-id path
//! (when `masking.correlation_ids`) and at the paths of masked dimensions are replaced
//! by their masked values — in a JSON payload, in headers (`header:` paths) — and the
//! key is replaced by its masked value. Those raw values are also replaced wherever the
//! error text quotes them. A payload that is not JSON cannot be searched: it is withheld
//! (dropped from the letter), and so is the error text, which may quote it. Masked
//! letters carry the header [`MASKED_HEADER`] and are never redriven.

use crate::config::field_path::{FieldPath, KafkaField, Segment};
use crate::config::{DeadLetterMasking, Topology};
use crate::emit::emitter::DeadLetter;
use crate::rules::Masker;

/// Header on masked dead letters: `paths` (values masked in place) or `value_withheld`.
pub const MASKED_HEADER: &str = "synclag.masked";

fn walk_mut<'v>(
    value: &'v mut serde_json::Value,
    segments: &[Segment],
) -> Option<&'v mut serde_json::Value> {
    let mut v = value;
    for s in segments {
        v = match s {
            Segment::Key(k) => v.get_mut(k.as_str())?,
            Segment::Index(i) => v.get_mut(*i)?,
        };
    }
    Some(v)
}

/// Masks `letter` in place when the topology asks for masked dead letters.
pub fn apply(topology: &Topology, masker: &Masker, letter: &mut DeadLetter) {
    if topology.masking.dead_letters != DeadLetterMasking::Mask || !masker.is_keyed() {
        return;
    }
    let mut paths: Vec<&FieldPath> = Vec::new();
    for s in topology.streams.iter().filter(|s| s.topic == letter.topic) {
        if topology.masking.correlation_ids {
            paths.push(&s.correlation_id);
        }
        for (name, path) in &s.dimensions {
            if topology.masking.dimensions.contains(name) {
                paths.push(path);
            }
        }
    }
    let mut raw: Vec<String> = Vec::new();
    let mut withheld = false;
    if let Some(payload) = letter.payload.take() {
        match serde_json::from_slice::<serde_json::Value>(&payload) {
            Ok(mut json) => {
                for p in &paths {
                    if let FieldPath::Payload(segments) = p {
                        if let Some(v) = walk_mut(&mut json, segments) {
                            let text = match v {
                                serde_json::Value::String(s) => Some(s.clone()),
                                serde_json::Value::Number(n) => Some(n.to_string()),
                                _ => None,
                            };
                            if let Some(text) = text {
                                *v = serde_json::Value::String(masker.mask(&text));
                                raw.push(text);
                            }
                        }
                    }
                }
                letter.payload = Some(serde_json::to_vec(&json).unwrap_or_default());
            }
            Err(_) => withheld = true,
        }
    }
    for p in &paths {
        if let FieldPath::Header(name) = p {
            for (k, v) in letter.headers.iter_mut() {
                if k == name {
                    if let Some(bytes) = v {
                        let text = String::from_utf8_lossy(bytes).into_owned();
                        *v = Some(masker.mask(&text).into_bytes());
                        raw.push(text);
                    }
                }
            }
        }
    }
    if let Some(key) = letter.key.take() {
        let text = String::from_utf8_lossy(&key).into_owned();
        if paths
            .iter()
            .any(|p| **p == FieldPath::Kafka(KafkaField::Key))
        {
            raw.push(text.clone());
        }
        letter.key = Some(masker.mask(&text).into_bytes());
    }
    if withheld {
        letter.error = format!(
            "{} (the error text is withheld: the payload could not be masked, masking.dead_letters: mask)",
            letter.reason
        );
    } else {
        // Longest first, so a value that contains another is replaced whole.
        raw.sort_by_key(|r| std::cmp::Reverse(r.len()));
        for r in raw.iter().filter(|r| !r.is_empty()) {
            letter.error = letter.error.replace(r.as_str(), &masker.mask(r));
        }
    }
    letter.headers.retain(|(k, _)| k != MASKED_HEADER);
    letter.headers.push((
        MASKED_HEADER.to_string(),
        Some(
            if withheld { "value_withheld" } else { "paths" }
                .as_bytes()
                .to_vec(),
        ),
    ));
}

#[cfg(test)]
mod tests {
    use super::*;

    const YAML: &str = r#"
kafka: { bootstrap_servers: "localhost:9092" }
masking: { key_env: K, correlation_ids: true, dimensions: [carrier], dead_letters: mask }
streams:
  - { name: a, topic: orders, format: json, fields: { correlation_id: $.order.id, event_time: $.at, dimensions: { carrier: $.carrier, channel: $.channel } } }
  - { name: b, topic: outbox, format: json, fields: { correlation_id: $.id, event_time: $.at } }
workflows:
  - name: w
    stages: [ { name: s1, stream: a }, { name: s2, stream: b } ]
    sla: { warn: 1m, critical: 2m }
    window: 1h
"#;

    fn letter(payload: &[u8], error: &str) -> DeadLetter {
        DeadLetter {
            topic: "orders".into(),
            partition: 0,
            offset: 7,
            key: Some(b"SO-4711".to_vec()),
            payload: Some(payload.to_vec()),
            headers: vec![],
            timestamp_ms: Some(1),
            reason: "bad_timestamp",
            error: error.into(),
        }
    }

    #[test]
    fn configured_paths_key_and_error_text_are_masked() {
        let topology = Topology::from_yaml_str("t", YAML, Vec::new()).expect("valid");
        let masker = Masker::new(Some(b"k".to_vec()));
        let mut dl = letter(
            br#"{"order":{"id":"SO-4711"},"carrier":"DHL","channel":"web","at":"x"}"#,
            "order SO-4711 via DHL: bad time",
        );
        apply(&topology, &masker, &mut dl);
        let text = String::from_utf8(dl.payload.clone().expect("payload")).expect("utf8");
        assert!(!text.contains("SO-4711") && !text.contains("DHL"), "{text}");
        assert!(text.contains(&masker.mask("SO-4711")), "{text}");
        assert!(text.contains("\"web\""), "unmasked dimensions stay: {text}");
        assert_eq!(dl.key, Some(masker.mask("SO-4711").into_bytes()));
        assert!(
            !dl.error.contains("SO-4711") && !dl.error.contains("DHL"),
            "{}",
            dl.error
        );
        assert!(dl
            .headers
            .iter()
            .any(|(k, v)| k == MASKED_HEADER && v.as_deref() == Some(&b"paths"[..])));
    }

    #[test]
    fn a_payload_that_cannot_be_parsed_is_withheld() {
        let topology = Topology::from_yaml_str("t", YAML, Vec::new()).expect("valid");
        let masker = Masker::new(Some(b"k".to_vec()));
        let mut dl = letter(b"SO-4711;DHL", "expected value near `SO-4711`");
        apply(&topology, &masker, &mut dl);
        assert_eq!(dl.payload, None);
        assert!(!dl.error.contains("SO-4711"), "{}", dl.error);
        assert!(dl
            .headers
            .iter()
            .any(|(k, v)| k == MASKED_HEADER && v.as_deref() == Some(&b"value_withheld"[..])));
    }

    #[test]
    fn raw_mode_keeps_the_letter_as_read() {
        let topology = Topology::from_yaml_str(
            "t",
            &YAML.replace("dead_letters: mask", "dead_letters: raw"),
            Vec::new(),
        )
        .expect("valid");
        let masker = Masker::new(Some(b"k".to_vec()));
        let mut dl = letter(br#"{"order":{"id":"SO-4711"}}"#, "e");
        apply(&topology, &masker, &mut dl);
        assert_eq!(dl.key, Some(b"SO-4711".to_vec()));
        assert!(dl.headers.is_empty());
    }
}
