//! The protocol model: what a server that follows the specification answers.
//!
//! The next-hop table is typed in from the specification's table (shared `vfio-user.md`,
//! "Migration state machine"), not derived: the server derives its own by a breadth-first
//! search over the arcs, so a mistake in either shows up as a disagreement. Where the
//! specification leaves a choice to the server, the model follows this project's documented
//! choices (the README's per-state table) and says so.

use std::collections::BTreeSet;

use nix::errno::Errno;
use vfu_server::wire::MigState;

/// States a client may ask for.
pub const SETTABLE: [MigState; 5] =
    [MigState::Stop, MigState::Running, MigState::StopCopy, MigState::Resuming, MigState::PreCopy];

/// The errnos a device may refuse RESUMING→STOP with when the data it got is not a whole,
/// valid stream (truncated, corrupted, of another version, of another configuration).
pub const INVALID_STREAM_ERRNOS: &[Errno] = &[Errno::ENODATA, Errno::EBADMSG, Errno::EPROTO, Errno::EINVAL];

/// [`INVALID_STREAM_ERRNOS`], or EIO from an arc planted to fail after the stream is taken.
pub const INVALID_STREAM_OR_EIO: &[Errno] = &[Errno::ENODATA, Errno::EBADMSG, Errno::EPROTO, Errno::EINVAL, Errno::EIO];

/// The errnos a device the harness does not know may refuse an arc with (its transition
/// callback's choice: a timer it cannot re-arm, a stream it does not take, a busy device).
pub const ARC_REFUSALS: &[Errno] =
    &[Errno::EINVAL, Errno::EIO, Errno::EBUSY, Errno::EAGAIN, Errno::ENODATA, Errno::EBADMSG, Errno::EPROTO];

/// The errnos a device may refuse migration data it cannot take with.
pub const DATA_REFUSALS: &[Errno] = &[Errno::EINVAL, Errno::EBADMSG, Errno::EPROTO, Errno::ENODATA, Errno::ENOSPC];

/// The specification's next hop from `from` toward `to` (`None`: the request fails).
pub fn next_hop(from: MigState, to: MigState) -> Option<MigState> {
    use MigState::*;
    Some(match (from, to) {
        (Stop, Running | PreCopy) => Running,
        (Stop, StopCopy) => StopCopy,
        (Stop, Resuming) => Resuming,
        (Running, Stop | StopCopy | Resuming) => Stop,
        (Running, PreCopy) => PreCopy,
        (StopCopy, Stop | Running | Resuming) => Stop,
        (Resuming, Stop | Running | StopCopy | PreCopy) => Stop,
        (PreCopy, Stop | Running | Resuming) => Running,
        (PreCopy, StopCopy) => StopCopy,
        _ => return None,
    })
}

/// What a request must get back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expected {
    /// Success.
    Ok,
    /// Failure with this errno.
    Errno(Errno),
    /// Failure with one of these errnos.
    OneOf(&'static [Errno]),
    /// Either success or failure with one of these: the specification leaves it open.
    Either(&'static [Errno]),
}

impl Expected {
    /// Whether `got` (`None` for success) is what was expected.
    pub fn admits(&self, got: Option<Errno>) -> bool {
        match (self, got) {
            (Expected::Ok, None) | (Expected::Either(_), None) => true,
            (Expected::Errno(e), Some(g)) => *e == g,
            (Expected::OneOf(es), Some(g)) | (Expected::Either(es), Some(g)) => es.contains(&g),
            _ => false,
        }
    }
}

impl std::fmt::Display for Expected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names = |es: &[Errno]| es.iter().map(|e| format!("{e:?}")).collect::<Vec<_>>().join(" or ");
        match self {
            Expected::Ok => f.write_str("success"),
            Expected::Errno(e) => write!(f, "{e:?}"),
            Expected::OneOf(es) => f.write_str(&names(es)),
            Expected::Either(es) => write!(f, "success or {}", names(es)),
        }
    }
}

/// What the migration data delivered in RESUMING amounts to, as far as the harness knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ResumeData {
    /// Nothing written yet.
    #[default]
    Nothing,
    /// The first `next` bytes of the outgoing stream `stream`, in order.
    Prefix {
        /// Which stream: the side it came from and its number there.
        stream: (u8, u64),
        /// Bytes of it delivered.
        next: u64,
    },
    /// One whole stream, read from a device of the same configuration to its end.
    Whole,
    /// Something that is not a whole stream (random bytes, a part of one).
    Invalid,
    /// A mix the model does not judge.
    Unknown,
}

