//! Per-command payload decoding: the fields of each request and successful reply, by the
//! layouts of [`vfu_server::wire`], as ` key=value` words for a person.
//!
//! DEVICE_FEATURE has a file of its own ([`super::feature`]). A payload shorter than its
//! command's fixed part ends the fields with `(payload too short for …)`; data that is longer
//! or shorter than its header says is noted (`(padded to N bytes)`, `(carries N bytes)`).

use std::fmt::{Display, Write as _};

use serde_json::Value;
use vfu_server::wire::{
    CapHeader, Capabilities, Command, DEVICE_FLAGS_PCI, DEVICE_FLAGS_RESET, DMA_MAP_READ, DMA_MAP_WRITE, DMA_UNMAP_ALL,
    DMA_UNMAP_GET_DIRTY_BITMAP, DeviceInfo, DmaAccess, DmaMap, DmaUnmap, IRQ_INFO_AUTOMASKED, IRQ_INFO_EVENTFD,
    IRQ_INFO_MASKABLE, IRQ_INFO_NORESIZE, IRQ_SET_ACTION_MASK, IRQ_SET_ACTION_TRIGGER, IRQ_SET_ACTION_UNMASK,
    IRQ_SET_DATA_BOOL, IRQ_SET_DATA_EVENTFD, IRQ_SET_DATA_NONE, IrqInfo, MigData, REGION_FLAG_CAPS, REGION_FLAG_MMAP,
    REGION_FLAG_READ, REGION_FLAG_WRITE, REGION_INFO_CAP_SPARSE_MMAP, RegionAccess, RegionInfo, RegionIoFds, SetIrqs,
    SparseArea, SparseMmapHead, Version, VersionError, WireError, WriteMultiEntry, WriteMultiHead, parse_prefix,
};

use super::feature;
use super::names::{bits, irq, preview, region};

const DMA_MAP_FLAGS: [(u64, &str); 2] = [(DMA_MAP_READ as u64, "READ"), (DMA_MAP_WRITE as u64, "WRITE")];
const DMA_UNMAP_FLAGS: [(u64, &str); 2] =
    [(DMA_UNMAP_GET_DIRTY_BITMAP as u64, "GET_DIRTY_BITMAP"), (DMA_UNMAP_ALL as u64, "ALL")];
const DEVICE_FLAGS: [(u64, &str); 2] = [(DEVICE_FLAGS_RESET as u64, "RESET"), (DEVICE_FLAGS_PCI as u64, "PCI")];
const REGION_FLAGS: [(u64, &str); 4] = [
    (REGION_FLAG_READ as u64, "READ"),
    (REGION_FLAG_WRITE as u64, "WRITE"),
    (REGION_FLAG_MMAP as u64, "MMAP"),
    (REGION_FLAG_CAPS as u64, "CAPS"),
];
const IRQ_INFO_FLAGS: [(u64, &str); 4] = [
    (IRQ_INFO_EVENTFD as u64, "EVENTFD"),
    (IRQ_INFO_MASKABLE as u64, "MASKABLE"),
    (IRQ_INFO_AUTOMASKED as u64, "AUTOMASKED"),
    (IRQ_INFO_NORESIZE as u64, "NORESIZE"),
];
const SET_IRQS_FLAGS: [(u64, &str); 6] = [
    (IRQ_SET_DATA_NONE as u64, "DATA_NONE"),
    (IRQ_SET_DATA_BOOL as u64, "DATA_BOOL"),
    (IRQ_SET_DATA_EVENTFD as u64, "DATA_EVENTFD"),
    (IRQ_SET_ACTION_MASK as u64, "ACTION_MASK"),
    (IRQ_SET_ACTION_UNMASK as u64, "ACTION_UNMASK"),
    (IRQ_SET_ACTION_TRIGGER as u64, "ACTION_TRIGGER"),
];
/// Entries of a list (ranges, writes, sparse areas) shown before `…`.
pub(super) const LIST_SHOWN: usize = 4;

/// What a message means for the decoder's bookkeeping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Effect {
    /// Nothing to remember.
    None,
    /// A request to SET MIG_DEVICE_STATE to this state.
    AskState(u32),
    /// A DEVICE_RESET request.
    AskReset,
    /// A MIG_DATA_READ request of this many bytes.
    AskRead(u32),
    /// A GET MIG_DEVICE_STATE reply: the device is in this state.
    SawState(u32),
}

