//! The acknowledgement watermark of one channel.
//!
//! A batch consumer settles its deliveries out of order (batches run concurrently, and
//! within a batch an item may be retried or dead-lettered while its neighbours are
//! done), but acknowledges with `multiple = true`, which acks *every* unacked delivery
//! up to a tag. So the tag it may ack is the highest one below which nothing is still
//! being handled. This type tracks that, and nothing else: no I/O, so it can be tested
//! exhaustively.
//!
//! A delivery waiting for its retry stays unsettled for seconds: what is settled behind
//! it is acked on its own ([`Watermark::stranded`]), so that the channel's prefetch
//! window does not fill with deliveries that are done. Behind a batch that is merely in
//! progress, settled deliveries wait for its multiple-ack, as one frame.
//!
//! Delivery tags are per channel: a new channel starts a new watermark.

use std::collections::BTreeMap;

#[derive(Debug)]
enum Slot<A> {
    /// Delivered, still being handled.
    Pending,
    /// Not settled: held until its retry's delay is over.
    Waiting,
    /// Settled: waits for an ack (`A` is what acks it, such as lapin's `Acker`).
    Ready(A),
    /// Settled on its own (nacked back to its queue, or acked singly): never to be
    /// covered by a multiple-ack's tag again.
    Alone,
}

/// Outstanding deliveries of one channel, by tag.
#[derive(Debug)]
pub struct Watermark<A> {
    slots: BTreeMap<u64, Slot<A>>,
}

impl<A> Default for Watermark<A> {
    fn default() -> Self {
        Watermark { slots: BTreeMap::new() }
    }
}

impl<A> Watermark<A> {
    pub fn delivered(&mut self, tag: u64) {
        self.slots.insert(tag, Slot::Pending);
    }

    /// The delivery is done (handled, or safely handed on): it may be acked.
    pub fn ready(&mut self, tag: u64, acker: A) {
        if let Some(slot) = self.slots.get_mut(&tag) {
            *slot = Slot::Ready(acker);
        }
    }

    /// The delivery is held for a retry: not settled, and what is settled behind it is
    /// [`Watermark::stranded`].
    pub fn waiting(&mut self, tag: u64) {
        if let Some(slot) = self.slots.get_mut(&tag) {
            *slot = Slot::Waiting;
        }
    }

    /// The delivery was nacked on its own; a later multiple-ack must not be sent for it.
    pub fn nacked(&mut self, tag: u64) {
        if let Some(slot) = self.slots.get_mut(&tag) {
            *slot = Slot::Alone;
        }
    }

    /// What to acknowledge now with `multiple = true`: the highest ready tag below which
    /// every delivery is settled, with its acker. Everything up to it is forgotten.
    pub fn advance(&mut self) -> Option<(u64, A)> {
        let mut ack = None;
        while let Some(entry) = self.slots.first_entry() {
            if matches!(entry.get(), Slot::Pending | Slot::Waiting) {
                break;
            }
            let (tag, slot) = entry.remove_entry();
            if let Slot::Ready(acker) = slot {
                ack = Some((tag, acker));
            }
        }
        ack
    }

    /// What is settled but cannot be multiple-acked, because an earlier delivery waits
    /// for its retry: each is to be acked on its own (`multiple = false`) and is
    /// forgotten by the next [`Watermark::advance`] that reaches it. Call after
    /// `advance`.
    pub fn stranded(&mut self) -> Vec<(u64, A)> {
        let mut alone = Vec::new();
        let Some(first) = self.slots.iter().find(|(_, slot)| matches!(slot, Slot::Waiting)).map(|(tag, _)| *tag) else {
            return alone;
        };
        for (tag, slot) in self.slots.range_mut(first..) {
            if matches!(slot, Slot::Ready(_)) {
                if let Slot::Ready(acker) = std::mem::replace(slot, Slot::Alone) {
                    alone.push((*tag, acker));
                }
            }
        }
        alone
    }

