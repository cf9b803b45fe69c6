#!/usr/bin/env python3
"""bench/report.py RESULTS_DIR OUT.md OUT.json

Turns what bench/run collected into a Markdown report and the same figures
as JSON: medians over rounds, ratios, latency percentiles, scale figures,
and MET/MISSED for every target of bench/README.md.  Standard library only.
"""
import bisect
import json
import math
import os
import statistics
import sys

PEERS = ["direct", "aio", "libaio", "logaio", "qemu-nbd", "nbdkit"]
# The other userspace servers: "the best peer" of the targets.
NBD_PEERS = ["qemu-nbd", "nbdkit"]
# The log: layer on a RAM sink: its own table.
RAM_PEERS = ["ram", "logram"]
# dom0 devices: a plain loop device on the file, the loop fallback
# (loop on blkstack-fuse's file, over a worker's aio: export), and loop on
# the worker's own FUSE file (--fuse-mount: no NBD hop).
# wfuse-uring: the same export over FUSE over io_uring (asked for by name).
DEV_PEERS = ["loop", "fallback", "wfuse", "wfuse-uring"]
# BENCH_BASELINE: another build's worker on the same aio: chain.
AB_PEERS = ["base"]
ALL_PEERS = PEERS + RAM_PEERS + DEV_PEERS + AB_PEERS
# Peers whose server CPU bench/run measures (the worker's threads, and for
# the fallback blkstack-fuse's too).
CPU_PEERS = ["aio", "libaio", "logaio", "qemu-nbd", "nbdkit", "ram",
             "logram", "fallback", "wfuse", "wfuse-uring", "base"]
PEER_LABEL = {
    "direct": "direct (libaio, O_DIRECT)",
    "aio": "blkstack `aio:`",
    "libaio": "blkstack `aio:`, libaio engine",
    "logaio": "blkstack `log:\\|aio:`",
    "qemu-nbd": "qemu-nbd",
    "nbdkit": "nbdkit file",
    "ram": "blkstack `ram:`",
    "logram": "blkstack `log:\\|ram:`",
    "loop": "plain loop (dio) on the file",
    "fallback": "loop fallback (blkstack-fuse + loop)",
    "wfuse": "loop on the worker's FUSE export",
    "wfuse-uring": "the same, FUSE over io_uring",
    "base": "baseline build's `aio:`",
}
# workload: (direction in fio's JSON, unit)
WORKLOADS = {
    "randread-4k-qd32": ("read", "IOPS"),
    "randwrite-4k-qd32": ("write", "IOPS"),
    "read-1m-qd8": ("read", "MB/s"),
    "write-1m-qd8": ("write", "MB/s"),
}
WORKLOAD_LABEL = {
    "randread-4k-qd32": "4k randread QD32",
    "randwrite-4k-qd32": "4k randwrite QD32",
    "read-1m-qd8": "1M seq read QD8",
    "write-1m-qd8": "1M seq write QD8",
}

# The formats part (issue 14): blkstack's qcow2: and vhd: against qemu-nbd
# on copies of the same images, and blkstack's raw aio: on the same data.
FMT_PEERS = ["fmt-raw", "fmt-qcow2", "fmt-qemu-qcow2", "fmt-vhd",
             "fmt-qemu-vpc"]
FMT_PEER_LABEL = {
    "fmt-raw": "blkstack `aio:` (raw)",
    "fmt-qcow2": "blkstack `qcow2:`",
    "fmt-qemu-qcow2": "qemu-nbd -f qcow2",
    "fmt-vhd": "blkstack `vhd:`",
    "fmt-qemu-vpc": "qemu-nbd -f vpc",
}
# workload: (direction in fio's JSON, unit, label)
FMT_WORKLOADS = {
    "fmt-randread-4k-qd32": ("read", "IOPS",
                             "4k randread QD32, allocated"),
    "fmt-randwrite-4k-qd32": ("write", "IOPS",
                              "4k randwrite QD32, allocated"),
    "fmt-randwrite-4k-qd32-alloc": ("write", "IOPS",
                                    "4k randwrite QD32, allocating"),
    "fmt-write-1m-qd8-alloc": ("write", "MB/s",
                               "1M seq write QD8, allocating"),
}
T_FMT_READ_VS_RAW = 0.9
T_FMT_ALLOC_VS_QEMU = 1.0

# The targets (bench/README.md).
T_VS_DIRECT = 0.8
T_VS_QEMU = 1.3        # 4k: against the best of qemu-nbd and nbdkit
T_SEQ_VS_PEER = 1.0    # 1M: against the best of qemu-nbd and nbdkit
T_FALLBACK_VS_LOOP = 0.5


def kernel_resends(release=None):
    """Whether this kernel can resend FUSE requests (Linux 6.9+), as the
    hotplug helper's auto asks (hp_dev_fuse_resilient())."""
    release = release or os.uname().release
    try:
        major, minor = (int(x) for x in release.split(".")[:2])
    except ValueError:
        return False
    return (major, minor) >= (6, 9)
T_LOG_OVERHEAD = 5.0  # percent
T_ADD_MS = 5.0
T_ADD_SPEEDUP = 20.0
T_RSS_KIB = 8 * 1024


def read_env(path):
    env = {}
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                line = line.rstrip("\n")
                if "=" in line:
                    k, v = line.split("=", 1)
                    env[k] = v
    return env


def read_fio(path, direction, unit):
    with open(path) as f:
        text = f.read()
    # fio may print a warning before the JSON document.
    data = json.loads(text[text.index("{"):])
    job = data["jobs"][0]
    cpu = float(job.get("usr_cpu", 0)) + float(job.get("sys_cpu", 0))
    io = job[direction]
    if unit == "IOPS":
        return float(io["iops"]), cpu, io
    return float(io["bw_bytes"]) / 1e6, cpu, io


def server_us_per_io(res, peer, w, r, io, runtime, ramp):
    """The server's CPU per request (µs), from bench/run's cpu.* file:
    its run time over the whole run (ramp included; "NS 1000000000")
    against the requests of the whole run, estimated from fio's rate.
    None if not measured."""
    path = os.path.join(res, f"cpu.{peer}.{w}.{r}")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        ticks, hz = (float(x) for x in f.read().split())
    ios = float(io.get("iops", 0)) * (runtime + ramp)
    return None if ios <= 0 else ticks / hz * 1e6 / ios


def disk_share(res, peer, w, r, direction, io, runtime, ramp):
    """What the disk under the image moved for a run, against what fio
    moved: bench/run's disk.* file ("R0 W0 R1 W1", bytes, over the whole
    run, ramp included) against fio's rate times runtime plus ramp.  About
    1 for a peer whose I/O reaches the disk, well under 1 for one served
    from the page cache.  None if not measured."""
    path = os.path.join(res, f"disk.{peer}.{w}.{r}")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        r0, w0, r1, w1 = (float(x) for x in f.read().split())
    moved = (r1 - r0) if direction == "read" else (w1 - w0)
    served = float(io.get("bw_bytes", 0)) * (runtime + ramp)
    return None if served <= 0 else moved / served


def read_numbers(path):
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [float(x) for x in f.read().split()]


def pct(values, p):
    """Nearest-rank percentile."""
    if not values:
        return None
    s = sorted(values)
    return s[max(0, math.ceil(p / 100.0 * len(s)) - 1)]


def ratio(a, b):
    if a is None or b is None or b == 0:
        return None
    return a / b


def fmt(v, digits=1):
    if v is None:
        return "n/a"
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    return f"{v:.{digits}f}"


def fmt_ratio(v):
    return "n/a" if v is None else f"{v:.2f}x"


# The live part (issue 15).  RES/live.OP.FMT: "held_us fio_max_clat_us"
# per run; RES/live.commit.LOAD: "done_bytes elapsed_ms held_ms" per run.
LIVE_HELD = [("snapshot", "qcow2"), ("snapshot", "vhd"), ("reopen", "qcow2")]
LIVE_LOADS = ["idle", "fio"]


def read_rows(path):
    rows = []
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                if line.strip():
                    rows.append(line.split())
    return rows


def num(v):
    try:
        return float(v)
    except ValueError:
        return None


