//! The file-transfer protocol's state, sans-IO: which chunk the sender sends next and what is
//! verified ([`Outgoing`]), how the receiver puts pieces together and which chunks it holds
//! ([`Incoming`]), and the rate and ETA ([`RateMeter`]). No file, socket or clock here: the
//! driver (`files::mod`) reads, writes, hashes and sends, and passes `now` in.
//!
//! Invariants: a chunk is acknowledged only after it passed its digest and was written; the sender
//! never has more than `window` chunks unacknowledged; after a link drops, chunks in flight go back
//! to the front of the queue in their order, verified ones are never sent again.

use std::collections::{BTreeSet, VecDeque};

use mesh_types::transfer::{Control, Manifest, TransferState};

/// The sender's side of one transfer.
#[derive(Debug)]
pub struct Outgoing {
    manifest: Manifest,
    verified: Vec<bool>,
    /// Chunks still to send, in order.
    pending: VecDeque<u32>,
    /// Sent and not yet acknowledged, in the order sent.
    in_flight: VecDeque<u32>,
    window: usize,
    state: TransferState,
    pub repaired: u64,
    pub resumes: u64,
    /// A link carried this transfer before (the next offer is a resume).
    offered_before: bool,
}

/// What a control message meant to the sender.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SenderEvent {
    /// Accepted: sending starts (or resumes) with the chunks the receiver lacks.
    Accepted {
        missing: usize,
    },
    /// A chunk is verified on the other side.
    Progress,
    /// A chunk failed the receiver's check and is queued again.
    Repair(u32),
    Complete,
    /// Refused or cancelled by the receiver: final.
    Ended,
    /// Not for this state (a late or duplicate message): nothing changes.
    Ignored,
}

impl Outgoing {
    /// `window`: most chunks unacknowledged at once (at least 1).
    pub fn new(manifest: Manifest, window: usize) -> Self {
        let n = manifest.chunk_count() as usize;
        Outgoing {
            manifest,
            verified: vec![false; n],
            pending: VecDeque::new(),
            in_flight: VecDeque::new(),
            window: window.max(1),
            state: TransferState::Waiting,
            repaired: 0,
            resumes: 0,
            offered_before: false,
        }
    }

    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// Continues a transfer a previous run of this worker started: its counters carry on, and
    /// the next offer is a resume.
    pub fn restored(mut self, resumes: u64, repaired: u64) -> Self {
        self.resumes = resumes;
        self.repaired = repaired;
        self.offered_before = true;
        self
    }

    pub fn state(&self) -> TransferState {
        self.state
    }

    /// A link to the receiver is up: the offer to send on it (None once final).
    pub fn link_up(&mut self) -> Option<Control> {
        if self.state.is_final() {
            return None;
        }
        if self.offered_before {
            self.resumes += 1;
        }
        self.offered_before = true;
        self.state = TransferState::Offered;
        Some(Control::Offer {
            manifest: Box::new(self.manifest.clone()),
        })
    }

    /// The link dropped: what was in flight is sent again, first, when it is back.
    pub fn link_lost(&mut self) {
        if self.state.is_final() {
            return;
        }
        while let Some(c) = self.in_flight.pop_back() {
            self.pending.push_front(c);
        }
        self.state = TransferState::Paused;
    }

    /// The next chunk to send, if the window allows one.
    pub fn next_chunk(&mut self) -> Option<u32> {
        if self.state != TransferState::Sending || self.in_flight.len() >= self.window {
            return None;
        }
        let c = self.pending.pop_front()?;
        self.in_flight.push_back(c);
        Some(c)
    }

    /// The chunk [`next_chunk`](Self::next_chunk) will hand out next, window permitting: what
    /// the driver may read ahead.
    pub fn peek_next(&self) -> Option<u32> {
        if self.state == TransferState::Sending {
            self.pending.front().copied()
        } else {
            None
        }
    }

    /// Sets a final state from this side (cancelled, failed).
    pub fn end(&mut self, state: TransferState) {
        debug_assert!(state.is_final());
        if !self.state.is_final() {
            self.state = state;
            self.pending.clear();
            self.in_flight.clear();
        }
    }