/// The decoded fields of one payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Decoded {
    /// ` key=value` words (each with its leading space).
    pub text: String,
    /// The same, one `(key, value)` a field (`("", word)` for a word without a key).
    pub fields: Vec<(String, String)>,
    /// The payload ended before its command's fixed part did.
    pub too_short: bool,
    /// What the decoder should remember.
    pub effect: Effect,
}

/// Words being written, as text and as fields. `cut` is how many bytes of the payload the
/// trace did not keep: they are the end of its data, which counts them.
#[derive(Default)]
pub(super) struct Text {
    text: String,
    fields: Vec<(String, String)>,
    cut: usize,
}

impl Text {
    pub(super) fn word(&mut self, w: impl Display) {
        let w = w.to_string();
        let _ = write!(self.text, " {w}");
        self.fields.push((String::new(), w));
    }

    pub(super) fn kv(&mut self, key: &str, value: impl Display) {
        let value = value.to_string();
        let _ = write!(self.text, " {key}={value}");
        self.fields.push((key.to_owned(), value));
    }

    pub(super) fn hex(&mut self, key: &str, value: u64) {
        self.kv(key, format_args!("{value:#x}"));
    }

    /// The data at the end of the payload: its first `max` bytes, and its whole length.
    pub(super) fn data(&mut self, data: &[u8], max: usize) {
        if !data.is_empty() {
            self.kv("data", preview(data, self.whole(data), max));
        }
    }

    /// The whole length of `tail`, a tail of the payload: what is here and what was cut.
    pub(super) fn whole(&self, tail: &[u8]) -> usize {
        tail.len().saturating_add(self.cut)
    }
}

fn finish(mut t: Text, r: Result<Effect, WireError>) -> Decoded {
    match r {
        Ok(effect) => Decoded { text: t.text, fields: t.fields, too_short: false, effect },
        // The payload is not short: the trace did not keep enough of it.
        Err(WireError::Truncated { what, .. }) if t.cut > 0 => {
            t.word(format_args!("(the trace kept too little for {what})"));
            Decoded { text: t.text, fields: t.fields, too_short: false, effect: Effect::None }
        }
        Err(WireError::Truncated { what, need, got }) => {
            t.word(format_args!("(payload too short for {what}: {got} of {need} bytes)"));
            Decoded { text: t.text, fields: t.fields, too_short: true, effect: Effect::None }
        }
    }
}

/// The fields of a request of `cmd` (None: a number the protocol does not have); `cut` bytes
/// of its payload were not kept.
pub(super) fn request(cmd: Option<Command>, p: &[u8], cut: usize, max: usize) -> Decoded {
    let mut t = Text { cut, ..Text::default() };
    let r = request_fields(cmd, p, &mut t, max);
    finish(t, r)
}

/// The fields of a successful reply; `asked` is the size its MIG_DATA_READ request asked for.
pub(super) fn reply(cmd: Option<Command>, p: &[u8], cut: usize, asked: Option<u32>, max: usize) -> Decoded {
    let mut t = Text { cut, ..Text::default() };
    let r = reply_fields(cmd, p, asked, &mut t, max);
    finish(t, r)
}

fn request_fields(cmd: Option<Command>, p: &[u8], t: &mut Text, max: usize) -> Result<Effect, WireError> {
    let Some(cmd) = cmd else {
        t.data(p, max);
        return Ok(Effect::None);
    };
    match cmd {
        Command::Version => version(p, t)?,
        Command::DmaMap => {
            let (m, _) = parse_prefix::<DmaMap>(p)?;
            t.hex("addr", m.addr);
            t.hex("size", m.size);
            t.kv("flags", bits(m.flags.into(), &DMA_MAP_FLAGS));
            t.hex("offset", m.offset);
        }
        Command::DmaUnmap => dma_unmap(p, t)?,
        Command::DeviceGetInfo => t.kv("argsz", parse_prefix::<DeviceInfo>(p)?.0.argsz),
        Command::DeviceGetRegionInfo => {
            let (r, _) = parse_prefix::<RegionInfo>(p)?;
            t.kv("index", region(r.index));
            t.kv("argsz", r.argsz);
        }
        Command::DeviceGetRegionIoFds => {
            let (r, _) = parse_prefix::<RegionIoFds>(p)?;
            t.kv("index", region(r.index));
            t.kv("argsz", r.argsz);
        }
        Command::DeviceGetIrqInfo => t.kv("index", irq(parse_prefix::<IrqInfo>(p)?.0.index)),
        Command::DeviceSetIrqs => {
            let (s, data) = parse_prefix::<SetIrqs>(p)?;
            t.kv("index", irq(s.index));
            t.kv("start", s.start);
            t.kv("count", s.count);
            t.kv("flags", bits(s.flags.into(), &SET_IRQS_FLAGS));
            t.data(data, max);
        }
        Command::RegionRead | Command::RegionWrite => region_access(p, t, max)?,
        Command::DmaRead | Command::DmaWrite => dma_access(p, t, max)?,
        Command::DeviceReset => return Ok(Effect::AskReset),
        Command::RegionWriteMulti => write_multi(p, t)?,
        Command::DeviceFeature => return feature::request(p, t, max),
        Command::MigDataRead => {
            let (m, _) = parse_prefix::<MigData>(p)?;
            t.kv("size", m.size);
            return Ok(Effect::AskRead(m.size));
        }
        Command::MigDataWrite => {
            let (m, data) = parse_prefix::<MigData>(p)?;
            t.kv("size", m.size);
            data_of_size(data, m.size, t, max);
        }
    }
    Ok(Effect::None)
}

