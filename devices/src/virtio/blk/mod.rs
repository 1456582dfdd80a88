//! virtio-blk (virtio 1.2, 5.2) on a raw image: one request queue, IN, OUT, FLUSH and
//! GET_ID. Every request is checked against the image and guest memory before any byte
//! moves; a bad one ends in IOERR (or, when it has nowhere to put a status, is returned
//! with nothing written), never in a crash or a stall.
//!
//! I/O runs on the device thread through a bounce buffer: plain `pread`/`pwrite` of at
//! most [`CHUNK`] bytes at a time, so guest memory is only ever touched through
//! vm-memory's checked copies.

use std::fs::File;
use std::os::unix::fs::FileExt;

use virtio_queue::desc::split::Descriptor;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryMmap};

use super::chain::{Budget, Chain};
use super::ring::Ring;
use super::serve::serve_chains;
use super::{Processed, VirtioDevice, Wake, VIRTIO_F_VERSION_1};

pub const VIRTIO_ID_BLOCK: u32 = 2;
/// `size_max` in the config space is the largest data descriptor.
pub const F_SIZE_MAX: u64 = 1 << 1;
/// `seg_max` in the config space is the most data descriptors per request.
pub const F_SEG_MAX: u64 = 1 << 2;
pub const F_RO: u64 = 1 << 5;
pub const F_FLUSH: u64 = 1 << 9;

pub const QUEUE_SIZE: u16 = 256;
pub const SECTOR_SIZE: u64 = 512;
/// Data descriptors per request the driver may use (the header and status take two).
pub const SEG_MAX: u32 = QUEUE_SIZE as u32 - 2;
/// Largest data descriptor the driver may use.
pub const SIZE_MAX: u32 = 1 << 20;
/// The bounce buffer: the most one `pread`/`pwrite` moves.
pub const CHUNK: usize = 64 << 10;
/// Length of the GET_ID answer (virtio 1.2, 5.2.6).
pub const ID_LEN: usize = 20;

const HEADER_LEN: usize = 16;
const T_IN: u32 = 0;
const T_OUT: u32 = 1;
const T_FLUSH: u32 = 4;
const T_GET_ID: u32 = 8;
const S_OK: u8 = 0;
const S_IOERR: u8 = 1;
const S_UNSUPP: u8 = 2;

/// What the device did, for the exit report and the tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BlockStats {
    pub reads: u64,
    pub read_bytes: u64,
    pub writes: u64,
    pub written_bytes: u64,
    pub flushes: u64,
    /// Requests answered IOERR: out of range, bad lengths, wrong directions, a host error,
    /// a write to a read-only disk.
    pub errors: u64,
    pub unsupported: u64,
    /// Chains returned with nothing written: no place for a status, or a broken chain.
    pub dropped: u64,
}

/// One disk's device side: the open image and what was negotiated.
pub struct Block {
    image: File,
    sectors: u64,
    readonly: bool,
    id: [u8; ID_LEN],
    stats: BlockStats,
    descs: Vec<Descriptor>,
    bounce: Vec<u8>,
    /// The guest memory given at activation.
    mem: Option<GuestMemoryMmap>,
}

/// A checked request: what to do and where its data lives in guest memory.
struct Request {
    kind: u32,
    sector: u64,
    /// Data segments (guest address, length): readable for OUT, writable otherwise.
    data: Vec<(GuestAddress, usize)>,
    data_len: usize,
}

impl Block {
    /// A disk of `size` bytes (whole sectors count; a partial last one is not offered).
    /// `id` is the serial the guest reads with GET_ID (cut to 20 bytes).
    pub fn new(image: File, size: u64, readonly: bool, id: &str) -> Self {
        let mut serial = [0u8; ID_LEN];
        let n = id.len().min(ID_LEN);
        serial[..n].copy_from_slice(&id.as_bytes()[..n]);
        Self {
            image,
            sectors: size / SECTOR_SIZE,
            readonly,
            id: serial,
            stats: BlockStats::default(),
            descs: Vec::with_capacity(usize::from(QUEUE_SIZE)),
            bounce: vec![0; CHUNK],
            mem: None,
        }
    }

    pub fn stats(&self) -> BlockStats {
        self.stats
    }

