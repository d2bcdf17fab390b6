//! What the daemon and the gate agree on, in one place: the socket protocol, the per-class state
//! file, and the names on the host (the gate binary, its per-class links). The daemon writes the
//! state and answers the socket; the gate reads the one and asks the other.

pub mod links;
pub mod protocol;
pub mod state;

pub use links::{GATE_BINARY, GATE_LINK_PREFIX, GATE_PROGRAM, link_path};
pub use protocol::{EnsureReply, EnsureRequest, MAX_LINE};
pub use state::{GateState, STATE_DIR};