/// The model of one device's migration side.
#[derive(Debug, Clone)]
pub struct DeviceModel {
    /// The current state.
    pub state: MigState,
    /// Whether the device offers PRE_COPY.
    pub pre_copy: bool,
    /// Arcs the device was told to refuse with EIO.
    pub failing_arcs: BTreeSet<(MigState, MigState)>,
    /// The data delivered since RESUMING was entered.
    pub resume: ResumeData,
    /// Bytes of an outgoing stream after which the device's reads fail with EIO.
    pub fail_read_after: Option<u64>,
    /// Whether the device's own callbacks decide arcs and data (a device the harness does not
    /// shadow): the protocol still forbids what it forbids, but a walk it allows may be
    /// refused anywhere along the way, and the data the device resumes from is its to judge.
    pub device_judges: bool,
}

/// The prediction for a SET of the device state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetPrediction {
    /// The reply.
    pub expected: Expected,
    /// The arcs the device is taken through, completed ones only.
    pub arcs: Vec<(MigState, MigState)>,
    /// The state afterwards.
    pub end: MigState,
}

impl SetPrediction {
    /// A walk refused where the device decides, found at `now` by reading the state back: the
    /// arcs completed before it, or `None` when `now` is not a state of the walk.
    pub fn stopped_at(&self, now: MigState) -> Option<SetPrediction> {
        let start = self.arcs.first().map_or(self.end, |a| a.0);
        let done = if now == start { 0 } else { self.arcs.iter().position(|a| a.1 == now)? + 1 };
        // The last hop completed means the target was reached: not a refusal.
        (done < self.arcs.len() || self.arcs.is_empty()).then(|| SetPrediction {
            expected: self.expected.clone(),
            arcs: self.arcs[..done].to_vec(),
            end: now,
        })
    }
}

impl Default for DeviceModel {
    fn default() -> Self {
        Self::new(true, BTreeSet::new())
    }
}

impl DeviceModel {
    /// A device in RUNNING.
    pub fn new(pre_copy: bool, failing_arcs: BTreeSet<(MigState, MigState)>) -> Self {
        Self {
            state: MigState::Running,
            pre_copy,
            failing_arcs,
            resume: ResumeData::Nothing,
            fail_read_after: None,
            device_judges: false,
        }
    }

    /// What SET of the raw state number `target` does, without doing it.
    pub fn predict_set(&self, target: u32) -> SetPrediction {
        let refuse = |errno| SetPrediction { expected: Expected::Errno(errno), arcs: Vec::new(), end: self.state };
        let Some(target) = MigState::from_u32(target).filter(|t| SETTABLE.contains(t)) else {
            return refuse(Errno::EINVAL);
        };
        if target == self.state {
            return SetPrediction { expected: Expected::Ok, arcs: Vec::new(), end: self.state };
        }
        if self.state == MigState::Error || (!self.pre_copy && target == MigState::PreCopy) {
            return refuse(Errno::EINVAL);
        }
        let mut at = self.state;
        let mut arcs = Vec::new();
        while at != target {
            let Some(next) = next_hop(at, target) else {
                return SetPrediction { expected: Expected::Errno(Errno::EINVAL), arcs, end: at };
            };
            if self.failing_arcs.contains(&(at, next)) {
                return SetPrediction { expected: Expected::Errno(Errno::EIO), arcs, end: at };
            }
            if (at, next) == (MigState::Resuming, MigState::Stop) && !self.device_judges {
                match self.resume {
                    ResumeData::Whole => {}
                    ResumeData::Nothing | ResumeData::Invalid | ResumeData::Prefix { .. } => {
                        return SetPrediction { expected: Expected::OneOf(INVALID_STREAM_ERRNOS), arcs, end: at };
                    }
                    ResumeData::Unknown => {
                        // Judged by the device; the model follows what it answered. A stream it
                        // takes still meets the arcs planted to fail further on.
                        let rest = DeviceModel { state: MigState::Stop, resume: ResumeData::Whole, ..self.clone() };
                        let after = rest.predict_set(target as u32);
                        let expected = if after.expected == Expected::Ok {
                            Expected::Either(INVALID_STREAM_ERRNOS)
                        } else {
                            Expected::OneOf(INVALID_STREAM_OR_EIO)
                        };
                        return SetPrediction { expected, arcs, end: at };
                    }
                }
            }
            arcs.push((at, next));
            at = next;
        }
        // A device that judges its own arcs may refuse any of them; where it stopped is then
        // read back (the runner's [`SetPrediction::stopped_at`]).
        let expected = if self.device_judges { Expected::Either(ARC_REFUSALS) } else { Expected::Ok };
        SetPrediction { expected, arcs, end: at }
    }

