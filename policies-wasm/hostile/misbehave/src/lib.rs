//! A hostile policy for the host's tests: its settings choose how it misbehaves in every call
//! but `validate-settings` (so it loads): `{"mode": "loop" | "alloc" | "trap" | "recurse" |
//! "huge-string"}`; `"annotations"` makes `mutate-runtime` answer a pod annotation pattern that
//! reaches `io.katacontainers.config_path`. `"count"` makes `select-source` count its calls in a
//! static and on the heap and deny with both counts (`"call 1, heap 1"` when the instance is
//! fresh), or, with `"pass": true`, answer the sources unchanged when both are 1: the host's
//! isolation test. Never deploy it.

use std::hint::black_box;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};

use kata_policy_sdk::{
    Admission, Guest, Node, Pod, Request, RuntimeDecision, RuntimeSettings, Source, SourceDecision,
};

/// Runs the misbehaviour; returns only for `huge-string` (and unknown modes).
fn misbehave(settings: &str) -> String {
    if settings.contains("\"loop\"") {
        let mut n: u64 = 0;
        loop {
            n = black_box(n.wrapping_add(1));
        }
    }
    if settings.contains("\"alloc\"") {
        // 4 GiB in 64 MiB steps, each touched so it is really committed.
        let mut hoard: Vec<Vec<u8>> = Vec::new();
        for _ in 0..64 {
            hoard.push(vec![1u8; 64 << 20]);
            black_box(&hoard);
        }
    }
    if settings.contains("\"trap\"") {
        panic!("misbehave: trap on purpose");
    }
    if settings.contains("\"recurse\"") {
        return format!("{}", deep(black_box(0)));
    }
    if settings.contains("\"huge-string\"") {
        return "x".repeat(10 << 20);
    }
    String::from("unknown mode")
}

// Unbounded on purpose: the host must stop it with its stack limit.
#[allow(unconditional_recursion)]
fn deep(n: u64) -> u64 {
    // The array keeps each frame big and black_box keeps the recursion from becoming a loop.
    let frame = black_box([n; 64]);
    deep(black_box(frame[3] + 1)) + frame[7]
}

/// Calls this instance has served: starts at 0 only in a fresh instance.
static CALLS: AtomicU32 = AtomicU32::new(0);
/// The same count kept on the heap, so a heap carried over would show too.
static HEAP: Mutex<Vec<u32>> = Mutex::new(Vec::new());

/// `count` mode: `None` when this is the instance's first call and `pass` is set.
fn count(settings: &str) -> Option<String> {
    let calls = CALLS.fetch_add(1, Ordering::Relaxed) + 1;
    let heap = match HEAP.lock() {
        Ok(mut heap) => {
            heap.push(calls);
            heap.len()
        }
        Err(_) => 0,
    };
    let fresh = calls == 1 && heap == 1;
    (!fresh || !settings.contains("\"pass\"")).then(|| format!("call {calls}, heap {heap}"))
}

struct Misbehave;

impl Guest for Misbehave {
    fn validate_settings(settings: String) -> Result<(), String> {
        if settings.contains("\"loop-at-load\"") {
            let mut n: u64 = 0;
            loop {
                n = black_box(n.wrapping_add(1));
            }
        }
        Ok(())
    }

    fn select_source(
        settings: String,
        _request: Request,
        _node: Node,
        current: Vec<Source>,
    ) -> SourceDecision {
        if settings.contains("\"count\"") {
            return match count(&settings) {
                Some(counts) => SourceDecision::Deny(counts),
                None => SourceDecision::Pull(current),
            };
        }
        SourceDecision::Deny(misbehave(&settings))
    }

    fn mutate_runtime(
        settings: String,
        _request: Request,
        _node: Node,
        current: RuntimeSettings,
    ) -> RuntimeDecision {
        if settings.contains("\"annotations\"") {
            // Asks kata to read every io.katacontainers.* pod annotation, config_path included:
            // the host's guard must refuse it whatever `annotations.allowed` says.
            return RuntimeDecision::Settings(RuntimeSettings {
                pod_annotations: vec!["io.katacontainers.*".into()],
                ..current
            });
        }
        RuntimeDecision::Deny(misbehave(&settings))
    }

    fn admit(settings: String, _request: Request, _node: Node, _pod: Pod) -> Admission {
        Admission::Deny(misbehave(&settings))
    }
}

kata_policy_sdk::export!(Misbehave);
