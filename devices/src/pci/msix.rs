//! MSI-X (PCI Local Bus 3.0, 6.8.2): a table of vectors the driver programs with a message
//! address and data, each with its own mask, and a pending-bit array for what fired while
//! masked. Each vector is a GSI of its own whose route the VMM keeps pointed at the
//! message, and an eventfd bound to that GSI (irqfd): raising a vector is one write.

use std::sync::Arc;

use vmm_sys_util::eventfd::EventFd;

/// What the driver wrote into a table entry.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MsiMessage {
    pub address: u64,
    pub data: u32,
}

/// The VMM's side of MSI: routes and irqfds in the hypervisor.
pub trait MsiRoutes: Send + Sync {
    /// Points `gsi` at `message`.
    fn route(&self, gsi: u32, message: MsiMessage) -> Result<(), String>;
    /// Makes a write of `evt` inject `gsi` (irqfd).
    fn bind(&self, evt: &EventFd, gsi: u32) -> Result<(), String>;
    /// Undoes [`MsiRoutes::bind`].
    fn unbind(&self, evt: &EventFd, gsi: u32) -> Result<(), String>;
}

/// The vector number that means "no interrupt" (virtio 1.2, 4.1.5.1.2).
pub const NO_VECTOR: u16 = 0xffff;
/// Bytes per table entry, and the entry's vector-control dword.
pub const ENTRY_SIZE: u64 = 16;
const ENTRY_CONTROL: u64 = 12;
const MASKED: u32 = 1;
/// Message control: the table size field, function mask and enable.
pub const CONTROL_FUNCTION_MASK: u16 = 1 << 14;
pub const CONTROL_ENABLE: u16 = 1 << 15;

#[derive(Debug, Clone, Copy)]
struct Entry {
    message: MsiMessage,
    control: u32,
}

impl Default for Entry {
    // Every vector starts masked (6.8.2.9).
    fn default() -> Self {
        Self {
            message: MsiMessage::default(),
            control: MASKED,
        }
    }
}

/// Errors setting up a function's vectors.
#[derive(Debug, thiserror::Error)]
pub enum MsixError {
    #[error("cannot create the eventfd of MSI-X vector {vector}: {source}")]
    EventFd { vector: u16, source: std::io::Error },
    #[error("cannot bind MSI-X vector {vector} to GSI {gsi}: {reason}")]
    Bind {
        vector: u16,
        gsi: u32,
        reason: String,
    },
}

/// A function's MSI-X vectors.
pub struct Msix {
    entries: Vec<Entry>,
    pending: Vec<bool>,
    enabled: bool,
    function_masked: bool,
    gsi_base: u32,
    irqs: Vec<EventFd>,
    routes: Arc<dyn MsiRoutes>,
    /// The last route request the hypervisor refused: the vector then stays silent.
    pub route_error: Option<String>,
}

impl Msix {
    /// `vectors` vectors on GSIs `gsi_base..gsi_base + vectors`.
    pub fn new(vectors: u16, gsi_base: u32, routes: Arc<dyn MsiRoutes>) -> Result<Self, MsixError> {
        let mut irqs = Vec::with_capacity(usize::from(vectors));
        for vector in 0..vectors {
            let evt = EventFd::new(libc::EFD_NONBLOCK)
                .map_err(|source| MsixError::EventFd { vector, source })?;
            let gsi = gsi_base + u32::from(vector);
            routes.bind(&evt, gsi).map_err(|reason| MsixError::Bind {
                vector,
                gsi,
                reason,
            })?;
            irqs.push(evt);
        }
        Ok(Self {
            entries: vec![Entry::default(); usize::from(vectors)],
            pending: vec![false; usize::from(vectors)],
            enabled: false,
            function_masked: false,
            gsi_base,
            irqs,
            routes,
            route_error: None,
        })
    }

