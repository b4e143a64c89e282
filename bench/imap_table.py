#!/usr/bin/env python3
"""Formats bench/imap.sh's RESULT lines as the README's tables.

    python3 bench/imap_table.py RESULTS

Each input line is "LOAD SERVER RESULT mode value=V unit=U wall=S ops=N
bytes=B srv_cpu=S gen_cpu=S errors=E [more key=value]" (bench-imap's
output behind the load's and the server's names). Prints the figures
(Sealmail, Dovecot, Dovecot+mail-crypt and the two ratios Sealmail/other),
the memory per IDLE connection (Sealmail, Dovecot, Dovecot with IDLE
hibernation: that figure is marked INVALID unless imap-hibernate held at
least 99% of the connections, from the "hibernated=" count imap.sh reads in
Dovecot's log), the server CPU seconds per 1,000 operations, and the
generator's CPU beside the server's for every run. Tables with no figure
are left out.
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


IDLE_SERVERS = ("sealmail", "dovecot", "dovecot-hib")
HIB_MIN = 0.99      # below this share of hibernated connections: invalid


def hib_state(res, ld):
    """(valid, text) for Dovecot+hibernation's run ld: did imap-hibernate
    hold the connections (its log, see imap.sh's idle_closes)?"""
    kv = res.get((ld, "dovecot-hib"))
    if not kv:
        return False, "not run"
    if "hibernated" not in kv:
        return False, "no hibernation count (old harness)"
    conns, hib = int(kv["conns"]), int(kv["hibernated"])
    return hib >= HIB_MIN * conns, f"{hib} of {conns} hibernated"


def print_idle(res, idle):
    print("\n| PSS per IDLE connection, KiB (all server processes / conns) | Sealmail "
          "| Dovecot | Dovecot + hibernation | Sealmail/Dovecot | Sealmail/Dovecot+hib |")
    print("|---|---:|---:|---:|---:|---:|")
    for ld in idle:
        ok, _ = hib_state(res, ld)
        label = ld.replace("idle_", "") + (" (TLS)" if ld.endswith("_tls") else " (plain)")
        label = label.replace("_tls", "")
        for key, suffix in (("value", " connections"), ("per_conn_growth_kib", ", growth only")):
            v = [get(res, ld, s, key) for s in IDLE_SERVERS]
            hib = fmt(v[2]) if ok or v[2] is None else f"{fmt(v[2])} INVALID"
            print(f"| {label}{suffix} | {fmt(v[0])} | {fmt(v[1])} | {hib} "
                  f"| {ratio(v[0], v[1])} | {ratio(v[0], v[2]) if ok else '-'} |")
    print("\n| Dovecot + hibernation: check | connections hibernated (imap-hibernate's log) "
          "| server processes at measurement | inotify-limit warnings | figure |")
    print("|---|---:|---:|---:|---|")
    for ld in idle:
        kv = res.get((ld, "dovecot-hib"))
        if not kv:
            continue
        ok, text = hib_state(res, ld)
        print(f"| {ld.replace('idle_', '')} | {text} | {kv.get('procs', '-')} "
              f"| {kv.get('inotify_warnings', '-')} | {'valid' if ok else 'INVALID'} |")


def table(res, title, rows):
    """A Sealmail / Dovecot / Dovecot+mail-crypt table of the rows that have
    a figure; nothing when none has."""
    rows = [(name, v) for name, v in rows if any(x is not None for x in v)]
    if not rows:
        return
    print(f"\n| {title} | Sealmail | Dovecot | Dovecot+mail-crypt | Sealmail/Dovecot "
          "| Sealmail/Dovecot+mail-crypt |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, v in rows:
        print(f"| {name} | {fmt(v[0])} | {fmt(v[1])} | {fmt(v[2])} | {ratio(v[0], v[1])} "
              f"| {ratio(v[0], v[2])} |")


def main():
    res = load(sys.argv[1])
    n = int(get(res, "select_10k", "sealmail", "exists") or
            get(res, "select_10k", "dovecot", "exists") or 0)
    rows = [
        ("APPEND msgs/s, 1 client", "append_1", "value"),
        ("APPEND msgs/s, 10 clients, one mailbox", "append_10", "value"),
        ("APPEND msgs/s, 20 clients, 20 mailboxes", "append_multi", "value"),
        (f"SELECT of {n} msgs, ms (median of 5; lower is better)", "select_10k", "value"),
        (f"first SELECT of {n} msgs, ms (lower is better)", "select_10k", "first_ms"),
        ("SELECT of the big mailbox, ms (median of 5; lower is better)", "select_big", "value"),
        ("first SELECT of the big mailbox, ms (lower is better)", "select_big", "first_ms"),
        ("UID FETCH 1:* (FLAGS BODY.PEEK[HEADER]), msgs/s", "fetch_headers", "value"),
        ("UID FETCH 1:* (FLAGS BODY.PEEK[HEADER]), s (median; lower is better)",
         "fetch_headers", "median_s"),
        ("UID FETCH 1:* BODY.PEEK[], MB/s", "fetch_bodies", "value"),
        ("UID FETCH 1:* BODY.PEEK[] over TLS, MB/s", "fetch_bodies_tls", "value"),
        ("SEARCH FROM \"Kowalski\", ms (median; lower is better)", "search_header", "value"),
        ("first SEARCH FROM, ms (lower is better)", "search_header", "first_ms"),
        ("SEARCH BODY \"zeppelin\", ms (median; lower is better)", "search_body", "value"),
        ("first SEARCH BODY, ms (lower is better)", "search_body", "first_ms"),
        ("mixed workload, ops/s", "mixed", "value"),
        ("first login of a mailbox, logins/s", "login_first", "value"),
        ("repeated login of an open mailbox, logins/s", "login_repeat", "value"),
    ]
    table(res, "figure", [(name, [get(res, ld, s, key) for s in SERVERS])
                          for name, ld, key in rows])
    for ld, what in (("search_header", "header"), ("search_body", "body")):
        hits = [res.get((ld, s), {}).get("hits", "-") for s in SERVERS]
        if hits != ["-"] * len(SERVERS):
            print(f"\nSEARCH {what} hits: " +
                  ", ".join(f"{s} {h}" for s, h in zip(SERVERS, hits)))

    idle = sorted({k[0] for k in res if k[0].startswith("idle_")},
                  key=lambda x: (int(x.split("_")[1]), x))
    if idle:
        print_idle(res, idle)

    table(res, "server CPU s per 1,000 operations (lower is better)",
          [(name, [cpu_per_1000(res, ld, s) for s in SERVERS]) for name, ld in (
              ("APPEND, 1 client (per message)", "append_1"),
              ("APPEND, 10 clients (per message)", "append_10"),
              ("APPEND, 20 clients, 20 mailboxes (per message)", "append_multi"),
              ("header FETCH (per message)", "fetch_headers"),
              ("body FETCH (per message)", "fetch_bodies"),
              ("body FETCH over TLS (per message)", "fetch_bodies_tls"),
              ("mixed workload (per command)", "mixed"),
              ("first login", "login_first"), ("repeated login", "login_repeat"))])
    print("\n| run | server | wall s | server CPU % of a core | generator CPU % of a core "
          "| errors |")
    print("|---|---|---:|---:|---:|---:|")
    for (ld, s), kv in res.items():
        wall = float(kv["wall"]) or 1e-9
        print(f"| {ld} | {s} | {wall:.2f} | {100 * float(kv['srv_cpu']) / wall:.0f} "
              f"| {100 * float(kv['gen_cpu']) / wall:.0f} | {kv.get('errors', '0')} |")


if __name__ == "__main__":
    main()
