//! Durable images of the engine's state, and their binary encoding.
//!
//! A changelog keyed by `(workflow, correlation id)` can rebuild an engine without
//! re-reading input: the latest record per key is either the pending correlation as it
//! stands ([`PendingImage`]) or, once it ended, what the engine remembers of it
//! ([`FinishedImage`]: a stage read again after a restart is then a duplicate or a late
//! arrival, never a new correlation that would end as a false `never_arrived`).
//!
//! What an image leaves out, on purpose: the input offsets a pending stage came from (a
//! restored engine does not pin offsets: the changelog holds the state, so input can be
//! committed as soon as the image is written) and the lag histograms (they are interval
//! statistics, not state).
//!
//! Encoding (all integers big-endian; version 1):
//!
//! ```text
//! key      = 0x01 | u16 workflow-name length | workflow name | correlation id bytes
//! pending  = 0x01 | 0x01 | i64 start | i64 start kafka time | u8 flags | u16 seen
//!            | u8 fired | u8 lane | u8 n × (u8 stage | i64 at | i64 t2 | i64 t3) | dims
//! finished = 0x01 | 0x02 | i64 start | u8 started | u8 variant | u16 seen | u8 terminal
//!            | dims
//! dims     = u8 n × (u8 dimension index | u16 length | UTF-8 value)
//! ```
//!
//! Correlations that end between two state cuts are written together, one record per
//! workflow and changelog partition ([`encode_finished_batch_key`]), instead of one
//! finished record per key and a deletion of each later:
//!
//! ```text
//! batch key   = 0x03 | u16 workflow-name length | workflow name | i32 partition
//!               | u64 writer | u64 sequence
//! batch value = 0x01 | 0x04 | u32 n × (u16 id length | id | i64 start | u8 started
//!               | u8 variant | u16 seen | u8 terminal | dims)
//! ```
//!
//! The workflow travels by name, so adding or reordering workflows in the topology keeps
//! the images readable; an image whose workflow, stage or dimension no longer exists is
//! rejected with the reason (the caller counts it and goes on).

use super::outcome::Terminal;

const VERSION: u8 = 1;
const KIND_PENDING: u8 = 1;
const KIND_FINISHED: u8 = 2;
const KIND_LAG: u8 = 3;
const KIND_FINISHED_BATCH: u8 = 4;

/// A non-start stage of a pending correlation (also a start read past its window end).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StageImage {
    /// Stage index in the workflow.
    pub stage: u8,
    /// When it happened.
    pub at: i64,
    /// ERP write time, else source time (`i64::MIN`: none).
    pub t2: i64,
    /// Outbox Kafka time, else Kafka time (`i64::MIN`: none).
    pub t3: i64,
}

/// A pending correlation as the engine holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingImage {
    /// Workflow index.
    pub workflow: usize,
    /// Correlation id bytes.
    pub correlation_id: Box<[u8]>,
    /// Start stage occurrence (`i64::MIN` while the start is missing).
    pub start_ms: i64,
    /// Kafka time of the start record (`i64::MIN`: none).
    pub start_kafka_ms: i64,
    /// Engine flags: bit 0, the start carried a source event time; bit 2, the closing
    /// stage was counted (lags included) before this image was written, and its
    /// completion is still to be announced (see `Engine::take_closed_images`).
    pub flags: u8,
    /// Stages seen (bit per stage).
    pub seen: u16,
    /// SLA tiers already raised (bit 0 warn, bit 1 critical).
    pub fired: u8,
    /// Timer lane: SLA variant, or the held lane while the start is missing.
    pub lane: u8,
    /// Other stages received.
    pub stages: Vec<StageImage>,
    /// `(dimension index, value)`.
    pub dimensions: Vec<(usize, String)>,
}

