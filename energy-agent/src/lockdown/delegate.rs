//! A thread that keeps the agent's remaining capabilities on behalf of the threads that
//! have none: the network-facing threads hand it one question at a time (which process
//! holds the socket of a local sender) and wait for the answer, bounded.

use std::{
    sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel},
    time::Duration,
};

type Job = Box<dyn FnOnce() + Send>;

/// The sending end; cheap to clone.
#[derive(Clone)]
pub struct Delegate {
    jobs: SyncSender<Job>,
}

/// Longest a caller waits for its answer.
const ANSWER_WITHIN: Duration = Duration::from_secs(2);

impl Delegate {
    /// Starts the thread `name`; it holds whatever the spawning thread holds now, and
    /// what the process-wide drop later leaves every thread of the agent.
    pub fn spawn(name: &str) -> std::io::Result<Self> {
        let (jobs, rx): (SyncSender<Job>, Receiver<Job>) = sync_channel(64);
        std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                while let Ok(job) = rx.recv() {
                    job();
                }
            })?;
        Ok(Self { jobs })
    }

    /// Runs `f` on the thread and returns its answer; `None` when the thread is busy
    /// with 64 questions already, gone, or slower than 2 s.
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
        let (tx, rx) = sync_channel(1);
        let job: Job = Box::new(move || {
            let _ = tx.send(f());
        });
        match self.jobs.try_send(job) {
            Ok(()) => rx.recv_timeout(ANSWER_WITHIN).ok(),
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_on_its_own_thread() {
        let d = Delegate::spawn("test-delegate").expect("a thread");
        let name = d.run(|| std::thread::current().name().map(str::to_string));
        assert_eq!(name, Some(Some("test-delegate".into())));
        assert_eq!(d.run(|| 6 * 7), Some(42));
    }
}
