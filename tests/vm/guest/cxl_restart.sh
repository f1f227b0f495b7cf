# CXL type-3, second boot on the same memory file: region and namespace made again, the proof
# of the first boot is on /dev/dax0.0 and a persistent tier recovers it by its root; then the
# device is onlined as system RAM (NUMA node 1) and serves a numa=1 tier, every page of whose
# block move_pages finds on node 1.
. /tm/lib.sh
cxl_devdax again
tm_vm find /dev/dax0.0 1048576 after_restart
run_tm dax_root "dram;cxl:path=/dev/dax0.0,persist" root_verify cxl 1048576
daxctl reconfigure-device --mode=system-ram --force dax0.0 >/tmp/daxctl.out 2>&1 ||
    { cat /tmp/daxctl.out; echo "TM-ERROR daxctl reconfigure-device failed"; exit 1; }
echo "TM-CHECK node1_mem_kb=$(grep MemTotal /sys/devices/system/node/node1/meminfo |
    awk '{print $4}')"
run_tm numa "dram;cxl:numa=1,size=64M" numa 1 33554432