    /// Applies what the server answered to a SET of `target` predicted as `p`: success puts
    /// the device at `target`, a refusal where the prediction says. (A reply the prediction
    /// did not admit is the caller's to report; it then reads the state back.)
    pub fn apply_set(&mut self, target: u32, p: &SetPrediction, ok: bool) {
        let end = if ok { MigState::from_u32(target).unwrap_or(p.end) } else { p.end };
        if end == MigState::Resuming && self.state != MigState::Resuming {
            self.resume = ResumeData::Nothing;
        }
        self.state = end;
    }

    /// DEVICE_RESET: RUNNING from anywhere.
    pub fn reset(&mut self) {
        self.state = MigState::Running;
        self.resume = ResumeData::Nothing;
    }

    /// A region write (not to configuration space) in the current state.
    pub fn region_write(&self) -> Expected {
        match self.state {
            MigState::Error => Expected::Errno(Errno::EIO),
            MigState::Stop | MigState::StopCopy | MigState::Resuming => Expected::Errno(Errno::EBUSY),
            _ => Expected::Ok,
        }
    }

    /// A region read in the current state.
    pub fn region_read(&self) -> Expected {
        if self.state == MigState::Error { Expected::Errno(Errno::EIO) } else { Expected::Ok }
    }

    /// MIG_DATA_READ in the current state.
    pub fn data_read(&self) -> Expected {
        match self.state {
            MigState::PreCopy | MigState::StopCopy => Expected::Ok,
            _ => Expected::Errno(Errno::EINVAL),
        }
    }

    /// MIG_DATA_READ of `ask` bytes when `offset` bytes of the outgoing stream were read: a
    /// read that would pass the failure mark fails whole, and every read after it; one that
    /// only might (the device may have fewer bytes to give) may go either way.
    pub fn data_read_at(&self, offset: u64, ask: u64) -> Expected {
        match (self.data_read(), self.fail_read_after) {
            (Expected::Ok, Some(mark)) if offset >= mark => Expected::Errno(Errno::EIO),
            (Expected::Ok, Some(mark)) if offset + ask > mark => Expected::Either(&[Errno::EIO]),
            (want, _) => want,
        }
    }

    /// MIG_DATA_WRITE in the current state: in RESUMING, a device that judges its own data
    /// may refuse what it cannot take (more than its state, say).
    pub fn data_write(&self) -> Expected {
        match self.state {
            MigState::Resuming if self.device_judges => Expected::Either(DATA_REFUSALS),
            MigState::Resuming => Expected::Ok,
            _ => Expected::Errno(Errno::EINVAL),
        }
    }

    /// Records `len` bytes of outgoing stream `stream` from offset `start` written in
    /// RESUMING (`ended`: they reach the end of that stream): whole once every byte from the
    /// first to the last came, in order.
    pub fn wrote_stream(&mut self, stream: (u8, u64), start: u64, len: u64, ended: bool) {
        let next = match self.resume {
            ResumeData::Nothing if start == 0 => Some(len),
            ResumeData::Prefix { stream: s, next } if s == stream && start == next => Some(next + len),
            _ => None,
        };
        self.resume = match next {
            Some(_) if ended => ResumeData::Whole,
            Some(next) => ResumeData::Prefix { stream, next },
            None if self.resume == ResumeData::Whole => ResumeData::Unknown,
            None => ResumeData::Invalid,
        };
    }

