//! The history as a sink: a thread that owns the database and writes what the loops
//! hand it through a bounded queue, so a slow disk never stalls sampling. A full queue
//! drops the newest item and counts it; a failed write is logged (the first, then every
//! hundredth) and counted.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering::Relaxed},
        mpsc::{self, Receiver, SyncSender, TrySendError},
    },
    thread::JoinHandle,
    time::Duration,
};

use super::{HistoryError, RecordConfig, rows::IntervalRow, rows::RunInfo, store::Store};
use crate::requests::RequestSample;

/// Items the queue holds (intervals and request batches).
const QUEUE: usize = 1024;

/// What the sink did, for the agent's own metrics.
#[derive(Debug, Default)]
pub struct SinkStats {
    /// Intervals written.
    pub intervals: AtomicU64,
    /// Requests written.
    pub requests: AtomicU64,
    /// Items dropped because the queue was full.
    pub dropped: AtomicU64,
    /// Writes that failed.
    pub failed: AtomicU64,
}

enum Msg {
    Interval(Box<IntervalRow>),
    Requests(Vec<RequestSample>),
    Flush(mpsc::Sender<()>),
    Close(mpsc::Sender<()>),
    End {
        ended_unix_ns: u64,
        exit_code: Option<i32>,
    },
}

/// The running history writer.
pub struct HistorySink {
    tx: Option<SyncSender<Msg>>,
    stats: Arc<SinkStats>,
    thread: Option<JoinHandle<()>>,
}

impl HistorySink {
    /// Opens the history (errors here, at start-up) and starts the writer thread.
    pub fn start(config: &RecordConfig, run: &RunInfo) -> Result<Self, HistoryError> {
        let store = Store::open(&config.path, run, config.retention)?;
        let (tx, rx) = mpsc::sync_channel(QUEUE);
        let stats = Arc::new(SinkStats::default());
        let thread = {
            let stats = stats.clone();
            std::thread::Builder::new()
                .name("history".into())
                .spawn(move || write_loop(store, rx, &stats))
                .map_err(|e| HistoryError::Thread(e.to_string()))?
        };
        Ok(Self {
            tx: Some(tx),
            stats,
            thread: Some(thread),
        })
    }

    fn send(&self, msg: Msg) {
        let Some(tx) = &self.tx else { return };
        match tx.try_send(msg) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                let n = self.stats.dropped.fetch_add(1, Relaxed);
                if n.is_multiple_of(100) {
                    log::warn!("history: queue full, {} items dropped so far", n + 1);
                }
            }
            Err(TrySendError::Disconnected(_)) => {
                self.stats.failed.fetch_add(1, Relaxed);
            }
        }
    }

    /// Queues one interval.
    pub fn interval(&self, row: IntervalRow) {
        self.send(Msg::Interval(Box::new(row)));
    }

    /// Queues enriched requests.
    pub fn requests(&self, samples: Vec<RequestSample>) {
        if !samples.is_empty() {
            self.send(Msg::Requests(samples));
        }
    }

    /// Waits (at most `timeout`) until everything queued so far is written.
    pub fn flush(&self, timeout: Duration) -> bool {
        self.acknowledged(Msg::Flush, timeout)
    }

    /// Writes everything queued so far and closes the database (at most `timeout`), so
    /// that the file alone holds the run: SQLite moves its write-ahead log into the
    /// database on the last close, which a process that just exits never does. For a
    /// sink others still share (`run`'s stop); what is queued after it is counted failed.
    pub fn close(&self, timeout: Duration) -> bool {
        self.acknowledged(Msg::Close, timeout)
    }

    /// Queues the message `with_ack` makes and waits (at most `timeout`) for the writer
    /// to reach it.
    fn acknowledged(&self, with_ack: fn(mpsc::Sender<()>) -> Msg, timeout: Duration) -> bool {
        let (ack, done) = mpsc::channel();
        self.send(with_ack(ack));
        done.recv_timeout(timeout).is_ok()
    }

    /// The writer's counters.
    pub fn stats(&self) -> &SinkStats {
        &self.stats
    }

    /// Ends the run (its end time, a measured command's exit code) and waits for the
    /// writer to finish.
    pub fn finish(mut self, ended_unix_ns: u64, exit_code: Option<i32>) {
        self.send(Msg::End {
            ended_unix_ns,
            exit_code,
        });
        self.tx = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn write_loop(mut store: Store, rx: Receiver<Msg>, stats: &SinkStats) {
    let failed = |e: HistoryError| {
        let n = stats.failed.fetch_add(1, Relaxed);
        if n.is_multiple_of(100) {
            log::warn!("history: {e} ({} failed writes so far)", n + 1);
        }
    };
    while let Ok(msg) = rx.recv() {
        match msg {
            Msg::Interval(row) => match store.write_interval(&row) {
                Ok(()) => {
                    stats.intervals.fetch_add(1, Relaxed);
                }
                Err(e) => failed(e),
            },
            Msg::Requests(samples) => match store.write_requests(&samples) {
                Ok(()) => {
                    stats.requests.fetch_add(samples.len() as u64, Relaxed);
                }
                Err(e) => failed(e),
            },
            Msg::Flush(ack) => {
                let _ = ack.send(());
            }
            Msg::Close(ack) => {
                if let Err(e) = store.close() {
                    failed(e);
                }
                // Later items find the queue gone (counted failed), not a queue no one reads.
                drop(rx);
                let _ = ack.send(());
                return;
            }
            Msg::End {
                ended_unix_ns,
                exit_code,
            } => {
                if let Err(e) = store.end_run(ended_unix_ns, exit_code) {
                    failed(e);
                }
            }
        }
    }
}