    pub fn on_control(&mut self, msg: &Control) -> SenderEvent {
        if self.state.is_final() {
            return SenderEvent::Ignored;
        }
        match msg {
            Control::Accept { have, .. } if self.state == TransferState::Offered => {
                // The receiver's list is the truth: a chunk acknowledged before a restart of
                // the receiver but not in its checkpoint is wanted again.
                self.verified.iter_mut().for_each(|v| *v = false);
                for &c in have {
                    if let Some(v) = self.verified.get_mut(c as usize) {
                        *v = true;
                    }
                }
                self.in_flight.clear();
                self.pending = (0..self.verified.len() as u32)
                    .filter(|&c| !self.verified[c as usize])
                    .collect();
                self.state = TransferState::Sending;
                SenderEvent::Accepted {
                    missing: self.pending.len(),
                }
            }
            Control::Ack { chunk, .. } if self.state == TransferState::Sending => {
                // In flight, or queued again after a resume while the receiver was still
                // checking it: either way it need not go (again).
                if let Some(i) = self.in_flight.iter().position(|c| c == chunk) {
                    self.in_flight.remove(i);
                } else if let Some(i) = self.pending.iter().position(|c| c == chunk) {
                    self.pending.remove(i);
                } else {
                    return SenderEvent::Ignored;
                }
                self.verified[*chunk as usize] = true;
                SenderEvent::Progress
            }
            Control::Nack { chunk, .. } if self.state == TransferState::Sending => {
                let Some(v) = self.verified.get_mut(*chunk as usize) else {
                    return SenderEvent::Ignored;
                };
                // A chunk the receiver found bad after all (its whole-file check failed) is
                // unverified again.
                *v = false;
                if let Some(i) = self.in_flight.iter().position(|c| c == chunk) {
                    self.in_flight.remove(i);
                }
                if !self.pending.contains(chunk) {
                    self.pending.push_front(*chunk);
                }
                self.repaired += 1;
                SenderEvent::Repair(*chunk)
            }
            Control::Done { .. }
                if matches!(self.state, TransferState::Sending | TransferState::Offered) =>
            {
                self.verified.iter_mut().for_each(|v| *v = true);
                self.pending.clear();
                self.in_flight.clear();
                self.state = TransferState::Complete;
                SenderEvent::Complete
            }
            Control::Refuse { .. } => {
                self.end(TransferState::Refused);
                SenderEvent::Ended
            }
            Control::Cancel { .. } => {
                self.end(TransferState::Cancelled);
                SenderEvent::Ended
            }
            _ => SenderEvent::Ignored,
        }
    }

    /// Bytes the receiver has verified.
    pub fn bytes_verified(&self) -> u64 {
        self.verified
            .iter()
            .enumerate()
            .filter(|(_, v)| **v)
            .map(|(i, _)| u64::from(self.manifest.chunk_len(i as u32)))
            .sum()
    }

    /// Nothing more to send until acks arrive or the transfer ends.
    pub fn all_sent(&self) -> bool {
        self.pending.is_empty()
    }
}

/// What the receiver does with a piece.
#[derive(Debug, PartialEq, Eq)]
pub enum PieceAction {
    /// The next piece of its chunk: write it at its place and feed it to the chunk's digest (a
    /// piece at offset 0 starts the chunk, and its digest, over). `last`: it ends the chunk,
    /// whose digest is now to be checked.
    Write { last: bool },
    /// Already verified or being checked (sent again after a resume): dropped.
    Duplicate,
    /// Out of order or past the chunk's end: the chunk so far is dropped, ask for it again.
    Resend(u32),
}

#[derive(Debug)]
struct Assembly {
    chunk: u32,
    next_offset: u32,
}

/// The receiver's side of one transfer.
#[derive(Debug)]
pub struct Incoming {
    manifest: Manifest,
    verified: Vec<bool>,
    current: Option<Assembly>,
    /// Chunks handed out as ready and not yet checked (the driver checks and writes them while
    /// the next ones arrive).
    checking: BTreeSet<u32>,
}

