//! Guest NICs: one virtio-net device per `--net`, placed on the VM's virtio transport
//! (see [`crate::virtio_slot`]), its queue work on the device event-loop thread.

use std::sync::atomic::{AtomicBool, Ordering};

use event_manager::SubscriberOps;
use std::sync::Arc;

use devices::virtio::core::RingState;
use std::os::fd::AsFd;

use devices::virtio::net::{KernelPath, Net, NetStats};
use net::backends::{self, BackendError};
use net::{MacAddr, NetSpec, VhostMode};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use crate::notice::{Notice, Notices};
use crate::virtio_slot;

#[derive(Debug, thiserror::Error)]
pub enum NicError {
    #[error("eth{index}: {source}")]
    Backend { index: usize, source: BackendError },
    #[error("too many --net options: at most {max} NICs fit the interrupt lines")]
    TooMany { max: usize },
    #[error("eth{index}: {source}")]
    Wire {
        index: usize,
        source: virtio_slot::WireError,
    },
    #[error("cannot set up the network event loop: {0}")]
    EventLoop(String),
    #[error("cannot place the virtio devices: {0}")]
    Placement(virtio_slot::WireError),
    #[error("eth{index}: vhost=on: {source}")]
    Vhost {
        index: usize,
        source: devices::virtio::net::VhostError,
    },
    #[error("eth{index}: vhost: cannot duplicate the tap's fd: {source}")]
    DupTap {
        index: usize,
        source: std::io::Error,
    },
}

/// What the user should know about one NIC.
#[derive(Debug, Clone)]
pub struct NicInfo {
    pub guest_name: String,
    pub mac: MacAddr,
    /// The host side, e.g. "tap nvtap0 on bridge br0 (...)".
    pub host: String,
    /// Lines the user should read about this NIC (an MTU the host side does not match,
    /// vhost=auto falling back).
    pub notes: Vec<String>,
    /// "vhost" when the kernel carries the frames, "user" when netvmm's device does.
    pub datapath: &'static str,
    /// Queue pairs (`queues=`).
    pub queues: usize,
}

impl std::fmt::Display for NicInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} (mac {}) <-> {}{}{}",
            self.guest_name,
            self.mac,
            self.host,
            if self.queues > 1 {
                format!(
                    "; {} queue pairs (one {} per pair{})",
                    self.queues,
                    if self.datapath == "vhost" {
                        "vhost-net instance and tap queue"
                    } else {
                        "tap queue"
                    },
                    if self.datapath == "vhost" {
                        ""
                    } else {
                        ", all served by netvmm's one device thread"
                    }
                )
            } else {
                String::new()
            },
            if self.datapath == "vhost" {
                "; data path: vhost-net (in the kernel)"
            } else {
                ""
            }
        )
    }
}

/// What must be undone when the VM ends (given taps put back as found, created interfaces
/// deleted: see [`backends::HostCleanup`]). Dropping it does that and tells its notices
/// what could not be put back. Whoever runs its [`HostCleanup::bridge_watcher`] must have
/// stopped before.
pub struct HostCleanup {
    inner: backends::HostCleanup,
    notices: Notices,
}

impl HostCleanup {
    pub fn new(notices: Notices) -> Self {
        Self {
            inner: backends::HostCleanup::default(),
            notices,
        }
    }

    /// A watcher that keeps the NICs' taps on their bridges if a bridge is re-created, for
    /// the VMM's event loop; None when no NIC is on a bridge.
    pub fn bridge_watcher(
        &self,
    ) -> Result<Option<net::bridge_watch::Watcher>, net::netlink::NetlinkError> {
        self.inner.bridge_watcher()
    }
}

impl std::fmt::Debug for HostCleanup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.inner.fmt(f)
    }
}

impl Drop for HostCleanup {
    fn drop(&mut self) {
        for problem in self.inner.finish() {
            (self.notices)(Notice::NotRestored(problem.to_string()));
        }
    }
}

pub type NetEventManager = virtio_slot::DeviceEventManager;

/// The built NICs: what to tell the user, their counters, and what to undo at the end.
pub struct Nics {
    pub infos: Vec<NicInfo>,
    /// Reads each NIC's device counters (in `infos` order).
    pub counters: Vec<NicCounters>,
    pub cleanup: HostCleanup,
}

