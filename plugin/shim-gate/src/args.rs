//! What containerd asked the shim to do.
//!
//! containerd runs a runtime's binary as `-info` (runtime introspection, 2.x), as
//! `-namespace NS -address SOCK -publish-binary BIN -id ID [-debug] start` to start a sandbox, and
//! with `delete` to clean one up. Only `start` may have to wait for artifacts.

/// The shim action in an argument list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShimCall {
    /// Start a sandbox: the one call that needs the class's artifacts present.
    Start { id: Option<String> },
    /// Anything else (`delete`, `-info`, `-v`, …): goes straight to the real shim.
    Other,
}

/// Flags of the shim v2 protocol that take a value.
const VALUED_FLAGS: [&str; 6] = [
    "namespace",
    "address",
    "publish-binary",
    "id",
    "bundle",
    "socket",
];

/// Reads the action from the shim's arguments (without `argv[0]`).
pub fn classify<S: AsRef<str>>(args: &[S]) -> ShimCall {
    let mut id = None;
    let mut action = None;
    let mut iter = args.iter().map(AsRef::as_ref);
    while let Some(arg) = iter.next() {
        if let Some(flag) = arg.strip_prefix("--").or_else(|| arg.strip_prefix('-')) {
            let (name, inline) = match flag.split_once('=') {
                Some((n, v)) => (n, Some(v.to_owned())),
                None => (flag, None),
            };
            if VALUED_FLAGS.contains(&name) {
                let value = inline.or_else(|| iter.next().map(str::to_owned));
                if name == "id" {
                    id = value;
                }
            }
        } else if action.is_none() {
            action = Some(arg);
        }
    }
    match action {
        Some("start") => ShimCall::Start { id },
        _ => ShimCall::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sandbox_start_is_recognised() {
        let args = [
            "-namespace",
            "k8s.io",
            "-address",
            "/run/containerd/containerd.sock",
            "-publish-binary",
            "/usr/bin/containerd",
            "-id",
            "abc123",
            "start",
        ];
        assert_eq!(
            classify(&args),
            ShimCall::Start {
                id: Some("abc123".into())
            }
        );
    }

    #[test]
    fn debug_flag_and_inline_values_do_not_confuse_it() {
        let args = ["-namespace=k8s.io", "-debug", "-id=x", "start"];
        assert_eq!(
            classify(&args),
            ShimCall::Start {
                id: Some("x".into())
            }
        );
    }

    #[test]
    fn everything_else_passes_through() {
        assert_eq!(classify(&["-info"]), ShimCall::Other);
        assert_eq!(classify(&["-v"]), ShimCall::Other);
        assert_eq!(classify::<&str>(&[]), ShimCall::Other);
        assert_eq!(
            classify(&["-namespace", "k8s.io", "-id", "start", "delete"]),
            ShimCall::Other,
            "an id that reads `start` is a value, not the action"
        );
    }
}
