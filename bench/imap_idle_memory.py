#!/usr/bin/env python3
"""What an idle authenticated IMAP connection costs sealmail-imapd in memory.

    SEALMAIL_BIN_DIR=build/bin python3 bench/imap_idle_memory.py [N=1000]

Starts an installation with tests/integration/imap_server.py (redis-server,
sqlited, one sealmail-imapd), adds one alias with a few messages, then for the
plain port and for the implicit-TLS port: opens N connections, each LOGIN,
SELECT INBOX, IDLE (the state a mail client leaves a connection in), and reads
the imapd's VmRSS (/proc/<pid>/status) before and after. Prints the growth
per connection in KiB. The net layer allows 20 connections per client
address, so the connections come from 127.0.0.2, 127.0.0.3, ... (all of
127.0.0.0/8 is loopback on Linux). Figures go to bench/README.md ("IMAP").
"""
import os
import socket
import ssl
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests", "integration"))
from imap_server import ImapServer, rss_kib, unverified_context  # noqa: E402

USER, PASSWORD = "bench@example.org", "bench imap password"
PER_ADDRESS = 20


def read_until(sock, buf, tag):
    while tag not in buf:
        d = sock.recv(65536)
        if not d:
            raise EOFError("closed")
        buf += d
    return buf.split(tag, 1)[1]


def open_idle(port, i, tls, ctx):
    src = "127.0.%d.%d" % (2 + i // PER_ADDRESS // 250, 2 + (i // PER_ADDRESS) % 250)
    s = socket.socket()
    s.bind((src, 0))
    s.settimeout(30)
    s.connect(("127.0.0.1", port))
    if tls:
        s = ctx.wrap_socket(s)
    buf = read_until(s, b"", b"\r\n")
    s.sendall(b'l LOGIN "%s" "%s"\r\ns SELECT INBOX\r\ni IDLE\r\n' %
              (USER.encode(), PASSWORD.encode()))
    buf = read_until(s, buf, b"l OK")
    buf = read_until(s, buf, b"s OK")
    read_until(s, buf, b"+ idling\r\n")
    return s


def measure(srv, n, tls):
    pid = srv.imapd_pid()
    ctx = unverified_context()
    port = srv.imaps_port if tls else srv.imap_port
    warm = [open_idle(port, n + k, tls, ctx) for k in range(5)]
    time.sleep(0.5)
    before = rss_kib(pid)
    t0 = time.monotonic()
    conns = [open_idle(port, i, tls, ctx) for i in range(n)]
    took = time.monotonic() - t0
    time.sleep(1.0)
    after = rss_kib(pid)
    per = (after - before) / n
    print(f"{'TLS  ' if tls else 'plain'}: {n} idle connections: RSS {before} -> {after} KiB, "
          f"{per:.1f} KiB per connection (opened in {took:.1f} s)")
    for s in conns + warm:
        s.close()
    time.sleep(1.0)
    return per


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    with ImapServer() as srv:
        srv.add_alias(USER, PASSWORD)
        for i in range(5):
            srv.deliver(USER, b"Subject: m%d\r\n\r\nbody %d\r\n" % (i, i))
        measure(srv, n, tls=False)
        measure(srv, n, tls=True)


if __name__ == "__main__":
    main()
