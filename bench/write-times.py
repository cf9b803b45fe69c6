#!/usr/bin/env python3
"""write-times DEVICE SECONDS TIMES: write 4 KiB blocks at queue depth 1.

O_DIRECT | O_DSYNC writes, one at a time, in order over the first 32 MiB
of DEVICE (wrapping), for SECONDS; for each, "SUBMITTED COMPLETED", the
wall-clock times (CLOCK_REALTIME, ns, as `date +%s%N` prints them) at
which it was issued and completed, goes to TIMES, a line each, flushed at
once.  A write that fails ends it (exit 1), so a
run that completes is a run in which the device never failed a request.
bench/run uses it on the loop fallback's device to measure the time from
a worker's kill -9 to the completion of the first write issued after it.
"""
import mmap
import os
import sys
import time

BLOCK = 4096
SPAN = 32 << 20


def main():
    if len(sys.argv) != 4:
        print(__doc__.splitlines()[0], file=sys.stderr)
        return 2
    dev, seconds, out = sys.argv[1], float(sys.argv[2]), sys.argv[3]
    buf = mmap.mmap(-1, BLOCK)  # page-aligned, as O_DIRECT needs
    buf.write(b"\xa5" * BLOCK)
    fd = os.open(dev, os.O_WRONLY | os.O_DIRECT | os.O_DSYNC)
    end = time.monotonic() + seconds
    off = 0
    with open(out, "w", encoding="ascii") as times:
        try:
            while time.monotonic() < end:
                t0 = time.time_ns()
                if os.pwrite(fd, buf, off) != BLOCK:
                    raise OSError("short write at %d" % off)
                times.write("%d %d\n" % (t0, time.time_ns()))
                times.flush()
                off = (off + BLOCK) % SPAN
        except OSError as e:
            print("write-times: %s: %s" % (dev, e), file=sys.stderr)
            return 1
        finally:
            os.close(fd)
    return 0


if __name__ == "__main__":
    sys.exit(main())
