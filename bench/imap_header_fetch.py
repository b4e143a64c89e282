#!/usr/bin/env python3
"""IMAP header FETCH: `UID FETCH 1:* (FLAGS BODY.PEEK[HEADER])` over N messages.

    SEALMAIL_BIN_DIR=build-pf/bin python3 bench/imap_header_fetch.py \
        [--count 10000] [--repeat 5] [--bins DIR1,DIR2,...] [--tls] \
        [--items "BODY.PEEK[]"]

--items replaces the FETCH items (the body FETCH figure: --items
"BODY.PEEK[]"); the medians then also give MB/s of FETCH output and the
CPU milliseconds per message of both daemons together.

A benchmark, not a test. Starts redis-server, sqlited and sealmail-imapd
(tests/integration/imap_server.py) in a temporary directory, appends N
messages to INBOX with bench-imap (msggen.c: the realistic sizes of
bench-engine, the same bytes every run; bench-imap is taken from the first
bin directory), then times the FETCH over one connection, --repeat times.
With --bins, sqlited and sealmail-imapd are restarted from each directory
in turn on the same data (rounds alternate between them, so that load from
other work on the machine hits every build alike).

Per run: wall seconds from the command to its tagged OK (the client reads
with recv() and only looks for the tagged line, so it is not the limit:
its own CPU is printed too), and the CPU seconds (utime + stime from
/proc/PID/stat) that sealmail-imapd and sqlited used meanwhile. Prints the
median of each, per bin directory. Every process started is stopped.
"""
import argparse
import os
import socket
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))

import imap_server  # noqa: E402

ADDRESS = "bench@example.org"
PASSWORD = "bench imap header password"
TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK   # utime, stime


def use_bins(srv, bin_dir):
    """Restarts sqlited and the imapd from bin_dir (same data, same ports)."""
    imap_server.SQLITED = os.path.join(bin_dir, "sqlited")
    imap_server.IMAPD = os.path.join(bin_dir, "sealmail-imapd")
    for p, _, _ in srv.imapds:
        p.terminate()
        p.wait(20)
    srv.imapds = []
    srv.sqlited.terminate()
    srv.sqlited.wait(20)
    srv.start_sqlited()
    srv.imapd = srv._start_imapd(srv.conf, srv.imaps_port, srv.imap_port, "imapd")


def load(srv, bench_imap, count):
    t0 = time.time()
    r = subprocess.run([bench_imap, "append", "--port", str(srv.imap_port),
                        "--user", ADDRESS, "--pass", PASSWORD, "--conns", "4",
                        "--count", str(count)], capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError("bench-imap append failed: " + r.stdout + r.stderr)
    print(f"loaded {count} messages in {time.time() - t0:.1f} s: "
          f"{r.stdout.strip()}", flush=True)


def login(srv, tls):
    raw = srv.raw(tls=tls, timeout=600)
    lines = raw.cmd(b"l1", f'LOGIN "{ADDRESS}" "{PASSWORD}"'.encode())
    if not lines[-1].startswith(b"l1 OK"):
        raise RuntimeError("LOGIN failed: %r" % lines[-1])
    lines = raw.cmd(b"s1", b"SELECT INBOX")
    if not lines[-1].startswith(b"s1 OK"):
        raise RuntimeError("SELECT failed: %r" % lines[-1])
    exists = [ln for ln in lines if ln.endswith(b" EXISTS")]
    return raw, int(exists[0].split()[1])


def fetch_once(raw, tag, items):
    """Sends the FETCH, reads to the tagged OK: (wall s, bytes, responses)."""
    end = b"\r\n" + tag + b" OK"
    sock = raw.s
    t0 = time.perf_counter()
    sock.sendall(tag + b" UID FETCH 1:* (" + items + b")\r\n")
    data = bytearray(raw.buf)
    raw.buf = b""
    scanned = 0
    while True:
        idx = data.find(end, scanned)
        if idx >= 0 and data.find(b"\r\n", idx + 2) >= 0:
            break
        if idx < 0:
            scanned = max(0, len(data) - len(end))
        chunk = sock.recv(1 << 20)
        if not chunk:
            raise RuntimeError("connection closed")
        data += chunk
    wall = time.perf_counter() - t0
    return wall, len(data), data.count(b" FETCH (")


def run(srv, raw, tag, pids, items):
    before = [cpu_seconds(p) for p in pids]
    me = time.process_time()
    wall, nbytes, n = fetch_once(raw, tag, items)
    after = [cpu_seconds(p) for p in pids]
    return (wall, after[0] - before[0], after[1] - before[1],
            time.process_time() - me, nbytes, n)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--count", type=int, default=10000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--bins", default=imap_server.BIN_DIR)
    ap.add_argument("--tls", action="store_true")
    ap.add_argument("--items", default="FLAGS BODY.PEEK[HEADER]")
    args = ap.parse_args()
    items = args.items.encode()
    bins = [os.path.abspath(b) for b in args.bins.split(",")]
    results = {b: [] for b in bins}
    with imap_server.ImapServer() as srv:
        srv.add_alias(ADDRESS, PASSWORD)
        load(srv, os.path.join(bins[0], "bench-imap"), args.count)
        for rnd in range(args.repeat):
            for b in bins:
                if len(bins) > 1 or rnd == 0:
                    use_bins(srv, b)
                raw, exists = login(srv, args.tls)
                pids = [srv.imapd_pid(0), srv.sqlited.pid]
                run(srv, raw, b"w1", pids, items)  # warm-up: page cache, sessions
                r = run(srv, raw, b"f%d" % rnd, pids, items)
                raw.close()
                if r[5] != exists:
                    raise RuntimeError(f"{r[5]} FETCH responses for {exists} messages")
                results[b].append(r)
                print(f"{b}: wall {r[0]:.3f} s, "
                      f"imapd {r[1]:.2f} s, sqlited {r[2]:.2f} s CPU, client "
                      f"{r[3]:.2f} s, {r[4] / 1e6:.1f} MB, {r[5]} messages", flush=True)
    print("\nmedians over %d runs, %d messages, %s:" % (args.repeat, args.count,
                                                        "TLS" if args.tls else "plain"))
    for b, rs in results.items():
        med = [statistics.median(x[i] for x in rs) for i in range(5)]
        cpu = statistics.median(x[1] + x[2] for x in rs)
        print(f"  {b}: wall {med[0]:.3f} s ({args.count / med[0]:.0f} msgs/s, "
              f"{med[4] / med[0] / 1e6:.1f} MB/s), "
              f"imapd CPU {med[1]:.2f} s, sqlited CPU {med[2]:.2f} s "
              f"({cpu * 1000 / args.count:.3f} ms per message together), "
              f"client CPU {med[3]:.2f} s")


if __name__ == "__main__":
    main()
