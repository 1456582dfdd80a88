//! What the fuzz targets share: reading the input, the device status bits a transport may
//! show, and a backend that handles the device's iovecs the way the real tap path does
//! (readv/writev).

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex};

use devices::virtio::net::{NetBackend, Offloads};
use devices::virtio::status;
use vmm_sys_util::eventfd::EventFd;

/// Every bit a device status may hold: a transport must never show another.
pub const STATUS_BITS: u32 = status::ACKNOWLEDGE
    | status::DRIVER
    | status::DRIVER_OK
    | status::FEATURES_OK
    | status::DEVICE_NEEDS_RESET
    | status::FAILED;

/// Reads the fuzz input front to back; past its end, zeros.
pub struct Input<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Input<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Self { data, pos: 0 }
    }

    pub fn u8(&mut self) -> u8 {
        let b = self.data.get(self.pos).copied().unwrap_or(0);
        self.pos += 1;
        b
    }

    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }

    pub fn u32(&mut self) -> u32 {
        u32::from(self.u16()) | (u32::from(self.u16()) << 16)
    }

    pub fn done(&self) -> bool {
        self.pos >= self.data.len()
    }
}

/// Frames from "the network", shared between the target and the backend that `Net` owns.
pub type Frames = Arc<Mutex<VecDeque<Vec<u8>>>>;

/// readv/writev refuse more iovecs than this (UIO_MAXIOV): a device that hands the tap
/// more would lose the frame.
const UIO_MAXIOV: usize = 1024;

/// A tap as the device sees it, in user space so that the address sanitizer sees every
/// byte the "kernel" reads or writes through the device's iovecs.
pub struct Backend {
    pub incoming: Frames,
    /// Frames sent, to check that a stopped device sends nothing.
    pub sent: Arc<Mutex<u64>>,
    fd: EventFd,
}

impl Backend {
    pub fn new() -> Self {
        Self {
            incoming: Frames::default(),
            sent: Arc::default(),
            fd: EventFd::new(libc::EFD_NONBLOCK).expect("eventfd"),
        }
    }

    fn next_frame(&mut self) -> io::Result<Vec<u8>> {
        self.incoming
            .lock()
            .unwrap()
            .pop_front()
            .ok_or_else(|| io::Error::from(io::ErrorKind::WouldBlock))
    }
}

impl Default for Backend {
    fn default() -> Self {
        Self::new()
    }
}

impl AsRawFd for Backend {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl NetBackend for Backend {
    fn recv(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let frame = self.next_frame()?;
        let n = frame.len().min(buf.len());
        buf[..n].copy_from_slice(&frame[..n]);
        Ok(n)
    }

    /// readv: the frame scattered over the iovecs in order, the rest of it cut off.
    unsafe fn recv_iovecs(&mut self, iovs: &[libc::iovec]) -> io::Result<usize> {
        assert!(iovs.len() <= UIO_MAXIOV, "{} iovecs for readv", iovs.len());
        let frame = self.next_frame()?;
        let mut left = &frame[..];
        for v in iovs {
            let k = left.len().min(v.iov_len);
            // SAFETY: the caller guarantees `v` is writable for `iov_len` >= k bytes; the
            // frame is a separate heap buffer.
            unsafe { std::ptr::copy_nonoverlapping(left.as_ptr(), v.iov_base.cast::<u8>(), k) };
            left = &left[k..];
        }
        Ok(frame.len() - left.len())
    }

    /// writev: every byte of every iovec read.
    unsafe fn send(&mut self, iovs: &[libc::iovec]) -> io::Result<usize> {
        assert!(iovs.len() <= UIO_MAXIOV, "{} iovecs for writev", iovs.len());
        let mut n = 0;
        let mut sum = 0u8;
        for iov in iovs.iter().filter(|iov| iov.iov_len > 0) {
            // SAFETY: the caller guarantees that every iovec points at memory valid for
            // reads of its length for the whole call.
            let bytes =
                unsafe { std::slice::from_raw_parts(iov.iov_base as *const u8, iov.iov_len) };
            sum = bytes.iter().fold(sum, |s, &b| s.wrapping_add(b));
            n += bytes.len();
        }
        std::hint::black_box(sum);
        *self.sent.lock().unwrap() += 1;
        Ok(n)
    }

    fn set_vnet_hdr_len(&mut self, _len: usize) -> io::Result<()> {
        Ok(())
    }

    fn set_offloads(&mut self, _offloads: Offloads) -> io::Result<()> {
        Ok(())
    }
}
