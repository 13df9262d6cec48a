//! Messages received on mesh channels, kept for `GET /messages`: bounded by count and bytes;
//! when full the oldest go first and the drop is counted and reported, never silent.

use std::collections::VecDeque;

use base64::Engine as _;
use mesh_types::{PeerId, UnixMillis};
use serde::Serialize;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Received {
    pub from: PeerId,
    pub ts: UnixMillis,
    /// The message, when it was sent as text.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// The message as standard base64, when it was sent as binary.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub base64: Option<String>,
    pub bytes: usize,
}

#[derive(Debug)]
pub struct Inbox {
    messages: VecDeque<Received>,
    bytes: usize,
    max_messages: usize,
    max_bytes: usize,
    dropped: u64,
}

impl Inbox {
    pub fn new(max_messages: usize, max_bytes: usize) -> Self {
        Inbox {
            messages: VecDeque::new(),
            bytes: 0,
            max_messages,
            max_bytes,
            dropped: 0,
        }
    }

    pub fn push(&mut self, from: PeerId, ts: UnixMillis, data: &[u8], text: bool) {
        let message = match (text, std::str::from_utf8(data)) {
            (true, Ok(s)) => Received {
                from,
                ts,
                text: Some(s.to_string()),
                base64: None,
                bytes: data.len(),
            },
            _ => Received {
                from,
                ts,
                text: None,
                base64: Some(base64::engine::general_purpose::STANDARD.encode(data)),
                bytes: data.len(),
            },
        };
        self.bytes += message.bytes;
        self.messages.push_back(message);
        while self.messages.len() > self.max_messages
            || (self.bytes > self.max_bytes && self.messages.len() > 1)
        {
            if let Some(old) = self.messages.pop_front() {
                self.bytes -= old.bytes;
                self.dropped += 1;
                tracing::warn!(from = %old.from, dropped_total = self.dropped, "inbox full: dropped the oldest message");
            }
        }
    }

    /// The newest `limit` messages, oldest first, optionally from one peer.
    pub fn recent(&self, limit: usize, from: Option<&PeerId>) -> Vec<Received> {
        let mut out: Vec<Received> = self
            .messages
            .iter()
            .rev()
            .filter(|m| from.is_none_or(|f| &m.from == f))
            .take(limit)
            .cloned()
            .collect();
        out.reverse();
        out
    }

    /// Messages dropped because the inbox was full, since start.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> PeerId {
        PeerId::new(s).unwrap()
    }

    #[test]
    fn keeps_the_newest_within_bounds_and_counts_drops() {
        let mut inbox = Inbox::new(3, 1000);
        for i in 0..5u8 {
            inbox.push(p("a"), u64::from(i), &[b'0' + i], true);
        }
        let texts: Vec<_> = inbox
            .recent(10, None)
            .into_iter()
            .map(|m| m.text.unwrap())
            .collect();
        assert_eq!(texts, ["2", "3", "4"]);
        assert_eq!(inbox.dropped(), 2);
        let mut small = Inbox::new(100, 10);
        small.push(p("a"), 1, &[0; 6], false);
        small.push(p("a"), 2, &[0; 6], false);
        assert_eq!((small.recent(10, None).len(), small.dropped()), (1, 1));
    }

    #[test]
    fn binary_is_base64_and_filters_apply() {
        let mut inbox = Inbox::new(10, 1000);
        inbox.push(p("a"), 1, &[0xff, 0x00], false);
        inbox.push(p("b"), 2, b"hi", true);
        inbox.push(p("a"), 3, &[0xff], true); // not UTF-8: kept as binary, not mangled
        let from_a = inbox.recent(10, Some(&p("a")));
        assert_eq!(from_a[0].base64.as_deref(), Some("/wA="));
        assert_eq!(from_a[1].base64.as_deref(), Some("/w=="));
        assert_eq!(inbox.recent(1, None)[0].ts, 3);
    }
}
