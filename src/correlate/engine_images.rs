//! The engine's side of durable state: listing changed entries as images, and rebuilding
//! entries and finished keys from images (see [`crate::correlate::durable`]).

use super::super::durable::{
    FinishedImage, Image, ImageError, LagImage, LagSeriesImage, PendingImage, StageImage,
};
use super::super::lag::{Segment, SeriesKey};
use super::super::recent::RecentRec;
use super::{
    Engine, Entry, Rec, FIRED_CRITICAL, FIRED_WARN, FLAG_DIRTY, FLAG_END_COUNTED, FLAG_T0, NONE,
};

/// Flags an image may carry (the dirty mark is the engine's own business).
const IMAGE_FLAGS: u8 = FLAG_T0 | FLAG_END_COUNTED;

impl Engine {
    /// Starts (or stops) listing changed entries for [`drain_dirty`](Self::drain_dirty).
    /// Off by default: an engine without durable state pays nothing for it.
    pub fn track_changes(&mut self, on: bool) {
        self.tracking = on;
        if !on {
            self.dirty.clear();
            self.closed.clear();
        }
    }

    /// Marks a pending entry as changed since its last image.
    pub(super) fn touch(&mut self, slot: u32) {
        if !self.tracking {
            return;
        }
        if let Some(e) = self.slab.get_mut(slot as usize).and_then(Option::as_mut) {
            if e.flags & FLAG_DIRTY == 0 {
                e.flags |= FLAG_DIRTY;
                self.dirty.push(slot);
            }
        }
    }

    /// Marks pending correlation `(workflow, id)` as changed, so the next
    /// [`drain_dirty`](Self::drain_dirty) lists it again (an image written without a
    /// tier whose breach was held back, once that breach is out).
    pub fn touch_key(&mut self, workflow: usize, id: &[u8]) {
        let Ok(w) = u16::try_from(workflow) else {
            return;
        };
        let hash = self.hash_key(w, id);
        if let Some(slot) = self.find_slot(hash, w, id) {
            self.touch(slot);
        }
    }

    /// Appends an image of every pending entry that changed since the last call (new
    /// entries, stages received, tiers raised, dimensions learnt) to `out`. Entries that
    /// ended meanwhile are not listed: their end is what [`finished_image`] describes.
    ///
    /// [`finished_image`]: Self::finished_image
    pub fn drain_dirty(&mut self, out: &mut Vec<PendingImage>) {
        let dirty = std::mem::take(&mut self.dirty);
        for &slot in &dirty {
            let Some(e) = self.slab.get_mut(slot as usize).and_then(Option::as_mut) else {
                continue;
            };
            // A slot freed and reused since it was listed is listed again by its new
            // entry; the flag makes sure each entry is written once per drain.
            if e.flags & FLAG_DIRTY == 0 {
                continue;
            }
            e.flags &= !FLAG_DIRTY;
            if let Some(img) = self.image_of(slot) {
                out.push(img);
            }
        }
        self.dirty = dirty;
        self.dirty.clear();
    }

    /// Keeps the image of breached entry `slot` as it stood before the record that
    /// completes it, marked as counted, with the tiers `fired` by now (see
    /// [`take_closed_images`](Self::take_closed_images)). That record is the closing
    /// stage, and the entry as it stands is the image — unless the closing stage was held
    /// until the start came: then the start completes it, and the image is the held entry
    /// from before the start (`before`), closing stage included. Read again after a
    /// restart, the start completes it once more; an image of the started entry would
    /// hold a closing stage that counts as already read, and the correlation would never
    /// complete (a false critical breach, then `never_arrived`).
    pub(super) fn keep_closed_image(&mut self, slot: u32, before: Option<PendingImage>, fired: u8) {
        if let Some(mut img) = before.or_else(|| self.image_of(slot)) {
            img.flags |= FLAG_END_COUNTED;
            img.fired = fired;
            self.closed.push(img);
        }
    }

    /// Breached correlations completed since the last call, each as it stood before its
    /// closing stage, marked as counted. Their completion is announced as `resolved`,
    /// and that event may wait for the clock while their lags are already in the open
    /// lag interval: a durable image of that moment must keep the correlation pending
    /// (the announcement is still owed) yet say its end was counted, or a restart that
    /// reads the closing stage again would count it twice.
    pub fn take_closed_images(&mut self, into: &mut Vec<PendingImage>) {
        into.append(&mut self.closed);
    }

    /// Images of every pending entry (a full snapshot).
    pub fn export_pending(&self) -> Vec<PendingImage> {
        (0..self.slab.len() as u32)
            .filter_map(|slot| self.image_of(slot))
            .collect()
    }

