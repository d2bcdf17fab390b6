//! The policy host against real components: the example policies, the hostile corpus, hot
//! reload and the compile cache. Components come from `policies-wasm/build.sh`, run once per
//! test process (a no-op when they are fresh).

mod support;

mod cache;
mod examples;
mod hostile;
mod reload;