def read_live(res, m):
    held = {}
    for op, f in LIVE_HELD:
        rows = read_rows(os.path.join(res, f"live.{op}.{f}"))
        if not rows:
            continue
        us = [num(r[0]) for r in rows]
        clat = [num(r[1]) for r in rows if len(r) > 1 and num(r[1]) is not None]
        held[f"{op}.{f}"] = {
            "op": op, "format": f, "runs": len(us), "held_us": us,
            "median_us": statistics.median(us),
            "min_us": min(us), "max_us": max(us),
            # fio's worst write completion over each run (op included).
            "fio_max_clat_us": clat,
            "fio_max_clat_median_us": (statistics.median(clat)
                                       if clat else None),
        }
    commit = {}
    for load in LIVE_LOADS:
        rows = read_rows(os.path.join(res, f"live.commit.{load}"))
        if not rows:
            continue
        rates = [int(r[0]) / 1048576.0 / (int(r[1]) / 1000.0)
                 for r in rows if int(r[1]) > 0]
        mb = float(m.get("live_commit_mb", "0") or 0)
        # The overlay's data over the job's time: what the commit achieved
        # for the image, re-copies not counted.
        eff = [mb / (int(r[1]) / 1000.0) for r in rows if int(r[1]) > 0]
        commit[load] = {
            "runs": len(rows),
            "effective_mib_s": eff,
            "median_effective_mib_s": statistics.median(eff) if eff else None,
            "median_elapsed_ms": statistics.median(int(r[1]) for r in rows),
            "done_bytes": [int(r[0]) for r in rows],
            "elapsed_ms": [int(r[1]) for r in rows],
            "held_ms": [int(r[2]) for r in rows],
            "mib_s": rates,
            "median_mib_s": statistics.median(rates) if rates else None,
        }
    ratio_fio_idle = ratio(commit.get("fio", {}).get("median_mib_s"),
                           commit.get("idle", {}).get("median_mib_s"))
    return {"held": held, "commit": commit,
            "commit_fio_vs_idle": ratio_fio_idle,
            "commit_effective_fio_vs_idle": ratio(
                commit.get("fio", {}).get("median_effective_mib_s"),
                commit.get("idle", {}).get("median_effective_mib_s")),
            "commit_elapsed_fio_vs_idle": ratio(
                commit.get("fio", {}).get("median_elapsed_ms"),
                commit.get("idle", {}).get("median_elapsed_ms"))}


def write_live(a, live, m):
    a("## Live operations: snapshot, reopen, commit under guest writes")
    a("")
    a("A worker on a fresh copy of a "
      f"{m.get('live_vsize_mb')} MiB image ({m.get('live_data_mb')} MiB "
      "allocated) each run, fio writing through its NBD socket (4k random "
      f"writes QD8, capped at {m.get('live_rate')} IOPS, "
      f"{m.get('live_fio_s')} s), the operation {m.get('live_at')} s into "
      "it.  Held: the reply's held_us, how long the guest's I/O was held "
      "(drain, flush, switch).  fio's worst write completion is over the "
      "whole fio run, the operation included.  reopen swaps to a copy of "
      "the same image.  Nothing here is judged against a target.")
    a("")
    if live["held"]:
        a("| operation | format | runs | held, median µs | min-max µs | "
          "fio worst write completion, median of runs µs |")
        a("| --- | --- | --- | --- | --- | --- |")
        for k, v in live["held"].items():
            a(f"| {v['op']} | {v['format']} | {v['runs']} | "
              f"{fmt(v['median_us'], 0)} | {fmt(v['min_us'], 0)}-"
              f"{fmt(v['max_us'], 0)} | "
              f"{fmt(v['fio_max_clat_median_us'], 0)} |")
        a("")
    if live["commit"]:
        a(f"Commit of a qcow2 overlay with {m.get('live_commit_mb')} MiB "
          "allocated (1M sequential writes through the worker after the "
          "snapshot) into its empty qcow2 base: copy rate = the job's "
          "done_bytes / elapsed_ms (blkstack-ctl commit --json; done_bytes "
          "counts what later passes copy again), idle and with fio's 4k "
          "random writes (as above, capped) running throughout.")
        a("")
        a("| guest I/O | runs | copy MiB/s (done_bytes), median | "
          "overlay MiB / elapsed, median | MiB/s per run | "
          "copied MiB per run | elapsed ms per run | final hold ms per run |")
        a("| --- | --- | --- | --- | --- | --- | --- | --- |")
        labels = {"idle": "none", "fio": "fio 4k randwrite QD8"}
        for load, v in live["commit"].items():
            a(f"| {labels[load]} | {v['runs']} | {fmt(v['median_mib_s'])} | "
              f"{fmt(v['median_effective_mib_s'])} | "
              + ", ".join(fmt(x) for x in v["mib_s"]) + " | "
              + ", ".join(fmt(x / 1048576.0) for x in v["done_bytes"]) + " | "
              + ", ".join(str(x) for x in v["elapsed_ms"]) + " | "
              + ", ".join(str(x) for x in v["held_ms"]) + " |")
        a("")
        a("With guest writes ÷ without (medians): copy rate "
          f"{fmt_ratio(live['commit_fio_vs_idle'])}, overlay MiB / elapsed "
          f"{fmt_ratio(live['commit_effective_fio_vs_idle'])}, elapsed "
          f"{fmt_ratio(live['commit_elapsed_fio_vs_idle'])}.  Under "
          "random writes the overlay keeps growing and the commit copies "
          "again what the guest rewrites, so copied MiB (and the time) "
          "can be many times the overlay's starting data.")
        a("")


# The rbd part (issue 18): blkstack's rbd: sink against qemu-nbd's rbd
# driver (and rbd-nbd, a kernel NBD device, where the nbd module exists)
# on one image of a private single-node cluster; and hotplug v2 prepare
# and add of an rbd: disk beside a local file's.
RBD_PEERS = ["rbd-bks", "rbd-qemu", "rbd-nbd"]
RBD_PEER_LABEL = {
    "rbd-bks": "blkstack `rbd:`",
    "rbd-qemu": "qemu-nbd rbd",
    "rbd-nbd": "rbd-nbd (/dev/nbdN, libaio O_DIRECT)",
}
RBD_HP_KINDS = ["file", "rbd"]
RBD_HP_ACTIONS = ["version", "prepare", "add", "remove", "unprepare"]
T_RBD_VS_QEMU = 1.0    # every workload: blkstack rbd: >= qemu-nbd rbd
T_RBD_ADD_VS_FILE = 2.0  # rbd: add median <= 2x the file's, same run


def read_rbd(res, m, rounds, runtime, ramp):
    """The rbd part's figures, or None where it neither ran nor was
    skipped (older runs, runs without the part)."""
    rrounds = int(m.get("rbd_rounds", "0") or 0)
    wl = {}
    for w, (direction, unit) in WORKLOADS.items():
        row = {"unit": unit, "peers": {}}
        for p in RBD_PEERS:
            vals, sus = [], []
            for r in range(1, max(rounds, rrounds) + 1):
                path = os.path.join(res, f"fio.{p}.{w}.{r}.json")
                if not os.path.exists(path):
                    continue
                v, _c, io = read_fio(path, direction, unit)
                vals.append(v)
                su = server_us_per_io(res, p, w, r, io, runtime, ramp)
                if su is not None:
                    sus.append(su)
            row["peers"][p] = {
                "runs": vals,
                "median": statistics.median(vals) if vals else None,
                "min": min(vals) if vals else None,
                "max": max(vals) if vals else None,
                "server_us_per_io": statistics.median(sus) if sus else None,
            }
        med = {p: row["peers"][p]["median"] for p in RBD_PEERS}
        row["ratios"] = {
            "bks_vs_qemu": ratio(med["rbd-bks"], med["rbd-qemu"]),
            "bks_vs_rbd_nbd": ratio(med["rbd-bks"], med["rbd-nbd"]),
        }
        wl[w] = row
    hp = {}
    for kind in RBD_HP_KINDS:
        for act in RBD_HP_ACTIONS:
            vals = read_numbers(os.path.join(res, f"rbdhp.{kind}.{act}"))
            hp[f"{kind}.{act}"] = {
                "runs": len(vals), "ms": vals,
                "median_ms": statistics.median(vals) if vals else None,
                "p90_ms": pct(vals, 90),
                "min_ms": min(vals) if vals else None,
                "max_ms": max(vals) if vals else None,
            }
    ran = (any(wl[w]["peers"][p]["runs"] for w in wl for p in RBD_PEERS)
           or any(v["runs"] for v in hp.values()))
    if not ran and not m.get("rbd_skipped"):
        return None
    return {
        "skipped": m.get("rbd_skipped"),
        "rbd_nbd_skipped": m.get("rbd_nbd_skipped"),
        "rounds": rrounds, "lat_runs": int(m.get("rbd_lat_runs", "0") or 0),
        "ceph": m.get("ceph"), "qemu_block_extra": m.get("qemu_block_extra"),
        "rbd_cache": m.get("rbd_cache"),
        "workloads": wl, "hotplug": hp,
        "add_rbd_vs_file": ratio(hp["rbd.add"]["median_ms"],
                                 hp["file.add"]["median_ms"]),
        "prepare_rbd_vs_file": ratio(hp["rbd.prepare"]["median_ms"],
                                     hp["file.prepare"]["median_ms"]),
    }


