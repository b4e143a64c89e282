"""A burst of N distinct first logins (IMAP) right after a restart of sqlited.

Default Argon2id cost (64 MiB, 3 passes), default max_concurrent_unlocks (2),
the frontends' default RPC timeouts. Prints how many logins succeeded or got
NO [UNAVAILABLE], the burst's wall time and the login latencies. Binaries from
SEALMAIL_BIN_DIR (as the integration tests); N (default 40), ROUNDS (1).

    SEALMAIL_BIN_DIR=build/bin N=150 python3 bench/login_burst.py

bench/README.md, "First-login bursts", for figures. Creates N+1 aliases at
the full cost first (about 0.4-0.6 s each here).
"""
import os
import sys
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests",
                                "integration"))
from imap_server import ImapServer, wait_for  # noqa: E402

N = int(os.environ.get("N", "40"))


def login(srv, i, out):
    t0 = time.monotonic()
    c = srv.connect(tls=False, timeout=900)
    try:
        c.login(f"u{i}@b.example", f"pw number {i} x")
        r = "OK"
        c.logout()
    except c.error as e:
        r = "UNAVAILABLE" if "UNAVAILABLE" in str(e) else str(e)[:80]
        c.shutdown()
    out[i] = (r, time.monotonic() - t0)


srv = ImapServer(config={"argon2_memlimit_mib": "64", "argon2_opslimit": "3",
                         "imap_max_conns_per_ip": "1000"})
try:
    t0 = time.monotonic()
    for i in range(N + 1):
        srv.add_alias(f"u{i}@b.example", f"pw number {i} x")
    print("created", N + 1, "aliases in %.1f s" % (time.monotonic() - t0))
    for rnd in range(int(os.environ.get("ROUNDS", "1"))):
        srv.sqlited.terminate(); srv.sqlited.wait(30); srv.start_sqlited()
        def probe():
            out = {}
            login(srv, N, out)
            return out[N][0] == "OK"
        assert wait_for(probe, 60)
        out = {}
        gate = threading.Barrier(N)
        def run(i):
            gate.wait(); login(srv, i, out)
        ts = [threading.Thread(target=run, args=(i,)) for i in range(N)]
        cpu0 = os.times()
        t0 = time.monotonic()
        for t in ts: t.start()
        for t in ts: t.join()
        wall = time.monotonic() - t0
        res = [out[i][0] for i in range(N)]
        lat = sorted(out[i][1] for i in range(N))
        print(f"round {rnd}: {res.count('OK')} OK, {res.count('UNAVAILABLE')} UNAVAILABLE, "
              f"other {[r for r in res if r not in ('OK','UNAVAILABLE')][:3]}; burst {wall:.1f} s, "
              f"latency min {lat[0]:.2f} median {lat[N//2]:.2f} max {lat[-1]:.2f} s; "
              f"per Argon2id run ~{2*wall/N*1000:.0f} ms")
finally:
    srv.stop()
