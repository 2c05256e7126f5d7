//! How much device data one pre-copy iteration reads.
//!
//! QEMU's VFIO code (`vfio_save_iterate`) reads one buffer of `data_buffer_size` bytes per
//! call, and the migration thread calls it again only while the 100 ms window of the
//! `max-bandwidth` rate limit has room; it then decides on the switchover from its estimate of
//! what is pending, so it may switch over with pre-copy data unread, which STOP_COPY carries.
//! [`Iteration::default`] keeps mock-qemu's first behaviour instead: each iteration reads the
//! device's whole round, to a short read.

use std::time::Duration;

/// QEMU's rate-limit window (`BUFFER_DELAY`): the limit allows `max-bandwidth / 10` bytes in
/// each.
pub const RATE_LIMIT_WINDOW: Duration = Duration::from_millis(100);

/// The reads of one pre-copy iteration.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Iteration {
    /// Most MIG_DATA_READs in one iteration (QEMU: 1); `None`: no bound but a short read.
    pub reads: Option<u32>,
    /// The rate limit, bytes per second (QEMU's `max-bandwidth`): an iteration stands for one
    /// window and reads again only while the window's share of it has room. The window is not
    /// timed (mock-qemu never sleeps), so a run replays exactly.
    pub max_bandwidth: Option<u64>,
}

impl Iteration {
    /// QEMU's iteration: one buffer, under `max_bandwidth` if there is one.
    pub fn qemu(max_bandwidth: Option<u64>) -> Self {
        Self { reads: Some(1), max_bandwidth }
    }

    /// Whether each iteration reads the whole round (the default).
    pub fn drains_rounds(&self) -> bool {
        self.reads.is_none() && self.max_bandwidth.is_none()
    }

    /// Device bytes one window of the rate limit allows.
    pub fn window_bytes(&self) -> Option<u64> {
        let per_window = |b: u64| (u128::from(b) * RATE_LIMIT_WINDOW.as_millis() / 1000) as u64;
        self.max_bandwidth.map(per_window)
    }

    /// Whether an iteration that has made `reads` reads of `bytes` bytes in all reads again.
    /// The first read always happens, as QEMU calls `save_live_iterate` at least once a window.
    pub fn may_read(&self, reads: u32, bytes: u64) -> bool {
        reads == 0
            || (self.reads.is_none_or(|most| reads < most) && self.window_bytes().is_none_or(|room| bytes < room))
    }
}

#[cfg(test)]
mod tests {
    use rstest::rstest;

    use super::*;

    #[rstest]
    #[case::drain_always_reads_on(Iteration::default(), 1000, u64::MAX, true)]
    #[case::the_first_read_always_happens(Iteration::qemu(Some(1)), 0, 0, true)]
    #[case::qemu_reads_one_buffer(Iteration::qemu(None), 1, 64, false)]
    #[case::reads_up_to_the_bound(Iteration { reads: Some(3), max_bandwidth: None }, 2, 1 << 30, true)]
    #[case::not_past_the_bound(Iteration { reads: Some(3), max_bandwidth: None }, 3, 0, false)]
    #[case::while_the_window_has_room(Iteration { reads: None, max_bandwidth: Some(10_000) }, 7, 999, true)]
    #[case::not_once_the_window_is_spent(Iteration { reads: None, max_bandwidth: Some(10_000) }, 7, 1000, false)]
    fn an_iteration_reads_again_only_within_its_bounds(
        #[case] it: Iteration,
        #[case] reads: u32,
        #[case] bytes: u64,
        #[case] again: bool,
    ) {
        assert_eq!(it.may_read(reads, bytes), again);
    }

    #[test]
    fn only_the_default_drains_rounds() {
        assert!(Iteration::default().drains_rounds());
        assert!(!Iteration::qemu(None).drains_rounds());
        assert!(!Iteration { reads: None, max_bandwidth: Some(1) }.drains_rounds());
    }
}
