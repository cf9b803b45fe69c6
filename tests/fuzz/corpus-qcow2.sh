#!/bin/sh
# Rebuild the seed corpus of fuzz-qcow2 (tests/fuzz/corpus-qcow2/): tiny
# qemu-img-made qcow2 images (1-4 MiB virtual, 512 B or 4 KiB clusters)
# covering version 2 and 3 headers, a backing name and format, compressed
# clusters, zero clusters, lazy refcounts with the dirty bit, and one leak.
# Needs qemu-img and qemu-io.  Usage: tests/fuzz/corpus-qcow2.sh
set -eu
out=$(cd "$(dirname "$0")" && pwd)/corpus-qcow2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cd "$tmp"
io() { qemu-io -f qcow2 "$@" >/dev/null; }

qemu-img create -q -f qcow2 -o cluster_size=512 v3-empty 1M
qemu-img create -q -f qcow2 -o cluster_size=512 v3-data 1M
io -c 'write -P 0x11 0 4k' -c 'write -P 0x22 512k 1k' -c 'write -z 64k 2k' \
	v3-data
qemu-img create -q -f qcow2 -o cluster_size=4096,compat=0.10 v2-data 2M
io -c 'write -P 0x33 4k 8k' -c 'write -P 0x44 1M 4k' v2-data
qemu-img create -q -f qcow2 -o cluster_size=512 -b v3-data -F qcow2 backing \
	1M
io -c 'write -P 0x55 1k 1k' -c 'write -z 8k 1k' backing
qemu-img create -q -f raw raw.img 1M
qemu-io -f raw -c 'write -P 0x66 0 64k' raw.img >/dev/null
qemu-img convert -c -O qcow2 -o cluster_size=4096 raw.img compressed
qemu-img create -q -f qcow2 -o cluster_size=512,refcount_bits=1 rc1 1M
io -c 'write -P 0x77 0 2k' rc1
qemu-img create -q -f qcow2 -o cluster_size=512,refcount_bits=64 rc64 1M
io -c 'write -P 0x78 0 2k' rc64
qemu-img create -q -f qcow2 -o cluster_size=4096,lazy_refcounts=on lazy 4M
# A dirty image: lazy refcounts, killed before it closed (qemu-io -c abort).
qemu-io -f qcow2 -c 'write -P 0x79 0 4k' -c abort lazy >/dev/null 2>&1 || :
# A leak: cluster 60's refcount set in a copy of v3-data (16-bit refcounts,
# the refcount block at cluster 2 of 512 bytes).
cp v3-data leak
python3 - leak <<'PY'
import sys
with open(sys.argv[1], "r+b") as f:
    f.seek(2 * 512 + 2 * 60)
    f.write(b"\x00\x01")
    f.seek(0, 2)
    if f.tell() < 61 * 512:
        f.truncate(61 * 512)
PY
mkdir -p "$out"
rm -f "$out"/*
for f in v3-empty v3-data v2-data backing compressed rc1 rc64 lazy leak; do
	cp "$f" "$out/$f.qcow2"
done