/// What the engine remembers of a finished correlation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FinishedImage {
    /// Workflow index.
    pub workflow: usize,
    /// Correlation id bytes.
    pub correlation_id: Box<[u8]>,
    /// Start (or provisional start) time.
    pub start_ms: i64,
    /// Whether the start stage was seen.
    pub started: bool,
    /// SLA variant.
    pub variant: u8,
    /// Stages seen, including late arrivals after the end.
    pub seen: u16,
    /// How it ended.
    pub terminal: Terminal,
    /// `(dimension index, value)`.
    pub dimensions: Vec<(usize, String)>,
}

/// The latest state of one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Image {
    Pending(PendingImage),
    Finished(FinishedImage),
}

impl Image {
    /// Workflow index.
    pub fn workflow(&self) -> usize {
        match self {
            Image::Pending(p) => p.workflow,
            Image::Finished(f) => f.workflow,
        }
    }

    /// Correlation id bytes.
    pub fn correlation_id(&self) -> &[u8] {
        match self {
            Image::Pending(p) => &p.correlation_id,
            Image::Finished(f) => &f.correlation_id,
        }
    }
}

/// The open lag interval of one workflow: every series that recorded a lag since the
/// last lag summary, so completions counted before a restart are summarised after it.
/// Keyed by the workflow name alone (an empty correlation id, which no correlation has).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LagImage {
    /// Workflow index.
    pub workflow: usize,
    /// When the interval opened.
    pub interval_start_ms: i64,
    pub series: Vec<LagSeriesImage>,
}

/// One series of a [`LagImage`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LagSeriesImage {
    pub from_stage: u8,
    pub to_stage: u8,
    /// Segment code (`Segment as u8`).
    pub segment: u8,
    /// `(dimension index, value)`.
    pub dimensions: Vec<(usize, String)>,
    /// The interval histogram, HDR V2.
    pub histogram: Vec<u8>,
}

/// The changelog key of a workflow's [`LagImage`].
pub fn encode_lag_key(workflow_name: &str) -> Vec<u8> {
    encode_key(workflow_name, &[])
}

/// First byte of the key of a [`LagImage`] kept per changelog partition (with
/// `store.repartition` each partition's owner counts its own correlations' lags):
/// `0x02 | u16 workflow length | workflow | i32 partition`, written to that partition.
const KEY_PARTITION_LAG: u8 = 2;

/// The changelog key of a workflow's [`LagImage`] of one changelog partition.
pub fn encode_partition_lag_key(workflow_name: &str, partition: i32) -> Vec<u8> {
    let mut key = encode_key(workflow_name, &[]);
    key[0] = KEY_PARTITION_LAG;
    key.extend_from_slice(&partition.to_be_bytes());
    key
}

/// Encodes a [`LagImage`]:
/// `version | 0x03 | i64 interval start | u16 n × (u8 from | u8 to | u8 segment | dims |
/// u32 length | histogram)`.
pub fn encode_lag_value(image: &LagImage, out: &mut Vec<u8>) {
    out.clear();
    out.push(VERSION);
    out.push(KIND_LAG);
    out.extend_from_slice(&image.interval_start_ms.to_be_bytes());
    let n = image.series.len().min(usize::from(u16::MAX));
    out.extend_from_slice(&(n as u16).to_be_bytes());
    for s in &image.series[..n] {
        out.push(s.from_stage);
        out.push(s.to_stage);
        out.push(s.segment);
        encode_dims(&s.dimensions, out);
        let len = u32::try_from(s.histogram.len()).unwrap_or(u32::MAX);
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(&s.histogram[..len as usize]);
    }
}

