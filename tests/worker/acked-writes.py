#!/usr/bin/env python3
"""acked-writes [--reconnect SECONDS] [--depth N] [--ack-times FILE] [--wrap BLOCKS] SOCKET COUNT LOG

Write 4 KiB blocks over NBD.  Block i goes to offset i * 4096 and is
filled with byte (i % 251) + 1.  Each write the server acknowledges
(error 0) is logged as "offset byte" and the log is flushed at once, so
that a test can kill the server at any point and check that every
acknowledged write is in the image.  A test tool: it speaks only the
parts of the NBD protocol it needs (fixed newstyle, NBD_OPT_GO, simple
replies).

By default one write is in flight at a time, and it stops at COUNT
writes, at an error reply or when the server closes the connection
(exit status 0 in every case; it prints nothing).

--depth N keeps up to N writes in flight (replies may come in any order;
they are matched by cookie).

--reconnect SECONDS: when the connection fails (EOF, reset, refused, the
socket gone), connect to the same socket again, retrying every 20 ms for
at most SECONDS from the failure, and re-send every write that was not
acknowledged (a block write is idempotent), then go on until COUNT
writes are acknowledged.  An error reply is then a failure (exit 1), and
so is an outage longer than SECONDS (exit 1).  At the end it prints one
line:  "acked=A reconnects=R longest_outage_ms=M"  where an outage runs
from the failure to the first write acknowledged after it.  --depth
alone prints the line too.

--wrap BLOCKS: block i goes to offset (i % BLOCKS) * 4096 instead, so
that a long run fits a small image (bench/run); a later write of a block
then replaces an earlier one, so only a block's last logged write is
what the image must hold.

--ack-times FILE: for each acknowledged write, "SENT ACKED": the
wall-clock times (CLOCK_REALTIME, ns, as `date +%s%N` prints them) at
which it was last sent (a re-send counts) and acknowledged, a line each,
flushed at once.  bench/run measures with it the time from a kill to
the first acknowledgement of a write sent after the kill.
"""
import argparse
import errno
import socket
import struct
import sys
import time

NBDMAGIC = 0x4E42444D41474943
IHAVEOPT = 0x49484156454F5054
OPT_REPLY_MAGIC = 0x3E889045565A9
REQUEST_MAGIC = 0x25609513
SIMPLE_REPLY_MAGIC = 0x67446698
OPT_GO = 7
REP_ACK = 1
CMD_WRITE = 1
CMD_DISC = 2
WRAP = 0  # --wrap: blocks, 0 for none
RETRY_S = 0.02


class Failed(Exception):
    """The run failed for good (exit 1)."""


def recv_exact(sock, n):
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise EOFError("server closed the connection")
        buf += chunk
    return buf


def handshake(sock):
    magic, opt, _ = struct.unpack(">QQH", recv_exact(sock, 18))
    if magic != NBDMAGIC or opt != IHAVEOPT:
        raise ValueError("not a newstyle NBD server")
    sock.sendall(struct.pack(">I", 1 | 2))  # FIXED_NEWSTYLE | NO_ZEROES
    data = struct.pack(">IH", 0, 0)  # export "" and no info requests
    sock.sendall(struct.pack(">QII", IHAVEOPT, OPT_GO, len(data)) + data)
    while True:
        magic, _, rtype, length = struct.unpack(">QIII", recv_exact(sock, 20))
        if magic != OPT_REPLY_MAGIC:
            raise ValueError("bad option reply magic")
        recv_exact(sock, length)
        if rtype == REP_ACK:
            return
        if rtype & 0x80000000:
            raise ValueError("NBD_OPT_GO refused: %#x" % rtype)


def connect(path):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(path)
        handshake(sock)
    except BaseException:
        sock.close()
        raise
    return sock


def reconnect(path, seconds, since):
    """A new connection, retrying until since + seconds; or Failed."""
    deadline = since + seconds
    last = None
    while True:
        try:
            return connect(path)
        except (EOFError, OSError, ValueError) as e:
            # A worker half up may refuse the handshake: retried too.
            last = e
        if time.monotonic() + RETRY_S > deadline:
            raise Failed("no connection to %s within %g s of the failure "
                         "(last: %s)" % (path, seconds, last))
        time.sleep(RETRY_S)


def offset(i):
    return (i % WRAP if WRAP else i) * 4096


