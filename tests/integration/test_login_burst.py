"""Bursts of first logins (IMAP and POP3) against sqlited's Argon2id queue.

What happens after a restart of sqlited: every alias is locked again and
every client of every user logs in at once. Each first login runs Argon2id
in sqlited under max_concurrent_unlocks, the others wait in its FIFO. The
frontends give UNLOCK a login timeout of minutes (rpc_client.h), not the
default request timeout, so a waiting login is served; identical logins
(the same user and password from several clients) run Argon2id once; and
when the queue is full (max_waiting_unlocks) the answer is at once a clear
temporary error, NO [UNAVAILABLE] / -ERR [SYS/TEMP], counted by STATS
unlocks_refused (not a timeout).

Set-up: tests/integration/imap_server.py's ImapServer (redis-server,
sqlited, sealmail-imapd on free loopback ports) plus a sealmail-pop3d on the
same configuration, and two test hooks read only by the daemons:
SEALMAIL_SQLITED_TEST_UNLOCKS="1,W" (one Argon2id at a time, at most W
waiting) and SEALMAIL_RPC_TEST_TIMEOUT_MS (the frontends' default request
timeout, 30 s otherwise, here shorter than the queue's wait: with UNLOCK
under the default timeout, as before, 22 of the 26 logins of the burst
failed with NO [UNAVAILABLE] / -ERR [SYS/TEMP]). The aliases' Argon2id cost
is raised (64 MiB, 2 passes) so that one run takes a noticeable time; no
assertion depends on timing. Each test restarts
sqlited, so every alias starts locked.

Binaries from SEALMAIL_BIN_DIR (default build/bin); skipped when not built.
Passwords never appear in assertion messages.
"""
import os
import poplib
import socket
import struct
import sys
import threading
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import imap_server  # noqa: E402
import rpcclient  # noqa: E402
from imap_server import ImapServer, free_port, port_open, wait_for  # noqa: E402

POP3D = os.path.join(imap_server.BIN_DIR, "sealmail-pop3d")
DOMAIN = "burst.example"
N_IMAP = 10        # aliases logged in over IMAP, two clients each
N_POP = 6          # aliases logged in over POP3, one client each ([IN-USE])
# The default request timeout of the frontends during the tests (ms): far
# below the wait of the last login of a burst of 16 Argon2id runs in a row.
RPC_TIMEOUT_MS = 1000


def address(i):
    return f"user{i}@{DOMAIN}"


def password(i):
    return f"burst password {i} of the test"


class BurstServer(ImapServer):
    """ImapServer whose daemons get the test hooks, plus a pop3d."""

    unlock_hook = "1,64"

    def _spawn(self, args, name, env=None):
        env = dict(env or os.environ)
        env["SEALMAIL_SQLITED_TEST_UNLOCKS"] = self.unlock_hook
        env["SEALMAIL_RPC_TEST_TIMEOUT_MS"] = str(RPC_TIMEOUT_MS)
        return super()._spawn(args, name, env)

    def start_pop3d(self):
        self.pop3_port = int(self.extra["pop3_port"])
        p = self._spawn([POP3D, "--config", self.conf], "pop3d")
        ok = wait_for(lambda: port_open(self.pop3_port) or p.poll() is not None)
        if not ok or p.poll() is not None:
            raise RuntimeError("pop3d did not start: " + self.log_text()[-2000:])

    def restart_sqlited(self, unlock_hook):
        self.sqlited.terminate()
        self.sqlited.wait(30)
        self.unlock_hook = unlock_hook
        self.start_sqlited()

    def stats(self):
        with self.rpc() as c:
            return rpcclient.stats(c.call(rpcclient.OP_STATS))


def imap_login(srv, i):
    """'OK' (and the session works), 'UNAVAILABLE', or another answer."""
    c = srv.connect(tls=False, timeout=600)
    try:
        c.login(address(i), password(i))
    except c.error as e:
        text = str(e)
        c.shutdown()
        return "UNAVAILABLE" if "[UNAVAILABLE]" in text else text[:200]
    try:
        typ, data = c.select("INBOX")
        if typ != "OK":
            return "SELECT " + typ
        c.logout()
    except Exception as e:  # noqa: BLE001 - reported as the result
        return "after login: " + type(e).__name__
    return "OK"


def pop3_login(srv, i):
    """'OK' (and STAT works), 'SYS/TEMP', or another answer."""
    p = poplib.POP3("127.0.0.1", srv.pop3_port, timeout=600)
    try:
        p.user(address(i))
        p.pass_(password(i))
    except poplib.error_proto as e:
        text = e.args[0].decode(errors="replace") if e.args else ""
        p.close()
        return "SYS/TEMP" if text.startswith("-ERR [SYS/TEMP]") else text[:200]
    try:
        p.stat()
        p.quit()
    except Exception as e:  # noqa: BLE001
        return "after login: " + type(e).__name__
    return "OK"