/// A workflow's [`LagImage`] when `key` is a lag key (`None`: a correlation's key).
pub fn decode_lag(
    key: &[u8],
    value: &[u8],
    workflows: &[&str],
) -> Option<Result<LagImage, ImageError>> {
    let mut r = Reader { buf: key, pos: 0 };
    let name = (|| {
        let partitioned = match r.u8()? {
            VERSION => false,
            KEY_PARTITION_LAG => true,
            _ => return Ok(None),
        };
        let len = usize::from(r.u16()?);
        let name = std::str::from_utf8(r.take(len)?)
            .map_err(|_| ImageError::Invalid("workflow name is not UTF-8".into()))?;
        if partitioned {
            r.i32()?;
        }
        Ok(if r.pos == key.len() { Some(name) } else { None })
    })();
    let name = match name {
        Ok(Some(name)) => name,
        Ok(None) => return None,
        Err(e) => return Some(Err(e)),
    };
    Some(decode_lag_value(name, value, workflows))
}

/// The index of the workflow named `name` among the configured `workflows`.
fn workflow_index(name: &str, workflows: &[&str]) -> Result<usize, ImageError> {
    workflows
        .iter()
        .position(|w| *w == name)
        .ok_or_else(|| ImageError::UnknownWorkflow(name.to_string()))
}

/// Reads a value's version and kind, which must be `kind`.
fn expect_kind(r: &mut Reader<'_>, kind: u8) -> Result<(), ImageError> {
    let version = r.u8()?;
    if version != VERSION {
        return Err(ImageError::Version(version));
    }
    match r.u8()? {
        k if k == kind => Ok(()),
        other => Err(ImageError::Kind(other)),
    }
}

fn decode_lag_value(name: &str, value: &[u8], workflows: &[&str]) -> Result<LagImage, ImageError> {
    let workflow = workflow_index(name, workflows)?;
    let mut r = Reader { buf: value, pos: 0 };
    expect_kind(&mut r, KIND_LAG)?;
    let interval_start_ms = r.i64()?;
    let n = r.u16()?;
    let mut series = Vec::with_capacity(usize::from(n));
    for _ in 0..n {
        let from_stage = r.u8()?;
        let to_stage = r.u8()?;
        let segment = r.u8()?;
        let dimensions = decode_dims(&mut r)?;
        let b = r.take(4)?;
        let len = u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize;
        let histogram = r.take(len)?.to_vec();
        series.push(LagSeriesImage {
            from_stage,
            to_stage,
            segment,
            dimensions,
            histogram,
        });
    }
    Ok(LagImage {
        workflow,
        interval_start_ms,
        series,
    })
}

/// Why an image could not be read or restored. None is retryable: the same bytes fail the
/// same way.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImageError {
    #[error("image truncated at byte {0}")]
    Truncated(usize),
    #[error("unknown image version {0}")]
    Version(u8),
    #[error("unknown image kind {0}")]
    Kind(u8),
    #[error("unknown terminal code {0}")]
    Terminal(u8),
    #[error("workflow `{0}` is not configured")]
    UnknownWorkflow(String),
    #[error("{0}")]
    Invalid(String),
    #[error("the store is full ({0} pending)")]
    StoreFull(usize),
    #[error("the engine clock has already moved: state is restored before processing")]
    ClockMoved,
}

/// The changelog key of `(workflow name, correlation id)`.
pub fn encode_key(workflow_name: &str, correlation_id: &[u8]) -> Vec<u8> {
    let name = workflow_name.as_bytes();
    let name_len = u16::try_from(name.len()).unwrap_or(u16::MAX);
    let name = &name[..usize::from(name_len)];
    let mut out = Vec::with_capacity(3 + name.len() + correlation_id.len());
    out.push(VERSION);
    out.extend_from_slice(&name_len.to_be_bytes());
    out.extend_from_slice(name);
    out.extend_from_slice(correlation_id);
    out
}

/// Splits a changelog key into (workflow name, correlation id).
pub fn decode_key(key: &[u8]) -> Result<(&str, &[u8]), ImageError> {
    let mut r = Reader { buf: key, pos: 0 };
    let version = r.u8()?;
    if version != VERSION {
        return Err(ImageError::Version(version));
    }
    let len = usize::from(r.u16()?);
    let name = r.take(len)?;
    let name = std::str::from_utf8(name)
        .map_err(|_| ImageError::Invalid("workflow name is not UTF-8".into()))?;
    let id = &key[r.pos..];
    if id.is_empty() {
        return Err(ImageError::Invalid("empty correlation id".into()));
    }
    Ok((name, id))
}

