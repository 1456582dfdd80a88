//! The request-queue loop a device runs on each wake-up: take the driver's chains one by
//! one within the wake-up's [`Budget`], return each to the used ring, and leave
//! notifications as the driver asked. virtio-net's TX queue and virtio-blk's request queue
//! are both this loop around a different per-chain step.

use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;

use super::chain::Budget;
use super::ring::Ring;

/// How one [`serve_chains`] call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Served {
    /// The driver must be interrupted for the chains returned.
    pub interrupt: bool,
    /// The budget ran out with chains still waiting: the transport wakes the queue again.
    pub unfinished: bool,
}

/// Serves `q`'s chains: `step(ring, head, budget)` handles the chain at descriptor `head`
/// (charging what it read to `budget`) and says how many bytes it wrote into the chain's
/// device-writable buffers, which go to the used ring with it. A ring the guest broke
/// stops this queue (nothing more is served, no interrupt), never the VMM.
pub fn serve_chains(
    q: &mut Queue,
    mem: &GuestMemoryMmap,
    budget: &mut Budget,
    mut step: impl FnMut(&Ring, u16, &mut Budget) -> u32,
) -> Served {
    let broken = Served::default();
    let Some(mut ring) = Ring::new(q, mem) else {
        return broken;
    };
    // Rounds that found no chain although the avail index said there was one.
    let mut idle_rounds = 0;
    loop {
        if ring.disable_notification().is_err() {
            return broken;
        }
        let mut popped = false;
        while !budget.spent() {
            let Some(head) = ring.pop() else {
                break;
            };
            popped = true;
            let written = step(&ring, head, budget);
            if ring.add_used(head, written).is_err() {
                return broken;
            }
        }
        if budget.spent() && ring.has_pending() {
            // Notifications stay off: the transport wakes this queue again itself.
            return Served {
                interrupt: ring.needs_interrupt(),
                unfinished: true,
            };
        }
        match ring.enable_notification() {
            // More chains arrived meanwhile. If a round finds none although the index says
            // there are some, the avail ring is broken (index more than a queue size
            // ahead, unreadable entry): one retry covers a chain published between the
            // last pop and enable_notification, a second empty round stops.
            Ok(true) if popped || idle_rounds == 0 => {
                if !popped {
                    idle_rounds += 1;
                }
            }
            Ok(_) => break,
            Err(_) => return broken,
        }
    }
    Served {
        interrupt: ring.needs_interrupt(),
        unfinished: false,
    }
}
