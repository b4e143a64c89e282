"""Mailbox calls of the sqlited RPC (docs/rpc.md) on top of rpcclient.py, and a
load worker meant to run as its own PROCESS (test_sqlited_reliability.py).

    python3 sqlited_ops.py worker SOCKET SECRET_FILE ALIAS PASSWORD NAME COUNT SEED

The worker unlocks ALIAS (password on argv is fine: a throwaway test password),
then does COUNT rounds, each an APPEND to INBOX (idempotency key NAME-i) and a
STORE on one random UID among those it has seen (its own and, through
FETCH_META, the other worker's), adding the keyword NAME-k and a flag. Every
acknowledged result is printed as one JSON line on stdout:

    {"op": "append", "seq": i, "uid": u, "modseq": m}
    {"op": "store", "uid": u, "keyword": "NAME-k", "flags": f, "modseq": m}

and finally {"op": "done"}. Anything that was not acknowledged is not printed.
"""
import json
import os
import random
import struct
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import rpcclient  # noqa: E402
from rpcclient import get, get_all  # noqa: E402

OP_UNLOCK, OP_LOCK = 16, 17
OP_MAILBOX_CREATE, OP_MAILBOX_STATUS = 33, 37
OP_APPEND, OP_FETCH_META, OP_FETCH_BODY, OP_STORE, OP_EXPUNGE = 48, 49, 50, 51, 54
OP_DELIVER = 64

T_SESSION, T_ALIAS, T_PASSWORD = 16, 17, 18
T_MAILBOX, T_MAILBOX_INFO = 23, 28
T_UIDVALIDITY, T_UIDNEXT, T_HIGHESTMODSEQ, T_MESSAGES = 29, 30, 31, 32
T_SIZE, T_UID, T_UIDSET, T_UIDS, T_MODSEQ = 35, 40, 41, 42, 43
T_FLAGS, T_KEYWORD, T_MESSAGE, T_IDEMPOTENCY_KEY, T_MODE = 46, 47, 52, 53, 54
T_FAILED, T_WANT, T_ADDRESS, T_DELIVERED, T_CLIENT_ADDR = 55, 61, 80, 86, 91

EAUTH, ENOTFOUND = 2, 7
EUNAVAILABLE, ENOSESSION = 118, 116
F_SEEN, F_ANSWERED, F_FLAGGED, F_DELETED, F_DRAFT = 1, 2, 4, 8, 16


def uidset(*ranges):
    """Packed UID set: (lo, hi) pairs, or single UIDs."""
    out = b""
    for r in ranges:
        lo, hi = (r, r) if isinstance(r, int) else r
        out += struct.pack(">II", lo, hi)
    return out


def uid_list(b):
    return [struct.unpack(">I", b[i:i + 4])[0] for i in range(0, len(b), 4)]


def unlock(c, alias, password, client_addr=None):
    f = [(T_ALIAS, alias), (T_PASSWORD, password)]
    if client_addr is not None:
        f.append((T_CLIENT_ADDR, client_addr))
    return get(c.call(OP_UNLOCK, f), T_SESSION)


def append(c, session, mailbox, body, key=None, flags=None):
    f = [(T_SESSION, session), (T_MAILBOX, mailbox), (T_SIZE, len(body))]
    if flags is not None:
        f.append((T_FLAGS, flags))
    if key is not None:
        f.append((T_IDEMPOTENCY_KEY, key))
    r = c.call(OP_APPEND, f, body=body)
    return get(r, T_UID), get(r, T_MODSEQ)


def deliver(c, address, body, key=None):
    f = [(T_ADDRESS, address), (T_SIZE, len(body))]
    if key is not None:
        f.append((T_IDEMPOTENCY_KEY, key))
    return get_all(c.call(OP_DELIVER, f, body=body), T_DELIVERED)


def status(c, session, mailbox):
    """MAILBOX_INFO as a dict of tag -> value."""
    info = get(c.call(OP_MAILBOX_STATUS, [(T_SESSION, session), (T_MAILBOX, mailbox)]),
               T_MAILBOX_INFO)
    return {t: v for t, v in info}


def fetch_meta(c, session, mailbox):
    """[{uid, modseq, flags, keywords}] in UID order."""
    out = []
    for m in get_all(c.call(OP_FETCH_META, [(T_SESSION, session), (T_MAILBOX, mailbox)]),
                     T_MESSAGE):
        out.append({"uid": get(m, T_UID), "modseq": get(m, T_MODSEQ),
                    "flags": get(m, T_FLAGS, 0), "size": get(m, T_SIZE),
                    "keywords": sorted(k.decode() for k in get_all(m, T_KEYWORD))})
    return out


def fetch_body(c, session, mailbox, uid):
    _, body = c.call(OP_FETCH_BODY, [(T_SESSION, session), (T_MAILBOX, mailbox),
                                     (T_UID, uid), (T_WANT, 1)], want_body=True)
    return body


def store(c, session, mailbox, uid, mode, flags=None, keywords=()):
    """One UID: returns the new MODSEQ of the message (None if unchanged)."""
    f = [(T_SESSION, session), (T_MAILBOX, mailbox), (T_UIDSET, uidset(uid)), (T_MODE, mode)]
    if flags is not None:
        f.append((T_FLAGS, flags))
    for k in keywords:
        f.append((T_KEYWORD, k))
    msgs = get_all(c.call(OP_STORE, f), T_MESSAGE)
    for m in msgs:
        if get(m, T_UID) == uid:
            return get(m, T_MODSEQ)
    return None


def expunge(c, session, mailbox, uids=None):
    f = [(T_SESSION, session), (T_MAILBOX, mailbox)]
    if uids is not None:
        f.append((T_UIDSET, uidset(*uids)))
    return uid_list(get(c.call(OP_EXPUNGE, f), T_UIDS, b""))


def worker(sock, secret_file, alias, password, name, count, seed):
    rnd = random.Random(seed)
    c = rpcclient.connect_unix(sock, rpcclient.read_secret(secret_file), timeout=60)
    session = unlock(c, alias, password)
    known = []
    flag_bits = (F_SEEN, F_ANSWERED, F_FLAGGED, F_DRAFT)
    for i in range(count):
        body = (f"Subject: {name} {i}\r\nX-Worker: {name}\r\n\r\n"
                f"{'x' * rnd.randrange(10, 3000)}\r\n").encode()
        uid, modseq = append(c, session, "INBOX", body, key=f"{name}-{i}".encode())
        print(json.dumps({"op": "append", "seq": i, "uid": uid, "modseq": modseq}), flush=True)
        known.append(uid)
        if i % 10 == 9:  # learn the other worker's UIDs too
            known = [m["uid"] for m in fetch_meta(c, session, "INBOX")]
        target = rnd.choice(known)
        kw = f"{name}-{i}"
        fl = rnd.choice(flag_bits)
        modseq = store(c, session, "INBOX", target, 1, flags=fl, keywords=[kw])
        print(json.dumps({"op": "store", "uid": target, "keyword": kw, "flags": fl,
                          "modseq": modseq}), flush=True)
    print(json.dumps({"op": "done"}), flush=True)
    c.close()


if __name__ == "__main__":
    if len(sys.argv) == 9 and sys.argv[1] == "worker":
        a = sys.argv[2:]
        worker(a[0], a[1], a[2], a[3], a[4], int(a[5]), int(a[6]))
    else:
        sys.exit(__doc__)
