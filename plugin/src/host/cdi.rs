//! The CDI spec of the node's passthrough GPUs (`cdi`): every display controller of the
//! configured PCI vendor bound to `vfio-pci`, so a pod of a GPU class asks for one by name
//! (`cdi.k8s.io/gpu: nvidia.com/pgpu=0`) and containerd puts its VFIO device node into the
//! sandbox, where kata passes the device through to the guest. k8s-kata-manager wrote the same
//! spec; pods written for it keep working.
//!
//! Devices are named three ways, each with the device node that passes the GPU through:
//! - by index (`0`, `1`, … in PCI address order): `/dev/vfio/<group>`;
//! - by IOMMU group (`42`): `/dev/vfio/<group>` — left out where the group's number is also an
//!   index name (the index wins: names must be unique in a spec);
//! - by iommufd name (`vfio3`), only where the kernel has `/dev/vfio/devices`:
//!   `/dev/vfio/devices/vfio3`.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tracing::warn;

use super::pci::PciDevice;

/// The CDI specification version written: the oldest that takes a kind with a dotted vendor and
/// plain device nodes, so every containerd with CDI support reads it.
pub const CDI_VERSION: &str = "0.5.0";

/// Our spec files start with this, so a changed `cdi.kind` can clean up the old one and never
/// touches another tool's.
const FILE_PREFIX: &str = "kata-nri-manager-";

