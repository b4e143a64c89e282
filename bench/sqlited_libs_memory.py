#!/usr/bin/env python3
"""sqlited's memory at rest and what its shared libraries cost (not a test).

    python3 bench/sqlited_libs_memory.py BIN_DIR_A [BIN_DIR_B ...] [--runs N]

For each run and each BIN_DIR in turn (alternating, so that the shared
machine's drift hits every build alike), starts an installation the way the
integration tests do (tests/integration/imap_server.py: `sealmail init`,
redis-server, sqlited, one sealmail-imapd; default configuration: embedded
directory, no backup schedule), waits SETTLE seconds, then reads sqlited's
/proc/PID/smaps_rollup (Rss, Pss, Private = Private_Clean + Private_Dirty)
and /proc/PID/smaps per mapped file: the shared objects' Pss and Private,
and how many there are. Prints one line per run and the medians, then the
ten costliest libraries of the last run of each build.
"""
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "integration"))
import imap_server  # noqa: E402

SETTLE = float(os.environ.get("SETTLE", "3"))


def rollup(pid):
    out = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 3 and parts[-1] == "kB":
                out[parts[0].rstrip(":")] = int(parts[1])
    return {"rss": out["Rss"], "pss": out["Pss"],
            "private": out["Private_Clean"] + out["Private_Dirty"]}


def per_library(pid):
    """{basename: [pss_kB, private_kB]} for every mapped .so."""
    libs, cur = {}, None
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            parts = line.split()
            if not parts:
                continue
            if "-" in parts[0] and len(parts) >= 5 and not parts[0].endswith(":"):
                path = parts[5] if len(parts) >= 6 else ""
                cur = os.path.basename(path) if ".so" in path else None
                if cur is not None:
                    libs.setdefault(cur, [0, 0])
            elif cur is not None and parts[0] == "Pss:":
                libs[cur][0] += int(parts[1])
            elif cur is not None and parts[0] in ("Private_Clean:", "Private_Dirty:"):
                libs[cur][1] += int(parts[1])
    return libs


def measure(bin_dir):
    imap_server.BIN_DIR = bin_dir
    imap_server.SEALMAIL = os.path.join(bin_dir, "sealmail")
    imap_server.SQLITED = os.path.join(bin_dir, "sqlited")
    imap_server.IMAPD = os.path.join(bin_dir, "sealmail-imapd")
    with imap_server.ImapServer() as srv:
        time.sleep(SETTLE)
        pid = srv.sqlited.pid
        r = rollup(pid)
        libs = per_library(pid)
    r["nlibs"] = len(libs)
    r["libs_pss"] = sum(v[0] for v in libs.values())
    r["libs_private"] = sum(v[1] for v in libs.values())
    return r, libs


def main():
    args = sys.argv[1:]
    runs = 3
    if "--runs" in args:
        i = args.index("--runs")
        runs = int(args[i + 1])
        del args[i:i + 2]
    if not args:
        sys.exit(__doc__)
    keys = ("rss", "pss", "private", "nlibs", "libs_pss", "libs_private")
    results = {d: [] for d in args}
    last = {}
    for n in range(runs):
        for d in args:
            r, libs = measure(os.path.abspath(d))
            results[d].append(r)
            last[d] = libs
            print(f"run {n} {d}: " + " ".join(f"{k}={r[k]}" for k in keys), flush=True)
    print("\nmedians (kB; nlibs = mapped shared objects)")
    for d in args:
        print(f"{d}: " + " ".join(
            f"{k}={statistics.median(x[k] for x in results[d]):g}" for k in keys))
    for d in args:
        print(f"\n{d}: costliest libraries (Pss kB, Private kB), last run")
        top = sorted(last[d].items(), key=lambda kv: -kv[1][1])[:10]
        for name, (pss, priv) in top:
            print(f"  {name:32} {pss:6} {priv:6}")


if __name__ == "__main__":
    main()
