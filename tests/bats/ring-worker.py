#!/usr/bin/env python3
# SPDX-License-Identifier: LGPL-2.1-or-later
"""A stand-in for a worker whose ring is connected, for tests/bats/xenbus.bats.

This machine has no /dev/xen, so a real worker's blkif-connect fails before
any ring exists, and blkstack-xenbus never reaches Connected with it.  This
script answers the control socket (docs/control-protocol.txt) as a worker
with a connected ring does, so that blkstack-xenbus's side of blkif-watch
runs for real against the real xenstored: blkif-connect answers with the
backend nodes, blkif-watch answers ok and keeps the connection, and
blkif-disconnect answers ok (and ends the watches, as the worker's does).
The test acts on it with a command of its own on a fresh connection:

  test-break REASON   every watch gets the broken-ring event line, then is
                      closed (what the worker does when the guest breaks
                      the ring)

Killing it (SIGKILL) is the worker's crash.  Every command and every watch
that ends is appended to LOG, one line each.

usage: ring-worker.py RUNDIR NAME LOG
"""
import json
import os
import selectors
import socket
import sys

rundir, name, log_path = sys.argv[1:4]
os.makedirs(os.path.join(rundir, name), exist_ok=True)
path = os.path.join(rundir, name, "ctl.sock")
if os.path.exists(path):
    os.unlink(path)
listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
listener.bind(path)
listener.listen(8)
sel = selectors.DefaultSelector()
sel.register(listener, selectors.EVENT_READ)
bufs = {}
watches = set()


def log(line):
    with open(log_path, "a", encoding="utf-8") as f:
        f.write(line + "\n")


def send(conn, obj):
    conn.sendall((json.dumps(obj, separators=(",", ":")) + "\n").encode())


def close(conn):
    sel.unregister(conn)
    bufs.pop(conn, None)
    watches.discard(conn)
    conn.close()


def end_watches(state, why):
    for w in list(watches):
        send(w, {"event": "blkif", "blkif": state, "error": name + ": " + why})
        close(w)


def command(conn, line):
    log(line)
    words = line.split()
    cmd = words[0] if words else ""
    if cmd == "blkif-connect":
        send(conn, {"ok": True, "sectors": 32768, "sector_size": 512,
                    "physical_sector_size": 512, "info": 0,
                    "feature_flush_cache": 1, "feature_discard": 0,
                    "discard_granularity": 0, "discard_alignment": 0,
                    "feature_max_indirect_segments": 0, "ring_size": 32})
    elif cmd == "blkif-watch":
        send(conn, {"ok": True, "blkif": "connected"})
        watches.add(conn)
    elif cmd == "blkif-disconnect":
        end_watches("none", "blkif: the ring of domain 5 was disconnected")
        send(conn, {"ok": True})
    elif cmd == "test-break":
        end_watches("broken", "blkif: the ring of domain 5 is broken: " +
                    " ".join(words[1:]))
        send(conn, {"ok": True})
    else:
        send(conn, {"ok": False, "error": name + ": unknown command",
                    "errno": "ENOSYS"})


print("ready", flush=True)
while True:
    for key, _ in sel.select():
        sock = key.fileobj
        if sock is listener:
            conn, _ = listener.accept()
            sel.register(conn, selectors.EVENT_READ)
            bufs[conn] = b""
            continue
        data = sock.recv(4096)
        if not data:
            if sock in watches:
                log("watch closed")
            close(sock)
            continue
        bufs[sock] += data
        while sock in bufs and b"\n" in bufs[sock] and sock not in watches:
            line, bufs[sock] = bufs[sock].split(b"\n", 1)
            command(sock, line.decode().strip())
