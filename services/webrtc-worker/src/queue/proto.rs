//! Queued messages, sans-IO: the sender's [`Outbox`] for one peer (numbered, bounded, resent
//! from the first unacknowledged on every new link) and the receiver's [`Inlet`] for one peer
//! (delivers each number once, in order, and counts what never came). The driver (`queue::mod`)
//! persists both and moves the frames.
//!
//! Invariants: numbers start at 1 and have no gaps; a message leaves the outbox only when the
//! receiver has acknowledged it or the bound pushed it out, and a push-out is announced to the
//! receiver (`msg_skip`) before anything newer, so the receiver can tell "lost" from "late".

use std::collections::VecDeque;

use bytes::Bytes;
use mesh_types::transfer::MessageKind;
use serde::Serialize;

/// One message waiting for its acknowledgement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Queued {
    pub seq: u64,
    pub kind: MessageKind,
    pub data: Bytes,
}

/// What an outbox has done, for `GET /status` and the benchmark.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct OutboxStats {
    /// Waiting for an acknowledgement (sent or not).
    pub pending: usize,
    /// Acknowledged by the receiver.
    pub delivered: u64,
    /// Pushed out by the bound before they were acknowledged.
    pub dropped: u64,
}

/// The sender's side for one peer.
#[derive(Debug)]
pub struct Outbox {
    capacity: usize,
    /// The number the next message gets.
    next_seq: u64,
    /// Unacknowledged messages, in order.
    queue: VecDeque<Queued>,
    /// The highest number handed to the current link; `None` while there is no link whose
    /// receiver has said where it stands.
    sent_upto: Option<u64>,
    /// The highest number pushed out by the bound and not yet announced on a link.
    skip_due: Option<u64>,
    stats: OutboxStats,
}

/// What the driver sends next on the link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutboxSend {
    /// Tell the receiver that messages up to this number will not come.
    Skip(u64),
    Message(Queued),
}

impl Outbox {
    /// `capacity`: most messages held (at least 1).
    pub fn new(capacity: usize) -> Self {
        Outbox {
            capacity: capacity.max(1),
            next_seq: 1,
            queue: VecDeque::new(),
            sent_upto: None,
            skip_due: None,
            stats: OutboxStats::default(),
        }
    }

    /// Rebuilt from what the driver persisted: the next number, the messages still queued and
    /// the highest number dropped and not yet announced.
    pub fn restore(
        capacity: usize,
        next_seq: u64,
        queue: Vec<Queued>,
        skip_due: Option<u64>,
    ) -> Self {
        let mut o = Outbox::new(capacity);
        o.next_seq = next_seq.max(1);
        o.queue = queue.into();
        o.skip_due = skip_due;
        o
    }

    /// Queues a message; returns its number and the message the bound pushed out, if any.
    pub fn push(&mut self, kind: MessageKind, data: Bytes) -> (u64, Option<Queued>) {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.queue.push_back(Queued { seq, kind, data });
        let dropped = if self.queue.len() > self.capacity {
            let old = self.queue.pop_front();
            if let Some(old) = &old {
                self.stats.dropped += 1;
                self.skip_due = Some(old.seq);
                // A link that had it in flight cannot take it back; what follows is still in
                // order, and the skip goes out before the next message.
                if let Some(s) = self.sent_upto.as_mut() {
                    *s = (*s).max(old.seq);
                }
            }
            old
        } else {
            None
        };
        (seq, dropped)
    }

    /// A link is up and its receiver has delivered everything up to `delivered`: sending
    /// starts again after that.
    pub fn link_up(&mut self, delivered: u64) {
        self.ack(delivered);
        self.sent_upto = Some(delivered);
    }

    /// The link is gone: what was sent and not acknowledged goes again on the next one.
    pub fn link_lost(&mut self) {
        self.sent_upto = None;
    }

    /// The receiver has everything up to `up_to`.
    pub fn ack(&mut self, up_to: u64) {
        while self.queue.front().is_some_and(|m| m.seq <= up_to) {
            self.queue.pop_front();
            self.stats.delivered += 1;
        }
        if self.skip_due.is_some_and(|s| s <= up_to) {
            self.skip_due = None;
        }
    }

