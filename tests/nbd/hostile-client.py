#!/usr/bin/env python3
# SPDX-License-Identifier: LGPL-2.1-or-later
"""A misbehaving (and a pedantic) NBD client, for tests/bats/nbd.bats.

    hostile-client.py SOCKET SCENARIO...

Each scenario talks to the NBD server on the Unix socket SOCKET and checks
that it answers the way the NBD protocol says (doc/proto.md of the
NetworkBlockDevice/nbd project), or hangs up where it should.  It prints
one line per scenario and exits 1 at the first one that fails.

Scenarios that break the protocol: garbage, bad-flags, bad-option-magic,
bad-request-magic, huge-write, mid-header, mid-payload, mid-option.
Scenarios that check edge cases: options, too-big-option, errors,
past-end, simple-replies, unaligned, same-block, zeroes-unaligned,
trim-unaligned, pipeline, block-status, read-only.
Scenarios for the connection limits (nbd-server.h): idle-flood checks a
new client is served while 16 idle clients fill the table, round after
round; idle-hold and no-read hold 16 connections ($HOSTILE_FLOOD; idle
after the handshake, or sending 32 MiB reads and never reading a reply)
until killed (at most HOLD seconds), after printing "holding N".

Only the standard library: it runs wherever python3 does.
"""

import os
import random
import socket
import struct
import sys
import threading
import time

NBDMAGIC = 0x4E42444D41474943
IHAVEOPT = 0x49484156454F5054
REPLY_MAGIC = 0x3E889045565A9
REQUEST_MAGIC = 0x25609513
SIMPLE_MAGIC = 0x67446698
STRUCTURED_MAGIC = 0x668E33EF

OPT_EXPORT_NAME, OPT_ABORT, OPT_LIST, OPT_STARTTLS = 1, 2, 3, 5
OPT_INFO, OPT_GO, OPT_STRUCTURED_REPLY = 6, 7, 8
OPT_LIST_META_CONTEXT, OPT_SET_META_CONTEXT = 9, 10

REP_ACK, REP_SERVER, REP_INFO, REP_META_CONTEXT = 1, 2, 3, 4
REP_ERR_UNSUP = 2**31 + 1
REP_ERR_POLICY = 2**31 + 2
REP_ERR_INVALID = 2**31 + 3
REP_ERR_UNKNOWN = 2**31 + 6
REP_ERR_TOO_BIG = 2**31 + 9

INFO_EXPORT, INFO_NAME, INFO_DESCRIPTION, INFO_BLOCK_SIZE = 0, 1, 2, 3

FLAG_READ_ONLY = 1 << 1

CMD_READ, CMD_WRITE, CMD_DISC, CMD_FLUSH, CMD_TRIM = 0, 1, 2, 3, 4
CMD_CACHE, CMD_WRITE_ZEROES, CMD_BLOCK_STATUS = 5, 6, 7
CMD_FLAG_FUA, CMD_FLAG_NO_HOLE, CMD_FLAG_DF = 1, 2, 4
CMD_FLAG_REQ_ONE, CMD_FLAG_FAST_ZERO = 8, 16

REPLY_TYPE_OFFSET_DATA = 1
REPLY_TYPE_BLOCK_STATUS = 5
REPLY_TYPE_ERROR = 2**15 + 1

EPERM, EIO, EINVAL, ENOSPC, EOVERFLOW = 1, 5, 22, 28, 75

TIMEOUT = 20
# How many connections the limit scenarios open (the server's default
# table; $HOSTILE_FLOOD overrides), and how long the hold scenarios hold.
FLOOD = int(os.environ.get("HOSTILE_FLOOD", "16"))
HOLD = 120


class Fail(Exception):
    pass


def check(cond, what):
    if not cond:
        raise Fail(what)


