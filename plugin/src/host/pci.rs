//! The node's PCI devices as sysfs describes them: one scan, read by the policies' node facts
//! (display controllers) and by the CDI spec (those bound to `vfio-pci`).

use std::fs;
use std::path::Path;

/// Where the PCI devices are, under the root.
pub const DEVICES: &str = "sys/bus/pci/devices";

/// One PCI function.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PciDevice {
    /// `0000:3b:00.0`.
    pub address: String,
    pub vendor_id: u16,
    pub device_id: u16,
    /// Class, subclass and programming interface (`0x030200`).
    pub class: u32,
    /// The bound driver's name (`vfio-pci`, `nvidia`), if any.
    pub driver: Option<String>,
    /// The IOMMU group, which `/dev/vfio/<group>` passes through as a whole.
    pub iommu_group: Option<String>,
    /// The device's VFIO character device under `/dev/vfio/devices/` (iommufd), if the kernel
    /// made one (`vfio-dev/vfio<N>`).
    pub vfio_cdev: Option<String>,
}

impl PciDevice {
    /// A display controller (VGA, XGA, 3D): what a GPU is to PCI.
    pub fn is_display(&self) -> bool {
        self.class >> 16 == 0x03
    }
}

/// Every PCI function under `root`, by address. A node without sysfs (or a device whose
/// identity cannot be read) yields fewer devices, never an error: nothing here is required.
pub fn scan(root: &Path) -> Vec<PciDevice> {
    let devices = root.join(DEVICES);
    let Ok(entries) = fs::read_dir(&devices) else {
        return Vec::new();
    };
    let hex = |dir: &Path, file: &str| {
        let text = fs::read_to_string(dir.join(file)).ok()?;
        u32::from_str_radix(text.trim().trim_start_matches("0x"), 16).ok()
    };
    // A symlink's last component: sysfs links `driver` and `iommu_group` to the named object.
    let link_name = |path: &Path| {
        fs::read_link(path)
            .ok()
            .and_then(|target| target.file_name().map(|n| n.to_string_lossy().into_owned()))
    };
    let mut found: Vec<PciDevice> = entries
        .flatten()
        .filter_map(|entry| {
            let dir = entry.path();
            Some(PciDevice {
                address: entry.file_name().to_string_lossy().into_owned(),
                vendor_id: u16::try_from(hex(&dir, "vendor")?).ok()?,
                device_id: u16::try_from(hex(&dir, "device")?).ok()?,
                class: hex(&dir, "class")?,
                driver: link_name(&dir.join("driver")),
                iommu_group: link_name(&dir.join("iommu_group")),
                vfio_cdev: fs::read_dir(dir.join("vfio-dev"))
                    .ok()
                    .and_then(|mut cdevs| cdevs.find_map(Result::ok))
                    .map(|cdev| cdev.file_name().to_string_lossy().into_owned()),
            })
        })
        .collect();
    found.sort_by(|a, b| a.address.cmp(&b.address));
    found
}

#[cfg(test)]
pub(crate) mod testing {
    //! A fake `/sys/bus/pci` tree, as the kernel lays it out.

    use std::fs;
    use std::os::unix::fs::symlink;
    use std::path::Path;

    pub(crate) struct FakeDevice<'a> {
        pub address: &'a str,
        pub vendor: &'a str,
        pub device: &'a str,
        pub class: &'a str,
        pub driver: Option<&'a str>,
        pub iommu_group: Option<&'a str>,
        pub vfio_cdev: Option<&'a str>,
    }

    pub(crate) fn add(root: &Path, device: &FakeDevice<'_>) {
        let dir = root.join(super::DEVICES).join(device.address);
        fs::create_dir_all(&dir).expect("device dir");
        fs::write(dir.join("vendor"), format!("0x{}\n", device.vendor)).expect("vendor");
        fs::write(dir.join("device"), format!("0x{}\n", device.device)).expect("device");
        fs::write(dir.join("class"), format!("0x{}\n", device.class)).expect("class");
        if let Some(driver) = device.driver {
            let target = root.join("sys/bus/pci/drivers").join(driver);
            fs::create_dir_all(&target).expect("driver dir");
            symlink(&target, dir.join("driver")).expect("driver link");
        }
        if let Some(group) = device.iommu_group {
            let target = root.join("sys/kernel/iommu_groups").join(group);
            fs::create_dir_all(&target).expect("group dir");
            symlink(&target, dir.join("iommu_group")).expect("group link");
        }
        if let Some(cdev) = device.vfio_cdev {
            fs::create_dir_all(dir.join("vfio-dev").join(cdev)).expect("vfio-dev");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testing::{FakeDevice, add};
    use super::*;

    #[test]
    fn reads_identity_driver_group_and_cdev() {
        let root = tempfile::tempdir().expect("tempdir");
        add(
            root.path(),
            &FakeDevice {
                address: "0000:3b:00.0",
                vendor: "10de",
                device: "2330",
                class: "030200",
                driver: Some("vfio-pci"),
                iommu_group: Some("42"),
                vfio_cdev: Some("vfio3"),
            },
        );
        add(
            root.path(),
            &FakeDevice {
                address: "0000:00:1f.0",
                vendor: "8086",
                device: "a1c8",
                class: "060100",
                driver: None,
                iommu_group: None,
                vfio_cdev: None,
            },
        );
        let devices = scan(root.path());
        assert_eq!(devices.len(), 2);
        assert_eq!(devices[0].address, "0000:00:1f.0");
        assert!(!devices[0].is_display());
        assert_eq!(
            devices[1],
            PciDevice {
                address: "0000:3b:00.0".into(),
                vendor_id: 0x10de,
                device_id: 0x2330,
                class: 0x030200,
                driver: Some("vfio-pci".into()),
                iommu_group: Some("42".into()),
                vfio_cdev: Some("vfio3".into()),
            }
        );
        assert!(devices[1].is_display());
    }

    #[test]
    fn no_sysfs_is_no_devices() {
        let root = tempfile::tempdir().expect("tempdir");
        assert!(scan(root.path()).is_empty());
    }
}