    /// The next thing to send on the current link, if any.
    pub fn next_send(&mut self) -> Option<OutboxSend> {
        let sent = self.sent_upto?;
        if let Some(skip) = self.skip_due.take() {
            self.sent_upto = Some(sent.max(skip));
            return Some(OutboxSend::Skip(skip));
        }
        let m = self.queue.iter().find(|m| m.seq > sent)?.clone();
        self.sent_upto = Some(m.seq);
        Some(OutboxSend::Message(m))
    }

    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    pub fn skip_due(&self) -> Option<u64> {
        self.skip_due
    }

    pub fn queued(&self) -> impl Iterator<Item = &Queued> {
        self.queue.iter()
    }

    pub fn stats(&self) -> OutboxStats {
        OutboxStats {
            pending: self.queue.len(),
            ..self.stats
        }
    }
}

/// What the receiver does with a numbered message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    /// The next one: deliver it.
    Deliver,
    /// Delivered before (sent again after a link dropped): acknowledge, do not deliver.
    Duplicate,
    /// Numbers were skipped without a notice (this side lost its state): deliver it and count
    /// the `lost` ones in between.
    AfterGap { lost: u64 },
}

/// The receiver's side for one peer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Inlet {
    /// The highest number delivered (or given up on).
    pub delivered: u64,
    /// Messages that will never be delivered: dropped by the sender's bound, or missing.
    pub lost: u64,
}

impl Inlet {
    pub fn arrive(&mut self, seq: u64) -> Arrival {
        if seq <= self.delivered {
            return Arrival::Duplicate;
        }
        let lost = seq - self.delivered - 1;
        self.delivered = seq;
        if lost == 0 {
            Arrival::Deliver
        } else {
            self.lost += lost;
            Arrival::AfterGap { lost }
        }
    }

