#!/usr/bin/env python3
"""bench/profile.py RESULTS_DIR OUT.md

Turns what bench/profile collected into a table of where a 4k request's
CPU time goes, per configuration: CPU per request, system calls per
request (by call), and the CPU samples split by the system call they were
taken in.  Standard library only.
"""
import collections
import os
import re
import sys

# x86_64 system call numbers (asm/unistd_64.h) of the calls that matter.
SYSCALLS = {
    0: "read", 1: "write", 17: "pread64", 18: "pwrite64", 19: "readv",
    20: "writev", 44: "sendto", 45: "recvfrom", 46: "sendmsg",
    47: "recvmsg", 202: "futex", 208: "io_getevents", 209: "io_submit",
    228: "clock_gettime", 232: "epoll_wait", 233: "epoll_ctl",
    281: "epoll_pwait", 426: "io_uring_enter", 441: "epoll_pwait2",
    275: "splice", 284: "eventfd", 290: "eventfd2", 16: "ioctl",
    7: "poll", 271: "ppoll", 23: "select", 270: "pselect6",
}
# The kernel's entry points of a call: __x64_sys_read, __do_sys_..., and
# what they inline into (__sys_sendmsg, ___sys_sendmsg, ksys_read, ...).
SYS_RE = re.compile(r"^_*(?:x64_sys|ia32_sys|do_sys|se_sys|sys|ksys)_(\w+)")
EXIT = "system call exit (rescheduling, task work, signals)"
INTR = "kernel outside system calls (interrupts, softirqs, scheduler)"
LABEL = {
    "libaio": "worker, libaio engine",
    "io_uring": "worker, io_uring engine",
    "default": "worker",
    "base": "baseline build's worker",
    "fallback": "loop fallback: worker + blkstack-fuse",
    "base-fallback": "baseline build's loop fallback",
}


def read_env(path):
    env = {}
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                if "=" in line:
                    k, v = line.rstrip("\n").split("=", 1)
                    env[k] = v
    return env


def samples(path):
    """Yield (comm, frames) per sample; frames leaf first, (ip, sym)."""
    comm, frames = None, []
    with open(path, errors="replace") as f:
        for line in f:
            if not line.strip():
                if comm is not None:
                    yield comm, frames
                comm, frames = None, []
            elif not line[0].isspace():
                if comm is not None:
                    yield comm, frames
                comm, frames = line.split()[0], []
            else:
                parts = line.split(None, 1)
                ip = int(parts[0], 16) if re.match(r"^[0-9a-f]+$",
                                                   parts[0]) else 0
                sym = parts[1].strip() if len(parts) > 1 else "[unknown]"
                sym = re.sub(r"\+0x[0-9a-f]+.*$", "", sym)
                sym = re.sub(r"\s*\(.*\)$", "", sym)
                frames.append((ip, sym))
    if comm is not None:
        yield comm, frames


def category(frames):
    kernel = [s for ip, s in frames if ip >= 0xffff800000000000]
    if not kernel:
        return "user space"
    # Taken in an interrupt that came in user space.
    if kernel[-1].startswith(("asm_sysvec", "asm_common_interrupt",
                              "asm_exc_")):
        return INTR
    # The outermost (nearest the root) names the call.
    # x64_sys_call is the dispatcher (a switch), not a call.
    for s in reversed(kernel):
        m = SYS_RE.match(s)
        if m and s != "x64_sys_call":
            return m.group(1)
    # No entry point by name (inlined into the dispatcher): the frame
    # called from it names the call (do_writev, ...).
    for i, s in enumerate(kernel):
        if s in ("x64_sys_call", "do_syscall_64") and i > 0:
            callee = kernel[i - 1]
            if callee in ("exit_to_user_mode_loop",
                          "syscall_exit_to_user_mode"):
                return EXIT
            if callee != "x64_sys_call":
                return callee
            break
    if any(s.startswith("entry_SYSCALL") or s == "do_syscall_64"
           for s in kernel):
        return EXIT
    return INTR


