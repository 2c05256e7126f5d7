//! The server's side of a device's migration state: walking the next-hop table one direct arc
//! at a time, calling the device for each arc, and what a failure leaves behind.
//!
//! - Setting the current state again succeeds without calling the device.
//! - ERROR, the P2P states and numbers that are no state cannot be requested (EINVAL); a pair
//!   the table refuses is EINVAL and changes nothing.
//! - When an arc fails with [`ArcError::Refused`], the walk stops: the state is the last one
//!   completed and the device's errno is returned. With [`ArcError::Broken`] the device could
//!   not restore any valid state: the state becomes ERROR, which only DEVICE_RESET leaves.

use nix::errno::Errno;

use super::fsm::NextHops;
use super::{ArcError, MigState, Migratable};
use crate::device::DeviceContext;
use crate::wire::{MIGRATION_PRE_COPY, MIGRATION_STOP_COPY};

/// A migratable device's migration state.
#[derive(Debug, Clone)]
pub struct MigrationCtl {
    state: MigState,
    hops: NextHops,
    pre_copy: bool,
}

impl MigrationCtl {
    /// A device in RUNNING, with the arcs its PRE_COPY support allows.
    pub fn new(pre_copy: bool) -> Self {
        Self { state: MigState::Running, hops: NextHops::derive(pre_copy), pre_copy }
    }

    /// The current state.
    pub fn state(&self) -> MigState {
        self.state
    }

    /// The MIGRATION feature flags: STOP_COPY, and PRE_COPY when supported.
    pub fn flags(&self) -> u64 {
        MIGRATION_STOP_COPY | if self.pre_copy { MIGRATION_PRE_COPY } else { 0 }
    }

    /// The next-hop table in use.
    pub fn hops(&self) -> &NextHops {
        &self.hops
    }

    /// Back to RUNNING without any arc: the device was reset.
    pub fn reset(&mut self) {
        self.state = MigState::Running;
    }

