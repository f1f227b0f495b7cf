# NVMe CMB through its BAR files, with the nvme driver bound and iomem=relaxed; and the BARs
# tiermalloc must refuse. VM: an nvme device with cmb_size_mb=64 and a PMR.
. /tm/lib.sh
dev=$(pci_device 0x010802)
echo "TM-INFO nvme at $dev; p2pmem: $(cat $dev/p2pmem/size 2>/dev/null) size," \
    "$(cat $dev/p2pmem/available 2>/dev/null) available"
size=$(stat -c %s "$dev/resource2")
echo "TM-CHECK cmb_bar_bytes=$size"
# CMBSZ reads 0 until CMBMSC.CRE is set: tiermalloc sets it.
echo "TM-CHECK cmbsz_before=$(($(register $dev 0x3c)))"
run_tm cmb "dram;cmb:path=$dev/resource2" contract cmb "$dev/resource2" "$size"
echo "TM-CHECK cmbsz_after=$(($(register $dev 0x3c))) cmbloc=$(($(register $dev 0x38)))"
run_tm cmb_wc "dram;cmb:path=$dev/resource2_wc" contract cmb "$dev/resource2_wc" "$size"
# malloc and free never read the CMB and write only headers (as tests/device_touches.rs).
device_touches cmb_touches "dram;cmb:path=$dev/resource2" 2 300
expect_refused register_bar cmb "dram;cmb:path=$dev/resource0" "register BAR (resource0)"
expect_refused pmr_on_cmb pmr "dram;pmr:path=$dev/resource2" "CMB, which is volatile"
