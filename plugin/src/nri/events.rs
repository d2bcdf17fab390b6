//! Our own small types for what NRI tells a plugin, so that handlers never touch ttrpc or
//! protobuf types.

use std::collections::BTreeMap;
use std::fmt;

/// NRI event numbers (containerd/nri `Event`). Event `e` is bit `1 << (e - 1)` of a mask.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum Event {
    RunPodSandbox = 1,
    StopPodSandbox = 2,
    RemovePodSandbox = 3,
    CreateContainer = 4,
    PostCreateContainer = 5,
    StartContainer = 6,
    PostStartContainer = 7,
    UpdateContainer = 8,
    PostUpdateContainer = 9,
    StopContainer = 10,
    RemoveContainer = 11,
    UpdatePodSandbox = 12,
    PostUpdatePodSandbox = 13,
    ValidateContainerAdjustment = 14,
}

impl Event {
    /// The highest event number every NRI runtime knows (v0.8.0 and older stop here).
    pub const LAST_BASELINE: u8 = Event::RemoveContainer as u8;

    fn bit(self) -> u32 {
        1 << (self as u8 - 1)
    }
}

/// A set of events a plugin subscribes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct EventMask(u32);

impl EventMask {
    pub const fn empty() -> Self {
        Self(0)
    }

    pub fn of(events: &[Event]) -> Self {
        Self(events.iter().fold(0, |mask, e| mask | e.bit()))
    }

    pub fn contains(self, event: Event) -> bool {
        self.0 & event.bit() != 0
    }

    pub fn bits(self) -> u32 {
        self.0
    }

    /// The events a runtime of the given NRI version knows. Runtimes before v0.12 do not say
    /// their version; they all know events 1 to 11, and asking for anything more makes an older
    /// runtime fail `Configure` and drop the plugin.
    pub fn supported_by(nri_version: Option<&str>) -> Self {
        let last = match nri_version.and_then(parse_minor) {
            Some(minor) if minor >= 10 => Event::ValidateContainerAdjustment as u8,
            _ => Event::LAST_BASELINE,
        };
        Self((1u32 << last) - 1)
    }

    /// The part of `self` that `other` also has.
    pub fn intersect(self, other: Self) -> Self {
        Self(self.0 & other.0)
    }
}

/// Minor version of a `v0.MINOR.PATCH` NRI version string.
fn parse_minor(version: &str) -> Option<u32> {
    let mut parts = version.trim().trim_start_matches('v').split('.');
    let major: u32 = parts.next()?.parse().ok()?;
    let minor: u32 = parts.next()?.split(['-', '+']).next()?.parse().ok()?;
    // NRI is still 0.x; a 1.x runtime knows at least everything 0.x did.
    Some(if major > 0 { u32::MAX } else { minor })
}

/// What the runtime says about itself in `Configure`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RuntimeInfo {
    pub runtime_name: String,
    pub runtime_version: String,
    /// NRI version of the runtime, when it says (v0.12 and later).
    pub nri_version: Option<String>,
    /// The plugin's configuration: empty for external plugins, the contents of
    /// `<plugin_config_path>/NN-name.conf` for launched ones.
    pub config: String,
}

/// A pod sandbox as NRI describes it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodSandbox {
    pub id: String,
    pub name: String,
    pub uid: String,
    pub namespace: String,
    pub runtime_handler: String,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
}

impl fmt::Display for PodSandbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// A container as NRI describes it (only what the manager needs).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Container {
    pub id: String,
    pub pod_sandbox_id: String,
    pub name: String,
}

/// A pod lifecycle event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PodEvent {
    Run,
    Stop,
    Remove,
}

impl PodEvent {
    pub fn from_event(event: Event) -> Option<Self> {
        match event {
            Event::RunPodSandbox => Some(Self::Run),
            Event::StopPodSandbox => Some(Self::Stop),
            Event::RemovePodSandbox => Some(Self::Remove),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Run => "RunPodSandbox",
            Self::Stop => "StopPodSandbox",
            Self::Remove => "RemovePodSandbox",
        }
    }
}

impl TryFrom<i32> for Event {
    type Error = i32;

    fn try_from(value: i32) -> Result<Self, Self::Error> {
        use Event::*;
        Ok(match value {
            1 => RunPodSandbox,
            2 => StopPodSandbox,
            3 => RemovePodSandbox,
            4 => CreateContainer,
            5 => PostCreateContainer,
            6 => StartContainer,
            7 => PostStartContainer,
            8 => UpdateContainer,
            9 => PostUpdateContainer,
            10 => StopContainer,
            11 => RemoveContainer,
            12 => UpdatePodSandbox,
            13 => PostUpdatePodSandbox,
            14 => ValidateContainerAdjustment,
            other => return Err(other),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_events_mask_is_seven() {
        let mask = EventMask::of(&[
            Event::RunPodSandbox,
            Event::StopPodSandbox,
            Event::RemovePodSandbox,
        ]);
        assert_eq!(mask.bits(), 7);
        assert!(mask.contains(Event::StopPodSandbox));
        assert!(!mask.contains(Event::CreateContainer));
    }

    #[test]
    fn older_runtimes_are_offered_only_events_1_to_11() {
        assert_eq!(EventMask::supported_by(None).bits(), 0x7ff);
        assert_eq!(EventMask::supported_by(Some("v0.8.0")).bits(), 0x7ff);
        assert_eq!(EventMask::supported_by(Some("garbage")).bits(), 0x7ff);
        assert_eq!(EventMask::supported_by(Some("v0.12.2")).bits(), 0x3fff);
        assert_eq!(EventMask::supported_by(Some("0.10.0-rc.1")).bits(), 0x3fff);
    }

    #[test]
    fn asking_for_an_unknown_event_is_filtered_out() {
        let wanted = EventMask::of(&[Event::RunPodSandbox, Event::UpdatePodSandbox]);
        let offered = wanted.intersect(EventMask::supported_by(None));
        assert_eq!(offered, EventMask::of(&[Event::RunPodSandbox]));
    }

    #[test]
    fn event_numbers_round_trip() {
        for n in 1..=14 {
            assert_eq!(Event::try_from(n).unwrap() as i32, n);
        }
        assert_eq!(Event::try_from(15), Err(15));
        assert_eq!(Event::try_from(0), Err(0));
    }
}
