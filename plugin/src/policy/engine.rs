//! The one wasmtime `Engine` of the daemon: its configuration, the epoch ticker that enforces
//! deadlines, compilation through the cache, and fresh stores for each call.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::Duration;

use wasmtime::component::{Component, Linker};
use wasmtime::{
    Config, Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store,
};

use crate::config::PolicyLimits;

use super::bindings::{Policy, PolicyPre, wit};
use super::cache::{CompileCache, Lookup};
use super::error::{FailureKind, PolicyError, PolicyFailure, bounded};
use super::limits::StoreState;

/// How the engine is set up.
#[derive(Debug, Clone, Default)]
pub struct EngineOptions {
    /// Deadline and memory cap of each call (`policies.limits`).
    pub limits: PolicyLimits,
    /// Where compiled policies are cached (root-only); `None` compiles in memory every time.
    pub cache_dir: Option<PathBuf>,
}

/// Shared handle to the engine; cheap to clone.
#[derive(Clone)]
pub struct PolicyEngine {
    inner: Arc<Inner>,
}

struct Inner {
    engine: Engine,
    linker: Linker<StoreState>,
    cache: Option<CompileCache>,
    /// Hex of the engine's compatibility hash: part of every cache key.
    engine_hash: String,
    deadline: Duration,
    deadline_ticks: u64,
    /// The deadline of `validate-settings` at load (see [`MIN_LOAD_DEADLINE`]).
    load_deadline: Duration,
    load_deadline_ticks: u64,
    memory_cap: usize,
    stop_ticker: Arc<AtomicBool>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.stop_ticker.store(true, Ordering::Relaxed);
    }
}

/// Epoch ticks per deadline: finer ticks cost wakeups, coarser ones make the deadline loose.
const TICKS_PER_DEADLINE: u32 = 10;
const MIN_TICK: Duration = Duration::from_millis(1);
/// `validate-settings` at load runs on an instance whose compiled code is not paged in yet, once
/// per load and on no pod's path: a busy node must not turn that first, slow call into a policy
/// that fails to load. It gets the call deadline, but at least this; a guest that loops there
/// is still stopped.
pub(crate) const MIN_LOAD_DEADLINE: Duration = Duration::from_secs(1);
/// Instances one decision's store holds before it is dropped and a new one begun. A store frees
/// its instances' pool slots only when it drops, so this bounds the slots one decision can hold;
/// the pool is sized for it (`POOL_INSTANCES`). Three example policies fit in one store.
pub(crate) const INSTANCES_PER_STORE: u32 = 4;
/// Decisions that run at once (the daemon's semaphore).
pub(crate) const MAX_CONCURRENT_CALLS: u32 = 16;
/// Component instances the pooling allocator keeps slots for, in stores of up to
/// [`INSTANCES_PER_STORE`]: one store per running decision (the one it decides in, then, once
/// its own thread dropped that, the spare it makes), the current chain's one waiting spare (a
/// replaced chain drops its own before the swap), and one for loading (each policy's
/// `validate-settings` call) beside them.
const POOL_INSTANCES: u32 = (MAX_CONCURRENT_CALLS + 2) * INSTANCES_PER_STORE;
/// Bytes of each linear memory kept resident between calls: a Rust guest's 1 MiB shadow stack
/// and its first heap pages. Only pages a call touched are resident (a few hundred KiB per slot
/// in use), bounded by `POOL_INSTANCES * 2` slots of 2 MiB.
const KEEP_RESIDENT: usize = 2 << 20;
/// Bytes of each table kept resident between calls (a guest's tables are a few KiB).
const TABLE_KEEP_RESIDENT: usize = 64 << 10;

