#!/usr/bin/env python3
"""IMAP APPEND: server CPU per message, builds alternated on one installation.

    python3 bench/imap_append_cpu.py --bins DIR_A,DIR_B [--count 500]
        [--rounds 6] [--conns 1] [--users 1] [--separate]

A benchmark, not a test. Starts redis-server, sqlited and sealmail-imapd
(tests/integration/imap_server.py) once; each round restarts sqlited and
sealmail-imapd from one bin directory and appends --count msggen messages
to the same INBOX with bench-imap (from the first directory). The order
alternates A B, B A, ... so the mailbox's growth hits every build alike.
CPU = utime + stime from /proc of sqlited and of the imapd over the
append. With --users N (> 1) the messages go to N aliases
(bench01@example.org ...), connection i to alias i mod N + 1, each its own
SQLCipher database. With --separate each bin directory gets its own
installation (its databases made by its own sqlited, for an A/B of what
new stores look like), the rounds still alternating. Prints each round and the medians per directory. A bin directory
may hold wrapper scripts that exec the real binary (same pid) with a
different environment.
"""
import argparse
import contextlib
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


USERS_FORMAT = "bench%02d@example.org"


def use_bin_paths(bin_dir):
    imap_server.SQLITED = os.path.join(bin_dir, "sqlited")
    imap_server.IMAPD = os.path.join(bin_dir, "sealmail-imapd")
    imap_server.SEALMAIL = os.path.join(bin_dir, "sealmail")


def append_round(srv, bench_imap, count, first, conns, users):
    pids = [srv.sqlited.pid, srv.imapd_pid(0)]
    who = (["--user", ADDRESS] if users == 1 else
           ["--user", USERS_FORMAT, "--users", str(users)])
    # Log every alias in first: the first login after sqlited's restart
    # runs Argon2id, which is not APPEND's cost.
    w = subprocess.run([bench_imap, "login", "--port", str(srv.imap_port),
                        "--pass", PASSWORD, "--conns", str(users), "--count",
                        str(users)] + who, capture_output=True, text=True)
    if w.returncode != 0:
        raise RuntimeError("bench-imap login failed: " + w.stdout + w.stderr)
    before = [cpu_seconds(p) for p in pids]
    t0 = time.time()
    r = subprocess.run([bench_imap, "append", "--port", str(srv.imap_port),
                        "--pass", PASSWORD, "--conns", str(conns), "--count",
                        str(count), "--first", str(first)] + who,
                       capture_output=True, text=True)
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
    ap.add_argument("--users", type=int, default=1)
    ap.add_argument("--separate", action="store_true")
    args = ap.parse_args()
    bins = [os.path.abspath(b) for b in args.bins.split(",")]
    bench_imap = os.path.join(bins[0], "bench-imap")
    results = {b: [] for b in bins}
    first = {b: 0 for b in bins}
    with contextlib.ExitStack() as stack:
        # --separate: one installation per bin directory, its databases
        # made by its own sqlited (an A/B of the schema of new stores).
        # Otherwise one installation, each round restarting its servers.
        servers = {}
        for b in (bins if args.separate else bins[:1]):
            use_bin_paths(b)
            srv = stack.enter_context(imap_server.ImapServer())
            if args.users == 1:
                srv.add_alias(ADDRESS, PASSWORD)
            for i in range(1, args.users + 1 if args.users > 1 else 1):
                srv.add_alias(USERS_FORMAT % i, PASSWORD)
            servers[b] = srv
        for rnd in range(args.rounds):
            order = bins if rnd % 2 == 0 else list(reversed(bins))
            for b in order:
                srv = servers[b] if args.separate else servers[bins[0]]
                use_bins(srv, b)
                key = b if args.separate else bins[0]
                wall, sq, im = append_round(srv, bench_imap, args.count,
                                            first[key], args.conns, args.users)
                first[key] += args.count
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
