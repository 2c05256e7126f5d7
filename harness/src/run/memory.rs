//! Guest memory as the dirty-page oracle's witness where no shadow knows what the device
//! wrote: a fingerprint of the logged ranges when logging starts and before every report
//! ([`crate::oracle::DirtyModel::watch_guest`]).

use std::collections::BTreeSet;

use vfu_server::wire::MigState;

use super::side::Dev;

impl Dev {
    /// Logging has just started: starts watching guest memory, if the device has no shadow.
    pub fn watch_memory(&mut self) -> Result<(), String> {
        let Some(guest) = self.guest.as_ref().filter(|_| self.watch_memory && self.dirty.logging()) else {
            return Ok(());
        };
        let now = guest.page_fingerprints(&self.dirty.logged_ranges()).map_err(|e| format!("guest RAM: {e}"))?;
        guest.take_client_writes();
        self.dirty.watch_guest(now);
        Ok(())
    }

    /// A report is about to be asked for: what the device wrote in guest memory since the last
    /// look joins the truth it is judged against. A device in `state` STOP or STOP_COPY owes
    /// every bit at once.
    pub fn look_at_memory(&mut self, state: Option<MigState>) -> Result<(), String> {
        let Some(guest) = self.guest.as_ref().filter(|_| self.dirty.watching()) else {
            return Ok(());
        };
        let now = guest.page_fingerprints(&self.dirty.logged_ranges()).map_err(|e| format!("guest RAM: {e}"))?;
        // Taken after the fingerprint: a client write the fingerprint saw is among them.
        let client: BTreeSet<u64> = guest.take_client_writes().into_iter().collect();
        let seen = self.dirty.guest_seen(now, &client);
        if matches!(state, Some(MigState::Stop | MigState::StopCopy)) {
            self.dirty.device_stopped();
        }
        if !seen.is_empty() {
            tracing::debug!(
                pages = seen.len(),
                first = format_args!("{:#x}", seen[0]),
                "device writes seen in guest RAM"
            );
        }
        Ok(())
    }
}
