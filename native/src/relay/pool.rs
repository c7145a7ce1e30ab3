//! Parked threads for connections. Creating a thread (clone, stack mapping,
//! TLS) and tearing it down costs tens of microseconds, twice per connection
//! (one thread per direction); a new connection instead wakes a parked
//! thread when one is idle, and only spawns when none is. Threads idle
//! longer than `keep_idle` exit, so a burst does not pin its threads forever.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

type Job = Box<dyn FnOnce() + Send + 'static>;

#[derive(Default)]
struct State {
    jobs: VecDeque<Job>,
    idle: usize,
}

struct Inner {
    state: Mutex<State>,
    ready: Condvar,
    stack: usize,
    keep_idle: Duration,
}

/// A growing pool of worker threads.
#[derive(Clone)]
pub(crate) struct Pool(Arc<Inner>);

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = self.0.state.lock().unwrap_or_else(|e| e.into_inner());
        f.debug_struct("Pool").field("idle", &s.idle).field("queued", &s.jobs.len()).finish()
    }
}

impl Pool {
    pub(crate) fn new(stack: usize, keep_idle: Duration) -> Pool {
        Pool(Arc::new(Inner { state: Mutex::default(), ready: Condvar::new(), stack, keep_idle }))
    }

    /// Runs `job` on an idle thread, or on a new one when none is idle.
    pub(crate) fn execute(&self, job: impl FnOnce() + Send + 'static) -> std::io::Result<()> {
        let job: Job = Box::new(job);
        {
            let mut s = self.0.state.lock().unwrap_or_else(|e| e.into_inner());
            // Every queued job needs its own idle thread.
            if s.idle > s.jobs.len() {
                s.jobs.push_back(job);
                drop(s);
                self.0.ready.notify_one();
                return Ok(());
            }
        }
        let inner = self.0.clone();
        std::thread::Builder::new().name("pymesh-relay".into()).stack_size(self.0.stack).spawn(move || {
            job();
            worker(&inner);
        })?;
        Ok(())
    }

    /// Threads parked now.
    #[cfg(test)]
    pub(crate) fn idle(&self) -> usize {
        self.0.state.lock().unwrap_or_else(|e| e.into_inner()).idle
    }
}

fn worker(inner: &Inner) {
    loop {
        let job = {
            let mut s = inner.state.lock().unwrap_or_else(|e| e.into_inner());
            s.idle += 1;
            loop {
                if let Some(j) = s.jobs.pop_front() {
                    s.idle -= 1;
                    break Some(j);
                }
                let (g, t) = inner.ready.wait_timeout(s, inner.keep_idle).unwrap_or_else(|e| e.into_inner());
                s = g;
                if t.timed_out() && s.jobs.is_empty() {
                    s.idle -= 1;
                    break None;
                }
            }
        };
        match job {
            Some(j) => j(),
            None => return,
        }
    }
}
