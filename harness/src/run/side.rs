//! One side of a run: its server process (behind a proxy when the scenario damages its
//! messages), its client, its guest, the dma-engine driver, and the oracle's models of it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use mock_qemu::client::{ClientOptions, TraceOptions};
use mock_qemu::guest::dmae::{DmaCommand, DmaEngineDriver, DmaOp, DriverError, IrqRoute, Status};
use mock_qemu::guest::{Backing, Guest};
use mock_qemu::{Client, ClientError};
use nix::errno::Errno;
use vfu_server::wire::{DMA_MAP_READ, DMA_MAP_WRITE, MigState};

use super::hosted::HostedServer;
use super::server::{Hooks, ServerCommand, connect};
use super::tap::Tap;
use crate::model::Event;
use crate::oracle::{DeviceModel, DeviceShadow, DirtyModel, Expected, ReportCheck};
use crate::proxy::{Proxy, ProxyHandle};
use crate::scenario::model::{DmaEngineOptions, Side};

/// A side's outgoing migration stream as far as the harness has read it by hand.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OutStream {
    /// The stream's number on this side (a new one begins with RUNNING→PRE_COPY or
    /// STOP→STOP_COPY).
    pub id: u64,
    /// Bytes read since the stream began.
    pub offset: u64,
    /// Whether the end-of-stream short read in STOP_COPY came.
    pub ended: bool,
}

/// The device side of a side, apart from its client, so that a workload can hold it while a
/// migration holds the client.
#[derive(Default)]
pub struct Dev {
    /// The guest whose RAM the client maps.
    pub guest: Option<Guest>,
    /// The guest RAM regions mapped now, by index, with how each was mapped (the background
    /// writer reaches only those mapped with their fd).
    pub mapped: BTreeMap<usize, Backing>,
    /// The dma-engine driver, attached on first use.
    pub driver: Option<DmaEngineDriver>,
    /// Where the driver takes its completion interrupts (a `program` step's `interrupt`).
    pub route: IrqRoute,
    /// The protocol model of its device.
    pub model: DeviceModel,
    /// The dirty-page model of its server.
    pub dirty: DirtyModel,
    /// The shadow of its device.
    pub shadow: DeviceShadow,
    /// Guest memory the background writer owns, `(addr, len)`: random commands stay out.
    pub dma_exclude: Option<(u64, u64)>,
    /// Damaged messages left the device in a state the model cannot know: it is read back
    /// (state and shadow) as soon as a client can.
    pub uncertain: bool,
    /// No shadow knows what the device writes: guest memory is watched while logging runs
    /// (see [`super::memory`]).
    pub watch_memory: bool,
}

impl OutStream {
    /// A new stream begins.
    pub fn restart(&mut self) {
        *self = OutStream { id: self.id + 1, ..OutStream::default() };
    }
}

/// Everything the runner holds of one side.
pub struct SideCtx {
    /// Which side.
    pub side: Side,
    /// The server, while it runs.
    pub server: Option<HostedServer>,
    /// Whether its server may run on a thread (nothing in the scenario kills it).
    pub threaded: bool,
    /// The proxy in front of it, when the scenario has proxy faults for this side.
    pub proxy: Option<ProxyHandle>,
    /// The client, while connected.
    pub client: Option<Client>,
    /// Guest, driver and models.
    pub dev: Dev,
    /// Hooks the server gets when it next starts.
    pub hooks: Hooks,
    /// The outgoing stream read by hand.
    pub out: OutStream,
    /// Its trace tap.
    pub tap: Tap,
    /// Whether a trigger killed its server (restarted after the step).
    pub killed: bool,
    /// Whether the harness shadows the device (the dma-engine profile).
    pub shadowed: bool,
    /// Whether a client of this server negotiated (a server that serves one client exits
    /// when it leaves).
    pub served: bool,
    /// Whether the device's migration offer is learnt from the server (its command was told
    /// no device options).
    pub learns: bool,
    socket: PathBuf,
    log: PathBuf,
}