def rbd_targets(rbd, target, cmp):
    """MET/MISSED for the rbd part (bench/README.md, Targets)."""
    out = []
    if rbd is None:
        return out
    why = rbd["skipped"] or ""
    for w in WORKLOADS:
        row = rbd["workloads"][w]
        v = row["ratios"]["bks_vs_qemu"]
        a, b = row["peers"]["rbd-bks"], row["peers"]["rbd-qemu"]
        note = why
        if (v is not None and len(a["runs"]) > 1 and len(b["runs"]) > 1
                and not (a["max"] < b["min"] or b["max"] < a["min"])):
            note = (f"within the run-to-run noise: over the rounds "
                    f"blkstack rbd: ranged {fmt(a['min'])}-{fmt(a['max'])} "
                    f"and qemu-nbd rbd {fmt(b['min'])}-{fmt(b['max'])} "
                    f"{row['unit']}")
        out.append(target(
            f"rbd: {WORKLOAD_LABEL[w]}: blkstack rbd: >= qemu-nbd rbd",
            v, cmp(v, lambda x: x >= T_RBD_VS_QEMU), fmt_ratio(v), note))
    hp = rbd["hotplug"]
    v = rbd["add_rbd_vs_file"]
    shown = ("n/a" if v is None else
             f"{hp['rbd.add']['median_ms']:.1f} ms vs "
             f"{hp['file.add']['median_ms']:.1f} ms ({fmt_ratio(v)})")
    out.append(target(
        "rbd: v2 add of an rbd: disk, median <= 2x a local file's add "
        "median (same run)", v, cmp(v, lambda x: x <= T_RBD_ADD_VS_FILE),
        shown, why))
    return out


def write_rbd(a, rbd, m):
    a("## rbd: (Ceph)")
    a("")
    if rbd["skipped"]:
        a(f"Skipped: {rbd['skipped']}.")
        a("")
        return
    a("blkstack's `rbd:` sink (`blkstack-worker --chain "
      "rbd:rbd/IMG,conf=CONF`) against QEMU's rbd driver (`qemu-nbd -f raw "
      "--cache=none --persistent -k SOCK rbd:rbd/IMG:conf=CONF`, "
      f"qemu-block-extra {rbd['qemu_block_extra']}) on the same "
      f"{m.get('size_mb')} MiB image, filled with random data first; "
      "fio's nbd engine on each one's Unix socket, the data path's four "
      f"workloads, {rbd['rounds']} interleaved round(s), medians.  Both "
      "clients read the same configuration, rbd cache "
      f"{'off' if rbd['rbd_cache'] == 'false' else rbd['rbd_cache']}.  "
      f"The cluster ({rbd['ceph']}) is private and single-node: one "
      "mon and one OSD on a file-backed bluestore, on this same machine, "
      "pool size 1: the figures measure the client path (librbd, the "
      "messenger, the server), not Ceph.")
    a("")
    shown = [p for p in RBD_PEERS
             if any(rbd["workloads"][w]["peers"][p]["runs"]
                    for w in WORKLOADS)]
    if rbd["rbd_nbd_skipped"]:
        a(f"rbd-nbd: skipped: {rbd['rbd_nbd_skipped']}; a kernel NBD "
          "device is what it maps, so there is no rbd-nbd peer on this "
          "machine.")
        a("")
    if shown:
        has_nbd = "rbd-nbd" in shown
        a("| workload | unit | "
          + " | ".join(RBD_PEER_LABEL[p] for p in shown)
          + " | blkstack÷qemu-nbd" + (" | blkstack÷rbd-nbd" if has_nbd else "")
          + " | spread (lowest-highest): "
          + ", ".join(RBD_PEER_LABEL[p] for p in shown)
          + " | CPU µs/request: "
          + ", ".join(RBD_PEER_LABEL[p] for p in shown) + " |")
        a("|" + " --- |" * (2 + len(shown) + 1 + has_nbd + 2))
        for w, row in rbd["workloads"].items():
            pe = row["peers"]
            if not any(pe[p]["runs"] for p in shown):
                continue
            cells = [WORKLOAD_LABEL[w], row["unit"]]
            cells += [fmt(pe[p]["median"]) for p in shown]
            cells.append(fmt_ratio(row["ratios"]["bks_vs_qemu"]))
            if has_nbd:
                cells.append(fmt_ratio(row["ratios"]["bks_vs_rbd_nbd"]))
            cells.append(" / ".join(
                f"{fmt(pe[p]['min'])}-{fmt(pe[p]['max'])}"
                if pe[p]["runs"] else "n/a" for p in shown))
            cells.append(" / ".join(fmt(pe[p]["server_us_per_io"], 2)
                                    for p in shown))
            a("| " + " | ".join(cells) + " |")
        a("")
        a("CPU µs/request: the server's threads (librbd's and the "
          "messenger's are in the server's process), utime + stime of "
          "/proc/PID/stat over the run, against fio's request count, as "
          "in the data path.  The OSD's and the mon's CPU is not in it: "
          "on a 2-core machine they compete with the client for the same "
          "cores, which moves every throughput figure here.")
        a("")
    hp = rbd["hotplug"]
    if any(v["runs"] for v in hp.values()):
        a("Hotplug v2 of an rbd: disk (`log:|rbd:rbd/IMG,conf=CONF`) and "
          "of a local 64 MiB file (`log:|aio:FILE`), the same steps "
          "interleaved in each run, on the private xenstored with "
          "BLKSTACK_DEVICE=loop (as the blackout part): prepare starts the "
          "worker (for rbd: its cluster connection and image open) and "
          "the FUSE file; add is the loop device on it.")
        a("")
        a("| action | file: runs | file: median ms | file: p90 ms | "
          "rbd: runs | rbd: median ms | rbd: p90 ms | rbd÷file |")
        a("| --- | --- | --- | --- | --- | --- | --- | --- |")
        for act in RBD_HP_ACTIONS:
            f, r = hp[f"file.{act}"], hp[f"rbd.{act}"]
            a(f"| {'**add**' if act == 'add' else act} | {f['runs']} | "
              f"{fmt(f['median_ms'])} | {fmt(f['p90_ms'])} | {r['runs']} | "
              f"{fmt(r['median_ms'])} | {fmt(r['p90_ms'])} | "
              f"{fmt_ratio(ratio(r['median_ms'], f['median_ms']))} |")
        a("")


