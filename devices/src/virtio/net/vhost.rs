//! The kernel data path (vhost-net): the guest's rings are served by the kernel's vhost
//! worker straight to and from the tap or macvtap, and frames never pass through netvmm.
//!
//! /dev/vhost-net is opened, owned and given the guest memory table when the NIC is built
//! (before the sandbox: the vCPU threads then need only the per-ring ioctls). At DRIVER_OK
//! the rings the driver set up, the negotiated ring features, the queue notification
//! eventfds (the same ones KVM signals through ioeventfd) and one "call" eventfd per queue
//! go to the kernel, then the tap as the backend. The call eventfds are irqfds (on
//! virtio-mmio all of them the device's one interrupt eventfd, see
//! `VirtioDevice::share_used_notifier`; on virtio-pci each queue's vector), so the
//! kernel's worker interrupts the guest itself; since netvmm
//! then never sees an interrupt happen, virtio-mmio's InterruptStatus says "used buffer"
//! whenever the guest reads it while the kernel serves the rings. (Relaying each call
//! through netvmm's event loop cost a wake-up of its thread per interrupt: with two vCPUs
//! and two queue pairs that halved throughput in the lab.) A reset takes
//! the tap away from the rings; the next DRIVER_OK starts them again, and so does a
//! driver that clears DRIVER_OK or sets FAILED without a reset (the device stops).
//!
//! With several queue pairs there is one vhost-net instance per pair (as QEMU does), each
//! with that pair's tap queue as its backend: its vrings 0 and 1 are the pair's RX and TX
//! queues. The control queue stays in userspace.

use std::fs::File;
use std::sync::Arc;

use vhost::net::VhostNet as _;
use vhost::vhost_kern::net::Net as VhostNetFd;
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Address, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;

use super::F_MRG_RXBUF;
use crate::virtio::chain::VIRTIO_RING_F_INDIRECT_DESC;
use crate::virtio::{VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX};

/// Where vhost-net lives.
pub const VHOST_NET_PATH: &str = "/dev/vhost-net";

/// The feature bits the kernel implements (the rest, offloads and config space, stay the
/// device's and the tap's): what is negotiated of these goes to VHOST_SET_FEATURES.
const KERNEL_BITS: u64 =
    VIRTIO_F_VERSION_1 | VIRTIO_RING_F_EVENT_IDX | VIRTIO_RING_F_INDIRECT_DESC | F_MRG_RXBUF;

#[derive(Debug, thiserror::Error)]
pub enum VhostError {
    #[error("cannot open {VHOST_NET_PATH}: {0} (is the vhost_net module loaded? vhost=auto falls back to the userspace path)")]
    Open(std::io::Error),
    #[error("{VHOST_NET_PATH}: cannot {what}: {source}")]
    Setup {
        what: &'static str,
        source: vhost::Error,
    },
}

fn setup(what: &'static str) -> impl FnOnce(vhost::Error) -> VhostError {
    move |source| VhostError::Setup { what, source }
}

/// One queue pair's vhost-net instance.
struct PairPath {
    handle: VhostNetFd<Arc<GuestMemoryMmap>>,
    /// The tap queue (a duplicate of the pair's fd) that the kernel reads and writes.
    tap: File,
    /// Whether the tap is attached to the rings now.
    running: bool,
}

/// One NIC's vhost-net instances, one per queue pair.
pub struct KernelPath {
    pairs: Vec<PairPath>,
    /// What every instance offers of [`KERNEL_BITS`].
    features: u64,
    /// Signalled by the kernel when it used buffers of queue N (rx0, tx0, rx1, ...).
    calls: Vec<EventFd>,
}

impl KernelPath {
    /// Opens one vhost-net instance per tap queue in `taps` (queue pair 0, 1, ...), owned
    /// by this process, with all of `mem` in its memory table.
    pub fn open(mem: &GuestMemoryMmap, taps: Vec<File>) -> Result<Self, VhostError> {
        let mut pairs = Vec::with_capacity(taps.len());
        let mut features = KERNEL_BITS;
        for tap in taps {
            let (handle, offered) = Self::open_one(mem)?;
            features &= offered;
            pairs.push(PairPath {
                handle,
                tap,
                running: false,
            });
        }
        let calls = (0..2 * pairs.len())
            .map(|_| EventFd::new(libc::EFD_NONBLOCK))
            .collect::<Result<_, _>>()
            .map_err(|e| VhostError::Setup {
                what: "create its call eventfds",
                source: vhost::Error::IOError(e),
            })?;
        Ok(Self {
            pairs,
            features,
            calls,
        })
    }

    /// One instance, owned, with the memory table; and the kernel bits it offers.
    fn open_one(
        mem: &GuestMemoryMmap,
    ) -> Result<(VhostNetFd<Arc<GuestMemoryMmap>>, u64), VhostError> {
        let handle = VhostNetFd::new(Arc::new(mem.clone())).map_err(|e| match e {
            vhost::Error::VhostOpen(io) => VhostError::Open(io),
            other => VhostError::Setup {
                what: "open it",
                source: other,
            },
        })?;
        handle.set_owner().map_err(setup("take ownership"))?;
        let features = handle.get_features().map_err(setup("read its features"))? & KERNEL_BITS;
        let regions: Vec<VhostUserMemoryRegionInfo> = mem
            .iter()
            .map(|r| VhostUserMemoryRegionInfo {
                guest_phys_addr: r.start_addr().raw_value(),
                memory_size: r.len(),
                userspace_addr: r.as_ptr() as u64,
                mmap_offset: 0,
                mmap_handle: -1,
            })
            .collect();
        handle
            .set_mem_table(&regions)
            .map_err(setup("set the memory table"))?;
        Ok((handle, features))
    }