impl PolicyEngine {
    pub fn new(options: EngineOptions) -> Result<Self, PolicyError> {
        let deadline = options.limits.deadline.get();
        let memory_cap = usize::try_from(options.limits.memory.bytes()).unwrap_or(usize::MAX);
        let engine = build_engine(memory_cap)?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker).map_err(engine_error)?;
        Policy::add_to_linker::<_, wasmtime::component::HasSelf<StoreState>>(&mut linker, |s| s)
            .map_err(engine_error)?;
        let cache = match options.cache_dir {
            Some(dir) => match CompileCache::open(&dir) {
                Ok(cache) => Some(cache),
                Err(e) => {
                    tracing::warn!(error = %e, "compiling policies without a cache");
                    None
                }
            },
            None => None,
        };
        let mut hasher = DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        let tick = (deadline / TICKS_PER_DEADLINE).max(MIN_TICK);
        let load_deadline = deadline.max(MIN_LOAD_DEADLINE);
        let stop_ticker = Arc::new(AtomicBool::new(false));
        spawn_ticker(engine.clone(), tick, stop_ticker.clone())?;
        Ok(Self {
            inner: Arc::new(Inner {
                engine,
                linker,
                cache,
                engine_hash: format!("{:016x}", hasher.finish()),
                deadline,
                deadline_ticks: ticks(deadline, tick),
                load_deadline,
                load_deadline_ticks: ticks(load_deadline, tick),
                memory_cap,
                stop_ticker,
            }),
        })
    }

    /// The deadline of one call.
    pub fn deadline(&self) -> Duration {
        self.inner.deadline
    }

    /// The deadline of one call, or of `validate-settings` at load.
    pub(crate) fn deadline_of(&self, at_load: bool) -> Duration {
        if at_load {
            self.inner.load_deadline
        } else {
            self.inner.deadline
        }
    }

    /// What went wrong in a call of `policy` (or its instantiation) in `store`, put down to
    /// the memory cap when the call hit it, to the deadline when it was interrupted.
    pub(crate) fn failure(
        &self,
        policy: &str,
        store: &Store<StoreState>,
        error: &wasmtime::Error,
        at_load: bool,
    ) -> PolicyFailure {
        let (kind, message) = if store.data().memory.hit {
            // The guest's allocator turns a refused grow into an abort (a trap) or an error:
            // either way the cause is the cap.
            let cap = crate::config::ByteSize::from_bytes(self.memory_cap() as u64);
            (FailureKind::MemoryCap, cap.to_string())
        } else if error.downcast_ref::<wasmtime::Trap>() == Some(&wasmtime::Trap::Interrupt) {
            (
                FailureKind::Deadline,
                format!("{:?}", self.deadline_of(at_load)),
            )
        } else if let Some(trap) = error.downcast_ref::<wasmtime::Trap>() {
            // The trap alone: the guest's backtrace would bury it.
            (FailureKind::Trap, trap.to_string())
        } else {
            (FailureKind::Trap, bounded(format!("{error:#}")))
        };
        PolicyFailure {
            policy: policy.to_owned(),
            kind,
            message,
        }
    }

    /// The memory cap of one call, in bytes.
    pub fn memory_cap(&self) -> usize {
        self.inner.memory_cap
    }

    /// The compile cache in use, if any.
    pub fn cache(&self) -> Option<&CompileCache> {
        self.inner.cache.as_ref()
    }

    /// Compiles `bytes` (a component whose sha256 is `sha256_hex`), through the cache. `Err` is
    /// the reason, for the caller to put into its own error.
    pub(crate) fn compile(&self, bytes: &[u8], sha256_hex: &str) -> Result<Component, String> {
        let Some(cache) = &self.inner.cache else {
            return Component::new(&self.inner.engine, bytes).map_err(|e| format!("{e:#}"));
        };
        let key = format!("{sha256_hex}-{}", self.inner.engine_hash);
        match cache.lookup(&key) {
            Lookup::Hit(compiled) => {
                // SAFETY: `compiled` is byte for byte what `serialize` gave us for this key:
                // its sha256 matches the index entry we wrote into a directory only we may
                // write. That is the condition `deserialize` asks for.
                match unsafe { Component::deserialize(&self.inner.engine, &compiled) } {
                    Ok(component) => return Ok(component),
                    Err(e) => {
                        tracing::warn!(key, error = %e, "compiled policy unusable; recompiling")
                    }
                }
            }
            Lookup::Tampered => tracing::warn!(
                key,
                cache = %cache.dir().display(),
                "compiled policy does not match the digest we recorded; recompiling"
            ),
            Lookup::Miss => {}
        }
        let component = Component::new(&self.inner.engine, bytes).map_err(|e| format!("{e:#}"))?;
        match component.serialize() {
            Ok(compiled) => {
                if let Err(e) = cache.store(&key, &compiled) {
                    tracing::warn!(key, error = %e, "cannot cache the compiled policy");
                }
            }
            Err(e) => tracing::warn!(key, error = %e, "cannot serialize the compiled policy"),
        }
        Ok(component)
    }

    /// Links `component` against WASI and checks it exports the policy world.
    pub(crate) fn instantiate_pre(
        &self,
        component: &Component,
    ) -> Result<PolicyPre<StoreState>, String> {
        let pre = self
            .inner
            .linker
            .instantiate_pre(component)
            .map_err(|e| format!("{e:#}"))?;
        PolicyPre::new(pre).map_err(|e| format!("{e:#}"))
    }

    /// The wasmtime engine, to tell whether a store belongs to it.
    pub(crate) fn wasmtime(&self) -> &Engine {
        &self.inner.engine
    }

    /// A store for the calls of one decision: empty WASI, the memory cap. [`arm`](Self::arm)
    /// it before each call.
    pub(crate) fn new_store(&self) -> Store<StoreState> {
        let mut store = Store::new(&self.inner.engine, StoreState::new(self.inner.memory_cap));
        store.limiter(|state| &mut state.memory);
        store
    }

    /// Readies `store` for one policy call, or for making an instance ahead of one: the full
    /// deadline from now, armed before instantiation (which runs guest code too, and traps
    /// without it), and the memory-cap flag cleared so a failure is only put down to the cap
    /// when this call hit it.
    pub(crate) fn arm(&self, store: &mut Store<StoreState>, at_load: bool) {
        store.set_epoch_deadline(if at_load {
            self.inner.load_deadline_ticks
        } else {
            self.inner.deadline_ticks
        });
        store.data_mut().memory.hit = false;
    }
}

