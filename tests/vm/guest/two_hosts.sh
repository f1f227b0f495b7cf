# Two hosts on one device: this VM and another map the same 16 MiB host file as an
# ivshmem-plain BAR (resource2). tm.role=a holds a cxl tier on its first 8 MiB; tm.role=b sees
# A's bytes, then opens the same tier while A holds it.
. /tm/lib.sh
dev=$(pci_device 0x050000)
bar="$dev/resource2"
echo "TM-CHECK shared_bar_bytes=$(stat -c %s "$bar")"
tiers="dram;cxl:path=$bar,size=8M"
case $TM_role in
    a) run_tm host_a "$tiers" host_a "$bar" ;;
    b) tm_vm wait_a "$bar"
       # Right after a beat of A's: B's open is judged against a fresh lease, not against
       # how long A's VM waited for a CPU since its last beat.
       tm_vm wait_beat "$bar"
       run_tm host_b "$tiers" host_b "$bar" ;;
    *) echo "TM-ERROR tm.role= a or b"; exit 1 ;;
esac
