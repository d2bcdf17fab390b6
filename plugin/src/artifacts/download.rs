//! Streaming one blob to disk: sha256 and size checked as the bytes are written (never the
//! whole blob in memory), a body cut short resumed with a Range request, transient failures
//! retried with backoff, a wrong digest or an oversized body refused at once.

use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Arc;

use sha2::{Digest as _, Sha256};

use super::error::{ArtifactError, Result};
use super::manifest::Layer;
use super::progress::PullObserver;
use super::registry::{Failure, Registry};

/// Chunks queued for the writer thread per layer: bounds the memory a transfer holds (hyper's
/// chunks are at most a few tens of KiB) while letting the network run ahead of the disk.
const QUEUE_CHUNKS: usize = 8;
/// Start the kernel's writeback every this many bytes, so the data is mostly on disk by the time
/// the version is made durable (a final sync then waits for little).
const WRITEBACK_EVERY: u64 = 8 << 20;

enum Write {
    Chunk(bytes::Bytes),
    /// The registry ignored our Range request and sends the whole blob again.
    Restart,
}

/// The file side of a transfer, on a blocking thread: writes, hashes (off the async runtime,
/// one pass over the bytes), and starts writeback as it goes.
struct Writer {
    queue: tokio::sync::mpsc::Sender<Write>,
    done: tokio::task::JoinHandle<std::io::Result<String>>,
}

impl Writer {
    fn start(file: std::fs::File) -> Self {
        let (queue, mut chunks) = tokio::sync::mpsc::channel::<Write>(QUEUE_CHUNKS);
        let done = tokio::task::spawn_blocking(move || {
            use std::io::{Seek, Write as _};
            let mut file = file;
            let mut hasher = Sha256::new();
            let (mut written, mut flushed) = (0u64, 0u64);
            while let Some(message) = chunks.blocking_recv() {
                match message {
                    Write::Chunk(chunk) => {
                        hasher.update(&chunk);
                        file.write_all(&chunk)?;
                        written += chunk.len() as u64;
                        if written - flushed >= WRITEBACK_EVERY {
                            start_writeback(&file, flushed, written - flushed);
                            flushed = written;
                        }
                    }
                    Write::Restart => {
                        file.set_len(0)?;
                        file.seek(std::io::SeekFrom::Start(0))?;
                        hasher = Sha256::new();
                        (written, flushed) = (0, 0);
                    }
                }
            }
            start_writeback(&file, flushed, written - flushed);
            Ok(format!("sha256:{}", super::digest::hex(&hasher.finalize())))
        });
        Self { queue, done }
    }

    async fn send(&self, message: Write) -> std::io::Result<()> {
        self.queue
            .send(message)
            .await
            .map_err(|_| std::io::Error::other("the layer writer stopped"))
    }

    /// Waits for every byte to be written; the sha256 of what was written.
    async fn finish(self) -> std::io::Result<String> {
        drop(self.queue);
        self.done.await.map_err(std::io::Error::other)?
    }
}

/// Asks the kernel to start writing `len` bytes at `offset` back to disk, without waiting.
fn start_writeback(file: &std::fs::File, offset: u64, len: u64) {
    use std::os::fd::AsRawFd;
    let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
        return;
    };
    // SAFETY: the descriptor is open; the call only schedules I/O. A failure (e.g. on a
    // filesystem without support) leaves the work to the final sync.
    unsafe {
        libc::sync_file_range(file.as_raw_fd(), offset, len, libc::SYNC_FILE_RANGE_WRITE);
    }
}

/// Where a transfer stands between attempts.
struct Transfer {
    writer: Writer,
    received: u64,
}

