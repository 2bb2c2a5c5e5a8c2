//! Liveness and readiness for orchestrators (a Kubernetes DaemonSet's probes):
//! `GET /healthz` and `GET /readyz`, served on `--health ADDR` (127.0.0.1:9465 when
//! given without an address) and on the Prometheus listener when there is one.
//!
//! - `/healthz` (liveness) answers 200 while the interval loop is alive: during
//!   start-up, and afterwards as long as an interval closed (successfully or not)
//!   within [`Health::stall_limit`]; 503 when the loop has stalled, so the orchestrator
//!   restarts the agent.
//! - `/readyz` (readiness) answers 200 once the probe is attached and the first interval
//!   has been attributed, until the agent starts stopping; 503 before and after, with
//!   the reason in the body, so no traffic (spans) is routed to an agent that cannot
//!   attribute it.
//!
//! The state is a few atomics the daemon sets; an answer only reads them.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering::Relaxed},
    },
    time::Duration,
};

use axum::{Router, extract::State, http::StatusCode, routing::get};
use tokio::sync::watch;

use crate::clock::monotonic_ns;

/// The default `--health` address when the flag is given without one.
pub const DEFAULT_ADDR: &str = "127.0.0.1:9465";

/// What the loop has reached, shared between the daemon and the endpoints.
#[derive(Clone, Debug)]
pub struct Health(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    stall_limit_ns: u64,
    /// Monotonic ns when the probe was attached (0: not yet).
    attached_ns: AtomicU64,
    /// Monotonic ns of the last interval the loop closed, successfully or not.
    last_tick_ns: AtomicU64,
    /// Intervals attributed successfully.
    intervals: AtomicU64,
    stopping: AtomicBool,
}

impl Health {
    /// The state of a loop whose interval is `interval`.
    pub fn new(interval: Duration) -> Self {
        Self(Arc::new(Inner {
            stall_limit_ns: Self::stall_limit(interval).as_nanos() as u64,
            attached_ns: AtomicU64::new(0),
            last_tick_ns: AtomicU64::new(0),
            intervals: AtomicU64::new(0),
            stopping: AtomicBool::new(false),
        }))
    }

    /// How long the loop may go without closing an interval before it is reported
    /// dead: ten intervals, and at least 30 s (a carbon API's timeout or a slow meter
    /// read within one interval is not a stall).
    pub fn stall_limit(interval: Duration) -> Duration {
        (interval * 10).max(Duration::from_secs(30))
    }

    /// The probe is attached and the loop runs.
    pub fn attached(&self) {
        self.0.attached_ns.store(monotonic_ns().max(1), Relaxed);
    }

    /// The loop closed an interval; `ok` when it was attributed and exported.
    pub fn interval_closed(&self, ok: bool) {
        self.0.last_tick_ns.store(monotonic_ns().max(1), Relaxed);
        if ok {
            self.0.intervals.fetch_add(1, Relaxed);
        }
    }

    /// The agent is stopping: no longer ready for traffic.
    pub fn stopping(&self) {
        self.0.stopping.store(true, Relaxed);
    }

    /// Liveness at monotonic time `now_ns`: `Ok(what)` or `Err(why not)`.
    pub fn liveness(&self, now_ns: u64) -> Result<String, String> {
        let attached = self.0.attached_ns.load(Relaxed);
        if attached == 0 {
            return Ok("alive: starting".into());
        }
        let last = self.0.last_tick_ns.load(Relaxed).max(attached);
        let since = Duration::from_nanos(now_ns.saturating_sub(last));
        let limit = Duration::from_nanos(self.0.stall_limit_ns);
        if since > limit {
            return Err(format!(
                "stalled: no interval closed for {:.1} s (limit {:.0} s)",
                since.as_secs_f64(),
                limit.as_secs_f64()
            ));
        }
        Ok(format!(
            "alive: last interval closed {:.1} s ago",
            since.as_secs_f64()
        ))
    }

    /// Readiness: `Ok(what)` once attached with one interval attributed, `Err(why
    /// not)` before that and while stopping.
    pub fn readiness(&self) -> Result<String, String> {
        if self.0.stopping.load(Relaxed) {
            return Err("not ready: stopping".into());
        }
        if self.0.attached_ns.load(Relaxed) == 0 {
            return Err("not ready: starting (the probe is not attached yet)".into());
        }
        match self.0.intervals.load(Relaxed) {
            0 => Err("not ready: waiting for the first interval".into()),
            n => Ok(format!("ready: {n} intervals attributed")),
        }
    }

    /// The `/healthz` and `/readyz` routes, to serve alone or beside `/metrics`.
    pub fn router(&self) -> Router {
        Router::new()
            .route("/healthz", get(healthz))
            .route("/readyz", get(readyz))
            .with_state(self.clone())
    }
}

fn answer(result: Result<String, String>) -> (StatusCode, String) {
    match result {
        Ok(text) => (StatusCode::OK, text + "\n"),
        Err(text) => (StatusCode::SERVICE_UNAVAILABLE, text + "\n"),
    }
}

async fn healthz(State(health): State<Health>) -> (StatusCode, String) {
    answer(health.liveness(monotonic_ns()))
}

async fn readyz(State(health): State<Health>) -> (StatusCode, String) {
    answer(health.readiness())
}

/// Serves `/healthz` and `/readyz` on `addr` until `shutdown` turns true; returns the
/// bound address.
pub async fn serve(
    addr: SocketAddr,
    health: Health,
    shutdown: watch::Receiver<bool>,
) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!("binding the health endpoint on {addr}: {e}"),
        )
    })?;
    let bound = listener.local_addr()?;
    super::spawn_http(listener, health.router(), shutdown, "health");
    Ok(bound)
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    #[test]
    fn ready_only_after_attach_and_one_interval_and_not_while_stopping() {
        let h = Health::new(Duration::from_secs(1));
        assert!(h.readiness().unwrap_err().contains("starting"));
        h.attached();
        assert!(h.readiness().unwrap_err().contains("first interval"));
        h.interval_closed(false);
        assert!(
            h.readiness().is_err(),
            "a failed interval is not an attributed one"
        );
        h.interval_closed(true);
        assert_eq!(h.readiness(), Ok("ready: 1 intervals attributed".into()));
        h.stopping();
        assert!(h.readiness().unwrap_err().contains("stopping"));
    }

    #[test]
    fn alive_while_starting_and_ticking_dead_once_stalled() {
        let h = Health::new(Duration::from_secs(1));
        let limit = Health::stall_limit(Duration::from_secs(1));
        assert_eq!(limit, Duration::from_secs(30), "at least 30 s");
        assert!(h.liveness(u64::MAX).is_ok(), "start-up is not a stall");
        h.attached();
        let t0 = monotonic_ns();
        assert!(h.liveness(t0 + 29 * S).is_ok(), "counted from the attach");
        assert!(h.liveness(t0 + 31 * S).unwrap_err().contains("stalled"));
        h.interval_closed(false);
        let t1 = monotonic_ns();
        assert!(
            h.liveness(t1 + 29 * S).is_ok(),
            "a failed interval still shows the loop is alive"
        );
        assert!(h.liveness(t1 + 31 * S).is_err());
    }

    #[test]
    fn the_stall_limit_is_ten_intervals_for_long_ones() {
        assert_eq!(
            Health::stall_limit(Duration::from_secs(10)),
            Duration::from_secs(100)
        );
    }
}