impl Incoming {
    /// `verified`: chunks already on disk (from a checkpoint), by index.
    pub fn new(manifest: Manifest, verified: &[u32]) -> Self {
        let mut v = vec![false; manifest.chunk_count() as usize];
        for &c in verified {
            if let Some(slot) = v.get_mut(c as usize) {
                *slot = true;
            }
        }
        Incoming {
            manifest,
            verified: v,
            current: None,
            checking: BTreeSet::new(),
        }
    }

    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// The chunks held, for an `accept` and for the checkpoint.
    pub fn have(&self) -> Vec<u32> {
        (0..self.verified.len() as u32)
            .filter(|&c| self.verified[c as usize])
            .collect()
    }

    pub fn bytes_verified(&self) -> u64 {
        self.have()
            .into_iter()
            .map(|c| u64::from(self.manifest.chunk_len(c)))
            .sum()
    }

    pub fn complete(&self) -> bool {
        self.verified.iter().all(|v| *v)
    }

    /// A new link carries the transfer from here: a half-assembled chunk is dropped, the sender
    /// starts it again from its first piece. Chunks being checked stay so: the writer has all
    /// their pieces and says how they came out; another copy of them is not taken meanwhile
    /// (the sender, which does not find them in `have`, gets their `ack` instead).
    pub fn restart(&mut self) {
        self.current = None;
    }

    pub fn on_piece(&mut self, chunk: u32, offset: u32, len: usize) -> PieceAction {
        let Some(&done) = self.verified.get(chunk as usize) else {
            return PieceAction::Resend(chunk);
        };
        if done || self.checking.contains(&chunk) {
            return PieceAction::Duplicate;
        }
        let chunk_len = self.manifest.chunk_len(chunk);
        if offset == 0 {
            self.current = Some(Assembly {
                chunk,
                next_offset: 0,
            });
        }
        let in_order = self
            .current
            .as_ref()
            .is_some_and(|a| a.chunk == chunk && a.next_offset == offset);
        let end = u64::from(offset) + len as u64;
        if !in_order || end > u64::from(chunk_len) || (len == 0 && chunk_len > 0) {
            self.current = None;
            return PieceAction::Resend(chunk);
        }
        let Some(a) = self.current.as_mut() else {
            return PieceAction::Resend(chunk);
        };
        // `end` is within the chunk's length, a u32.
        a.next_offset = end as u32;
        if a.next_offset < chunk_len {
            return PieceAction::Write { last: false };
        }
        self.current = None;
        self.checking.insert(chunk);
        PieceAction::Write { last: true }
    }

    /// The driver checked (and, if good, wrote) a ready chunk: the message for the sender.
    pub fn checked(&mut self, chunk: u32, good: bool) -> Control {
        self.checking.remove(&chunk);
        let id = self.manifest.id;
        if good {
            if let Some(v) = self.verified.get_mut(chunk as usize) {
                *v = true;
            }
            Control::Ack { id, chunk }
        } else {
            Control::Nack { id, chunk }
        }
    }

    /// The whole-file check failed and these chunks no longer match: they are wanted again.
    pub fn unverify(&mut self, chunks: &[u32]) -> Vec<Control> {
        let id = self.manifest.id;
        chunks
            .iter()
            .filter_map(|&c| {
                let v = self.verified.get_mut(c as usize)?;
                *v = false;
                Some(Control::Nack { id, chunk: c })
            })
            .collect()
    }
}

/// Rate over a sliding window of recent samples, and the time left at that rate.
#[derive(Debug, Clone)]
pub struct RateMeter {
    window_ms: u64,
    samples: VecDeque<(u64, u64)>,
}

impl RateMeter {
    pub fn new(window_ms: u64) -> Self {
        RateMeter {
            window_ms: window_ms.max(1),
            samples: VecDeque::new(),
        }
    }

