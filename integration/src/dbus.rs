//! A private D-Bus bus for tests: `dbus-daemon` (Debian's `dbus` package) on a socket in a temp
//! dir, with a session-like policy (anyone may own any name), so that a test can play systemd on
//! it and point kata-nri-manager at it with `DBUS_SYSTEM_BUS_ADDRESS`.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::deps::REQUIRE_E2E_ENV;

/// Where Debian's `dbus` package puts the daemon.
pub const DBUS_DAEMON: &str = "/usr/bin/dbus-daemon";

/// A running private bus; dropped, the daemon is killed and its directory removed.
pub struct PrivateBus {
    address: String,
    socket: PathBuf,
    _child: Child,
    _dir: tempfile::TempDir,
}

impl std::fmt::Debug for PrivateBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PrivateBus")
            .field("address", &self.address)
            .finish_non_exhaustive()
    }
}

impl PrivateBus {
    /// The bus, or `None` after printing `SKIPPED: …` when `dbus-daemon` is not installed (a
    /// panic instead with `KNM_REQUIRE_E2E=1`, as for the other e2e dependencies).
    pub async fn require() -> Option<PrivateBus> {
        if !Path::new(DBUS_DAEMON).is_file() {
            let reason = format!(
                "{DBUS_DAEMON} is missing: install the dbus package (scripts/install-deps.sh)"
            );
            if std::env::var(REQUIRE_E2E_ENV).is_ok_and(|v| v == "1") {
                panic!("e2e test cannot run and {REQUIRE_E2E_ENV}=1: {reason}");
            }
            eprintln!("SKIPPED: {reason}");
            return None;
        }
        Some(Self::start().await.expect("the private dbus-daemon starts"))
    }

    /// Starts `dbus-daemon` on `<tmp>/bus` and waits until it prints its address.
    pub async fn start() -> Result<PrivateBus> {
        let dir = tempfile::tempdir()?;
        let socket = dir.path().join("bus");
        let config = dir.path().join("bus.conf");
        std::fs::write(&config, config_text(&socket))?;
        let mut child = Command::new(DBUS_DAEMON)
            .arg(format!("--config-file={}", config.display()))
            .arg("--nofork")
            .arg("--print-address")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {DBUS_DAEMON}"))?;
        let stdout = child.stdout.take().context("dbus-daemon's stdout")?;
        let mut line = String::new();
        tokio::time::timeout(
            Duration::from_secs(10),
            BufReader::new(stdout).read_line(&mut line),
        )
        .await
        .context("dbus-daemon printed no address within 10 s")??;
        let address = line.trim().to_string();
        if address.is_empty() {
            bail!(
                "dbus-daemon exited without an address: {:?}",
                child.try_wait()
            );
        }
        Ok(PrivateBus {
            address,
            socket,
            _child: child,
            _dir: dir,
        })
    }

    /// The bus address, for `DBUS_SYSTEM_BUS_ADDRESS` and zbus.
    pub fn address(&self) -> &str {
        &self.address
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// A new connection to the bus.
    pub async fn connect(&self) -> Result<zbus::Connection> {
        Ok(zbus::connection::Builder::address(self.address())?
            .build()
            .await?)
    }
}

/// A session bus's rules (anyone may own and call anything) on our own socket.
fn config_text(socket: &Path) -> String {
    format!(
        r#"<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
  <listen>unix:path={}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
    <allow own="*"/>
  </policy>
</busconfig>
"#,
        socket.display()
    )
}