/// Encodes the value part of an image (the key comes from [`encode_key`]).
pub fn encode_value(image: &Image, out: &mut Vec<u8>) {
    out.clear();
    out.push(VERSION);
    match image {
        Image::Pending(p) => {
            out.push(KIND_PENDING);
            out.extend_from_slice(&p.start_ms.to_be_bytes());
            out.extend_from_slice(&p.start_kafka_ms.to_be_bytes());
            out.push(p.flags);
            out.extend_from_slice(&p.seen.to_be_bytes());
            out.push(p.fired);
            out.push(p.lane);
            // A workflow has at most 16 stages, so at most 16 records.
            let n = p.stages.len().min(usize::from(u8::MAX));
            out.push(n as u8);
            for s in &p.stages[..n] {
                out.push(s.stage);
                out.extend_from_slice(&s.at.to_be_bytes());
                out.extend_from_slice(&s.t2.to_be_bytes());
                out.extend_from_slice(&s.t3.to_be_bytes());
            }
            encode_dims(&p.dimensions, out);
        }
        Image::Finished(f) => {
            out.push(KIND_FINISHED);
            encode_finished_fields(f, out);
        }
    }
}

/// What a finished image holds besides its key.
fn encode_finished_fields(f: &FinishedImage, out: &mut Vec<u8>) {
    out.extend_from_slice(&f.start_ms.to_be_bytes());
    out.push(u8::from(f.started));
    out.push(f.variant);
    out.extend_from_slice(&f.seen.to_be_bytes());
    out.push(terminal_code(f.terminal));
    encode_dims(&f.dimensions, out);
}

fn decode_finished_fields(
    r: &mut Reader<'_>,
    workflow: usize,
    correlation_id: Box<[u8]>,
) -> Result<FinishedImage, ImageError> {
    let start_ms = r.i64()?;
    let started = r.u8()? != 0;
    let variant = r.u8()?;
    let seen = r.u16()?;
    let code = r.u8()?;
    let terminal = terminal_of(code).ok_or(ImageError::Terminal(code))?;
    let dimensions = decode_dims(r)?;
    Ok(FinishedImage {
        workflow,
        correlation_id,
        start_ms,
        started,
        variant,
        seen,
        terminal,
        dimensions,
    })
}

/// First byte of the key of a batch of finished images (see the module docs).
const KEY_FINISHED_BATCH: u8 = 3;

/// The changelog key of a batch of one workflow's finished images on changelog partition
/// `partition`: `writer` (chosen at random per process) and `sequence` keep the keys of
/// different cuts, and of different processes, apart, so compaction never lets a later
/// batch replace an earlier one.
pub fn encode_finished_batch_key(
    workflow_name: &str,
    partition: i32,
    writer: u64,
    sequence: u64,
) -> Vec<u8> {
    let mut key = encode_key(workflow_name, &[]);
    key[0] = KEY_FINISHED_BATCH;
    key.extend_from_slice(&partition.to_be_bytes());
    key.extend_from_slice(&writer.to_be_bytes());
    key.extend_from_slice(&sequence.to_be_bytes());
    key
}