/// Reads one NIC's device counters and ring state; they live in its transport, behind the
/// lock the event loop takes.
pub struct NicCounters(Box<dyn Fn() -> NicReport + Send>);

impl NicCounters {
    pub fn read(&self) -> NicReport {
        (self.0)()
    }
}

/// What a NIC's device moved and dropped, and where its rings stand.
#[derive(Debug, Clone, Default)]
pub struct NicReport {
    /// "vhost" or "user": which path carried the frames (with vhost the device counters
    /// stay 0, the kernel moved them).
    pub datapath: &'static str,
    /// "mmio" or "pci": the virtio transport the guest reaches the NIC through.
    pub transport: &'static str,
    /// Queue pairs the NIC has, and those the driver uses (VQ_PAIRS_SET).
    pub queues: usize,
    pub active_pairs: usize,
    /// All pairs together.
    pub stats: NetStats,
    /// Each pair's counters (with more than one pair).
    pub pairs: Vec<NetStats>,
    pub rings: RingState,
    /// What the hypervisor refused of the transport's setup, if anything.
    pub fault: Option<String>,
}

/// One report line per NIC: the path and the transport it ran on, its counters (with
/// several queue pairs, the pairs in use and each pair's frames, `q1_rx_frames=`, and the
/// control queue's commands), then, for each ready queue (`rx`, `tx`, then `rx1`, `tx1`,
/// ..., `ctrl`), the driver's avail index, the chains the device took, the used ring's index (what the kernel returned too, under
/// vhost), the two EVENT_IDX fields, and the pending interrupt bits. A network that
/// stopped says here whether the device waits for the guest or the guest for the device.
pub fn counters_line(guest_name: &str, r: &NicReport) -> String {
    let s = &r.stats;
    let mut line = format!(
        "netvmm-nic-report: {guest_name} datapath={} transport={} queues={} rx_frames={} rx_bytes={} rx_dropped={} tx_frames={} tx_bytes={} tx_invalid={} tx_backend_errors={} rx_waiting={} rx_window={}",
        r.datapath, r.transport, r.queues, s.rx_frames, s.rx_bytes, s.rx_dropped, s.tx_frames, s.tx_bytes, s.tx_invalid, s.tx_backend_errors, s.rx_waiting, s.rx_window
    );
    if r.queues > 1 {
        line.push_str(&format!(
            " active_pairs={} ctrl_ok={} ctrl_err={}",
            r.active_pairs, s.ctrl_ok, s.ctrl_err
        ));
        for (i, p) in r.pairs.iter().enumerate() {
            line.push_str(&format!(
                " q{i}_rx_frames={} q{i}_tx_frames={}",
                p.rx_frames, p.tx_frames
            ));
        }
    }
    let names = (0..r.queues).flat_map(|p| {
        let n = if p == 0 { String::new() } else { p.to_string() };
        [format!("rx{n}"), format!("tx{n}")]
    });
    let names: Vec<String> = names.chain(["ctrl".to_string()]).collect();
    let counts = r
        .rings
        .counts
        .iter()
        .map(Some)
        .chain(std::iter::repeat(None));
    for ((name, q), c) in names.iter().zip(&r.rings.queues).zip(counts) {
        let Some(q) = q else { continue };
        let fields = [
            ("avail", q.avail),
            ("taken", Some(q.taken)),
            ("used", Some(q.used)),
            ("used_event", q.used_event),
            ("avail_event", q.avail_event),
        ];
        for (key, value) in fields {
            if let Some(v) = value {
                line.push_str(&format!(" {name}_{key}={v}"));
            }
        }
        if let Some(c) = c {
            line.push_str(&format!(
                " {name}_wakes={} {name}_resumed={} {name}_interrupts={}",
                c.wakes, c.resumed, c.interrupts
            ));
        }
    }
    for (p, wakes) in r.rings.backend_wakes.iter().enumerate() {
        let n = if p == 0 { String::new() } else { p.to_string() };
        line.push_str(&format!(" rx{n}_backend_wakes={wakes}"));
    }
    line.push_str(&format!(" isr={}", r.rings.interrupt_status));
    line
}

/// The most NICs: every virtio slot (disks take the ones NICs leave).
pub const MAX_NICS: usize = virtio_slot::MAX_DEVICES;