/// The finding for the pages a report set bits over with no write in any logging page they
/// touch; `None` when there are none.
pub fn unexplained_bits(check: &ReportCheck, what: &str) -> Option<String> {
    let pages = &check.unexplained;
    if pages.is_empty() {
        return None;
    }
    let shown: Vec<String> = pages.iter().take(8).map(|a| format!("{a:#x}")).collect();
    Some(format!(
        "{} page(s) reported dirty in {what} that the device never wrote, nor any page of their logging page: {}",
        pages.len(),
        shown.join(", ")
    ))
}

/// A request's result as the oracle judges it: success (`None`) or the errno of a refusal.
/// Any other failure — no reply in time, a closed connection, a malformed reply — is no
/// answer to judge: the step fails with it.
pub fn refused<T>(result: Result<T, ClientError>) -> Result<Option<Errno>, String> {
    match result {
        Ok(_) => Ok(None),
        Err(e) => refused_err(&e),
    }
}

/// [`refused`] of an error.
pub fn refused_err(e: &ClientError) -> Result<Option<Errno>, String> {
    e.errno().map(Some).ok_or_else(|| e.to_string())
}

impl SideCtx {
    /// A side whose server will listen in `dir`.
    pub fn new(side: Side, dir: &Path, options: &DmaEngineOptions) -> Self {
        Self {
            side,
            server: None,
            threaded: false,
            proxy: None,
            client: None,
            dev: Dev {
                model: DeviceModel::new(options.pre_copy, BTreeSet::new()),
                shadow: DeviceShadow::new(options.devmem_size.value.bytes()),
                ..Dev::default()
            },
            hooks: Hooks::default(),
            out: OutStream::default(),
            tap: Tap::default(),
            killed: false,
            learns: false,
            served: false,
            shadowed: true,
            socket: dir.join(format!("{}.sock", side.name())),
            log: dir.join(format!("{}-server.log", side.name())),
        }
    }

    /// The server's log file.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// Starts the server with the pending hooks (and the proxy when asked), fresh models.
    pub fn start_server(
        &mut self,
        command: &ServerCommand,
        device: &str,
        options: &DmaEngineOptions,
        proxied: bool,
    ) -> Result<(), String> {
        let server = HostedServer::start(command, self.threaded, &self.socket, &self.log, device, options, &self.hooks)
            .map_err(|e| format!("starting the {} server: {e}", self.side.name()))?;
        self.dev.model = DeviceModel::new(options.pre_copy, self.hooks.fail_arcs.iter().copied().collect());
        self.dev.model.fail_read_after = self.hooks.fail_read_after;
        self.dev.model.device_judges = !self.shadowed;
        // A server started from its own command was told nothing of the device: what it
        // offers is asked at each connect.
        self.learns = !command.takes_hooks();
        self.served = false;
        self.tap.model_event(Event::ServerStarted {
            pre_copy: (!self.learns).then_some(options.pre_copy),
            failing_arcs: self.dev.model.failing_arcs.clone(),
            fail_read_after: self.hooks.fail_read_after,
            device_judges: !self.shadowed,
        });
        self.dev.shadow = DeviceShadow::new(options.devmem_size.value.bytes());
        self.dev.dirty = DirtyModel::default();
        self.dev.mapped.clear();
        self.dev.driver = None;
        self.dev.uncertain = false;
        self.out.restart();
        self.hooks = Hooks::default();
        self.server = Some(server);
        self.killed = false;
        if proxied && self.proxy.is_none() {
            let path = self.socket.with_extension("proxy.sock");
            let proxy = Proxy::start(&path, &self.socket, Vec::new())
                .map_err(|e| format!("starting the {} proxy: {e}", self.side.name()))?;
            self.proxy = Some(proxy);
        }
        Ok(())
    }

