//! Picks a stream's configured payload paths out of JSON bytes in one pass, without
//! building a document.
//!
//! The whole value is still parsed and validated (a record that is not JSON is still
//! `not_json`), but a member that lies on no configured path is skipped without being
//! stored, keys are compared borrowed from the input, and only the values at the ends of
//! the paths are materialised (usually one string or number each). This is what a plain
//! JSON record costs on the hot path; the result is the same as walking the parsed
//! document with [`super::extract::walk`], including for duplicate keys (the last wins).

use super::extract;
use crate::config::field_path::Segment;
use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::Value;
use std::borrow::Cow;
use std::fmt;

/// Most payload paths one scan follows (they are tracked as bits of a `u64`); a stream with
/// more is decoded through the parsed document instead.
pub const MAX_PATHS: usize = 64;

/// The payload paths of one stream, each with the slot its value is written to.
#[derive(Debug, Clone)]
pub struct Plan {
    paths: Vec<(Vec<Segment>, usize)>,
    slots: usize,
}

impl Plan {
    /// A plan writing path `i` of `paths` (when it is a payload path) to slot `i`; `None`
    /// when there are more than [`MAX_PATHS`] payload paths.
    pub fn new(paths: &[Option<&[Segment]>]) -> Option<Plan> {
        let wanted: Vec<(Vec<Segment>, usize)> = paths
            .iter()
            .enumerate()
            .filter_map(|(slot, p)| p.map(|segs| (segs.to_vec(), slot)))
            .collect();
        (wanted.len() <= MAX_PATHS).then_some(Plan {
            paths: wanted,
            slots: paths.len(),
        })
    }

    /// The value at each slot's path (`None`: absent), or the parse error.
    pub fn scan(&self, bytes: &[u8]) -> Result<Vec<Option<Value>>, serde_json::Error> {
        let mut out: Vec<Option<Value>> = (0..self.slots).map(|_| None).collect();
        let mut de = serde_json::Deserializer::from_slice(bytes);
        let all = if self.paths.len() == MAX_PATHS {
            u64::MAX
        } else {
            (1u64 << self.paths.len()) - 1
        };
        if self.paths.is_empty() {
            <IgnoredAny as serde::Deserialize>::deserialize(&mut de)?;
        } else {
            Walk {
                plan: self,
                depth: 0,
                active: all,
                out: &mut out,
            }
            .deserialize(&mut de)?;
        }
        de.end()?;
        Ok(out)
    }

    /// Paths in `active` whose segment at `depth` is `step`, split into those ending there
    /// and those going deeper.
    fn step(&self, active: u64, depth: usize, step: Step<'_>) -> (u64, u64) {
        let (mut ends, mut deeper) = (0u64, 0u64);
        let mut bits = active;
        while bits != 0 {
            let i = bits.trailing_zeros() as usize;
            bits &= bits - 1;
            let segs = &self.paths[i].0;
            let hit = match (segs.get(depth), step) {
                (Some(Segment::Key(k)), Step::Key(key)) => k == key,
                (Some(Segment::Index(n)), Step::Index(j)) => *n == j,
                _ => false,
            };
            if hit {
                if segs.len() == depth + 1 {
                    ends |= 1 << i;
                } else {
                    deeper |= 1 << i;
                }
            }
        }
        (ends, deeper)
    }

    /// Forgets what the paths in `paths` found so far.
    fn clear(&self, paths: u64, out: &mut [Option<Value>]) {
        let mut bits = paths;
        while bits != 0 {
            let i = bits.trailing_zeros() as usize;
            bits &= bits - 1;
            out[self.paths[i].1] = None;
        }
    }

    /// Stores `value` for the paths in `ends`, and what lies below it for those in `deeper`.
    fn store(&self, value: Value, ends: u64, deeper: u64, depth: usize, out: &mut [Option<Value>]) {
        let mut bits = deeper;
        while bits != 0 {
            let i = bits.trailing_zeros() as usize;
            bits &= bits - 1;
            let (segs, slot) = &self.paths[i];
            out[*slot] = extract::walk(&value, &segs[depth + 1..]).cloned();
        }
        let mut bits = ends;
        let mut value = Some(value);
        while bits != 0 {
            let i = bits.trailing_zeros() as usize;
            bits &= bits - 1;
            let slot = self.paths[i].1;
            // The last path ending here takes the value; others (rare) get a copy.
            out[slot] = if bits == 0 {
                value.take()
            } else {
                value.clone()
            };
        }
    }
}

#[derive(Clone, Copy)]
enum Step<'a> {
    Key(&'a str),
    Index(usize),
}

/// An object key, borrowed from the input unless it holds escapes.
struct Key<'de>(Cow<'de, str>);