def main():
    res, out = sys.argv[1:3]
    m = read_env(os.path.join(res, "machine.env"))
    configs = m.get("configs", "").split()
    rows = {}
    for c in configs:
        e = read_env(os.path.join(res, f"{c}.env"))
        ios = float(e.get("ios_cpu_window", 0) or 0)
        hz = float(e.get("hz", 100) or 100)
        cpu_us = (float(e.get("ticks", 0)) / hz * 1e6 / ios) if ios else None
        sc_total = None
        p = os.path.join(res, f"{c}.scount")
        if os.path.exists(p):
            for line in open(p):
                f = line.split(",")
                if len(f) > 2 and "raw_syscalls:sys_enter" in line:
                    try:
                        sc_total = float(f[0])
                    except ValueError:
                        pass
        sios = float(e.get("ios_syscall_window", 0) or 0)
        calls = collections.Counter()
        p = os.path.join(res, f"{c}.scalls")
        if os.path.exists(p):
            for line in open(p):
                f = line.split()
                if len(f) == 3 and f[1].isdigit():
                    name = SYSCALLS.get(int(f[1]), f"nr{f[1]}")
                    calls[name] += int(f[2])
        cats = collections.Counter()
        ucats = collections.Counter()
        procs = collections.Counter()
        n = 0
        p = os.path.join(res, f"{c}.stacks")
        if os.path.exists(p):
            for comm, frames in samples(p):
                if not frames:
                    continue
                n += 1
                k = category(frames)
                cats[k] += 1
                procs[comm] += 1
                if k == "user space":
                    ucats[frames[0][1]] += 1
        rows[c] = {
            "iops": e.get("iops"), "cpu_us": cpu_us,
            "syscalls_per_req": (sc_total / sios
                                 if sc_total is not None and sios else None),
            "calls": calls, "cats": cats, "ucats": ucats, "n": n,
            "procs": procs,
        }

    L = []
    a = L.append
    a(f"# Where a 4k request's time goes ({m.get('date')})")
    a("")
    a(f"{m.get('cpu')}, {m.get('cores')} cores, Linux {m.get('kernel')}; "
      f"blkstack {m.get('commit')}; bench/profile {m.get('runtime')} "
      f"(fio 4k randread QD32 on a 1 GiB random file, windows of "
      f"{m.get('window')} s inside the run).  CPU is the servers' utime + "
      "stime over a window against fio's completions in it; system calls "
      "are perf's raw_syscalls:sys_enter over another window; the split "
      "is perf's cpu-clock samples (software clock at 2999 Hz) by the "
      "system call each was taken in.")
    a("")
    a("| | " + " | ".join(LABEL.get(c, c) for c in configs) + " |")
    a("|" + " --- |" * (1 + len(configs)))

    def cell(v, d=2):
        return "n/a" if v is None else f"{v:,.{d}f}"
    a("| IOPS | " + " | ".join(str(rows[c]["iops"]) for c in configs) + " |")
    a("| CPU µs/request | " + " | ".join(cell(rows[c]["cpu_us"])
                                        for c in configs) + " |")
    a("| system calls/request | " + " | ".join(
        cell(rows[c]["syscalls_per_req"]) for c in configs) + " |")
    a("")
    a("CPU per request by where it was spent, µs (share of the samples × "
      "CPU per request):")
    a("")
    allcats = collections.Counter()
    for c in configs:
        for k, v in rows[c]["cats"].items():
            allcats[k] += v / max(1, rows[c]["n"])
    a("| where | " + " | ".join(LABEL.get(c, c) for c in configs) + " |")
    a("|" + " --- |" * (1 + len(configs)))
    for k, _ in allcats.most_common():
        cells = []
        for c in configs:
            r = rows[c]
            share = r["cats"].get(k, 0) / r["n"] if r["n"] else 0
            us = share * r["cpu_us"] if r["cpu_us"] is not None else None
            cells.append("" if not share else
                         f"{cell(us)} ({share * 100:.0f}%)")
        a(f"| {k} | " + " | ".join(cells) + " |")
    a("")
    a("System calls per request, by call (perf's tracepoint over 1 s, "
      "scaled to the counted total):")
    a("")
    allcalls = collections.Counter()
    for c in configs:
        allcalls.update(rows[c]["calls"])
    a("| call | " + " | ".join(LABEL.get(c, c) for c in configs) + " |")
    a("|" + " --- |" * (1 + len(configs)))
    for k, _ in allcalls.most_common(12):
        cells = []
        for c in configs:
            r = rows[c]
            tot = sum(r["calls"].values())
            if not tot or r["syscalls_per_req"] is None:
                cells.append("")
                continue
            cells.append(cell(r["calls"].get(k, 0) / tot *
                              r["syscalls_per_req"]))
        a(f"| {k} | " + " | ".join(cells) + " |")
    a("")
    a("User-space samples by function (leaf), share of all samples:")
    a("")
    for c in configs:
        r = rows[c]
        top = ", ".join(f"{s} {v / r['n'] * 100:.1f}%"
                        for s, v in r["ucats"].most_common(6)) if r["n"] else ""
        procs = ", ".join(f"{p} {v / r['n'] * 100:.0f}%"
                          for p, v in r["procs"].most_common()) if r["n"] else ""
        a(f"- {LABEL.get(c, c)}: {top or 'none'}"
          + (f" (samples by process: {procs})" if len(r["procs"]) > 1 else ""))
    a("")
    with open(out, "w") as f:
        f.write("\n".join(L))


if __name__ == "__main__":
    main()
