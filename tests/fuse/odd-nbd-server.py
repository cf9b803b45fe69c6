#!/usr/bin/env python3
"""odd-nbd-server SOCKET MODE: a small NBD server that misbehaves once.

Serves a 1 MiB export whose every byte is 0x5a, fixed newstyle, NBD_OPT_GO
only, simple replies; READ, WRITE (discarded), FLUSH and DISC.  On its
first connection it breaks the protocol at the first request, by MODE:

  bad-cookie  answers it with a cookie that was never sent
  bad-magic   answers it with a wrong reply magic
  garbage     answers it with 16 random bytes

and closes that connection; the second and later connections are served
properly.  Each connection is logged to stdout ("conn N").  A test tool
for blkstack-fuse's NBD client (tests/bats/fuse.bats).
"""
import os
import socket
import struct
import sys

NBDMAGIC = 0x4E42444D41474943
IHAVEOPT = 0x49484156454F5054
REP_MAGIC = 0x3E889045565A9
REQ_MAGIC = 0x25609513
SIMPLE_MAGIC = 0x67446698
OPT_GO = 7
REP_ACK = 1
REP_INFO = 3
INFO_EXPORT = 0
REP_ERR_UNSUP = (1 << 31) | 1
SIZE = 1 << 20
FLAGS = 1 | 4  # HAS_FLAGS | SEND_FLUSH


def recv_exact(c, n):
    buf = b""
    while len(buf) < n:
        chunk = c.recv(n - len(buf))
        if not chunk:
            raise EOFError
        buf += chunk
    return buf


def handshake(c):
    c.sendall(struct.pack(">QQH", NBDMAGIC, IHAVEOPT, 1))
    recv_exact(c, 4)  # client flags
    while True:
        magic, opt, length = struct.unpack(">QII", recv_exact(c, 16))
        if magic != IHAVEOPT:
            raise ValueError("bad option magic")
        recv_exact(c, length)
        if opt != OPT_GO:
            c.sendall(struct.pack(">QIII", REP_MAGIC, opt, REP_ERR_UNSUP, 0))
            continue
        info = struct.pack(">HQH", INFO_EXPORT, SIZE, FLAGS)
        c.sendall(struct.pack(">QIII", REP_MAGIC, opt, REP_INFO, len(info)))
        c.sendall(info)
        c.sendall(struct.pack(">QIII", REP_MAGIC, opt, REP_ACK, 0))
        return


def serve(c, n, mode):
    handshake(c)
    while True:
        magic, _flags, cmd, cookie, off, length = struct.unpack(
            ">IHHQQI", recv_exact(c, 28))
        if magic != REQ_MAGIC:
            return
        if cmd == 1:
            recv_exact(c, length)
        if n == 1:
            if mode == "bad-cookie":
                c.sendall(struct.pack(">IIQ", SIMPLE_MAGIC, 0, cookie ^ 0x55))
            elif mode == "bad-magic":
                c.sendall(struct.pack(">IIQ", 0x12345678, 0, cookie))
            else:
                c.sendall(os.urandom(16))
            return
        if cmd == 2:
            return
        c.sendall(struct.pack(">IIQ", SIMPLE_MAGIC, 0, cookie))
        if cmd == 0:
            c.sendall(b"\x5a" * length)


def main():
    path, mode = sys.argv[1], sys.argv[2]
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(path)
    s.listen(4)
    print("listening", flush=True)
    n = 0
    while True:
        c, _ = s.accept()
        n += 1
        print("conn %d" % n, flush=True)
        try:
            serve(c, n, mode)
        except (EOFError, ConnectionError, ValueError):
            pass
        c.close()


if __name__ == "__main__":
    main()
