//! What a pull reports while it runs, for progress bars (the CLI) or nothing (the daemon logs
//! its own events).

/// Receives the progress of pulls. Called from the pull tasks: keep each call cheap.
pub trait PullObserver: Send + Sync {
    /// A layer transfer starts (again, after a retry: `resumed_at` bytes are kept).
    fn layer_started(&self, _class: &str, _layer: &str, _size: u64, _resumed_at: u64) {}
    /// `bytes` more bytes of the layer arrived.
    fn layer_progress(&self, _class: &str, _layer: &str, _bytes: u64) {}
    /// The transfer failed and will be retried.
    fn layer_retry(&self, _class: &str, _layer: &str, _attempt: u32, _why: &str) {}
    /// The layer is on disk and verified.
    fn layer_done(&self, _class: &str, _layer: &str) {}
}

/// Reports nothing.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoProgress;

impl PullObserver for NoProgress {}