    /// The sender dropped messages up to `up_to`: those not delivered are lost. Returns how many.
    pub fn skip(&mut self, up_to: u64) -> u64 {
        let lost = up_to.saturating_sub(self.delivered);
        self.delivered = self.delivered.max(up_to);
        self.lost += lost;
        lost
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(n: u8) -> Bytes {
        Bytes::from(vec![n])
    }

    fn drain(o: &mut Outbox) -> Vec<OutboxSend> {
        std::iter::from_fn(|| o.next_send()).collect()
    }

    fn seqs(sends: &[OutboxSend]) -> Vec<u64> {
        sends
            .iter()
            .map(|s| match s {
                OutboxSend::Message(m) => m.seq,
                OutboxSend::Skip(n) => 1000 + n,
            })
            .collect()
    }

    #[test]
    fn nothing_goes_before_the_receiver_says_where_it_stands() {
        let mut o = Outbox::new(10);
        assert_eq!(o.push(MessageKind::Text, msg(1)).0, 1);
        assert_eq!(o.push(MessageKind::Text, msg(2)).0, 2);
        assert_eq!(o.next_send(), None);
        o.link_up(0);
        assert_eq!(seqs(&drain(&mut o)), vec![1, 2]);
        o.push(MessageKind::Binary, msg(3));
        assert_eq!(seqs(&drain(&mut o)), vec![3]);
        o.ack(3);
        assert_eq!(
            o.stats(),
            OutboxStats {
                pending: 0,
                delivered: 3,
                dropped: 0
            }
        );
    }

    #[test]
    fn a_new_link_resends_from_the_first_unacknowledged() {
        let mut o = Outbox::new(10);
        for n in 1..=5 {
            o.push(MessageKind::Text, msg(n));
        }
        o.link_up(0);
        drain(&mut o);
        o.ack(2);
        o.link_lost();
        assert_eq!(o.next_send(), None, "no link");
        // The receiver got 3 as well before the link dropped.
        o.link_up(3);
        assert_eq!(seqs(&drain(&mut o)), vec![4, 5]);
        assert_eq!(o.stats().delivered, 3);
    }

    #[test]
    fn the_bound_drops_the_oldest_and_announces_it_first() {
        let mut o = Outbox::new(3);
        for n in 1..=5 {
            let (_, dropped) = o.push(MessageKind::Text, msg(n));
            assert_eq!(dropped.map(|d| d.seq), (n > 3).then(|| u64::from(n) - 3));
        }
        assert_eq!(o.stats().dropped, 2);
        o.link_up(0);
        assert_eq!(seqs(&drain(&mut o)), vec![1002, 3, 4, 5]);
        // Announced once; a later link starts after what the receiver has.
        o.link_lost();
        o.link_up(2);
        assert_eq!(seqs(&drain(&mut o)), vec![3, 4, 5]);
    }

    #[test]
    fn a_drop_while_sending_keeps_the_order() {
        let mut o = Outbox::new(2);
        o.link_up(0);
        o.push(MessageKind::Text, msg(1));
        assert_eq!(seqs(&drain(&mut o)), vec![1]);
        o.push(MessageKind::Text, msg(2));
        o.push(MessageKind::Text, msg(3)); // drops 1, which is in flight
        assert_eq!(seqs(&drain(&mut o)), vec![1001, 2, 3]);
    }

    #[test]
    fn the_inlet_delivers_once_in_order_and_counts_the_lost() {
        let mut i = Inlet::default();
        assert_eq!(i.arrive(1), Arrival::Deliver);
        assert_eq!(i.arrive(1), Arrival::Duplicate);
        assert_eq!(i.skip(4), 3);
        assert_eq!(i.arrive(3), Arrival::Duplicate, "given up on");
        assert_eq!(i.arrive(5), Arrival::Deliver);
        assert_eq!(i.arrive(8), Arrival::AfterGap { lost: 2 });
        assert_eq!(
            i,
            Inlet {
                delivered: 8,
                lost: 5
            }
        );
        assert_eq!(i.skip(2), 0, "an old skip changes nothing");
    }

    #[test]
    fn sender_and_receiver_agree_across_drops_and_relinks() {
        // A seeded walk: pushes, partial deliveries, link drops; every number ends up either
        // delivered once or counted lost, never both, never twice.
        let mut o = Outbox::new(4);
        let mut i = Inlet::default();
        let mut delivered = Vec::new();
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        let mut link = false;
        for _ in 0..2000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            match x % 5 {
                0 | 1 => {
                    o.push(MessageKind::Text, msg(0));
                }
                2 if !link => {
                    o.link_up(i.delivered);
                    link = true;
                }
                2 | 3 if link => {
                    // Deliver what is due, acknowledging as we go; sometimes stop early.
                    let budget = (x >> 8) % 4;
                    for _ in 0..budget {
                        match o.next_send() {
                            Some(OutboxSend::Message(m)) => {
                                if i.arrive(m.seq) != Arrival::Duplicate {
                                    delivered.push(m.seq);
                                }
                                o.ack(i.delivered);
                            }
                            Some(OutboxSend::Skip(n)) => {
                                i.skip(n);
                            }
                            None => break,
                        }
                    }
                }
                _ => {
                    o.link_lost();
                    link = false;
                }
            }
        }
        // Finally a link that stays: everything queued arrives.
        if !link {
            o.link_up(i.delivered);
        }
        while let Some(send) = o.next_send() {
            match send {
                OutboxSend::Message(m) => {
                    if i.arrive(m.seq) != Arrival::Duplicate {
                        delivered.push(m.seq);
                    }
                    o.ack(i.delivered);
                }
                OutboxSend::Skip(n) => {
                    i.skip(n);
                }
            }
        }
        let sent = o.next_seq() - 1;
        assert!(
            delivered.windows(2).all(|w| w[0] < w[1]),
            "in order, no duplicates"
        );
        assert_eq!(o.stats().pending, 0);
        assert_eq!(
            delivered.len() as u64 + i.lost,
            sent,
            "delivered or counted lost"
        );
        assert_eq!(
            o.stats().dropped,
            i.lost,
            "every loss is a drop the sender counted"
        );
        assert!(
            i.lost > 0 && !delivered.is_empty(),
            "the walk exercised both"
        );
    }
}
