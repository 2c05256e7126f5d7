//! DEVICE_FEATURE (16) payloads: the feature and op by name, the migration state, the
//! dirty-logging ranges and page size, and the dirty bits of a report.
//!
//! Replies that only echo their request (every PROBE, SET of MIG_DEVICE_STATE and of
//! DMA_LOGGING_STOP) add nothing after `reply ok`: the request's line says it all, and a SET's
//! `state` line follows.

use vfu_server::wire::{
    DeviceFeature, DmaLoggingControl, DmaLoggingRange, DmaLoggingReport, FEATURE_DMA_LOGGING_REPORT,
    FEATURE_DMA_LOGGING_START, FEATURE_DMA_LOGGING_STOP, FEATURE_GET, FEATURE_MASK, FEATURE_MIG_DEVICE_STATE,
    FEATURE_MIGRATION, FEATURE_PROBE, FEATURE_SET, MIGRATION_P2P, MIGRATION_PRE_COPY, MIGRATION_STOP_COPY,
    MigDeviceState, MigrationFeature, WireError, parse_prefix,
};

use super::names::{bits, feature, feature_ops, state};
use super::payload::{Effect, LIST_SHOWN, Text};

const MIGRATION_FLAGS: [(u64, &str); 3] =
    [(MIGRATION_STOP_COPY, "STOP_COPY"), (MIGRATION_P2P, "P2P"), (MIGRATION_PRE_COPY, "PRE_COPY")];

/// The fields of a DEVICE_FEATURE request.
pub(super) fn request(p: &[u8], t: &mut Text, max: usize) -> Result<Effect, WireError> {
    let (head, data) = parse_prefix::<DeviceFeature>(p)?;
    let (id, ops) = (head.flags & FEATURE_MASK, head.flags & !FEATURE_MASK);
    t.word(feature_ops(ops));
    t.word(feature(id));
    if ops & FEATURE_PROBE != 0 {
        return Ok(Effect::None);
    }
    match (id, ops) {
        (FEATURE_MIG_DEVICE_STATE, FEATURE_SET) => {
            let (s, _) = parse_prefix::<MigDeviceState>(data)?;
            t.kv("state", state(s.device_state));
            return Ok(Effect::AskState(s.device_state));
        }
        (FEATURE_DMA_LOGGING_STOP, _) if data.is_empty() => {}
        (FEATURE_DMA_LOGGING_START | FEATURE_DMA_LOGGING_STOP, _) => logging_control(data, t)?,
        (FEATURE_DMA_LOGGING_REPORT, _) => {
            let (r, _) = parse_prefix::<DmaLoggingReport>(data)?;
            report_range(&r, t);
        }
        (FEATURE_MIGRATION | FEATURE_MIG_DEVICE_STATE, FEATURE_GET) => {}
        _ => t.data(data, max),
    }
    Ok(Effect::None)
}

/// The fields of a successful DEVICE_FEATURE reply.
pub(super) fn reply(p: &[u8], t: &mut Text, max: usize) -> Result<Effect, WireError> {
    let (head, data) = parse_prefix::<DeviceFeature>(p)?;
    let (id, ops) = (head.flags & FEATURE_MASK, head.flags & !FEATURE_MASK);
    let echo = ops & FEATURE_PROBE != 0
        || matches!((id, ops), (FEATURE_MIG_DEVICE_STATE | FEATURE_DMA_LOGGING_STOP, FEATURE_SET));
    if echo {
        return Ok(Effect::None);
    }
    t.word(feature(id));
    match (id, ops) {
        (FEATURE_MIGRATION, FEATURE_GET) => {
            t.kv("flags", bits(parse_prefix::<MigrationFeature>(data)?.0.flags, &MIGRATION_FLAGS));
        }
        (FEATURE_MIG_DEVICE_STATE, FEATURE_GET) => {
            let (s, _) = parse_prefix::<MigDeviceState>(data)?;
            t.kv("state", state(s.device_state));
            return Ok(Effect::SawState(s.device_state));
        }
        (FEATURE_DMA_LOGGING_START, FEATURE_SET) => {
            t.kv("page_size", parse_prefix::<DmaLoggingControl>(data)?.0.page_size)
        }
        (FEATURE_DMA_LOGGING_REPORT, FEATURE_GET) => {
            let (r, bitmap) = parse_prefix::<DmaLoggingReport>(data)?;
            report_range(&r, t);
            dirty_bits(&r, bitmap, t);
        }
        _ => {
            t.word(feature_ops(ops));
            t.data(data, max);
        }
    }
    Ok(Effect::None)
}

fn logging_control(data: &[u8], t: &mut Text) -> Result<(), WireError> {
    let (ctl, mut rest) = parse_prefix::<DmaLoggingControl>(data)?;
    t.kv("page_size", ctl.page_size);
    if ctl.num_ranges == 0 {
        t.kv("ranges", "all");
        return Ok(());
    }
    let mut shown = Vec::new();
    for i in 0..ctl.num_ranges {
        let (r, more) = parse_prefix::<DmaLoggingRange>(rest)?;
        rest = more;
        match usize::try_from(i) {
            Ok(i) if i < LIST_SHOWN => shown.push(format!("{:#x}+{:#x}", r.iova, r.length)),
            Ok(LIST_SHOWN) => shown.push("…".into()),
            _ => {}
        }
    }
    t.kv("ranges", format_args!("{} [{}]", ctl.num_ranges, shown.join(",")));
    Ok(())
}

fn report_range(r: &DmaLoggingReport, t: &mut Text) {
    t.hex("iova", r.iova);
    t.hex("length", r.length);
    t.kv("page_size", r.page_size);
}

/// `dirty=N of M pages`: the bits set for pages of the range, and those set past it.
fn dirty_bits(r: &DmaLoggingReport, bitmap: &[u8], t: &mut Text) {
    let pages = if r.page_size == 0 { u64::MAX } else { r.length.div_ceil(r.page_size) };
    let (mut dirty, mut past) = (0u64, 0u64);
    for (w, word) in (0u64..).zip(bitmap.chunks_exact(8)) {
        let word = u64::from_le_bytes(word.try_into().unwrap_or_default());
        let first = w.saturating_mul(64);
        let in_range = pages.saturating_sub(first).min(64);
        let mask = if in_range == 64 { u64::MAX } else { (1u64 << in_range) - 1 };
        dirty = dirty.saturating_add(u64::from((word & mask).count_ones()));
        past = past.saturating_add(u64::from((word & !mask).count_ones()));
    }
    // A bitmap the trace cut counts only the pages of its kept words.
    let at_least = if t.whole(bitmap) > bitmap.len() { "at least " } else { "" };
    if r.page_size == 0 {
        t.kv("dirty", format_args!("{at_least}{dirty}"));
    } else {
        t.kv("dirty", format_args!("{at_least}{dirty} of {pages} pages"));
    }
    if past != 0 {
        t.word(format_args!("(+{past} {} past the range)", if past == 1 { "bit" } else { "bits" }));
    }
    let need = pages.div_ceil(64).saturating_mul(8);
    let have = t.whole(bitmap);
    if r.page_size != 0 && u64::try_from(have).unwrap_or(u64::MAX) < need {
        t.word(format_args!("(bitmap {have} of {need} bytes)"));
    }
}
