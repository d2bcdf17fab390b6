//! Wire-compatibility checks against hand-encoded protobuf bytes.
//!
//! Every byte string below is written out tag by tag from the upstream field
//! numbers (containerd/nri pkg/api/api.proto), not produced by our own
//! encoder, so a wrong field number or type in our schema fails here.
//! Tag byte = (field_number << 3) | wire_type; wire types: 0 varint,
//! 1 fixed64, 2 length-delimited, 5 fixed32.

use kata_nri_proto::api::{
    ConfigureRequest, ConfigureResponse, Container, ContainerState, Empty, Event,
    RegisterPluginRequest, StateChangeEvent, SynchronizeRequest, SynchronizeResponse,
};
use kata_nri_proto::api::{PodSandbox, RunPodSandboxRequest};
use protobuf::{Enum, Message};

/// Base-128 varint, for length prefixes of nested messages over 127 bytes.
fn varint(mut n: usize) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let low = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(low);
            return out;
        }
        out.push(low | 0x80);
    }
}

/// Tag byte(s) followed by the length prefix and the nested bytes.
fn nested(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    out.extend(varint(body.len()));
    out.extend_from_slice(body);
    out
}

/// A PodSandbox as containerd v0.12 sends it, field by field.
fn hand_encoded_pod() -> Vec<u8> {
    let mut b = Vec::new();
    // 1 id = "pod-1"
    b.extend_from_slice(&[0x0a, 5]);
    b.extend_from_slice(b"pod-1");
    // 2 name = "web"
    b.extend_from_slice(&[0x12, 3]);
    b.extend_from_slice(b"web");
    // 3 uid = "u1"
    b.extend_from_slice(&[0x1a, 2]);
    b.extend_from_slice(b"u1");
    // 4 namespace = "default"
    b.extend_from_slice(&[0x22, 7]);
    b.extend_from_slice(b"default");
    // 5 labels: one map entry {1 key = "app", 2 value = "x"}
    b.extend_from_slice(&[0x2a, 8, 0x0a, 3]);
    b.extend_from_slice(b"app");
    b.extend_from_slice(&[0x12, 1]);
    b.extend_from_slice(b"x");
    // 6 annotations: two map entries
    //   {"io.katacontainers.config.hypervisor.machine_type": "q35"}
    let key = b"io.katacontainers.config.hypervisor.machine_type";
    assert_eq!(key.len(), 48);
    b.extend_from_slice(&[0x32, 2 + 48 + 2 + 3, 0x0a, 48]);
    b.extend_from_slice(key);
    b.extend_from_slice(&[0x12, 3]);
    b.extend_from_slice(b"q35");
    //   {"a": "b"}
    b.extend_from_slice(&[0x32, 6, 0x0a, 1, b'a', 0x12, 1, b'b']);
    // 7 runtime_handler = "kata-qemu"
    b.extend_from_slice(&[0x3a, 9]);
    b.extend_from_slice(b"kata-qemu");
    // 8 linux = LinuxPodSandbox {
    //     1 pod_overhead = LinuxResources{} (not declared by us: skipped)
    //     3 cgroup_parent = "/kubepods"
    //   }
    b.extend_from_slice(&[0x42, 2 + 2 + 9, 0x0a, 0, 0x1a, 9]);
    b.extend_from_slice(b"/kubepods");
    // 9 pid = 300 (varint 0xac 0x02)
    b.extend_from_slice(&[0x48, 0xac, 0x02]);
    // 10 ips = "10.0.0.7", "fd00::7"
    b.extend_from_slice(&[0x52, 8]);
    b.extend_from_slice(b"10.0.0.7");
    b.extend_from_slice(&[0x52, 7]);
    b.extend_from_slice(b"fd00::7");
    b
}

fn check_pod(pod: &PodSandbox) {
    assert_eq!(pod.id, "pod-1");
    assert_eq!(pod.name, "web");
    assert_eq!(pod.uid, "u1");
    assert_eq!(pod.namespace, "default");
    assert_eq!(pod.labels.get("app").map(String::as_str), Some("x"));
    assert_eq!(pod.annotations.len(), 2);
    assert_eq!(
        pod.annotations
            .get("io.katacontainers.config.hypervisor.machine_type")
            .map(String::as_str),
        Some("q35")
    );
    assert_eq!(pod.annotations.get("a").map(String::as_str), Some("b"));
    assert_eq!(pod.runtime_handler, "kata-qemu");
    assert_eq!(pod.linux.cgroup_parent, "/kubepods");
    assert_eq!(pod.pid, 300);
    assert_eq!(pod.ips, ["10.0.0.7", "fd00::7"]);
}

#[test]
fn pod_sandbox_decodes_from_hand_encoded_bytes() {
    let pod = PodSandbox::parse_from_bytes(&hand_encoded_pod()).expect("decode PodSandbox");
    check_pod(&pod);
    // The skipped LinuxPodSandbox.pod_overhead is kept as an unknown field.
    assert!(pod.linux.special_fields.unknown_fields().get(1).is_some());
}

