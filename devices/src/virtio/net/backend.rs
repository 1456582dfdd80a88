//! The contract between the virtio-net device and the host side: an fd that carries Ethernet
//! frames, each prefixed by a virtio-net header, plus the offload switches. The device does
//! not know whether that is a tap, a tap on a bridge or a macvtap.

use std::io;
use std::os::fd::AsRawFd;

/// Which offloads the guest can take on receive (it negotiated GUEST_CSUM/TSO4/TSO6): the
/// backend may then hand it frames with partial checksums and up to 64 KiB TSO frames.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Offloads {
    pub csum: bool,
    pub tso4: bool,
    pub tso6: bool,
}

pub trait NetBackend: AsRawFd + Send {
    /// Reads one frame with its header into `buf`; `WouldBlock` when none is waiting.
    fn recv(&mut self, buf: &mut [u8]) -> io::Result<usize>;

    /// Reads one frame with its header, scattered into `iovs`; `WouldBlock` when none waits.
    /// The default reads into a bounce buffer and copies; backends with a real readv
    /// (taps) override it to skip the copy.
    ///
    /// # Safety
    /// Every iovec must point at memory that is valid for writes of its length for the
    /// whole call and not aliased by any Rust reference.
    unsafe fn recv_iovecs(&mut self, iovs: &[libc::iovec]) -> io::Result<usize> {
        let total: usize = iovs.iter().map(|v| v.iov_len).sum();
        let mut buf = vec![0u8; total];
        let n = self.recv(&mut buf)?;
        let mut left = &buf[..n];
        for v in iovs {
            if left.is_empty() {
                break;
            }
            let k = left.len().min(v.iov_len);
            // SAFETY: the caller guarantees `v` is writable for `iov_len` >= k bytes, and
            // `left` is a separate heap buffer.
            unsafe { std::ptr::copy_nonoverlapping(left.as_ptr(), v.iov_base.cast::<u8>(), k) };
            left = &left[k..];
        }
        Ok(n)
    }

    /// Writes one frame with its header, gathered from `iovs`.
    ///
    /// # Safety
    /// Every iovec must point at memory that is valid for reads of its length for the
    /// whole call.
    unsafe fn send(&mut self, iovs: &[libc::iovec]) -> io::Result<usize>;

    /// Length of the virtio-net header in front of every frame.
    fn set_vnet_hdr_len(&mut self, len: usize) -> io::Result<()>;

    /// What the guest accepts on receive.
    fn set_offloads(&mut self, offloads: Offloads) -> io::Result<()>;

    /// Attaches or detaches this queue of a multi-queue backend (a tap's TUNSETQUEUE): a
    /// detached queue is given no frames. Called only on NICs of more than one queue pair.
    fn set_queue_enabled(&mut self, _enabled: bool) -> io::Result<()> {
        Ok(())
    }
}
