//! The payloads waiting to be sent, oldest first, bounded in items. What senders gave
//! the receiver is bounded before it gets here (its [`Ticket`]s are the receiver's
//! budget, no larger than this queue), so the bound only ever drops the agent's own
//! metrics pushes — never the newest of them, which carries every cumulative value the
//! older ones had.
//!
//! [`Ticket`]: crate::receive::admission::Ticket

use std::{
    collections::VecDeque,
    sync::atomic::Ordering,
    time::{Duration, Instant},
};

use super::{Encoded, ForwardStats};

/// Logs at most once per period.
#[derive(Debug, Default)]
pub struct LogEvery(Option<Instant>);

impl LogEvery {
    /// Whether a log line is due (at most one per 10 s).
    pub fn due(&mut self) -> bool {
        let due = self.0.is_none_or(|t| t.elapsed() > Duration::from_secs(10));
        if due {
            self.0 = Some(Instant::now());
        }
        due
    }
}

/// The waiting payloads.
#[derive(Debug, Default)]
pub struct Queue {
    payloads: VecDeque<Encoded>,
    /// Items in `payloads`.
    items: usize,
    drop_log: LogEvery,
}

impl Queue {
    /// Queues a payload; past `max` items, drops the oldest of the agent's own payloads
    /// (never the newest of them), counting and logging what was lost.
    pub fn push(&mut self, p: Encoded, max: usize, stats: &ForwardStats) {
        self.items += p.items;
        self.payloads.push_back(p);
        while self.items > max {
            let mut own =
                (0..self.payloads.len()).filter(|&i| !self.payloads[i].ticket.is_tracked());
            let (Some(i), Some(_newest)) = (own.next(), own.next_back()) else {
                break;
            };
            let Some(old) = self.payloads.remove(i) else {
                break;
            };
            let n = old.items;
            self.items -= n;
            stats.queued.fetch_sub(n as u64, Ordering::Relaxed);
            stats.dropped.fetch_add(n as u64, Ordering::Relaxed);
            if self.drop_log.due() {
                log::warn!(
                    "OTLP queue full ({max} items): dropped an older push of the agent's metrics, {n} items (see energy_agent_otlp_dropped_total)"
                );
            }
        }
    }

    /// The oldest payload, to send.
    pub fn pop(&mut self) -> Option<Encoded> {
        let p = self.payloads.pop_front()?;
        self.items -= p.items;
        Some(p)
    }

    /// A payload to be retried goes first again.
    pub fn push_front(&mut self, p: Encoded) {
        self.items += p.items;
        self.payloads.push_front(p);
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.payloads.is_empty()
    }
}
