//! The protocol as an executable model: what any conforming vfio-user server answers to any
//! request, given everything it was sent and everything that happened to it.
//!
//! The model reads the conversation (every request and reply of the message trace) and the
//! events the runner tells it of (a server started with its device hooks, a client connected or
//! gone, a server killed, messages damaged on purpose). Before each reply it predicts the
//! outcome from the specification — and the project's documented choices where the
//! specification leaves room (README, "Behaviour worth knowing") — and after it checks the
//! reply's shape and applies what the request promised: the migration state and its walk,
//! dirty logging and its ranges, DMA mappings, the migration data stream. A reply the prediction does not admit is a finding.
//!
//! It knows nothing of a device's registers: what a device is (its regions, IRQ indexes,
//! whether it migrates) it learns from the server's own answers and holds the server to them.
//! Where it cannot know — the device judges the stream it resumes from, messages were damaged
//! on purpose — it admits either outcome or stops judging until the next connection, and says
//! which in [`ServerModel::suspended`].
//!
//! # Passive judging
//!
//! [`ServerModel::passive`] judges a conversation it only watches (`miglab tap` between any
//! client and any server): nobody tells it what the device is or what was planted in it, and
//! nobody asks the questions the runner asks at connect. It learns only from what passes by,
//! and what it cannot know it admits rather than accuses:
//!
//! | what | the runner's model | passive |
//! |---|---|---|
//! | migration state at connect | RUNNING (a fresh server; a disconnect resets the device) | unknown until a GET of the state or a successful SET (success puts the device at the target) |
//! | PRE_COPY offered | told at start | learnt from the first GET MIGRATION reply |
//! | an arc, a data read, a reset refused by the device | only the planted ones | any refusal admitted (success still judged and applied) |
//! | no `migration` in VERSION | DEVICE_FEATURE refused with ENOTTY | nothing concluded |
//! | region writes in STOP, STOP_COPY, RESUMING | EBUSY (this project's choice) | refusal or success (the specification leaves it open) |
//! | RESUMING→STOP | refused without a whole stream | the device judges what it got |
//!
//! A device the runner does not shadow (the `generic` and `libvfio-user-sample` profiles) is
//! judged like the passive column for what its callbacks decide (arcs, its data, resets,
//! writes while stopped), and like the runner's column for everything else; the runner reads
//! the state back after a refused walk.
//!
//! Device facts (regions, IRQ indexes) are learnt from the replies that describe them, as in
//! the runner's model; the tap starts a fresh model for a new server process.

pub mod deviation;
pub mod matrix;
pub mod msg;
mod predict;
mod reply;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::collections::BTreeSet;

use vfu_server::wire::{Command, DMA_MAP_READ, DMA_MAP_WRITE, MigState};

/// `max_dma_maps` when VERSION does not say (the specification's default).
const DEFAULT_MAX_DMA_MAPS: u32 = 65535;

pub use matrix::Matrix;
pub use msg::{Dir, Msg};
use predict::{Effect, Prediction};

use crate::oracle::{DeviceModel, DirtyModel};

/// Something that happened to a server outside its conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A server (re)started: a device at power-on, with the faults its hooks plant.
    ServerStarted {
        /// Whether the device offers PRE_COPY; `None` when the harness does not know the
        /// device: the first migration flags it reports are then believed.
        pre_copy: Option<bool>,
        /// Arcs the device refuses with EIO.
        failing_arcs: BTreeSet<(MigState, MigState)>,
        /// Bytes of a data stream after which its reads fail with EIO.
        fail_read_after: Option<u64>,
        /// Whether the device's callbacks decide arcs and data ([`DeviceModel::device_judges`]):
        /// a device the harness does not shadow.
        device_judges: bool,
    },
    /// A client connected (VERSION comes next).
    Connected,
    /// The client went away: the server drops its logging, mappings and eventfds and resets a
    /// device that is not RUNNING.
    Disconnected,
    /// The server was killed: nothing is judged until it starts again.
    ServerKilled,
    /// The guest reset the device through its own registers: the protocol's state stays.
    GuestReset,
    /// Messages will be damaged on purpose (a proxy fault): the conversation cannot be judged
    /// until the next connection.
    Damaged,
}

