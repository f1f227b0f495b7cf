# A BAR under the bound nvme driver without iomem=relaxed: refused in one line naming the
# fixes; after unbinding the driver (the other fix) the same tier works.
. /tm/lib.sh
dev=$(pci_device 0x010802)
expect_refused cmb_bound cmb "dram;cmb:path=$dev/resource2" "iomem=relaxed"
expect_refused pmr_bound pmr "dram;pmr:path=$dev/resource4" "iomem=relaxed"
basename "$dev" > /sys/bus/pci/drivers/nvme/unbind
echo "TM-INFO unbound the nvme driver"
size=$(stat -c %s "$dev/resource2")
run_tm cmb_unbound "dram;cmb:path=$dev/resource2" contract cmb "$dev/resource2" "$size"
