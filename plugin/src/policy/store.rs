//! The store of one decision. The policies of a chain decision instantiate into one store, each
//! as a fresh instance with its own linear memory, its own deadline and its own memory-cap flag,
//! so a chain of three builds and drops one store per decision instead of three.

use wasmtime::{Engine, Store};

use super::engine::PolicyEngine;
use super::limits::StoreState;

/// Instances one decision's store holds before it is dropped and a new one begun. A store frees
/// its instances' pool slots only when it drops, so this bounds the slots one decision can hold;
/// the pool is sized for it (`engine.rs`). Three example policies fit in one store.
pub(crate) const INSTANCES_PER_STORE: u32 = 4;

/// The store the policy calls of one decision share; created on the first call.
#[derive(Default)]
pub(crate) struct DecisionStore {
    store: Option<Store<StoreState>>,
    instances: u32,
    /// Loading a policy (`validate-settings`), with the load deadline.
    at_load: bool,
}

impl DecisionStore {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// The store of a policy's `validate-settings` call at load, which gets the load deadline
    /// ([`super::engine::MIN_LOAD_DEADLINE`]).
    pub(crate) fn for_load() -> Self {
        Self {
            at_load: true,
            ..Self::default()
        }
    }

    pub(crate) fn at_load(&self) -> bool {
        self.at_load
    }

    /// The store for one more policy call of `engine`, with the full deadline armed and the
    /// memory-cap flag clear, so the call's limits and failure are its own.
    pub(crate) fn for_call(&mut self, engine: &PolicyEngine) -> &mut Store<StoreState> {
        let reusable = self.store.as_ref().is_some_and(|store| {
            self.instances < INSTANCES_PER_STORE && Engine::same(store.engine(), engine.wasmtime())
        });
        if !reusable {
            // Dropped before the next is made: its pool slots are free again first.
            self.store = None;
            self.instances = 0;
        }
        self.instances += 1;
        let store = self.store.get_or_insert_with(|| engine.new_store());
        engine.arm(store, self.at_load);
        store
    }

    /// After a failed call. The store may hold an instance left mid-call by a trap or the
    /// deadline; the next policy starts in a new store rather than beside it.
    pub(crate) fn discard(&mut self) {
        self.store = None;
        self.instances = 0;
    }
}
