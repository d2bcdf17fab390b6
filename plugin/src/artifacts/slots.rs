//! Fleet-wide pull slots as the store sees them: a turn to download, taken only when bytes will
//! cross the network and given back when the download ends (`docs/artifacts.md`, "A thousand
//! nodes at once").
//!
//! Where the slots come from is not the store's business: in a cluster they are Leases
//! (`reconcile/lease.rs`, `kube` feature); outside one there are none and pulls go at once.
//! One process holds at most one slot: the node is what the fleet counts, so concurrent
//! downloads of the same process (two classes, eager ensures at start-up) share it, and it is
//! given back when the last of them ends.

use std::sync::Arc;

use async_trait::async_trait;
use tokio::sync::Mutex;

/// Gives out slots: waits until one is free (jitter and retries are the source's).
#[async_trait]
pub trait SlotSource: Send + Sync {
    async fn take(&self) -> Box<dyn HeldSlot>;
}

/// A slot taken from a [`SlotSource`].
#[async_trait]
pub trait HeldSlot: Send + Sync {
    /// The slot's name (a Lease's), for logs.
    fn name(&self) -> &str;
    /// Gives the slot back now; waited for, so a process about to exit frees it for the next
    /// node instead of leaving it to expire.
    async fn give_back(self: Box<Self>);
}

/// The pull slots of one process.
#[derive(Clone)]
pub struct PullSlots {
    source: Arc<dyn SlotSource>,
    shared: Arc<Mutex<Shared>>,
}

#[derive(Default)]
struct Shared {
    slot: Option<Box<dyn HeldSlot>>,
    /// Downloads of this process using `slot`.
    users: usize,
}

impl std::fmt::Debug for PullSlots {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PullSlots").finish_non_exhaustive()
    }
}

impl PullSlots {
    pub fn new(source: Arc<dyn SlotSource>) -> Self {
        Self {
            source,
            shared: Arc::default(),
        }
    }

    /// Waits for this process's turn to download: the slot it already holds, or a new one.
    pub async fn turn(&self) -> PullTurn {
        // Held while the source waits: a second download of this process then joins the slot
        // the first one gets instead of asking for another.
        let mut shared = self.shared.lock().await;
        if shared.slot.is_none() {
            let started = std::time::Instant::now();
            let slot = self.source.take().await;
            tracing::info!(
                lease = slot.name(),
                waited_ms = started.elapsed().as_millis() as u64,
                "pull slot taken"
            );
            shared.slot = Some(slot);
        }
        shared.users += 1;
        PullTurn {
            shared: Some(self.shared.clone()),
        }
    }
}

/// One download's use of the process's slot; [`end`](Self::end) it when the download ends
/// (dropping it ends it in the background).
pub struct PullTurn {
    shared: Option<Arc<Mutex<Shared>>>,
}

impl PullTurn {
    pub async fn end(mut self) {
        if let Some(shared) = self.shared.take() {
            leave(shared).await;
        }
    }
}

impl Drop for PullTurn {
    fn drop(&mut self) {
        if let Some(shared) = self.shared.take()
            && let Ok(handle) = tokio::runtime::Handle::try_current()
        {
            handle.spawn(leave(shared));
        }
    }
}

/// The last download of the process gives the slot back.
async fn leave(shared: Arc<Mutex<Shared>>) {
    let mut shared = shared.lock().await;
    shared.users = shared.users.saturating_sub(1);
    if shared.users == 0
        && let Some(slot) = shared.slot.take()
    {
        let name = slot.name().to_owned();
        slot.give_back().await;
        tracing::info!(lease = %name, "pull slot given back");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[derive(Default)]
    struct Counting {
        taken: Arc<AtomicUsize>,
        given_back: Arc<AtomicUsize>,
    }

    struct Slot(Arc<AtomicUsize>);

    #[async_trait]
    impl HeldSlot for Slot {
        fn name(&self) -> &str {
            "slot-0"
        }
        async fn give_back(self: Box<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[async_trait]
    impl SlotSource for Counting {
        async fn take(&self) -> Box<dyn HeldSlot> {
            self.taken.fetch_add(1, Ordering::SeqCst);
            Box::new(Slot(self.given_back.clone()))
        }
    }

    #[tokio::test]
    async fn downloads_of_one_process_share_its_slot_until_the_last_ends() {
        let source = Counting::default();
        let (taken, given_back) = (source.taken.clone(), source.given_back.clone());
        let slots = PullSlots::new(Arc::new(source));
        let (a, b) = futures::future::join(slots.turn(), slots.turn()).await;
        assert_eq!(taken.load(Ordering::SeqCst), 1);
        a.end().await;
        assert_eq!(given_back.load(Ordering::SeqCst), 0, "b still downloads");
        b.end().await;
        assert_eq!(given_back.load(Ordering::SeqCst), 1);
        slots.turn().await.end().await;
        assert_eq!(
            taken.load(Ordering::SeqCst),
            2,
            "a later download asks again"
        );
        assert_eq!(given_back.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_dropped_turn_gives_the_slot_back() {
        let source = Counting::default();
        let given_back = source.given_back.clone();
        let slots = PullSlots::new(Arc::new(source));
        drop(slots.turn().await);
        for _ in 0..100 {
            if given_back.load(Ordering::SeqCst) == 1 {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        panic!("the slot was not given back");
    }
}
