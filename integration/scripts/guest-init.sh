#!/bin/sh
# /init of the integration tests' guest: build-guest.sh packs it with Debian's static busybox (every
# applet linked in /bin, /sbin, /usr/bin, /usr/sbin) into initrd.img. It mounts /proc, /sys and
# /dev, prints the marker line on the console (console=ttyS0 on the kernel command line makes that
# the first serial port), and powers off. Boot it with qemu's -no-reboot: without ACPI, or if
# powering off fails, it reboots, and if even that fails, init exits, the kernel panics, and
# panic=-1 reboots; any of these ends qemu.
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
# The marker, then the kernel that booted (what the stand-in records).
echo "KNM-GUEST-BOOTED $(uname -r)"
# Without ACPI (e.g. -M microvm,acpi=off) the kernel cannot power off and `poweroff -f` would halt.
if [ -d /sys/firmware/acpi ]; then poweroff -f; fi
reboot -f
echo b >/proc/sysrq-trigger
