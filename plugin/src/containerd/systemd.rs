//! Restart method `systemd`: containerd's unit restarted by systemd over the D-Bus system bus.
//!
//! Restarting a unit is only safe when systemd leaves the shims alone: with the default
//! `KillMode=control-group`, stopping containerd's unit kills every process in its cgroup, and
//! the shims (so every pod on the node) live there. So the unit's `KillMode` is read first and
//! anything but `process` or `mixed` is refused, before a byte of config is written.
//!
//! Then `RestartUnit(unit, "replace")`, and the wait for its job's `JobRemoved` signal (bounded by
//! the restart timeout); the caller's ready probe checks that containerd serves again.
//!
//! The bus is the system bus, or `DBUS_SYSTEM_BUS_ADDRESS` when set (zbus honours it; the tests
//! point it at a private bus with a fake systemd). The calls run on a small runtime of their own
//! on a helper thread, so that the synchronous restart path works whether or not its caller is
//! inside a tokio runtime.

use std::future::Future;
use std::time::{Duration, Instant};

use futures::StreamExt;
use zbus::names::InterfaceName;
use zbus::zvariant::{ObjectPath, OwnedObjectPath, OwnedValue};
use zbus::{Connection, proxy};

/// systemd's bus name.
pub const SYSTEMD_SERVICE: &str = "org.freedesktop.systemd1";
/// systemd's manager object.
pub const MANAGER_PATH: &str = "/org/freedesktop/systemd1";
/// The interface of a unit object (`LoadState`, `ActiveState`).
pub const UNIT_INTERFACE: &str = "org.freedesktop.systemd1.Unit";
/// The interface of a service unit object (`KillMode`).
pub const SERVICE_INTERFACE: &str = "org.freedesktop.systemd1.Service";
/// The D-Bus error systemd answers for a unit it does not know.
pub const NO_SUCH_UNIT: &str = "org.freedesktop.systemd1.NoSuchUnit";
/// Where the system bus is when `DBUS_SYSTEM_BUS_ADDRESS` is not set.
const DEFAULT_SYSTEM_BUS: &str = "unix:path=/var/run/dbus/system_bus_socket";

/// How long connecting and each query may take when the caller gives no tighter bound.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

#[proxy(
    interface = "org.freedesktop.systemd1.Manager",
    default_service = "org.freedesktop.systemd1",
    default_path = "/org/freedesktop/systemd1"
)]
trait Manager {
    fn get_unit(&self, name: &str) -> zbus::Result<OwnedObjectPath>;
    fn load_unit(&self, name: &str) -> zbus::Result<OwnedObjectPath>;
    fn restart_unit(&self, name: &str, mode: &str) -> zbus::Result<OwnedObjectPath>;
    /// Without a subscription systemd sends no job signals to this client.
    fn subscribe(&self) -> zbus::Result<()>;
    #[zbus(signal)]
    fn job_removed(
        &self,
        id: u32,
        job: ObjectPath<'_>,
        unit: &str,
        result: &str,
    ) -> zbus::Result<()>;
}

/// Why systemd could not (or must not) restart containerd's unit.
#[derive(Debug, thiserror::Error)]
pub enum SystemdError {
    #[error(
        "restart method systemd (unit {unit}): cannot reach the D-Bus system bus at {address}: {error}: is systemd running on this node? otherwise use restart method command or none"
    )]
    BusUnreachable {
        unit: String,
        address: String,
        error: String,
    },
    #[error(
        "restart method systemd: systemd has no unit {unit}: set containerd.restart.unit to containerd's unit (systemctl list-units 'containerd*')"
    )]
    UnitNotFound { unit: String },
    #[error(
        "restart method systemd: unit {unit} has KillMode={kill_mode}, so restarting it would kill every shim and every pod on the node: give it KillMode=process (as containerd's own containerd.service does) with a drop-in, e.g. /etc/systemd/system/{unit}.d/kill-mode.conf containing \"[Service]\\nKillMode=process\", then systemctl daemon-reload"
    )]
    UnsafeKillMode { unit: String, kill_mode: String },
    #[error("restart method systemd: {call} of unit {unit} failed: {error}")]
    Call {
        unit: String,
        call: &'static str,
        error: String,
    },
    #[error(
        "restart method systemd: systemd's job restarting {unit} ended with result {result:?}: see journalctl -u {unit}"
    )]
    JobFailed { unit: String, result: String },
    #[error("restart method systemd: systemd did not finish restarting {unit} within {timeout:?}")]
    Timeout { unit: String, timeout: Duration },
    #[error("restart method systemd (unit {unit}): starting the D-Bus client: {error}")]
    Runtime { unit: String, error: String },
}

