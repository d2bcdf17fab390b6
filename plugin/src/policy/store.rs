//! The store of one decision. The policies of a chain decision instantiate into one store, each
//! as a fresh instance with its own linear memory, its own deadline and its own memory-cap flag,
//! so a chain of three builds and drops one store per decision instead of three.
//!
//! Instantiating and, when the store drops, resetting the pool slots are two thirds of a warm
//! decision. A chain therefore keeps a [`Reserve`]: once a decision is answered, its thread drops
//! the decision's store and makes the next decision's, with an instance of each of the chain's
//! first policies, before that decision is asked for. The instances in it have run no call: a
//! decision still starts from instances no other decision touched, only made earlier.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

use wasmtime::component::Instance;
use wasmtime::{Engine, Store};

use super::engine::{INSTANCES_PER_STORE, PolicyEngine};
use super::error::PolicyFailure;
use super::limits::StoreState;

/// Which loaded policy an instance made ahead is of: unique per load in this process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PolicyId(u64);

impl PolicyId {
    pub(crate) fn next() -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        Self(NEXT.fetch_add(1, Ordering::Relaxed))
    }
}

/// The store the policy calls of one decision share: made ahead after the chain's previous
/// decision ([`Chain::tidy`](super::Chain::tidy)), or on the decision's first call. Dropping it
/// gives its instances' pool slots back, reset.
pub struct DecisionStore {
    store: Option<Store<StoreState>>,
    instances: u32,
    /// Instances made ahead in `store` that no call has used yet.
    ready: Vec<(PolicyId, Instance)>,
    /// Loading a policy (`validate-settings`), with the load deadline.
    at_load: bool,
}

impl std::fmt::Debug for DecisionStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DecisionStore")
            .field("instances", &self.instances)
            .field("made_ahead", &self.ready.len())
            .finish_non_exhaustive()
    }
}

/// Why an instance could not be made ahead.
#[derive(Debug, thiserror::Error)]
pub(crate) enum MakeAheadError {
    /// The policy's own start-up code trapped, ran past its deadline or hit the memory cap.
    #[error("{0} (when instantiated)")]
    Policy(PolicyFailure),
    /// The host could not (a pool with no free slot, for one).
    #[error("{0}")]
    Host(String),
}

impl DecisionStore {
    pub(crate) fn new() -> Self {
        Self {
            store: None,
            instances: 0,
            ready: Vec::new(),
            at_load: false,
        }
    }

    /// The store of a policy's `validate-settings` call at load, which gets the load deadline
    /// ([`super::engine::MIN_LOAD_DEADLINE`]).
    pub(crate) fn for_load() -> Self {
        Self {
            at_load: true,
            ..Self::new()
        }
    }

    pub(crate) fn at_load(&self) -> bool {
        self.at_load
    }

    /// The store for one more call of `policy`, with the full deadline armed and the memory-cap
    /// flag clear, so the call's limits and failure are its own; and the policy's instance when
    /// one was made ahead in this store.
    pub(crate) fn for_call(
        &mut self,
        engine: &PolicyEngine,
        policy: PolicyId,
    ) -> (&mut Store<StoreState>, Option<Instance>) {
        let made = self
            .ready
            .iter()
            .position(|(id, _)| *id == policy)
            .map(|at| self.ready.swap_remove(at).1);
        let reusable = self.store.as_ref().is_some_and(|store| {
            (made.is_some() || self.instances < INSTANCES_PER_STORE)
                && Engine::same(store.engine(), engine.wasmtime())
        });
        // An instance belongs to its store: it must not reach another.
        let made = made.filter(|_| reusable);
        if !reusable {
            // Dropped before the next is made: its pool slots are free again first.
            self.discard();
        }
        if made.is_none() {
            self.instances += 1;
        }
        let store = self.store.get_or_insert_with(|| engine.new_store());
        engine.arm(store, self.at_load);
        (store, made)
    }