    pub(super) fn image_of(&self, slot: u32) -> Option<PendingImage> {
        let e = self.entry(slot)?;
        let w = usize::from(e.workflow);
        Some(PendingImage {
            workflow: w,
            correlation_id: e.id.clone(),
            start_ms: e.s0_at,
            start_kafka_ms: e.s0_kafka,
            flags: e.flags & IMAGE_FLAGS,
            seen: e.seen,
            fired: e.fired,
            lane: e.lane,
            stages: e
                .recs()
                .iter()
                .map(|r| StageImage {
                    stage: r.stage,
                    at: r.at,
                    t2: r.t2,
                    t3: r.t3,
                })
                .collect(),
            dimensions: self.dims.values(w, e.combo),
        })
    }

    /// What the engine remembers of finished correlation `(workflow, id)`: its image
    /// after a terminal outcome or a late arrival. `None` when it is not remembered.
    pub fn finished_image(&self, workflow: usize, id: &[u8]) -> Option<FinishedImage> {
        let w = u16::try_from(workflow).ok()?;
        let hash = self.hash_key(w, id);
        let r = self.recent.get(hash, w)?;
        Some(FinishedImage {
            workflow,
            correlation_id: id.into(),
            start_ms: r.start_ms,
            started: r.started,
            variant: r.variant,
            seen: r.seen,
            terminal: r.terminal,
            dimensions: self.dims.values(workflow, r.combo),
        })
    }

    /// Rebuilds one key from its latest image, replacing whatever the engine holds for it.
    /// Restored entries pin no input offset (their state is durable) and raise nothing by
    /// themselves: tiers already raised stay raised, the rest fire when the clock passes
    /// their deadlines, as for any entry. Only before the clock first moves, so the timer
    /// lanes' cursors have not passed the restored entries.
    pub fn restore(&mut self, image: Image) -> Result<(), ImageError> {
        if self.now != i64::MIN {
            return Err(ImageError::ClockMoved);
        }
        let w = image.workflow();
        let wf = self
            .wfs
            .get(w)
            .ok_or_else(|| ImageError::Invalid(format!("workflow index {w} out of range")))?;
        if image.correlation_id().is_empty() {
            return Err(ImageError::Invalid("empty correlation id".into()));
        }
        let n_stages = wf.n_stages;
        let lane_count = wf.lanes.len();
        let stage_mask = if n_stages >= 16 {
            u16::MAX
        } else {
            (1u16 << n_stages) - 1
        };
        let dims_len = self.dims_len(w);
        let dims = match &image {
            Image::Pending(p) => &p.dimensions,
            Image::Finished(f) => &f.dimensions,
        };
        if let Some((d, _)) = dims.iter().find(|(d, _)| *d >= dims_len) {
            return Err(ImageError::Invalid(format!(
                "dimension index {d} out of range ({dims_len} configured)"
            )));
        }
        match &image {
            Image::Finished(f) => {
                if f.seen & !stage_mask != 0 {
                    return Err(ImageError::Invalid(format!(
                        "stages {:#b} beyond the workflow's {n_stages}",
                        f.seen
                    )));
                }
            }
            Image::Pending(p) => {
                let started = p.seen & 1 != 0;
                let lane_ok = if started {
                    usize::from(p.lane) + 1 < lane_count
                } else {
                    usize::from(p.lane) + 1 == lane_count
                };
                if !lane_ok {
                    return Err(ImageError::Invalid(format!(
                        "timer lane {} does not fit a {} correlation",
                        p.lane,
                        if started { "started" } else { "held" }
                    )));
                }
                if p.seen & !stage_mask != 0
                    || p.stages
                        .iter()
                        .any(|s| usize::from(s.stage) >= n_stages || s.stage == 0 && started)
                {
                    return Err(ImageError::Invalid(format!(
                        "stages beyond the workflow's {n_stages}"
                    )));
                }
                if started && p.start_ms == NONE {
                    return Err(ImageError::Invalid("started without a start time".into()));
                }
                if !started && p.stages.is_empty() {
                    return Err(ImageError::Invalid("neither a start nor a stage".into()));
                }
            }
        }
        let (combo, overflow) = if dims.is_empty() {
            (0, 0)
        } else {
            self.dims.merge(w, 0, dims)
        };
        self.counters.dimension_overflow += overflow;
        let hash = self.hash_key(w as u16, image.correlation_id());
        self.forget_pending(hash, w as u16, image.correlation_id());
        match image {
            Image::Finished(f) => {
                self.recent.remember(RecentRec {
                    hash,
                    workflow: w as u16,
                    start_ms: f.start_ms,
                    started: f.started,
                    variant: f.variant,
                    combo,
                    seen: f.seen,
                    terminal: f.terminal,
                });
                Ok(())
            }
            Image::Pending(p) => {
                if self.len >= self.max_pending {
                    return Err(ImageError::StoreFull(self.len));
                }
                let recs: Vec<Rec> = p
                    .stages
                    .iter()
                    .map(|s| Rec {
                        at: s.at,
                        t2: s.t2,
                        t3: s.t3,
                        // Restored stages pin nothing: no real offset is ever negative.
                        offset: -1,
                        partition: 0,
                        stage: s.stage,
                    })
                    .collect();
                let e = Entry {
                    id: p.correlation_id,
                    s0_at: p.start_ms,
                    s0_kafka: p.start_kafka_ms,
                    s0_offset: -1,
                    more: (!recs.is_empty()).then(|| Box::new(recs)),
                    s0_partition: 0,
                    combo,
                    workflow: w as u16,
                    seen: p.seen,
                    fired: p.fired & (FIRED_WARN | FIRED_CRITICAL),
                    lane: p.lane,
                    flags: p.flags & IMAGE_FLAGS,
                };
                self.insert(hash, e);
                Ok(())
            }
        }
    }

