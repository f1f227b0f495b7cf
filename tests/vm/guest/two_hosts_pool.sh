# Two hosts on one device through the shared pool: this VM and another map the same 16 MiB
# host file as an ivshmem-plain BAR; the pool lives on its first 8 MiB (a mailbox on its last
# page orders the steps). tm.role=a publishes a space; tm.role=b opens it, reads it and
# republishes it changed; A reads B's space.
. /tm/lib.sh
dev=$(pci_device 0x050000)
bar="$dev/resource2"
pool="path=$bar,size=8M"
case $TM_role in
    a) echo "TM-RUN pool_a: TIERMALLOC_POOL=\"$pool\" tm_vm pool_a"
       TIERMALLOC_POOL="$pool" tm_vm pool_a "$bar" ;;
    b) tm_vm wait_a "$bar" >/dev/null
       echo "TM-RUN pool_b: TIERMALLOC_POOL=\"$pool\" tm_vm pool_b"
       TIERMALLOC_POOL="$pool" tm_vm pool_b "$bar" ;;
    *) echo "TM-ERROR tm.role= a or b"; exit 1 ;;
esac
