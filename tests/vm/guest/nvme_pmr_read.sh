# NVMe PMR, second boot on the same PMR file: before any tier is opened the PMR is off and
# reads 0 (no block header is visible); opening the pmr tier enables it and recovers the heap,
# and the persistent-tiers verify cycle (c-tests/persist.c verify: the root "list", 200 blocks
# by their offsets, contents, headers, the walk of every live block) passes.
. /tm/lib.sh
dev=$(pci_device 0x010802)
echo "TM-CHECK pmrctl_at_boot=$(($(register $dev 0xe04)))"
tm_vm headers "$dev/resource4" headers_while_off
run_persist persist_verify "dram;pmr:path=$dev/resource4" verify
tm_vm headers "$dev/resource4" headers_after_enable
