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

/// Whether the rounds of one [`serve_chains`] call go on once notifications are back on.
///
/// More chains may have arrived meanwhile (`enable_notification` says so): that is a chain
/// published between the round's last pop and re-enabling, the race every device meets,
/// and the driver did not kick for it. A round that then finds no chain although the
/// index said there was one is that race again, or a broken avail ring (index more than a
/// queue size ahead, unreadable entry): a second such round in a row stops. Only in a row:
/// the race may come back any number of times in a call that keeps finding chains, and a
/// chain left behind then waits for a kick that never comes.
#[derive(Debug, Default)]
struct EmptyRounds(u8);

impl EmptyRounds {
    /// After a round that took chains (`popped`) or none, with `more` chains published.
    fn again(&mut self, popped: bool, more: bool) -> bool {
        if !more {
            return false;
        }
        if popped {
            self.0 = 0;
            return true;
        }
        self.0 += 1;
        self.0 < 2
    }
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
    let mut empty = EmptyRounds::default();
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
            Ok(more) if empty.again(popped, more) => {}
            Ok(_) => break,
            Err(_) => return broken,
        }
    }
    Served {
        interrupt: ring.needs_interrupt(),
        unfinished: false,
    }
}

#[cfg(test)]
mod tests {
    use super::EmptyRounds;

    #[test]
    fn rounds_stop_when_nothing_more_was_published() {
        assert!(!EmptyRounds::default().again(true, false));
        assert!(!EmptyRounds::default().again(false, false));
    }

    #[test]
    fn one_empty_round_is_the_race_and_two_in_a_row_a_broken_ring() {
        let mut e = EmptyRounds::default();
        assert!(e.again(false, true));
        assert!(!e.again(false, true));
    }

    #[test]
    fn the_race_may_recur_in_a_call_that_keeps_finding_chains() {
        // Race, chains taken, the race again: a chain is still waiting, and its driver
        // did not kick (it saw the old avail_event).
        let mut e = EmptyRounds::default();
        assert!(e.again(false, true));
        assert!(e.again(true, true));
        assert!(e.again(false, true));
        assert!(!e.again(false, true));
    }
}