    /// Drops a pending entry without any outcome (a newer image replaces it).
    fn forget_pending(&mut self, hash: u64, w: u16, id: &[u8]) {
        let Some(slot) = self.find_slot(hash, w, id) else {
            return;
        };
        self.delist(slot);
        if let Ok(found) = self.index.find_entry(hash, |&s| s == slot) {
            found.remove();
        }
        if let Some(e) = self.slab.get_mut(slot as usize).and_then(Option::take) {
            if e.started() {
                self.pins.unpin(e.s0_partition, e.s0_offset);
            }
            for r in e.recs() {
                self.pins.unpin(r.partition, r.offset);
            }
        }
        self.free.push(slot);
        self.len -= 1;
    }

    /// The open lag interval of every workflow, when a lag was recorded or an interval
    /// closed since the last call (else nothing): written with the other images, so a
    /// restart summarises what was counted before it.
    pub fn lag_images(&mut self) -> Vec<LagImage> {
        if !self.lag.take_changed() {
            return Vec::new();
        }
        let mut images: Vec<LagImage> = (0..self.wfs.len())
            .map(|workflow| LagImage {
                workflow,
                interval_start_ms: self.lag_interval_start,
                series: Vec::new(),
            })
            .collect();
        for (key, histogram) in self.lag.open_intervals() {
            let Some(image) = images.get_mut(key.workflow) else {
                continue;
            };
            image.series.push(LagSeriesImage {
                from_stage: u8::try_from(key.from_stage).unwrap_or(u8::MAX),
                to_stage: u8::try_from(key.to_stage).unwrap_or(u8::MAX),
                segment: key.segment as u8,
                dimensions: self.dims.values(key.workflow, key.combo),
                histogram,
            });
        }
        images
    }

    /// Adds a workflow's restored lag interval (see [`lag_images`](Self::lag_images));
    /// returns the series restored. Like [`restore`](Self::restore), before processing.
    pub fn restore_lag(&mut self, image: LagImage) -> Result<usize, ImageError> {
        if self.now != i64::MIN {
            return Err(ImageError::ClockMoved);
        }
        let w = image.workflow;
        let n_stages = self
            .wfs
            .get(w)
            .ok_or_else(|| ImageError::Invalid(format!("workflow index {w} out of range")))?
            .n_stages;
        let dims_len = self.dims_len(w);
        let mut restored = 0;
        for s in image.series {
            let segment = Segment::ALL.get(usize::from(s.segment)).copied();
            let (Some(segment), true, true) = (
                segment,
                usize::from(s.from_stage) < n_stages && usize::from(s.to_stage) < n_stages,
                s.dimensions.iter().all(|(d, _)| *d < dims_len),
            ) else {
                return Err(ImageError::Invalid(format!(
                    "lag series {}→{} segment {} does not fit the workflow",
                    s.from_stage, s.to_stage, s.segment
                )));
            };
            let (combo, _) = self.dims.merge(w, 0, &s.dimensions);
            let key = SeriesKey {
                workflow: w,
                from_stage: usize::from(s.from_stage),
                to_stage: usize::from(s.to_stage),
                segment,
                combo,
            };
            self.lag
                .restore_interval(key, &s.histogram)
                .map_err(ImageError::Invalid)?;
            restored += 1;
        }
        if image.interval_start_ms > 0 && image.interval_start_ms < self.lag_interval_start {
            self.lag_interval_start = image.interval_start_ms;
        }
        Ok(restored)
    }
}