impl SystemdError {
    /// Whether the unit was left as it was: nothing was restarted, so the old containerd still
    /// runs with the old config.
    pub fn nothing_restarted(&self) -> bool {
        matches!(
            self,
            SystemdError::BusUnreachable { .. }
                | SystemdError::UnitNotFound { .. }
                | SystemdError::UnsafeKillMode { .. }
                | SystemdError::Runtime { .. }
        )
    }
}

pub type Result<T, E = SystemdError> = std::result::Result<T, E>;

/// The `KillMode`s under which stopping the unit spares the shims: `process` kills only the main
/// process, `mixed` sends SIGTERM to the main process only (SIGKILL to the rest only if it is
/// still there after the stop timeout, which a containerd that exits cleanly never reaches).
pub fn check_kill_mode(unit: &str, kill_mode: &str) -> Result<()> {
    match kill_mode {
        "process" | "mixed" => Ok(()),
        other => Err(SystemdError::UnsafeKillMode {
            unit: unit.to_string(),
            kill_mode: other.to_string(),
        }),
    }
}

/// The system bus address zbus connects to, for messages.
pub fn system_bus_address() -> String {
    std::env::var("DBUS_SYSTEM_BUS_ADDRESS").unwrap_or_else(|_| DEFAULT_SYSTEM_BUS.to_string())
}

/// Checks, before anything is written, that `unit` exists and may be restarted.
pub fn check_unit(unit: &str, timeout: Duration) -> Result<()> {
    block_on(unit, async {
        let systemd = Systemd::connect(unit, None, timeout.min(CALL_TIMEOUT)).await?;
        systemd.checked_unit(unit).await.map(drop)
    })
}

/// Restarts `unit` and waits until systemd's job for it finished, within `timeout`.
pub fn restart_unit(unit: &str, timeout: Duration) -> Result<()> {
    block_on(unit, async {
        let start = Instant::now();
        let systemd = Systemd::connect(unit, None, timeout.min(CALL_TIMEOUT)).await?;
        systemd.checked_unit(unit).await?;
        let left = timeout.saturating_sub(start.elapsed());
        systemd.restart(unit, left, timeout).await
    })
}

/// Runs `future` on a current-thread runtime of its own on a helper thread.
fn block_on<T: Send>(unit: &str, future: impl Future<Output = Result<T>> + Send) -> Result<T> {
    let runtime_error = |error: String| SystemdError::Runtime {
        unit: unit.to_string(),
        error,
    };
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| runtime_error(e.to_string()))?
                    .block_on(future)
            })
            .join()
            .map_err(|_| runtime_error("the D-Bus client thread panicked".into()))?
    })
}

/// A connection to systemd's manager.
pub struct Systemd {
    connection: Connection,
    manager: ManagerProxy<'static>,
    call_timeout: Duration,
}

impl Systemd {
    /// Connects to the bus at `address`, or to the system bus (`DBUS_SYSTEM_BUS_ADDRESS` or
    /// its standard socket) when `None`.
    pub async fn connect(
        unit: &str,
        address: Option<&str>,
        call_timeout: Duration,
    ) -> Result<Self> {
        let shown = address.map_or_else(system_bus_address, str::to_string);
        let unreachable = |error: zbus::Error| SystemdError::BusUnreachable {
            unit: unit.to_string(),
            address: shown.clone(),
            error: error.to_string(),
        };
        let builder = match address {
            Some(address) => zbus::connection::Builder::address(address),
            None => zbus::connection::Builder::system(),
        }
        .map_err(unreachable)?
        .method_timeout(call_timeout);
        let connection = match tokio::time::timeout(call_timeout, builder.build()).await {
            Ok(connection) => connection.map_err(unreachable)?,
            Err(_) => {
                return Err(unreachable(zbus::Error::Failure(format!(
                    "no answer within {call_timeout:?}"
                ))));
            }
        };
        let manager = ManagerProxy::new(&connection)
            .await
            .map_err(|e| call_error(unit, "connecting to the manager", e))?;
        Ok(Self {
            connection,
            manager,
            call_timeout,
        })
    }

