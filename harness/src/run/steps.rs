//! The steps but `migrate` and `interleave`: each asks the oracle, makes its requests and
//! holds the replies against the prediction.

use std::time::Duration;

use mock_qemu::guest::Backing;
use mock_qemu::guest::dmae::{DmaCommand, IrqRoute};
use nix::errno::Errno;
use rand::{Rng, RngCore};
use vfu_server::devices::dma_engine::REGION_REGS;
use vfu_server::devices::dma_engine::regs::REG_CTRL;
use vfu_server::wire::MigState;

use super::side::{refused, refused_err, unexplained_bits};
use super::{Buffer, Run, StepOutcome, index};

/// How long a server whose client left may take to exit, when a new client finds it gone.
const ONE_CLIENT_EXIT: Duration = Duration::from_secs(5);
use crate::oracle::{Expected, ResumeData};
use crate::report::EventKind;
use crate::scenario::model::{self as m, DataSource, DmaCommandSpec, Side, Step};

thread_local! {
    /// The errno an `expect: {next_errno}` pins on the first request of the next step: it
    /// stands in for the model's prediction of that one reply (a damaged message, a fault the
    /// model does not see).
    static PINNED: std::cell::Cell<Option<Errno>> = const { std::cell::Cell::new(None) };
}

/// Pins the errno of the next judged reply (see [`PINNED`]); `None` clears it.
pub(super) fn pin(errno: Option<Errno>) {
    PINNED.with(|p| p.set(errno));
}

/// Judges a reply against a prediction: `Ok(None)` success as predicted, `Ok(Some)` a
/// predicted refusal, `Err` a disagreement.
pub(super) fn judge(what: &str, want: &Expected, got: Option<Errno>) -> StepOutcome {
    if let Some(pinned) = PINNED.with(std::cell::Cell::take) {
        return match got {
            Some(e) if e == pinned => Ok(Some(e)),
            _ => {
                let got = got.map_or("success".to_string(), |e| format!("{e:?}"));
                Err(format!("{what}: the server answered {got}; the scenario expects {pinned:?}"))
            }
        };
    }
    if want.admits(got) {
        Ok(got)
    } else {
        let got = got.map_or("success".to_string(), |e| format!("{e:?}"));
        Err(format!("{what}: the server answered {got}; the model predicts {want}"))
    }
}

pub(super) fn errno_name(e: m::Errno) -> Errno {
    use m::Errno as E;
    match e {
        E::EPERM => Errno::EPERM,
        E::ENOENT => Errno::ENOENT,
        E::EIO => Errno::EIO,
        E::E2BIG => Errno::E2BIG,
        E::EBADF => Errno::EBADF,
        E::EAGAIN => Errno::EAGAIN,
        E::ENOMEM => Errno::ENOMEM,
        E::EFAULT => Errno::EFAULT,
        E::EBUSY => Errno::EBUSY,
        E::EEXIST => Errno::EEXIST,
        E::ENODEV => Errno::ENODEV,
        E::EINVAL => Errno::EINVAL,
        E::ENOTTY => Errno::ENOTTY,
        E::ENOSPC => Errno::ENOSPC,
        E::ERANGE => Errno::ERANGE,
        E::ENOSYS => Errno::ENOSYS,
        E::ENOTSUP => Errno::ENOTSUP,
        E::EOVERFLOW => Errno::EOVERFLOW,
        E::EBADMSG => Errno::EBADMSG,
        E::EPROTO => Errno::EPROTO,
        E::ENODATA => Errno::ENODATA,
        E::EPIPE => Errno::EPIPE,
        E::ECONNRESET => Errno::ECONNRESET,
        E::ETIMEDOUT => Errno::ETIMEDOUT,
    }
}

