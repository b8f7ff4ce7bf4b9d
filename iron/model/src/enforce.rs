//! What Iron does with a received packet whose container is out of, or nearly out of, runtime
//! (dissertation §2.2.2).
//!
//! A container with a dedicated receive queue is enforced in "hardware": NAPI stops polling the
//! queue while the container is throttled, so the NIC keeps its interrupt masked and drops into
//! the full ring at no CPU cost; the queue is rescheduled on unthrottle. A container without one
//! gets a software drop early in `__netif_receive_skb`, before the protocol stack runs. Both
//! start once the container is within `T %` of its quota (the dedicated queue is parked, the
//! shared one's packets dropped), so the last of its runtime is not spent on a flood it cannot
//! keep up with. A parked queue is rescheduled on the CPU that polled it (its interrupt's CPU),
//! not on the CPU whose period timer refilled the container.

use crate::refill::Bandwidth;

/// How a container's traffic reaches it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum QueueMode {
    /// The container owns a receive queue (NIC queue bound with `cpu.iron.queue`).
    Dedicated,
    /// The container shares queues; packets are classified in software.
    Shared,
}

/// The fate of a packet, or of a poll of a dedicated queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Process normally.
    Deliver,
    /// Drop before the protocol stack (software drop, early drop at `T %`).
    Drop,
    /// Leave the queue unpolled with its interrupt masked until the container is refilled.
    Park,
}

/// Early drop threshold `T` in percent of quota; 0 disables early drop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EarlyDrop(pub u8);

impl EarlyDrop {
    /// Whether a container with this pool is within `T %` of its quota.
    pub fn near_quota(self, bw: &Bandwidth) -> bool {
        self.0 > 0 && bw.remaining_pct() <= f64::from(self.0)
    }
}

/// Decides what happens to a container's incoming traffic.
pub fn verdict(bw: &Bandwidth, mode: QueueMode, early: EarlyDrop) -> Verdict {
    if !bw.throttled() && !early.near_quota(bw) {
        return Verdict::Deliver;
    }
    match mode {
        QueueMode::Dedicated => Verdict::Park,
        QueueMode::Shared => Verdict::Drop,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    #[test]
    fn throttled_dedicated_queue_is_parked_shared_is_dropped() {
        let mut b = Bandwidth::new(10 * MS, 100 * MS);
        b.refill_local(20 * MS as i64, 0, 5 * MS);
        assert!(b.throttled());
        assert_eq!(
            verdict(&b, QueueMode::Dedicated, EarlyDrop(5)),
            Verdict::Park
        );
        assert_eq!(verdict(&b, QueueMode::Shared, EarlyDrop(0)), Verdict::Drop);
        b.refill_global();
        b.refill_global();
        assert_eq!(
            verdict(&b, QueueMode::Dedicated, EarlyDrop(5)),
            Verdict::Deliver
        );
    }

    #[test]
    fn early_drop_within_t_percent() {
        let mut b = Bandwidth::new(100 * MS, 100 * MS);
        b.refill_local(0, 0, 96 * MS); // 4 ms left = 4 %
        assert_eq!(verdict(&b, QueueMode::Shared, EarlyDrop(5)), Verdict::Drop);
        assert_eq!(
            verdict(&b, QueueMode::Shared, EarlyDrop(3)),
            Verdict::Deliver
        );
        assert_eq!(
            verdict(&b, QueueMode::Shared, EarlyDrop(0)),
            Verdict::Deliver
        );
        // A dedicated queue is parked, not drained into drops (the kernel's iron_napi_park).
        assert_eq!(
            verdict(&b, QueueMode::Dedicated, EarlyDrop(5)),
            Verdict::Park
        );
        assert_eq!(
            verdict(&b, QueueMode::Dedicated, EarlyDrop(3)),
            Verdict::Deliver
        );
    }
}