    /// The unit's object: `GetUnit` for a loaded unit, else `LoadUnit`; a unit systemd has no
    /// file for is [`SystemdError::UnitNotFound`].
    pub async fn unit_path(&self, unit: &str) -> Result<OwnedObjectPath> {
        let path = match self.manager.get_unit(unit).await {
            Ok(path) => path,
            Err(e) if is_no_such_unit(&e) => match self.manager.load_unit(unit).await {
                Ok(path) => path,
                Err(e) if is_no_such_unit(&e) => return Err(not_found(unit)),
                Err(e) => return Err(call_error(unit, "LoadUnit", e)),
            },
            Err(e) => return Err(call_error(unit, "GetUnit", e)),
        };
        // LoadUnit of a unit without a file answers with an object whose LoadState says so.
        let load_state = self
            .string_property(unit, &path, UNIT_INTERFACE, "LoadState")
            .await?;
        if load_state == "not-found" {
            return Err(not_found(unit));
        }
        Ok(path)
    }

    /// The unit's object, once its `KillMode` is known to spare the shims.
    pub async fn checked_unit(&self, unit: &str) -> Result<OwnedObjectPath> {
        let path = self.unit_path(unit).await?;
        let kill_mode = self
            .string_property(unit, &path, SERVICE_INTERFACE, "KillMode")
            .await?;
        tracing::debug!(unit, kill_mode, "containerd's unit");
        check_kill_mode(unit, &kill_mode)?;
        Ok(path)
    }

    /// `RestartUnit(unit, "replace")`, then waits for the job's `JobRemoved` until `wait`.
    /// `timeout` is the configured bound, for the message.
    pub async fn restart(&self, unit: &str, wait: Duration, timeout: Duration) -> Result<()> {
        let deadline = tokio::time::Instant::now() + wait;
        // Subscribe and listen before the job exists, so that its end cannot be missed.
        if let Err(e) = self.manager.subscribe().await {
            // Already subscribed (another client on a shared connection) is fine; anything
            // else shows up as a timeout below, with this in the log.
            tracing::debug!(unit, error = %e, "systemd Subscribe");
        }
        let mut removed = self
            .manager
            .receive_job_removed()
            .await
            .map_err(|e| call_error(unit, "listening for JobRemoved", e))?;
        let job = self
            .manager
            .restart_unit(unit, "replace")
            .await
            .map_err(|e| match e {
                e if is_no_such_unit(&e) => not_found(unit),
                e => call_error(unit, "RestartUnit", e),
            })?;
        tracing::info!(unit, job = %job.as_str(), "systemd restarts containerd");
        let timed_out = || SystemdError::Timeout {
            unit: unit.to_string(),
            timeout,
        };
        loop {
            let signal = match tokio::time::timeout_at(deadline, removed.next()).await {
                Ok(Some(signal)) => signal,
                // The signal stream ended (the bus went away): systemd's own state decides.
                Ok(None) => return self.wait_active(unit, deadline, timed_out).await,
                Err(_) => return Err(timed_out()),
            };
            let Ok(args) = signal.args() else { continue };
            if args.job.as_str() != job.as_str() {
                continue;
            }
            tracing::info!(unit, job = %job.as_str(), result = args.result, "systemd job done");
            return match args.result {
                "done" => Ok(()),
                result => Err(SystemdError::JobFailed {
                    unit: unit.to_string(),
                    result: result.to_string(),
                }),
            };
        }
    }