class Client:
    """Just enough of an NBD client, with every step exposed."""

    def __init__(self, path):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(TIMEOUT)
        self.sock.connect(path)
        self.structured = False
        self.size = None
        self.flags = None
        self.block = None

    def close(self):
        self.sock.close()

    def send(self, data):
        self.sock.sendall(data)

    def recv(self, n):
        buf = b""
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise Fail("server closed the connection unexpectedly")
            buf += chunk
        return buf

    def closed_by_server(self):
        """True if the server hangs up (reads end of file) in time."""
        try:
            while True:
                if not self.sock.recv(65536):
                    return True
        except ConnectionResetError:
            return True
        except socket.timeout:
            return False

    # ---- handshake

    def greeting(self, flags=3):
        magic, opt, hflags = struct.unpack(">QQH", self.recv(18))
        check(magic == NBDMAGIC and opt == IHAVEOPT, "bad greeting")
        check(hflags & 1, "server is not fixed newstyle")
        self.send(struct.pack(">I", flags))

    def option(self, opt, data=b""):
        self.send(struct.pack(">QII", IHAVEOPT, opt, len(data)) + data)

    def reply(self):
        magic, opt, rtype, length = struct.unpack(">QIII", self.recv(20))
        check(magic == REPLY_MAGIC, "bad option reply magic")
        return opt, rtype, self.recv(length)

    def replies(self):
        """All replies up to the final one (ACK or an error)."""
        out = []
        while True:
            r = self.reply()
            out.append(r)
            if r[1] == REP_ACK or r[1] & 2**31:
                return out

    def go(self, name=b"", structured=True, meta=False):
        if structured:
            self.option(OPT_STRUCTURED_REPLY)
            check(self.reply()[1] == REP_ACK, "no structured replies")
            self.structured = True
        if meta:
            q = b"base:allocation"
            data = (struct.pack(">I", len(name)) + name + struct.pack(">I", 1)
                    + struct.pack(">I", len(q)) + q)
            self.option(OPT_SET_META_CONTEXT, data)
            r = self.replies()
            check(r[-1][1] == REP_ACK, "SET_META_CONTEXT failed")
            check(len(r) == 2 and r[0][1] == REP_META_CONTEXT,
                  "base:allocation not selected")
            self.ctx = struct.unpack(">I", r[0][2][:4])[0]
        data = (struct.pack(">I", len(name)) + name
                + struct.pack(">HH", 1, INFO_BLOCK_SIZE))
        self.option(OPT_GO, data)
        for _, rtype, payload in self.replies():
            check(rtype in (REP_INFO, REP_ACK), "GO failed: %#x" % rtype)
            if rtype == REP_INFO:
                kind = struct.unpack(">H", payload[:2])[0]
                if kind == INFO_EXPORT:
                    self.size, self.flags = struct.unpack(">QH", payload[2:])
                elif kind == INFO_BLOCK_SIZE:
                    self.block = struct.unpack(">III", payload[2:])
        check(self.size is not None, "no NBD_INFO_EXPORT")
        return self

    # ---- transmission

    def request(self, cmd, offset, length, cookie, flags=0, data=b""):
        self.send(struct.pack(">IHHQQI", REQUEST_MAGIC, flags, cmd, cookie,
                              offset, length) + data)

    def response(self, lengths):
        """One reply: (cookie, error, data).  lengths: cookie -> read length
        (needed to parse simple read replies)."""
        magic = struct.unpack(">I", self.recv(4))[0]
        if magic == SIMPLE_MAGIC:
            err, cookie = struct.unpack(">IQ", self.recv(12))
            n = lengths.get(cookie, 0) if err == 0 else 0
            return cookie, err, self.recv(n)
        check(magic == STRUCTURED_MAGIC, "bad reply magic %#x" % magic)
        flags, rtype, cookie, length = struct.unpack(">HHQI", self.recv(16))
        payload = self.recv(length)
        check(flags & 1, "multi-chunk reply (we only expect one)")
        if rtype == REPLY_TYPE_OFFSET_DATA:
            return cookie, 0, payload[8:]
        if rtype == REPLY_TYPE_BLOCK_STATUS:
            return cookie, 0, payload
        if rtype == REPLY_TYPE_ERROR:
            err, mlen = struct.unpack(">IH", payload[:6])
            check(mlen <= length - 6, "bad error message length")
            check(err != 0, "structured error with error 0")
            return cookie, err, payload[6:6 + mlen]
        if rtype == 0:
            return cookie, 0, b""
        raise Fail("unexpected reply type %d" % rtype)

    def cmd(self, cmd, offset, length, flags=0, data=b""):
        self.request(cmd, offset, length, 0x1234, flags, data)
        cookie, err, payload = self.response({0x1234: length
                                              if cmd == CMD_READ else 0})
        check(cookie == 0x1234, "wrong cookie in reply")
        return err, payload

    def read(self, offset, length):
        err, data = self.cmd(CMD_READ, offset, length)
        check(err == 0, "read %d+%d failed: %d" % (offset, length, err))
        check(len(data) == length, "short read")
        return data

    def write(self, offset, data, flags=0):
        err, _ = self.cmd(CMD_WRITE, offset, len(data), flags, data)
        check(err == 0, "write %d+%d failed: %d" % (offset, len(data), err))

    def disc(self):
        self.request(CMD_DISC, 0, 0, 0)
        check(self.closed_by_server(), "no close after NBD_CMD_DISC")
        self.close()