    /// Records data written in RESUMING.
    pub fn wrote_data(&mut self, what: ResumeData) {
        self.resume = match (self.resume, what) {
            (ResumeData::Nothing, w) => w,
            (ResumeData::Invalid, _) | (_, ResumeData::Invalid) => ResumeData::Invalid,
            _ => ResumeData::Unknown,
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use MigState::*;
    use pretty_assertions::assert_eq;

    fn model(pre_copy: bool) -> DeviceModel {
        DeviceModel::new(pre_copy, BTreeSet::new())
    }

    fn at(state: MigState) -> DeviceModel {
        DeviceModel { state, ..model(true) }
    }

    #[test]
    fn stop_copy_to_pre_copy_is_refused_with_the_state_unchanged() {
        let p = at(StopCopy).predict_set(PreCopy as u32);
        assert_eq!(p, SetPrediction { expected: Expected::Errno(Errno::EINVAL), arcs: vec![], end: StopCopy });
    }

    #[test]
    fn running_to_resuming_goes_through_stop() {
        let p = model(true).predict_set(Resuming as u32);
        assert_eq!(p.arcs, vec![(Running, Stop), (Stop, Resuming)]);
        assert_eq!(p.end, Resuming);
    }

    #[test]
    fn pre_copy_to_stop_goes_through_running_not_stop_copy() {
        assert_eq!(at(PreCopy).predict_set(Stop as u32).arcs, vec![(PreCopy, Running), (Running, Stop)]);
    }

    #[test]
    fn error_and_p2p_states_cannot_be_requested() {
        for target in [Error as u32, RunningP2p as u32, PreCopyP2p as u32, 8, u32::MAX] {
            assert_eq!(model(true).predict_set(target).expected, Expected::Errno(Errno::EINVAL), "{target}");
        }
    }

    #[test]
    fn the_same_state_twice_succeeds_without_an_arc() {
        let p = at(PreCopy).predict_set(PreCopy as u32);
        assert_eq!((p.expected, p.arcs), (Expected::Ok, vec![]));
    }

    #[test]
    fn a_failing_arc_stops_the_walk_at_the_last_completed_hop() {
        let m = DeviceModel::new(true, [(Stop, Resuming)].into());
        let p = m.predict_set(Resuming as u32);
        assert_eq!(p, SetPrediction { expected: Expected::Errno(Errno::EIO), arcs: vec![(Running, Stop)], end: Stop });
    }

    #[test]
    fn resuming_to_stop_without_a_whole_stream_is_refused() {
        let p = at(Resuming).predict_set(Running as u32);
        assert_eq!((p.expected, p.end), (Expected::OneOf(INVALID_STREAM_ERRNOS), Resuming));
        let mut whole = at(Resuming);
        whole.wrote_data(ResumeData::Whole);
        assert_eq!(whole.predict_set(Running as u32).arcs, vec![(Resuming, Stop), (Stop, Running)]);
    }

    #[test]
    fn a_stream_delivered_in_pieces_in_order_is_whole() {
        let mut m = at(Resuming);
        m.wrote_stream((0, 1), 0, 100, false);
        assert_eq!(m.resume, ResumeData::Prefix { stream: (0, 1), next: 100 });
        m.wrote_stream((0, 1), 100, 50, true);
        assert_eq!(m.resume, ResumeData::Whole);
        let mut gap = at(Resuming);
        gap.wrote_stream((0, 1), 0, 100, false);
        gap.wrote_stream((0, 1), 150, 50, true);
        assert_eq!(gap.resume, ResumeData::Invalid);
        let mut other = at(Resuming);
        other.wrote_stream((0, 1), 0, 100, false);
        other.wrote_stream((0, 2), 100, 50, true);
        assert_eq!(other.resume, ResumeData::Invalid);
    }

    #[test]
    fn without_pre_copy_pre_copy_is_refused() {
        assert_eq!(model(false).predict_set(PreCopy as u32).expected, Expected::Errno(Errno::EINVAL));
    }

    #[test]
    fn every_settable_pair_is_reachable_but_stop_copy_to_pre_copy() {
        for from in SETTABLE {
            for to in SETTABLE {
                let mut m = at(from);
                m.resume = ResumeData::Whole;
                let p = m.predict_set(to as u32);
                let refused = (from, to) == (StopCopy, PreCopy);
                assert_eq!(p.expected == Expected::Ok, !refused, "{from:?} -> {to:?}");
                assert!(p.arcs.len() <= 3, "{from:?} -> {to:?} takes {:?}", p.arcs);
            }
        }
    }

    #[test]
    fn a_device_that_judges_may_refuse_any_walk_the_protocol_allows() {
        let mut m = at(Resuming);
        m.device_judges = true;
        let p = m.predict_set(Running as u32);
        assert_eq!(p.expected, Expected::Either(ARC_REFUSALS));
        assert_eq!(p.arcs, vec![(Resuming, Stop), (Stop, Running)]);
        assert_eq!(m.data_write(), Expected::Either(DATA_REFUSALS));
        let mut stop_copy = at(StopCopy);
        stop_copy.device_judges = true;
        assert_eq!(stop_copy.predict_set(PreCopy as u32).expected, Expected::Errno(Errno::EINVAL));
    }

    #[test]
    fn a_refused_walk_read_back_keeps_the_arcs_before_the_state_found() {
        let mut m = at(Resuming);
        m.device_judges = true;
        let p = m.predict_set(Running as u32);
        let stopped = p.stopped_at(Stop).expect("STOP is on the walk");
        assert_eq!((stopped.arcs, stopped.end), (vec![(Resuming, Stop)], Stop));
        assert_eq!(p.stopped_at(Resuming).map(|s| s.arcs), Some(vec![]));
        assert_eq!(p.stopped_at(PreCopy), None, "not a state of the walk");
        assert_eq!(p.stopped_at(Running), None, "the target: the walk was not refused");
    }

    #[test]
    fn stopped_states_refuse_region_writes_with_ebusy() {
        for s in [Stop, StopCopy, Resuming] {
            assert_eq!(at(s).region_write(), Expected::Errno(Errno::EBUSY));
        }
        assert_eq!(at(Error).region_read(), Expected::Errno(Errno::EIO));
        assert_eq!(at(PreCopy).region_write(), Expected::Ok);
    }
}
