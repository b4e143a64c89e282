"""The DNS namespace test helper itself (dns_zone.py): records as served,
SERVFAIL zones, long TXT records, run() inside, enter()/leave() of the test
process with the bind-mounted resolv.conf, and the TEST-NET sender
addresses. Skipped unless root."""
import os
import socket
import struct
import subprocess
import sys
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import dns_zone  # noqa: E402

# Longer than one 255-byte string, short enough for a UDP answer.
LONG = "v=DKIM1; k=rsa; p=" + "A" * 380


def query(name, qtype=16, timeout=3.0):
    """One UDP query to 127.0.0.1:53: (rcode, [TXT strings joined])."""
    q = struct.pack(">HHHHHH", 0x1234, 0x0100, 1, 0, 0, 0)
    q += b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0"
    q += struct.pack(">HH", qtype, 1)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(timeout)
    try:
        s.sendto(q, ("127.0.0.1", 53))
        r = s.recv(4096)
    except socket.timeout:
        return "timeout", []
    finally:
        s.close()
    rcode = r[3] & 15
    an = struct.unpack(">H", r[6:8])[0]
    i = len(q)
    out = []
    for _ in range(an):
        i += 2  # compressed name pointer
        rtype, _, _, rdlen = struct.unpack(">HHIH", r[i:i + 10])
        i += 10
        rd = r[i:i + rdlen]
        i += rdlen
        if rtype == 16:
            txt, j = b"", 0
            while j < len(rd):
                txt += rd[j + 1:j + 1 + rd[j]]
                j += 1 + rd[j]
            out.append(txt.decode())
    return rcode, out


class DnsZoneTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        dns_zone.skip_unless_root()
        z = dns_zone.Zone()
        z.txt("example.net", "v=spf1 ip4:192.0.2.1 -all")
        z.txt("_dmarc.example.net", "v=DMARC1; p=reject; rua=mailto:a@example.net, mailto:b@example.net")
        z.txt("long._domainkey.example.net", LONG)
        z.a("mx.example.net", "192.0.2.25").mx("example.net", "mx.example.net")
        z.servfail("broken.example.org")
        cls.ns = dns_zone.DnsNamespace(z)
        cls.ns.start()

    @classmethod
    def tearDownClass(cls):
        cls.ns.stop()
        cls.assertFalse(unittest.TestCase(), os.path.exists("/etc/netns/" + cls.ns.name))

    def test_records_inside_the_namespace(self):
        with self.ns.entered():
            self.assertEqual(query("example.net"), (0, ["v=spf1 ip4:192.0.2.1 -all"]))
            # quotes, semicolons and commas survive dnsmasq's config parser
            self.assertEqual(query("_dmarc.example.net")[1],
                             ["v=DMARC1; p=reject; rua=mailto:a@example.net, mailto:b@example.net"])
            self.assertEqual(query("long._domainkey.example.net")[1], [LONG])
            self.assertEqual(query("nothing.example.net")[0], 3)  # NXDOMAIN
            self.assertNotEqual(query("x.broken.example.org", timeout=3)[0], 0)
            self.assertEqual(socket.gethostbyname("mx.example.net"), "192.0.2.25")

    def test_run_uses_the_namespace_resolv_conf(self):
        r = self.ns.run(["cat", "/etc/resolv.conf"], capture_output=True, check=True)
        self.assertIn(b"nameserver 127.0.0.1", r.stdout)
        r = self.ns.run(["getent", "hosts", "mx.example.net"], capture_output=True)
        self.assertIn(b"192.0.2.25", r.stdout)

    def test_enter_and_leave(self):
        with open("/etc/resolv.conf", "rb") as f:
            host_conf = f.read()
        host_net = os.readlink("/proc/self/ns/net")
        with self.ns.entered():
            self.assertNotEqual(os.readlink("/proc/self/ns/net"), host_net)
            with open("/etc/resolv.conf", "rb") as f:
                self.assertIn(b"nameserver 127.0.0.1", f.read())
            # children inherit it
            r = subprocess.run(["getent", "hosts", "mx.example.net"], capture_output=True)
            self.assertIn(b"192.0.2.25", r.stdout)
        self.assertEqual(os.readlink("/proc/self/ns/net"), host_net)
        with open("/etc/resolv.conf", "rb") as f:
            self.assertEqual(f.read(), host_conf)

    def test_sender_addresses(self):
        with self.ns.entered():
            srv = socket.socket()
            srv.bind(("127.0.0.1", 0))
            srv.listen(1)
            c = socket.create_connection(srv.getsockname(),
                                         source_address=(dns_zone.SENDER_IPS[1], 0))
            conn, peer = srv.accept()
            self.assertEqual(peer[0], dns_zone.SENDER_IPS[1])
            for s in (c, conn, srv):
                s.close()


if __name__ == "__main__":
    unittest.main()