    pub fn vectors(&self) -> u16 {
        self.entries.len() as u16
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// The GSI of `vector`, if the function has it.
    pub fn gsi(&self, vector: u16) -> Option<u32> {
        (usize::from(vector) < self.entries.len()).then(|| self.gsi_base + u32::from(vector))
    }

    /// Whether a message on `vector` reaches the guest now: MSI-X on, neither the function
    /// nor the vector masked.
    pub fn delivers(&self, vector: u16) -> bool {
        self.enabled
            && !self.function_masked
            && self
                .entries
                .get(usize::from(vector))
                .is_some_and(|e| e.control & MASKED == 0)
    }

    pub fn routes(&self) -> &Arc<dyn MsiRoutes> {
        &self.routes
    }

    /// Whether some vector waits behind a mask.
    pub fn any_pending(&self) -> bool {
        self.pending.iter().any(|&p| p)
    }

    /// The driver wrote the capability's message control.
    pub fn set_control(&mut self, control: u16) {
        self.enabled = control & CONTROL_ENABLE != 0;
        self.function_masked = control & CONTROL_FUNCTION_MASK != 0;
        self.deliver_pending();
    }

    /// Raises `vector`, or leaves it pending while masked. Without MSI-X enabled nothing
    /// is delivered: this function has no INTx pin.
    pub fn signal(&mut self, vector: u16) {
        let v = usize::from(vector);
        if v >= self.entries.len() || !self.enabled {
            return;
        }
        if self.function_masked || self.entries[v].control & MASKED != 0 {
            self.pending[v] = true;
            return;
        }
        // A full counter still means "interrupt pending": nothing is lost.
        let _ = self.irqs[v].write(1);
    }

    fn deliver_pending(&mut self) {
        if !self.enabled || self.function_masked {
            return;
        }
        for v in 0..self.entries.len() {
            if self.pending[v] && self.entries[v].control & MASKED == 0 {
                self.pending[v] = false;
                let _ = self.irqs[v].write(1);
            }
        }
    }

    /// A read of the table at `offset`: dwords only, anything else reads as zero.
    pub fn read_table(&self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        let Some((entry, field)) = self.locate(offset, data.len()) else {
            return;
        };
        let value = match field {
            0 => entry.message.address as u32,
            4 => (entry.message.address >> 32) as u32,
            8 => entry.message.data,
            _ => entry.control,
        };
        data.copy_from_slice(&value.to_le_bytes());
    }

    /// A write of the table: the route follows the message, an unmask delivers what is
    /// pending.
    pub fn write_table(&mut self, offset: u64, data: &[u8]) {
        let Ok(bytes) = <[u8; 4]>::try_from(data) else {
            return;
        };
        if self.locate(offset, 4).is_none() {
            return;
        }
        let v = (offset / ENTRY_SIZE) as usize;
        let value = u32::from_le_bytes(bytes);
        let entry = &mut self.entries[v];
        let before = entry.message;
        match offset % ENTRY_SIZE {
            0 => entry.message.address = (entry.message.address & !0xffff_ffff) | u64::from(value),
            4 => {
                entry.message.address =
                    (entry.message.address & 0xffff_ffff) | (u64::from(value) << 32)
            }
            8 => entry.message.data = value,
            _ => entry.control = value & MASKED,
        }
        let message = entry.message;
        if message != before {
            let gsi = self.gsi_base + v as u32;
            if let Err(e) = self.routes.route(gsi, message) {
                self.route_error = Some(format!("vector {v} (GSI {gsi}): {e}"));
            }
        }
        if offset % ENTRY_SIZE == ENTRY_CONTROL {
            self.deliver_pending();
        }
    }

    /// A read of the pending-bit array: 64 vectors per qword, read as dwords or qwords.
    pub fn read_pba(&self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if !matches!(data.len(), 4 | 8) || !offset.is_multiple_of(4) {
            return;
        }
        for (i, b) in data.iter_mut().enumerate() {
            for bit in 0..8 {
                let v = (offset as usize + i) * 8 + bit;
                if self.pending.get(v).copied().unwrap_or(false) {
                    *b |= 1 << bit;
                }
            }
        }
    }

    fn locate(&self, offset: u64, len: usize) -> Option<(&Entry, u64)> {
        if len != 4 || !offset.is_multiple_of(4) {
            return None;
        }
        let entry = self
            .entries
            .get(usize::try_from(offset / ENTRY_SIZE).ok()?)?;
        Some((entry, offset % ENTRY_SIZE))
    }

    /// Table and PBA sizes in bytes, for laying out a BAR.
    pub fn table_size(vectors: u16) -> u64 {
        u64::from(vectors) * ENTRY_SIZE
    }

    pub fn pba_size(vectors: u16) -> u64 {
        u64::from(vectors).div_ceil(64) * 8
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::sync::Mutex;

    /// Records what the VMM was asked to do.
    #[derive(Default)]
    pub struct Recorded {
        pub routes: Mutex<Vec<(u32, MsiMessage)>>,
        pub bound: Mutex<Vec<(i32, u32)>>,
        pub unbound: Mutex<Vec<(i32, u32)>>,
    }

    impl MsiRoutes for Recorded {
        fn route(&self, gsi: u32, message: MsiMessage) -> Result<(), String> {
            self.routes.lock().unwrap().push((gsi, message));
            Ok(())
        }
        fn bind(&self, evt: &EventFd, gsi: u32) -> Result<(), String> {
            use std::os::fd::AsRawFd;
            self.bound.lock().unwrap().push((evt.as_raw_fd(), gsi));
            Ok(())
        }
        fn unbind(&self, evt: &EventFd, gsi: u32) -> Result<(), String> {
            use std::os::fd::AsRawFd;
            self.unbound.lock().unwrap().push((evt.as_raw_fd(), gsi));
            Ok(())
        }
    }

    fn fired(m: &Msix, v: usize) -> bool {
        m.irqs[v].read().is_ok()
    }

    fn w(m: &mut Msix, offset: u64, v: u32) {
        m.write_table(offset, &v.to_le_bytes());
    }

    #[test]
    fn vectors_are_bound_to_consecutive_gsis_and_start_masked() {
        let rec = Arc::new(Recorded::default());
        let mut m = Msix::new(3, 40, rec.clone()).unwrap();
        let gsis: Vec<u32> = rec.bound.lock().unwrap().iter().map(|b| b.1).collect();
        assert_eq!(gsis, vec![40, 41, 42]);
        m.set_control(CONTROL_ENABLE);
        m.signal(1);
        assert!(!fired(&m, 1), "a masked vector fired");
        let mut pba = [0; 8];
        m.read_pba(0, &mut pba);
        assert_eq!(pba[0], 0b10);
        // Programming and unmasking routes it and delivers what was pending.
        w(&mut m, ENTRY_SIZE, 0xfee0_0000);
        w(&mut m, ENTRY_SIZE + 8, 0x41);
        w(&mut m, ENTRY_SIZE + 12, 0);
        assert!(fired(&m, 1));
        assert!(!m.any_pending());
        let routes = rec.routes.lock().unwrap().clone();
        assert_eq!(
            routes.last(),
            Some(&(
                41,
                MsiMessage {
                    address: 0xfee0_0000,
                    data: 0x41
                }
            ))
        );
        m.signal(1);
        assert!(fired(&m, 1));
        let mut d = [0; 4];
        m.read_table(ENTRY_SIZE + 8, &mut d);
        assert_eq!(u32::from_le_bytes(d), 0x41);
    }

    #[test]
    fn function_mask_and_disable_hold_interrupts_back() {
        let rec = Arc::new(Recorded::default());
        let mut m = Msix::new(1, 24, rec).unwrap();
        w(&mut m, 12, 0);
        m.signal(0);
        assert!(!fired(&m, 0), "fired with MSI-X disabled");
        assert!(!m.any_pending());
        m.set_control(CONTROL_ENABLE | CONTROL_FUNCTION_MASK);
        m.signal(0);
        assert!(!fired(&m, 0));
        m.set_control(CONTROL_ENABLE);
        assert!(
            fired(&m, 0),
            "pending vector not delivered on function unmask"
        );
    }

    #[test]
    fn out_of_range_and_odd_accesses_are_ignored() {
        let rec = Arc::new(Recorded::default());
        let mut m = Msix::new(2, 24, rec.clone()).unwrap();
        m.set_control(CONTROL_ENABLE);
        m.signal(7);
        m.signal(NO_VECTOR);
        w(&mut m, 2 * ENTRY_SIZE, 1);
        m.write_table(0, &[1, 2]);
        m.write_table(1, &[1, 2, 3, 4]);
        let mut d = [0xff; 4];
        m.read_table(u64::MAX - 3, &mut d);
        assert_eq!(d, [0; 4]);
        let mut odd = [0xff; 3];
        m.read_pba(0, &mut odd);
        assert!(rec.routes.lock().unwrap().is_empty());
        assert_eq!(m.gsi(1), Some(25));
        assert_eq!(m.gsi(2), None);
    }
}