/// Encodes finished images of one workflow (their workflow is the key's) as as many batch values as it takes for each to stay within
/// `max_bytes` (a topic refuses records over its `max.message.bytes`, and a changelog
/// record is never dropped: one refused would hold every later cut); an image larger
/// than that alone gets a value of its own. Returns each value with its image count, in
/// order.
pub fn encode_finished_batch_values(
    images: &[FinishedImage],
    max_bytes: usize,
) -> Vec<(Vec<u8>, usize)> {
    const HEADER: usize = 6;
    let mut values = Vec::new();
    let mut entry = Vec::new();
    let (mut value, mut count) = (Vec::new(), 0usize);
    for f in images {
        entry.clear();
        let id = &f.correlation_id[..f.correlation_id.len().min(usize::from(u16::MAX))];
        entry.extend_from_slice(&(id.len() as u16).to_be_bytes());
        entry.extend_from_slice(id);
        encode_finished_fields(f, &mut entry);
        if count > 0 && HEADER + value.len() + entry.len() > max_bytes {
            values.push((finish_batch_value(&value, count), count));
            value.clear();
            count = 0;
        }
        value.extend_from_slice(&entry);
        count += 1;
    }
    if count > 0 {
        values.push((finish_batch_value(&value, count), count));
    }
    values
}

/// A batch value of `count` encoded entries.
fn finish_batch_value(entries: &[u8], count: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(6 + entries.len());
    out.push(VERSION);
    out.push(KIND_FINISHED_BATCH);
    out.extend_from_slice(&u32::try_from(count).unwrap_or(u32::MAX).to_be_bytes());
    out.extend_from_slice(entries);
    out
}

/// The finished images of a batch when `key` is a batch key (`None`: another key).
pub fn decode_finished_batch(
    key: &[u8],
    value: &[u8],
    workflows: &[&str],
) -> Option<Result<Vec<FinishedImage>, ImageError>> {
    if key.first() != Some(&KEY_FINISHED_BATCH) {
        return None;
    }
    Some((|| {
        let mut k = Reader::new(&key[1..]);
        let len = usize::from(k.u16()?);
        let name = std::str::from_utf8(k.take(len)?)
            .map_err(|_| ImageError::Invalid("workflow name is not UTF-8".into()))?;
        let workflow = workflow_index(name, workflows)?;
        let mut r = Reader::new(value);
        expect_kind(&mut r, KIND_FINISHED_BATCH)?;
        let b = r.take(4)?;
        let n = u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
        // Each entry takes at least 16 bytes: a count beyond that is a corrupt record.
        let mut images = Vec::with_capacity((n as usize).min(value.len() / 16));
        for _ in 0..n {
            let len = usize::from(r.u16()?);
            let id = r.take(len)?;
            if id.is_empty() {
                return Err(ImageError::Invalid("empty correlation id".into()));
            }
            images.push(decode_finished_fields(&mut r, workflow, id.into())?);
        }
        if !r.is_done() {
            return Err(ImageError::Invalid(
                "bytes after the last finished image".into(),
            ));
        }
        Ok(images)
    })())
}

/// Decodes a changelog record; `workflows` are the configured workflow names, in order.
pub fn decode(key: &[u8], value: &[u8], workflows: &[&str]) -> Result<Image, ImageError> {
    let (name, id) = decode_key(key)?;
    let workflow = workflow_index(name, workflows)?;
    let correlation_id: Box<[u8]> = id.into();
    let mut r = Reader { buf: value, pos: 0 };
    let version = r.u8()?;
    if version != VERSION {
        return Err(ImageError::Version(version));
    }
    match r.u8()? {
        KIND_PENDING => {
            let start_ms = r.i64()?;
            let start_kafka_ms = r.i64()?;
            let flags = r.u8()?;
            let seen = r.u16()?;
            let fired = r.u8()?;
            let lane = r.u8()?;
            let n = r.u8()?;
            let mut stages = Vec::with_capacity(usize::from(n));
            for _ in 0..n {
                stages.push(StageImage {
                    stage: r.u8()?,
                    at: r.i64()?,
                    t2: r.i64()?,
                    t3: r.i64()?,
                });
            }
            let dimensions = decode_dims(&mut r)?;
            Ok(Image::Pending(PendingImage {
                workflow,
                correlation_id,
                start_ms,
                start_kafka_ms,
                flags,
                seen,
                fired,
                lane,
                stages,
                dimensions,
            }))
        }
        KIND_FINISHED => Ok(Image::Finished(decode_finished_fields(
            &mut r,
            workflow,
            correlation_id,
        )?)),
        other => Err(ImageError::Kind(other)),
    }
}