def burst(jobs):
    """Runs every job (a function of no argument) in its own thread, all
    released at once; returns their results in order."""
    results = [None] * len(jobs)
    gate = threading.Barrier(len(jobs))

    def run(k):
        gate.wait()
        try:
            results[k] = jobs[k]()
        except Exception as e:  # noqa: BLE001 - a connection error is a result
            results[k] = "exception: " + type(e).__name__

    threads = [threading.Thread(target=run, args=(k,)) for k in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(900)
    return results


@unittest.skipUnless(os.access(POP3D, os.X_OK) and imap_server.skip_unless_built(),
                     "sealmail-imapd, sealmail-pop3d, sqlited or redis-server is missing")
class LoginBurst(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        # A costlier Argon2id than the tests' usual 1 MiB, so that a burst
        # of 16 first logins takes a few times RPC_TIMEOUT_MS.
        cls.srv = BurstServer(config={"pop3_port": free_port(),
                                      "argon2_memlimit_mib": "64",
                                      "argon2_opslimit": "2",
                                      "imap_max_conns_per_ip": "200"})
        cls.srv.with_aliases([(address(i), password(i))
                              for i in range(N_IMAP + N_POP + 2)],
                             prepare=BurstServer.start_pop3d)

    @classmethod
    def tearDownClass(cls):
        cls.srv.stop_checked()

    def fresh_sqlited(self, unlock_hook):
        """sqlited restarted (every alias locked) and both frontends
        connected again: a login of a spare alias through each succeeds."""
        srv = self.srv
        srv.restart_sqlited(unlock_hook)
        spare_imap, spare_pop = N_IMAP + N_POP, N_IMAP + N_POP + 1
        self.assertTrue(wait_for(lambda: imap_login(srv, spare_imap) == "OK", 60),
                        "imapd did not reconnect to sqlited")
        self.assertTrue(wait_for(lambda: pop3_login(srv, spare_pop) == "OK", 60),
                        "pop3d did not reconnect to sqlited")
        return srv.stats()

    def burst_jobs(self, imap_clients_per_alias):
        srv = self.srv
        jobs = []
        for i in range(N_IMAP):
            for _ in range(imap_clients_per_alias):
                jobs.append(lambda i=i: ("imap", i, imap_login(srv, i)))
        for i in range(N_IMAP, N_IMAP + N_POP):
            jobs.append(lambda i=i: ("pop3", i, pop3_login(srv, i)))
        return jobs

    def test_burst_of_first_logins_all_succeed(self):
        before = self.fresh_sqlited("1,64")
        results = burst(self.burst_jobs(2))
        failed = [(proto, i, r) for proto, i, r in results if r != "OK"]
        self.assertEqual(failed, [], "logins of the burst failed")
        after = self.srv.stats()
        self.assertEqual(after["unlocks_refused"], 0)
        # The second IMAP client of each alias ran no Argon2id of its own:
        # it joined the first one's unlock while it was pending, or (if it
        # came after the answer) took the fast path of an open alias.
        no_kdf = (after["unlocks_joined"] - before["unlocks_joined"] +
                  after["unlocks_without_kdf"] - before["unlocks_without_kdf"])
        self.assertGreaterEqual(no_kdf, N_IMAP)
        self.assertGreaterEqual(after["unlocks_joined"] - before["unlocks_joined"], 1)

    def test_full_queue_refused_at_once_then_served(self):
        # One Argon2id at a time and at most two waiting: most of a burst of
        # 16 different first logins cannot even queue.
        before = self.fresh_sqlited("1,2")
        results = burst(self.burst_jobs(1))
        temp = [(proto, i) for proto, i, r in results if r in ("UNAVAILABLE", "SYS/TEMP")]
        other = [(proto, i, r) for proto, i, r in results
                 if r not in ("OK", "UNAVAILABLE", "SYS/TEMP")]
        self.assertEqual(other, [], "unexpected answers")
        self.assertGreater(len(temp), 0, "nothing was refused")
        self.assertLess(len(temp), len(results), "nothing was admitted")
        # Each temporary failure is a refusal by sqlited's bound (counted),
        # not a request that waited and timed out.
        after = self.srv.stats()
        self.assertEqual(after["unlocks_refused"] - before["unlocks_refused"], len(temp))
        # "Try again later": the refused clients, retrying a few at a time,
        # are all served.
        retry = burst([lambda p=p, i=i: (imap_login if p == "imap" else pop3_login)(self.srv, i)
                       for p, i in temp[:2]])
        self.assertEqual(retry, ["OK"] * len(retry))
        for p, i in temp[2:]:
            r = (imap_login if p == "imap" else pop3_login)(self.srv, i)
            self.assertEqual(r, "OK", f"{p} login {i} on retry")

    def test_abandoned_login_leaves_no_session(self):
        # A client that sends LOGIN and resets the connection before the
        # answer (it gave up waiting in the queue): the session sqlited then
        # opens for it is ended by the imapd (LOCK), not left holding the
        # alias unlocked until sqlited's session idle timeout.
        srv = self.srv
        before = self.fresh_sqlited("1,64")
        self.assertTrue(wait_for(lambda: srv.stats()["sessions"] == 0, 30),
                        "the probes' sessions did not end")
        open_before = srv.stats()["aliases_open"]
        # Other first logins ahead in the queue, so that this one is still
        # waiting when its client goes.
        ahead = threading.Thread(target=burst, args=(
            [lambda i=i: imap_login(srv, i) for i in range(1, 7)],))
        ahead.start()
        try:
            wait_for(lambda: srv.stats()["unlocks_waiting"] >= 3, 30)
            raw = srv.raw(tls=False)
            raw.send(b"a LOGIN " + address(0).encode() + b' "' + password(0).encode() +
                     b'"\r\n')
            time.sleep(0.2)      # let the imapd read it before the reset
            raw.s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            raw.close()
        finally:
            ahead.join(600)

        def settled():
            st = srv.stats()
            return (st["aliases_open"] == open_before + 7 and st["sessions"] == 0 and
                    st["unlocks_running"] == 0 and st["unlocks_waiting"] == 0)
        self.assertTrue(wait_for(settled, 30),
                        f"sqlited after the abandoned LOGIN: {srv.stats()}")
        self.assertEqual(srv.stats()["unlocks_refused"], before["unlocks_refused"])

if __name__ == "__main__":
    unittest.main()