fn reply_fields(
    cmd: Option<Command>,
    p: &[u8],
    asked: Option<u32>,
    t: &mut Text,
    max: usize,
) -> Result<Effect, WireError> {
    let Some(cmd) = cmd else {
        t.data(p, max);
        return Ok(Effect::None);
    };
    match cmd {
        Command::Version => version(p, t)?,
        Command::DmaUnmap => dma_unmap(p, t)?,
        Command::DeviceGetInfo => {
            let (i, _) = parse_prefix::<DeviceInfo>(p)?;
            t.kv("flags", bits(i.flags.into(), &DEVICE_FLAGS));
            t.kv("regions", i.num_regions);
            t.kv("irqs", i.num_irqs);
        }
        Command::DeviceGetRegionInfo => region_info(p, t)?,
        Command::DeviceGetRegionIoFds => {
            let (r, _) = parse_prefix::<RegionIoFds>(p)?;
            t.kv("index", region(r.index));
            t.kv("count", r.count);
            t.kv("argsz", r.argsz);
        }
        Command::DeviceGetIrqInfo => {
            let (i, _) = parse_prefix::<IrqInfo>(p)?;
            t.kv("index", irq(i.index));
            t.kv("count", i.count);
            t.kv("flags", bits(i.flags.into(), &IRQ_INFO_FLAGS));
        }
        Command::RegionRead | Command::RegionWrite => region_access(p, t, max)?,
        Command::DmaRead | Command::DmaWrite => dma_access(p, t, max)?,
        Command::RegionWriteMulti => t.kv("completed", parse_prefix::<WriteMultiHead>(p)?.0.wr_cnt),
        Command::DeviceFeature => return feature::reply(p, t, max),
        Command::MigDataRead => {
            let (m, data) = parse_prefix::<MigData>(p)?;
            t.kv("size", m.size);
            if let Some(asked) = asked {
                t.word(format_args!("of {asked}"));
                if m.size < asked {
                    t.word("short");
                }
            }
            data_of_size(data, m.size, t, max);
        }
        Command::DmaMap | Command::DeviceSetIrqs | Command::DeviceReset | Command::MigDataWrite => t.data(p, max),
    }
    Ok(Effect::None)
}

/// VERSION: `major.minor` and the capabilities JSON, whitespace removed.
fn version(p: &[u8], t: &mut Text) -> Result<(), WireError> {
    let (v, tail) = parse_prefix::<Version>(p)?;
    t.word(format_args!("{}.{}", v.major, v.minor));
    let json = tail.split(|b| *b == 0).next().unwrap_or_default();
    if json.iter().all(u8::is_ascii_whitespace) {
        t.word("(no capabilities)");
    } else if let Some(s) = std::str::from_utf8(json).ok().filter(|s| serde_json::from_str::<Value>(s).is_ok()) {
        t.word(minify(s));
    } else {
        t.word(format_args!("{:?} (capabilities are not JSON)", String::from_utf8_lossy(json)));
    }
    match Capabilities::parse(tail) {
        Err(VersionError::Json(e)) if e.is_data() => t.word(format_args!("(refused: {e})")),
        Err(VersionError::NotAString) => t.word("(refused: not one NUL-terminated string)"),
        Ok(_) | Err(VersionError::Json(_)) => {}
    }
    Ok(())
}

/// JSON text without the whitespace outside its strings (keys keep their order).
fn minify(s: &str) -> String {
    let (mut out, mut in_string, mut escaped) = (String::with_capacity(s.len()), false, false);
    for c in s.chars() {
        if in_string {
            in_string = escaped || c != '"';
            escaped = !escaped && c == '\\';
        } else if c.is_whitespace() {
            continue;
        } else {
            in_string = c == '"';
        }
        out.push(c);
    }
    out
}