/// Builds every NIC. Backends are opened first, so that a bad `--net` fails before KVM
/// state is touched, and a created tap vanishes with its fd on any later error.
pub fn build(
    specs: &[NetSpec],
    placer: &mut virtio_slot::Placer,
    mem: &GuestMemoryMmap,
    notices: &Notices,
) -> Result<Nics, NicError> {
    let mut nics = Nics {
        infos: Vec::new(),
        counters: Vec::new(),
        cleanup: HostCleanup::new(notices.clone()),
    };
    if specs.is_empty() {
        return Ok(nics);
    }
    if specs.len() > MAX_NICS {
        return Err(NicError::TooMany { max: MAX_NICS });
    }
    if let Some(stale) = crate::notice::leftovers() {
        notices(stale);
    }
    // Every backend is opened before anything else: the guards of those already open undo
    // them if a later one fails.
    let mut opened = Vec::new();
    for (index, s) in specs.iter().enumerate() {
        let o = backends::open(s, index).map_err(|source| NicError::Backend { index, source })?;
        let a = nics.cleanup.inner.adopt(o);
        nics.infos.push(NicInfo {
            guest_name: format!("eth{index}"),
            mac: a.mac,
            host: a.description,
            notes: a.notes,
            datapath: "user",
            queues: 1 + a.more_queues.len(),
        });
        let taps: Vec<&net::Tap> = std::iter::once(&a.tap).chain(&a.more_queues).collect();
        let kernel = kernel_path(s.vhost, &taps, mem, index, &mut nics.infos[index])?;
        opened.push((a.tap, a.more_queues, a.mac, s.mtu, kernel));
    }
    for (index, (tap, more, mac, mtu, kernel)) in opened.into_iter().enumerate() {
        let placed = placer
            .place(
                &format!("eth{index}"),
                Net::new(tap, mac.0)
                    .with_more_pairs(more)
                    .with_mtu(mtu)
                    .with_kernel_path(kernel),
            )
            .map_err(|source| NicError::Wire { index, source })?;
        nics.counters.push(NicCounters(Box::new(move || {
            let fault = placed.fault();
            placed.inspect(|d, rings| NicReport {
                datapath: d.datapath(),
                transport: placed.transport().name(),
                queues: d.pairs(),
                active_pairs: d.active_pairs(),
                stats: d.stats(),
                pairs: d.pair_stats(),
                rings,
                fault,
            })
        })));
    }
    Ok(nics)
}

/// The device thread's event loop, running; dropping it ends and joins it.
pub struct DeviceLoop {
    stop: EventFd,
    stopping: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl DeviceLoop {
    /// Runs the devices' event loop on a thread of its own, confined to the device sandbox
    /// from its start, until dropped.
    pub fn spawn(
        mut em: NetEventManager,
        sandbox: &crate::sandbox::Sandbox,
    ) -> Result<Self, NicError> {
        let stop = EventFd::new(libc::EFD_NONBLOCK)
            .map_err(|e| NicError::EventLoop(format!("create its stop eventfd: {e}")))?;
        let stopping = Arc::new(AtomicBool::new(false));
        let evt = stop
            .try_clone()
            .map_err(|e| NicError::EventLoop(format!("share its stop eventfd: {e}")))?;
        let registered = Arc::new(AtomicBool::new(false));
        em.add_subscriber(Box::new(StopWake {
            evt,
            registered: registered.clone(),
        }));
        if !registered.load(Ordering::SeqCst) {
            return Err(NicError::EventLoop(
                "its epoll refused the stop eventfd".into(),
            ));
        }
        let flag = stopping.clone();
        let thread = sandbox
            .spawn(
                "netvmm-net".into(),
                crate::sandbox::ThreadKind::Device,
                move || {
                    while !flag.load(Ordering::SeqCst) {
                        // An epoll error here (EINTR aside) would repeat forever; back
                        // off instead of spinning a core.
                        if em.run().is_err() {
                            std::thread::sleep(std::time::Duration::from_millis(10));
                        }
                    }
                },
            )
            .map_err(|e| NicError::EventLoop(e.to_string()))?;
        Ok(Self {
            stop,
            stopping,
            thread: Some(thread),
        })
    }
}

impl Drop for DeviceLoop {
    /// Stops the loop after the round under way and waits for its thread: on every path
    /// out of `Vmm::run`, before the interfaces are released.
    fn drop(&mut self) {
        self.stopping.store(true, Ordering::SeqCst);
        // An eventfd write fails only on counter overflow, which one write cannot cause;
        // were it to fail, join would wait for the thread's next wake-up.
        let _ = self.stop.write(1);
        if let Some(thread) = self.thread.take() {
            // A device thread that panicked has said so on stderr.
            let _ = thread.join();
        }
    }
}

/// Opens vhost-net for a NIC if `mode` asks for it: now, at setup, while netvmm may still
/// open devices. With vhost=auto a failure is a note in `info` and the userspace path.
fn kernel_path(
    mode: VhostMode,
    taps: &[&net::Tap],
    mem: &GuestMemoryMmap,
    index: usize,
    info: &mut NicInfo,
) -> Result<Option<KernelPath>, NicError> {
    if mode == VhostMode::Off {
        return Ok(None);
    }
    // One vhost-net instance per queue pair, each over its own tap queue.
    let dups = taps
        .iter()
        .map(|t| t.as_fd().try_clone_to_owned().map(std::fs::File::from))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| NicError::DupTap { index, source })?;
    match KernelPath::open(mem, dups) {
        Ok(k) => {
            info.datapath = "vhost";
            Ok(Some(k))
        }
        Err(source) if mode == VhostMode::On => Err(NicError::Vhost { index, source }),
        Err(e) => {
            info.notes.push(format!(
                "vhost=auto: {e}; the userspace data path carries this NIC"
            ));
            Ok(None)
        }
    }
}