    /// Moves the device to `target` (a raw state number from the client).
    pub fn set(&mut self, target: u32, dev: &mut dyn Migratable, ctx: &mut DeviceContext<'_>) -> Result<(), Errno> {
        let target = MigState::from_u32(target).ok_or(Errno::EINVAL)?;
        if matches!(target, MigState::Error | MigState::RunningP2p | MigState::PreCopyP2p) {
            return Err(Errno::EINVAL);
        }
        if target == self.state {
            return Ok(());
        }
        if self.hops.next(self.state, target).is_none() {
            return Err(Errno::EINVAL);
        }
        while self.state != target {
            let next = self.hops.next(self.state, target).ok_or(Errno::EINVAL)?;
            match dev.transition(ctx, self.state, next) {
                Ok(()) => {
                    tracing::info!(from = ?self.state, to = ?next, "migration arc");
                    self.state = next;
                }
                Err(e @ ArcError::Refused(errno)) => {
                    tracing::warn!(from = ?self.state, to = ?next, %errno, "device refused the arc");
                    return Err(e.errno());
                }
                Err(e @ ArcError::Broken(errno)) => {
                    tracing::error!(from = ?self.state, to = ?next, %errno, "device lost its state: ERROR");
                    self.state = MigState::Error;
                    return Err(e.errno());
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dma::DmaSpace;
    use crate::irq::IrqTable;
    use crate::migration::fsm::STATES;
    use MigState::*;
    use pretty_assertions::assert_eq;

    /// Records every arc it is asked for; can be told to fail one.
    #[derive(Default)]
    struct Recorder {
        arcs: Vec<(MigState, MigState)>,
        fail: Option<((MigState, MigState), ArcError)>,
        pre_copy: bool,
    }

    impl Migratable for Recorder {
        fn supports_pre_copy(&self) -> bool {
            self.pre_copy
        }
        fn transition(&mut self, _: &mut DeviceContext<'_>, from: MigState, to: MigState) -> Result<(), ArcError> {
            if let Some((arc, err)) = self.fail
                && arc == (from, to)
            {
                return Err(err);
            }
            self.arcs.push((from, to));
            Ok(())
        }
        fn read_data(&mut self, _: &mut [u8]) -> Result<usize, Errno> {
            Ok(0)
        }
        fn write_data(&mut self, _: &[u8]) -> Result<(), Errno> {
            Ok(())
        }
    }

    fn with_ctx<T>(f: impl FnOnce(&mut DeviceContext<'_>) -> T) -> T {
        let dma = DmaSpace::new(4);
        let mut irqs = IrqTable::new(0, &[]);
        let mut ctx = DeviceContext::new(&dma, None, &mut irqs);
        f(&mut ctx)
    }

    /// Brings a controller to `state` from RUNNING.
    fn at(state: MigState, pre_copy: bool) -> (MigrationCtl, Recorder) {
        let mut ctl = MigrationCtl::new(pre_copy);
        let mut dev = Recorder { pre_copy, ..Recorder::default() };
        with_ctx(|ctx| ctl.set(state as u32, &mut dev, ctx)).unwrap();
        dev.arcs.clear();
        (ctl, dev)
    }

    #[test]
    fn every_pair_calls_the_device_once_per_arc_of_the_derived_path() {
        for pre_copy in [true, false] {
            for from in STATES.into_iter().filter(|s| *s != Error && (pre_copy || *s != PreCopy)) {
                for to in STATES.into_iter().filter(|s| *s != Error) {
                    let (mut ctl, mut dev) = at(from, pre_copy);
                    let result = with_ctx(|ctx| ctl.set(to as u32, &mut dev, ctx));
                    let path = ctl.hops().path(from, to);
                    match (from == to, path) {
                        (true, _) => {
                            assert_eq!(result, Ok(()));
                            assert!(dev.arcs.is_empty(), "{from:?} again must not call the device");
                        }
                        (false, Some(path)) => {
                            assert_eq!(result, Ok(()), "{from:?} -> {to:?}");
                            let mut expected = Vec::new();
                            let mut s = from;
                            for n in path {
                                expected.push((s, n));
                                s = n;
                            }
                            assert_eq!(dev.arcs, expected, "{from:?} -> {to:?}");
                            assert_eq!(ctl.state(), to);
                        }
                        (false, None) => {
                            assert_eq!(result, Err(Errno::EINVAL), "{from:?} -> {to:?}");
                            assert!(dev.arcs.is_empty());
                            assert_eq!(ctl.state(), from);
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn stop_copy_to_pre_copy_is_refused() {
        let (mut ctl, mut dev) = at(StopCopy, true);
        assert_eq!(with_ctx(|ctx| ctl.set(PreCopy as u32, &mut dev, ctx)), Err(Errno::EINVAL));
        assert_eq!(ctl.state(), StopCopy);
    }

    #[test]
    fn nonexistent_error_and_p2p_targets_are_refused() {
        for target in [Error as u32, RunningP2p as u32, PreCopyP2p as u32, 8, u32::MAX] {
            let (mut ctl, mut dev) = at(Running, true);
            assert_eq!(with_ctx(|ctx| ctl.set(target, &mut dev, ctx)), Err(Errno::EINVAL), "target {target}");
            assert_eq!(ctl.state(), Running);
        }
    }

    #[test]
    fn refused_arc_returns_its_errno_and_stops_at_the_last_completed_hop() {
        let (mut ctl, mut dev) = at(Running, true);
        dev.fail = Some(((Stop, Resuming), ArcError::Refused(Errno::EIO)));
        assert_eq!(with_ctx(|ctx| ctl.set(Resuming as u32, &mut dev, ctx)), Err(Errno::EIO));
        assert_eq!(ctl.state(), Stop);
        assert_eq!(dev.arcs, vec![(Running, Stop)]);
    }

    #[test]
    fn broken_arc_leaves_error_which_only_reset_leaves() {
        let (mut ctl, mut dev) = at(Resuming, true);
        dev.fail = Some(((Resuming, Stop), ArcError::Broken(Errno::EBADMSG)));
        assert_eq!(with_ctx(|ctx| ctl.set(Stop as u32, &mut dev, ctx)), Err(Errno::EBADMSG));
        assert_eq!(ctl.state(), Error);
        dev.fail = None;
        for target in [Stop, Running, Resuming, StopCopy, PreCopy, Error] {
            assert_eq!(with_ctx(|ctx| ctl.set(target as u32, &mut dev, ctx)), Err(Errno::EINVAL));
        }
        ctl.reset();
        assert_eq!(ctl.state(), Running);
    }

    #[test]
    fn flags_state_pre_copy_support() {
        assert_eq!(MigrationCtl::new(true).flags(), MIGRATION_STOP_COPY | MIGRATION_PRE_COPY);
        assert_eq!(MigrationCtl::new(false).flags(), MIGRATION_STOP_COPY);
    }
}
