//! A fake systemd on a [`PrivateBus`]: it owns `org.freedesktop.systemd1` and serves the part of
//! systemd's API that kata-nri-manager's restart method `systemd` uses — `GetUnit`, `LoadUnit`,
//! `Subscribe`, `RestartUnit` (which really restarts the harness's containerd), the `JobRemoved`
//! signal, and the unit's `LoadState`, `ActiveState` and `KillMode` properties.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use zbus::object_server::SignalEmitter;
use zbus::zvariant::{ObjectPath, OwnedObjectPath};

use crate::containerd::Containerd;
use crate::dbus::PrivateBus;

const SERVICE: &str = "org.freedesktop.systemd1";
const MANAGER_PATH: &str = "/org/freedesktop/systemd1";

/// What a unit of the fake is like.
#[derive(Debug, Clone)]
pub struct FakeUnit {
    /// The unit's name, e.g. `containerd.service`.
    pub name: String,
    /// `KillMode` as systemd reports it: `control-group` (systemd's default), `process`, `mixed`.
    pub kill_mode: String,
}

impl FakeUnit {
    pub fn new(name: impl Into<String>, kill_mode: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            kill_mode: kill_mode.into(),
        }
    }
}

/// systemd's own error for a unit it does not know.
#[derive(Debug, zbus::DBusError)]
#[zbus(prefix = "org.freedesktop.systemd1")]
enum SystemdFault {
    #[zbus(error)]
    ZBus(zbus::Error),
    NoSuchUnit(String),
}

/// What the test can look at and steer.
struct State {
    unit: FakeUnit,
    unit_path: OwnedObjectPath,
    containerd: Arc<tokio::sync::Mutex<Containerd>>,
    active_state: Mutex<String>,
    /// How many of the next restarts fail (containerd stopped, job result `failed`).
    fail_next: AtomicU32,
    restarts: AtomicU32,
    next_job: AtomicU32,
}

impl State {
    fn unit_path(&self, name: &str) -> Result<OwnedObjectPath, SystemdFault> {
        if name == self.unit.name {
            Ok(self.unit_path.clone())
        } else {
            Err(SystemdFault::NoSuchUnit(format!("Unit {name} not loaded.")))
        }
    }

    fn set_active(&self, state: &str) {
        if let Ok(mut active) = self.active_state.lock() {
            *active = state.to_string();
        }
    }
}

struct Manager {
    state: Arc<State>,
}

#[zbus::interface(name = "org.freedesktop.systemd1.Manager")]
impl Manager {
    async fn get_unit(&self, name: &str) -> Result<OwnedObjectPath, SystemdFault> {
        self.state.unit_path(name)
    }

    async fn load_unit(&self, name: &str) -> Result<OwnedObjectPath, SystemdFault> {
        self.state.unit_path(name)
    }

    async fn subscribe(&self) {}

    /// Answers with the job at once and restarts containerd in the background, as systemd does;
    /// the job's end is the `JobRemoved` signal.
    async fn restart_unit(
        &self,
        name: &str,
        mode: &str,
        #[zbus(signal_emitter)] emitter: SignalEmitter<'_>,
    ) -> Result<OwnedObjectPath, SystemdFault> {
        self.state.unit_path(name)?;
        if mode != "replace" {
            return Err(SystemdFault::ZBus(zbus::Error::Failure(format!(
                "the fake expects mode replace, got {mode}"
            ))));
        }
        let id = self.state.next_job.fetch_add(1, Ordering::SeqCst) + 1;
        let job = OwnedObjectPath::try_from(format!("{MANAGER_PATH}/job/{id}"))
            .map_err(|e| SystemdFault::ZBus(e.into()))?;
        let state = Arc::clone(&self.state);
        let emitter = emitter.into_owned();
        let reply = job.clone();
        tokio::spawn(async move {
            state.set_active("activating");
            let fail = state
                .fail_next
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok();
            let result = {
                let mut containerd = state.containerd.lock().await;
                if fail {
                    // A unit that does not come up: containerd stopped, the job failed.
                    containerd.stop().await.map(|()| "failed")
                } else {
                    containerd.restart().await.map(|()| "done")
                }
            };
            let result = result.unwrap_or_else(|e| {
                eprintln!("fake systemd: restarting containerd: {e:#}");
                "failed"
            });
            state.restarts.fetch_add(1, Ordering::SeqCst);
            state.set_active(if result == "done" { "active" } else { "failed" });
            let name = state.unit.name.clone();
            if let Err(e) = Manager::job_removed(&emitter, id, job.as_ref(), &name, result).await {
                eprintln!("fake systemd: emitting JobRemoved: {e}");
            }
        });
        Ok(reply)
    }

