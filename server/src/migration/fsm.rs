//! The migration state machine: direct arcs, the path rules, and the next-hop table derived
//! from them.
//!
//! ```mermaid
//! stateDiagram-v2
//!     RUNNING --> STOP
//!     STOP --> RUNNING
//!     RUNNING --> PRE_COPY
//!     PRE_COPY --> RUNNING
//!     PRE_COPY --> STOP_COPY
//!     STOP --> STOP_COPY
//!     STOP_COPY --> STOP
//!     STOP --> RESUMING
//!     RESUMING --> STOP
//!     ERROR --> RUNNING: DEVICE_RESET only
//! ```
//!
//! Any other (current, target) pair is reached by the shortest path of direct arcs whose
//! interior states are not in the saving group (PRE_COPY, STOP_COPY); STOP_COPY→PRE_COPY is
//! refused although such a path exists (a stream that has ended cannot be reopened), ERROR and
//! the P2P states cannot be requested, and a pair with no path is refused. A device without
//! PRE_COPY support loses every arc that touches PRE_COPY. Nothing here is typed by hand: the
//! table is computed by breadth-first search over [`DIRECT_ARCS`] when a server starts.

use crate::wire::MigState;

/// The direct arcs of the specification, in the order a search considers them.
pub const DIRECT_ARCS: [(MigState, MigState); 9] = [
    (MigState::Running, MigState::Stop),
    (MigState::StopCopy, MigState::Stop),
    (MigState::Resuming, MigState::Stop),
    (MigState::PreCopy, MigState::Running),
    (MigState::Stop, MigState::Running),
    (MigState::Running, MigState::PreCopy),
    (MigState::Stop, MigState::StopCopy),
    (MigState::PreCopy, MigState::StopCopy),
    (MigState::Stop, MigState::Resuming),
];

/// The states a client may request and a device may be in (ERROR only as a result).
pub const STATES: [MigState; 6] =
    [MigState::Error, MigState::Stop, MigState::Running, MigState::StopCopy, MigState::Resuming, MigState::PreCopy];

/// The states a path may start or end in but not pass through.
pub fn in_saving_group(s: MigState) -> bool {
    matches!(s, MigState::PreCopy | MigState::StopCopy)
}

/// Pairs refused even though a path exists.
const FORBIDDEN: [(MigState, MigState); 1] = [(MigState::StopCopy, MigState::PreCopy)];

fn slot(s: MigState) -> Option<usize> {
    STATES.iter().position(|x| *x == s)
}

/// The next hop for every (current, target) pair, derived from the arcs and the path rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NextHops {
    /// `table[current][target]`: the state to move to next, `None` when refused.
    table: [[Option<MigState>; STATES.len()]; STATES.len()],
    arcs: Vec<(MigState, MigState)>,
}

impl NextHops {
    /// Derives the table for a device that does (or does not) support PRE_COPY.
    pub fn derive(pre_copy: bool) -> Self {
        let arcs: Vec<_> = DIRECT_ARCS
            .iter()
            .copied()
            .filter(|(a, b)| pre_copy || (*a != MigState::PreCopy && *b != MigState::PreCopy))
            .collect();
        let mut table = [[None; STATES.len()]; STATES.len()];
        for from in STATES {
            for to in STATES {
                if let (Some(i), Some(j)) = (slot(from), slot(to))
                    && let Some(row) = table.get_mut(i)
                    && let Some(cell) = row.get_mut(j)
                {
                    *cell = Self::search(&arcs, from, to).and_then(|p| p.get(1).copied());
                }
            }
        }
        Self { table, arcs }
    }

    /// The shortest admissible path from `from` to `to`, both included; `None` when the pair
    /// is refused. Ties are broken by the order of [`DIRECT_ARCS`].
    fn search(arcs: &[(MigState, MigState)], from: MigState, to: MigState) -> Option<Vec<MigState>> {
        if from == to || from == MigState::Error || to == MigState::Error || FORBIDDEN.contains(&(from, to)) {
            return None;
        }
        let mut prev: Vec<(MigState, MigState)> = Vec::new();
        let mut frontier = vec![from];
        let mut seen = vec![from];
        while !frontier.is_empty() {
            let mut next = Vec::new();
            for s in frontier {
                if s != from && in_saving_group(s) {
                    continue; // may end here, never pass through
                }
                for (_, b) in arcs.iter().filter(|(a, _)| *a == s) {
                    if seen.contains(b) {
                        continue;
                    }
                    seen.push(*b);
                    prev.push((*b, s));
                    if *b == to {
                        let mut path = vec![to];
                        let mut at = to;
                        while let Some((_, p)) = prev.iter().find(|(n, _)| *n == at) {
                            path.push(*p);
                            at = *p;
                        }
                        path.reverse();
                        return Some(path);
                    }
                    next.push(*b);
                }
            }
            frontier = next;
        }
        None
    }

