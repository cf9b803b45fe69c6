#!/usr/bin/env python3
"""acked-writes SOCKET COUNT LOG: write 4 KiB blocks over NBD, one at a time.

Block i goes to offset i * 4096 and is filled with byte (i % 251) + 1.
Each write the server acknowledges (error 0) is logged as "offset byte"
and the log is flushed at once, so that a test can kill the server at any
point and check that every acknowledged write is in the image.  Stops at
COUNT writes or when the server closes the connection.  A test tool: it
speaks only the parts of the NBD protocol it needs (fixed newstyle,
NBD_OPT_GO, simple replies).
"""
import socket
import struct
import sys

NBDMAGIC = 0x4E42444D41474943
IHAVEOPT = 0x49484156454F5054
OPT_REPLY_MAGIC = 0x3E889045565A9
REQUEST_MAGIC = 0x25609513
SIMPLE_REPLY_MAGIC = 0x67446698
OPT_GO = 7
REP_ACK = 1
CMD_WRITE = 1
CMD_DISC = 2


def recv_exact(sock, n):
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise EOFError("server closed the connection")
        buf += chunk
    return buf


def handshake(sock):
    magic, opt, flags = struct.unpack(">QQH", recv_exact(sock, 18))
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


def main():
    path, count, log_path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(path)
    handshake(sock)
    with open(log_path, "w", encoding="ascii") as log:
        for i in range(count):
            byte = (i % 251) + 1
            offset = i * 4096
            req = struct.pack(">IHHQQI", REQUEST_MAGIC, 0, CMD_WRITE, i,
                              offset, 4096)
            try:
                sock.sendall(req + bytes([byte]) * 4096)
                magic, error, cookie = struct.unpack(
                    ">IIQ", recv_exact(sock, 16))
            except (EOFError, OSError):
                break
            if magic != SIMPLE_REPLY_MAGIC or cookie != i:
                raise ValueError("bad reply to write %d" % i)
            if error != 0:
                break
            log.write("%d %d\n" % (offset, byte))
            log.flush()
    try:
        sock.sendall(struct.pack(">IHHQQI", REQUEST_MAGIC, 0, CMD_DISC, 0,
                                 0, 0))
    except OSError:
        pass
    sock.close()


if __name__ == "__main__":
    main()
