"""Sender authentication (frontends/mx/mx_auth.c) against real DNS answers.

dnsmasq serves the test zones inside a private network namespace
(dns_zone.py); the C driver tests/helpers/mx_auth_check runs one
mx_auth_check there and prints the verdict and the Authentication-Results
header, which the tests parse (RFC 8601 syntax) and check field by field.
Messages are DKIM-signed with tests/helpers/dkim_sign and keys from
opendkim-genkey.

The client address given to the driver is a TEST-NET one (192.0.2.1 is
allowed by the SPF records, 198.51.100.1 is not): libspf2 passes any
127.0.0.0/8 client.

Skipped unless root (network namespaces) and the helpers are built.
"""
import os
import re
import shutil
import sys
import tempfile
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import dns_zone  # noqa: E402

ROOT = os.environ.get("SEALMAIL_SOURCE_DIR", os.path.dirname(os.path.dirname(HERE)))
BIN_DIR = os.environ.get("SEALMAIL_BIN_DIR", os.path.join(ROOT, "build", "bin"))
CHECK = os.path.join(BIN_DIR, "mx_auth_check")

GOOD_IP, BAD_IP = "192.0.2.1", "198.51.100.1"
SPF_OK = "v=spf1 ip4:%s -all" % GOOD_IP
RESULTS = {"none", "pass", "fail", "softfail", "neutral", "temperror",
           "permerror", "policy"}


def message(from_hdr, body=b"Hello.\r\nSecond line.\r\n", extra=b""):
    return (b"From: " + from_hdr.encode() + b"\r\nTo: rcpt@dest.example\r\n"
            b"Subject: auth test\r\nMessage-ID: <t@example>\r\n" + extra +
            b"\r\n" + body)


def parse_ar(header):
    """Parses an Authentication-Results header (RFC 8601) into
    (authserv_id, [(method, result, comment, {ptype.prop: value})])."""
    assert header.endswith("\r\n"), header
    # Folding: CRLF followed by whitespace; no bare CR or LF anywhere.
    assert re.fullmatch(r"(?:[^\r\n]|\r\n[ \t])*\r\n", header), header
    name, _, value = header[:-2].replace("\r\n", "").partition(":")
    assert name == "Authentication-Results", header
    parts = [p.strip() for p in value.split(";")]
    out = []
    for p in parts[1:]:
        m = re.fullmatch(r"([a-z]+)=([a-z]+)(?: \(([^()]*)\))?((?: [a-z]+\.[a-z]+=[^ ;()]+)*)", p)
        assert m, "bad resinfo %r in %r" % (p, header)
        method, result, comment, props = m.groups()
        assert result in RESULTS, p
        out.append((method, result, comment or "",
                    dict(x.split("=", 1) for x in props.split())))
    return parts[0], out


class MxAuthTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        dns_zone.skip_unless_root()
        if not os.access(CHECK, os.X_OK):
            raise unittest.SkipTest("%s not built" % CHECK)
        cls.tmp = tempfile.mkdtemp(prefix="sealmail-mxauth-")
        cls.key = dns_zone.DkimKey(cls.tmp, "sel", "example.net")
        # Not published: its selector's name only ever gets SERVFAIL.
        cls.key_temp = dns_zone.DkimKey(cls.tmp, "tsel", "dkimtemp.net")
        z = dns_zone.Zone()
        cls.key.publish(z)
        z.txt("example.net", SPF_OK).txt("_dmarc.example.net", "v=DMARC1; p=reject")
        z.txt("example.org", "v=spf1 ip4:%s ~all" % GOOD_IP)
        z.txt("_dmarc.example.org", "v=DMARC1; p=quarantine")
        z.txt("example.com", "v=spf1 ip4:%s ?all" % GOOD_IP)
        z.txt("_dmarc.example.com", "v=DMARC1; p=none; sp=reject")
        z.txt("nodmarc.net", SPF_OK)
        z.a("nospf.org", "192.0.2.80")  # exists, no TXT at all
        z.txt("perm.net", "v=spf1 ip4:%s bogus:x -all" % GOOD_IP)
        z.txt("strict.net", SPF_OK)
        z.txt("_dmarc.strict.net", "v=DMARC1; p=reject; aspf=s; adkim=s")
        z.txt("pct0.net", SPF_OK).txt("_dmarc.pct0.net", "v=DMARC1; p=reject; pct=0")
        z.txt("pct50.net", SPF_OK).txt("_dmarc.pct50.net", "v=DMARC1; p=reject; pct=50")
        z.txt("tempdns.net", SPF_OK).txt("_dmarc.tempdns.net", "v=DMARC1; p=reject")
        z.servfail("broken.tempdns.net")
        z.txt("dmarcfail.net", SPF_OK).a("dmarcfail.net", "192.0.2.81")
        z.servfail("_dmarc.dmarcfail.net")
        z.txt("dkimtemp.net", SPF_OK).txt("_dmarc.dkimtemp.net", "v=DMARC1; p=reject")
        z.servfail("tsel._domainkey.dkimtemp.net")
        cls.ns = dns_zone.DnsNamespace(z)
        cls.ns.start()

    @classmethod
    def tearDownClass(cls):
        cls.ns.stop()
        shutil.rmtree(cls.tmp, ignore_errors=True)

    # -- helpers --
    def check(self, msg, ip=GOOD_IP, mail_from="a@example.net",
              helo="mail.example.net", count=1):
        path = os.path.join(self.tmp, "msg.eml")
        with open(path, "wb") as f:
            f.write(msg)
        r = self.ns.run([CHECK, path, ip, helo, mail_from, "1000", "mx.test",
                         str(count)], capture_output=True, timeout=120)
        self.assertEqual(r.returncode, 0, r.stderr.decode(errors="replace"))
        # Nothing of the message on stderr (libspf2/opendkim/our logs).
        self.assertNotIn(b"secret", r.stderr)
        out = r.stdout.decode()
        if count > 1:
            self.assertIn("identical=%d\n" % count, out)
            out = out[:out.rindex("identical=")]
        verdict = re.match(r"verdict=(\w+)\n", out).group(1)
        reason = re.search(r"^reason=(.*)\n", out, re.M).group(1)
        header = out[out.index("Authentication-Results:"):]
        authserv, res = parse_ar(header)
        self.assertEqual(authserv, "mx.test")
        by = {}
        for method, result, comment, props in res:
            by.setdefault(method, []).append((result, comment, props))
        return verdict, reason, by

    def sign(self, msg, key=None, **kw):
        return (key or self.key).sign(msg, BIN_DIR, **kw)

    # -- SPF --
    def test_spf_pass_aligned_is_dmarc_pass(self):
        v, _, r = self.check(message("a@example.net"))
        self.assertEqual(r["spf"], [("pass", "", {"smtp.mailfrom": "example.net"})])
        self.assertEqual(r["dkim"][0][0], "none")
        self.assertEqual(r["dmarc"], [("pass", "p=reject", {"header.from": "example.net"})])
        self.assertEqual(v, "accept")

    def test_spf_fail_under_reject_is_rejected(self):
        v, reason, r = self.check(message("a@example.net"), ip=BAD_IP)
        self.assertEqual(r["spf"][0][0], "fail")
        self.assertEqual(r["dmarc"][0][:2], ("fail", "p=reject dis=reject"))
        self.assertEqual(v, "reject")
        self.assertNotIn("example", reason)

    def test_spf_softfail_under_quarantine_is_accepted(self):
        v, _, r = self.check(message("a@example.org"), ip=BAD_IP,
                             mail_from="a@example.org")
        self.assertEqual(r["spf"][0][0], "softfail")
        self.assertEqual(r["dmarc"][0][:2], ("fail", "p=quarantine dis=quarantine"))
        self.assertEqual(v, "accept")

    def test_spf_neutral_and_p_none(self):
        v, _, r = self.check(message("a@example.com"), ip=BAD_IP,
                             mail_from="a@example.com")
        self.assertEqual(r["spf"][0][0], "neutral")
        self.assertEqual(r["dmarc"][0][:2], ("fail", "p=none dis=none"))
        self.assertEqual(v, "accept")

    def test_spf_none_and_no_dmarc(self):
        v, _, r = self.check(message("a@nospf.org"), mail_from="a@nospf.org")
        self.assertEqual(r["spf"][0][:1], ("none",))
        self.assertEqual(r["dmarc"][0][0], "none")
        self.assertEqual(v, "accept")

    def test_spf_permerror(self):
        _, _, r = self.check(message("a@nodmarc.net"), mail_from="a@perm.net")
        self.assertEqual(r["spf"][0][0], "permerror")

    def test_spf_temperror_that_could_pass_is_tempfail(self):
        v, reason, r = self.check(message("a@tempdns.net"), ip=BAD_IP,
                                  mail_from="a@broken.tempdns.net")
        self.assertEqual(r["spf"][0], ("temperror", "", {"smtp.mailfrom": "broken.tempdns.net"}))
        self.assertEqual(r["dmarc"][0][0], "fail")
        self.assertEqual(v, "tempfail")
        self.assertIn("try again", reason)

    def test_spf_temperror_unaligned_still_rejects(self):
        # The temperror domain does not align with From: it cannot save it.
        v, _, r = self.check(message("a@example.net"), ip=BAD_IP,
                             mail_from="a@broken.tempdns.net")
        self.assertEqual(r["spf"][0][0], "temperror")
        self.assertEqual(v, "reject")

    def test_null_sender_checks_helo(self):
        v, _, r = self.check(message("a@example.net"), mail_from="",
                             helo="example.net")
        self.assertEqual(r["spf"], [("pass", "", {"smtp.helo": "example.net"})])
        self.assertEqual(v, "accept")
        v, _, r = self.check(message("a@example.net"), ip=BAD_IP, mail_from="",
                             helo="example.net")
        self.assertEqual(r["spf"][0][0], "fail")
        self.assertEqual(v, "reject")

    # -- DKIM --
    def test_dkim_pass_saves_spf_fail(self):
        v, _, r = self.check(self.sign(message("a@example.net")), ip=BAD_IP)
        self.assertEqual(r["spf"][0][0], "fail")
        self.assertEqual(r["dkim"], [("pass", "", {"header.d": "example.net",
                                                  "header.s": "sel"})])
        self.assertEqual(r["dmarc"][0][0], "pass")
        self.assertEqual(v, "accept")

    def test_dkim_tampered_body_fails(self):
        signed = self.sign(message("a@example.net"))
        v, _, r = self.check(signed.replace(b"Second line", b"Second lime"), ip=BAD_IP)
        self.assertEqual(r["dkim"][0][0], "fail")
        self.assertEqual(v, "reject")

    def test_dkim_tampered_signed_header_fails(self):
        signed = self.sign(message("a@example.net"))
        v, _, r = self.check(signed.replace(b"Subject: auth test", b"Subject: auth tesT"),
                             ip=BAD_IP)
        self.assertEqual(r["dkim"][0][0], "fail")
        self.assertEqual(v, "reject")

    def test_dkim_missing_key_is_permerror(self):
        signed = self.sign(message("a@example.net"), selector="nokey")
        _, _, r = self.check(signed)
        self.assertEqual(r["dkim"][0][0], "permerror")
        self.assertEqual(r["dkim"][0][2]["header.s"], "nokey")

    def test_dkim_temperror_that_could_pass_is_tempfail(self):
        signed = self.sign(message("a@dkimtemp.net"), key=self.key_temp)
        v, _, r = self.check(signed, ip=BAD_IP, mail_from="a@dkimtemp.net")
        self.assertEqual(r["dkim"][0][0], "temperror")
        self.assertEqual(v, "tempfail")

    def test_at_most_five_signatures(self):
        msg = message("a@example.net")
        for _ in range(6):
            msg = self.sign(msg)
        self.assertEqual(len(re.findall(rb"^DKIM-Signature:", msg, re.M)), 6)
        _, _, r = self.check(msg, ip=BAD_IP)
        self.assertEqual(len(r["dkim"]), 5)
        self.assertTrue(all(x[0] == "pass" for x in r["dkim"]))

    # -- DMARC --
    def test_relaxed_alignment_with_subdomain(self):
        # From: a sub-domain; SPF passes for the org domain; the record is
        # found at the organizational domain (public suffix list: .net).
        v, _, r = self.check(message("a@mail.example.net"))
        self.assertEqual(r["dmarc"][0], ("pass", "p=reject", {"header.from": "mail.example.net"}))
        self.assertEqual(v, "accept")

    def test_strict_alignment(self):
        v, _, r = self.check(message("a@mail.strict.net"), mail_from="a@strict.net")
        self.assertEqual(r["spf"][0][0], "pass")
        self.assertEqual(r["dmarc"][0][0], "fail")
        self.assertEqual(v, "reject")
        v, _, r = self.check(message("a@strict.net"), mail_from="a@strict.net")
        self.assertEqual(r["dmarc"][0][0], "pass")
        self.assertEqual(v, "accept")

    def test_subdomain_policy(self):
        # example.com says p=none; sp=reject: a sub-domain gets reject.
        v, _, r = self.check(message("a@sub.example.com"), ip=BAD_IP,
                             mail_from="a@example.com")
        self.assertEqual(r["dmarc"][0][:2], ("fail", "p=reject dis=reject"))
        self.assertEqual(v, "reject")

    def test_unaligned_spf_pass_fails_dmarc(self):
        v, _, r = self.check(message("a@example.net"), mail_from="a@nodmarc.net")
        self.assertEqual(r["spf"][0], ("pass", "", {"smtp.mailfrom": "nodmarc.net"}))
        self.assertEqual(r["dmarc"][0][0], "fail")
        self.assertEqual(v, "reject")

    def test_pct_zero_never_rejects(self):
        v, _, r = self.check(message("a@pct0.net"), ip=BAD_IP, mail_from="a@pct0.net")
        self.assertEqual(r["dmarc"][0][:2], ("fail", "p=reject dis=quarantine"))
        self.assertEqual(v, "accept")

    def test_pct_fifty_is_a_random_draw(self):
        seen = set()
        for _ in range(40):
            v, _, r = self.check(message("a@pct50.net"), ip=BAD_IP,
                                 mail_from="a@pct50.net")
            seen.add((v, r["dmarc"][0][1]))
            if len(seen) == 2:
                break
        self.assertEqual(seen, {("reject", "p=reject dis=reject"),
                                ("accept", "p=reject dis=quarantine")})

    def test_multiple_from_domains_fail(self):
        v, _, r = self.check(message("a@example.net, b@nodmarc.net"))
        self.assertEqual(r["spf"][0][0], "pass")
        self.assertEqual(r["dmarc"][0][0], "fail")
        self.assertIn("multiple-from", r["dmarc"][0][1])
        self.assertEqual(v, "reject")
        # The same domain twice is one domain.
        v, _, r = self.check(message('"A" <a@example.net>, b@EXAMPLE.net'))
        self.assertEqual(r["dmarc"][0][0], "pass")

    def test_from_in_display_name_is_not_the_domain(self):
        v, _, r = self.check(message('"boss@example.net" <x@example.org>'),
                             ip=GOOD_IP, mail_from="a@example.net")
        self.assertEqual(r["dmarc"][0][2], {"header.from": "example.org"})

    def test_dmarc_record_temperror(self):
        # The record cannot be fetched: nothing passed strictly -> 451.
        v, _, r = self.check(message("a@dmarcfail.net"), ip=BAD_IP,
                             mail_from="a@dmarcfail.net")
        self.assertEqual(r["dmarc"][0][0], "temperror")
        self.assertEqual(v, "tempfail")
        # An exact-domain SPF pass would pass under any record: accept.
        v, _, r = self.check(message("a@dmarcfail.net"), mail_from="a@dmarcfail.net")
        self.assertEqual(r["dmarc"][0][0], "temperror")
        self.assertEqual(v, "accept")

    def test_no_from_header(self):
        msg = b"To: x@dest.example\r\nSubject: none\r\n\r\nbody\r\n"
        v, _, r = self.check(msg)
        self.assertEqual(r["dmarc"][0][0], "none")
        self.assertEqual(v, "accept")

    def test_concurrent_checks_on_the_pool(self):
        # 32 checks at once on libuv's pool (4 threads): per-thread SPF
        # servers, the shared DKIM library, per-check DMARC contexts.
        signed = self.sign(message("a@example.net", body=b"secret body\r\n"))
        v, _, r = self.check(signed, ip=BAD_IP, count=32)
        self.assertEqual((v, r["dkim"][0][0], r["dmarc"][0][0]),
                         ("accept", "pass", "pass"))
        v, _, r = self.check(message("a@example.net"), ip=BAD_IP, count=32)
        self.assertEqual(v, "reject")

    def test_header_carries_no_local_parts(self):
        _, _, r = self.check(message("secret.person@example.net"),
                             mail_from="other.secret@example.net")
        self.assertNotIn("secret", repr(r))


if __name__ == "__main__":
    unittest.main()
