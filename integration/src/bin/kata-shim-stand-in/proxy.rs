//! Stands between containerd and runc's shim on the shim's ttrpc socket, as kata's shim would
//! serve it: at `Task/Create` of a sandbox it resolves kata's configuration from the request's
//! options (see `resolve`), refusing the sandbox with a ttrpc error when kata would not boot what
//! was installed; then it hands runc's shim runc options instead of kata's, which runc's shim
//! cannot decode (`type with url runtimeoptions.v1.Options: not found`). Every other frame passes
//! through unchanged.
//!
//! ttrpc framing (containerd/ttrpc `channel.go`): a 10-byte header (length u32 BE, stream id
//! u32 BE, type u8, flags u8), then the message; type 1 is a `Request { service = 1; method = 2;
//! payload = 3; timeout_nano = 4; metadata = 5 }`, type 2 a `Response { status = 1; payload = 2 }`
//! (`request.proto`).

use std::io::{self, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Result;

use crate::pb;

const HEADER: usize = 10;
const TYPE_REQUEST: u8 = 1;
const TYPE_RESPONSE: u8 = 2;
/// `google.rpc.Code.FAILED_PRECONDITION`.
const FAILED_PRECONDITION: u64 = 9;
/// containerd's `CreateTaskRequest`: `id = 1`, `bundle = 2`, `options = 10` (task v2 and v3).
const CREATE_ID: u64 = 1;
const CREATE_BUNDLE: u64 = 2;
const CREATE_OPTIONS: u64 = 10;

/// What the proxy does at a sandbox's `Create`: `Ok(options for runc's shim)` or the refusal.
pub type OnCreate = dyn Fn(&str, &Path, &[u8]) -> Result<Vec<u8>, String> + Send + Sync;

/// Serves `listen` until runc's shim at `upstream` is gone.
pub fn serve(listen: &Path, upstream: PathBuf, on_create: Arc<OnCreate>) -> Result<()> {
    let _ = std::fs::remove_file(listen);
    let listener = UnixListener::bind(listen)?;
    let watched = upstream.clone();
    let ours = listen.to_owned();
    // runc's shim removes its socket at shutdown; the proxy has nothing to stand before then.
    std::thread::spawn(move || {
        while watched.exists() {
            std::thread::sleep(Duration::from_millis(200));
        }
        let _ = std::fs::remove_file(&ours);
        std::process::exit(0);
    });
    for client in listener.incoming() {
        let client = client?;
        let upstream = upstream.clone();
        let on_create = on_create.clone();
        std::thread::spawn(move || {
            if let Err(e) = relay(client, &upstream, &*on_create) {
                eprintln!("stand-in proxy: connection ended: {e}");
            }
        });
    }
    Ok(())
}

fn relay(client: UnixStream, upstream: &Path, on_create: &OnCreate) -> io::Result<()> {
    let shim = UnixStream::connect(upstream)?;
    // Both directions write whole frames to the client: a refusal is written beside replies.
    let to_client = Arc::new(Mutex::new(client.try_clone()?));
    let replies = {
        let mut from_shim = shim.try_clone()?;
        let to_client = to_client.clone();
        std::thread::spawn(move || -> io::Result<()> {
            while let Some((header, body)) = read_frame(&mut from_shim)? {
                write_frame(&to_client, &header, &body)?;
            }
            Ok(())
        })
    };
    let mut from_client = client.try_clone()?;
    let mut to_shim = shim.try_clone()?;
    while let Some((mut header, body)) = read_frame(&mut from_client)? {
        let body = if header[8] == TYPE_REQUEST {
            match rewrite_request(&body, on_create) {
                Ok(Some(body)) => body,
                Ok(None) => body,
                Err(refusal) => {
                    let mut reply = [0u8; HEADER];
                    let response = error_response(&refusal);
                    reply[..4].copy_from_slice(&(response.len() as u32).to_be_bytes());
                    reply[4..8].copy_from_slice(&header[4..8]);
                    reply[8] = TYPE_RESPONSE;
                    write_frame(&to_client, &reply, &response)?;
                    continue;
                }
            }
        } else {
            body
        };
        header[..4].copy_from_slice(&(body.len() as u32).to_be_bytes());
        to_shim.write_all(&header)?;
        to_shim.write_all(&body)?;
    }
    let _ = shim.shutdown(std::net::Shutdown::Both);
    let _ = replies.join();
    Ok(())
}

/// A `Task/Create` request with runc's options in place of kata's; `None` for any other request.
fn rewrite_request(body: &[u8], on_create: &OnCreate) -> Result<Option<Vec<u8>>, String> {
    let parse = |e: anyhow::Error| format!("stand-in: undecodable ttrpc request: {e}");
    let service = pb::string(body, 1).map_err(parse)?.unwrap_or_default();
    let method = pb::string(body, 2).map_err(parse)?.unwrap_or_default();
    if method != "Create" || !service.ends_with(".Task") {
        return Ok(None);
    }
    let payload = pb::bytes(body, 3).map_err(parse)?.unwrap_or_default();
    let id = pb::string(&payload, CREATE_ID)
        .map_err(parse)?
        .unwrap_or_default();
    let bundle = pb::string(&payload, CREATE_BUNDLE)
        .map_err(parse)?
        .unwrap_or_default();
    let options = pb::bytes(&payload, CREATE_OPTIONS)
        .map_err(parse)?
        .unwrap_or_default();
    let runc = on_create(&id, Path::new(&bundle), &options)?;
    let payload = pb::replace(&payload, CREATE_OPTIONS, Some(&runc)).map_err(parse)?;
    pb::replace(body, 3, Some(&payload))
        .map(Some)
        .map_err(parse)
}

fn error_response(message: &str) -> Vec<u8> {
    let mut status = Vec::new();
    pb::put_uint(&mut status, 1, FAILED_PRECONDITION);
    pb::put_bytes(&mut status, 2, message.as_bytes());
    let mut response = Vec::new();
    pb::put_bytes(&mut response, 1, &status);
    response
}

fn read_frame(stream: &mut UnixStream) -> io::Result<Option<([u8; HEADER], Vec<u8>)>> {
    let mut header = [0u8; HEADER];
    match stream.read_exact(&mut header) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as usize;
    let mut body = vec![0u8; len];
    stream.read_exact(&mut body)?;
    Ok(Some((header, body)))
}

fn write_frame(to: &Mutex<UnixStream>, header: &[u8], body: &[u8]) -> io::Result<()> {
    let mut stream = to.lock().unwrap_or_else(|p| p.into_inner());
    stream.write_all(header)?;
    stream.write_all(body)
}