    /// Connects a client and negotiates, tracing into the tap. The guest RAM of a side whose
    /// client disconnected is new (a new QEMU process); a side whose server was restarted
    /// under its client keeps it.
    pub fn connect(&mut self, strict: bool, twin_socket: bool, timeout: Duration) -> Result<(), String> {
        let path = self.proxy.as_ref().map_or(self.socket.clone(), |p| p.path().to_owned());
        let stream = connect(&path, Duration::from_secs(10))
            .map_err(|e| format!("connecting to the {} server at {}: {e}", self.side.name(), path.display()))?;
        let options = ClientOptions::with_timeout(timeout).strict(strict).twin_socket(twin_socket);
        self.tap.model_event(Event::Connected);
        let mut client = Client::from_stream_with(stream, &options);
        if let Some(pipe) = self.proxy.as_ref().and_then(|p| p.unanswered().ok()) {
            client.set_unanswered(pipe);
        }
        client.set_trace_sink(Box::new(
            self.tap.sink(&TraceOptions { session: self.side.name().into(), timestamps: false }),
        ));
        client.negotiate(&options.capabilities).map_err(|e| format!("VERSION: {e}"))?;
        self.served = true;
        // What QEMU asks when it realizes a device: its regions and IRQ indexes, which the
        // protocol model then holds the server to.
        let info = client.device_info().map_err(|e| format!("DEVICE_GET_INFO: {e}"))?;
        for index in 0..info.num_regions {
            client.region_info(index).map_err(|e| format!("DEVICE_GET_REGION_INFO {index}: {e}"))?;
        }
        for index in 0..info.num_irqs {
            client.irq_info(index).map_err(|e| format!("DEVICE_GET_IRQ_INFO {index}: {e}"))?;
        }
        if self.learns {
            // QEMU asks the migration flags at realize too; the models learn PRE_COPY here.
            let flags = client.migration_flags().map_err(|e| format!("DEVICE_FEATURE MIGRATION: {e}"))?;
            self.dev.model.pre_copy = flags & vfu_server::wire::MIGRATION_PRE_COPY != 0;
        }
        self.client = Some(client);
        self.dev.driver = None;
        if self.dev.uncertain {
            self.read_back()?;
        }
        Ok(())
    }

    /// After a DEVICE_RESET: the driver turns the device on again as a driver does after a
    /// function reset, and keeps its interrupt eventfd: it is not quietly attached again, so
    /// the next command's completion interrupt proves the server kept it.
    pub fn after_reset(&mut self) -> Result<(), String> {
        let (Some(driver), Some(client)) = (self.dev.driver.as_mut(), self.client.as_mut()) else { return Ok(()) };
        driver.after_reset(client).map_err(|e| format!("after the reset: {e}"))
    }

    /// Reads the device's state and contents back into the model, after damaged messages.
    pub fn read_back(&mut self) -> Result<(), String> {
        let client = self.client.as_mut().ok_or("no client")?;
        let state = client.mig_state().map_err(|e| format!("reading the state back: {e}"))?;
        if !self.shadowed {
            self.dev.model.state = state;
            self.dev.model.resume = Default::default();
            self.dev.uncertain = false;
            return Ok(());
        }
        let snap = DmaEngineDriver::snapshot(client).map_err(|e| format!("reading the device back: {e}"))?;
        self.dev.model.state = state;
        self.dev.model.resume = Default::default();
        self.dev.shadow.adopt(&snap);
        self.dev.uncertain = false;
        Ok(())
    }

    /// The client, or why there is none.
    pub fn client(&mut self) -> Result<&mut Client, String> {
        let name = self.side.name();
        self.client.as_mut().ok_or_else(|| format!("the {name} has no client"))
    }

    /// The guest, made on first use with `layout`.
    pub fn guest(&mut self, layout: &[(u64, u64)]) -> Result<Guest, String> {
        if self.dev.guest.is_none() {
            self.dev.guest = Some(Guest::with_layout(layout).map_err(|e| format!("guest RAM: {e}"))?);
        }
        self.dev.guest.clone().ok_or_else(|| "no guest".into())
    }