# ---- scenarios that break the protocol: the server must hang up ---------


def sc_garbage(path):
    c = Client(path)
    c.recv(18)
    c.send(os.urandom(64))
    check(c.closed_by_server(), "still connected after garbage")


def sc_bad_flags(path):
    c = Client(path)
    c.greeting(flags=0x80000001)
    check(c.closed_by_server(), "unknown client flag accepted")
    c = Client(path)
    c.greeting(flags=0)  # not fixed newstyle
    check(c.closed_by_server(), "non-fixed-newstyle client accepted")


def sc_bad_option_magic(path):
    c = Client(path)
    c.greeting()
    c.send(struct.pack(">QII", 0x1122334455667788, OPT_GO, 0))
    check(c.closed_by_server(), "bad option magic accepted")


def sc_bad_request_magic(path):
    c = Client(path)
    c.greeting()
    c.go()
    c.send(struct.pack(">IHHQQI", 0xDEADBEEF, 0, CMD_READ, 1, 0, 512))
    check(c.closed_by_server(), "bad request magic accepted")


def sc_huge_write(path):
    """A write payload over the maximum cannot be skipped: hang up."""
    c = Client(path)
    c.greeting()
    c.go()
    try:
        c.request(CMD_WRITE, 0, 64 << 20, 7)
        c.send(b"\0" * 4096)
    except (BrokenPipeError, ConnectionResetError):
        return  # hung up already
    check(c.closed_by_server(), "64 MiB write accepted")


def sc_mid_header(path):
    c = Client(path)
    c.greeting()
    c.go()
    c.send(struct.pack(">IHH", REQUEST_MAGIC, 0, CMD_READ))
    c.close()


def sc_mid_payload(path):
    c = Client(path)
    c.greeting()
    c.go()
    c.request(CMD_WRITE, 0, 1 << 20, 9)
    c.send(os.urandom(100000))
    c.close()


def sc_mid_option(path):
    c = Client(path)
    c.greeting()
    c.send(struct.pack(">QII", IHAVEOPT, OPT_GO, 100) + b"\0\0")
    c.close()


# ---- scenarios that check edge cases --------------------------------------


def sc_options(path):
    c = Client(path)
    c.greeting()
    c.option(OPT_LIST)
    r = c.replies()
    check(r[-1][1] == REP_ACK and r[0][1] == REP_SERVER, "LIST")
    c.option(OPT_LIST, b"x")
    check(c.reply()[1] == REP_ERR_INVALID, "LIST with data")
    c.option(OPT_STARTTLS)
    check(c.reply()[1] == REP_ERR_POLICY, "STARTTLS")
    c.option(4242)
    check(c.reply()[1] == REP_ERR_UNSUP, "unknown option")
    c.option(OPT_SET_META_CONTEXT, struct.pack(">II", 0, 0))
    check(c.reply()[1] == REP_ERR_INVALID, "meta context before structured")
    name = b"no-such-export"
    c.option(OPT_INFO, struct.pack(">I", len(name)) + name +
             struct.pack(">H", 0))
    check(c.reply()[1] == REP_ERR_UNKNOWN, "INFO of an unknown export")
    c.option(OPT_GO, struct.pack(">I", 1000) + b"short")
    check(c.reply()[1] == REP_ERR_INVALID, "GO with a bad name length")
    c.option(OPT_INFO, struct.pack(">IH", 0, 2) +
             struct.pack(">HH", INFO_NAME, INFO_DESCRIPTION))
    kinds = [struct.unpack(">H", p[:2])[0] for _, t, p in c.replies()
             if t == REP_INFO]
    check(INFO_EXPORT in kinds and INFO_NAME in kinds
          and INFO_BLOCK_SIZE in kinds, "INFO replies: %s" % kinds)
    c.option(OPT_ABORT)
    check(c.reply()[1] == REP_ACK, "ABORT")
    check(c.closed_by_server(), "no close after ABORT")
    # The old way in: NBD_OPT_EXPORT_NAME, then transmission.
    c = Client(path)
    c.greeting(flags=1)  # no NO_ZEROES: 124 zeroes follow
    c.option(OPT_EXPORT_NAME, b"")
    size, flags = struct.unpack(">QH", c.recv(10))
    check(c.recv(124) == b"\0" * 124, "zeroes after EXPORT_NAME")
    c.size = size
    c.read(0, 512)
    c.disc()
    c = Client(path)
    c.greeting()
    c.option(OPT_EXPORT_NAME, b"no-such-export")
    check(c.closed_by_server(), "unknown EXPORT_NAME accepted")


