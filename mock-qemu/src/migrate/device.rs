//! The device's migration state as QEMU's VFIO code drives it: every change names a recovery
//! state, and a change that fails and cannot be recovered resets the device.

use vfu_server::wire::MigState;

use crate::client::{Client, ClientError};

/// A state change that failed, and what the device was left in.
#[derive(Debug, thiserror::Error)]
#[error("setting the device to {target:?} failed ({source}); it is now {now:?}{}", if *.reset { " after a reset" } else { "" })]
pub struct StateChangeError {
    /// The state asked for.
    pub target: MigState,
    /// What the device is in now (RUNNING after a reset).
    pub now: MigState,
    /// Whether the device had to be reset.
    pub reset: bool,
    /// The refusal.
    #[source]
    pub source: ClientError,
}

/// QEMU's `vfio_migration_set_state`: moves to `target`; on failure tries `recover` (unless it
/// is ERROR), and if that fails too, or `recover` is ERROR, resets the device (DEVICE_RESET),
/// which leaves it RUNNING.
pub fn set_state(client: &mut Client, target: MigState, recover: MigState) -> Result<(), StateChangeError> {
    let Err(source) = client.set_mig_state(target) else {
        tracing::debug!(?target, "device state set");
        return Ok(());
    };
    tracing::warn!(?target, error = %source, ?recover, "device state change failed");
    if recover != MigState::Error && client.set_mig_state(recover).is_ok() {
        return Err(StateChangeError { target, now: recover, reset: false, source });
    }
    if let Err(e) = client.reset() {
        // QEMU gives up here (hw_error); we say where the device really is.
        tracing::error!(error = %e, "resetting the device failed too");
        let now = client.mig_state().unwrap_or(MigState::Error);
        return Err(StateChangeError { target, now, reset: false, source });
    }
    Err(StateChangeError { target, now: MigState::Running, reset: true, source })
}

/// QEMU's `vfio_migration_set_state_or_reset`: `target`, or a reset.
pub fn set_state_or_reset(client: &mut Client, target: MigState) -> Result<(), StateChangeError> {
    set_state(client, target, MigState::Error)
}