impl Run<'_> {
    pub(super) fn dispatch(&mut self, step: &Step) -> StepOutcome {
        match step {
            Step::Connect(c) => self.connect(c),
            Step::Map(mp) => {
                let backing = match mp.backing {
                    m::Backing::Fd => Backing::Fd,
                    m::Backing::Message => Backing::Message,
                };
                let layout = self.layout.clone();
                self.side(mp.side).map(&layout, backing, mp.regions.as_deref(), mp.read_only)?;
                if mp.side == Side::Source && mp.regions.is_none() {
                    // A driver sets the device up once guest memory is there for it to use.
                    let seed = self.seed;
                    let client = self.sides[index(Side::Source)].client()?;
                    if !self.profile.shadowed() {
                        crate::profile::enable_device(client)?;
                    }
                    self.profile.drive(client, seed).map_err(|e| format!("the {} driver: {e}", self.profile.name()))?;
                }
                Ok(None)
            }
            Step::Unmap(u) => self.side(u.side).unmap(u.regions.as_deref()).map(|()| None),
            Step::Program(p) => {
                if let Some(interrupt) = p.interrupt {
                    self.route(p.side, interrupt)?;
                }
                for spec in &p.commands {
                    let cmd = match *spec {
                        DmaCommandSpec::Fill { guest_addr, len, seed } => {
                            DmaCommand::fill(guest_addr.bytes(), len.bytes(), seed)
                        }
                        DmaCommandSpec::CopyToDevice { guest_addr, dev_offset, len } => {
                            DmaCommand::copy_to_device(guest_addr.bytes(), dev_offset.bytes(), len.bytes())
                        }
                        DmaCommandSpec::CopyToGuest { dev_offset, guest_addr, len } => {
                            DmaCommand::copy_to_guest(dev_offset.bytes(), guest_addr.bytes(), len.bytes())
                        }
                    };
                    self.command(p.side, &cmd)?;
                }
                Ok(None)
            }
            Step::StartLogging(l) => {
                let ranges: Vec<(u64, u64)> =
                    l.ranges.iter().flatten().map(|r| (r.iova.bytes(), r.size.bytes())).collect();
                let hint = l.page_size.bytes();
                let ctx = self.side(l.side);
                let want = ctx.dev.dirty.predict_start(hint, &ranges);
                match ctx.client()?.dma_logging_start(hint, &ranges) {
                    Ok(chosen) => {
                        if !crate::oracle::DirtyModel::admits_page_size(hint, chosen) {
                            return Err(format!("DMA_LOGGING_START chose page size {chosen} for a hint of {hint}"));
                        }
                        ctx.dev.dirty.started(hint, chosen, &ranges);
                        ctx.dev.watch_memory()?;
                        judge("DMA_LOGGING_START", &want, None)
                    }
                    Err(e) => judge("DMA_LOGGING_START", &want, refused_err(&e)?).map_err(|m| format!("{m} ({e})")),
                }
            }
            Step::StopLogging(s) => {
                let ctx = self.side(s.side);
                let result = ctx.client()?.dma_logging_stop();
                ctx.dev.dirty.stopped();
                judge("DMA_LOGGING_STOP", &Expected::Ok, refused(result)?)
            }
            Step::SetState(st) => self.set_state(st.side, st.state.to_wire() as u32),
            Step::ReadData(r) => self.read_data(r),
            Step::WriteData(w) => self.write_data(w),
            Step::Migrate(mg) => self.migrate(mg),
            Step::Interleave(i) => self.interleave(i),
            Step::Fault(f) => self.fault(f),
            Step::Expect(e) => self.expect(e),
            Step::Verify(v) => self.verify(v),
            Step::Sweep(w) => self.sweep(w),
            Step::DirtyReport(d) => self.dirty_report(d),
            Step::Reset(s) => {
                let ctx = self.side(s.side);
                let result = ctx.client()?.reset();
                judge("DEVICE_RESET", &Expected::Ok, refused(result)?)?;
                ctx.dev.model.reset();
                ctx.dev.shadow.reset();
                ctx.out.restart();
                ctx.after_reset()?;
                Ok(None)
            }
            Step::SelfTest(t) => self.self_test(t),
            Step::GuestReset(s) => {
                let ctx = self.side(s.side);
                let want = ctx.dev.model.region_write();
                let before = ctx.dev.model.state;
                let got = refused(ctx.client()?.write_u32(REGION_REGS, REG_CTRL, 1))?;
                let out = judge("CTRL reset write", &want, got)?;
                if got.is_none() {
                    ctx.dev.shadow.reset();
                    ctx.tap.model_event(crate::model::Event::GuestReset);
                }
                let now = ctx.read_state()?;
                if now != before {
                    return Err(format!("a guest reset moved the migration state from {before:?} to {now:?}"));
                }
                Ok(out)
            }
        }
    }

    /// The device's own test (see [`crate::profile::Profile::self_test`]); the pages it wrote
    /// join the dirty log's truth.
    fn self_test(&mut self, t: &m::SelfTestStep) -> StepOutcome {
        let (seed, side) = (self.seed, t.side);
        let ctx = &mut self.sides[index(side)];
        let (Some(guest), Some(client)) = (ctx.dev.guest.as_ref(), ctx.client.as_mut()) else {
            return not_ready(t, "it needs a client connected and guest RAM mapped".into());
        };
        let (table, state) = ctx.tap.with_model(|m| (m.map_table().to_vec(), m.state()));
        let fd_mapped: Vec<(u64, u64)> = ctx
            .dev
            .mapped
            .iter()
            .filter(|(_, b)| **b == Backing::Fd)
            .filter_map(|(&i, _)| guest.regions().get(i).map(|r| (r.iova, r.len)))
            .collect();
        let unready = match state {
            Some(MigState::Running) => self.profile.self_test_unready(&table, &fd_mapped),
            state => Some(format!("it runs in RUNNING; the device is in {state:?}")),
        };
        if let Some(why) = unready {
            return not_ready(t, why);
        }
        let test = crate::profile::SelfTest { client, guest, table, fd_mapped, seed };
        let done = self.profile.self_test(test).map_err(|e| format!("the {} self-test: {e}", self.profile.name()))?;
        ctx.dev.dirty.device_wrote(done.device_pages);
        Ok(None)
    }

    /// The side's context.
    pub(super) fn side(&mut self, side: Side) -> &mut super::SideCtx {
        &mut self.sides[index(side)]
    }

    /// Moves the side's completion interrupts to `interrupt`. Where the device's state refuses
    /// the driver's register accesses, a failed move is no finding: the driver starts again at
    /// its next command.
    fn route(&mut self, side: Side, interrupt: m::Interrupt) -> Result<(), String> {
        let route = match interrupt {
            m::Interrupt::MsiX => IrqRoute::MsiX,
            m::Interrupt::Msi => IrqRoute::Msi,
            m::Interrupt::Intx => IrqRoute::Intx,
        };
        let ctx = self.side(side);
        let allowed = ctx.dev.model.region_write();
        let client = ctx.client.as_mut().ok_or("no client")?;
        match ctx.dev.set_route(client, route) {
            Ok(()) => Ok(()),
            Err(_) if allowed != Expected::Ok => {
                ctx.dev.driver = None;
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Whether side `i`'s dirty reports are held to exactness: its server's are exact (this
    /// project's own), the harness shadows the device (so the truth holds every page the
    /// device wrote), no proxy stands in front of it (a damaged message may have run a command
    /// the shadow never saw), and the run is not concurrent (the truth does not follow the
    /// background writer's pages one by one).
    pub(super) fn exact_reports(&self, i: usize) -> bool {
        let ctx = &self.sides[i];
        self.commands[i].exact_reports
            && !self.options.concurrent
            && ctx.shadowed
            && !ctx.dev.watch_memory
            && ctx.proxy.is_none()
    }

    /// Runs one command on `side`'s device against the oracle.
    pub(super) fn command(&mut self, side: Side, cmd: &DmaCommand) -> Result<(), String> {
        let ctx = self.side(side);
        let client = ctx.client.as_mut().ok_or("no client")?;
        let findings = ctx.dev.run_command(client, cmd)?;
        match findings.first() {
            Some(f) => Err(f.clone()),
            None => Ok(()),
        }
    }

    fn connect(&mut self, c: &m::ConnectStep) -> StepOutcome {
        let i = index(c.side);
        if self.sides[i].client.is_some() {
            // A connect after a fault that may have dropped the client: a new client.
            self.sides[i].disconnect();
        }
        self.ensure_server(c.side, Duration::ZERO)?;
        let timeout = Duration::from_millis(c.timeout_ms);
        if let Err(e) = self.sides[i].connect(c.strict, c.twin_socket, timeout) {
            // A server that serves one client and exits may still have been on its way out.
            if !self.sides[i].served_one_client() {
                return Err(e);
            }
            self.ensure_server(c.side, ONE_CLIENT_EXIT)?;
            self.sides[i].connect(c.strict, c.twin_socket, timeout)?;
        }
        self.event(Some(c.side), EventKind::Note { text: "connected".into() });
        Ok(None)
    }

    /// Starts the server of `side` when it has none, or again when it served its client and
    /// exited (libvfio-user's samples do), waiting up to `grace` for that exit; one that
    /// exited otherwise crashed.
    fn ensure_server(&mut self, side: Side, grace: Duration) -> Result<(), String> {
        let ctx = &mut self.sides[index(side)];
        let Some(server) = ctx.server.as_mut() else { return self.start_server(side) };
        let Some(status) = server.wait_exit(grace) else { return Ok(()) };
        if !status.success() {
            let log = server.log_tail();
            return Err(format!("the {} server exited ({status}) after its client left; its log:\n{log}", side.name()));
        }
        ctx.server = None;
        self.event(
            Some(side),
            EventKind::Note { text: "the server served its client and exited: started again".into() },
        );
        self.start_server(side)
    }

    /// SET of the raw state `target`, held against the model.
    pub(super) fn set_state(&mut self, side: Side, target: u32) -> StepOutcome {
        let logs_arcs = self.commands[index(side)].logs_arcs;
        let ctx = self.side(side);
        let (p, got, wrong) = ctx.set_and_check_walk(target, logs_arcs)?;
        if let Some(wrong) = wrong {
            return Err(format!("SET MIG_DEVICE_STATE {target}: {wrong}"));
        }
        let ok = got.is_none();
        match judge(&format!("SET MIG_DEVICE_STATE {target}"), &p.expected, got) {
            Ok(out) if !p.expected.admits(got) => {
                // A refusal the scenario pinned and the model did not predict: where the
                // device stands is read back.
                ctx.dev.model.state = ctx.read_state()?;
                Ok(out)
            }
            Ok(out) => {
                for &(from, to) in &p.arcs {
                    if (from, to) == (MigState::Running, MigState::PreCopy)
                        || (from, to) == (MigState::Stop, MigState::StopCopy)
                    {
                        ctx.out.restart();
                    }
                }
                ctx.dev.model.apply_set(target, &p, ok);
                Ok(out)
            }
            Err(e) => {
                if let Ok(now) = ctx.client()?.mig_state() {
                    ctx.dev.model.state = now;
                }
                Err(e)
            }
        }
    }

    fn read_data(&mut self, r: &m::ReadDataStep) -> StepOutcome {
        let ctx = &mut self.sides[index(r.side)];
        let chunk = u32::try_from(r.chunk.bytes()).map_err(|_| "chunk above 4 GiB")?;
        let limit = r.size.map_or(u64::MAX, |s| s.bytes());
        let start = ctx.out.offset;
        let mut data = Vec::new();
        let mut ended = false;
        while (data.len() as u64) < limit {
            let ask = chunk.min(u32::try_from(limit - data.len() as u64).unwrap_or(u32::MAX));
            let want = ctx.dev.model.data_read_at(start + data.len() as u64, u64::from(ask));
            match ctx.client()?.mig_data_read(ask) {
                Ok(bytes) => {
                    judge("MIG_DATA_READ", &want, None)?;
                    let short = bytes.len() < ask as usize;
                    data.extend_from_slice(&bytes);
                    if short {
                        ended = ctx.dev.model.state == MigState::StopCopy;
                        break;
                    }
                }
                Err(e) => {
                    let got = judge("MIG_DATA_READ", &want, refused_err(&e)?)
                        .map_err(|m| format!("{m} ({e}, after {} bytes)", data.len()))?;
                    ctx.out.offset += data.len() as u64;
                    if let Some(name) = &r.buffer {
                        // What was read before the refusal (maybe nothing) is kept all the same.
                        let stream = (index(r.side) as u8, ctx.out.id);
                        let start = ctx.out.offset - data.len() as u64;
                        self.buffers.insert(name.clone(), Buffer { data, stream, start, ended: false });
                    }
                    if let (Some(nix::errno::Errno::EIO), Some(mark)) = (got, ctx.dev.model.fail_read_after) {
                        // The device fails every later read of this stream too.
                        ctx.out.offset = ctx.out.offset.max(mark);
                    }
                    return Ok(got);
                }
            }
        }
        ctx.out.offset += data.len() as u64;
        ctx.out.ended |= ended;
        if let Some(name) = &r.buffer {
            let stream = (index(r.side) as u8, ctx.out.id);
            self.buffers.insert(name.clone(), Buffer { data, stream, start, ended });
        }
        Ok(None)
    }

    fn write_data(&mut self, w: &m::WriteDataStep) -> StepOutcome {
        let (data, origin) = match &w.data {
            DataSource::Buffer(name) => {
                let b = self.buffers.get(&name.value).ok_or_else(|| format!("no buffer {:?}", name.value))?;
                (b.data.clone(), Some((b.stream, b.start, b.ended)))
            }
            DataSource::Random(n) => {
                let mut rng = super::rng_for(self.seed, self.step, 1);
                let mut d = vec![0u8; usize::try_from(n.bytes()).map_err(|_| "too many bytes")?];
                rng.fill_bytes(&mut d);
                (d, None)
            }
        };
        if data.is_empty() {
            // Nothing to write: no request.
            return Ok(None);
        }
        let ctx = self.side(w.side);
        let want = ctx.dev.model.data_write();
        let chunk = usize::try_from(w.chunk.bytes()).unwrap_or(usize::MAX).max(1);
        for (k, piece) in data.chunks(chunk).enumerate() {
            if let Err(e) = ctx.client()?.mig_data_write(piece) {
                if k == 0 {
                    return judge("MIG_DATA_WRITE", &want, refused_err(&e)?).map_err(|m| format!("{m} ({e})"));
                }
                return Err(format!("MIG_DATA_WRITE of chunk {k}: {e}"));
            }
        }
        judge("MIG_DATA_WRITE", &want, None)?;
        match origin {
            Some((stream, start, ended)) => ctx.dev.model.wrote_stream(stream, start, data.len() as u64, ended),
            None => ctx.dev.model.wrote_data(ResumeData::Invalid),
        }
        Ok(None)
    }

    pub(super) fn dirty_report(&mut self, d: &m::DirtyReportStep) -> StepOutcome {
        let ps = d.page_size.bytes();
        // A quarter of the reports offer more room than the bitmap needs, as a client may: the
        // reply's argsz must still state the reply's own size.
        let mut room = super::rng_for(self.seed, self.step, 6);
        let exact = self.exact_reports(index(d.side));
        let ctx = &mut self.sides[index(d.side)];
        let ranges: Vec<(u64, u64)> = match (d.iova, d.length) {
            (Some(i), Some(l)) => vec![(i.bytes(), l.bytes())],
            _ => {
                let guest = ctx.dev.guest.clone().ok_or("no guest RAM")?;
                ctx.dev.mapped.keys().filter_map(|&i| guest.regions().get(i)).map(|r| (r.iova, r.len)).collect()
            }
        };
        let (mut out, mut lost, mut over, mut problem) = (None, 0, 0, None);
        let state = ctx.tap.with_model(|m| m.state());
        ctx.dev.look_at_memory(state)?;
        for (iova, length) in ranges {
            let want = ctx.dev.dirty.predict_report(iova, length, ps);
            let spare = if room.random_bool(0.25) { 64 } else { 0 };
            match ctx.client()?.dma_logging_report_with_room(iova, length, ps, spare) {
                Ok(bitmap) => {
                    judge("DMA_LOGGING_REPORT", &want, None)?;
                    let check = ctx.dev.dirty.take_report(iova, length, ps, &bitmap);
                    lost += check.lost.len() as u64;
                    over += check.over.len() as u64;
                    if !check.lost.is_empty() && problem.is_none() {
                        let shown: Vec<String> = check.lost.iter().take(8).map(|a| format!("{a:#x}")).collect();
                        problem = Some(format!(
                            "data loss: {} page(s) the device wrote are missing from the report of \
                             {iova:#x}+{length:#x} at page size {ps}: {}",
                            check.lost.len(),
                            shown.join(", ")
                        ));
                    }
                    if check.stray_bits > 0 && problem.is_none() {
                        problem = Some(format!("{} bit(s) set past the range {iova:#x}+{length:#x}", check.stray_bits));
                    }
                    if exact && problem.is_none() {
                        let what = format!("the report of {iova:#x}+{length:#x} at page size {ps}");
                        problem = unexplained_bits(&check, &what);
                    }
                }
                Err(e) => {
                    out = judge("DMA_LOGGING_REPORT", &want, refused_err(&e)?).map_err(|m| format!("{m} ({e})"))?
                }
            }
        }
        self.lost += lost;
        self.over_reported += over;
        if let Some(p) = problem {
            return Err(p);
        }
        if let Some(want) = d.expect_errno.map(errno_name) {
            return match out {
                Some(got) if got == want => Ok(Some(got)),
                other => Err(format!("the report got {other:?}; the scenario expects {want:?}")),
            };
        }
        Ok(out)
    }
}

/// A `self-test` the device cannot run now: skipped when the step says `if_ready`, else a
/// failure saying `why`.
fn not_ready(t: &m::SelfTestStep, why: String) -> StepOutcome {
    let why = format!("the {} device cannot run its self-test now: {why}", t.side.name());
    if t.if_ready {
        tracing::info!("{why}; skipped");
        return Ok(None);
    }
    Err(why)
}