def sc_too_big_option(path):
    c = Client(path)
    c.greeting()
    c.option(OPT_INFO, b"\0" * (1 << 20))
    check(c.reply()[1] == REP_ERR_TOO_BIG, "1 MiB option")
    c.go()  # and the session goes on
    c.read(0, 4096)
    c.disc()


def sc_errors(path):
    c = Client(path)
    c.greeting()
    c.go()
    check(c.cmd(CMD_READ, 0, 64 << 20)[0] in (EOVERFLOW, EINVAL),
          "64 MiB read")
    check(c.cmd(CMD_CACHE, 0, 512)[0] == EINVAL, "CACHE")
    check(c.cmd(99, 0, 512)[0] == EINVAL, "unknown command")
    check(c.cmd(CMD_READ, 0, 512, flags=0x40)[0] == EINVAL, "unknown flag")
    check(c.cmd(CMD_WRITE_ZEROES, 0, 512, flags=CMD_FLAG_FAST_ZERO)[0] ==
          EINVAL, "FAST_ZERO (not offered)")
    check(c.cmd(CMD_BLOCK_STATUS, 0, 512)[0] == EINVAL,
          "BLOCK_STATUS without a context")
    check(c.cmd(CMD_READ, 0, 0)[0] == EINVAL, "zero-length read")
    c.read(0, 512)  # still fine
    c.disc()


def sc_past_end(path):
    c = Client(path)
    c.greeting()
    c.go()
    n = c.size
    check(c.cmd(CMD_READ, n, 512)[0] == EINVAL, "read at the end")
    check(c.cmd(CMD_READ, n - 512, 1024)[0] == EINVAL, "read across the end")
    check(c.cmd(CMD_READ, 2**63, 512)[0] == EINVAL, "read at 2^63")
    check(c.cmd(CMD_READ, 2**64 - 512, 1024)[0] == EINVAL,
          "read wrapping around")
    check(c.cmd(CMD_WRITE, n - 512, 1024, data=b"x" * 1024)[0] == ENOSPC,
          "write across the end")
    check(c.cmd(CMD_WRITE_ZEROES, n, 512)[0] == ENOSPC, "zero past the end")
    check(c.cmd(CMD_TRIM, n + 4096, 512)[0] == ENOSPC, "trim past the end")
    c.read(n - 512, 512)
    c.disc()


def sc_simple_replies(path):
    """Without structured replies: simple replies, no payload on errors."""
    c = Client(path)
    c.greeting()
    c.go(structured=False)
    c.write(4096, b"s" * 4096)
    check(c.read(4096, 4096) == b"s" * 4096, "simple read")
    check(c.cmd(CMD_READ, c.size, 512)[0] == EINVAL, "simple read error")
    check(c.read(4096, 10) == b"s" * 10, "read after an error")
    c.disc()


def verify_model(c, model, what):
    got = c.read(0, len(model))
    if got != bytes(model):
        bad = next(i for i in range(len(model)) if got[i] != model[i])
        raise Fail("%s: data differs at byte %d" % (what, bad))


