"""Test DNS for the MX tests: dnsmasq serving test zones inside a private
network namespace whose /etc/resolv.conf points at it.

Why: SPF, DKIM and DMARC (libspf2, libopendkim, our DMARC lookup) use the
system resolver, which reads /etc/resolv.conf. A network namespace gives the
test its own loopback (dnsmasq on 127.0.0.1:53 without touching the host)
and `ip netns exec` / our enter() bind-mount /etc/netns/NAME/resolv.conf
over /etc/resolv.conf, so every process of the test resolves through the
test zones, and nothing else.

API
---
    zone = Zone()
    zone.txt("example.net", "v=spf1 ip4:192.0.2.1 -all")
    zone.txt("_dmarc.example.net", "v=DMARC1; p=reject")
    zone.dkim_key("sel", "example.net", public_key_b64)   # or DkimKey below
    zone.a("mx.example.net", "192.0.2.25")
    zone.mx("example.net", "mx.example.net", 10)
    zone.servfail("broken.test")       # every query under it: SERVFAIL

    with DnsNamespace(zone) as ns:      # root only; else unittest.SkipTest
        ns.run([...])                   # subprocess.run inside the namespace
        p = ns.popen([...])             # subprocess.Popen inside it
        ns.cmd([...])                   # ["ip", "netns", "exec", NAME, ...]
        with ns.entered():              # THIS process joins the namespace:
            smtplib.SMTP("127.0.0.1", port, source_address=(ns.SENDER_IP, 0))
            subprocess.Popen([...])     # children inherit it (daemons too)

`entered()` is what a whole-stack test wants: call ns.enter() in
setUpModule/setUpClass (after the DnsNamespace is started) and ns.leave()
in the teardown, then start redis-server, sqlited and the MX as usual: they
and the test's own clients share the namespace's loopback and resolver.
enter() needs a single-threaded Python process (unshare(CLONE_NEWNS)).

Addresses: the namespace's loopback also carries SENDER_IPS (192.0.2.1,
198.51.100.1, 203.0.113.1, TEST-NET, /32 each). libspf2 answers "pass" for
any client on 127.0.0.0/8 (its localhost rule), so a test that wants SPF to
judge the client connects FROM one of these (smtplib source_address, swaks
--local-interface) and publishes SPF records naming them.

DkimKey(dir) makes an RSA key pair with opendkim-genkey (opendkim-tools)
and signs messages with tests/helpers/dkim_sign (build/bin/dkim_sign).

skip_unless_root() raises unittest.SkipTest with the reason when the test
cannot create namespaces (not root, no `ip` or no dnsmasq).
"""
import contextlib
import ctypes
import os
import re
import shutil
import subprocess
import tempfile
import time
import unittest

DNSMASQ = shutil.which("dnsmasq") or "/usr/sbin/dnsmasq"
IP = shutil.which("ip") or "/usr/sbin/ip"
SENDER_IPS = ("192.0.2.1", "198.51.100.1", "203.0.113.1")
# An address nobody answers on inside the namespace: a forward target that
# makes dnsmasq answer SERVFAIL/REFUSED (a temporary error for resolvers).
DEAD_UPSTREAM = "127.0.0.2#53"

CLONE_NEWNS = 0x00020000
CLONE_NEWNET = 0x40000000
MS_BIND = 4096
MS_REC = 16384
MS_SLAVE = 1 << 19


def skip_unless_root():
    """Raises unittest.SkipTest unless namespaces and dnsmasq are usable."""
    if os.geteuid() != 0:
        raise unittest.SkipTest("DNS namespace tests need root (ip netns, mount)")
    for tool in (DNSMASQ, IP):
        if not os.access(tool, os.X_OK):
            raise unittest.SkipTest("%s not installed (dnsmasq-base, iproute2)" % tool)


def _quote_txt(s):
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