    #[zbus(signal)]
    async fn job_removed(
        emitter: &SignalEmitter<'_>,
        id: u32,
        job: ObjectPath<'_>,
        unit: &str,
        result: &str,
    ) -> zbus::Result<()>;
}

struct Unit {
    state: Arc<State>,
}

#[zbus::interface(name = "org.freedesktop.systemd1.Unit")]
impl Unit {
    #[zbus(property)]
    async fn load_state(&self) -> String {
        "loaded".into()
    }

    #[zbus(property)]
    async fn active_state(&self) -> String {
        self.state
            .active_state
            .lock()
            .map(|s| s.clone())
            .unwrap_or_default()
    }
}

struct Service {
    state: Arc<State>,
}

#[zbus::interface(name = "org.freedesktop.systemd1.Service")]
impl Service {
    #[zbus(property)]
    async fn kill_mode(&self) -> String {
        self.state.unit.kill_mode.clone()
    }
}

/// systemd's object path of a unit: every byte but `[A-Za-z0-9]` escaped as `_xx`.
pub fn unit_object_path(name: &str) -> String {
    let mut path = format!("{MANAGER_PATH}/unit/");
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() {
            path.push(b as char);
        } else {
            path.push_str(&format!("_{b:02x}"));
        }
    }
    path
}

/// The fake, serving one unit that stands for `containerd`.
pub struct FakeSystemd {
    _connection: zbus::Connection,
    state: Arc<State>,
}

impl std::fmt::Debug for FakeSystemd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeSystemd")
            .field("unit", &self.state.unit)
            .finish_non_exhaustive()
    }
}

impl FakeSystemd {
    /// Serves `unit` on `bus`; its restarts restart `containerd`.
    pub async fn start(bus: &PrivateBus, unit: FakeUnit, containerd: Containerd) -> Result<Self> {
        let unit_path = OwnedObjectPath::try_from(unit_object_path(&unit.name))?;
        let state = Arc::new(State {
            unit_path: unit_path.clone(),
            unit,
            containerd: Arc::new(tokio::sync::Mutex::new(containerd)),
            active_state: Mutex::new("active".into()),
            fail_next: AtomicU32::new(0),
            restarts: AtomicU32::new(0),
            next_job: AtomicU32::new(0),
        });
        let connection = zbus::connection::Builder::address(bus.address())?
            .serve_at(
                MANAGER_PATH,
                Manager {
                    state: Arc::clone(&state),
                },
            )?
            .serve_at(
                unit_path.as_str(),
                Unit {
                    state: Arc::clone(&state),
                },
            )?
            .serve_at(
                unit_path.as_str(),
                Service {
                    state: Arc::clone(&state),
                },
            )?
            .name(SERVICE)?
            .build()
            .await
            .context("the fake systemd connects to the private bus")?;
        Ok(Self {
            _connection: connection,
            state,
        })
    }

    /// The next `n` restarts fail: containerd is stopped and the job ends `failed`.
    pub fn fail_next_restarts(&self, n: u32) {
        self.state.fail_next.store(n, Ordering::SeqCst);
    }

    /// How many restarts the fake has finished.
    pub fn restarts(&self) -> u32 {
        self.state.restarts.load(Ordering::SeqCst)
    }

    /// The unit's containerd (locked while a restart runs).
    pub async fn containerd(&self) -> tokio::sync::MutexGuard<'_, Containerd> {
        self.state.containerd.lock().await
    }
}