    /// `bytes` done so far at `now_ms`.
    pub fn record(&mut self, now_ms: u64, bytes: u64) {
        self.samples.push_back((now_ms, bytes));
        while self
            .samples
            .front()
            .is_some_and(|(t, _)| now_ms.saturating_sub(*t) > self.window_ms)
            && self.samples.len() > 2
        {
            self.samples.pop_front();
        }
    }

    /// Bytes per second over the window; 0 until two samples apart in time.
    pub fn rate_bps(&self) -> u64 {
        match (self.samples.front(), self.samples.back()) {
            (Some(&(t0, b0)), Some(&(t1, b1))) if t1 > t0 => {
                (b1.saturating_sub(b0)).saturating_mul(1000) / (t1 - t0)
            }
            _ => 0,
        }
    }

    /// Milliseconds to move `remaining` bytes at the current rate.
    pub fn eta_ms(&self, remaining: u64) -> Option<u64> {
        match self.rate_bps() {
            0 => None,
            r => Some(remaining.saturating_mul(1000) / r),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesh_types::transfer::{Digest, RefuseCode, TransferId};

    const MIB: u64 = 1 << 20;

    fn manifest(size: u64) -> Manifest {
        let n = size.div_ceil(MIB);
        Manifest {
            id: TransferId([1; 16]),
            from: "a".parse().expect("id"),
            to: "b".parse().expect("id"),
            name: "f".into(),
            size,
            chunk_size: MIB as u32,
            sha256: Digest([0; 32]),
            chunks: vec![Digest([0; 32]); n as usize],
            ts: 0,
            sig: String::new(),
            kid: None,
        }
    }

    fn accept(have: &[u32]) -> Control {
        Control::Accept {
            id: TransferId([1; 16]),
            have: have.to_vec(),
        }
    }
    fn ack(chunk: u32) -> Control {
        Control::Ack {
            id: TransferId([1; 16]),
            chunk,
        }
    }
    fn nack(chunk: u32) -> Control {
        Control::Nack {
            id: TransferId([1; 16]),
            chunk,
        }
    }

    fn drain(o: &mut Outgoing) -> Vec<u32> {
        std::iter::from_fn(|| o.next_chunk()).collect()
    }

    #[test]
    fn sender_keeps_to_its_window() {
        let mut o = Outgoing::new(manifest(5 * MIB), 2);
        assert_eq!(drain(&mut o), Vec::<u32>::new(), "nothing before accept");
        assert!(matches!(o.link_up(), Some(Control::Offer { .. })));
        assert_eq!(
            o.on_control(&accept(&[])),
            SenderEvent::Accepted { missing: 5 }
        );
        assert_eq!(drain(&mut o), vec![0, 1]);
        assert_eq!(o.on_control(&ack(1)), SenderEvent::Progress);
        assert_eq!(drain(&mut o), vec![2]);
        assert_eq!(o.bytes_verified(), MIB);
        assert_eq!(o.on_control(&ack(1)), SenderEvent::Ignored, "duplicate ack");
    }

    #[test]
    fn resume_skips_verified_chunks_and_resends_in_flight_first() {
        let mut o = Outgoing::new(manifest(6 * MIB), 3);
        o.link_up();
        o.on_control(&accept(&[]));
        assert_eq!(drain(&mut o), vec![0, 1, 2]);
        o.on_control(&ack(0));
        o.link_lost();
        assert_eq!(o.state(), TransferState::Paused);
        assert_eq!(drain(&mut o), Vec::<u32>::new(), "paused sends nothing");
        o.link_up();
        assert_eq!(o.resumes, 1);
        // The receiver also holds chunk 1 (verified before its ack got out) and chunk 4.
        o.on_control(&accept(&[0, 1, 4]));
        assert_eq!(drain(&mut o), vec![2, 3, 5]);
        assert_eq!(o.bytes_verified(), 3 * MIB);
    }

    #[test]
    fn an_ack_for_a_chunk_queued_again_takes_it_off_the_queue() {
        let mut o = Outgoing::new(manifest(4 * MIB), 1);
        o.link_up();
        o.on_control(&accept(&[]));
        assert_eq!(drain(&mut o), vec![0]);
        o.link_lost();
        o.link_up();
        // The receiver was still checking chunk 0 when it accepted again.
        o.on_control(&accept(&[]));
        assert_eq!(o.on_control(&ack(0)), SenderEvent::Progress);
        assert_eq!(
            drain(&mut o),
            vec![1],
            "chunk 0 does not go again, nor hold the window"
        );
        assert_eq!(o.bytes_verified(), MIB);
    }

    #[test]
    fn the_receivers_list_is_the_truth_on_resume() {
        let mut o = Outgoing::new(manifest(3 * MIB), 3);
        o.link_up();
        o.on_control(&accept(&[]));
        drain(&mut o);
        o.on_control(&ack(0));
        o.on_control(&ack(1));
        o.link_lost();
        o.link_up();
        // The receiver restarted and its checkpoint holds chunk 0 only.
        o.on_control(&accept(&[0]));
        assert_eq!(drain(&mut o), vec![1, 2]);
    }

    #[test]
    fn paused_in_flight_chunks_go_back_in_order() {
        let mut o = Outgoing::new(manifest(6 * MIB), 3);
        o.link_up();
        o.on_control(&accept(&[]));
        drain(&mut o);
        o.link_lost();
        o.link_up();
        o.on_control(&accept(&[]));
        assert_eq!(drain(&mut o), vec![0, 1, 2]);
    }

    #[test]
    fn a_failed_chunk_is_sent_again_next() {
        let mut o = Outgoing::new(manifest(4 * MIB), 2);
        o.link_up();
        o.on_control(&accept(&[]));
        assert_eq!(drain(&mut o), vec![0, 1]);
        assert_eq!(o.on_control(&nack(0)), SenderEvent::Repair(0));
        assert_eq!(drain(&mut o), vec![0]);
        assert_eq!(o.repaired, 1);
        // A whole-file failure unverifies a chunk acknowledged earlier.
        o.on_control(&ack(1));
        o.on_control(&nack(1));
        assert_eq!(drain(&mut o), vec![1]);
        assert_eq!(o.bytes_verified(), 0);
    }

    #[test]
    fn final_states_stick() {
        let id = TransferId([1; 16]);
        let mut o = Outgoing::new(manifest(2 * MIB), 2);
        o.link_up();
        let refuse = Control::Refuse {
            id,
            code: RefuseCode::TooLarge,
            message: "no".into(),
        };
        assert_eq!(o.on_control(&refuse), SenderEvent::Ended);
        assert_eq!(o.state(), TransferState::Refused);
        assert_eq!(o.link_up(), None);
        assert_eq!(o.on_control(&accept(&[])), SenderEvent::Ignored);
        let mut o = Outgoing::new(manifest(2 * MIB), 2);
        o.link_up();
        o.on_control(&accept(&[]));
        assert_eq!(o.on_control(&Control::Done { id }), SenderEvent::Complete);
        assert_eq!(o.bytes_verified(), 2 * MIB);
        o.link_lost();
        assert_eq!(o.state(), TransferState::Complete);
    }

    #[test]
    fn an_empty_file_needs_no_chunk() {
        let mut o = Outgoing::new(manifest(0), 2);
        o.link_up();
        assert_eq!(
            o.on_control(&accept(&[])),
            SenderEvent::Accepted { missing: 0 }
        );
        assert!(o.all_sent());
        assert!(Incoming::new(manifest(0), &[]).complete());
    }

    const MORE: PieceAction = PieceAction::Write { last: false };
    const LAST: PieceAction = PieceAction::Write { last: true };

    #[test]
    fn receiver_takes_pieces_in_order() {
        let half = (MIB / 2) as usize;
        let mut i = Incoming::new(manifest(MIB + 10), &[]);
        assert_eq!(i.on_piece(0, 0, half), MORE);
        assert_eq!(i.on_piece(0, half as u32, half), LAST, "chunk 0 is whole");
        assert_eq!(i.on_piece(0, 0, 1), PieceAction::Duplicate, "being checked");
        assert_eq!(i.checked(0, true), ack(0));
        assert_eq!(i.on_piece(0, 0, half), PieceAction::Duplicate);
        assert_eq!(i.on_piece(1, 0, 10), LAST);
        assert_eq!(i.checked(1, false), nack(1));
        assert!(!i.complete());
        assert_eq!(i.have(), vec![0]);
        // A chunk that failed its check comes again from its start.
        assert_eq!(i.on_piece(1, 0, 10), LAST);
    }

    #[test]
    fn several_chunks_can_be_checked_at_once() {
        let mut i = Incoming::new(manifest(2 * MIB), &[]);
        let whole = MIB as usize;
        assert_eq!(i.on_piece(0, 0, whole), LAST);
        assert_eq!(i.on_piece(1, 0, whole), LAST);
        assert_eq!(i.on_piece(0, 0, 1), PieceAction::Duplicate);
        assert_eq!(i.checked(1, true), ack(1));
        assert_eq!(i.checked(0, true), ack(0));
        assert!(i.complete());
    }

    #[test]
    fn the_sender_says_what_it_will_read_next() {
        let mut o = Outgoing::new(manifest(3 * MIB), 1);
        assert_eq!(o.peek_next(), None, "not before accept");
        o.link_up();
        o.on_control(&accept(&[1]));
        assert_eq!(o.peek_next(), Some(0));
        assert_eq!(drain(&mut o), vec![0]);
        assert_eq!(o.peek_next(), Some(2), "even while the window is full");
    }

    #[test]
    fn receiver_refuses_gaps_and_overruns() {
        let mut i = Incoming::new(manifest(2 * MIB), &[]);
        for (chunk, offset, len) in [
            (0, 100, 10),             // does not start at 0
            (0, 0, MIB as usize + 1), // past the chunk's end
            (5, 0, 10),               // no such chunk
            (1, 0, 0),                // empty piece of a non-empty chunk
        ] {
            assert_eq!(
                i.on_piece(chunk, offset, len),
                PieceAction::Resend(chunk),
                "{chunk}@{offset}+{len}"
            );
        }
        assert_eq!(i.on_piece(0, 0, 10), MORE);
        assert_eq!(i.on_piece(0, 20, 10), PieceAction::Resend(0), "gap");
        // After a restart the chunk starts over.
        assert_eq!(i.on_piece(0, 0, 10), MORE);
        i.restart();
        assert_eq!(i.on_piece(0, 10, 10), PieceAction::Resend(0));
        assert_eq!(i.on_piece(0, 0, 10), MORE);
        // A chunk whose last piece went to the writer is not taken again across a restart;
        // its check still counts.
        assert_eq!(i.on_piece(1, 0, MIB as usize), LAST);
        i.restart();
        assert_eq!(i.on_piece(1, 0, 10), PieceAction::Duplicate);
        assert_eq!(i.checked(1, true), ack(1));
        assert_eq!(i.have(), vec![1]);
    }

    #[test]
    fn a_checkpoint_resumes_the_receiver() {
        let mut i = Incoming::new(manifest(3 * MIB), &[0, 2, 9]);
        assert_eq!(i.have(), vec![0, 2]);
        assert_eq!(i.bytes_verified(), 2 * MIB);
        assert_eq!(i.on_piece(2, 0, 1), PieceAction::Duplicate);
        assert_eq!(i.unverify(&[2]), vec![nack(2)]);
        assert_eq!(i.have(), vec![0]);
        // Found bad after all, the chunk is taken (and written) again.
        assert_eq!(i.on_piece(2, 0, MIB as usize), LAST);
    }

    #[test]
    fn rate_and_eta() {
        let mut r = RateMeter::new(5_000);
        assert_eq!(r.rate_bps(), 0);
        assert_eq!(r.eta_ms(100), None);
        r.record(0, 0);
        r.record(1_000, 10_000);
        assert_eq!(r.rate_bps(), 10_000);
        assert_eq!(r.eta_ms(50_000), Some(5_000));
        // Old samples leave the window: the rate follows the recent pace.
        r.record(10_000, 10_000);
        r.record(11_000, 30_000);
        assert_eq!(r.rate_bps(), 20_000);
    }
}