impl std::fmt::Debug for PolicyEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicyEngine")
            .field("deadline", &self.inner.deadline)
            .field("memory_cap", &self.inner.memory_cap)
            .field("cache", &self.inner.cache)
            .finish_non_exhaustive()
    }
}

/// Epoch ticks that make `deadline`.
fn ticks(deadline: Duration, tick: Duration) -> u64 {
    u64::try_from(deadline.as_nanos().div_ceil(tick.as_nanos()))
        .unwrap_or(u64::MAX)
        // The tick under way when a call starts may end at once: one more keeps the full
        // deadline.
        .saturating_add(1)
}

fn engine_error(e: wasmtime::Error) -> PolicyError {
    PolicyError::Engine(format!("{e:#}"))
}

fn build_engine(memory_cap: usize) -> Result<Engine, PolicyError> {
    let mut config = Config::new();
    config.epoch_interruption(true);
    config.wasm_component_model(true);
    let mut pooling = PoolingAllocationConfig::default();
    // A Rust wasip2 component is a handful of core instances with one memory; leave room.
    pooling
        .total_component_instances(POOL_INSTANCES)
        .total_core_instances(POOL_INSTANCES * 8)
        .total_memories(POOL_INSTANCES * 2)
        .total_tables(POOL_INSTANCES * 8)
        .max_memory_size(memory_cap)
        // Every decision gets a fresh instance, and the slot it used is reset to the module's
        // initial image when the store drops. By default that reset is an madvise, and the next
        // instance then page-faults its stack and heap back in, which is most of a call's cost.
        // Keeping the low pages resident resets them with memset instead (only the pages the
        // call dirtied, found with PAGEMAP_SCAN where the kernel has it, 6.7+): the same
        // pristine memory for the next decision, without the faults.
        .linear_memory_keep_resident(KEEP_RESIDENT)
        .table_keep_resident(TABLE_KEEP_RESIDENT)
        .pagemap_scan(Enabled::Auto)
        // Stacks are for async fibers, which the engine never runs. The default of 1000 is
        // 2 GiB mapped and 1000 guard pages protected one by one at every engine start: about
        // 3 ms of a 3.4 ms start.
        .total_stacks(0);
    config.allocation_strategy(InstanceAllocationStrategy::Pooling(pooling));
    match Engine::new(&config) {
        Ok(engine) => Ok(engine),
        Err(pooled) => {
            // Pooling reserves address space up front; where that is refused (a low
            // RLIMIT_AS), allocate on demand: slower to instantiate, same limits.
            tracing::warn!(error = %pooled, "policy engine without the pooling allocator");
            config.allocation_strategy(InstanceAllocationStrategy::OnDemand);
            Engine::new(&config).map_err(engine_error)
        }
    }
}

fn spawn_ticker(engine: Engine, tick: Duration, stop: Arc<AtomicBool>) -> Result<(), PolicyError> {
    thread::Builder::new()
        .name("policy-epoch".into())
        .spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                thread::sleep(tick);
                engine.increment_epoch();
            }
        })
        .map(drop)
        .map_err(|e| PolicyError::Engine(format!("cannot start the epoch ticker: {e}")))
}

/// The types interface has no functions; the generated trait must still be implemented.
impl wit::Host for StoreState {}
