//! The host's side of serving kata classes, beyond containerd: the kernel modules kata needs
//! (`modules.rs`), the PCI devices the node has (`pci.rs`), and the CDI spec that lets pods ask
//! for a passthrough GPU (`cdi.rs`).
//!
//! Everything read from the kernel is read under a root (`/` on a node; a fake tree in tests),
//! so the same code runs against both.

pub mod cdi;
pub mod modules;
pub mod pci;

pub use cdi::{CdiError, CdiSpec, CdiWriter};
pub use modules::{ModuleError, ModuleLoad, load_modules};
pub use pci::{PciDevice, scan};