#[test]
fn run_pod_sandbox_request_wraps_pod_in_field_1() {
    let pod = hand_encoded_pod();
    assert!(pod.len() > 127, "exercises a two-byte length prefix");
    let b = nested(0x0a, &pod);
    let req = RunPodSandboxRequest::parse_from_bytes(&b).expect("decode");
    check_pod(&req.pod);
}

#[test]
fn configure_response_events_is_field_2() {
    let resp = ConfigureResponse {
        events: 7,
        ..Default::default()
    };
    assert_eq!(resp.write_to_bytes().unwrap(), [0x10, 0x07]);

    // All 14 events of v0.10+: 0x3fff, varint 0xff 0x7f.
    let resp = ConfigureResponse {
        events: 0x3fff,
        ..Default::default()
    };
    assert_eq!(resp.write_to_bytes().unwrap(), [0x10, 0xff, 0x7f]);
}

#[test]
fn register_plugin_request_encodes_upstream_numbers() {
    let req = RegisterPluginRequest {
        plugin_name: "kata".into(),
        plugin_idx: "10".into(),
        NRI_version: "v0.12.2".into(),
        ..Default::default()
    };
    let mut want = vec![0x0a, 4];
    want.extend_from_slice(b"kata");
    want.extend_from_slice(&[0x12, 2]);
    want.extend_from_slice(b"10");
    want.extend_from_slice(&[0x1a, 7]);
    want.extend_from_slice(b"v0.12.2");
    assert_eq!(req.write_to_bytes().unwrap(), want);
}

#[test]
fn configure_request_from_v0_6_and_v0_12() {
    // v0.6.1 runtime: only config, runtime_name, runtime_version.
    let mut b = vec![0x0a, 0, 0x12, 10];
    b.extend_from_slice(b"containerd");
    b.extend_from_slice(&[0x1a, 7]);
    b.extend_from_slice(b"v1.7.24");
    let req = ConfigureRequest::parse_from_bytes(&b).unwrap();
    assert_eq!(req.config, "");
    assert_eq!(req.runtime_name, "containerd");
    assert_eq!(req.runtime_version, "v1.7.24");
    assert_eq!(req.registration_timeout, 0);
    assert_eq!(req.request_timeout, 0);
    assert_eq!(req.NRI_version, "");

    // v0.12 runtime: plus timeouts (ms) and NRI_version.
    let mut b = vec![0x0a, 3];
    b.extend_from_slice(b"a=1");
    b.extend_from_slice(&[0x12, 10]);
    b.extend_from_slice(b"containerd");
    b.extend_from_slice(&[0x1a, 6]);
    b.extend_from_slice(b"v2.3.0");
    b.extend_from_slice(&[0x20, 0x88, 0x27]); // 4 registration_timeout = 5000
    b.extend_from_slice(&[0x28, 0xd0, 0x0f]); // 5 request_timeout = 2000
    b.extend_from_slice(&[0x32, 7]); // 6 NRI_version
    b.extend_from_slice(b"v0.12.2");
    let req = ConfigureRequest::parse_from_bytes(&b).unwrap();
    assert_eq!(req.config, "a=1");
    assert_eq!(req.runtime_version, "v2.3.0");
    assert_eq!(req.registration_timeout, 5000);
    assert_eq!(req.request_timeout, 2000);
    assert_eq!(req.NRI_version, "v0.12.2");
}

/// A Container as a newer runtime sends it: the six fields we declare plus
/// many we do not (args, env, mounts, pid, created_at, exit_code, CDI devices,
/// image) and a field number no NRI version has assigned yet, in all four
/// wire types.
#[test]
fn container_with_unknown_fields_still_decodes() {
    let mut b = Vec::new();
    b.extend_from_slice(&[0x0a, 2]); // 1 id
    b.extend_from_slice(b"c1");
    b.extend_from_slice(&[0x12, 5]); // 2 pod_sandbox_id
    b.extend_from_slice(b"pod-1");
    b.extend_from_slice(&[0x1a, 3]); // 3 name
    b.extend_from_slice(b"app");
    b.extend_from_slice(&[0x20, 0x03]); // 4 state = CONTAINER_RUNNING
    b.extend_from_slice(&[0x2a, 6, 0x0a, 1, b'k', 0x12, 1, b'v']); // 5 labels
    b.extend_from_slice(&[0x32, 6, 0x0a, 1, b'x', 0x12, 1, b'y']); // 6 annotations
    // Unknown to us:
    b.extend_from_slice(&[0x3a, 5]); // 7 args
    b.extend_from_slice(b"sleep");
    b.extend_from_slice(&[0x42, 3]); // 8 env
    b.extend_from_slice(b"A=1");
    b.extend_from_slice(&[0x4a, 6, 0x0a, 4]); // 9 mounts {1 destination}
    b.extend_from_slice(b"/tmp");
    b.extend_from_slice(&[0x60, 0x96, 0x01]); // 12 pid = 150
    b.extend_from_slice(&[0x70, 0x80, 0x94, 0xeb, 0xdc, 0x03]); // 14 created_at = 1e9
    b.extend_from_slice(&[0x88, 0x01, 0x01]); // 17 exit_code = 1
    b.extend_from_slice(&[0xa2, 0x01, 3, 0x0a, 1, b'd']); // 20 CDI_devices
    b.extend_from_slice(&[0xb2, 0x01, 4, 0x0a, 2, b'i', b'm']); // 22 image {1 name}
    // Field 1000, not assigned upstream, in the other wire types.
    b.extend_from_slice(&[0xc1, 0x3e, 1, 2, 3, 4, 5, 6, 7, 8]); // fixed64
    b.extend_from_slice(&[0xc5, 0x3e, 1, 2, 3, 4]); // fixed32
    b.extend_from_slice(&[0xc2, 0x3e, 1, 0]); // length-delimited

    let c = Container::parse_from_bytes(&b).expect("decode Container");
    assert_eq!(c.id, "c1");
    assert_eq!(c.pod_sandbox_id, "pod-1");
    assert_eq!(c.name, "app");
    assert_eq!(c.state.enum_value(), Ok(ContainerState::CONTAINER_RUNNING));
    assert_eq!(c.labels.get("k").map(String::as_str), Some("v"));
    assert_eq!(c.annotations.get("x").map(String::as_str), Some("y"));
    assert!(c.special_fields.unknown_fields().get(22).is_some());
    assert!(c.special_fields.unknown_fields().get(1000).is_some());
}

