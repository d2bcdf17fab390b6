//! One line for an error and its causes: the causes name the actual problem (connection refused,
//! a TLS failure, a missing file), and operators read errors in logs, `status` and pod events.

/// The error's message, then each cause not already contained in the text so far.
pub fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(e) = cause {
        let next = e.to_string();
        if !text.contains(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        cause = e.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("pulling kata: {0}")]
    struct Repeats(#[source] std::io::Error);

    #[derive(Debug, thiserror::Error)]
    #[error("pulling kata")]
    struct Hides(#[source] std::io::Error);

    #[test]
    fn causes_are_joined_once() {
        let e = Repeats(std::io::Error::other("connection refused"));
        assert_eq!(chain(&e), "pulling kata: connection refused");
        let e = Hides(std::io::Error::other("connection refused"));
        assert_eq!(chain(&e), "pulling kata: connection refused");
    }
}
