"""A minimal client of the sqlited RPC protocol (docs/rpc.md), for tests.

Python 3 stdlib only. Blocking sockets with a timeout; plain transport
(unix socket or loopback TCP). Frames, fields (varint, signed, bytes,
group), the HELLO/AUTH/AUTH_OK handshake with the shared secret, one call
at a time (collecting MORE parts and a streamed body, granting WINDOW
credit) and a body upload under the server's window.

    c = rpcclient.connect_unix(path, secret)       # secret: 32 bytes
    fields = c.call(rpcclient.OP_PING, [(rpcclient.T_ECHO, b"hi")])
    rpcclient.get(fields, rpcclient.T_ECHO)         # b"hi"

Fields are lists of (tag, value): value is an int (unsigned), bytes, or a
list of fields (a group). Signed values: pass Signed(n).
"""
import hashlib
import hmac
import os
import socket
import struct

VERSION = 1
K_HELLO, K_AUTH, K_AUTH_OK, K_REQUEST, K_RESPONSE, K_ERROR, K_DATA, K_WINDOW, K_CANCEL = range(1, 10)
F_END, F_BODY, F_MORE = 1, 2, 4
OP_PING, OP_STATS = 1, 2
OP_SERVER_STATUS = 89
T_CODE, T_ERROR_TEXT, T_VERSION, T_NONCE, T_PEER_NAME, T_PROOF, T_CREDIT, T_ECHO = range(1, 9)
T_STAT, T_NAME, T_VALUE, T_MAX_FRAME, T_MAX_IN_FLIGHT = 9, 10, 11, 12, 13
INITIAL_WINDOW = 256 * 1024
MAX_CHUNK = 256 * 1024


class Signed(int):
    """A value to send with wire type 1 (zigzag)."""


class RpcError(Exception):
    """An ERROR frame: code is the positive wire code (docs/rpc.md)."""

    def __init__(self, code, text=b"", request_id=0):
        super().__init__(f"rpc error {code}: {text!r} (request {request_id})")
        self.code = code
        self.text = text
        self.request_id = request_id


class Closed(Exception):
    """The server closed the connection."""


def put_varint(v):
    out = bytearray()
    while True:
        b = v & 0x7F
        v >>= 7
        if v:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def get_varint(buf, pos):
    v = shift = 0
    while True:
        if pos >= len(buf):
            raise ValueError("truncated varint")
        b = buf[pos]
        pos += 1
        v |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return v, pos
        if shift > 63:
            raise ValueError("varint too long")


def encode(fields):
    out = bytearray()
    for tag, val in fields:
        if isinstance(val, Signed):
            z = (int(val) << 1) ^ (int(val) >> 63)
            out += put_varint(tag << 3 | 1) + put_varint(z & (2**64 - 1))
        elif isinstance(val, bool) or isinstance(val, int):
            out += put_varint(tag << 3 | 0) + put_varint(int(val))
        elif isinstance(val, (bytes, bytearray, str)):
            b = val.encode() if isinstance(val, str) else bytes(val)
            out += put_varint(tag << 3 | 2) + put_varint(len(b)) + b
        elif isinstance(val, list):
            g = encode(val)
            out += put_varint(tag << 3 | 3) + put_varint(len(g)) + g
        else:
            raise TypeError(f"cannot encode {val!r}")
    return bytes(out)


def decode(buf):
    """Fields of a payload: [(tag, value)], groups decoded recursively,
    signed values unzigzagged."""
    out, pos = [], 0
    while pos < len(buf):
        key, pos = get_varint(buf, pos)
        tag, wt = key >> 3, key & 7
        if wt == 0:
            v, pos = get_varint(buf, pos)
        elif wt == 1:
            z, pos = get_varint(buf, pos)
            v = (z >> 1) ^ -(z & 1)
        elif wt in (2, 3):
            n, pos = get_varint(buf, pos)
            if pos + n > len(buf):
                raise ValueError("truncated field")
            v = bytes(buf[pos:pos + n])
            pos += n
            if wt == 3:
                v = decode(v)
        else:
            raise ValueError("bad wire type")
        out.append((tag, v))
    return out


def get(fields, tag, default=None):
    for t, v in fields:
        if t == tag:
            return v
    return default


def get_all(fields, tag):
    return [v for t, v in fields if t == tag]


def stats(fields):
    """STAT groups as a dict name -> value."""
    return {get(g, T_NAME).decode(): get(g, T_VALUE) for g in get_all(fields, T_STAT)}


def frame(kind, flags, opcode, request_id, payload=b""):
    return struct.pack(">IBBBBHHI", 12 + len(payload), VERSION, kind, flags, 0,
                       opcode, 0, request_id) + payload