    /// DMA_MAP of guest regions (all not mapped yet when `regions` is `None`).
    pub fn map(
        &mut self,
        layout: &[(u64, u64)],
        backing: Backing,
        regions: Option<&[u32]>,
        read_only: bool,
    ) -> Result<(), String> {
        let flags = if read_only { DMA_MAP_READ } else { DMA_MAP_READ | DMA_MAP_WRITE };
        let guest = self.guest(layout)?;
        let wanted: Vec<usize> = match regions {
            Some(r) => r.iter().map(|&i| i as usize).collect(),
            None => (0..guest.regions().len()).filter(|i| !self.dev.mapped.contains_key(i)).collect(),
        };
        let client = self.client.as_mut().ok_or("no client")?;
        for i in wanted {
            guest.map_region_as(client, i, backing, flags).map_err(|e| format!("DMA_MAP of region {i}: {e}"))?;
            let r = &guest.regions()[i];
            self.dev.dirty.mapped(r.iova, r.len);
            self.dev.mapped.insert(i, backing);
        }
        // Like QEMU, the client serves the server's DMA_READ / DMA_WRITE over all of guest RAM,
        // whether the region was mapped with its fd or not.
        client.set_dma_service(guest.dma_service());
        Ok(())
    }

    /// DMA_UNMAP of mapped guest regions (all when `regions` is `None`).
    pub fn unmap(&mut self, regions: Option<&[u32]>) -> Result<(), String> {
        let guest = self.dev.guest.clone().ok_or("no guest RAM to unmap")?;
        let wanted: Vec<usize> = match regions {
            Some(r) => r.iter().map(|&i| i as usize).collect(),
            None => self.dev.mapped.keys().copied().collect(),
        };
        let client = self.client.as_mut().ok_or("no client")?;
        for i in wanted {
            let r = guest.regions().get(i).ok_or_else(|| format!("no guest RAM region {i}"))?;
            client.dma_unmap(r.iova, r.len, 0).map_err(|e| format!("DMA_UNMAP of region {i}: {e}"))?;
            self.dev.dirty.unmapped(r.iova, r.len);
            self.dev.mapped.remove(&i);
        }
        Ok(())
    }

    /// The client goes away: the server drops the mappings and logging, and resets a device
    /// caught anywhere but RUNNING.
    pub fn disconnect(&mut self) {
        self.tap.disarm();
        if self.client.is_some() {
            self.tap.model_event(Event::Disconnected);
        }
        self.client = None;
        self.dev.driver = None;
        self.dev.mapped.clear();
        self.dev.dirty.forget_all();
        // An enabled writer faults with the client's memory gone (BG_CTRL reads 0).
        self.dev.shadow.writer = None;
        self.dev.dma_exclude = None;
        if self.dev.model.state != MigState::Running {
            self.dev.model.reset();
            self.dev.shadow.reset();
        }
        self.dev.model.resume = Default::default();
        // A kill leaves an empty device; a disconnect of an uncertain one leaves it uncertain.
        // The client is QEMU: its guest goes with it, and the next client starts a new one.
        self.dev.guest = None;
    }

    /// SIGKILL of the server; the client is dropped with it.
    pub fn kill_server(&mut self) {
        self.tap.disarm();
        self.tap.model_event(Event::ServerKilled);
        if let Some(mut s) = self.server.take() {
            s.kill();
        }
        self.client = None;
        self.dev.driver = None;
        self.dev.mapped.clear();
        self.dev.dirty.forget_all();
        self.dev.shadow.writer = None;
        self.dev.dma_exclude = None;
    }

    /// Where the server's log ends now (for [`arcs_since`](Self::arcs_since)).
    pub fn log_mark(&self) -> u64 {
        self.server.as_ref().map_or(0, HostedServer::log_len)
    }

