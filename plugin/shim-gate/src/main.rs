//! The shim gate. containerd runs it through a class's link, `<gate.dir>/kata-nri-gate.<class>`,
//! with the shim's arguments; it becomes the real shim or exits with one line saying why not.

use std::path::Path;
use std::process::ExitCode;

use kata_nri_shim_gate::GateError;
use kata_nri_shim_gate::run::{from_invocation, run};

fn main() -> ExitCode {
    let mut args = std::env::args_os();
    let argv0 = args.next().unwrap_or_default();
    let Some((gate_dir, class)) = from_invocation(Path::new(&argv0)) else {
        // Run by its own name, not through a link: the install scripts check that it runs on
        // this machine. A link is never asked this, so a gate still prints nothing before exec.
        if args.len() == 1 && args.next().is_some_and(|a| a == "--version") {
            println!("{} {}", env!("CARGO_BIN_NAME"), env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
        eprintln!(
            "{}",
            GateError::UnknownClass(argv0.to_string_lossy().into_owned())
        );
        return ExitCode::FAILURE;
    };
    // Returns only on failure: on success this process has become the real shim.
    let err = run(&gate_dir, &class, args.collect());
    eprintln!("{err}");
    ExitCode::FAILURE
}
