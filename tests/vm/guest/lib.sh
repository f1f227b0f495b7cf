# Shared by the guest scripts (sourced). Every line the host test reads starts with "TM-".

# The sysfs directory of the first PCI device of class $1 (e.g. 0x010802, an NVMe controller).
pci_device() {
    for d in /sys/bus/pci/devices/*; do
        if [ "$(cat "$d/class")" = "$1" ]; then echo "$d"; return 0; fi
    done
    echo "TM-ERROR no PCI device of class $1"; return 1
}

# run_tm NAME TIERS ARGS...: runs tm_vm with TIERMALLOC_TIERS=TIERS, echoing its output and
# each tiermalloc line it printed on stderr as "TM-LINE NAME: ...". Fails when tm_vm fails.
run_tm() {
    name=$1; tiers=$2; shift 2
    echo "TM-RUN $name: TIERMALLOC_TIERS=\"$tiers\" tm_vm $*"
    status=0
    TIERMALLOC_TIERS="$tiers" tm_vm "$@" 2>/tmp/stderr || status=$?
    sed "s/^/TM-LINE $name: /" /tmp/stderr
    [ $status -eq 0 ] || { echo "TM-ERROR $name: tm_vm exited $status"; return 1; }
}

# expect_refused NAME KIND TIERS TEXT: the tier is refused with exactly one tiermalloc line
# containing TEXT, and the program runs on.
expect_refused() {
    name=$1; kind=$2; tiers=$3; text=$4
    run_tm "$name" "$tiers" skipped "$kind"
    lines=$(grep -c '^tiermalloc:' /tmp/stderr)
    [ "$lines" = 1 ] || { echo "TM-ERROR $name: $lines tiermalloc lines, want 1"; return 1; }
    grep -q -- "$text" /tmp/stderr || { echo "TM-ERROR $name: no '$text' in the line"; return 1; }
    echo "TM-REFUSED $name"
}

# register DEVICE_DIR OFFSET: a 32-bit NVMe controller register, read through /dev/mem at BAR 0
# (iomem=relaxed lets us).
register() {
    bar0=$(head -1 "$1/resource" | cut -d' ' -f1)
    devmem $((bar0 + $2)) 32
}

# cxl_devdax: the CXL type-3 device's persistent memory as /dev/dax0.0 (2 MiB alignment).
# After a restart the region is created again and the namespace, which the labels do not bring
# back, is made again with the same geometry: its bytes are those of the first boot.
cxl_devdax() {
    cxl create-region -m -d decoder0.0 -t pmem -w 1 mem0 >/tmp/cxl.out 2>&1 ||
        { cat /tmp/cxl.out; echo "TM-ERROR cxl create-region failed"; return 1; }
    if [ "${1:-}" = again ]; then
        ndctl disable-region region0 >/dev/null 2>&1
        ndctl zero-labels nmem0 >/dev/null 2>&1
        ndctl init-labels -f nmem0 >/dev/null 2>&1
        ndctl enable-region region0 >/dev/null 2>&1
    fi
    ndctl create-namespace -r region0 -m devdax -a 2M -f >/tmp/ndctl.out 2>&1 ||
        { cat /tmp/ndctl.out; echo "TM-ERROR ndctl create-namespace failed"; return 1; }
    [ -c /dev/dax0.0 ] || mdev -s
    [ -c /dev/dax0.0 ] || { echo "TM-ERROR no /dev/dax0.0"; return 1; }
    echo "TM-CHECK dax_bytes=$(cat /sys/bus/dax/devices/dax0.0/size)" \
        "dax_align=$(cat /sys/bus/dax/devices/dax0.0/align)"
}

# device_touches NAME TIERS KIND PAIRS: benches/device/touches.c under lackey on the tier, in
# its steady pattern (a live block of every size, so each pair takes a slab slot), its device
# bytes counted by tm_vm touches (TM-CHECK touch_loads/stores/store_ops, pairs=).
device_touches() {
    if [ ! -x /usr/bin/valgrind.bin ]; then echo "TM-CHECK touches=no-valgrind"; return 0; fi
    echo "TM-RUN $1: valgrind --tool=lackey --trace-mem=yes touches $3 $4"
    VALGRIND_LIB=/usr/libexec/valgrind TIERMALLOC_TIERS="$2" valgrind.bin --tool=lackey \
        --trace-mem=yes --log-file=/tmp/lackey.log /tm/touches "$3" "$4" 1 >/tmp/touches.out
    range=$(grep '^range' /tmp/touches.out | cut -d' ' -f2,3)
    marker=$(grep '^marker' /tmp/touches.out | cut -d' ' -f2)
    echo "TM-CHECK pairs=$4 lackey_lines=$(wc -l < /tmp/lackey.log)"
    tm_vm touches /tmp/lackey.log $range "$marker"
    rm -f /tmp/lackey.log
}

# run_persist NAME TIERS MODE: c-tests/persist.c in MODE (write, verify) on TIERS; prints
# "TM-CHECK NAME=ok" when all its checks pass.
run_persist() {
    echo "TM-RUN $1: TIERMALLOC_TIERS=\"$2\" persist $3"
    status=0
    TIERMALLOC_TIERS="$2" /tm/persist "$3" >/tmp/persist.out 2>&1 || status=$?
    sed "s/^/TM-LINE $1: /" /tmp/persist.out
    [ $status -eq 0 ] || { echo "TM-ERROR $1: persist $3 exited $status"; return 1; }
    echo "TM-CHECK $1=ok"
}