fn dma_unmap(p: &[u8], t: &mut Text) -> Result<(), WireError> {
    let (u, _) = parse_prefix::<DmaUnmap>(p)?;
    t.hex("addr", u.addr);
    t.hex("size", u.size);
    if u.flags != 0 {
        t.kv("flags", bits(u.flags.into(), &DMA_UNMAP_FLAGS));
    }
    Ok(())
}

fn region_access(p: &[u8], t: &mut Text, max: usize) -> Result<(), WireError> {
    let (a, data) = parse_prefix::<RegionAccess>(p)?;
    t.kv("region", region(a.region));
    t.hex("offset", a.offset);
    t.kv("count", a.count);
    data_of_size(data, a.count, t, max);
    Ok(())
}

fn dma_access(p: &[u8], t: &mut Text, max: usize) -> Result<(), WireError> {
    let (a, data) = parse_prefix::<DmaAccess>(p)?;
    t.hex("addr", a.addr);
    t.kv("count", a.count);
    t.data(data, max);
    let have = t.whole(data);
    if have != 0 && u64::try_from(have).ok() != Some(a.count) {
        t.word(format_args!("(carries {have} bytes)"));
    }
    Ok(())
}

/// Data that should be `size` bytes: the first of them, and a note when there are more or fewer.
fn data_of_size(data: &[u8], size: u32, t: &mut Text, max: usize) {
    let size = usize::try_from(size).unwrap_or(usize::MAX);
    let have = t.whole(data);
    if !data.is_empty() {
        t.kv("data", preview(data.get(..size).unwrap_or(data), have.min(size), max));
    }
    if have > size {
        t.word(format_args!("(padded to {have} bytes)"));
    } else if have != 0 && have < size {
        t.word(format_args!("(carries {have} bytes)"));
    }
}

fn region_info(p: &[u8], t: &mut Text) -> Result<(), WireError> {
    let (r, _) = parse_prefix::<RegionInfo>(p)?;
    t.kv("index", region(r.index));
    t.hex("size", r.size);
    t.kv("flags", bits(r.flags.into(), &REGION_FLAGS));
    t.kv("cap_offset", r.cap_offset);
    t.kv("argsz", r.argsz);
    if r.offset != 0 {
        t.hex("offset", r.offset);
    }
    // The capability chain, as far as the reply holds it (a reply trimmed to a small argsz has none).
    let mut at = usize::try_from(r.cap_offset).unwrap_or(usize::MAX);
    for _ in 0..LIST_SHOWN {
        if at == 0 {
            break;
        }
        let Some(Ok((cap, rest))) = p.get(at..).map(parse_prefix::<CapHeader>) else { break };
        if cap.id == REGION_INFO_CAP_SPARSE_MMAP {
            let Ok((head, mut rest)) = parse_prefix::<SparseMmapHead>(rest) else { break };
            let mut areas = Vec::new();
            while let Ok((a, more)) = parse_prefix::<SparseArea>(rest) {
                if areas.len() == usize::try_from(head.nr_areas).unwrap_or(usize::MAX) {
                    break;
                }
                areas.push(format!("{:#x}+{:#x}", a.offset, a.size));
                rest = more;
            }
            t.kv("sparse", format_args!("[{}]", areas.join(",")));
        } else {
            t.kv("cap", format_args!("{}v{}", cap.id, cap.version));
        }
        // A chain runs forward: one that points back (or at itself) ends here.
        match usize::try_from(cap.next) {
            Ok(next) if next > at => at = next,
            _ => break,
        }
    }
    Ok(())
}

fn write_multi(p: &[u8], t: &mut Text) -> Result<(), WireError> {
    let (head, mut rest) = parse_prefix::<WriteMultiHead>(p)?;
    t.kv("writes", head.wr_cnt);
    for i in 0..head.wr_cnt {
        let (e, more) = parse_prefix::<WriteMultiEntry>(rest)?;
        rest = more;
        if i < LIST_SHOWN as u64 {
            let n = usize::try_from(e.count).unwrap_or(usize::MAX);
            t.word(format_args!(
                "{}+{:#x}={}",
                region(e.region),
                e.offset,
                preview(e.data.get(..n).unwrap_or(&e.data), n.min(e.data.len()), 8)
            ));
        } else if i == LIST_SHOWN as u64 {
            t.word("…");
        }
    }
    Ok(())
}
