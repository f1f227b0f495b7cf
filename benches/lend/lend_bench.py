# The pool tier's cost of receiving an extent (own share, borrowed) against a private
# file-backed cxl tier: BENCHMARKS.md, "Lending". Needs /tmp/lend-exp/lend_node built from
# tests/programs/lend_node.c and target/release/libtiermalloc.so (commands there).
import subprocess, os, sys, statistics
import pathlib
ROOT = pathlib.Path(__file__).resolve().parents[2]
L = str(ROOT / "target/release/libtiermalloc.so"); EXE = "/tmp/lend-exp/lend_node"
def node(env):
    e=dict(os.environ); e.update(env); e["LD_PRELOAD"]=L
    p=subprocess.Popen([EXE],stdin=subprocess.PIPE,stdout=subprocess.PIPE,env=e,text=True,bufsize=1)
    assert p.stdout.readline().startswith("ready"); return p
def ask(p,cmd,prefix):
    p.stdin.write(cmd+"\n"); p.stdin.flush()
    while True:
        l=p.stdout.readline()
        if l.startswith(prefix): return l.split()
res={"file":[], "own":[], "borrowed":[]}
for r in range(5):
    pool=f"/dev/shm/lend-bench-{os.getpid()}-{r}"; f=f"/dev/shm/lend-bench-file-{os.getpid()}-{r}"
    env={"TIERMALLOC_POOL":f"path={pool},size=600M,create",
         "TIERMALLOC_TIERS":"dram;cxl:pool,share=256M,size=525328K",
         "TIERMALLOC_PLACE":"cxl:min=512K"}
    b=node(env); a=node(env)
    w=ask(a,"take 256","took"); assert w[1]=="256", w; res["own"].append(int(w[5])/256)
    w=ask(a,"take 256","took"); assert w[1]=="256", w; res["borrowed"].append(int(w[5])/256)
    w=ask(a,"take 1","took"); assert w[1]=="0" and w[3]=="12", w
    for p in (a,b): p.stdin.write("exit\n"); p.stdin.flush(); p.wait()
    c=node({"TIERMALLOC_TIERS":f"dram;cxl:path={f},size=600M,create",
            "TIERMALLOC_PLACE":"cxl:min=512K"})
    w=ask(c,"take 512","took"); assert w[1]=="512", w; res["file"].append(int(w[5])/512)
    c.stdin.write("exit\n"); c.stdin.flush(); c.wait()
    os.remove(pool); os.remove(f)
for k,v in res.items():
    print(k, "ns per tm_malloc(768 KiB):", [round(x) for x in v],
          "median", round(statistics.median(v)))
m={k:statistics.median(v) for k,v in res.items()}
print("own/file %.2f borrowed/file %.2f borrowed/own %.2f"
      %(m["own"]/m["file"],m["borrowed"]/m["file"],m["borrowed"]/m["own"]))
