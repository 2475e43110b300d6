//! Dimension values, interned with a per-dimension cardinality cap.
//!
//! A pending correlation stores one `u32` combination id instead of strings, and an
//! outcome shares the combination's `Arc` — both keep the match path free of string copies.
//! The cap keeps histogram label sets bounded: values past it become `other` and are counted.

use std::sync::Arc;

use hashbrown::HashMap;

use super::outcome::Dimensions;
use super::spec::{WorkflowSpec, MAX_DIMENSIONS};

/// Value id meaning "this dimension is not set".
const UNSET: u16 = 0;
/// Value id of the overflow bucket.
const OTHER: u16 = 1;
/// Label used for overflowed values.
pub const OTHER_LABEL: &str = "other";

type ComboVals = [u16; MAX_DIMENSIONS];

struct WfDims {
    names: Vec<Arc<str>>,
    /// Per dimension: value → id (ids from 2 upward).
    ids: Vec<HashMap<Box<str>, u16>>,
    /// Per dimension: id → label.
    labels: Vec<Vec<Arc<str>>>,
}

pub(crate) struct DimTable {
    wfs: Vec<WfDims>,
    cap: usize,
    index: HashMap<(u16, ComboVals), u32>,
    combos: Vec<(ComboVals, Dimensions)>,
}

impl DimTable {
    pub(crate) fn new(workflows: &[WorkflowSpec], cap: usize) -> Self {
        let other: Arc<str> = Arc::from(OTHER_LABEL);
        let wfs = workflows
            .iter()
            .map(|wf| WfDims {
                names: wf
                    .dimensions
                    .iter()
                    .map(|n| Arc::from(n.as_str()))
                    .collect(),
                ids: wf.dimensions.iter().map(|_| HashMap::new()).collect(),
                labels: wf
                    .dimensions
                    .iter()
                    .map(|_| vec![Arc::from(""), other.clone()])
                    .collect(),
            })
            .collect();
        let mut t = Self {
            wfs,
            cap: cap.min(usize::from(u16::MAX) - 2),
            index: HashMap::new(),
            combos: Vec::new(),
        };
        // Combination 0 is "no dimension set" for every workflow, so entries without
        // dimensions never touch the index.
        t.combos
            .push(([UNSET; MAX_DIMENSIONS], Arc::from(Vec::new())));
        t
    }

    /// Configured dimensions of a workflow.
    pub(crate) fn dimension_count(&self, workflow: usize) -> usize {
        self.wfs.get(workflow).map_or(0, |w| w.names.len())
    }

    /// The shared `(name, value)` list of a combination.
    pub(crate) fn dims(&self, combo: u32) -> Dimensions {
        self.combos
            .get(combo as usize)
            .map_or_else(|| Arc::from(Vec::new()), |c| c.1.clone())
    }

    /// `(dimension index, value)` of a combination of `workflow` (overflowed values read
    /// `other`): the form a durable image keeps, interned again on restore.
    pub(crate) fn values(&self, workflow: usize, combo: u32) -> Vec<(usize, String)> {
        let (Some(c), Some(wf)) = (self.combos.get(combo as usize), self.wfs.get(workflow)) else {
            return Vec::new();
        };
        (0..wf.names.len())
            .filter(|&d| c.0[d] != UNSET)
            .map(|d| {
                let label = wf.labels[d]
                    .get(usize::from(c.0[d]))
                    .map_or(OTHER_LABEL, |l| &**l);
                (d, label.to_string())
            })
            .collect()
    }

    /// Combination of `base` with unset dimensions filled from `values`. Returns the new
    /// id and how many values overflowed into `other`. Indexes were validated by the caller.
    pub(crate) fn merge(
        &mut self,
        workflow: usize,
        base: u32,
        values: &[(usize, String)],
    ) -> (u32, u64) {
        let mut vals = self
            .combos
            .get(base as usize)
            .map_or([UNSET; MAX_DIMENSIONS], |c| c.0);
        let mut overflow = 0;
        let cap = self.cap;
        let Some(wf) = self.wfs.get_mut(workflow) else {
            return (base, 0);
        };
        for (d, value) in values {
            let d = *d;
            if d >= MAX_DIMENSIONS || d >= wf.ids.len() || vals[d] != UNSET {
                continue;
            }
            let ids = &mut wf.ids[d];
            vals[d] = match ids.get(value.as_str()) {
                Some(&id) => id,
                None if ids.len() < cap => {
                    let id = (ids.len() + 2) as u16;
                    ids.insert(value.as_str().into(), id);
                    wf.labels[d].push(Arc::from(value.as_str()));
                    id
                }
                None => {
                    overflow += 1;
                    OTHER
                }
            };
        }
        if vals == [UNSET; MAX_DIMENSIONS] {
            return (0, overflow);
        }
        let key = (workflow as u16, vals);
        if let Some(&id) = self.index.get(&key) {
            return (id, overflow);
        }
        let list: Vec<(Arc<str>, Arc<str>)> = (0..wf.names.len())
            .filter(|&d| vals[d] != UNSET)
            .map(|d| {
                let label = wf.labels[d]
                    .get(usize::from(vals[d]))
                    .cloned()
                    .unwrap_or_else(|| Arc::from(OTHER_LABEL));
                (wf.names[d].clone(), label)
            })
            .collect();
        let id = self.combos.len() as u32;
        self.combos.push((vals, Arc::from(list)));
        self.index.insert(key, id);
        (id, overflow)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::correlate::spec::SlaPolicy;

    fn wf() -> WorkflowSpec {
        WorkflowSpec {
            name: "w".into(),
            stages: vec!["a".into(), "b".into()],
            sla: SlaPolicy {
                warn_ms: 1,
                critical_ms: 2,
                overrides: vec![],
            },
            window_ms: 10,
            dimensions: vec!["carrier".into(), "warehouse".into()],
        }
    }

    #[test]
    fn values_past_the_cap_become_other_and_are_counted() {
        let mut t = DimTable::new(&[wf()], 2);
        let (a, o) = t.merge(0, 0, &[(0, "dhl".into()), (1, "ams".into())]);
        assert_eq!(o, 0);
        let (b, _) = t.merge(0, 0, &[(0, "ups".into()), (1, "ams".into())]);
        let (c, o) = t.merge(0, 0, &[(0, "fedex".into()), (1, "ams".into())]);
        assert_eq!(o, 1);
        assert_ne!(a, b);
        let dims = t.dims(c);
        assert_eq!(&*dims[0].0, "carrier");
        assert_eq!(&*dims[0].1, OTHER_LABEL);
        // Same values intern to the same combination.
        assert_eq!(t.merge(0, 0, &[(0, "dhl".into()), (1, "ams".into())]).0, a);
    }

    #[test]
    fn merge_fills_only_unset_dimensions() {
        let mut t = DimTable::new(&[wf()], 8);
        let (a, _) = t.merge(0, 0, &[(0, "dhl".into())]);
        let (b, _) = t.merge(0, a, &[(0, "ups".into()), (1, "ams".into())]);
        let dims = t.dims(b);
        assert_eq!(dims.len(), 2);
        assert_eq!(&*dims[0].1, "dhl");
        assert_eq!(&*dims[1].1, "ams");
        assert_eq!(t.merge(0, 0, &[]).0, 0);
    }
}