    /// Makes an instance of `policy` (named `name`) ahead of its call, under a deadline and
    /// memory cap of its own. `Ok(false)`: the store is full, or belongs to another engine than
    /// the policy's.
    pub(crate) fn make_ahead(
        &mut self,
        engine: &PolicyEngine,
        (policy, name): (PolicyId, &str),
        instantiate: impl FnOnce(&mut Store<StoreState>) -> wasmtime::Result<Instance>,
    ) -> Result<bool, MakeAheadError> {
        let other_engine = self
            .store
            .as_ref()
            .is_some_and(|store| !Engine::same(store.engine(), engine.wasmtime()));
        if self.instances >= INSTANCES_PER_STORE || other_engine {
            return Ok(false);
        }
        self.instances += 1;
        let store = self.store.get_or_insert_with(|| engine.new_store());
        engine.arm(store, self.at_load);
        let made = instantiate(store);
        let failed = |store: &Store<StoreState>, error: &wasmtime::Error| {
            MakeAheadError::Policy(engine.failure(name, store, error, self.at_load))
        };
        match made {
            // A cap hit the start-up code survived would be forgotten when the call re-arms the
            // store; instantiated at call time instead, it is put down to the cap if the call
            // fails.
            Ok(_) if store.data().memory.hit => {
                Err(failed(store, &wasmtime::format_err!("memory cap")))
            }
            Ok(instance) => {
                self.ready.push((policy, instance));
                Ok(true)
            }
            Err(e) if store.data().memory.hit || e.downcast_ref::<wasmtime::Trap>().is_some() => {
                Err(failed(store, &e))
            }
            Err(e) => Err(MakeAheadError::Host(format!("{e:#}"))),
        }
    }

    /// After a failed call. The store may hold an instance left mid-call by a trap or the
    /// deadline; the next policy starts in a new store rather than beside it.
    pub(crate) fn discard(&mut self) {
        self.store = None;
        self.instances = 0;
        self.ready.clear();
    }
}

/// Failures in a policy's own code, one after another, after which a chain makes no more
/// spares: a start-up that loops would cost its deadline after every decision. One alone may be
/// a busy node preempting a healthy start-up past a short deadline.
const FAULTS_BEFORE_GIVING_UP: u32 = 3;

/// A chain's decision store made ahead.
///
/// Bounded so the pool cannot run dry (`engine.rs` sizes it): a decision's thread holds one
/// store at a time (the one it decides in, then the spare it makes after dropping that), one
/// thread at a time makes a spare, at most one spare waits, and a retired chain keeps none.
/// That holds for one live chain per engine, as the daemon has.
#[derive(Default)]
pub(crate) struct Reserve {
    slot: Mutex<Slot>,
}

#[derive(Default)]
struct Slot {
    spare: Option<DecisionStore>,
    /// A thread is making a spare; others do not make one beside it.
    making: bool,
    /// The chain was replaced: it makes no more spares.
    retired: bool,
    /// Spares that failed in a policy's own code since the last one made. At
    /// [`FAULTS_BEFORE_GIVING_UP`] this chain makes no more; the decisions that meet the
    /// policy instantiate it themselves and report the failure through its failurePolicy.
    faults: u32,
}

impl Slot {
    fn gave_up(&self) -> bool {
        self.faults >= FAULTS_BEFORE_GIVING_UP
    }
}

/// The one thread making a spare. [`finish`](Self::finish) clears `making` in the critical
/// section that publishes the spare, so no second maker starts in between; a panic clears it
/// on the way out, or the chain would never make a spare again.
struct Making<'a>(&'a Mutex<Slot>);

impl<'a> Making<'a> {
    fn finish(self) -> std::sync::MutexGuard<'a, Slot> {
        let mut slot = lock(self.0);
        slot.making = false;
        // Cleared already: the guard's drop has nothing left to do.
        std::mem::forget(self);
        slot
    }
}

impl Drop for Making<'_> {
    fn drop(&mut self) {
        lock(self.0).making = false;
    }
}

impl Reserve {
    /// The store for a decision: the spare when there is one.
    pub(crate) fn take(&self) -> DecisionStore {
        lock(&self.slot)
            .spare
            .take()
            .unwrap_or_else(DecisionStore::new)
    }