class Zone:
    """The records dnsmasq serves. Names are absolute, without the dot."""

    def __init__(self):
        self.txts = []      # (name, [strings])
        self.hosts = []     # (name, ip)
        self.mxs = []       # (domain, host, pref)
        self.failing = []   # domains answered with SERVFAIL
        self.domains = set()

    def _note(self, name):
        labels = name.lower().rstrip(".").split(".")
        # dnsmasq is authoritative (NXDOMAIN, not REFUSED) for the last two
        # labels of every name we serve.
        self.domains.add(".".join(labels[-2:]))

    def txt(self, name, text):
        """A TXT record; text longer than 255 bytes becomes several strings."""
        chunks = [text[i:i + 255] for i in range(0, len(text), 255)] or [""]
        self.txts.append((name, chunks))
        self._note(name)
        return self

    def a(self, name, ip):
        self.hosts.append((name, ip))
        self._note(name)
        return self

    def mx(self, domain, host, pref=10):
        self.mxs.append((domain, host, pref))
        self._note(domain)
        return self

    def dkim_key(self, selector, domain, public_key_b64):
        return self.txt("%s._domainkey.%s" % (selector, domain),
                        "v=DKIM1; k=rsa; p=" + public_key_b64)

    def servfail(self, domain):
        """Every query at or under domain gets a temporary error."""
        self.failing.append(domain)
        return self

    def dnsmasq_conf(self):
        """dnsmasq.conf lines (a file: only its parser unquotes TXT strings)."""
        lines = []
        for name, chunks in self.txts:
            lines.append("txt-record=%s,%s" % (name, ",".join(_quote_txt(c) for c in chunks)))
        for name, ip in self.hosts:
            lines.append("host-record=%s,%s" % (name, ip))
        for domain, host, pref in self.mxs:
            lines.append("mx-host=%s,%s,%d" % (domain, host, pref))
        for d in sorted(self.domains):
            lines.append("local=/%s/" % d)
        for d in self.failing:
            lines.append("server=/%s/%s" % (d, DEAD_UPSTREAM))
        return "\n".join(lines) + "\n"


def _libc():
    libc = ctypes.CDLL(None, use_errno=True)
    libc.setns.argtypes = (ctypes.c_int, ctypes.c_int)
    libc.unshare.argtypes = (ctypes.c_int,)
    libc.mount.argtypes = (ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p,
                           ctypes.c_ulong, ctypes.c_void_p)
    return libc


def _check(rc, what):
    if rc != 0:
        e = ctypes.get_errno()
        raise OSError(e, "%s: %s" % (what, os.strerror(e)))


class DnsNamespace:
    """A network namespace with dnsmasq serving zone on 127.0.0.1:53."""

    SENDER_IP = SENDER_IPS[0]

    def __init__(self, zone, name=None, log_queries=False):
        self.zone = zone
        self.name = name or "smtest-%d-%d" % (os.getpid(), id(self) % 100000)
        self.log_queries = log_queries
        self.dnsmasq = None
        self.tmp = None
        self._saved = None

    # -- lifecycle --
    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop()

    def start(self):
        skip_unless_root()
        self.tmp = tempfile.mkdtemp(prefix="sealmail-dns-")
        subprocess.run([IP, "netns", "add", self.name], check=True)
        try:
            etc = os.path.join("/etc/netns", self.name)
            os.makedirs(etc, exist_ok=True)
            with open(os.path.join(etc, "resolv.conf"), "w") as f:
                # One quick attempt: the tests' DNS answers at once or never.
                f.write("nameserver 127.0.0.1\noptions timeout:1 attempts:1\n")
            self.run([IP, "link", "set", "lo", "up"], check=True)
            for ip in SENDER_IPS:
                self.run([IP, "addr", "add", ip + "/32", "dev", "lo"], check=True)
            self._start_dnsmasq()
        except BaseException:
            self.stop()
            raise

    def _start_dnsmasq(self):
        self.log = open(os.path.join(self.tmp, "dnsmasq.log"), "w+b")
        conf = os.path.join(self.tmp, "dnsmasq.conf")
        with open(conf, "w") as f:
            f.write(self.zone.dnsmasq_conf())
        args = [DNSMASQ, "--keep-in-foreground", "--conf-file=" + conf,
                "--no-resolv", "--no-hosts", "--no-poll", "--bind-interfaces",
                "--listen-address=127.0.0.1", "--port=53", "--user=root",
                "--pid-file=", "--log-facility=-", "--cache-size=0"]
        if self.log_queries:
            args.append("--log-queries")
        self.dnsmasq = self.popen(args,
                                  stdout=self.log, stderr=subprocess.STDOUT)
        # Ready when it answers: a query for a name it serves or refuses.
        end = time.monotonic() + 10
        while time.monotonic() < end:
            if self.dnsmasq.poll() is not None:
                self.log.seek(0)
                raise RuntimeError("dnsmasq exited: %s" % self.log.read().decode(errors="replace"))
            r = self.run(["python3", "-c", _PROBE], capture_output=True)
            if r.returncode == 0:
                return
            time.sleep(0.05)
        raise RuntimeError("dnsmasq did not answer in the namespace")

    def stop(self):
        if self._saved is not None:
            self.leave()
        if self.dnsmasq is not None:
            self.dnsmasq.terminate()
            try:
                self.dnsmasq.wait(5)
            except subprocess.TimeoutExpired:
                self.dnsmasq.kill()
                self.dnsmasq.wait()
            self.dnsmasq = None
            self.log.close()
        subprocess.run([IP, "netns", "delete", self.name],
                       stderr=subprocess.DEVNULL)
        shutil.rmtree(os.path.join("/etc/netns", self.name), ignore_errors=True)
        if self.tmp:
            shutil.rmtree(self.tmp, ignore_errors=True)
            self.tmp = None

    def dnsmasq_log(self):
        """What dnsmasq printed (queries too with log_queries=True)."""
        self.log.flush()
        with open(self.log.name, "rb") as f:
            return f.read().decode(errors="replace")

    # -- running processes inside --
    def cmd(self, argv):
        return [IP, "netns", "exec", self.name] + list(argv)

    def run(self, argv, **kw):
        if self._saved is not None:
            return subprocess.run(list(argv), **kw)
        return subprocess.run(self.cmd(argv), **kw)

    def popen(self, argv, **kw):
        if self._saved is not None:
            return subprocess.Popen(list(argv), **kw)
        return subprocess.Popen(self.cmd(argv), **kw)

    # -- this process inside --
    def enter(self):
        """Moves this (single-threaded) process into the namespace, with the
        namespace's resolv.conf bind-mounted over /etc/resolv.conf in a
        private mount namespace. leave() undoes it."""
        if self._saved is not None:
            return
        libc = _libc()
        saved = (os.open("/proc/self/ns/net", os.O_RDONLY),
                 os.open("/proc/self/ns/mnt", os.O_RDONLY))
        fd = os.open("/run/netns/" + self.name, os.O_RDONLY)
        try:
            _check(libc.setns(fd, CLONE_NEWNET), "setns(net)")
            _check(libc.unshare(CLONE_NEWNS), "unshare(mount)")
            _check(libc.mount(b"none", b"/", None, MS_REC | MS_SLAVE, None),
                   "mount --make-rslave /")
            src = os.path.join("/etc/netns", self.name, "resolv.conf").encode()
            _check(libc.mount(src, b"/etc/resolv.conf", None, MS_BIND, None),
                   "bind-mount resolv.conf")
        except BaseException:
            libc.setns(saved[1], CLONE_NEWNS)
            libc.setns(saved[0], CLONE_NEWNET)
            for s in saved:
                os.close(s)
            raise
        finally:
            os.close(fd)
        self._saved = saved

    def leave(self):
        if self._saved is None:
            return
        libc = _libc()
        net, mnt = self._saved
        _check(libc.setns(mnt, CLONE_NEWNS), "setns(mount) back")
        _check(libc.setns(net, CLONE_NEWNET), "setns(net) back")
        os.close(net)
        os.close(mnt)
        self._saved = None

    @contextlib.contextmanager
    def entered(self):
        self.enter()
        try:
            yield self
        finally:
            self.leave()


