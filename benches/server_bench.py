"""One run of a server benchmark for external.py: the Redis server under the allocator, driven
by its benchmark client.

The server runs under benches/tools/spawn (so its wall time, peak RSS and CPU time are measured
the way every other row's program is) with LD_PRELOAD set for it alone, listening on a Unix
socket in a private directory (no TCP port: other benchmarks on the machine cannot collide with
it). Once it answers PING, redis-benchmark runs against it without the preload (the client's
allocator is not under test), then the server is told SHUTDOWN NOSAVE and spawn's figures are
read. The run's output is the client's command line and output, from which external.py takes
the time (its redis_time).

Standard library only.
"""

import os
import signal
import socket
import subprocess
import time

import run  # benches/run.py

SOCKET = "redis.sock"


def command(sock_path, line, timeout=5.0):
    """Send one inline command to the server; its first reply line, or None if it cannot be
    reached."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.connect(sock_path)
            s.sendall(line.encode() + b"\r\n")
            return s.recv(256).decode(errors="replace").split("\r\n")[0]
    except OSError:
        return None


def run_once(spawn, server, client, client_args, lib, timeout, tmpdir):
    """Run the server under lib (None: glibc) and the client against it; a run.RunResult of
    the server's figures, whose out is the client's command line and output."""
    work = os.path.join(tmpdir, "server")
    os.makedirs(work, exist_ok=True)
    sock = os.path.join(work, SOCKET)
    res_file = os.path.join(work, "result")
    for f in (sock, res_file):
        if os.path.exists(f):
            os.unlink(f)
    env = dict(os.environ)
    env.pop("LD_PRELOAD", None)
    server_cmd = [server, "--port", "0", "--unixsocket", sock, "--save", "", "--appendonly",
                  "no", "--dir", work, "--daemonize", "no", "--loglevel", "warning"]
    err_path = os.path.join(work, "server.err")
    deadline = time.monotonic() + timeout
    with open(os.path.join(work, "server.out"), "w") as fo, open(err_path, "w") as fe:
        p = subprocess.Popen([spawn, res_file, lib or ""] + server_cmd, stdin=subprocess.DEVNULL,
                             stdout=fo, stderr=fe, env=env, start_new_session=True, cwd=work)

        def stop(why, out=""):
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
            return run.RunResult(False, why=why, out=out, err=open(err_path).read())

        while command(sock, "PING", timeout=1.0) != "+PONG":
            if p.poll() is not None:
                return run.RunResult(False, why="server exited with status %d before it "
                                     "answered" % p.returncode, err=open(err_path).read())
            if time.monotonic() > deadline:
                return stop("server did not answer PING within %ds" % timeout)
            time.sleep(0.05)
        client_cmd = [client, "-s", sock] + client_args
        try:
            c = subprocess.run(client_cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, env=env,
                               timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            return stop("client still running after %ds" % timeout)
        out = "+ %s\n%s" % (" ".join(client_cmd), c.stdout)
        if c.returncode != 0:
            return stop("client exit status %d" % c.returncode, out)
        command(sock, "SHUTDOWN NOSAVE")
        try:
            rc = p.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            return stop("server did not shut down", out)
    err = open(err_path).read()
    if rc != 0 or not os.path.exists(res_file):
        return run.RunResult(False, out=out, err=err, why="server exit status %d" % rc)
    if "cannot be preloaded" in err:
        return run.RunResult(False, out=out, err=err, why="LD_PRELOAD ignored by ld.so")
    wall_ns, rss, ut, st, _status = open(res_file).read().split()
    return run.RunResult(True, wall=int(wall_ns) / 1e9, rss_kib=int(rss), utime=int(ut) / 1e6,
                         stime=int(st) / 1e6, out=out, err=err)