fn terminal_code(t: Terminal) -> u8 {
    match t {
        Terminal::Completed => 0,
        Terminal::NeverArrived => 1,
        Terminal::Evicted => 2,
    }
}

fn terminal_of(code: u8) -> Option<Terminal> {
    match code {
        0 => Some(Terminal::Completed),
        1 => Some(Terminal::NeverArrived),
        2 => Some(Terminal::Evicted),
        _ => None,
    }
}

fn encode_dims(dims: &[(usize, String)], out: &mut Vec<u8>) {
    let n = dims.len().min(usize::from(u8::MAX));
    out.push(n as u8);
    for (d, value) in &dims[..n] {
        out.push(u8::try_from(*d).unwrap_or(u8::MAX));
        // Dimension values are short labels; a longer one is cut at a character boundary.
        put_str16(value, out);
    }
}

/// The longest prefix of `s` of at most `max` bytes that ends at a character boundary.
pub(crate) fn prefix_within(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Appends `s` after its `u16` length, cut to 65,535 bytes at a character boundary.
pub(crate) fn put_str16(s: &str, out: &mut Vec<u8>) {
    let s = prefix_within(s, usize::from(u16::MAX));
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn decode_dims(r: &mut Reader<'_>) -> Result<Vec<(usize, String)>, ImageError> {
    let n = r.u8()?;
    let mut dims = Vec::with_capacity(usize::from(n));
    for _ in 0..n {
        let d = usize::from(r.u8()?);
        let len = usize::from(r.u16()?);
        let value = std::str::from_utf8(r.take(len)?)
            .map_err(|_| ImageError::Invalid("dimension value is not UTF-8".into()))?;
        dims.push((d, value.to_string()));
    }
    Ok(dims)
}

/// Reads the big-endian encodings of this module (and of `route::codec`); running past
/// the end is [`ImageError::Truncated`], never a panic.
pub(crate) struct Reader<'a> {
    pub(crate) buf: &'a [u8],
    pub(crate) pos: usize,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Reader<'a> {
        Reader { buf, pos: 0 }
    }

    /// Whether every byte was read.
    pub(crate) fn is_done(&self) -> bool {
        self.pos == self.buf.len()
    }

    /// The bytes not read yet.
    pub(crate) fn rest(&mut self) -> &'a [u8] {
        let out = &self.buf[self.pos..];
        self.pos = self.buf.len();
        out
    }

    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8], ImageError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.buf.len())
            .ok_or(ImageError::Truncated(self.pos))?;
        let out = &self.buf[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    pub(crate) fn u8(&mut self) -> Result<u8, ImageError> {
        Ok(self.take(1)?[0])
    }

    pub(crate) fn u16(&mut self) -> Result<u16, ImageError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    pub(crate) fn i64(&mut self) -> Result<i64, ImageError> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(i64::from_be_bytes(a))
    }

    pub(crate) fn i32(&mut self) -> Result<i32, ImageError> {
        let mut a = [0u8; 4];
        a.copy_from_slice(self.take(4)?);
        Ok(i32::from_be_bytes(a))
    }

    /// A `u16`-length-prefixed UTF-8 string; `what` names it in the error.
    pub(crate) fn str16(&mut self, what: &str) -> Result<&'a str, ImageError> {
        let len = usize::from(self.u16()?);
        std::str::from_utf8(self.take(len)?)
            .map_err(|_| ImageError::Invalid(format!("{what} is not UTF-8")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pending() -> Image {
        Image::Pending(PendingImage {
            workflow: 1,
            correlation_id: (*b"SO-1001").into(),
            start_ms: 1_700_000_000_000,
            start_kafka_ms: i64::MIN,
            flags: 1,
            seen: 0b101,
            fired: 1,
            lane: 0,
            stages: vec![StageImage {
                stage: 2,
                at: 1_700_000_001_000,
                t2: i64::MIN,
                t3: 1_700_000_001_500,
            }],
            dimensions: vec![(0, "DHL".into()), (1, "WH-ÄMS".into())],
        })
    }

    #[test]
    fn lag_images_round_trip_and_are_told_from_correlation_keys() {
        let image = LagImage {
            workflow: 1,
            interval_start_ms: 1_700_000_000_000,
            series: vec![LagSeriesImage {
                from_stage: 0,
                to_stage: 2,
                segment: 2,
                dimensions: vec![(0, "DHL".into())],
                histogram: vec![1, 2, 3, 4],
            }],
        };
        let key = encode_lag_key("shipment_status");
        let mut value = Vec::new();
        encode_lag_value(&image, &mut value);
        let names = ["order_import", "shipment_status"];
        assert_eq!(decode_lag(&key, &value, &names), Some(Ok(image.clone())));
        // Kept per partition: the same image under the partition's key.
        assert_eq!(
            decode_lag(
                &encode_partition_lag_key("shipment_status", 4),
                &value,
                &names
            ),
            Some(Ok(image.clone()))
        );
        // A correlation's key is not a lag key.
        assert_eq!(
            decode_lag(&encode_key("shipment_status", b"S-1"), &value, &names),
            None
        );
        // Every truncation is an error, never a panic.
        for cut in 0..value.len() {
            assert!(matches!(
                decode_lag(&key, &value[..cut], &names),
                Some(Err(_))
            ));
        }
        assert_eq!(
            decode_lag(&encode_lag_key("gone"), &value, &names),
            Some(Err(ImageError::UnknownWorkflow("gone".into())))
        );
    }

    #[test]
    fn pending_and_finished_images_round_trip() {
        let names = ["order_import", "shipment_status"];
        let finished = Image::Finished(FinishedImage {
            workflow: 0,
            correlation_id: (*b"\x00\xffbinary").into(),
            start_ms: -5,
            started: false,
            variant: 3,
            seen: 2,
            terminal: Terminal::Evicted,
            dimensions: vec![],
        });
        let mut buf = Vec::new();
        for image in [pending(), finished] {
            let key = encode_key(names[image.workflow()], image.correlation_id());
            encode_value(&image, &mut buf);
            assert_eq!(decode(&key, &buf, &names), Ok(image));
        }
    }

    #[test]
    fn finished_batches_round_trip_and_are_told_from_other_keys() {
        let names = ["order_import", "shipment_status"];
        let finished = |id: &[u8], terminal, dims: Vec<(usize, String)>| FinishedImage {
            workflow: 1,
            correlation_id: id.into(),
            start_ms: 1_700_000_000_000,
            started: true,
            variant: 1,
            seen: 0b11,
            terminal,
            dimensions: dims,
        };
        let images = vec![
            finished(b"S-1", Terminal::Completed, vec![(0, "DHL".into())]),
            finished(b"\x00\xff", Terminal::NeverArrived, vec![]),
            finished(b"S-3", Terminal::Evicted, vec![(1, "WH-ÄMS".into())]),
        ];
        let key = encode_finished_batch_key("shipment_status", 5, 0xfeed, 42);
        let (value, n) = encode_finished_batch_values(&images, usize::MAX).remove(0);
        assert_eq!(n, images.len());
        assert_eq!(
            decode_finished_batch(&key, &value, &names),
            Some(Ok(images.clone()))
        );
        // Keys of other cuts and writers differ; none is a correlation's or a lag key.
        assert_ne!(
            key,
            encode_finished_batch_key("shipment_status", 5, 0xfeed, 43)
        );
        assert_ne!(
            key,
            encode_finished_batch_key("shipment_status", 5, 0xbeef, 42)
        );
        assert!(decode(&key, &value, &names).is_err());
        assert_eq!(decode_lag(&key, &value, &names), None);
        let correlation = encode_key("shipment_status", b"S-1");
        assert_eq!(decode_finished_batch(&correlation, &value, &names), None);
        let lag = encode_partition_lag_key("shipment_status", 5);
        assert_eq!(decode_finished_batch(&lag, &value, &names), None);
        // Every truncation of the value is an error, never a panic; so are trailing bytes.
        for cut in 0..value.len() {
            assert!(
                matches!(
                    decode_finished_batch(&key, &value[..cut], &names),
                    Some(Err(_))
                ),
                "cut at {cut}"
            );
        }
        let mut longer = value.clone();
        longer.push(0);
        assert!(matches!(
            decode_finished_batch(&key, &longer, &names),
            Some(Err(_))
        ));
        // A count far beyond the bytes is an error, not a huge allocation.
        let mut lying = value[..2].to_vec();
        lying.extend_from_slice(&u32::MAX.to_be_bytes());
        assert!(matches!(
            decode_finished_batch(&key, &lying, &names),
            Some(Err(ImageError::Truncated(_)))
        ));
        // Split to a size: each value within it, together every image in order.
        let values = encode_finished_batch_values(&images, value.len() - 1);
        assert!(values.len() > 1);
        let mut again = Vec::new();
        for (v, n) in &values {
            assert!(v.len() < value.len());
            let decoded = decode_finished_batch(&key, v, &names)
                .expect("a batch key")
                .expect("readable");
            assert_eq!(decoded.len(), *n);
            again.extend(decoded);
        }
        assert_eq!(again, images);
        // An image larger than the bound alone still gets a value.
        assert_eq!(encode_finished_batch_values(&images, 1).len(), images.len());
        assert_eq!(
            decode_finished_batch(&encode_finished_batch_key("gone", 0, 1, 1), &value, &names),
            Some(Err(ImageError::UnknownWorkflow("gone".into())))
        );
    }

    #[test]
    fn every_truncation_is_an_error_not_a_panic() {
        let names = ["order_import", "shipment_status"];
        let image = pending();
        let key = encode_key("shipment_status", image.correlation_id());
        let mut buf = Vec::new();
        encode_value(&image, &mut buf);
        for cut in 0..buf.len() {
            assert!(
                matches!(
                    decode(&key, &buf[..cut], &names),
                    Err(ImageError::Truncated(_))
                ),
                "cut at {cut}"
            );
        }
        // Cut anywhere up to an empty id (a shorter id is another valid key).
        for cut in 0..=3 + "shipment_status".len() {
            assert!(
                decode(&key[..cut], &buf, &names).is_err(),
                "key cut at {cut}"
            );
        }
    }

    #[test]
    fn unknown_workflows_versions_and_kinds_are_named() {
        let image = pending();
        let mut buf = Vec::new();
        encode_value(&image, &mut buf);
        let key = encode_key("returns", b"R-1");
        assert_eq!(
            decode(&key, &buf, &["order_import"]),
            Err(ImageError::UnknownWorkflow("returns".into()))
        );
        let key = encode_key("order_import", b"R-1");
        let mut v = buf.clone();
        v[0] = 9;
        assert_eq!(
            decode(&key, &v, &["order_import"]),
            Err(ImageError::Version(9))
        );
        let mut v = buf.clone();
        v[1] = 7;
        assert_eq!(
            decode(&key, &v, &["order_import"]),
            Err(ImageError::Kind(7))
        );
    }

    #[test]
    fn overlong_values_are_cut_at_a_character_boundary() {
        let long = "é".repeat(40_000);
        let mut out = Vec::new();
        encode_dims(&[(0, long)], &mut out);
        let mut r = Reader { buf: &out, pos: 0 };
        let dims = decode_dims(&mut r).unwrap();
        assert!(dims[0].1.len() <= usize::from(u16::MAX));
        assert!(dims[0].1.chars().all(|c| c == 'é'));
    }
}
