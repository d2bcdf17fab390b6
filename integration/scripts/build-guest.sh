#!/usr/bin/env bash
# Builds the integration tests' guest: OUTDIR/vmlinuz (Debian's kernel, copied), OUTDIR/vmlinux
# (the same kernel decompressed: an ELF with a PVH entry note, which qemu -kernel boots directly,
# skipping the firmware's bzImage path and the in-guest xz decompression, ~3 s under TCG), and
# OUTDIR/initrd.img, a gzip'd newc initramfs holding Debian's static busybox (with a symlink per
# applet) and guest-init.sh as /init, which prints `KNM-GUEST-BOOTED` on the console and powers off.
#
#   build-guest.sh OUTDIR [VMLINUZ BUSYBOX]
#
# VMLINUZ and BUSYBOX default to the ones fetch-deps.sh unpacked into ${KNM_CACHE:-<repo>/.cache/e2e}.
# Reproducible (sorted entries, mtime 0, owner 0:0, inode numbers in order, gzip -n): same inputs,
# same bytes. Does nothing when the inputs (these two scripts, the kernel, busybox) are unchanged.
# The cpio archive is written by python3 (no cpio tool needed, and no mknod: /dev/console and
# /dev/null are entries in the archive, not nodes made on the host).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
out=${1:?usage: build-guest.sh OUTDIR [VMLINUZ BUSYBOX]}
if (($# >= 3)); then
  kernel=$2 busybox=$3
else
  cache=${KNM_CACHE:-$(cd "$here/../.." && pwd)/.cache/e2e}
  [[ -s $cache/stamps/kernel && -s $cache/stamps/busybox ]] ||
    { echo "build-guest: no kernel/busybox in $cache: run fetch-deps.sh" >&2; exit 1; }
  kernel=$(compgen -G "$(cat "$cache/stamps/kernel")/boot/vmlinuz-*" | head -n1)
  busybox=$(cat "$cache/stamps/busybox")/bin/busybox
fi
init=$here/guest-init.sh
[[ -f $kernel ]] || { echo "build-guest: no kernel $kernel" >&2; exit 1; }
[[ -x $busybox ]] || { echo "build-guest: no busybox $busybox" >&2; exit 1; }

key=$(sha256sum "${BASH_SOURCE[0]}" "$init" "$kernel" "$busybox" | cut -d' ' -f1 | sha256sum | cut -d' ' -f1)
if [[ -f $out/vmlinuz && -f $out/vmlinux && -f $out/initrd.img && $(cat "$out/.key" 2>/dev/null) == "$key" ]]; then
  exit 0
fi

mkdir -p "$out"
rm -f "$out/.key"
# Applets as "dir/name" paths (bin/sh, sbin/poweroff, usr/bin/...).
mapfile -t applets < <("$busybox" --list-full)
python3 - "$out/initrd.cpio" "$busybox" "$init" "${applets[@]}" <<'PY'
import sys

out, busybox, init, *applets = sys.argv[1:]

S_IFDIR, S_IFREG, S_IFLNK, S_IFCHR = 0o040000, 0o100000, 0o120000, 0o020000
entries = {}  # name -> (mode, data, rdev major, rdev minor)
def d(name, perm=0o755):
    entries[name] = (S_IFDIR | perm, b"", 0, 0)
def f(name, path, perm=0o755):
    with open(path, "rb") as fh:
        entries[name] = (S_IFREG | perm, fh.read(), 0, 0)
def c(name, major, minor, perm):
    entries[name] = (S_IFCHR | perm, b"", major, minor)

for name in ("bin", "sbin", "usr", "usr/bin", "usr/sbin", "dev", "proc", "sys", "run", "etc"):
    d(name)
d("root", 0o700)
d("tmp", 0o1777)
c("dev/console", 5, 1, 0o600)
c("dev/null", 1, 3, 0o666)
f("bin/busybox", busybox)
f("init", init)
for a in applets:
    if a != "bin/busybox":
        entries[a] = (S_IFLNK | 0o777, b"/bin/busybox", 0, 0)

def pad(n):
    return b"\0" * (-n % 4)

with open(out, "wb") as fh:
    ino = 0
    for name in sorted(entries) + ["TRAILER!!!"]:
        mode, data, rmaj, rmin = entries.get(name, (0, b"", 0, 0))
        ino = ino + 1 if name != "TRAILER!!!" else 0
        nlink = 2 if mode & 0o170000 == S_IFDIR else 1
        bname = name.encode() + b"\0"
        fields = (ino, mode, 0, 0, nlink, 0, len(data), 0, 0, rmaj, rmin, len(bname), 0)
        hdr = b"070701" + b"".join(b"%08X" % v for v in fields)
        fh.write(hdr + bname + pad(len(hdr) + len(bname)))
        fh.write(data + pad(len(data)))
PY
gzip -n -9 -c "$out/initrd.cpio" >"$out/initrd.img.tmp"
rm -f "$out/initrd.cpio"
mv "$out/initrd.img.tmp" "$out/initrd.img"
cp "$kernel" "$out/vmlinuz.tmp"
mv "$out/vmlinuz.tmp" "$out/vmlinuz"

# vmlinux: the payload of the bzImage (xz for Debian's amd64 kernels; gzip also handled), which is
# the ELF kernel itself. Refuse it unless it carries XEN_ELFNOTE_PHYS32_ENTRY (18), the PVH entry.
python3 - "$kernel" "$out/vmlinux.tmp" <<'PY'
import lzma, struct, sys, zlib

src, dst = sys.argv[1:3]
data = open(src, "rb").read()
elf = None
for magic, name in ((b"\xfd7zXZ\x00", "xz"), (b"\x1f\x8b\x08", "gzip")):
    at = data.find(magic)
    while at >= 0 and elf is None:
        try:
            if name == "xz":
                out = lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(data[at:])
            else:
                out = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(data[at:])
            if out[:4] == b"\x7fELF":
                elf = out
        except (lzma.LZMAError, zlib.error):
            pass
        at = data.find(magic, at + 1)
if elf is None:
    sys.exit(f"build-guest: no xz or gzip ELF payload in {src}")
# Walk the PT_NOTE segments for a "Xen" note of type 18.
phoff, = struct.unpack_from("<Q", elf, 0x20)
phentsize, phnum = struct.unpack_from("<HH", elf, 0x36)
pvh = False
for i in range(phnum):
    p_type, _, p_offset, _, _, p_filesz = struct.unpack_from("<IIQQQQ", elf, phoff + i * phentsize)
    off, end = p_offset, p_offset + p_filesz
    while p_type == 4 and off + 12 <= end:
        namesz, descsz, ntype = struct.unpack_from("<III", elf, off)
        name = elf[off + 12:off + 12 + namesz].rstrip(b"\0")
        pvh |= name == b"Xen" and ntype == 18
        off += 12 + (namesz + 3) // 4 * 4 + (descsz + 3) // 4 * 4
if not pvh:
    sys.exit(f"build-guest: the kernel in {src} has no PVH entry note (CONFIG_PVH)")
open(dst, "wb").write(elf)
PY
mv "$out/vmlinux.tmp" "$out/vmlinux"
echo "$key" >"$out/.key"
echo "build-guest: $out: vmlinuz ($(basename "$kernel")), vmlinux, initrd.img ($(stat -c %s "$out/initrd.img") B)" >&2