    /// After a decision was answered: drops its `spent` store (the pool resets the slots) and,
    /// unless a spare waits or is being made, makes one with `make`, which fills a store with
    /// instances.
    pub(crate) fn tidy(
        &self,
        spent: DecisionStore,
        make: impl FnOnce(&mut DecisionStore) -> Result<(), MakeAheadError>,
    ) {
        drop(spent);
        {
            let mut slot = lock(&self.slot);
            if slot.retired || slot.gave_up() || slot.making || slot.spare.is_some() {
                return;
            }
            slot.making = true;
        }
        let making = Making(&self.slot);
        let mut store = DecisionStore::new();
        let made = make(&mut store);
        // What is not kept is dropped after the lock is released: the pool's reset of its slots
        // must not hold up the next decision's `take`.
        let unkept = {
            let mut slot = making.finish();
            match made {
                Ok(()) => {
                    slot.faults = 0;
                    if slot.retired {
                        Some(store)
                    } else {
                        slot.spare = Some(store);
                        None
                    }
                }
                Err(error @ MakeAheadError::Policy(_)) => {
                    slot.faults += 1;
                    if slot.gave_up() {
                        tracing::warn!(error = %error, "no more decision stores made ahead for this policy set until it changes: its decisions instantiate their policies as they go, slower; fix the policy's start-up code, or raise policies.limits.deadline on a busy node");
                    } else {
                        tracing::debug!(error = %error, "no decision store made ahead");
                    }
                    Some(store)
                }
                Err(error @ MakeAheadError::Host(_)) => {
                    tracing::debug!(error = %error, "no decision store made ahead");
                    Some(store)
                }
            }
        };
        drop(unkept);
    }

    /// The chain was replaced: its spare is dropped and no more are made.
    pub(crate) fn retire(&self) {
        let spare = {
            let mut slot = lock(&self.slot);
            slot.retired = true;
            slot.spare.take()
        };
        drop(spare);
    }

    pub(crate) fn has_spare(&self) -> bool {
        lock(&self.slot).spare.is_some()
    }
}

impl std::fmt::Debug for Reserve {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let slot = lock(&self.slot);
        f.debug_struct("Reserve")
            .field("spare", &slot.spare.is_some())
            .field("retired", &slot.retired)
            .field("faults", &slot.faults)
            .finish_non_exhaustive()
    }
}

