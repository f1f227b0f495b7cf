#!/usr/bin/env bash
# Builds what the VM tests boot: a Debian guest kernel and an initramfs holding busybox, the
# kernel modules for NVMe and CXL, the ndctl/daxctl/cxl/lspci tools with their libraries, the
# statically linked test programs, and the guest scripts of tests/vm/guest/.
#
#   prepare.sh CACHE_DIR PROGRAMS_DIR
#
# Writes CACHE_DIR/vmlinuz and CACHE_DIR/initramfs.cpio. The kernel package is downloaded once
# (`apt-get download` the package that linux-image-amd64 depends on, unpacked with dpkg-deb,
# never installed) and kept in ~/.cache/tiermalloc/vm-kernel (CACHE_DIR/kernel when that cannot
# be written); the initramfs is rebuilt on every call (a
# second or two), so changed programs and scripts always reach the guest.
# Exit status 3 with one line on stderr: something this machine lacks (the caller skips).
set -euo pipefail
mkdir -p "$1"
cache=$(cd "$1" && pwd)
programs=$2
here=$(cd "$(dirname "$0")" && pwd)

lacks() { echo "vm prepare: $*" >&2; exit 3; }
for tool in busybox cpio depmod modprobe ldd; do
    command -v "$tool" >/dev/null || lacks "no $tool on this machine"
done
busybox_path=$(command -v busybox)
if ldd "$busybox_path" >/dev/null 2>&1; then
    lacks "busybox is not static (install busybox-static)"
fi

# The modules the guests load (their dependencies come along).
modules="nvme cxl_acpi cxl_pci cxl_mem cxl_pmem libnvdimm nd_pmem dax device_dax dax_pmem kmem"
show_depends() { # KERNEL_DIR VERSION MODULE -> the .ko files to insmod, dependencies first
    modprobe -C /dev/null -d "$1" -S "$2" --show-depends "$3" |
        awk '$1 == "insmod" { print $2 }'
}

# --- the guest kernel (cached per user) ------------------------------------------------------
# Kept outside the target directory, so that a fresh clone or another CARGO_TARGET_DIR does not
# download and unpack the package again (a 100 MB download, 400 MB unpacked). Processes racing
# to fill it each unpack into their own directory; the first rename wins.
kernels=${XDG_CACHE_HOME:-${HOME:-/nonexistent}/.cache}/tiermalloc/vm-kernel
mkdir -p "$kernels" 2>/dev/null && [ -w "$kernels" ] || kernels="$cache"
kernel="$kernels/kernel"
if ! ls "$kernel"/boot/vmlinuz-* >/dev/null 2>&1; then
    command -v apt-get >/dev/null && command -v dpkg-deb >/dev/null ||
        lacks "no apt-get/dpkg-deb to fetch the Debian kernel package"
    package=$(apt-cache depends linux-image-amd64 2>/dev/null |
              awk '/Depends: linux-image-[0-9]/ { print $2; exit }')
    [ -n "$package" ] || lacks "apt knows no linux-image-amd64 (run apt-get update)"
    partial="$kernels/partial.$$"
    rm -rf "$partial"
    mkdir -p "$partial/download"
    (cd "$partial/download" && apt-get download "$package" >/dev/null 2>&1) ||
        lacks "apt-get download $package failed"
    dpkg-deb -x "$partial"/download/*.deb "$partial/kernel"
    version=$(ls "$partial/kernel/lib/modules")
    depmod -b "$partial/kernel" "$version"
    # Keep the kernel and the modules we load (about 10 MB of the package's 400).
    for module in $modules; do show_depends "$partial/kernel" "$version" "$module"; done |
        sort -u > "$partial/keep"
    [ -s "$partial/keep" ] ||
        { echo "vm prepare: no module found in the kernel package" >&2; exit 1; }
    find "$partial/kernel/lib/modules" -name '*.ko*' | grep -vxF -f "$partial/keep" |
        xargs rm -f
    rm -rf "$partial/kernel/usr"
    depmod -b "$partial/kernel" "$version"
    mv -T "$partial/kernel" "$kernel" 2>/dev/null || true
    rm -rf "$partial"
fi
version=$(ls "$kernel/lib/modules")
cp "$kernel/boot/vmlinuz-$version" "$cache/vmlinuz"

# --- the initramfs root ----------------------------------------------------------------------
root="$cache/root"
rm -rf "$root"
mkdir -p "$root"/{bin,sbin,etc,proc,sys,dev,tmp,run,mods,tm,usr/bin,usr/sbin}
cp "$busybox_path" "$root/bin/busybox"

# Each module named here gets /mods/NAME: the .ko files to insmod, dependencies first.
for module in $modules; do
    show_depends "$kernel" "$version" "$module" | while read -r path; do
        relative=${path#"$kernel"}
        mkdir -p "$root$(dirname "$relative")"
        cp -n "$path" "$root$relative"
        echo "$relative"
    done > "$root/mods/$module"
done

# Dynamic tools, with the libraries ldd names (the loader included).
copy_with_libraries() {
    local binary=$1
    cp "$binary" "$root/usr/bin/"
    ldd "$binary" | grep -o '/[^ ]*' | while read -r library; do
        mkdir -p "$root$(dirname "$library")"
        cp -L -n "$library" "$root$library"
    done
}
for tool in ndctl daxctl cxl lspci; do
    if command -v "$tool" >/dev/null; then copy_with_libraries "$(command -v "$tool")"; fi
done
# valgrind's lackey, to count device touches in the guest (optional: the test says if absent).
if [ -x /usr/bin/valgrind.bin ] && [ -x /usr/libexec/valgrind/lackey-amd64-linux ]; then
    copy_with_libraries /usr/bin/valgrind.bin
    mkdir -p "$root/usr/libexec/valgrind"
    for f in lackey-amd64-linux default.supp vgpreload_core-amd64-linux.so; do
        cp /usr/libexec/valgrind/$f "$root/usr/libexec/valgrind/"
    done
fi
[ -d /usr/share/misc ] && mkdir -p "$root/usr/share/misc" &&
    cp -L /usr/share/misc/pci.ids "$root/usr/share/misc/" 2>/dev/null || true

cp -r "$programs"/. "$root/tm/"
cp "$here"/guest/*.sh "$root/tm/"
cp "$here/init" "$root/init"
chmod +x "$root/init" "$root"/tm/*

(cd "$root" && find . | cpio -o -H newc --quiet) > "$cache/initramfs.cpio.partial"
mv "$cache/initramfs.cpio.partial" "$cache/initramfs.cpio"
rm -rf "$root"