impl Event {
    /// The name of the event in the event matrix, if it is one of its columns.
    fn column(&self) -> Option<&'static str> {
        match self {
            Event::Disconnected => Some("client-disconnect"),
            Event::ServerKilled => Some("server-kill"),
            Event::GuestReset => Some("guest-reset"),
            _ => None,
        }
    }
}

/// A request that awaits its reply.
#[derive(Debug, Clone)]
struct Pending {
    req: Msg,
    prediction: Prediction,
}

/// What a region is, as the server described it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct RegionSeen {
    size: u64,
    flags: u32,
}

/// The model of one server and its current client.
#[derive(Debug, Clone)]
pub struct ServerModel {
    negotiated: bool,
    /// The server's `max_data_xfer_size`, and the smaller of both sides'.
    server_xfer: u32,
    xfer: u32,
    /// The server advertised migration in VERSION.
    migratable: Option<bool>,
    /// The server offered REGION_WRITE_MULTI in VERSION.
    write_multiple: bool,
    /// The migration side: state, walk, resume data, planted arc faults.
    pub mig: DeviceModel,
    /// Whether the migration state is known (it is not after a reply the model did not admit).
    mig_known: bool,
    /// Whether the device's PRE_COPY offer is known (else the first migration flags teach it).
    pre_copy_known: bool,
    /// Dirty logging (its protocol side; the truth of writes is the runner's).
    dirty: DirtyModel,
    /// The DMA mappings, as a table whose first free entry each new one takes (see
    /// [`ServerModel::map_table`]).
    table: Vec<Option<(u64, u64)>>,
    /// Each mapping's DMA_MAP flags (READ, WRITE): what the server may do there by message.
    map_flags: BTreeMap<(u64, u64), u32>,
    /// The mappings the server takes at most (`max_dma_maps` of its VERSION reply).
    max_dma_maps: u32,
    device: Option<(u32, u32, u32)>,
    regions: BTreeMap<u32, RegionSeen>,
    irqs: BTreeMap<u32, (u32, u32)>,
    /// Bytes read of the current outgoing data stream.
    out_offset: u64,
    /// Whether a read of the current outgoing stream failed with EIO past the device's
    /// planted failure mark: the device fails every later read of that stream too.
    out_failed: bool,
    pending: BTreeMap<u16, Pending>,
    suspended: Option<&'static str>,
    findings: Vec<String>,
    deviations: Vec<deviation::Seen>,
    /// The message being judged, for the findings' text.
    judging: String,
    /// What this server's conversation reached.
    pub matrix: Matrix,
    /// Judging a conversation only watched (see the module's "Passive judging").
    passive: bool,
}

impl Default for ServerModel {
    fn default() -> Self {
        Self::new()
    }
}

impl ServerModel {
    /// A server whose device is at power-on and that has no client yet.
    pub fn new() -> Self {
        Self {
            negotiated: false,
            server_xfer: vfu_server::wire::DEFAULT_MAX_DATA_XFER_SIZE,
            xfer: vfu_server::wire::DEFAULT_MAX_DATA_XFER_SIZE,
            migratable: None,
            write_multiple: false,
            mig: DeviceModel::default(),
            pre_copy_known: true,
            mig_known: true,
            dirty: DirtyModel::default(),
            table: Vec::new(),
            map_flags: BTreeMap::new(),
            max_dma_maps: DEFAULT_MAX_DMA_MAPS,
            device: None,
            regions: BTreeMap::new(),
            irqs: BTreeMap::new(),
            out_offset: 0,
            out_failed: false,
            pending: BTreeMap::new(),
            suspended: Some("no server started yet"),
            findings: Vec::new(),
            deviations: Vec::new(),
            judging: String::new(),
            matrix: Matrix::default(),
            passive: false,
        }
    }

