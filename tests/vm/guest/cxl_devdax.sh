# CXL type-3 persistent memory as device DAX: the contract on /dev/dax0.0 with its size from
# sysfs, a size= that breaks the 2 MiB alignment refused in one line, and a 1 MiB proof named by
# a root of a persistent tier, left for the next boot (cxl_restart).
. /tm/lib.sh
cxl_devdax
size=$(cat /sys/bus/dax/devices/dax0.0/size)
run_tm dax "dram;cxl:path=/dev/dax0.0" contract cxl /dev/dax0.0 "$size"
expect_refused dax_misaligned cxl "dram;cxl:path=/dev/dax0.0,size=3M" \
    "multiples of the device's alignment (2 MiB"
run_tm dax_write "dram;cxl:path=/dev/dax0.0,persist" root_write cxl 1048576