impl<'de> serde::Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an object key")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E>(self, v: String) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v)))
            }
        }
        d.deserialize_str(KeyVisitor)
    }
}

/// One level of the walk: the paths in `active` have matched every segment above `depth`.
struct Walk<'p> {
    plan: &'p Plan,
    depth: usize,
    active: u64,
    out: &'p mut [Option<Value>],
}

impl<'de> DeserializeSeed<'de> for Walk<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Walk<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }

    // A scalar where the paths expect an object or a list: none of them is present.
    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(Key(key)) = map.next_key::<Key<'de>>()? {
            let (ends, deeper) = self.plan.step(self.active, self.depth, Step::Key(&key));
            if ends != 0 {
                let value: Value = map.next_value()?;
                self.plan.store(value, ends, deeper, self.depth, self.out);
            } else if deeper != 0 {
                // A repeated key replaces what an earlier occurrence held, as in a document.
                self.plan.clear(deeper, self.out);
                map.next_value_seed(Walk {
                    plan: self.plan,
                    depth: self.depth + 1,
                    active: deeper,
                    out: &mut *self.out,
                })?;
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let mut index = 0usize;
        loop {
            let (ends, deeper) = self.plan.step(self.active, self.depth, Step::Index(index));
            if ends != 0 {
                let Some(value) = seq.next_element::<Value>()? else {
                    break;
                };
                self.plan.store(value, ends, deeper, self.depth, self.out);
            } else if deeper != 0 {
                let walk = Walk {
                    plan: self.plan,
                    depth: self.depth + 1,
                    active: deeper,
                    out: &mut *self.out,
                };
                if seq.next_element_seed(walk)?.is_none() {
                    break;
                }
            } else if seq.next_element::<IgnoredAny>()?.is_none() {
                break;
            }
            index += 1;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::field_path::FieldPath;

    fn segments(p: &str) -> Vec<Segment> {
        match FieldPath::parse(p) {
            Ok(FieldPath::Payload(s)) => s,
            other => panic!("{p}: {other:?}"),
        }
    }

    /// The scan agrees with walking the parsed document, for every path.
    fn agrees(doc: &str, paths: &[&str]) {
        let segs: Vec<Vec<Segment>> = paths.iter().map(|p| segments(p)).collect();
        let refs: Vec<Option<&[Segment]>> = segs.iter().map(|s| Some(s.as_slice())).collect();
        let plan = Plan::new(&refs).expect("plan");
        let scanned = plan.scan(doc.as_bytes()).expect("scan");
        let parsed: Value = serde_json::from_str(doc).expect("parse");
        for (i, s) in segs.iter().enumerate() {
            assert_eq!(
                scanned[i].as_ref(),
                extract::walk(&parsed, s),
                "path {} of {doc}",
                paths[i]
            );
        }
    }

    #[test]
    fn same_values_as_the_parsed_document() {
        let doc = r#"{"order":{"ref":"SO-1","lines":[{"sku":"A"},{"sku":"B\"x"}]},"n":7,"f":1.5,
            "skip":{"deep":[1,2,{"a":null}]},"esc\u0061ped":"yes","t":true,"z":null,"s":"x"}"#;
        agrees(
            doc,
            &[
                "$.order.ref",
                "$.order.lines[1].sku",
                "$.order.lines[0]",
                "$.order",
                "$.order.lines[5].sku",
                "$.n",
                "$.f",
                "$.escaped",
                "$.t",
                "$.z",
                "$.missing.x",
                "$.s.x",
                "$.n[0]",
                "$.order.ref",
            ],
        );
        // Duplicate keys: the last one wins, as in the parsed document.
        agrees(
            r#"{"a":1,"b":{"c":2},"a":3,"b":{"d":4}}"#,
            &["$.a", "$.b.c", "$.b.d"],
        );
        // Not an object at the top.
        agrees(r#"[{"a":1},{"a":2}]"#, &["$[1].a", "$.a"]);
        agrees(r#""text""#, &["$.a"]);
    }

    #[test]
    fn invalid_json_is_an_error_even_off_the_paths() {
        let plan = Plan::new(&[Some(segments("$.a").as_slice())]).expect("plan");
        for bad in [
            r#"{"a":1,"b":[1,2}"#,
            r#"{"a":1} trailing"#,
            r#"{"a":1,"b":tru}"#,
            r#"{"b":"unterminated}"#,
            "",
        ] {
            assert!(plan.scan(bad.as_bytes()).is_err(), "{bad}");
        }
        assert_eq!(
            plan.scan(br#"{"b":{"x":[1,{"y":"\u00e9"}]},"a":"ok"}"#)
                .expect("valid")[0],
            Some(Value::String("ok".into()))
        );
    }
}
