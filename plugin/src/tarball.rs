//! Test tar layers written with raw headers, so that hostile names, links and modes reach the
//! archive unchanged (the `tar` crate's own builder would refuse or normalise them).
//!
//! One file for both crates that need it: the plugin's unit tests (`#[cfg(test)] mod tarball`)
//! and the integration harness, which includes it as `kata_nri_integration::tarball`.

/// One entry: name, type, mode, contents, link target.
pub type Entry<'a> = (&'a str, tar::EntryType, u32, &'a [u8], Option<&'a str>);

/// A tar of `entries`, in order, every one with the same fixed modification time.
pub fn tar_of(entries: &[Entry<'_>]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for (name, kind, mode, data, link) in entries {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(*kind);
        header.set_mode(*mode);
        header.set_size(data.len() as u64);
        header.set_mtime(1_700_000_000);
        header.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        if let Some(link) = link {
            header.as_old_mut().linkname[..link.len()].copy_from_slice(link.as_bytes());
        }
        header.set_cksum();
        builder.append(&header, *data).expect("append");
    }
    builder.into_inner().expect("tar")
}