def sc_unaligned(path):
    """Writes and reads at any byte offset, ignoring the block size (the
    protocol allows it): read-modify-write and widening in the server."""
    c = Client(path)
    c.greeting()
    c.go()
    span = 1 << 20
    model = bytearray(c.read(0, span))
    rnd = random.Random(42)
    for i in range(300):
        off = rnd.randrange(0, span - 1)
        length = rnd.randrange(1, min(span - off, 70000) + 1)
        data = bytes([i & 0xFF]) * length
        fua = CMD_FLAG_FUA if i % 7 == 0 and c.flags & (1 << 3) else 0
        c.write(off, data, fua)
        model[off:off + length] = data
        r_off = rnd.randrange(0, span - 1)
        r_len = rnd.randrange(1, min(span - r_off, 70000) + 1)
        check(c.read(r_off, r_len) == bytes(model[r_off:r_off + r_len]),
              "unaligned read %d+%d" % (r_off, r_len))
    verify_model(c, model, "after unaligned writes")
    c.disc()


def sc_same_block(path):
    """Pipelined writes to different bytes of the same blocks: each must
    land (read-modify-writes of one block must not overlap)."""
    c = Client(path)
    c.greeting()
    c.go()
    base = 3 << 20
    c.write(base, b"\0" * 8192)
    model = bytearray(8192)
    pieces = [(base + i * 100, bytes([0x40 + i]) * 100) for i in range(64)]
    random.Random(7).shuffle(pieces)
    for n, (off, data) in enumerate(pieces):
        c.request(CMD_WRITE, off, len(data), 1000 + n, 0, data)
        model[off - base:off - base + len(data)] = data
    for _ in pieces:
        cookie, err, _ = c.response({})
        check(err == 0, "pipelined write %d failed: %d" % (cookie, err))
    check(c.read(base, 8192) == bytes(model), "pipelined same-block writes")
    c.disc()


def sc_zeroes_unaligned(path):
    c = Client(path)
    c.greeting()
    c.go()
    base = 5 << 20
    c.write(base, b"\xff" * 65536)
    for off, length in ((100, 50), (1000, 3000), (511, 2), (4000, 40000)):
        err, _ = c.cmd(CMD_WRITE_ZEROES, base + off, length)
        check(err == 0, "write_zeroes %d+%d: %d" % (off, length, err))
        got = c.read(base, 65536)
        check(got[off:off + length] == b"\0" * length,
              "zeroes at %d+%d" % (off, length))
        check(got[off - 1] == 0xFF and got[off + length] == 0xFF,
              "write_zeroes %d+%d went too far" % (off, length))
        c.write(base, b"\xff" * 65536)
    err, _ = c.cmd(CMD_WRITE_ZEROES, base, 65536, CMD_FLAG_NO_HOLE)
    check(err == 0 and c.read(base, 65536) == b"\0" * 65536, "NO_HOLE")
    c.disc()


def sc_trim_unaligned(path):
    c = Client(path)
    c.greeting()
    c.go()
    base = 6 << 20
    c.write(base, b"\xee" * 8192)
    check(c.cmd(CMD_TRIM, base + 100, 200)[0] == 0, "trim of a part block")
    check(c.read(base, 8192) == b"\xee" * 8192,
          "a trim inside one block changed data")
    check(c.cmd(CMD_TRIM, base + 100, 8000)[0] == 0, "unaligned trim")
    got = c.read(base, 8192)
    check(got[:100] == b"\xee" * 100 and got[8100:] == b"\xee" * 92,
          "unaligned trim touched bytes outside its range")
    c.disc()


def sc_pipeline(path):
    """Far more requests than the in-flight limit, sent without waiting:
    the server stops reading, then catches up; every reply comes once."""
    c = Client(path)
    c.greeting()
    c.go()
    n = 1000
    lengths = {}
    sizes = [4096, 65536, 512, 131072]
    for i in range(n):
        lengths[i] = sizes[i % len(sizes)]
    got = {}
    errors = []

    def reader():
        try:
            for _ in range(n):
                cookie, err, data = c.response(lengths)
                check(cookie not in got, "cookie %d answered twice" % cookie)
                check(err == 0 and len(data) == lengths[cookie],
                      "pipelined read %d" % cookie)
                got[cookie] = True
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    t = threading.Thread(target=reader)
    t.start()
    for i in range(n):
        c.request(CMD_READ, (i * 4096) % (c.size - 131072), lengths[i], i)
    t.join()
    if errors:
        raise errors[0]
    check(len(got) == n, "missing replies")
    c.disc()


