//! The kernel data path (vhost-net): the guest's rings are served by the kernel's vhost
//! worker straight to and from the tap or macvtap, and frames never pass through netvmm.
//!
//! /dev/vhost-net is opened, owned and given the guest memory table when the NIC is built
//! (before the sandbox: the vCPU threads then need only the per-ring ioctls). At DRIVER_OK
//! the rings the driver set up, the negotiated ring features, the queue notification
//! eventfds (the same ones KVM signals through ioeventfd) and one "call" eventfd per queue
//! go to the kernel, then the tap as the backend. virtio-mmio's InterruptStatus must say
//! "used buffer" when the guest's handler reads it, so the call eventfds are not irqfds:
//! netvmm's event loop reads them, sets the bit and injects the interrupt. A reset takes
//! the tap away from the rings; the next DRIVER_OK starts them again.

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

/// One NIC's vhost-net instance.
pub struct KernelPath {
    handle: VhostNetFd<Arc<GuestMemoryMmap>>,
    /// The tap (a duplicate of the device's fd) that the kernel reads and writes.
    tap: File,
    /// What the kernel offers of [`KERNEL_BITS`].
    features: u64,
    /// Signalled by the kernel when it used buffers of queue N.
    calls: Vec<EventFd>,
    running: bool,
}

impl KernelPath {
    /// Opens vhost-net for `queues` queues over `tap`, owned by this process, with all of
    /// `mem` in its memory table.
    pub fn open(mem: &GuestMemoryMmap, tap: File, queues: usize) -> Result<Self, VhostError> {
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
        let calls = (0..queues)
            .map(|_| EventFd::new(libc::EFD_NONBLOCK))
            .collect::<Result<_, _>>()
            .map_err(|e| VhostError::Setup {
                what: "create its call eventfds",
                source: vhost::Error::IOError(e),
            })?;
        Ok(Self {
            handle,
            tap,
            features,
            calls,
            running: false,
        })
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

    /// Hands the rings to the kernel: `acked` the negotiated features, `kicks` the queue
    /// notification eventfds.
    pub fn start(&mut self, acked: u64, queues: &[Queue], kicks: &[EventFd]) -> Result<(), String> {
        self.stop();
        let h = &self.handle;
        fn err(what: &'static str) -> impl FnOnce(vhost::Error) -> String {
            move |e| format!("vhost-net: cannot {what}: {e}")
        }
        h.set_features(acked & KERNEL_BITS)
            .map_err(err("set the features"))?;
        for (i, ((q, kick), call)) in queues.iter().zip(kicks).zip(&self.calls).enumerate() {
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
        self.running = true;
        for i in 0..queues.len() {
            if let Err(e) = h.set_backend(i, Some(&self.tap)) {
                self.stop();
                return Err(err("attach the tap")(e));
            }
        }
        Ok(())
    }

    /// Takes the tap away from the rings: the kernel stops touching guest memory. (Closing
    /// the vhost fd does the same, so a drop needs no ioctl, on whatever thread.)
    pub fn stop(&mut self) {
        if !self.running {
            return;
        }
        self.running = false;
        for i in 0..self.calls.len() {
            let _ = self.handle.set_backend(i, None);
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
        match KernelPath::open(&mem, tap, 2) {
            Ok(k) => {
                // A host with vhost-net: offloads and config bits are the device's to offer.
                let offered = k.offerable(OFFERED_FEATURES);
                assert_eq!(offered & (F_GUEST_CSUM | F_MAC), F_GUEST_CSUM | F_MAC);
                assert_ne!(offered & VIRTIO_F_VERSION_1, 0);
                assert_eq!(k.calls().len(), 2);
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