    /// Of the device's `offered` features, those this path can serve: ring features only
    /// if the kernel has them.
    pub fn offerable(&self, offered: u64) -> u64 {
        offered & !(KERNEL_BITS & !self.features)
    }

    /// The eventfds the kernel signals for used buffers, in queue order.
    pub fn calls(&self) -> &[EventFd] {
        &self.calls
    }

    /// Makes the kernel signal used buffers of every queue on `irq` (the device's one
    /// interrupt eventfd) instead of one eventfd per queue; takes effect at the next start.
    pub fn share_calls(&mut self, irq: &EventFd) -> std::io::Result<()> {
        for call in &mut self.calls {
            *call = irq.try_clone()?;
        }
        Ok(())
    }

    /// Hands the rings of the first `pairs` pairs to the kernel: `acked` the negotiated
    /// features, `queues` and `kicks` the device's queues (rx0, tx0, rx1, ...) and their
    /// notification eventfds.
    pub fn start(
        &mut self,
        acked: u64,
        queues: &[Queue],
        kicks: &[EventFd],
        pairs: usize,
    ) -> Result<(), String> {
        self.stop();
        for p in 0..pairs.min(self.pairs.len()) {
            let (Some(q), Some(k), Some(c)) = (
                queues.get(2 * p..2 * p + 2),
                kicks.get(2 * p..2 * p + 2),
                self.calls.get(2 * p..2 * p + 2),
            ) else {
                return Err(format!("vhost-net: queue pair {p} has no queues"));
            };
            if let Err(e) = Self::start_pair(&mut self.pairs[p], acked, q, k, c) {
                self.stop();
                return Err(format!("queue pair {p}: {e}"));
            }
        }
        Ok(())
    }

    fn start_pair(
        pair: &mut PairPath,
        acked: u64,
        queues: &[Queue],
        kicks: &[EventFd],
        calls: &[EventFd],
    ) -> Result<(), String> {
        let h = &pair.handle;
        fn err(what: &'static str) -> impl FnOnce(vhost::Error) -> String {
            move |e| format!("vhost-net: cannot {what}: {e}")
        }
        h.set_features(acked & KERNEL_BITS)
            .map_err(err("set the features"))?;
        for (i, ((q, kick), call)) in queues.iter().zip(kicks).zip(calls).enumerate() {
            if !q.ready() {
                return Err(format!("vhost-net: queue {i} is not ready"));
            }
            let ring = VringConfigData {
                queue_max_size: q.max_size(),
                queue_size: q.size(),
                flags: 0,
                desc_table_addr: q.desc_table(),
                used_ring_addr: q.used_ring(),
                avail_ring_addr: q.avail_ring(),
                log_addr: None,
            };
            h.set_vring_num(i, q.size())
                .map_err(err("set a ring's size"))?;
            h.set_vring_addr(i, &ring)
                .map_err(err("set a ring's addresses"))?;
            h.set_vring_base(i, q.next_avail())
                .map_err(err("set a ring's base"))?;
            h.set_vring_call(i, call)
                .map_err(err("set a ring's call eventfd"))?;
            h.set_vring_kick(i, kick)
                .map_err(err("set a ring's kick eventfd"))?;
        }
        pair.running = true;
        for i in 0..queues.len() {
            h.set_backend(i, Some(&pair.tap))
                .map_err(err("attach the tap"))?;
        }
        Ok(())
    }

    /// Whether the kernel serves any ring now.
    pub fn running(&self) -> bool {
        self.pairs.iter().any(|p| p.running)
    }

    /// Takes the taps away from the rings (VHOST_NET_SET_BACKEND with fd -1): the kernel
    /// stops touching guest memory. (Closing the vhost fds does the same, so a drop needs
    /// no ioctl, on whatever thread.)
    pub fn stop(&mut self) {
        for pair in &mut self.pairs {
            if !pair.running {
                continue;
            }
            pair.running = false;
            for i in 0..2 {
                let _ = pair.handle.set_backend(i, None);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virtio::net::{F_GUEST_CSUM, F_MAC, OFFERED_FEATURES};
    use vm_memory::GuestAddress;

    #[test]
    fn open_says_what_is_missing_or_offers_what_the_kernel_serves() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        let Ok(tap) = File::open("/dev/null") else {
            return;
        };
        let Ok(tap2) = File::open("/dev/null") else {
            return;
        };
        match KernelPath::open(&mem, vec![tap, tap2]) {
            Ok(mut k) => {
                // A host with vhost-net: offloads and config bits are the device's to offer.
                let offered = k.offerable(OFFERED_FEATURES);
                assert_eq!(offered & (F_GUEST_CSUM | F_MAC), F_GUEST_CSUM | F_MAC);
                assert_ne!(offered & VIRTIO_F_VERSION_1, 0);
                // Two pairs: rx0, tx0, rx1, tx1.
                assert_eq!(k.calls().len(), 4);
                assert!(!k.running());
                // On virtio-mmio every ring signals the device's one interrupt eventfd.
                let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
                k.share_calls(&irq).unwrap();
                for call in k.calls() {
                    call.write(1).unwrap();
                }
                assert_eq!(irq.read().unwrap(), 4);
            }
            Err(e) => {
                let line = e.to_string();
                assert!(
                    line.contains(VHOST_NET_PATH) && !line.contains('\n'),
                    "{line}"
                );
                if !std::path::Path::new(VHOST_NET_PATH).exists() {
                    assert!(matches!(e, VhostError::Open(_)), "{e:?}");
                    assert!(line.contains("vhost_net module"), "{line}");
                }
            }
        }
    }
}