def sc_block_status(path):
    c = Client(path)
    c.greeting()
    c.go(meta=True)
    for flags in (0, CMD_FLAG_REQ_ONE):
        err, payload = c.cmd(CMD_BLOCK_STATUS, 0, c.size, flags)
        check(err == 0, "block status: %d" % err)
        ctx = struct.unpack(">I", payload[:4])[0]
        check(ctx == c.ctx, "block status: wrong context id")
        desc = [struct.unpack(">II", payload[i:i + 8])
                for i in range(4, len(payload), 8)]
        check(desc and all(d[0] > 0 for d in desc), "empty descriptors")
        check(sum(d[0] for d in desc) <= c.size, "descriptors too long")
        if flags:
            check(len(desc) == 1, "REQ_ONE gave %d descriptors" % len(desc))
    check(c.cmd(CMD_BLOCK_STATUS, c.size, 512)[0] == EINVAL,
          "block status past the end")
    c.disc()


def sc_read_only(path):
    c = Client(path)
    c.greeting()
    c.go()
    check(c.flags & FLAG_READ_ONLY, "READ_ONLY flag not set")
    for cmd in (CMD_WRITE, CMD_WRITE_ZEROES, CMD_TRIM):
        data = b"w" * 512 if cmd == CMD_WRITE else b""
        check(c.cmd(cmd, 0, 512, data=data)[0] == EPERM,
              "command %d on a read-only export" % cmd)
    c.read(0, 512)
    c.disc()


# ---- scenarios for the connection limits ----------------------------------


def idlers(path, n=FLOOD):
    """n clients that finish the handshake and then say nothing.  Some may
    be evicted as they come (the table is full): that is the point."""
    out = []
    for _ in range(n):
        try:
            c = Client(path)
            c.greeting()
            out.append(c.go())
        except (Fail, OSError):
            pass  # evicted, or refused, before its handshake ended
    return out


def sc_idle_flood(path):
    """Idle clients that fill the connection table must not lock out a
    new one: round after round, a fresh client is served meanwhile."""
    for rnd in range(3):
        held = idlers(path)
        c = Client(path)
        try:
            c.greeting()
            c.go()
            c.read(0, 4096)
        except (Fail, OSError) as e:
            raise Fail("round %d: a new client was not served with %d idle "
                       "clients open: %s" % (rnd, len(held), e))
        c.disc()
        for h in held:
            h.close()


def hold(conns):
    print("holding %d" % len(conns), flush=True)
    time.sleep(HOLD)


def sc_idle_hold(path):
    hold(idlers(path))


def sc_no_read(path):
    """Clients that send big reads and never read a reply: the server
    must stop reading their requests, not buffer the replies."""
    conns = []
    for _ in range(FLOOD):
        c = Client(path)
        try:
            c.greeting()
            c.go()
        except (Fail, OSError):
            continue  # refused: the server keeps room for others
        size = min(c.block[2] if c.block else 32 << 20, c.size)
        # The kernel may take some of it; the rest is for the server.
        c.sock.setblocking(False)
        for i in range(64):
            try:
                c.request(CMD_READ, 0, size, i)
            except (BlockingIOError, OSError):
                break  # the server stopped reading: back-pressure
        conns.append(c)
    hold(conns)


SCENARIOS = {name[3:].replace("_", "-"): fn
             for name, fn in globals().items() if name.startswith("sc_")}


def main():
    if len(sys.argv) < 3 or any(s not in SCENARIOS for s in sys.argv[2:]):
        sys.stderr.write("usage: hostile-client.py SOCKET SCENARIO...\n"
                         "scenarios: %s\n" % " ".join(sorted(SCENARIOS)))
        return 2
    for name in sys.argv[2:]:
        try:
            SCENARIOS[name](sys.argv[1])
        except (Fail, OSError, struct.error) as e:
            print("FAIL %s: %s" % (name, e))
            return 1
        print("ok %s" % name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
