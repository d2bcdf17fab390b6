//! What one policy call may use: the store's data (an empty WASI context) and its memory cap.

use std::time::Duration;

use wasmtime::ResourceLimiter;
use wasmtime_wasi::random::Deterministic;
use wasmtime_wasi::{HostWallClock, ResourceTable, WasiCtx, WasiCtxView, WasiView};

/// The data of a policy's `Store`: WASI with nothing granted, and the limiter.
pub(crate) struct StoreState {
    /// Built on a guest's first WASI call rather than with every store: a decision whose guests
    /// make none skips building it (clocks, random streams, stdio).
    wasi: Option<WasiCtx>,
    table: ResourceTable,
    pub(crate) memory: MemoryCap,
}

impl StoreState {
    pub(crate) fn new(memory_cap: usize) -> Self {
        Self {
            wasi: None,
            table: ResourceTable::new(),
            memory: MemoryCap::new(memory_cap),
        }
    }
}

/// No preopens, environment, arguments or sockets (the builder's defaults), stdio discarded. The
/// wall clock is frozen and randomness is a fixed stream, so a policy is a pure function of its
/// inputs: the same request always gets the same answer. The monotonic clock stays: it reveals
/// nothing about the node.
fn empty_wasi() -> WasiCtx {
    WasiCtx::builder()
        .wall_clock(FrozenClock)
        .secure_random(Deterministic::new(vec![0]))
        .insecure_random(Deterministic::new(vec![0]))
        .insecure_random_seed(0)
        .build()
}

impl WasiView for StoreState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: self.wasi.get_or_insert_with(empty_wasi),
            table: &mut self.table,
        }
    }
}

/// 1970-01-01, always.
struct FrozenClock;

impl HostWallClock for FrozenClock {
    fn resolution(&self) -> Duration {
        Duration::from_secs(1)
    }

    fn now(&self) -> Duration {
        Duration::ZERO
    }
}

/// A cap on each linear memory and table of one instance. It records whether the cap was hit,
/// so a failed call can be reported as "memory cap" rather than as the trap the guest's
/// allocator turns the refusal into.
pub(crate) struct MemoryCap {
    max_bytes: usize,
    pub(crate) hit: bool,
}

/// Table elements allowed per table: far above what a Rust guest uses, far below harm.
const MAX_TABLE_ELEMENTS: usize = 100_000;

impl MemoryCap {
    fn new(max_bytes: usize) -> Self {
        Self {
            max_bytes,
            hit: false,
        }
    }
}

impl ResourceLimiter for MemoryCap {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let allowed = desired <= self.max_bytes;
        self.hit |= !allowed;
        Ok(allowed)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let allowed = desired <= MAX_TABLE_ELEMENTS;
        self.hit |= !allowed;
        Ok(allowed)
    }
}
