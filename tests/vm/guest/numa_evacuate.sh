# Two NUMA nodes (QEMU -numa, 256 MiB each): a numa=0 tier is moved onto node 1 with
# tm_evacuate(TM_CXL, "numa=1") (move_pages) while two threads count in its blocks; move_pages'
# status query finds every page of every block on node 1 afterwards.
. /tm/lib.sh
echo "TM-CHECK nodes=$(ls -d /sys/devices/system/node/node[0-9]* | wc -l)"
run_tm numa_move "dram;cxl:numa=0,size=64M" numa_evacuate 0 1
