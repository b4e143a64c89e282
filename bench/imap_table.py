#!/usr/bin/env python3
"""Formats bench/imap.sh's RESULT lines as the README's tables.

    python3 bench/imap_table.py RESULTS

Each input line is "LOAD SERVER RESULT mode value=V unit=U wall=S ops=N
bytes=B srv_cpu=S gen_cpu=S errors=E [more key=value]" (bench-imap's
output behind the load's and the server's names). Prints the figures
(Sealmail, Dovecot, Dovecot+mail-crypt and the two ratios Sealmail/other),
the memory per IDLE connection, the server CPU seconds per 1,000
operations, and the generator's CPU beside the server's for every run.
"""
import sys

SERVERS = ("sealmail", "dovecot", "dovecot-crypt")


def load(path):
    res = {}
    for line in open(path):
        parts = line.split()
        if len(parts) < 4 or parts[2] != "RESULT":
            continue
        kv = dict(p.split("=", 1) for p in parts[4:] if "=" in p)
        res[(parts[0], parts[1])] = kv
    return res


def fmt(v):
    if v is None:
        return "-"
    return f"{v:.0f}" if abs(v) >= 100 else f"{v:.2f}" if abs(v) >= 1 else f"{v:.3f}"


def ratio(a, b):
    return f"{a / b:.2f}" if a is not None and b not in (None, 0) else "-"


def get(res, load_name, server, key="value"):
    kv = res.get((load_name, server))
    return float(kv[key]) if kv and key in kv else None


def cpu_per_1000(res, load_name, server):
    kv = res.get((load_name, server))
    if not kv:
        return None
    ops = float(kv["ops"])
    if "fetched" in kv:             # a FETCH run: per 1,000 messages fetched
        ops *= float(kv["fetched"])
    return float(kv["srv_cpu"]) / ops * 1000 if ops else None


def main():
    res = load(sys.argv[1])
    n = int(get(res, "select_10k", "sealmail", "exists") or
            get(res, "select_10k", "dovecot", "exists") or 0)
    rows = [
        ("APPEND msgs/s, 1 client", "append_1", "value"),
        ("APPEND msgs/s, 10 clients, one mailbox", "append_10", "value"),
        ("APPEND msgs/s, 20 clients, 20 mailboxes", "fill_mix", "value"),
        (f"SELECT of {n} msgs, ms (median of 5; lower is better)", "select_10k", "value"),
        (f"first SELECT of {n} msgs, ms (lower is better)", "select_10k", "first_ms"),
        ("SELECT of the big mailbox, ms (median of 5; lower is better)", "select_big", "value"),
        ("first SELECT of the big mailbox, ms (lower is better)", "select_big", "first_ms"),
        ("UID FETCH 1:* (FLAGS BODY.PEEK[HEADER]), msgs/s", "fetch_headers", "value"),
        ("UID FETCH 1:* (FLAGS BODY.PEEK[HEADER]), s (median; lower is better)",
         "fetch_headers", "median_s"),
        ("UID FETCH 1:* BODY.PEEK[], MB/s", "fetch_bodies", "value"),
        ("SEARCH FROM \"Kowalski\", ms (median; lower is better)", "search_header", "value"),
        ("first SEARCH FROM, ms (lower is better)", "search_header", "first_ms"),
        ("SEARCH BODY \"zeppelin\", ms (median; lower is better)", "search_body", "value"),
        ("first SEARCH BODY, ms (lower is better)", "search_body", "first_ms"),
        ("mixed workload, ops/s", "mixed", "value"),
        ("first login of a mailbox, logins/s", "login_first", "value"),
        ("repeated login of an open mailbox, logins/s", "login_repeat", "value"),
    ]
    print("| figure | Sealmail | Dovecot | Dovecot+mail-crypt | Sealmail/Dovecot "
          "| Sealmail/Dovecot+mail-crypt |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, ld, key in rows:
        v = [get(res, ld, s, key) for s in SERVERS]
        if all(x is None for x in v):
            continue
        print(f"| {name} | {fmt(v[0])} | {fmt(v[1])} | {fmt(v[2])} | {ratio(v[0], v[1])} "
              f"| {ratio(v[0], v[2])} |")
    for ld, what in (("search_header", "header"), ("search_body", "body")):
        hits = [res.get((ld, s), {}).get("hits", "-") for s in SERVERS]
        print(f"\nSEARCH {what} hits: " + ", ".join(f"{s} {h}" for s, h in zip(SERVERS, hits)))

    idle = sorted({k[0] for k in res if k[0].startswith("idle_")},
                  key=lambda x: (int(x.split("_")[1]), x))
    if idle:
        print("\n| PSS per IDLE connection, KiB (all server processes / conns) | Sealmail "
              "| Dovecot | Dovecot + hibernation | Sealmail/Dovecot | Sealmail/Dovecot+hib |")
        print("|---|---:|---:|---:|---:|---:|")
        for ld in idle:
            v = [get(res, ld, s) for s in ("sealmail", "dovecot", "dovecot-hib")]
            g = [get(res, ld, s, "per_conn_growth_kib") for s in ("sealmail", "dovecot",
                                                                   "dovecot-hib")]
            label = ld.replace("idle_", "") + (" (TLS)" if ld.endswith("_tls") else " (plain)")
            label = label.replace("_tls", "")
            print(f"| {label} connections | {fmt(v[0])} | {fmt(v[1])} | {fmt(v[2])} "
                  f"| {ratio(v[0], v[1])} | {ratio(v[0], v[2])} |")
            print(f"| {label}, growth only | {fmt(g[0])} | {fmt(g[1])} | {fmt(g[2])} "
                  f"| {ratio(g[0], g[1])} | {ratio(g[0], g[2])} |")

    print("\n| server CPU s per 1,000 operations (lower is better) | Sealmail | Dovecot "
          "| Dovecot+mail-crypt | Sealmail/Dovecot | Sealmail/Dovecot+mail-crypt |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, ld in (("APPEND, 1 client (per message)", "append_1"),
                     ("APPEND, 10 clients (per message)", "append_10"),
                     ("APPEND, 20 clients, 20 mailboxes (per message)", "fill_mix"),
                     ("header FETCH (per message)", "fetch_headers"),
                     ("body FETCH (per message)", "fetch_bodies"),
                     ("mixed workload (per command)", "mixed"),
                     ("first login", "login_first"), ("repeated login", "login_repeat")):
        v = [cpu_per_1000(res, ld, s) for s in SERVERS]
        if all(x is None for x in v):
            continue
        print(f"| {name} | {fmt(v[0])} | {fmt(v[1])} | {fmt(v[2])} | {ratio(v[0], v[1])} "
              f"| {ratio(v[0], v[2])} |")

    print("\n| run | server | wall s | server CPU % of a core | generator CPU % of a core "
          "| errors |")
    print("|---|---|---:|---:|---:|---:|")
    for (ld, s), kv in res.items():
        wall = float(kv["wall"]) or 1e-9
        print(f"| {ld} | {s} | {wall:.2f} | {100 * float(kv['srv_cpu']) / wall:.0f} "
              f"| {100 * float(kv['gen_cpu']) / wall:.0f} | {kv.get('errors', '0')} |")


if __name__ == "__main__":
    main()