# Exits 0 once the resolver gets any answer from dnsmasq (even NXDOMAIN).
_PROBE = r"""
import socket, struct, sys
q = struct.pack(">HHHHHH", 0x5353, 0x0100, 1, 0, 0, 0) + b"\x05probe\x04test\x00" + struct.pack(">HH", 16, 1)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(0.3)
try:
    s.sendto(q, ("127.0.0.1", 53))
    sys.exit(0 if s.recv(512)[:2] == b"\x53\x53" else 1)
except OSError:
    sys.exit(1)
"""


class DkimKey:
    """An RSA key pair from opendkim-genkey, and signing with dkim_sign."""

    def __init__(self, directory, selector, domain, bits=2048):
        self.selector, self.domain = selector, domain
        tool = shutil.which("opendkim-genkey") or "/usr/sbin/opendkim-genkey"
        if not os.access(tool, os.X_OK):
            raise unittest.SkipTest("opendkim-genkey not installed (opendkim-tools)")
        subprocess.run([tool, "-b", str(bits), "-d", domain, "-s", selector,
                        "-D", directory], check=True)
        self.private_key = os.path.join(directory, selector + ".private")
        with open(os.path.join(directory, selector + ".txt")) as f:
            record = "".join(re.findall(r'"([^"]*)"', f.read()))
        m = re.search(r"p=([A-Za-z0-9+/=]+)", record)
        self.public_b64 = m.group(1)

    def publish(self, zone):
        zone.dkim_key(self.selector, self.domain, self.public_b64)
        return zone

    def sign(self, message, bin_dir, selector=None, domain=None):
        """message (bytes, CRLF) with a DKIM-Signature prepended."""
        r = subprocess.run([os.path.join(bin_dir, "dkim_sign"), self.private_key,
                            selector or self.selector, domain or self.domain],
                           input=message, capture_output=True, check=True)
        return r.stdout
