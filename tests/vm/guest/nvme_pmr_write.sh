# NVMe PMR, first boot: Linux leaves the PMR off (PMRCTL = 0); opening a pmr tier enables it.
# The contract runs on resource4; then the persistent-tiers write cycle (c-tests/persist.c
# write: 200 blocks linked by offsets, the head named by the root "list", tm_persist) runs
# through resource4_wc and the VM powers off. The host finds the blocks in its PMR file, and
# nvme_pmr_read verifies them in a fresh VM.
. /tm/lib.sh
dev=$(pci_device 0x010802)
size=$(stat -c %s "$dev/resource4")
echo "TM-CHECK pmr_bar_bytes=$size pmrctl_at_boot=$(($(register $dev 0xe04)))"
run_tm pmr "dram;pmr:path=$dev/resource4" contract pmr "$dev/resource4" "$size"
echo "TM-CHECK pmrctl_after=$(($(register $dev 0xe04))) pmrsts_after=$(($(register $dev 0xe08)))"
run_persist persist_write "dram;pmr:path=$dev/resource4_wc" write
