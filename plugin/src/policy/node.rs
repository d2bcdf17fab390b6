//! Node facts for policies, read from the kernel's files: architecture, kernel release, CPU
//! flags, `/dev/kvm`, PCI display controllers. Labels come from the API, not from here.

use std::fs;
use std::path::Path;

use super::types::{NodeFacts, PciGpu};

impl NodeFacts {
    /// What this node is, as far as local files tell; unknown parts stay empty.
    pub fn probe() -> Self {
        Self::probe_at(Path::new("/"))
    }

    /// [`probe`](Self::probe) under another root (tests).
    pub fn probe_at(root: &Path) -> Self {
        let read = |path: &str| fs::read_to_string(root.join(path)).unwrap_or_default();
        Self {
            arch: std::env::consts::ARCH.to_owned(),
            kernel: read("proc/sys/kernel/osrelease").trim().to_owned(),
            cpu_flags: cpu_flags(&read("proc/cpuinfo")),
            has_kvm: root.join("dev/kvm").exists(),
            gpus: pci_gpus(root),
            labels: None,
        }
    }
}

/// The first CPU's `flags` (x86) or `Features` (arm64) line.
fn cpu_flags(cpuinfo: &str) -> Vec<String> {
    cpuinfo
        .lines()
        .find_map(|line| {
            let (key, value) = line.split_once(':')?;
            matches!(key.trim(), "flags" | "Features")
                .then(|| value.split_whitespace().map(str::to_owned).collect())
        })
        .unwrap_or_default()
}

/// PCI display controllers (VGA, XGA, 3D): the node's GPUs, from the same scan the CDI spec
/// uses.
fn pci_gpus(root: &Path) -> Vec<PciGpu> {
    crate::host::scan(root)
        .into_iter()
        .filter(|device| device.is_display())
        .map(|device| PciGpu {
            vendor_id: device.vendor_id,
            device_id: device.device_id,
            address: device.address,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_facts_from_a_fake_root() {
        let root = tempfile::tempdir().expect("tempdir");
        let write = |path: &str, text: &str| {
            let path = root.path().join(path);
            fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
            fs::write(path, text).expect("write");
        };
        write("proc/sys/kernel/osrelease", "6.1.0-27-amd64\n");
        write(
            "proc/cpuinfo",
            "processor\t: 0\nflags\t\t: fpu vmx avx2\n\nflags : other\n",
        );
        write("dev/kvm", "");
        write("sys/bus/pci/devices/0000:3b:00.0/class", "0x030200\n");
        write("sys/bus/pci/devices/0000:3b:00.0/vendor", "0x10de\n");
        write("sys/bus/pci/devices/0000:3b:00.0/device", "0x2330\n");
        write("sys/bus/pci/devices/0000:00:1f.0/class", "0x060100\n");
        let facts = NodeFacts::probe_at(root.path());
        assert_eq!(facts.kernel, "6.1.0-27-amd64");
        assert_eq!(facts.cpu_flags, ["fpu", "vmx", "avx2"]);
        assert!(facts.has_kvm);
        assert_eq!(
            facts.gpus,
            [PciGpu {
                vendor_id: 0x10de,
                device_id: 0x2330,
                address: "0000:3b:00.0".into()
            }]
        );
    }
}