    /// The next state on the way from `current` to `target`; `None` if the pair is refused.
    pub fn next(&self, current: MigState, target: MigState) -> Option<MigState> {
        let (i, j) = (slot(current)?, slot(target)?);
        *self.table.get(i)?.get(j)?
    }

    /// The whole path from `current` to `target` (excluding `current`), following the table.
    pub fn path(&self, current: MigState, target: MigState) -> Option<Vec<MigState>> {
        let mut path = Vec::new();
        let mut at = current;
        while at != target {
            at = self.next(at, target)?;
            path.push(at);
            if path.len() > STATES.len() {
                return None;
            }
        }
        Some(path)
    }

    /// Whether `from → to` is a direct arc of this device.
    pub fn is_arc(&self, from: MigState, to: MigState) -> bool {
        self.arcs.contains(&(from, to))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use MigState::*;
    use pretty_assertions::assert_eq;

    /// The specification's next-hop table, as a check on the derivation.
    const SPEC_TABLE: [(MigState, [Option<MigState>; 5]); 5] = [
        //        STOP            RUNNING        STOP_COPY        RESUMING        PRE_COPY
        (Stop, [None, Some(Running), Some(StopCopy), Some(Resuming), Some(Running)]),
        (Running, [Some(Stop), None, Some(Stop), Some(Stop), Some(PreCopy)]),
        (StopCopy, [Some(Stop), Some(Stop), None, Some(Stop), None]),
        (Resuming, [Some(Stop), Some(Stop), Some(Stop), None, Some(Stop)]),
        (PreCopy, [Some(Running), Some(Running), Some(StopCopy), Some(Running), None]),
    ];
    const TARGETS: [MigState; 5] = [Stop, Running, StopCopy, Resuming, PreCopy];

    #[test]
    fn derived_table_equals_the_specification_table() {
        let hops = NextHops::derive(true);
        for (from, row) in SPEC_TABLE {
            for (to, want) in TARGETS.iter().zip(row) {
                assert_eq!(hops.next(from, *to), want, "{from:?} -> {to:?}");
            }
        }
    }

    /// An independent breadth-first search over all paths, checking shortest length and the
    /// interior rule for every pair.
    fn brute_force_shortest(arcs: &[(MigState, MigState)], from: MigState, to: MigState) -> Option<usize> {
        let mut paths = vec![vec![from]];
        for len in 1..=STATES.len() {
            let mut next = Vec::new();
            for p in &paths {
                let last = *p.last().unwrap();
                for (a, b) in arcs {
                    if *a == last && !p.contains(b) {
                        let mut q = p.clone();
                        q.push(*b);
                        let interior_ok = q[1..q.len() - 1].iter().all(|s| !in_saving_group(*s));
                        if *b == to && interior_ok {
                            return Some(len);
                        }
                        next.push(q);
                    }
                }
            }
            paths = next;
        }
        None
    }

    #[test]
    fn every_pair_takes_a_shortest_admissible_path() {
        for pre_copy in [true, false] {
            let hops = NextHops::derive(pre_copy);
            for from in STATES {
                for to in STATES {
                    let refused = from == to || from == Error || to == Error || (from, to) == (StopCopy, PreCopy);
                    let want = if refused { None } else { brute_force_shortest(&hops.arcs, from, to) };
                    let got = hops.path(from, to).filter(|_| from != to);
                    assert_eq!(got.as_ref().map(Vec::len), want, "{from:?} -> {to:?} (pre_copy {pre_copy})");
                    if let Some(p) = got {
                        let mut at = from;
                        for s in &p {
                            assert!(hops.is_arc(at, *s), "{at:?} -> {s:?} is not an arc");
                            at = *s;
                        }
                        assert!(p[..p.len() - 1].iter().all(|s| !in_saving_group(*s)), "{from:?}->{to:?}: {p:?}");
                    }
                }
            }
        }
    }

    #[test]
    fn stop_copy_to_pre_copy_is_refused() {
        assert_eq!(NextHops::derive(true).next(StopCopy, PreCopy), None);
    }

    #[test]
    fn error_is_never_a_target_nor_left_by_a_path() {
        let hops = NextHops::derive(true);
        for s in STATES {
            assert_eq!(hops.next(s, Error), None);
            assert_eq!(hops.next(Error, s), None);
        }
    }

    #[test]
    fn without_pre_copy_no_path_touches_it() {
        let hops = NextHops::derive(false);
        for s in STATES {
            assert_eq!(hops.next(s, PreCopy), None, "{s:?} -> PRE_COPY");
            assert_eq!(hops.next(PreCopy, s), None, "PRE_COPY -> {s:?}");
        }
        assert_eq!(hops.path(Running, StopCopy), Some(vec![Stop, StopCopy]));
    }

    #[test]
    fn resuming_to_running_passes_through_stop() {
        assert_eq!(NextHops::derive(true).path(Resuming, Running), Some(vec![Stop, Running]));
    }
}