/// Downloads `layer` into `dest` (created, mode `mode`), verified.
pub(crate) async fn fetch(
    registry: &Registry,
    reference: &oci_client::Reference,
    layer: &Layer,
    dest: &Path,
    mode: u32,
    observer: &Arc<dyn PullObserver>,
) -> Result<()> {
    let context = &registry.context;
    let io_error = |action: &'static str| {
        move |source| ArtifactError::Io {
            class: context.class.clone(),
            action,
            path: dest.to_owned(),
            source,
        }
    };
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(dest)
        .map_err(io_error("creating"))?;
    let mut transfer = Transfer {
        writer: Writer::start(file),
        received: 0,
    };
    let name = layer.name();
    let mut attempt = 1;
    loop {
        observer.layer_started(&context.class, &name, layer.size, transfer.received);
        match attempt_once(registry, reference, layer, &name, &mut transfer, observer).await {
            Ok(()) => break,
            Err(Failure::Permanent(e)) => return Err(e),
            Err(Failure::Transient(why)) if attempt >= registry.retry.attempts => {
                return Err(context.unreachable(
                    attempt,
                    format!(
                        "layer {name}: {why} ({} of {} bytes received)",
                        transfer.received, layer.size
                    ),
                ));
            }
            Err(Failure::Transient(why)) => {
                tracing::warn!(
                    runtime_class = %context.class, registry = %context.registry, layer = %name,
                    attempt, received = transfer.received, error = %why,
                    "layer transfer failed; retrying"
                );
                observer.layer_retry(&context.class, &name, attempt, &why);
                tokio::time::sleep(registry.retry.delay(attempt)).await;
                attempt += 1;
            }
        }
    }
    let actual = transfer
        .writer
        .finish()
        .await
        .map_err(io_error("writing"))?;
    if actual != layer.digest.as_str() {
        return Err(ArtifactError::DigestMismatch {
            class: context.class.clone(),
            reference: context.reference.clone(),
            layer: name,
            expected: layer.digest.to_string(),
            actual,
        });
    }
    observer.layer_done(&context.class, &name);
    Ok(())
}

/// One request: from `transfer.received` to the end, or until something fails.
async fn attempt_once(
    registry: &Registry,
    reference: &oci_client::Reference,
    layer: &Layer,
    name: &str,
    transfer: &mut Transfer,
    observer: &Arc<dyn PullObserver>,
) -> std::result::Result<(), Failure> {
    let context = &registry.context;
    let write_failed = |e: std::io::Error| {
        Failure::Permanent(ArtifactError::Io {
            class: context.class.clone(),
            action: "writing a layer to",
            path: name.into(),
            source: e,
        })
    };
    // Always a Range request, so that a retry resumes where the cut happened. The writer
    // hashes what it writes; `fetch` checks that digest at the end (200 or 206 alike).
    let mut response = registry
        .blob(reference, layer.digest.as_str(), Some(transfer.received))
        .await?;
    if response.status() != reqwest::StatusCode::PARTIAL_CONTENT && transfer.received > 0 {
        // The registry ignored the Range: the whole blob again.
        transfer
            .writer
            .send(Write::Restart)
            .await
            .map_err(write_failed)?;
        transfer.received = 0;
    }
    loop {
        let chunk = match response.chunk().await {
            Ok(Some(chunk)) => chunk,
            Ok(None) => break,
            // Connection reset, timeout: retried (and resumed).
            Err(e) => return Err(Failure::Transient(crate::errors::chain(&e))),
        };
        let received = transfer.received + chunk.len() as u64;
        if received > layer.size {
            return Err(Failure::Permanent(ArtifactError::Oversized {
                class: context.class.clone(),
                reference: context.reference.clone(),
                layer: name.to_owned(),
                expected: layer.size,
                received,
            }));
        }
        let len = chunk.len() as u64;
        transfer
            .writer
            .send(Write::Chunk(chunk))
            .await
            .map_err(write_failed)?;
        transfer.received = received;
        observer.layer_progress(&context.class, name, len);
    }
    if transfer.received < layer.size {
        return Err(Failure::Transient(format!(
            "the registry closed the transfer after {} of {} bytes",
            transfer.received, layer.size
        )));
    }
    Ok(())
}