    /// Serves the chain at `head`: returns the bytes written into its writable buffers.
    fn serve(&mut self, ring: &Ring, head: u16, budget: &mut Budget) -> u32 {
        self.descs.clear();
        // Disks do not offer indirect tables.
        let mem = ring.mem();
        let mut chain = Chain::new(ring, head, false);
        let mut whole = true;
        for d in chain.by_ref() {
            match d {
                Ok(d) => self.descs.push(d),
                Err(_) => {
                    whole = false;
                    break;
                }
            }
        }
        budget.charge(chain.read());
        let status = match self
            .descs
            .iter()
            .rev()
            .find(|d| d.is_write_only() && d.len() > 0)
        {
            Some(d) if whole => match d.addr().checked_add(u64::from(d.len()) - 1) {
                Some(at) => at,
                None => {
                    self.stats.dropped += 1;
                    return 0;
                }
            },
            // Nowhere to say what happened: the chain goes back untouched.
            _ => {
                self.stats.dropped += 1;
                return 0;
            }
        };
        let (code, written) = match self.parse(mem) {
            Ok(req) => {
                // Big requests cost their share of the wake-up, like descriptors do.
                budget.charge((req.data_len / CHUNK) as u32);
                self.execute(mem, &req)
            }
            Err(code) => (code, 0),
        };
        match code {
            S_IOERR => self.stats.errors += 1,
            S_UNSUPP => self.stats.unsupported += 1,
            _ => {}
        }
        if mem.write_obj(code, status).is_err() {
            self.stats.dropped += 1;
            return 0;
        }
        (written + 1) as u32
    }

    /// Reads the header and lays out the data of the chain in `self.descs` (the status is
    /// the last writable byte). Errors are the status to answer.
    fn parse(&self, mem: &GuestMemoryMmap) -> Result<Request, u8> {
        // Device-readable descriptors come first, then device-writable ones (2.7.4.2).
        let split = self
            .descs
            .iter()
            .position(|d| d.is_write_only())
            .unwrap_or(self.descs.len());
        if self.descs[split..].iter().any(|d| !d.is_write_only()) {
            return Err(S_IOERR);
        }
        let mut header = [0u8; HEADER_LEN];
        let mut readable = segments(&self.descs[..split]);
        if fill(mem, &mut readable, &mut header).is_err() {
            return Err(S_IOERR);
        }
        let kind = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
        let mut sector_bytes = [0u8; 8];
        sector_bytes.copy_from_slice(&header[8..16]);
        let sector = u64::from_le_bytes(sector_bytes);
        // The writable bytes, less the status byte at their very end.
        let mut writable = segments(&self.descs[split..]);
        if let Some(last) = writable.last_mut() {
            last.1 -= 1;
            if last.1 == 0 {
                writable.pop();
            }
        }
        let (data, extra) = match kind {
            T_OUT => (readable, writable),
            _ => (writable, readable),
        };
        // Data in the wrong direction, beyond the header and the status.
        if extra.iter().any(|s| s.1 > 0) {
            return Err(S_IOERR);
        }
        if data.len() > SEG_MAX as usize || data.iter().any(|s| s.1 > SIZE_MAX as usize) {
            return Err(S_IOERR);
        }
        let data_len = data.iter().map(|s| s.1).sum();
        Ok(Request {
            kind,
            sector,
            data,
            data_len,
        })
    }

    /// Carries out a parsed request: (status, bytes written into guest buffers).
    fn execute(&mut self, mem: &GuestMemoryMmap, req: &Request) -> (u8, usize) {
        match req.kind {
            T_IN | T_OUT => {
                if req.kind == T_OUT && self.readonly {
                    return (S_IOERR, 0);
                }
                let Some(offset) = self.range(req.sector, req.data_len) else {
                    return (S_IOERR, 0);
                };
                let result = self.copy(mem, &req.data, offset, req.kind == T_IN);
                match (result, req.kind) {
                    (Ok(()), T_IN) => {
                        self.stats.reads += 1;
                        self.stats.read_bytes += req.data_len as u64;
                        (S_OK, req.data_len)
                    }
                    (Ok(()), _) => {
                        self.stats.writes += 1;
                        self.stats.written_bytes += req.data_len as u64;
                        (S_OK, 0)
                    }
                    (Err(()), _) => (S_IOERR, 0),
                }
            }
            T_FLUSH => {
                self.stats.flushes += 1;
                // A guest `sync` means the data reached the host file.
                match self.image.sync_data() {
                    Ok(()) => (S_OK, 0),
                    Err(_) => (S_IOERR, 0),
                }
            }
            T_GET_ID => {
                let mut id = &self.id[..];
                let mut written = 0;
                for &(addr, len) in &req.data {
                    let n = len.min(id.len());
                    if mem.write_slice(&id[..n], addr).is_err() {
                        return (S_IOERR, written);
                    }
                    id = &id[n..];
                    written += n;
                }
                (S_OK, written)
            }
            _ => (S_UNSUPP, 0),
        }
    }