/// A CDI spec, with the fields we write.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CdiSpec {
    pub cdi_version: String,
    pub kind: String,
    pub devices: Vec<CdiDevice>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CdiDevice {
    pub name: String,
    pub container_edits: ContainerEdits,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerEdits {
    pub device_nodes: Vec<DeviceNode>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceNode {
    pub path: String,
}

impl CdiDevice {
    fn with_node(name: String, path: String) -> Self {
        Self {
            name,
            container_edits: ContainerEdits {
                device_nodes: vec![DeviceNode { path }],
            },
        }
    }
}

impl CdiSpec {
    /// The spec of `devices`' passthrough GPUs of `vendor_id`, or `None` when there is none (a
    /// spec must list a device). `iommufd`: the kernel has `/dev/vfio/devices`.
    pub fn passthrough_gpus(
        kind: &str,
        vendor_id: u16,
        devices: &[PciDevice],
        iommufd: bool,
    ) -> Option<Self> {
        let gpus: Vec<(&PciDevice, &str)> = devices
            .iter()
            .filter(|d| {
                d.vendor_id == vendor_id
                    && d.is_display()
                    && d.driver.as_deref() == Some("vfio-pci")
            })
            .filter_map(|d| d.iommu_group.as_deref().map(|group| (d, group)))
            .collect();
        if gpus.is_empty() {
            return None;
        }
        let mut names = BTreeSet::new();
        let mut out = Vec::new();
        for (index, (_, group)) in gpus.iter().enumerate() {
            names.insert(index.to_string());
            out.push(CdiDevice::with_node(
                index.to_string(),
                format!("/dev/vfio/{group}"),
            ));
        }
        for (gpu, group) in &gpus {
            if names.insert((*group).to_owned()) {
                out.push(CdiDevice::with_node(
                    (*group).to_owned(),
                    format!("/dev/vfio/{group}"),
                ));
            } else if !out.iter().any(|d| d.name == *group) {
                // Two GPUs in one group: the group's device is already there.
            } else {
                warn!(gpu = %gpu.address, iommu_group = %group, "CDI: the IOMMU group's number is also a GPU index; ask for it by index");
            }
        }
        if iommufd {
            for (gpu, _) in &gpus {
                if let Some(cdev) = &gpu.vfio_cdev
                    && names.insert(cdev.clone())
                {
                    out.push(CdiDevice::with_node(
                        cdev.clone(),
                        format!("/dev/vfio/devices/{cdev}"),
                    ));
                }
            }
        }
        Some(Self {
            cdi_version: CDI_VERSION.to_owned(),
            kind: kind.to_owned(),
            devices: out,
        })
    }
}

/// Why the spec could not be written or removed.
#[derive(Debug, thiserror::Error)]
pub enum CdiError {
    #[error("CDI spec {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// What a sync did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CdiChange {
    Written,
    Removed,
    Unchanged,
}

/// Keeps one spec file in the CDI directory equal to what it is given.
#[derive(Debug, Clone)]
pub struct CdiWriter {
    dir: PathBuf,
    file: PathBuf,
}

impl CdiWriter {
    /// The writer of `kind`'s spec in `dir` (`<dir>/kata-nri-manager-nvidia.com-pgpu.json`).
    pub fn new(dir: &Path, kind: &str) -> Self {
        Self {
            dir: dir.to_owned(),
            file: dir.join(format!("{FILE_PREFIX}{}.json", kind.replace('/', "-"))),
        }
    }

    pub fn path(&self) -> &Path {
        &self.file
    }

    /// Writes `spec` (atomically: a reader sees the old file or the new one) when the file
    /// differs, or removes the file for `None`. Our files for another kind go too.
    pub fn sync(&self, spec: Option<&CdiSpec>) -> Result<CdiChange, CdiError> {
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| CdiError::Io { path, source }
        };
        self.remove_stale().map_err(io(&self.dir))?;
        let Some(spec) = spec else {
            return match std::fs::remove_file(&self.file) {
                Ok(()) => Ok(CdiChange::Removed),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(CdiChange::Unchanged),
                Err(e) => Err(io(&self.file)(e)),
            };
        };
        let mut body = serde_json::to_vec_pretty(spec)
            .map_err(|e| io(&self.file)(std::io::Error::other(e)))?;
        body.push(b'\n');
        if std::fs::read(&self.file).ok().as_deref() == Some(body.as_slice()) {
            return Ok(CdiChange::Unchanged);
        }
        std::fs::create_dir_all(&self.dir).map_err(io(&self.dir))?;
        let mut temp = tempfile::Builder::new()
            .prefix(".kata-nri-manager-")
            .suffix(".tmp")
            .tempfile_in(&self.dir)
            .map_err(io(&self.dir))?;
        temp.write_all(&body).map_err(io(&self.file))?;
        temp.as_file().sync_all().map_err(io(&self.file))?;
        {
            use std::os::unix::fs::PermissionsExt;
            temp.as_file()
                .set_permissions(std::fs::Permissions::from_mode(0o644))
                .map_err(io(&self.file))?;
        }
        temp.persist(&self.file)
            .map_err(|e| io(&self.file)(e.error))?;
        Ok(CdiChange::Written)
    }

    /// Our spec files other than the current one (a changed `cdi.kind`).
    fn remove_stale(&self) -> std::io::Result<()> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with(FILE_PREFIX) && name.ends_with(".json") && entry.path() != self.file
            {
                std::fs::remove_file(entry.path())?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::pci::scan;
    use super::super::pci::testing::{FakeDevice, add};
    use super::*;

    fn gpu<'a>(
        address: &'a str,
        driver: &'a str,
        group: &'a str,
        cdev: Option<&'a str>,
    ) -> FakeDevice<'a> {
        FakeDevice {
            address,
            vendor: "10de",
            device: "2330",
            class: "030200",
            driver: Some(driver),
            iommu_group: Some(group),
            vfio_cdev: cdev,
        }
    }

    /// Two GPUs on vfio-pci, one on the nvidia driver, a NIC of the same vendor on vfio-pci.
    fn node(root: &Path) {
        add(root, &gpu("0000:3b:00.0", "vfio-pci", "42", Some("vfio0")));
        add(root, &gpu("0000:86:00.0", "vfio-pci", "77", Some("vfio1")));
        add(root, &gpu("0000:af:00.0", "nvidia", "90", None));
        add(
            root,
            &FakeDevice {
                address: "0000:12:00.0",
                vendor: "10de",
                device: "1ad6",
                class: "0c0330",
                driver: Some("vfio-pci"),
                iommu_group: Some("5"),
                vfio_cdev: None,
            },
        );
    }

    fn names_and_nodes(spec: &CdiSpec) -> Vec<(String, String)> {
        spec.devices
            .iter()
            .map(|d| {
                (
                    d.name.clone(),
                    d.container_edits.device_nodes[0].path.clone(),
                )
            })
            .collect()
    }

    #[test]
    fn vfio_gpus_by_index_and_group() {
        let root = tempfile::tempdir().expect("tempdir");
        node(root.path());
        let spec = CdiSpec::passthrough_gpus("nvidia.com/pgpu", 0x10de, &scan(root.path()), false)
            .expect("spec");
        assert_eq!(spec.kind, "nvidia.com/pgpu");
        assert_eq!(
            names_and_nodes(&spec),
            [
                ("0".into(), "/dev/vfio/42".into()),
                ("1".into(), "/dev/vfio/77".into()),
                ("42".into(), "/dev/vfio/42".into()),
                ("77".into(), "/dev/vfio/77".into()),
            ]
        );
    }

    #[test]
    fn iommufd_names_where_the_kernel_has_vfio_devices() {
        let root = tempfile::tempdir().expect("tempdir");
        node(root.path());
        let spec = CdiSpec::passthrough_gpus("nvidia.com/pgpu", 0x10de, &scan(root.path()), true)
            .expect("spec");
        let names = names_and_nodes(&spec);
        assert!(names.contains(&("vfio0".into(), "/dev/vfio/devices/vfio0".into())));
        assert!(names.contains(&("vfio1".into(), "/dev/vfio/devices/vfio1".into())));
        assert_eq!(names.len(), 6);
    }

    #[test]
    fn a_group_numbered_like_an_index_is_left_to_the_index() {
        let root = tempfile::tempdir().expect("tempdir");
        add(root.path(), &gpu("0000:01:00.0", "vfio-pci", "1", None));
        add(root.path(), &gpu("0000:02:00.0", "vfio-pci", "0", None));
        let spec = CdiSpec::passthrough_gpus("nvidia.com/pgpu", 0x10de, &scan(root.path()), false)
            .expect("spec");
        assert_eq!(
            names_and_nodes(&spec),
            [
                ("0".into(), "/dev/vfio/1".into()),
                ("1".into(), "/dev/vfio/0".into()),
            ]
        );
    }

    #[test]
    fn another_vendor_or_no_vfio_gpu_is_no_spec() {
        let root = tempfile::tempdir().expect("tempdir");
        node(root.path());
        let devices = scan(root.path());
        assert_eq!(
            CdiSpec::passthrough_gpus("amd.com/pgpu", 0x1002, &devices, false),
            None
        );
        let only_nvidia_driver: Vec<PciDevice> = devices
            .into_iter()
            .filter(|d| d.driver.as_deref() == Some("nvidia"))
            .collect();
        assert_eq!(
            CdiSpec::passthrough_gpus("nvidia.com/pgpu", 0x10de, &only_nvidia_driver, false),
            None
        );
    }

    #[test]
    fn the_file_is_written_on_change_only_and_removed_with_no_spec() {
        let root = tempfile::tempdir().expect("tempdir");
        node(root.path());
        let dir = root.path().join("var/run/cdi");
        let writer = CdiWriter::new(&dir, "nvidia.com/pgpu");
        assert_eq!(
            writer.path(),
            dir.join("kata-nri-manager-nvidia.com-pgpu.json")
        );
        let spec = CdiSpec::passthrough_gpus("nvidia.com/pgpu", 0x10de, &scan(root.path()), false);
        assert_eq!(
            writer.sync(spec.as_ref()).expect("sync"),
            CdiChange::Written
        );
        assert_eq!(
            writer.sync(spec.as_ref()).expect("sync"),
            CdiChange::Unchanged
        );
        let read: CdiSpec =
            serde_json::from_slice(&std::fs::read(writer.path()).expect("read")).expect("json");
        assert_eq!(Some(read), spec);
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(writer.path())
                .expect("stat")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o644);
        }
        // Another tool's spec stays; our spec of an old kind goes.
        std::fs::write(dir.join("nvidia.com-gpu.json"), "{}").expect("other");
        std::fs::write(dir.join("kata-nri-manager-old.com-x.json"), "{}").expect("stale");
        assert_eq!(writer.sync(None).expect("sync"), CdiChange::Removed);
        assert!(!writer.path().exists());
        assert!(!dir.join("kata-nri-manager-old.com-x.json").exists());
        assert!(dir.join("nvidia.com-gpu.json").exists());
        assert_eq!(writer.sync(None).expect("sync"), CdiChange::Unchanged);
        let leftovers: Vec<_> = std::fs::read_dir(&dir)
            .expect("dir")
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(leftovers.len(), 1, "{leftovers:?}");
    }
}
