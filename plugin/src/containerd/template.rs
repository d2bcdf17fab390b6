//! k3s/rke2 templates (`config.toml.tmpl`) are Go templates around TOML, typically
//! `{{ template "base" . }}` followed by the operator's own tables. To edit them we blank out the
//! template actions, byte for byte, so that the TOML around them parses with the same offsets.

use std::borrow::Cow;
use std::path::Path;

use super::error::{ContainerdError, Result};

/// `text` with its template actions blanked out when it is a template, else as it is.
pub(crate) fn mask<'t>(path: &Path, text: &'t str, template: bool) -> Result<Cow<'t, str>> {
    if template {
        mask_actions(path, text)
    } else {
        Ok(Cow::Borrowed(text))
    }
}

/// `text` with every `{{ … }}` replaced by spaces (newlines inside kept), same length.
pub(crate) fn mask_actions<'t>(path: &Path, text: &'t str) -> Result<Cow<'t, str>> {
    if !text.contains("{{") {
        return Ok(Cow::Borrowed(text));
    }
    let mut bytes = text.as_bytes().to_vec();
    let mut from = 0;
    while let Some(open) = text[from..].find("{{").map(|i| from + i) {
        let close = text[open..]
            .find("}}")
            .map(|i| open + i + 2)
            .ok_or_else(|| ContainerdError::TemplateSyntax {
                path: path.to_path_buf(),
                offset: open,
            })?;
        for byte in &mut bytes[open..close] {
            if *byte != b'\n' && *byte != b'\r' {
                *byte = b' ';
            }
        }
        from = close;
    }
    // Whole characters were replaced by ASCII spaces, so the bytes stay UTF-8.
    String::from_utf8(bytes)
        .map(Cow::Owned)
        .map_err(|_| ContainerdError::TemplateSyntax {
            path: path.to_path_buf(),
            offset: 0,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actions_become_blank_space_of_the_same_length() {
        let path = Path::new("config.toml.tmpl");
        let text = "{{ template \"base\" . }}\n[a]\nb = \"{{ .X }}\"\n";
        let masked = mask_actions(path, text).unwrap();
        assert_eq!(masked.len(), text.len());
        assert_eq!(
            masked,
            format!("{}\n[a]\nb = \"{}\"\n", " ".repeat(23), " ".repeat(8))
        );
        assert!(matches!(
            mask_actions(path, "x = 1\n").unwrap(),
            Cow::Borrowed(_)
        ));
        assert!(mask_actions(path, "{{ oops\n").is_err());
    }
}