    /// Checks the arcs the server's log recorded since `mark` against the model's walk `want`;
    /// `None` when they agree (or the prediction leaves the walk open).
    pub fn check_arcs(&self, mark: u64, p: &crate::oracle::SetPrediction) -> Option<String> {
        if matches!(p.expected, Expected::Either(_)) {
            return None;
        }
        let got = self.server.as_ref()?.arcs_since(mark);
        (got != p.arcs)
            .then(|| format!("the device was taken through {got:?}; the specification's walk is {:?}", p.arcs))
    }

    /// SET of the raw state `target`: the model's prediction, the errno of a refusal, and,
    /// for servers that log their arcs, the walk when it differs from the specification's
    /// (the model then reads the state back, so what follows is judged from there).
    pub fn set_and_check_walk(
        &mut self,
        target: u32,
        logs_arcs: bool,
    ) -> Result<(crate::oracle::SetPrediction, Option<Errno>, Option<String>), String> {
        let p = self.dev.model.predict_set(target);
        let mark = self.log_mark();
        let got = refused(self.client()?.set_mig_state_raw(target))?;
        let wrong = if logs_arcs && p.expected.admits(got) { self.check_arcs(mark, &p) } else { None };
        if wrong.is_some() {
            self.dev.model.state = self.read_state()?;
        }
        if self.dev.model.device_judges && got.is_some() && p.expected.admits(got) && wrong.is_none() {
            // The device refused an arc of a walk the protocol allows: where it stopped is
            // read back, and must be a state of the walk.
            let now = self.read_state()?;
            return match p.stopped_at(now) {
                Some(stopped) => Ok((stopped, got, None)),
                None => {
                    self.dev.model.state = now;
                    let walk = &p.arcs;
                    Ok((
                        p.clone(),
                        got,
                        Some(format!("refused, the device is in {now:?}, not a state of the walk {walk:?}")),
                    ))
                }
            };
        }
        Ok((p, got, wrong))
    }

    /// GET of the migration state.
    pub fn read_state(&mut self) -> Result<MigState, String> {
        self.client()?.mig_state().map_err(|e| format!("GET MIG_DEVICE_STATE: {e}"))
    }

    /// Whether a server that may serve one client and exit (one started from its own
    /// command) already served one.
    pub fn served_one_client(&self) -> bool {
        self.learns && self.served
    }

    /// Whether the server process runs.
    pub fn server_alive(&mut self) -> bool {
        self.server.as_mut().is_some_and(HostedServer::alive)
    }

    /// Why the server is gone when it died on its own (not killed by a fault, not a server
    /// that exits cleanly after its one client): its exit status and the end of its log.
    /// `grace`: how long an exit under way may take to be seen (a socket just closed).
    pub fn server_died(&mut self, grace: std::time::Duration) -> Option<String> {
        if self.killed {
            return None;
        }
        let server = self.server.as_mut()?;
        let status = server.wait_exit(grace)?;
        (!status.success()).then(|| {
            let log = server.log_tail();
            let last: Vec<&str> = log.lines().rev().take(3).collect();
            let last: Vec<&str> = last.into_iter().rev().collect();
            format!("the {} server exited ({status}); its log ends: {}", self.side.name(), last.join(" | "))
        })
    }
}

impl Dev {
    /// Where a new background writer goes: the upper half of the first guest RAM region
    /// mapped with its fd (the device thread cannot send DMA_WRITE messages). None, and why,
    /// when the device cannot run one: a stopped device must not DMA, and refuses the
    /// register writes that would program it (the model's answer to a region write).
    pub fn writer_window(&self) -> Result<(u64, u64), String> {
        let write = self.model.region_write();
        if write != Expected::Ok {
            return Err(format!("the device is in {:?}, where BAR0 writes get {write}", self.model.state));
        }
        let guest = self.guest.as_ref().ok_or("no guest RAM")?;
        let r =
            self.fd_mapped().find_map(|i| guest.regions().get(i)).ok_or("no guest RAM region is mapped with its fd")?;
        let half = r.len / 2 / 4096 * 4096;
        Ok((r.iova + half, r.len - half))
    }

