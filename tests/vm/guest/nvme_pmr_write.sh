# NVMe PMR, first boot: Linux leaves the PMR off (PMRCTL = 0); opening a pmr tier enables it.
# The contract runs on resource4, then a 1 MiB proof is written through resource4_wc and the VM
# powers off; the host finds the proof in its PMR file, and nvme_pmr_read finds it again.
. /tm/lib.sh
dev=$(pci_device 0x010802)
size=$(stat -c %s "$dev/resource4")
echo "TM-CHECK pmr_bar_bytes=$size pmrctl_at_boot=$(($(register $dev 0xe04)))"
run_tm pmr "dram;pmr:path=$dev/resource4" contract pmr "$dev/resource4" "$size"
echo "TM-CHECK pmrctl_after=$(($(register $dev 0xe04))) pmrsts_after=$(($(register $dev 0xe08)))"
run_tm pmr_write "dram;pmr:path=$dev/resource4_wc" write pmr 1048576