/// Wakes the device loop so that it sees the stop flag; says whether its registration
/// took (without it stopping the loop would wait for the next device event).
struct StopWake {
    evt: EventFd,
    registered: Arc<AtomicBool>,
}

impl event_manager::MutEventSubscriber for StopWake {
    fn init(&mut self, ops: &mut event_manager::EventOps) {
        let added = ops.add(event_manager::Events::new(
            &self.evt,
            event_manager::EventSet::IN,
        ));
        self.registered.store(added.is_ok(), Ordering::SeqCst);
    }

    fn process(&mut self, _: event_manager::Events, _: &mut event_manager::EventOps) {
        let _ = self.evt.read();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_line_names_the_nic_every_counter_and_the_rings() {
        use devices::virtio::core::{QueueCounts, QueueState};
        let r = NicReport {
            datapath: "user",
            transport: "pci",
            queues: 1,
            active_pairs: 1,
            pairs: Vec::new(),
            stats: NetStats {
                rx_frames: 1,
                rx_bytes: 2,
                tx_frames: 3,
                tx_bytes: 4,
                tx_invalid: 5,
                tx_backend_errors: 6,
                rx_dropped: 7,
                rx_waiting: 8,
                rx_window: 9,
                ..NetStats::default()
            },
            rings: RingState {
                queues: vec![
                    Some(QueueState {
                        avail: Some(10),
                        taken: 11,
                        used: 12,
                        used_event: Some(13),
                        avail_event: None,
                    }),
                    None,
                ],
                counts: vec![
                    QueueCounts {
                        wakes: 14,
                        resumed: 15,
                        interrupts: 16,
                    },
                    QueueCounts {
                        wakes: 99,
                        ..QueueCounts::default()
                    },
                ],
                backend_wakes: vec![17],
                interrupt_status: 1,
            },
            fault: None,
        };
        let line = counters_line("eth1", &r);
        let rest = line
            .strip_prefix("netvmm-nic-report: eth1 datapath=user transport=pci queues=1 ")
            .unwrap();
        let kv: Vec<(&str, u64)> = rest
            .split(' ')
            .map(|f| {
                let (k, v) = f.split_once('=').unwrap();
                (k, v.parse().unwrap())
            })
            .collect();
        assert_eq!(
            kv,
            [
                ("rx_frames", 1),
                ("rx_bytes", 2),
                ("rx_dropped", 7),
                ("tx_frames", 3),
                ("tx_bytes", 4),
                ("tx_invalid", 5),
                ("tx_backend_errors", 6),
                ("rx_waiting", 8),
                ("rx_window", 9),
                ("rx_avail", 10),
                ("rx_taken", 11),
                ("rx_used", 12),
                ("rx_used_event", 13),
                ("rx_wakes", 14),
                ("rx_resumed", 15),
                ("rx_interrupts", 16),
                ("rx_backend_wakes", 17),
                ("isr", 1),
            ]
        );
    }
}
