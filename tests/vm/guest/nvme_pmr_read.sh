# NVMe PMR, second boot on the same PMR file: before any tier is opened the PMR is off and
# reads 0 (the proof is not visible); opening the pmr tier enables it, and the proof written by
# the first boot is there.
. /tm/lib.sh
dev=$(pci_device 0x010802)
echo "TM-CHECK pmrctl_at_boot=$(($(register $dev 0xe04)))"
tm_vm find "$dev/resource4" 1048576 while_off
run_tm pmr_read "dram;pmr:path=$dev/resource4" find "$dev/resource4" 1048576 after_enable pmr
