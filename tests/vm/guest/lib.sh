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