#[test]
fn state_change_event_decodes_and_keeps_future_event_numbers() {
    let pod = hand_encoded_pod();
    let mut b = vec![0x08, 0x07]; // 1 event = POST_START_CONTAINER
    b.extend(nested(0x12, &pod)); // 2 pod
    b.extend_from_slice(&[0x1a, 4, 0x0a, 2]); // 3 container {1 id}
    b.extend_from_slice(b"c1");
    let ev = StateChangeEvent::parse_from_bytes(&b).unwrap();
    assert_eq!(ev.event.enum_value(), Ok(Event::POST_START_CONTAINER));
    check_pod(&ev.pod);
    assert_eq!(ev.container.id, "c1");

    // An event number a future NRI might add is kept, not an error.
    let ev = StateChangeEvent::parse_from_bytes(&[0x08, 0x20]).unwrap();
    assert_eq!(ev.event.enum_value(), Err(32));
    assert!(ev.pod.is_none());
}

#[test]
fn event_numbers_match_upstream() {
    let want = [
        (Event::UNKNOWN, 0),
        (Event::RUN_POD_SANDBOX, 1),
        (Event::STOP_POD_SANDBOX, 2),
        (Event::REMOVE_POD_SANDBOX, 3),
        (Event::CREATE_CONTAINER, 4),
        (Event::POST_CREATE_CONTAINER, 5),
        (Event::START_CONTAINER, 6),
        (Event::POST_START_CONTAINER, 7),
        (Event::UPDATE_CONTAINER, 8),
        (Event::POST_UPDATE_CONTAINER, 9),
        (Event::STOP_CONTAINER, 10),
        (Event::REMOVE_CONTAINER, 11),
        (Event::UPDATE_POD_SANDBOX, 12),
        (Event::POST_UPDATE_POD_SANDBOX, 13),
        (Event::VALIDATE_CONTAINER_ADJUSTMENT, 14),
        (Event::LAST, 15),
    ];
    assert_eq!(Event::VALUES.len(), want.len());
    for (event, n) in want {
        assert_eq!(event.value(), n, "{event:?}");
    }
    let states = [
        (ContainerState::CONTAINER_UNKNOWN, 0),
        (ContainerState::CONTAINER_CREATED, 1),
        (ContainerState::CONTAINER_PAUSED, 2),
        (ContainerState::CONTAINER_RUNNING, 3),
        (ContainerState::CONTAINER_STOPPED, 4),
    ];
    for (state, n) in states {
        assert_eq!(state.value(), n, "{state:?}");
    }
}

#[test]
fn synchronize_messages_use_upstream_numbers() {
    let pod = hand_encoded_pod();
    let mut b = nested(0x0a, &pod); // 1 pods
    b.extend_from_slice(&[0x12, 4, 0x0a, 2]); // 2 containers {1 id}
    b.extend_from_slice(b"c1");
    b.extend_from_slice(&[0x18, 0x01]); // 3 more = true
    let req = SynchronizeRequest::parse_from_bytes(&b).unwrap();
    assert_eq!(req.pods.len(), 1);
    check_pod(&req.pods[0]);
    assert_eq!(req.containers[0].id, "c1");
    assert!(req.more);

    // Answer to a partial Synchronize: no updates, `more` echoed (field 2).
    let resp = SynchronizeResponse {
        more: true,
        ..Default::default()
    };
    assert_eq!(resp.write_to_bytes().unwrap(), [0x10, 0x01]);

    // The final answer with no updates is the empty message.
    assert!(
        SynchronizeResponse::default()
            .write_to_bytes()
            .unwrap()
            .is_empty()
    );
    assert!(Empty::default().write_to_bytes().unwrap().is_empty());
}