    /// Whether `[addr, addr + len)` lies in one guest RAM region mapped with its fd: where a
    /// background writer can write (elsewhere its first write faults).
    pub fn maps_with_fd(&self, addr: u64, len: u64) -> bool {
        let Some(guest) = &self.guest else { return false };
        let end = addr.checked_add(len);
        self.fd_mapped()
            .filter_map(|i| guest.regions().get(i))
            .any(|r| r.iova <= addr && end.is_some_and(|e| e <= r.end()))
    }

    /// Indexes of the regions mapped with their fd.
    fn fd_mapped(&self) -> impl Iterator<Item = usize> + '_ {
        self.mapped.iter().filter(|&(_, &b)| b == Backing::Fd).map(|(&i, _)| i)
    }

    /// Whether `[addr, addr + len)` is wholly in mapped guest RAM.
    pub fn is_mapped(&self, addr: u64, len: u64) -> bool {
        let Some(guest) = &self.guest else { return false };
        let Some(end) = addr.checked_add(len) else { return false };
        let mut ranges: Vec<(u64, u64)> =
            self.mapped.keys().filter_map(|&i| guest.regions().get(i)).map(|r| (r.iova, r.end())).collect();
        ranges.sort_unstable();
        let mut at = addr;
        for (s, e) in ranges {
            if e <= at {
                continue;
            }
            if s > at {
                return false;
            }
            at = e;
            if at >= end {
                return true;
            }
        }
        at >= end
    }

    /// The driver, attached now (on [`route`](Self::route)) if it is not.
    pub fn driver(&mut self, client: &mut Client) -> Result<&mut DmaEngineDriver, String> {
        if self.driver.is_none() {
            let driver = DmaEngineDriver::attach_on(client, self.route);
            self.driver = Some(driver.map_err(|e| format!("attaching the driver: {e}"))?);
        }
        self.driver.as_mut().ok_or_else(|| "no driver".into())
    }

    /// Moves the completion interrupts to `route`: now if the driver is attached, else when it
    /// is.
    pub fn set_route(&mut self, client: &mut Client, route: IrqRoute) -> Result<(), String> {
        self.route = route;
        match self.driver.as_mut() {
            Some(d) => {
                d.reroute(client, route).map_err(|e| format!("moving the completion interrupt to {route:?}: {e}"))
            }
            None => Ok(()),
        }
    }

    /// Runs one dma-engine command and holds it against the oracle: the STATUS the shadow
    /// predicts (or EBUSY/EIO when the state refuses the doorbell), the guest bytes it must
    /// have written, the truth of the pages it wrote. Returns the findings.
    pub fn run_command(&mut self, client: &mut Client, cmd: &DmaCommand) -> Result<Vec<String>, String> {
        let mut findings = Vec::new();
        let write_guest = cmd.op != DmaOp::CopyToDevice;
        let guest_ok = self.is_mapped(cmd.guest_addr, cmd.len) && self.guest.is_some();
        let allowed = self.model.region_write();
        let predicted = self.shadow.predict(cmd, guest_ok);
        let from_guest = match (&self.guest, cmd.op, predicted) {
            (Some(g), DmaOp::CopyToDevice, Status::Ok) => Some(
                g.read_vec(cmd.guest_addr, cmd.len).map_err(|e| format!("reading the guest before {cmd:?}: {e}"))?,
            ),
            _ => None,
        };
        let expected_bytes = if predicted == Status::Ok && write_guest { self.shadow.guest_bytes(cmd) } else { None };
        let result = {
            let driver = match self.driver(client) {
                Ok(d) => d,
                Err(e) if allowed != Expected::Ok => {
                    // Attaching writes config space and SET_IRQS; a stopped device refuses
                    // nothing of that, an ERROR one refuses the reads.
                    return Ok(if allowed == Expected::Errno(Errno::EIO) { Vec::new() } else { vec![e] });
                }
                Err(e) => return Err(e),
            };
            driver.run(client, cmd)
        };
        match (result, &allowed) {
            (Ok(status), Expected::Ok) => {
                if status != predicted {
                    findings.push(format!("{cmd:?} ended {status:?}; the model predicts {predicted:?}"));
                }
                if status == Status::Ok {
                    if let (Some(want), Some(g)) = (&expected_bytes, &self.guest) {
                        match g.read_vec(cmd.guest_addr, cmd.len) {
                            Ok(got) if &got == want => {}
                            Ok(got) => {
                                let at = got.iter().zip(want).position(|(a, b)| a != b).unwrap_or(0);
                                findings.push(format!(
                                    "{cmd:?} left guest byte {:#x} = {:#04x}, the model says {:#04x}",
                                    cmd.guest_addr + at as u64,
                                    got.get(at).copied().unwrap_or(0),
                                    want.get(at).copied().unwrap_or(0)
                                ));
                            }
                            Err(e) => findings.push(format!("reading the guest after {cmd:?}: {e}")),
                        }
                    }
                    if write_guest {
                        self.dirty.device_wrote(cmd.guest_pages_written());
                    }
                }
                self.shadow.apply(cmd, status, from_guest.as_deref());
            }
            (Ok(status), refused) => {
                findings.push(format!("{cmd:?} ran ({status:?}) in {:?}; the model says {refused}", self.model.state));
            }
            (Err(DriverError::Client { source, step }), want) => match refused_err(&source) {
                Ok(got) if want.admits(got) && got.is_some() => {}
                Ok(_) => findings.push(format!("{cmd:?}: {step} failed ({source}); the model says {want}")),
                Err(e) => return Err(format!("{cmd:?}: {step} failed: {e}")),
            },
            (Err(e), want) => findings.push(format!("{cmd:?}: {e}; the model says {want}")),
        }
        Ok(findings)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev(mapped: &[(usize, Backing)]) -> Dev {
        let guest = Guest::with_layout(&[(0, 1 << 20), (4 << 30, 1 << 20)]).expect("guest RAM");
        Dev { guest: Some(guest), mapped: mapped.iter().copied().collect(), ..Dev::default() }
    }

    #[test]
    fn the_writer_goes_to_the_upper_half_of_the_first_region_mapped_with_its_fd() {
        let d = dev(&[(0, Backing::Message), (1, Backing::Fd)]);
        assert_eq!(d.writer_window(), Ok(((4 << 30) + (1 << 19), 1 << 19)));
        assert!(d.maps_with_fd((4 << 30) + (1 << 19), 1 << 19));
        assert!(!d.maps_with_fd(1 << 19, 1 << 19), "region 0 is reached only by messages");
        assert!(!d.maps_with_fd((4 << 30) + (1 << 19), 1 << 20), "the window passes the region's end");
        let none = dev(&[(0, Backing::Message)]);
        assert_eq!(none.writer_window(), Err("no guest RAM region is mapped with its fd".into()));
    }

    #[test]
    fn a_stopped_device_gets_no_writer() {
        for (state, errno) in [
            (MigState::Stop, "EBUSY"),
            (MigState::StopCopy, "EBUSY"),
            (MigState::Resuming, "EBUSY"),
            (MigState::Error, "EIO"),
        ] {
            let mut d = dev(&[(0, Backing::Fd)]);
            d.model.state = state;
            let why = d.writer_window().expect_err("no writer");
            assert!(why.contains(&format!("{state:?}")) && why.contains(errno), "{state:?}: {why}");
        }
        let mut d = dev(&[(0, Backing::Fd)]);
        d.model.state = MigState::PreCopy;
        assert_eq!(d.writer_window(), Ok((1 << 19, 1 << 19)));
    }
}