    /// Polls the unit's `ActiveState` until `active` (or `failed`), until `deadline`.
    async fn wait_active(
        &self,
        unit: &str,
        deadline: tokio::time::Instant,
        timed_out: impl Fn() -> SystemdError,
    ) -> Result<()> {
        let path = self.unit_path(unit).await?;
        loop {
            let state = self
                .string_property(unit, &path, UNIT_INTERFACE, "ActiveState")
                .await?;
            match state.as_str() {
                "active" => return Ok(()),
                "failed" => {
                    return Err(SystemdError::JobFailed {
                        unit: unit.to_string(),
                        result: "failed".into(),
                    });
                }
                _ if tokio::time::Instant::now() >= deadline => return Err(timed_out()),
                _ => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }

    /// One string property of the unit's object, read fresh (no cache).
    async fn string_property(
        &self,
        unit: &str,
        path: &OwnedObjectPath,
        interface: &'static str,
        name: &'static str,
    ) -> Result<String> {
        let call = "reading a property";
        let properties = zbus::fdo::PropertiesProxy::builder(&self.connection)
            .destination(SYSTEMD_SERVICE)
            .and_then(|b| b.path(path.as_ref()))
            .map_err(|e| call_error(unit, call, e))?
            .cache_properties(zbus::proxy::CacheProperties::No)
            .build()
            .await
            .map_err(|e| call_error(unit, call, e))?;
        let interface = InterfaceName::from_static_str_unchecked(interface);
        let value: OwnedValue =
            tokio::time::timeout(self.call_timeout, properties.get(interface.clone(), name))
                .await
                .map_err(|_| {
                    call_error(
                        unit,
                        call,
                        zbus::Error::Failure(format!("no answer within {:?}", self.call_timeout)),
                    )
                })?
                .map_err(|e| SystemdError::Call {
                    unit: unit.to_string(),
                    call: "reading a property",
                    error: format!("{interface}.{name}: {e}"),
                })?;
        String::try_from(value).map_err(|e| SystemdError::Call {
            unit: unit.to_string(),
            call: "reading a property",
            error: format!("{interface}.{name} is not a string: {e}"),
        })
    }
}

fn is_no_such_unit(e: &zbus::Error) -> bool {
    matches!(e, zbus::Error::MethodError(name, _, _) if name.as_str() == NO_SUCH_UNIT)
}

fn not_found(unit: &str) -> SystemdError {
    SystemdError::UnitNotFound {
        unit: unit.to_string(),
    }
}

fn call_error(unit: &str, call: &'static str, e: impl Into<zbus::Error>) -> SystemdError {
    SystemdError::Call {
        unit: unit.to_string(),
        call,
        error: e.into().to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_process_and_mixed_spare_the_shims() {
        check_kill_mode("containerd.service", "process").unwrap();
        check_kill_mode("containerd.service", "mixed").unwrap();
        for mode in ["control-group", "none", ""] {
            let err = check_kill_mode("containerd.service", mode).unwrap_err();
            let text = err.to_string();
            assert!(text.contains("KillMode=process"), "{text}");
            assert!(text.contains("every pod"), "{text}");
            assert!(err.nothing_restarted());
        }
    }

    #[test]
    fn an_unreachable_bus_names_the_address_and_the_unit() {
        let dir = tempfile::tempdir().unwrap();
        let address = format!("unix:path={}", dir.path().join("no-bus").display());
        let err = block_on("containerd.service", async {
            Systemd::connect("containerd.service", Some(&address), Duration::from_secs(2))
                .await
                .map(drop)
        })
        .unwrap_err();
        assert!(matches!(err, SystemdError::BusUnreachable { .. }), "{err}");
        let text = err.to_string();
        assert!(text.contains(&address), "{text}");
        assert!(text.contains("containerd.service"), "{text}");
        assert!(err.nothing_restarted());
    }

    #[test]
    fn block_on_works_inside_a_runtime_too() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let n = rt
            .block_on(async { block_on("u", async { Ok(7) }) })
            .unwrap();
        assert_eq!(n, 7);
    }
}
