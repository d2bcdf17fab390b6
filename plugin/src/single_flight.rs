//! One run per key at a time, shared by every caller: the first caller for a key starts the
//! work on a task of its own, later callers await the same result, and the key is free again
//! once the work is done. A caller that goes away cancels nothing; a run that panics or is
//! dropped frees its key all the same (its callers get what `failed` makes of it).
//!
//! Serves the artifact store (one pull per class) and the reconciler (one ensure per class).

use std::borrow::Borrow;
use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::{Arc, Mutex, MutexGuard};

use futures::future::{BoxFuture, FutureExt, Shared};
use tokio::task::JoinError;

/// A run in flight, as its callers await it.
pub(crate) type Running<T> = Shared<BoxFuture<'static, T>>;

type Map<K, T> = Arc<Mutex<HashMap<K, Running<T>>>>;

/// Runs in flight by key.
pub(crate) struct SingleFlight<K, T> {
    running: Map<K, T>,
}

impl<K, T> Default for SingleFlight<K, T> {
    fn default() -> Self {
        Self {
            running: Arc::new(Mutex::new(HashMap::new())),
        }
    }
}

fn lock<K, T>(map: &Mutex<HashMap<K, Running<T>>>) -> MutexGuard<'_, HashMap<K, Running<T>>> {
    // Each critical section is a single lookup, insert or remove.
    map.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl<K, T> SingleFlight<K, T>
where
    K: Eq + Hash + Send + 'static,
    T: Clone + Send + Sync + 'static,
{
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether a run of `key` is in flight.
    pub fn is_running<Q>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        lock(&self.running).contains_key(key)
    }

    /// Joins the run of `key` in flight, or starts one: `work()` (called only then) on a task
    /// of its own. `failed` is the result of a run whose task did not finish (it panicked, or
    /// the runtime shut down).
    pub fn run<Q, F>(
        &self,
        key: &Q,
        work: impl FnOnce() -> F,
        failed: impl FnOnce(JoinError) -> T + Send + 'static,
    ) -> Running<T>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
        F: Future<Output = T> + Send + 'static,
    {
        let mut running = lock(&self.running);
        if let Some(run) = running.get(key) {
            return run.clone();
        }
        let run = self.start(key.to_owned(), work(), failed);
        running.insert(key.to_owned(), run.clone());
        run
    }

    fn start<F>(
        &self,
        key: K,
        work: F,
        failed: impl FnOnce(JoinError) -> T + Send + 'static,
    ) -> Running<T>
    where
        F: Future<Output = T> + Send + 'static,
    {
        let running = Arc::clone(&self.running);
        // Spawned under the caller's lock of the map: the task's removal waits for the insert.
        let task = tokio::spawn(async move {
            // Made at the first poll, never inside `spawn` (which may drop a task it cannot
            // run, while the caller holds the map's lock).
            let done = Done {
                running,
                key: Some(key),
            };
            let result = work.await;
            drop(done);
            result
        });
        async move { task.await.unwrap_or_else(failed) }
            .boxed()
            .shared()
    }
}

/// Frees a run's key when the run ends: after its work, or when the task is dropped (a panic, a
/// runtime shutting down), so no key is left waiting on a run that will never finish again.
struct Done<K: Eq + Hash, T> {
    running: Map<K, T>,
    key: Option<K>,
}

impl<K: Eq + Hash, T> Drop for Done<K, T> {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            lock(&self.running).remove(&key);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use tokio::sync::Notify;

    use super::*;

    type Flights = SingleFlight<String, Result<usize, String>>;

    fn failed(e: JoinError) -> Result<usize, String> {
        Err(format!("did not finish: {}", e.is_panic()))
    }

    /// A run that counts itself and waits for `release`.
    fn counted(
        runs: &Arc<AtomicUsize>,
        release: &Arc<Notify>,
    ) -> impl Future<Output = Result<usize, String>> + Send + 'static {
        let (runs, release) = (Arc::clone(runs), Arc::clone(release));
        async move {
            let n = runs.fetch_add(1, Ordering::SeqCst) + 1;
            release.notified().await;
            Ok(n)
        }
    }

    #[tokio::test]
    async fn concurrent_callers_share_one_run() {
        let flights = Flights::new();
        let runs = Arc::new(AtomicUsize::new(0));
        let release = Arc::new(Notify::new());
        let callers: Vec<_> = (0..8)
            .map(|_| flights.run("gpu", || counted(&runs, &release), failed))
            .collect();
        assert!(flights.is_running("gpu"));
        assert!(!flights.is_running("cpu"));
        // Another key runs on its own.
        let other = flights.run("cpu", || counted(&runs, &release), failed);
        tokio::task::yield_now().await;
        while runs.load(Ordering::SeqCst) < 2 {
            tokio::task::yield_now().await;
        }
        release.notify_waiters();
        let results = futures::future::join_all(callers).await;
        assert!(results.windows(2).all(|w| w[0] == w[1]), "{results:?}");
        assert!(other.await.is_ok());
        assert_eq!(runs.load(Ordering::SeqCst), 2);
        assert!(!flights.is_running("gpu"));
    }

    #[tokio::test]
    async fn a_finished_key_runs_again() {
        let flights = Flights::new();
        let runs = Arc::new(AtomicUsize::new(0));
        for expected in 1..=2 {
            let count = Arc::clone(&runs);
            let result = flights
                .run(
                    "gpu",
                    || async move { Ok(count.fetch_add(1, Ordering::SeqCst) + 1) },
                    failed,
                )
                .await;
            assert_eq!(result, Ok(expected));
            assert!(!flights.is_running("gpu"));
        }
    }

    #[tokio::test]
    async fn a_caller_that_goes_away_cancels_nothing() {
        let flights = Flights::new();
        let runs = Arc::new(AtomicUsize::new(0));
        let release = Arc::new(Notify::new());
        let first = flights.run("gpu", || counted(&runs, &release), failed);
        // The first caller gives up before the work is done.
        assert!(
            tokio::time::timeout(Duration::from_millis(10), first)
                .await
                .is_err()
        );
        assert!(flights.is_running("gpu"));
        let second = flights.run("gpu", || counted(&runs, &release), failed);
        while runs.load(Ordering::SeqCst) < 1 {
            tokio::task::yield_now().await;
        }
        release.notify_waiters();
        assert_eq!(second.await, Ok(1));
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        assert!(!flights.is_running("gpu"));
    }

    #[tokio::test]
    async fn a_run_that_panics_does_not_wedge_its_key() {
        let flights = Flights::new();
        let result = flights
            .run(
                "gpu",
                || async {
                    if flights_panic() {
                        panic!("boom");
                    }
                    Ok(0)
                },
                failed,
            )
            .await;
        assert_eq!(result, Err("did not finish: true".to_owned()));
        assert!(!flights.is_running("gpu"));
        let again = flights.run("gpu", || async { Ok(7) }, failed).await;
        assert_eq!(again, Ok(7));
    }

    /// Keeps the compiler from seeing the panic as unconditional.
    fn flights_panic() -> bool {
        std::hint::black_box(true)
    }
}
