//! The acknowledgement watermark of one channel.
//!
//! A batch consumer settles its deliveries out of order (batches run concurrently, and
//! within a batch an item may be retried or dead-lettered while its neighbours are
//! done), but acknowledges with `multiple = true`, which acks *every* unacked delivery
//! up to a tag. So the tag it may ack is the highest one below which nothing is still
//! being handled. This type tracks that, and nothing else: no I/O, so it can be tested
//! exhaustively.
//!
//! Delivery tags are per channel: a new channel starts a new watermark.

use std::collections::BTreeMap;

#[derive(Debug)]
enum Slot<A> {
    /// Delivered, still being handled.
    Pending,
    /// Settled: waits for an ack (`A` is what acks it, such as lapin's `Acker`).
    Ready(A),
    /// Settled by a nack of its own (returned to its queue): never to be acked.
    Nacked,
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

    /// The delivery was nacked on its own; a later multiple-ack must not be sent for it.
    pub fn nacked(&mut self, tag: u64) {
        if let Some(slot) = self.slots.get_mut(&tag) {
            *slot = Slot::Nacked;
        }
    }

    /// What to acknowledge now with `multiple = true`: the highest ready tag below which
    /// every delivery is settled, with its acker. Everything up to it is forgotten.
    pub fn advance(&mut self) -> Option<(u64, A)> {
        let mut ack = None;
        while let Some(entry) = self.slots.first_entry() {
            if matches!(entry.get(), Slot::Pending) {
                break;
            }
            let (tag, slot) = entry.remove_entry();
            if let Slot::Ready(acker) = slot {
                ack = Some((tag, acker));
            }
        }
        ack
    }

    /// Deliveries not yet acked or nacked.
    pub fn outstanding(&self) -> usize {
        self.slots.len()
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

    proptest! {
        /// Whatever order items settle in, and however they settle, no tag is ever
        /// covered by a multiple-ack before it is settled, a nacked tag is never the one
        /// acked, acks only move forward, and every ready tag is eventually acked.
        #[test]
        fn no_tag_is_acked_before_it_is_settled_and_every_ready_tag_is_acked(
            order in (1usize..80).prop_flat_map(|n| Just((1..=n as u64).collect::<Vec<_>>()).prop_shuffle()),
            nacks in proptest::collection::vec(any::<bool>(), 80),
            advance_every in 1usize..5,
        ) {
            let n = order.len() as u64;
            let mut w = Watermark::default();
            for tag in 1..=n {
                w.delivered(tag);
            }
            let nacked = |tag: u64| nacks[(tag - 1) as usize % nacks.len()];
            let mut settled = BTreeSet::new();
            let mut acked_up_to = 0;
            for (i, tag) in order.iter().copied().enumerate() {
                if nacked(tag) { w.nacked(tag) } else { w.ready(tag, tag) }
                settled.insert(tag);
                if i % advance_every == 0 {
                    if let Some((up_to, acker)) = w.advance() {
                        prop_assert_eq!(up_to, acker);
                        prop_assert!(up_to > acked_up_to, "acks move forward");
                        prop_assert!(!nacked(up_to), "a nacked tag is never acked");
                        prop_assert!((1..=up_to).all(|t| settled.contains(&t)), "nothing unsettled is covered");
                        acked_up_to = up_to;
                    }
                }
            }
            if let Some((up_to, _)) = w.advance() {
                prop_assert!(up_to > acked_up_to);
                acked_up_to = up_to;
            }
            let last_ready = (1..=n).rev().find(|t| !nacked(*t)).unwrap_or(0);
            prop_assert_eq!(acked_up_to, last_ready, "every ready tag ends up acked");
            prop_assert_eq!(w.outstanding(), 0);
        }
    }
}
