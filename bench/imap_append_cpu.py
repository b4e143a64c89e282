#!/usr/bin/env python3
"""IMAP APPEND: server CPU per message, builds alternated on one installation.

    python3 bench/imap_append_cpu.py --bins DIR_A,DIR_B [--count 500]
        [--rounds 6] [--conns 1]

A benchmark, not a test. Starts redis-server, sqlited and sealmail-imapd
(tests/integration/imap_server.py) once; each round restarts sqlited and
sealmail-imapd from one bin directory and appends --count msggen messages
to the same INBOX with bench-imap (from the first directory). The order
alternates A B, B A, ... so the mailbox's growth hits every build alike.
CPU = utime + stime from /proc of sqlited and of the imapd over the
append. Prints each round and the medians per directory. A bin directory
may hold wrapper scripts that exec the real binary (same pid) with a
different environment.
"""
import argparse
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench"))
sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))

import imap_server  # noqa: E402
from imap_header_fetch import ADDRESS, PASSWORD, cpu_seconds, use_bins  # noqa: E402


def append_round(srv, bench_imap, count, first, conns):
    pids = [srv.sqlited.pid, srv.imapd_pid(0)]
    before = [cpu_seconds(p) for p in pids]
    t0 = time.time()
    r = subprocess.run([bench_imap, "append", "--port", str(srv.imap_port),
                        "--user", ADDRESS, "--pass", PASSWORD, "--conns",
                        str(conns), "--count", str(count), "--first",
                        str(first)], capture_output=True, text=True)
    wall = time.time() - t0
    if r.returncode != 0:
        raise RuntimeError("bench-imap append failed: " + r.stdout + r.stderr)
    after = [cpu_seconds(p) for p in pids]
    return wall, after[0] - before[0], after[1] - before[1]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bins", required=True)
    ap.add_argument("--count", type=int, default=500)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--conns", type=int, default=1)
    args = ap.parse_args()
    bins = [os.path.abspath(b) for b in args.bins.split(",")]
    bench_imap = os.path.join(bins[0], "bench-imap")
    results = {b: [] for b in bins}
    first = 0
    with imap_server.ImapServer() as srv:
        srv.add_alias(ADDRESS, PASSWORD)
        for rnd in range(args.rounds):
            order = bins if rnd % 2 == 0 else list(reversed(bins))
            for b in order:
                use_bins(srv, b)
                wall, sq, im = append_round(srv, bench_imap, args.count, first,
                                            args.conns)
                first += args.count
                results[b].append((wall, sq, im))
                print(f"{b}: {args.count / wall:.0f} msgs/s, sqlited "
                      f"{sq * 1000 / args.count:.3f} ms/msg, imapd "
                      f"{im * 1000 / args.count:.3f} ms/msg", flush=True)
    print(f"\nmedians over {args.rounds} rounds of {args.count} messages, "
          f"{args.conns} connection(s):")
    for b, rs in results.items():
        wall = statistics.median(x[0] for x in rs)
        sq = statistics.median(x[1] for x in rs)
        im = statistics.median(x[2] for x in rs)
        print(f"  {b}: {args.count / wall:.0f} msgs/s, sqlited CPU "
              f"{sq * 1000 / args.count:.3f} ms/msg, imapd "
              f"{im * 1000 / args.count:.3f} ms/msg")


if __name__ == "__main__":
    main()
