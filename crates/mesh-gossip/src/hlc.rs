//! Hybrid logical clock rules (Kulkarni et al., 2014): stamps that follow wall time but never go
//! backwards and order causally related events, whatever the peers' clocks say. Sans-IO: the
//! wall time is an argument.

use mesh_types::{Hlc, UnixMillis};

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HlcError {
    /// A remote stamp further ahead of our wall clock than the allowed skew: accepting it
    /// would drag our clock (and everyone's after us) into the future.
    #[error("remote clock {remote_ms} ms is {ahead_ms} ms ahead of ours (limit {max_skew_ms} ms)")]
    TooFarAhead {
        remote_ms: UnixMillis,
        ahead_ms: u64,
        max_skew_ms: u64,
    },
    /// More than 2^32 events in one millisecond.
    #[error("the logical counter is exhausted for this millisecond")]
    CounterExhausted,
}

fn next(counter: u32) -> Result<u32, HlcError> {
    counter.checked_add(1).ok_or(HlcError::CounterExhausted)
}

/// The stamp for a local event (or a message we send), after `local`.
pub fn tick(local: Hlc, now_ms: UnixMillis) -> Result<Hlc, HlcError> {
    if now_ms > local.wall_ms {
        Ok(Hlc {
            wall_ms: now_ms,
            counter: 0,
        })
    } else {
        Ok(Hlc {
            wall_ms: local.wall_ms,
            counter: next(local.counter)?,
        })
    }
}

/// Our clock after receiving `remote`: later than both, and than `now_ms`.
pub fn receive(
    local: Hlc,
    remote: Hlc,
    now_ms: UnixMillis,
    max_skew_ms: u64,
) -> Result<Hlc, HlcError> {
    if remote.wall_ms > now_ms.saturating_add(max_skew_ms) {
        return Err(HlcError::TooFarAhead {
            remote_ms: remote.wall_ms,
            ahead_ms: remote.wall_ms - now_ms,
            max_skew_ms,
        });
    }
    let wall_ms = local.wall_ms.max(remote.wall_ms).max(now_ms);
    let counter = match (wall_ms == local.wall_ms, wall_ms == remote.wall_ms) {
        (true, true) => next(local.counter.max(remote.counter))?,
        (true, false) => next(local.counter)?,
        (false, true) => next(remote.counter)?,
        (false, false) => 0,
    };
    Ok(Hlc { wall_ms, counter })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(wall_ms: u64, counter: u32) -> Hlc {
        Hlc { wall_ms, counter }
    }

    #[test]
    fn ticks_follow_wall_time_and_never_go_back() {
        assert_eq!(tick(h(100, 5), 200), Ok(h(200, 0)));
        assert_eq!(tick(h(100, 5), 100), Ok(h(100, 6)));
        assert_eq!(tick(h(100, 5), 50), Ok(h(100, 6)), "a clock stepping back");
        assert_eq!(tick(h(100, u32::MAX), 100), Err(HlcError::CounterExhausted));
    }

    #[test]
    fn receiving_orders_after_both_sides() {
        for (local, remote, now, want) in [
            (h(100, 1), h(90, 7), 95, h(100, 2)),
            (h(100, 1), h(100, 7), 95, h(100, 8)),
            (h(90, 1), h(100, 7), 95, h(100, 8)),
            (h(90, 1), h(80, 7), 95, h(95, 0)),
        ] {
            let got = receive(local, remote, now, 1000).unwrap();
            assert_eq!(got, want, "{local:?} {remote:?} at {now}");
            assert!(got > local && got > remote);
        }
    }

    #[test]
    fn a_stamp_from_too_far_ahead_is_refused() {
        let err = receive(h(100, 0), h(5_000, 0), 1_000, 1_000).unwrap_err();
        assert_eq!(
            err,
            HlcError::TooFarAhead {
                remote_ms: 5_000,
                ahead_ms: 4_000,
                max_skew_ms: 1_000
            }
        );
        assert!(
            receive(h(100, 0), h(2_000, 0), 1_000, 1_000).is_ok(),
            "at the limit"
        );
    }
}