    /// A model that only watches a conversation between any client and any server: it judges
    /// from the first connection on, learns the device from the replies it sees, and admits
    /// what it cannot know (the module's "Passive judging").
    pub fn passive() -> Self {
        Self { suspended: None, passive: true, mig_known: false, pre_copy_known: false, ..Self::new() }
    }

    /// Whether this model judges passively.
    pub fn is_passive(&self) -> bool {
        self.passive
    }

    /// Whether the device, not the protocol, decides what the model cannot know: a model that
    /// only watches, or a device the harness does not shadow.
    fn device_decides(&self) -> bool {
        self.passive || self.mig.device_judges
    }

    /// Why the model does not judge now, if it does not.
    pub fn suspended(&self) -> Option<&'static str> {
        self.suspended
    }

    /// The known deviations since the last call: replies the model admits only as the
    /// tolerated deviations of [`deviation`].
    pub fn take_deviations(&mut self) -> Vec<deviation::Seen> {
        std::mem::take(&mut self.deviations)
    }

    /// The findings since the last call: replies the model did not admit.
    pub fn take_findings(&mut self) -> Vec<String> {
        std::mem::take(&mut self.findings)
    }

    /// The DMA mappings the server must hold.
    pub fn mappings(&self) -> Vec<(u64, u64)> {
        self.maps().collect()
    }

    /// The DMA mappings the server must hold, `(iova, len)` each.
    fn maps(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.table.iter().flatten().copied()
    }

    /// The mappings the server promised to take at most (`max_dma_maps` in VERSION, else the
    /// specification's default).
    pub fn max_dma_maps(&self) -> u32 {
        self.max_dma_maps
    }

    /// The DMA mappings the server must hold, in a table whose first free entry each new
    /// mapping takes and that an unmap leaves empty: where a device that keeps its DMA
    /// regions so (libvfio-user's sample server) holds each.
    pub fn map_table(&self) -> &[Option<(u64, u64)>] {
        &self.table
    }

    /// Whether the server must be logging, and the ranges it logs.
    pub fn logging(&self) -> Option<Vec<(u64, u64)>> {
        self.dirty.logging().then(|| self.dirty.logged_ranges())
    }

    /// The device as DEVICE_GET_INFO described it: flags, regions, IRQ indexes.
    pub fn device(&self) -> Option<(u32, u32, u32)> {
        self.device
    }

    /// The first region that is plain memory (readable, writable, mappable): index and size.
    pub fn memory_region(&self) -> Option<(u32, u64)> {
        use vfu_server::wire::{REGION_FLAG_MMAP, REGION_FLAG_READ, REGION_FLAG_WRITE};
        let all = REGION_FLAG_READ | REGION_FLAG_WRITE | REGION_FLAG_MMAP;
        self.regions.iter().find(|(_, r)| r.flags & all == all && r.size >= 8).map(|(&i, r)| (i, r.size))
    }

    /// An IRQ index with vectors whose vectors may be masked.
    pub fn maskable_index(&self) -> Option<u32> {
        use vfu_server::wire::IRQ_INFO_MASKABLE;
        self.irqs
            .iter()
            .find(|(i, (count, flags))| **i < 3 && *count > 0 && flags & IRQ_INFO_MASKABLE != 0)
            .map(|(&i, _)| i)
    }

    /// The IRQ indexes the server described: `(index, vectors, IRQ_INFO flags)`.
    pub fn irq_indexes(&self) -> Vec<(u32, u32, u32)> {
        self.irqs.iter().map(|(&i, &(count, flags))| (i, count, flags)).collect()
    }

    /// The page size the server logs at, while it logs.
    pub fn logging_page_size(&self) -> Option<u64> {
        self.dirty.page_size()
    }

    /// The state the device must be in, if the model knows it.
    pub fn state(&self) -> Option<MigState> {
        self.mig_known.then_some(self.mig.state)
    }

    /// The runner's word on the migration state (read back after damaged messages).
    pub fn adopt_state(&mut self, state: MigState) {
        self.mig.state = state;
        self.mig_known = true;
    }

    fn state_name(&self) -> &'static str {
        if self.mig_known { crate::run::state_name(self.mig.state) } else { "UNKNOWN" }
    }

    /// Something happened to the server.
    pub fn event(&mut self, event: Event) {
        if let Some(column) = event.column()
            && self.suspended.is_none()
        {
            self.matrix.event(self.state_name(), column);
        }
        match event {
            Event::ServerStarted { pre_copy, failing_arcs, fail_read_after, device_judges } => {
                let matrix = std::mem::take(&mut self.matrix);
                *self = Self { matrix, suspended: None, ..Self::new() };
                self.mig = DeviceModel::new(pre_copy.unwrap_or(false), failing_arcs);
                self.pre_copy_known = pre_copy.is_some();
                self.mig.fail_read_after = fail_read_after;
                self.mig.device_judges = device_judges;
            }
            Event::Connected => {
                // The previous client's requests will never be answered on this connection.
                self.pending.clear();
                self.negotiated = false;
                if self.suspended == Some("messages damaged on purpose") {
                    self.suspended = None;
                }
            }
            Event::Disconnected => {
                self.pending.clear();
                self.negotiated = false;
                self.table.clear();
                self.map_flags.clear();
                self.dirty.forget_all();
                // A device caught anywhere but RUNNING is reset to RUNNING, and one that was
                // RUNNING stays: RUNNING either way, whatever the damaged messages did.
                self.mig.reset();
                // What a server does to its device when the client leaves is its own choice:
                // a model that only watches learns the state again from the next replies.
                self.mig_known = !self.passive;
                self.new_stream();
            }
            Event::ServerKilled => self.suspended = Some("the server is not running"),
            Event::GuestReset => {}
            Event::Damaged => self.suspended = Some("messages damaged on purpose"),
        }
    }

    /// The next message of the conversation.
    pub fn message(&mut self, m: Msg) {
        match (m.dir, m.is_request()) {
            (Dir::ToServer, true) => {
                let prediction = self.predict(&m);
                if m.no_reply() {
                    // Executed but never answered: its effect is applied as predicted when the
                    // prediction is certain, and the model stops knowing otherwise.
                    if prediction.expected == crate::oracle::Expected::Ok {
                        self.apply(&m, &prediction, None, None);
                    }
                }
                self.pending.insert(m.msg_id, Pending { req: m, prediction });
            }
            (Dir::ToClient, false) if m.is_reply() => self.reply(m),
            (Dir::ToClient, true) => self.server_request(&m),
            _ => {}
        }
    }

    fn deviation(&mut self, deviation: deviation::Deviation, text: String) {
        if self.suspended.is_none() {
            let text = if self.judging.is_empty() { text } else { format!("{}: {text}", self.judging) };
            self.deviations.push(deviation::Seen { deviation, text });
        }
    }

    fn finding(&mut self, text: String) {
        if self.suspended.is_none() {
            self.findings.push(text);
        }
    }

    fn reply(&mut self, reply: Msg) {
        let Some(Pending { req, prediction }) = self.pending.remove(&reply.msg_id) else {
            self.finding(format!("a reply (msg_id {}, cmd {}) to no request awaiting one", reply.msg_id, reply.cmd));
            return;
        };
        let what = format!("{} msg_id {}", prediction.op, req.msg_id);
        if reply.cmd != req.cmd {
            self.finding(format!("{what}: the reply carries command {} instead of {}", reply.cmd, req.cmd));
        }
        if req.no_reply() {
            self.finding(format!("{what}: a NO_REPLY request was answered"));
            return;
        }
        let got = reply.errno();
        let outcome = got.map_or("ok".to_string(), |e| format!("{e:?}"));
        if self.suspended.is_none() {
            self.matrix.reply(prediction.state, &prediction.op, &outcome);
        }
        if got.is_none() && req.nfds > 0 && !msg::takes_fds(req.cmd) {
            // Fds where none go are refused by the project's documented choice; a server that
            // serves the request and ignores them deviates, and what it served is applied.
            let plain = self.predict(&Msg { nfds: 0, ..req.clone() });
            if plain.expected.admits(None) {
                self.judging = what.clone();
                self.deviation(deviation::Deviation::UnexpectedFdsAccepted, format!("served with {} fd(s)", req.nfds));
                self.apply(&req, &plain, Some(&reply), None);
                return;
            }
        }
        if got.is_none() && !prediction.expected.admits(None) && self.set_irqs_lenient(&req) {
            self.judging = what.clone();
            let text = "served where the specification refuses it: an undefined flag, a mask of an index without MASKABLE, or a \
                 mask with eventfds";
            self.deviation(deviation::Deviation::SetIrqsLenient, text.into());
            return;
        }
        if got.is_none() && self.is_identical_remap(&req, &prediction) {
            self.judging = what.clone();
            self.deviation(deviation::Deviation::DmaRemapAccepted, "an identical re-map was accepted".into());
            return;
        }
        if !prediction.expected.admits(got) {
            let shown = if got.is_some() { outcome.clone() } else { "success".into() };
            let text = format!(
                "{what} in {}: the server answered {shown}; the specification's model predicts {}",
                prediction.state, prediction.expected
            );
            if got.is_some() && prediction.expected != crate::oracle::Expected::Ok {
                // Refused where the specification refuses, with another errno: what it
                // promises still holds.
                self.judging.clear();
                self.deviation(deviation::Deviation::OtherErrno, text);
            } else {
                self.finding(text);
                self.lost_track(&prediction.effect);
            }
        }
        if got.is_none() {
            self.judging = what.clone();
            for problem in self.check_reply(&req, &prediction, &reply) {
                self.finding(format!("{what}: {problem}"));
            }
        }
        self.apply(&req, &prediction, Some(&reply), got);
    }

    /// A DMA_MAP of exactly a range mapped now (refused with EEXIST by the specification;
    /// accepted, changing nothing, by the reference library).
    fn is_identical_remap(&self, req: &Msg, prediction: &Prediction) -> bool {
        req.cmd == vfu_server::wire::Command::DmaMap as u16
            && prediction.expected == crate::oracle::Expected::Errno(nix::errno::Errno::EEXIST)
            && matches!((req.u64_at(16), req.u64_at(24)), (Some(a), Some(l)) if self.maps().any(|m| m == (a, l)))
    }

    /// After a reply the model did not admit, what the request touched is no longer known.
    fn lost_track(&mut self, effect: &Effect) {
        if matches!(effect, Effect::SetState(..) | Effect::Reset) {
            self.mig_known = false;
        }
    }

    /// A DMA request of the server's: it may only reach memory the client mapped, and only as
    /// the mapping allows (DMA_WRITE where it was mapped WRITE, DMA_READ where READ).
    fn server_request(&mut self, m: &Msg) {
        let (Some(addr), Some(count)) = (m.u64_at(0), m.u64_at(8)) else {
            self.finding(format!("server request cmd {} msg_id {}: payload too short", m.cmd, m.msg_id));
            return;
        };
        let inside = self.maps().find(|&(iova, len)| {
            addr >= iova && addr.checked_add(count).is_some_and(|end| end <= iova.saturating_add(len))
        });
        let Some(mapping) = inside else {
            self.finding(format!(
                "the server asked for DMA (cmd {}) of {addr:#x}+{count:#x}, outside every mapped region",
                m.cmd
            ));
            return;
        };
        let flags = self.map_flags.get(&mapping).copied().unwrap_or(DMA_MAP_READ | DMA_MAP_WRITE);
        let (what, need) = match Command::from_u16(m.cmd) {
            Some(Command::DmaWrite) => ("DMA_WRITE", DMA_MAP_WRITE),
            Some(Command::DmaRead) => ("DMA_READ", DMA_MAP_READ),
            _ => return,
        };
        if flags & need == 0 {
            let (iova, len) = mapping;
            self.finding(format!(
                "the server sent {what} of {addr:#x}+{count:#x} into {iova:#x}+{len:#x}, which the client mapped \
                 without {}",
                if need == DMA_MAP_WRITE { "WRITE" } else { "READ" }
            ));
        }
    }
}