/// A poisoned lock here only means a decision panicked mid-way; the slot is still whole.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use wasmtime::component::{Component, Linker};

    use super::*;
    use crate::config::PolicyLimits;
    use crate::policy::engine::EngineOptions;

    /// `(component)`: the smallest component there is, to instantiate without a guest.
    const EMPTY_COMPONENT: &[u8] = b"\0asm\x0d\0\x01\0";

    fn engine() -> PolicyEngine {
        PolicyEngine::new(EngineOptions {
            limits: PolicyLimits::default(),
            cache_dir: None,
        })
        .expect("engine")
    }

    fn instantiate(
        engine: &PolicyEngine,
    ) -> impl Fn(&mut Store<StoreState>) -> wasmtime::Result<Instance> + use<> {
        let component = Component::new(engine.wasmtime(), EMPTY_COMPONENT).expect("component");
        let pre = Linker::new(engine.wasmtime())
            .instantiate_pre(&component)
            .expect("pre");
        move |store| pre.instantiate(store)
    }

    fn made_ahead(store: &mut DecisionStore, engine: &PolicyEngine, policy: PolicyId) -> bool {
        store
            .make_ahead(engine, (policy, "empty"), instantiate(engine))
            .expect("made")
    }

    #[test]
    fn a_call_gets_its_policy_s_instance_made_ahead_once() {
        let engine = engine();
        let (a, b, c) = (PolicyId::next(), PolicyId::next(), PolicyId::next());
        let mut store = DecisionStore::new();
        assert!(made_ahead(&mut store, &engine, a));
        assert!(made_ahead(&mut store, &engine, b));
        assert!(store.for_call(&engine, b).1.is_some());
        assert!(store.for_call(&engine, a).1.is_some());
        // Used once: a second call of the same policy instantiates afresh.
        assert!(store.for_call(&engine, a).1.is_none());
        assert!(store.for_call(&engine, c).1.is_none());
        assert_eq!(store.instances, 4);
    }

    #[test]
    fn a_full_store_makes_no_more_and_its_successor_gets_none_of_its_instances() {
        let engine = engine();
        let ids: Vec<PolicyId> = (0..5).map(|_| PolicyId::next()).collect();
        let mut store = DecisionStore::new();
        for id in &ids[..4] {
            assert!(made_ahead(&mut store, &engine, *id));
        }
        assert!(!made_ahead(&mut store, &engine, ids[4]));
        for id in &ids[..4] {
            assert!(store.for_call(&engine, *id).1.is_some());
        }
        // The fifth policy starts a new store, with a count of its own.
        assert!(store.for_call(&engine, ids[4]).1.is_none());
        assert_eq!(store.instances, 1);
    }

    #[test]
    fn a_discarded_store_s_instances_are_gone_with_it() {
        let engine = engine();
        let (a, b) = (PolicyId::next(), PolicyId::next());
        let mut store = DecisionStore::new();
        assert!(made_ahead(&mut store, &engine, a));
        assert!(made_ahead(&mut store, &engine, b));
        assert!(store.for_call(&engine, a).1.is_some());
        // The call failed: the next policy starts in a new store, not beside it.
        store.discard();
        assert!(store.for_call(&engine, b).1.is_none());
        assert_eq!(store.instances, 1);
    }

    #[test]
    fn no_instance_is_made_ahead_for_another_engine_s_policy() {
        let (first, second) = (engine(), engine());
        let mut store = DecisionStore::new();
        assert!(made_ahead(&mut store, &first, PolicyId::next()));
        let other = PolicyId::next();
        assert!(!made_ahead(&mut store, &second, other));
        assert!(store.for_call(&second, other).1.is_none());
    }

    fn spare(reserve: &Reserve) {
        reserve.tidy(DecisionStore::new(), |_| Ok(()));
    }

    #[test]
    fn a_spare_is_made_after_a_decision_and_taken_by_the_next() {
        let reserve = Reserve::default();
        spare(&reserve);
        assert!(reserve.has_spare());
        // One spare at a time.
        let mut made = false;
        reserve.tidy(DecisionStore::new(), |_| {
            made = true;
            Ok(())
        });
        assert!(!made);
        let _store = reserve.take();
        assert!(!reserve.has_spare());
    }

    fn fault() -> Result<(), MakeAheadError> {
        Err(MakeAheadError::Policy(PolicyFailure {
            policy: "slow-start".into(),
            kind: crate::policy::FailureKind::Deadline,
            message: "10ms".into(),
        }))
    }

    #[test]
    fn a_policy_that_keeps_failing_when_made_ahead_stops_the_spares() {
        let reserve = Reserve::default();
        let faults = |n| {
            for _ in 0..n {
                reserve.tidy(DecisionStore::new(), |_| fault());
            }
        };
        // Faults short of the limit, then a success: it forgets them.
        faults(FAULTS_BEFORE_GIVING_UP - 1);
        spare(&reserve);
        assert!(reserve.has_spare());
        let _store = reserve.take();
        faults(FAULTS_BEFORE_GIVING_UP - 1);
        spare(&reserve);
        assert!(
            reserve.has_spare(),
            "the faults before the success counted against it"
        );
        let _store = reserve.take();
        // The limit in a row: no more spares.
        faults(FAULTS_BEFORE_GIVING_UP);
        let mut made = false;
        reserve.tidy(DecisionStore::new(), |_| {
            made = true;
            Ok(())
        });
        assert!(
            !made,
            "a chain whose policy keeps failing makes no more spares"
        );
    }

    #[test]
    fn a_panic_while_making_a_spare_does_not_stop_the_next_try() {
        let reserve = Reserve::default();
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            reserve.tidy(DecisionStore::new(), |_| panic!("on purpose"));
        }));
        assert!(panicked.is_err());
        spare(&reserve);
        assert!(reserve.has_spare());
    }

    #[test]
    fn a_failure_of_the_host_leaves_the_next_try_open() {
        let reserve = Reserve::default();
        reserve.tidy(DecisionStore::new(), |_| {
            Err(MakeAheadError::Host("pool exhausted".into()))
        });
        assert!(!reserve.has_spare());
        spare(&reserve);
        assert!(reserve.has_spare());
    }

    #[test]
    fn a_retired_chain_drops_its_spare_and_makes_no_more() {
        let reserve = Reserve::default();
        spare(&reserve);
        reserve.retire();
        assert!(!reserve.has_spare());
        spare(&reserve);
        assert!(!reserve.has_spare());
    }

    #[test]
    fn a_memory_cap_hit_at_instantiation_is_the_policy_s_failure() {
        let engine = engine();
        let mut store = DecisionStore::new();
        let made = store.make_ahead(&engine, (PolicyId::next(), "greedy"), |store| {
            let instance = instantiate(&engine)(store)?;
            store.data_mut().memory.hit = true;
            Ok(instance)
        });
        assert!(
            matches!(&made, Err(MakeAheadError::Policy(failure)) if failure.policy == "greedy"),
            "{made:?}"
        );
    }
}