    /// The byte offset of `len` bytes at `sector`, if they are whole sectors on the disk.
    fn range(&self, sector: u64, len: usize) -> Option<u64> {
        let len = len as u64;
        if !len.is_multiple_of(SECTOR_SIZE) {
            return None;
        }
        let end = sector.checked_add(len / SECTOR_SIZE)?;
        (end <= self.sectors).then_some(sector * SECTOR_SIZE)
    }

    /// Moves the data of a request between the image at `offset` and the guest buffers
    /// `data`, through the bounce buffer: into the guest for IN, out of it for OUT.
    fn copy(
        &mut self,
        mem: &GuestMemoryMmap,
        data: &[(GuestAddress, usize)],
        mut offset: u64,
        into_guest: bool,
    ) -> Result<(), ()> {
        for &(addr, len) in data {
            let mut done = 0;
            while done < len {
                let n = (len - done).min(CHUNK);
                let buf = &mut self.bounce[..n];
                let at = addr.checked_add(done as u64).ok_or(())?;
                if into_guest {
                    self.image.read_exact_at(buf, offset).map_err(|_| ())?;
                    mem.write_slice(buf, at).map_err(|_| ())?;
                } else {
                    mem.read_slice(buf, at).map_err(|_| ())?;
                    self.image.write_all_at(buf, offset).map_err(|_| ())?;
                }
                done += n;
                offset += n as u64;
            }
        }
        Ok(())
    }
}

/// The (address, length) of each non-empty descriptor. Addresses that would wrap are left
/// for the guest-memory copies to refuse.
fn segments(descs: &[Descriptor]) -> Vec<(GuestAddress, usize)> {
    descs
        .iter()
        .filter(|d| d.len() > 0)
        .map(|d| (d.addr(), d.len() as usize))
        .collect()
}

/// Fills `out` from the front of `segs` and removes what it took from them.
fn fill(
    mem: &GuestMemoryMmap,
    segs: &mut Vec<(GuestAddress, usize)>,
    out: &mut [u8],
) -> Result<(), ()> {
    let mut got = 0;
    while got < out.len() {
        let Some(first) = segs.first_mut() else {
            return Err(());
        };
        let n = first.1.min(out.len() - got);
        mem.read_slice(&mut out[got..got + n], first.0)
            .map_err(|_| ())?;
        got += n;
        first.0 = first.0.checked_add(n as u64).ok_or(())?;
        first.1 -= n;
        if first.1 == 0 {
            segs.remove(0);
        }
    }
    Ok(())
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_BLOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        let ro = if self.readonly { F_RO } else { 0 };
        VIRTIO_F_VERSION_1 | F_SIZE_MAX | F_SEG_MAX | F_FLUSH | ro
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // capacity (sectors), size_max, seg_max (virtio 1.2, 5.2.4).
        let mut config = [0u8; 16];
        config[..8].copy_from_slice(&self.sectors.to_le_bytes());
        config[8..12].copy_from_slice(&SIZE_MAX.to_le_bytes());
        config[12..16].copy_from_slice(&SEG_MAX.to_le_bytes());
        data.fill(0);
        let start = usize::try_from(offset).unwrap_or(usize::MAX);
        if let Some(src) = config.get(start..) {
            let n = src.len().min(data.len());
            data[..n].copy_from_slice(&src[..n]);
        }
    }

    fn activate(&mut self, _features: u64, mem: &GuestMemoryMmap) -> Result<(), String> {
        self.mem = Some(mem.clone());
        Ok(())
    }

    fn reset(&mut self) {
        self.mem = None;
    }

    fn process(&mut self, wake: Wake, queues: &mut [Queue]) -> Processed {
        let [q] = queues else {
            return Processed::default();
        };
        if matches!(wake, Wake::Backend(_)) || !q.ready() {
            return Processed::default();
        }
        let Some(mem) = self.mem.take() else {
            return Processed::default();
        };
        let mut budget = Budget::default();
        let served = serve_chains(q, &mem, &mut budget, |ring, head, budget| {
            self.serve(ring, head, budget)
        });
        self.mem = Some(mem);
        Processed {
            interrupt: u32::from(served.interrupt),
            unfinished: u32::from(served.unfinished),
        }
    }
}

#[cfg(test)]
mod tests;