class Client:
    def __init__(self, sock, timeout=10.0):
        self.sock = sock
        self.sock.settimeout(timeout)
        self.buf = bytearray()
        self.next_id = 1
        self.max_in_flight = 0

    def close(self):
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def send(self, kind, flags, opcode, request_id, payload=b""):
        self.sock.sendall(frame(kind, flags, opcode, request_id, payload))

    def _fill(self):
        data = self.sock.recv(65536)
        if not data:
            raise Closed()
        self.buf += data

    def recv(self):
        """The next frame: (kind, flags, opcode, request_id, payload)."""
        while len(self.buf) < 16:
            self._fill()
        length, ver, kind, flags, _r, opcode, _r2, rid = struct.unpack(">IBBBBHHI", self.buf[:16])
        if ver != VERSION or length < 12:
            raise ValueError("bad frame from the server")
        while len(self.buf) < 4 + length:
            self._fill()
        payload = bytes(self.buf[16:4 + length])
        del self.buf[:4 + length]
        return kind, flags, opcode, rid, payload

    def handshake(self, secret, peer_name="test@localhost"):
        kind, _, _, _, payload = self.recv()
        if kind == K_ERROR:
            f = decode(payload)
            raise RpcError(get(f, T_CODE), get(f, T_ERROR_TEXT, b""))
        assert kind == K_HELLO, f"expected HELLO, got kind {kind}"
        f = decode(payload)
        assert VERSION in get_all(f, T_VERSION)
        sn = get(f, T_NONCE)
        cn = os.urandom(32)
        name = peer_name.encode()
        cp = hmac.new(secret, b"sealmail-rpc-v1 client" + sn + cn + name, hashlib.sha256).digest()
        self.send(K_AUTH, 0, 0, 0, encode([(T_VERSION, VERSION), (T_NONCE, cn),
                                           (T_PEER_NAME, name), (T_PROOF, cp)]))
        kind, _, _, _, payload = self.recv()
        f = decode(payload)
        if kind == K_ERROR:
            raise RpcError(get(f, T_CODE), get(f, T_ERROR_TEXT, b""))
        assert kind == K_AUTH_OK, f"expected AUTH_OK, got kind {kind}"
        sp = hmac.new(secret, b"sealmail-rpc-v1 server" + sn + cn + name, hashlib.sha256).digest()
        if not hmac.compare_digest(sp, get(f, T_PROOF, b"")):
            raise RpcError(115, b"wrong server proof")
        self.max_in_flight = get(f, T_MAX_IN_FLIGHT, 0)

    def call(self, opcode, fields=(), body=None, want_body=False):
        """Sends a request, returns its fields (all MORE parts concatenated);
        with want_body, returns (fields, body bytes). body (bytes) uploads."""
        rid = self.next_id
        self.next_id += 1
        self.send(K_REQUEST, F_BODY if body is not None else 0, opcode, rid, encode(list(fields)))
        if body is not None:
            self._upload(rid, body)
        out, data, streaming, answered, ungranted = [], bytearray(), False, False, 0
        while True:
            kind, flags, _, frid, payload = self.recv()
            if kind == K_ERROR and frid in (0, rid):
                f = decode(payload)
                raise RpcError(get(f, T_CODE), get(f, T_ERROR_TEXT, b""), frid)
            if frid != rid:
                continue
            if kind == K_RESPONSE:
                out += decode(payload)
                streaming = streaming or bool(flags & F_BODY)
                if not flags & F_MORE:
                    answered = True
                    if not streaming:
                        break
            elif kind == K_DATA:
                data += payload
                if flags & F_END:
                    break
                ungranted += len(payload)
                if ungranted >= INITIAL_WINDOW // 2:
                    self.send(K_WINDOW, 0, 0, rid, encode([(T_CREDIT, ungranted)]))
                    ungranted = 0
        assert answered
        return (out, bytes(data)) if want_body else out

    def _upload(self, rid, body):
        window, off = INITIAL_WINDOW, 0
        while True:
            if window == 0:
                kind, _, _, frid, payload = self.recv()
                if frid == rid and kind == K_WINDOW:
                    window += get(decode(payload), T_CREDIT, 0)
                elif kind == K_ERROR and frid in (0, rid):
                    f = decode(payload)
                    raise RpcError(get(f, T_CODE), get(f, T_ERROR_TEXT, b""), frid)
                continue
            n = min(window, MAX_CHUNK, len(body) - off)
            last = off + n == len(body)
            self.send(K_DATA, F_END if last else 0, 0, rid, body[off:off + n])
            off += n
            window -= n
            if last:
                return


def connect_unix(path, secret, peer_name="test@localhost", timeout=10.0):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    s.connect(path)
    c = Client(s, timeout)
    try:
        c.handshake(secret, peer_name)
    except BaseException:
        c.close()
        raise
    return c


def connect_tcp(host, port, secret, peer_name="test@localhost", timeout=10.0):
    s = socket.create_connection((host, port), timeout=timeout)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    c = Client(s, timeout)
    try:
        c.handshake(secret, peer_name)
    except BaseException:
        c.close()
        raise
    return c


def read_secret(path):
    """The 32-byte secret from a secrets file (64 hex digits)."""
    with open(path) as f:
        return bytes.fromhex(f.read().strip())