    /// Deliveries not yet acked or nacked.
    pub fn outstanding(&self) -> usize {
        self.slots.values().filter(|slot| !matches!(slot, Slot::Alone)).count()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use proptest::prelude::*;

    use super::Watermark;

    #[test]
    fn acks_only_what_is_contiguously_settled() {
        let mut w = Watermark::default();
        for tag in 1..=4 {
            w.delivered(tag);
        }
        w.ready(2, ());
        assert_eq!(w.advance(), None, "1 is still being handled");
        w.ready(1, ());
        assert_eq!(w.advance(), Some((2, ())));
        w.nacked(4);
        assert_eq!(w.advance(), None, "3 is pending; 4 was nacked on its own");
        w.ready(3, ());
        assert_eq!(w.advance(), Some((3, ())), "never an ack for the nacked 4");
        assert_eq!(w.outstanding(), 0);
    }

    #[test]
    fn only_what_is_settled_behind_a_delivery_waiting_for_its_retry_is_acked_on_its_own() {
        let mut w = Watermark::default();
        for tag in 1..=4 {
            w.delivered(tag);
        }
        // 1 is being handled, 2 done: 2 waits for the multiple-ack.
        w.ready(2, ());
        assert_eq!(w.advance(), None);
        assert_eq!(w.stranded(), vec![], "nothing waits for a retry");
        // Now 1 waits for its retry; 2 and 4 are done, 3 is still being handled.
        w.waiting(1);
        w.ready(4, ());
        assert_eq!(w.advance(), None);
        assert_eq!(w.stranded(), vec![(2, ()), (4, ())], "each acked alone");
        assert_eq!(w.stranded(), vec![], "and only once");
        assert_eq!(w.outstanding(), 2, "1 and 3");
        w.ready(3, ());
        assert_eq!(w.advance(), None, "1 still waits");
        w.ready(1, ());
        assert_eq!(w.advance(), Some((3, ())), "never a multiple-ack at a tag acked alone");
        assert_eq!(w.outstanding(), 0);
    }

    proptest! {
        /// Whatever order items settle in, and however they settle, no tag is ever
        /// covered by a multiple-ack before it is settled, a tag nacked or acked alone
        /// is never a multiple-ack's tag, acks only move forward, and every ready tag is
        /// acked exactly once, alone or covered by a multiple-ack.
        #[test]
        fn no_tag_is_acked_before_it_is_settled_and_every_ready_tag_is_acked_once(
            order in (1usize..80).prop_flat_map(|n| Just((1..=n as u64).collect::<Vec<_>>()).prop_shuffle()),
            nacks in proptest::collection::vec(any::<bool>(), 80),
            advance_every in 1usize..5,
            waits in proptest::collection::vec(any::<bool>(), 80),
        ) {
            let n = order.len() as u64;
            let mut w = Watermark::default();
            for tag in 1..=n {
                w.delivered(tag);
            }
            let nacked = |tag: u64| nacks[(tag - 1) as usize % nacks.len()];
            // These wait for a retry (from the start) before they settle.
            for tag in (1..=n).filter(|t| waits[(*t - 1) as usize % waits.len()]) {
                w.waiting(tag);
            }
            let mut settled = BTreeSet::new();
            let mut alone = BTreeSet::new();
            let mut acked_up_to = 0;
            let mut advance = |w: &mut Watermark<u64>, settled: &BTreeSet<u64>, alone: &mut BTreeSet<u64>| {
                if let Some((up_to, acker)) = w.advance() {
                    prop_assert_eq!(up_to, acker);
                    prop_assert!(up_to > acked_up_to, "acks move forward");
                    prop_assert!(!nacked(up_to) && !alone.contains(&up_to), "a multiple-ack's tag was not settled alone");
                    prop_assert!((1..=up_to).all(|t| settled.contains(&t)), "nothing unsettled is covered");
                    acked_up_to = up_to;
                }
                for (tag, acker) in w.stranded() {
                    prop_assert_eq!(tag, acker);
                    prop_assert!(tag > acked_up_to, "not covered by a multiple-ack already");
                    prop_assert!(
                        (1..tag).any(|t| !settled.contains(&t) && waits[(t - 1) as usize % waits.len()]),
                        "acked alone only behind a delivery waiting for its retry"
                    );
                    prop_assert!(alone.insert(tag), "acked alone once");
                }
                Ok(())
            };
            for (i, tag) in order.iter().copied().enumerate() {
                if nacked(tag) { w.nacked(tag) } else { w.ready(tag, tag) }
                settled.insert(tag);
                if i % advance_every == 0 {
                    advance(&mut w, &settled, &mut alone)?;
                }
            }
            advance(&mut w, &settled, &mut alone)?;
            let last_ready = (1..=n).rev().find(|t| !nacked(*t) && !alone.contains(t)).unwrap_or(0);
            prop_assert_eq!(acked_up_to, last_ready, "every ready tag ends up acked");
            prop_assert_eq!(w.outstanding(), 0);
        }
    }
}