def send_write(sock, i, sent):
    sent[i] = time.time_ns()
    byte = (i % 251) + 1
    req = struct.pack(">IHHQQI", REQUEST_MAGIC, 0, CMD_WRITE, i, offset(i),
                      4096)
    sock.sendall(req + bytes([byte]) * 4096)


def run(args, log, times):
    """Returns (acked, reconnects, longest outage in ms)."""
    sock = connect(args.socket)
    inflight = set()  # cookies (block numbers) sent, not acknowledged
    sent = {}  # cookie: when it was last sent (CLOCK_REALTIME ns)
    next_i = 0
    acked = reconnects = 0
    longest = 0.0
    outage_since = None  # when the connection failed, until the next ack
    try:
        while next_i < args.count or inflight:
            try:
                while len(inflight) < args.depth and next_i < args.count:
                    inflight.add(next_i)
                    next_i += 1
                    send_write(sock, next_i - 1, sent)
                magic, error, cookie = struct.unpack(
                    ">IIQ", recv_exact(sock, 16))
            except (EOFError, OSError):
                if args.reconnect is None:
                    return acked, reconnects, longest
                if outage_since is None:
                    outage_since = time.monotonic()
                sock.close()
                sock = reconnect(args.socket, args.reconnect, outage_since)
                reconnects += 1
                try:
                    for i in sorted(inflight):
                        send_write(sock, i, sent)
                except (EOFError, OSError):
                    pass  # failed again at once: the next recv says so
                continue
            if magic != SIMPLE_REPLY_MAGIC or cookie not in inflight:
                raise ValueError("bad reply (cookie %d)" % cookie)
            if error != 0:
                if args.reconnect is not None:
                    raise Failed("write %d (offset %d) failed: %s" %
                                 (cookie, offset(cookie),
                                  errno.errorcode.get(error, error)))
                return acked, reconnects, longest
            inflight.discard(cookie)
            log.write("%d %d\n" % (offset(cookie), (cookie % 251) + 1))
            log.flush()
            if times is not None:
                times.write("%d %d\n" % (sent[cookie], time.time_ns()))
                times.flush()
            del sent[cookie]
            acked += 1
            if outage_since is not None:
                longest = max(longest, time.monotonic() - outage_since)
                outage_since = None
    finally:
        try:
            sock.sendall(struct.pack(">IHHQQI", REQUEST_MAGIC, 0, CMD_DISC,
                                     0, 0, 0))
        except OSError:
            pass
        sock.close()
    return acked, reconnects, longest


def main():
    p = argparse.ArgumentParser(
        description="Write 4 KiB blocks over NBD, logging each "
        "acknowledged one.")
    p.add_argument("--reconnect", type=float, metavar="SECONDS",
                   help="reconnect after a failed connection, for at most "
                   "SECONDS per outage, re-sending unacknowledged writes")
    p.add_argument("--depth", type=int, default=1, metavar="N",
                   help="writes in flight at once (default 1)")
    p.add_argument("--ack-times", metavar="FILE",
                   help="write each acknowledged write's send and "
                   "acknowledgement times (CLOCK_REALTIME ns)")
    p.add_argument("--wrap", type=int, default=0, metavar="BLOCKS",
                   help="write block i at (i %% BLOCKS) * 4096")
    p.add_argument("socket")
    p.add_argument("count", type=int)
    p.add_argument("log")
    args = p.parse_args()
    global WRAP
    if args.wrap < 0:
        p.error("--wrap: at least 1 block")
    WRAP = args.wrap
    if args.depth < 1 or args.depth > 1024:
        p.error("--depth: 1 to 1024")
    if args.reconnect is not None and not 0 < args.reconnect <= 3600:
        p.error("--reconnect: more than 0, at most 3600 seconds")
    times = (open(args.ack_times, "w", encoding="ascii")
             if args.ack_times else None)
    with open(args.log, "w", encoding="ascii") as log:
        try:
            acked, reconnects, longest = run(args, log, times)
        except Failed as e:
            print("acked-writes: %s" % e, file=sys.stderr)
            return 1
        finally:
            if times is not None:
                times.close()
    if args.reconnect is not None or args.depth > 1:
        print("acked=%d reconnects=%d longest_outage_ms=%d" %
              (acked, reconnects, int(longest * 1000)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