def main():
    res, out_md, out_json = sys.argv[1:4]
    m = read_env(os.path.join(res, "machine.env"))
    rounds = int(m.get("rounds", "1"))
    runtime = float(m.get("runtime", "0") or 0)
    ramp = float(m.get("ramp", "0") or 0)

    # ---- data path
    data = {}
    for w, (direction, unit) in WORKLOADS.items():
        row = {"unit": unit, "peers": {}}
        for p in ALL_PEERS:
            vals, cpus, sus, disks = [], [], [], []
            for r in range(1, rounds + 1):
                path = os.path.join(res, f"fio.{p}.{w}.{r}.json")
                if os.path.exists(path):
                    v, c, io = read_fio(path, direction, unit)
                    vals.append(v)
                    cpus.append(c)
                    su = server_us_per_io(res, p, w, r, io, runtime, ramp)
                    if su is not None:
                        sus.append(su)
                    ds = disk_share(res, p, w, r, direction, io, runtime,
                                    ramp)
                    if ds is not None:
                        disks.append(ds)
            row["peers"][p] = {
                "runs": vals,
                "median": statistics.median(vals) if vals else None,
                # fio's own CPU (usr+sys, % of one core), median.
                "fio_cpu_pct": statistics.median(cpus) if cpus else None,
                # the server's CPU per request (µs), median.
                "server_us_per_io": statistics.median(sus) if sus else None,
                # the disk's bytes over fio's (disk_share), median.
                "disk_share": statistics.median(disks) if disks else None,
            }
        med = {p: row["peers"][p]["median"] for p in ALL_PEERS}
        best = [p for p in NBD_PEERS if med[p] is not None]
        row["best_peer"] = max(best, key=lambda p: med[p]) if best else None
        row["ratios"] = {
            "aio_vs_best_peer": ratio(med["aio"], med[row["best_peer"]]
                                      if row["best_peer"] else None),
            "aio_vs_libaio": ratio(med["aio"], med["libaio"]),
            "fallback_vs_loop": ratio(med["fallback"], med["loop"]),
            "wfuse_vs_loop": ratio(med["wfuse"], med["loop"]),
            "wfuse_vs_fallback": ratio(med["wfuse"], med["fallback"]),
            "wfuse_uring_vs_wfuse": ratio(med["wfuse-uring"], med["wfuse"]),
            "aio_vs_direct": ratio(med["aio"], med["direct"]),
            "aio_vs_qemu_nbd": ratio(med["aio"], med["qemu-nbd"]),
            "aio_vs_nbdkit": ratio(med["aio"], med["nbdkit"]),
            "logaio_vs_direct": ratio(med["logaio"], med["direct"]),
            "logaio_vs_qemu_nbd": ratio(med["logaio"], med["qemu-nbd"]),
            "logaio_vs_aio": ratio(med["logaio"], med["aio"]),
            "logram_vs_ram": ratio(med["logram"], med["ram"]),
            "aio_vs_base": ratio(med["aio"], med["base"]),
        }
        lr = row["ratios"]["logaio_vs_aio"]
        row["log_overhead_pct"] = None if lr is None else (1.0 - lr) * 100.0
        lr = row["ratios"]["logram_vs_ram"]
        row["log_overhead_ram_pct"] = (None if lr is None
                                       else (1.0 - lr) * 100.0)
        # The layer's own cost: worker CPU per request, log:|ram: vs ram:.
        c0 = row["peers"]["ram"]["server_us_per_io"]
        c1 = row["peers"]["logram"]["server_us_per_io"]
        row["log_cpu_overhead_pct"] = (None if not c0 or c1 is None
                                       else (c1 / c0 - 1.0) * 100.0)
        data[w] = row

    # ---- formats
    formats = {}
    for w, (direction, unit, _label) in FMT_WORKLOADS.items():
        row = {"unit": unit, "peers": {}}
        for p in FMT_PEERS:
            vals, sus, checks, ios = [], [], [], []
            for r in range(1, rounds + 1):
                path = os.path.join(res, f"fio.{p}.{w}.{r}.json")
                if not os.path.exists(path):
                    continue
                v, _c, io = read_fio(path, direction, unit)
                vals.append(v)
                ios.append(int(io.get("total_ios", 0)))
                if w.endswith("-alloc"):
                    # A fixed amount of I/O: fio's own count.
                    cpath = os.path.join(res, f"cpu.{p}.{w}.{r}")
                    n = float(io.get("total_ios", 0))
                    if os.path.exists(cpath) and n > 0:
                        with open(cpath) as f:
                            ticks, hz = (float(x) for x in f.read().split())
                        sus.append(ticks / hz * 1e6 / n)
                else:
                    su = server_us_per_io(res, p, w, r, io, runtime, ramp)
                    if su is not None:
                        sus.append(su)
                cpath = os.path.join(res, f"fmtcheck.{p}.{w}.{r}")
                if os.path.exists(cpath):
                    with open(cpath) as f:
                        checks.append(f"round {r}, {ios[-1]} writes: "
                                      + f.read().strip())
            row["peers"][p] = {
                "runs": vals,
                "ios": ios,  # fio's request count per round
                "median": statistics.median(vals) if vals else None,
                "server_us_per_io": statistics.median(sus) if sus else None,
                # qemu-img check (qcow2) / vhdiinfo (VHD) of the image the
                # peer left, one line per round ("ok ..." or "bad ...").
                "image_checks": checks,
            }
        med = {p: row["peers"][p]["median"] for p in FMT_PEERS}
        row["ratios"] = {
            "qcow2_vs_raw": ratio(med["fmt-qcow2"], med["fmt-raw"]),
            "vhd_vs_raw": ratio(med["fmt-vhd"], med["fmt-raw"]),
            "qcow2_vs_qemu_nbd": ratio(med["fmt-qcow2"],
                                       med["fmt-qemu-qcow2"]),
            "vhd_vs_qemu_nbd": ratio(med["fmt-vhd"], med["fmt-qemu-vpc"]),
            "qemu_qcow2_vs_raw": ratio(med["fmt-qemu-qcow2"],
                                       med["fmt-raw"]),
            "qemu_vpc_vs_raw": ratio(med["fmt-qemu-vpc"], med["fmt-raw"]),
        }
        formats[w] = row
    fmt_ran = any(formats[w]["peers"][p]["runs"] for w in formats for p in FMT_PEERS)

    # ---- blackout
    lat = {}
    for key in ["v2.version", "v2.prepare", "v2.add", "v2.remove",
                "v2.unprepare", "v2.migration_add", "v1.add", "v1.remove"]:
        vals = read_numbers(os.path.join(res, key))
        lat[key] = {
            "runs": len(vals),
            "median_ms": statistics.median(vals) if vals else None,
            "p90_ms": pct(vals, 90),
            "min_ms": min(vals) if vals else None,
            "max_ms": max(vals) if vals else None,
        }
    add_speedup = ratio(lat["v1.add"]["median_ms"], lat["v2.add"]["median_ms"])
    # Net of the floor: what each add costs beyond a do-nothing action.
    floor = lat["v2.version"]["median_ms"]

    def net(key):
        v = lat[key]["median_ms"]
        return None if v is None or floor is None else v - floor
    add_net, xen_net = net("v2.add"), net("v1.add")
    net_speedup = (ratio(xen_net, add_net)
                   if add_net is not None and add_net > 0 else None)

    # ---- scale
    s = read_env(os.path.join(res, "scale.env"))
    scale = {k: (float(v) if "." in v else int(v)) for k, v in s.items()}
    if not scale.get("n"):
        scale = {}  # the part was not run
    if scale.get("workers"):
        scale["rss_mean_kib"] = scale["rss_total_kib"] / scale["workers"]
        scale["fd_mean"] = scale["fd_total"] / scale["workers"]
    left = sum(scale.get(k, 0) for k in ["left_workers", "left_listed",
                                          "left_loops", "left_nbdfuse",
                                          "left_mounts"])
    if scale:
        scale["clean_after"] = left == 0

    # ---- targets
    rr = data["randread-4k-qd32"]["ratios"]
    overheads = [data[w]["log_overhead_pct"] for w in WORKLOADS
                 if data[w]["log_overhead_pct"] is not None]
    worst_overhead = max(overheads) if overheads else None
    overheads = [data[w]["log_overhead_ram_pct"] for w in WORKLOADS
                 if data[w]["log_overhead_ram_pct"] is not None]
    worst_overhead_ram = max(overheads) if overheads else None
    overheads = [data[w]["log_cpu_overhead_pct"] for w in WORKLOADS
                 if data[w]["log_cpu_overhead_pct"] is not None]
    worst_cpu = max(overheads) if overheads else None
    # A layer that only adds work cannot make a request cheaper: when some
    # workloads come out below zero, the spread is the machine's noise.
    cpu_noise = ""
    if overheads and min(overheads) < 0:
        cpu_noise = (f"the four workloads range from {min(overheads):+.1f}% "
                     f"to {max(overheads):+.1f}%; the layer only adds work, "
                     "so the negative ones show this machine's noise, and "
                     "the worst is within it")

    def spread(w, p):
        runs = data[w]["peers"][p]["runs"]
        return (min(runs), max(runs)) if runs else None

    def noise(w, a, b):
        """Why a comparison of a and b on workload w is within noise, if
        their run ranges overlap; "" otherwise (or with one round)."""
        sa, sb = spread(w, a), spread(w, b)
        if (not sa or not sb or len(data[w]["peers"][a]["runs"]) < 2 or
                sa[1] < sb[0] or sb[1] < sa[0]):
            return ""
        return (f"within this disk's run-to-run noise: over the rounds "
                f"{PEER_LABEL[a]} ranged {fmt(sa[0])}-{fmt(sa[1])} and "
                f"{PEER_LABEL[b]} {fmt(sb[0])}-{fmt(sb[1])} "
                f"{data[w]['unit']}")

    def worst_noise(key, a, b):
        ws = [w for w in WORKLOADS if data[w][key] is not None]
        if not ws:
            return ""
        w = max(ws, key=lambda w: data[w][key])
        n = noise(w, a, b)
        return f"{WORKLOAD_LABEL[w]}: {n}" if n else ""

    def target(name, value, ok, shown, why=""):
        return {"target": name, "value": value, "shown": shown,
                "status": "n/a" if ok is None else ("MET" if ok else "MISSED"),
                "note": why}

    def cmp(v, f):
        return None if v is None else f(v)

    add_med = lat["v2.add"]["median_ms"]
    targets = []
    for w in ["randread-4k-qd32", "randwrite-4k-qd32"]:
        r = data[w]["ratios"]
        bp = data[w]["best_peer"]
        targets += [
            target(f"{WORKLOAD_LABEL[w]}: blkstack aio: >= 0.8x direct",
                   r["aio_vs_direct"], cmp(r["aio_vs_direct"],
                                           lambda v: v >= T_VS_DIRECT),
                   fmt_ratio(r["aio_vs_direct"]),
                   noise(w, "direct", "aio")),
            target(f"{WORKLOAD_LABEL[w]}: blkstack aio: >= 1.3x the best of "
                   "qemu-nbd and nbdkit"
                   + (f" ({PEER_LABEL[bp]})" if bp else ""),
                   r["aio_vs_best_peer"], cmp(r["aio_vs_best_peer"],
                                              lambda v: v >= T_VS_QEMU),
                   fmt_ratio(r["aio_vs_best_peer"]),
                   noise(w, bp, "aio") if bp else ""),
        ]
    def cache_note(w, bp):
        """If the best peer's bytes mostly did not come from the disk
        (the page cache served them), say so, with each NBD peer's and
        aio:'s share and aio: against the peers that did read the disk;
        "" otherwise or where the disk was not measured."""
        peers = data[w]["peers"]
        share = {p: peers[p]["disk_share"] for p in ["aio"] + NBD_PEERS}
        if not bp or share[bp] is None or share[bp] >= 0.5:
            return ""
        disk_peers = [p for p in NBD_PEERS
                      if share[p] is not None and share[p] >= 0.5
                      and peers[p]["median"] is not None]
        note = ("the disk moved " + ", ".join(
            f"{share[p] * 100:.0f}% of the bytes {PEER_LABEL[p]} served"
            for p in ["aio"] + NBD_PEERS if share[p] is not None)
            + f": {PEER_LABEL[bp]} served the rest from the page cache, "
            "which the O_DIRECT peers do not use")
        if disk_peers:
            dp = max(disk_peers, key=lambda p: peers[p]["median"])
            note += (f"; against the best peer that reads the disk "
                     f"({PEER_LABEL[dp]}): "
                     + fmt_ratio(ratio(peers["aio"]["median"],
                                       peers[dp]["median"])))
        return note

    for w in ["read-1m-qd8", "write-1m-qd8"]:
        r = data[w]["ratios"]
        bp = data[w]["best_peer"]
        notes = [n for n in (noise(w, bp, "aio") if bp else "",
                             cache_note(w, bp)) if n]
        targets.append(
            target(f"{WORKLOAD_LABEL[w]}: blkstack aio: >= the best of "
                   "qemu-nbd and nbdkit"
                   + (f" ({PEER_LABEL[bp]})" if bp else ""),
                   r["aio_vs_best_peer"], cmp(r["aio_vs_best_peer"],
                                              lambda v: v >= T_SEQ_VS_PEER),
                   fmt_ratio(r["aio_vs_best_peer"]), "; ".join(notes)))
    # The fallback dom0 device is what the hotplug helper's auto gives
    # without kernel NBD: the worker's own FUSE file (wfuse) where a
    # crash cannot end it (supervised workers, Linux 6.9+), else
    # blkstack-fuse + loop.  Judged on the one auto picks on this kernel.
    fr = data["randread-4k-qd32"]["ratios"]["fallback_vs_loop"]
    wr = data["randread-4k-qd32"]["ratios"].get("wfuse_vs_loop")
    if wr is not None and kernel_resends():
        why = noise("randread-4k-qd32", "loop", "wfuse")
        why = "; ".join(n for n in [
            why, f"blkstack-fuse + loop: {fmt_ratio(fr)}"] if n)
        targets.append(
            target("4k randread QD32: the fallback dom0 device (auto's "
                   "pick here: a loop device on the worker's own FUSE "
                   "file) >= 0.5x a plain loop device on the file", wr,
                   cmp(wr, lambda v: v >= T_FALLBACK_VS_LOOP),
                   fmt_ratio(wr), why))
    else:
        targets.append(
            target("4k randread QD32: the loop fallback (blkstack-fuse + "
                   "loop) >= 0.5x a plain loop device on the file", fr,
                   cmp(fr, lambda v: v >= T_FALLBACK_VS_LOOP),
                   fmt_ratio(fr),
                   noise("randread-4k-qd32", "loop", "fallback")))
    targets += [
        target("log: overhead < 5%: the worker's CPU per request, "
               "log:|ram: against ram: (worst of the four workloads)",
               worst_cpu, cmp(worst_cpu, lambda v: v < T_LOG_OVERHEAD),
               "n/a" if worst_cpu is None else f"{worst_cpu:+.1f}%",
               cpu_noise),
        target("log: overhead < 5%: throughput on a ram: sink (worst of "
               "the four workloads)",
               worst_overhead_ram, cmp(worst_overhead_ram,
                                       lambda v: v < T_LOG_OVERHEAD),
               "n/a" if worst_overhead_ram is None
               else f"{worst_overhead_ram:.1f}%",
               worst_noise("log_overhead_ram_pct", "ram", "logram")),
        target("log: overhead < 5% on the disk, aio: sink (worst of the "
               "four workloads)",
               worst_overhead, cmp(worst_overhead,
                                   lambda v: v < T_LOG_OVERHEAD),
               "n/a" if worst_overhead is None else f"{worst_overhead:.1f}%",
               worst_noise("log_overhead_pct", "aio", "logaio")),
        target("v2 add median <= 5 ms", add_med,
               cmp(add_med, lambda v: v <= T_ADD_MS),
               "n/a" if add_med is None else f"{add_med:.1f} ms",
               "most of add is the floor every action pays here (process "
               "starts and a xenstore connection: 'v2 version', "
               + ("n/a" if floor is None else f"{floor:.1f} ms") +
               "); add's own work, net of it, is "
               + ("n/a" if add_net is None else f"{add_net:.1f} ms") +
               " (LOOP_CONFIGURE, the backend and sharing checks on the "
               "worker's open files, and 23 xenstore requests)"),
        target("v2 add >= 20x faster than Xen's block add", add_speedup,
               cmp(add_speedup, lambda v: v >= T_ADD_SPEEDUP),
               fmt_ratio(add_speedup),
               "the same floor, paid by both; net of it, Xen's add is "
               + fmt_ratio(net_speedup) + " blkstack's"),
        target("worker RSS <= 8 MiB (largest worker, scale test)",
               scale.get("rss_max_kib"),
               cmp(scale.get("rss_max_kib") or None,
                   lambda v: v <= T_RSS_KIB),
               "n/a" if not scale.get("rss_max_kib")
               else f"{scale['rss_max_kib'] / 1024:.1f} MiB"),
    ]
    def fmt_noise(w, a, b):
        """As noise(), for the formats part."""
        ra, rb = formats[w]["peers"][a]["runs"], formats[w]["peers"][b]["runs"]
        if len(ra) < 2 or len(rb) < 2 or max(ra) < min(rb) or \
                max(rb) < min(ra):
            return ""
        return (f"within this disk's run-to-run noise: over the rounds "
                f"{FMT_PEER_LABEL[a]} ranged {fmt(min(ra))}-"
                f"{fmt(max(ra))} and {FMT_PEER_LABEL[b]} "
                f"{fmt(min(rb))}-{fmt(max(rb))} {formats[w]['unit']}")

    def fmt_target(name, w, key, limit, a, b):
        v = formats[w]["ratios"][key]
        return target(name, v, cmp(v, lambda x: x >= limit), fmt_ratio(v),
                      fmt_noise(w, a, b))

    # blkstack's images after its allocating runs: every check "ok".
    bks_checks = [c for w in formats for p in ("fmt-qcow2", "fmt-vhd")
                  for c in formats[w]["peers"][p]["image_checks"]]
    bad_checks = [c for c in bks_checks if ": ok" not in c]
    targets += [
        fmt_target("qcow2: 4k randread QD32 on allocated clusters >= 0.9x "
                   "blkstack raw aio: on the same data",
                   "fmt-randread-4k-qd32", "qcow2_vs_raw", T_FMT_READ_VS_RAW,
                   "fmt-qcow2", "fmt-raw"),
        fmt_target("vhd: 4k randread QD32 on allocated blocks >= 0.9x "
                   "blkstack raw aio: on the same data",
                   "fmt-randread-4k-qd32", "vhd_vs_raw", T_FMT_READ_VS_RAW,
                   "fmt-vhd", "fmt-raw"),
        fmt_target("qcow2: allocating 4k randwrite QD32 >= qemu-nbd -f qcow2",
                   "fmt-randwrite-4k-qd32-alloc", "qcow2_vs_qemu_nbd",
                   T_FMT_ALLOC_VS_QEMU, "fmt-qcow2", "fmt-qemu-qcow2"),
        fmt_target("vhd: allocating 4k randwrite QD32 >= qemu-nbd -f vpc",
                   "fmt-randwrite-4k-qd32-alloc", "vhd_vs_qemu_nbd",
                   T_FMT_ALLOC_VS_QEMU, "fmt-vhd", "fmt-qemu-vpc"),
        fmt_target("qcow2: allocating 1M seq write QD8 >= qemu-nbd -f qcow2",
                   "fmt-write-1m-qd8-alloc", "qcow2_vs_qemu_nbd",
                   T_FMT_ALLOC_VS_QEMU, "fmt-qcow2", "fmt-qemu-qcow2"),
        fmt_target("vhd: allocating 1M seq write QD8 >= qemu-nbd -f vpc",
                   "fmt-write-1m-qd8-alloc", "vhd_vs_qemu_nbd",
                   T_FMT_ALLOC_VS_QEMU, "fmt-vhd", "fmt-qemu-vpc"),
        target("blkstack's images consistent after its allocating runs "
               "(qemu-img check, vhdiinfo)", len(bad_checks),
               None if not bks_checks else not bad_checks,
               "n/a" if not bks_checks
               else f"{len(bks_checks) - len(bad_checks)} of "
               f"{len(bks_checks)} clean",
               "; ".join(bad_checks)[:400]),
    ]
    rbd = read_rbd(res, m, rounds, runtime, ramp)
    targets += rbd_targets(rbd, target, cmp)
    quick_note = ("QUICK run: one short round, so confirm on a full run "
                  "on an idle machine")
    for t in targets:
        if t["status"] != "MISSED":
            t["note"] = ""
        elif not t["note"] and m.get("mode") == "quick":
            t["note"] = quick_note

    # ---- recovery: kill -9 to the first completion after it, per kill
    recovery = {}
    renv = read_env(os.path.join(res, "recovery.env"))
    for kind in ["nbd", "loop"]:
        kills = read_numbers(os.path.join(res, f"recovery.{kind}.kills"))
        if not kills:
            continue
        # "SENT DONE" per request: the first request sent (or re-sent)
        # after the kill and completed is the first the new worker served.
        v = read_numbers(os.path.join(res, f"recovery.{kind}.acks"))
        pairs = list(zip(v[0::2], v[1::2]))
        gaps = []
        for k in kills:
            after = [d for s_, d in pairs if s_ >= k]
            gaps.append((min(after) - k) / 1e6 if after else None)
        done = [g for g in gaps if g is not None]
        recovery[kind] = {
            "kills": len(kills), "kill_to_first_completion_ms": gaps,
            "median_ms": statistics.median(done) if done else None,
            "min_ms": min(done) if done else None,
            "max_ms": max(done) if done else None,
            "completions": len(pairs),
            "writer_failed": renv.get(f"{kind}_failed") == "1",
        }

    # ---- live (issue 15): held time of snapshot/reopen, commit rate
    live = read_live(res, m)

    machine = {k: m.get(k) for k in ["cpu", "cores", "kernel", "fs", "date",
                                     "git", "mode", "load_start",
                                     "load_end", "baseline"]}
    peers = {"fio": m.get("fio"), "qemu-nbd": m.get("qemu_nbd"),
             "qemu-img": m.get("qemu_img"),
             "nbdkit": m.get("nbdkit"),
             "nbdkit_cache": m.get("nbdkit_cache")}
    params = {k: m.get(k) for k in ["rounds", "runtime", "ramp", "size_mb",
                                    "lat_runs", "scale_n", "fmt_size_mb",
                                    "fmt_alloc_mb", "fmt_alloc_ios",
                                    "fmt_seq_mb", "live_runs",
                                    "live_commit_mb", "live_commit_runs",
                                    "live_vsize_mb", "live_data_mb",
                                    "live_fio_s", "live_at", "live_rate"]}
    doc = {"machine": machine, "peers": peers, "parameters": params,
           "data_path": data, "formats": formats, "blackout": lat,
           "blackout_add_speedup_vs_xen_block": add_speedup,
           "blackout_floor_ms": floor,
           "blackout_add_net_ms": add_net,
           "blackout_xen_add_net_ms": xen_net,
           "blackout_add_net_speedup_vs_xen_block": net_speedup,
           "scale": scale, "recovery": recovery, "live": live,
           "targets": targets}
    if rbd is not None:
        doc["rbd"] = rbd
    with open(out_json, "w") as f:
        json.dump(doc, f, indent=2, sort_keys=False)
        f.write("\n")

    # ---- Markdown
    L = []
    a = L.append
    a(f"# blkstack bench ({m.get('mode', '?')}, {m.get('date', '?')})")
    a("")
    a(f"Machine: {m.get('cpu')}, {m.get('cores')} cores, Linux "
      f"{m.get('kernel')}, images on {m.get('fs')} (/var/tmp); "
      f"blkstack {m.get('git')}; load average (1, 5, 15 min) "
      f"{m.get('load_start')} at the start, {m.get('load_end')} at the "
      "end.  ")
    a(f"Peers: {m.get('fio')}; {m.get('qemu_nbd')}; {m.get('nbdkit')} "
      f"(file plugin, {m.get('nbdkit_cache')}).  ")
    a(f"{params['rounds']} round(s), {params['runtime']} s per run after "
      f"{params['ramp']} s ramp, {params['size_mb']} MiB raw file, peers "
      "interleaved; figures are medians over rounds.  Compare ratios, not "
      "absolutes: other load on the machine moves every column.")
    a("")
    a("## Data path")
    a("")
    main_peers = [p for p in PEERS
                  if any(data[w]["peers"][p]["runs"] for w in WORKLOADS)]
    has_libaio = "libaio" in main_peers
    a("| workload | unit | " + " | ".join(PEER_LABEL[p] for p in main_peers)
      + " | aio÷direct | aio÷best of qemu-nbd, nbdkit"
      + (" | aio÷libaio engine" if has_libaio else "")
      + " | log\\|aio÷aio (log: overhead) |")
    a("|" + " --- |" * (2 + len(main_peers) + 3 + has_libaio))
    for w, row in data.items():
        if all(row["peers"][p]["median"] is None for p in main_peers):
            continue  # not run
        cells = [WORKLOAD_LABEL[w], row["unit"]]
        cells += [fmt(row["peers"][p]["median"]) for p in main_peers]
        r = row["ratios"]
        ov = row["log_overhead_pct"]
        cells += [fmt_ratio(r["aio_vs_direct"]),
                  fmt_ratio(r["aio_vs_best_peer"])]
        if has_libaio:
            cells.append(fmt_ratio(r["aio_vs_libaio"]))
        cells.append(fmt_ratio(r["logaio_vs_aio"]) +
                     ("" if ov is None else f" ({ov:+.1f}%)"))
        a("| " + " | ".join(cells) + " |")
    a("")
    eng = {p: m.get(f"engine_{p}") for p in ["aio", "libaio", "logaio",
                                            "fallback", "wfuse",
                                            "wfuse-uring"]}
    if any(eng.values()):
        a("File queue engine of each worker peer (its `info`): " +
          ", ".join(f"{PEER_LABEL[p]} {v}" for p, v in eng.items() if v)
          + ".")
        a("")
    if any(data[w]["peers"]["fallback"]["median"] is not None
           for w in WORKLOADS):
        a("The dom0 device without the nbd module: fio (libaio, O_DIRECT) "
          "on a loop device (`losetup --direct-io=on`) over "
          "blkstack-fuse's file, which a worker's `aio:` export serves, "
          "against a plain loop device on the file itself:")
        a("")
        a("| workload | unit | " + PEER_LABEL["loop"] + " | "
          + PEER_LABEL["fallback"] + " | fallback÷loop | CPU µs/request, "
          "worker + blkstack-fuse |")
        a("| --- | --- | --- | --- | --- | --- |")
        for w, row in data.items():
            if row["peers"]["fallback"]["median"] is None:
                continue
            a(f"| {WORKLOAD_LABEL[w]} | {row['unit']} | "
              f"{fmt(row['peers']['loop']['median'])} | "
              f"{fmt(row['peers']['fallback']['median'])} | "
              f"{fmt_ratio(row['ratios']['fallback_vs_loop'])} | "
              f"{fmt(row['peers']['fallback']['server_us_per_io'], 2)} |")
        a("")
    if any(data[w]["peers"]["wfuse"]["median"] is not None
           for w in WORKLOADS):
        a("The same device on the worker's own FUSE export (`--fuse-mount`, "
          "libblkstack/export/fuse/): a loop device on the file the worker "
          "serves itself, with no blkstack-fuse and no NBD hop: the "
          "hotplug helper's fuse mechanism, which auto picks without the "
          "nbd module where workers are supervised on Linux 6.9+ (the "
          "supervisor keeps the file across a worker's restart); "
          "elsewhere auto keeps blkstack-fuse.")
        a("")
        a("| workload | unit | " + PEER_LABEL["loop"] + " | "
          + PEER_LABEL["fallback"] + " | " + PEER_LABEL["wfuse"]
          + " | wfuse÷loop | wfuse÷fallback | CPU µs/request, worker |")
        a("| --- | --- | --- | --- | --- | --- | --- | --- |")
        for w, row in data.items():
            if row["peers"]["wfuse"]["median"] is None:
                continue
            a(f"| {WORKLOAD_LABEL[w]} | {row['unit']} | "
              f"{fmt(row['peers']['loop']['median'])} | "
              f"{fmt(row['peers']['fallback']['median'])} | "
              f"{fmt(row['peers']['wfuse']['median'])} | "
              f"{fmt_ratio(row['ratios']['wfuse_vs_loop'])} | "
              f"{fmt_ratio(row['ratios']['wfuse_vs_fallback'])} | "
              f"{fmt(row['peers']['wfuse']['server_us_per_io'], 2)} |")
        a("")
    if any(data[w]["peers"]["wfuse-uring"]["median"] is not None
           for w in WORKLOADS):
        a("The worker's FUSE export on its two transports, interleaved: "
          "readv/writev on /dev/fuse (wfuse) and FUSE over io_uring "
          "(`--fuse-transport io_uring`, Linux 6.14+):")
        a("")
        a("| workload | unit | " + PEER_LABEL["wfuse"] + " | "
          + PEER_LABEL["wfuse-uring"] + " | io_uring÷readv | "
          "CPU µs/request, readv | CPU µs/request, io_uring |")
        a("| --- | --- | --- | --- | --- | --- | --- |")
        for w, row in data.items():
            if row["peers"]["wfuse-uring"]["median"] is None:
                continue
            a(f"| {WORKLOAD_LABEL[w]} | {row['unit']} | "
              f"{fmt(row['peers']['wfuse']['median'])} | "
              f"{fmt(row['peers']['wfuse-uring']['median'])} | "
              f"{fmt_ratio(row['ratios']['wfuse_uring_vs_wfuse'])} | "
              f"{fmt(row['peers']['wfuse']['server_us_per_io'], 2)} | "
              f"{fmt(row['peers']['wfuse-uring']['server_us_per_io'], 2)} |")
        a("")
    cpu_shown = [p for p in CPU_PEERS
                 if any(data[w]["peers"][p]["server_us_per_io"] is not None
                        for w in WORKLOADS)]
    if cpu_shown:
        a("Server CPU per request, µs (all its threads' run time over the "
          "run, utime + stime of /proc/PID/stat, exited threads included, "
          "against fio's request "
          "count; the kernel's work on the server's behalf in its system "
          "calls is in it; for direct, fio's own usr+sys per request):")
        a("")
        a("| workload | direct (fio itself) | "
          + " | ".join(PEER_LABEL[p] for p in cpu_shown) + " |")
        a("|" + " --- |" * (2 + len(cpu_shown)))
        for w, row in data.items():
            if all(row["peers"][p]["server_us_per_io"] is None
                   for p in cpu_shown):
                continue
            d = row["peers"]["direct"]
            dcpu = None
            if d["fio_cpu_pct"] is not None and d["median"]:
                per_s = (d["median"] if row["unit"] == "IOPS"
                         else d["median"] * 1e6 / (1 << 20))
                dcpu = d["fio_cpu_pct"] / 100.0 * 1e6 / per_s
            a(f"| {WORKLOAD_LABEL[w]} | {fmt(dcpu, 2)} | " + " | ".join(
                fmt(row["peers"][p]["server_us_per_io"], 2)
                for p in cpu_shown) + " |")
        a("")
    disk_shown = [p for p in PEERS + DEV_PEERS
                  if any(
                      data[w]["peers"][p]["disk_share"] is not None
                      for w in WORKLOADS)]
    if disk_shown:
        a("What the disk under the image moved, as a share of the bytes "
          "fio moved (the device's /sys/class/block/DEV/stat over the run "
          "against fio's rate over it; about 100% where every byte reached "
          "the disk, less where the page cache served it, more where a "
          "layer read or wrote more than it was asked; other I/O on the "
          "same disk counts too):")
        a("")
        a("| workload | " + " | ".join(PEER_LABEL[p] for p in disk_shown)
          + " |")
        a("|" + " --- |" * (1 + len(disk_shown)))
        for w, row in data.items():
            cells = [row["peers"][p]["disk_share"] for p in disk_shown]
            if all(c is None for c in cells):
                continue
            a(f"| {WORKLOAD_LABEL[w]} | " + " | ".join(
                "n/a" if c is None else f"{c * 100:.0f}%" for c in cells)
              + " |")
        a("")
    if any(data[w]["peers"]["ram"]["median"] is not None for w in WORKLOADS):
        a("The `log:` layer alone, on a RAM sink (no disk, so none of its "
          "noise):")
        a("")
        a("| workload | unit | " + " | ".join(PEER_LABEL[p] for p in RAM_PEERS)
          + " | log\\|ram÷ram (log: overhead) | worker CPU µs/request, "
          "ram: / log:\\|ram: | log: CPU overhead |")
        a("| --- | --- | --- | --- | --- | --- | --- |")
        for w, row in data.items():
            if row["peers"]["ram"]["median"] is None:
                continue
            ov = row["log_overhead_ram_pct"]
            co = row["log_cpu_overhead_pct"]
            a(f"| {WORKLOAD_LABEL[w]} | {row['unit']} | "
              f"{fmt(row['peers']['ram']['median'])} | "
              f"{fmt(row['peers']['logram']['median'])} | "
              f"{fmt_ratio(row['ratios']['logram_vs_ram'])}"
              + ("" if ov is None else f" ({ov:+.1f}%)") + " | "
              f"{fmt(row['peers']['ram']['server_us_per_io'], 2)} / "
              f"{fmt(row['peers']['logram']['server_us_per_io'], 2)} | "
              + ("n/a" if co is None else f"{co:+.1f}%") + " |")
        a("")
        a("Throughput on a 2-core VM moves with whatever else the host "
          "runs; the worker's CPU time per request (its threads' "
          "run time over the run, from /proc/PID/stat, against "
          "fio's request count) is closer to what the layer itself costs, "
          "and is the figure the target is judged on; it moves with the "
          "rate too (more requests per wakeup cost less each), so read "
          "it across the four workloads.")
        a("")
    if any(data[w]["peers"]["base"]["median"] is not None
           for w in WORKLOADS):
        a(f"A/B against another build ({m.get('baseline')}), the same "
          "`aio:` chain, interleaved with the rest:")
        a("")
        a("| workload | unit | this build's `aio:` | baseline's `aio:` | "
          "this÷baseline | worker CPU µs/request, this / baseline |")
        a("| --- | --- | --- | --- | --- | --- |")
        for w, row in data.items():
            if row["peers"]["base"]["median"] is None:
                continue
            a(f"| {WORKLOAD_LABEL[w]} | {row['unit']} | "
              f"{fmt(row['peers']['aio']['median'])} | "
              f"{fmt(row['peers']['base']['median'])} | "
              f"{fmt_ratio(row['ratios']['aio_vs_base'])} | "
              f"{fmt(row['peers']['aio']['server_us_per_io'], 2)} / "
              f"{fmt(row['peers']['base']['server_us_per_io'], 2)} |")
        a("")
    if rounds > 1:
        a("Run-to-run spread (lowest-highest over the rounds): read it "
          "before trusting a ratio.")
        a("")
        shown = [p for p in ALL_PEERS
                 if any(data[w]["peers"][p]["runs"] for w in WORKLOADS)]
        a("| workload | " + " | ".join(PEER_LABEL[p] for p in shown) + " |")
        a("|" + " --- |" * (1 + len(shown)))
        for w, row in data.items():
            if not any(row["peers"][p]["runs"] for p in shown):
                continue  # not run
            cells = [WORKLOAD_LABEL[w]]
            for p in shown:
                sp = spread(w, p)
                cells.append("" if not sp else f"{fmt(sp[0])}-{fmt(sp[1])}")
            a("| " + " | ".join(cells) + " |")
        a("")
    a("fio 3.x: `--ioengine=nbd` over the peer's Unix socket; direct is "
      "`--ioengine=libaio --direct=1` on the file.  qemu-nbd runs with "
      "`--cache=none --aio=native`; nbdkit's `cache=none` is "
      "posix_fadvise(DONTNEED), not O_DIRECT.")
    dcpu = [f"{WORKLOAD_LABEL[w]} {data[w]['peers']['direct']['fio_cpu_pct']:.0f}%"
            for w in WORKLOADS
            if data[w]["peers"]["direct"]["fio_cpu_pct"] is not None]
    if dcpu:
        a("")
        a("direct is one fio job doing submission and completion itself; "
          "its CPU (usr+sys, % of one core): " + ", ".join(dcpu) + ".  "
          "Near 100% it is CPU-bound, not the device's limit, and a server "
          "peer, whose I/O runs in a second process on the other core, can "
          "beat it (ratios above 1x).")
    a("")
    if fmt_ran:
        a("## Formats: qcow2 and VHD")
        a("")
        a(f"blkstack's `qcow2:` and `vhd:` sinks and qemu-nbd (`-f qcow2` / "
          "`-f vpc`, `--cache=none --aio=native`), each on fresh copies of "
          "the same images, and blkstack's raw `aio:` on the same data; "
          "fio's nbd engine for all.  Allocated: a "
          f"{m.get('fmt_size_mb')} MiB random raw file and its qemu-img "
          "convert to qcow2 (64 KiB clusters) and dynamic VHD (2 MiB "
          "blocks), time-based.  Allocating: empty (sparse) images of "
          f"{m.get('fmt_alloc_mb')} MiB, a fresh copy per workload; 4k "
          "writes on distinct random blocks, at most "
          f"{m.get('fmt_alloc_ios')} (one per 256 KiB: ~88% or more "
          "allocate a qcow2 cluster, each sets VHD sector bits) and "
          f"{params['runtime']} s, and 1M writes over the first "
          f"{m.get('fmt_seq_mb')} MiB once.")
        a("")
        a("| workload | unit | " +
          " | ".join(FMT_PEER_LABEL[p] for p in FMT_PEERS) +
          " | qcow2÷raw | vhd÷raw | qcow2÷qemu-nbd | vhd÷qemu-nbd |")
        a("|" + " --- |" * (2 + len(FMT_PEERS) + 4))
        for w, row in formats.items():
            if not any(row["peers"][p]["runs"] for p in FMT_PEERS):
                continue
            r = row["ratios"]
            cells = [FMT_WORKLOADS[w][2], row["unit"]]
            cells += [fmt(row["peers"][p]["median"]) for p in FMT_PEERS]
            cells += [fmt_ratio(r[k]) for k in ["qcow2_vs_raw", "vhd_vs_raw",
                                                 "qcow2_vs_qemu_nbd",
                                                 "vhd_vs_qemu_nbd"]]
            a("| " + " | ".join(cells) + " |")
        a("")
        a("Server CPU per request (µs, all its threads, "
          "/proc/PID/stat utime + stime):")
        a("")
        a("| workload | " +
          " | ".join(FMT_PEER_LABEL[p] for p in FMT_PEERS) + " |")
        a("|" + " --- |" * (1 + len(FMT_PEERS)))
        for w, row in formats.items():
            if not any(row["peers"][p]["runs"] for p in FMT_PEERS):
                continue
            a(f"| {FMT_WORKLOADS[w][2]} | " + " | ".join(
                fmt(row["peers"][p]["server_us_per_io"], 2)
                for p in FMT_PEERS) + " |")
        a("")
        if rounds > 1:
            a("Run-to-run spread (lowest-highest over the rounds):")
            a("")
            a("| workload | " +
              " | ".join(FMT_PEER_LABEL[p] for p in FMT_PEERS) + " |")
            a("|" + " --- |" * (1 + len(FMT_PEERS)))
            for w, row in formats.items():
                if not any(row["peers"][p]["runs"] for p in FMT_PEERS):
                    continue
                cells = [FMT_WORKLOADS[w][2]]
                for p in FMT_PEERS:
                    runs = row["peers"][p]["runs"]
                    cells.append(f"{fmt(min(runs))}-{fmt(max(runs))}"
                                 if runs else "")
                a("| " + " | ".join(cells) + " |")
            a("")
        a("The images each peer left after its allocating runs "
          "(qemu-img check for qcow2, vhdiinfo for VHD):")
        a("")
        a("| workload | peer | check |")
        a("| --- | --- | --- |")
        for w, row in formats.items():
            for p in FMT_PEERS:
                for c in row["peers"][p]["image_checks"]:
                    a(f"| {FMT_WORKLOADS[w][2]} | {FMT_PEER_LABEL[p]} | "
                      f"{c} |")
        a("")
    if live["held"] or live["commit"]:
        write_live(a, live, m)
    a("## Blackout: the add a migration waits for")
    a("")
    a("| action | runs | median ms | p90 ms | min ms | max ms |")
    a("| --- | --- | --- | --- | --- | --- |")
    names = {"v2.version": "blkstack v2 version (the floor: process "
                           "start, one xenstore write)",
             "v2.prepare": "blkstack v2 prepare (starts the worker, its "
                           "supervisor and blkstack-fuse)",
             "v2.add": "**blkstack v2 add** (after prepare: a loop "
                       "device on prepare's blkstack-fuse)",
             "v2.remove": "blkstack v2 remove",
             "v2.unprepare": "blkstack v2 unprepare",
             "v2.migration_add": "**blkstack v2 add, migration** (the "
                                 "destination's add, the source's worker "
                                 "still running on the image)",
             "v1.add": "**Xen block add** (v1, file → loop)",
             "v1.remove": "Xen block remove (v1)"}
    for k, label in names.items():
        v = lat[k]
        a(f"| {label} | {v['runs']} | {fmt(v['median_ms'])} | "
          f"{fmt(v['p90_ms'])} | {fmt(v['min_ms'])} | {fmt(v['max_ms'])} |")
    a("")
    a(f"Xen block add ÷ blkstack v2 add (medians): {fmt_ratio(add_speedup)}; "
      f"net of the floor (median minus version's median): blkstack "
      f"{fmt(add_net)} ms, Xen {fmt(xen_net)} ms, "
      f"{fmt_ratio(net_speedup)}. "
      "Each time is one whole `xs-toolstack v2-run`/`v1-run` invocation "
      "(process start, the script, its xenstore traffic) against a private "
      "xenstored; BLKSTACK_DEVICE=loop, so blkstack's add is LOOP_CONFIGURE "
      "on the blkstack-fuse file prepare started, plus the xenstore writes.  "
      "version does no work, so its time is the floor any action pays "
      "here: fork+exec of the toolstack driver, the shell script and the "
      "helper, and the xenstore connection.")
    a("")
    a("## Scale")
    a("")
    a("| figure | value |")
    a("| --- | --- |")
    if scale:
        a(f"| disks prepared and added at once | {scale.get('n')} |")
        a(f"| wall time, prepare+add of all (v2-attach) | "
          f"{fmt(scale.get('add_wall_ms'))} ms |")
        a(f"| failures (add / remove) | {scale.get('add_fails')} / "
          f"{scale.get('remove_fails')} |")
        a(f"| workers / loop devices / FUSE servers while attached | "
          f"{scale.get('workers')} / {scale.get('devices')} / "
          f"{scale.get('nbdfuse')} |")
        a(f"| worker RSS total | "
          f"{fmt(scale.get('rss_total_kib', 0) / 1024)} MiB |")
        a(f"| worker RSS mean / max | "
          f"{fmt(scale.get('rss_mean_kib', 0) / 1024, 2)} / "
          f"{fmt(scale.get('rss_max_kib', 0) / 1024, 2)} MiB |")
        a(f"| fds per worker mean / max | {fmt(scale.get('fd_mean'))} / "
          f"{scale.get('fd_max')} |")
        a(f"| wall time, remove+unprepare of all (v2-detach) | "
          f"{fmt(scale.get('remove_wall_ms'))} ms |")
        a(f"| left after (workers, listed, loops, FUSE servers, mounts) | "
          f"{scale.get('left_workers')}, {scale.get('left_listed')}, "
          f"{scale.get('left_loops')}, {scale.get('left_nbdfuse')}, "
          f"{scale.get('left_mounts')} "
          f"({'clean' if scale['clean_after'] else 'NOT CLEAN'}) |")
    a("")
    a("## Recovery")
    a("")
    a("A supervised worker killed with SIGKILL under a writer, 6 s "
      "of I/O before each kill (a single crash each, restarted without "
      "back-off); the time from the kill to the completion "
      "of the first request sent (or re-sent) after it: the supervisor's "
      "restart, the client's reconnect, and the new worker's answer.")
    a("")
    a("| client | kills | kill to first completion after it, median (min-max) | "
      "writer saw an error |")
    a("| --- | --- | --- | --- |")
    labels = {"nbd": "NBD socket: acked-writes.py --reconnect, 8 in flight",
              "loop": "loop fallback (blkstack-fuse + loop), QD1 O_DIRECT "
                      "writes"}
    for kind, r in recovery.items():
        a(f"| {labels[kind]} | {r['kills']} | {fmt(r['median_ms'])} ms "
          f"({fmt(r['min_ms'])}-{fmt(r['max_ms'])}) | "
          f"{'YES' if r['writer_failed'] else 'no'} |")
    a("")
    if rbd is not None:
        write_rbd(a, rbd, m)
    a("## Targets")
    a("")
    a("| target | measured | status | why missed |")
    a("| --- | --- | --- | --- |")
    for t in targets:
        a(f"| {t['target']} | {t['shown']} | {t['status']} | {t['note']} |")
    a("")
    with open(out_md, "w") as f:
        f.write("\n".join(L))


if __name__ == "__main__":
    main()
