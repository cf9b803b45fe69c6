#!/usr/bin/env bats
# The qcow2: sink (issue 14) against the real tools: images qemu-img made
# (v2 and v3, with qcow2 and raw backing files, compressed clusters) served
# through a real worker and read with nbdcopy/nbdinfo; writes through the
# worker checked with qemu-img check and compared with qemu-img compare
# against the same writes done by qemu-io or qemu-nbd; block status against
# qemu-img map; the refusals; SIGKILL under a write load.

load helpers

setup() {
	command -v qemu-img >/dev/null || skip "qemu-img is not installed"
	command -v nbdcopy >/dev/null || skip "nbdcopy is not installed"
	cd "$BATS_TEST_TMPDIR" || return 1
	img_dir
	D=$IMG_DIR
}

teardown() {
	[ -z "${QNBD:-}" ] || kill "$QNBD" 2>/dev/null || true
	worker_teardown
}

# serve NAME CHAIN [ARGS...]: a worker; U its NBD URI.
serve() {
	worker_start "$@"
	U=$(nbd_uri)
}

# qio CMD...: qemu-io commands on the worker's export.
qio() {
	local args=() c
	for c in "$@"; do
		args+=(-c "$c")
	done
	timeout 60 qemu-io -f raw "${args[@]}" "$U"
}

# same_as_qemu IMG: what the worker serves is what qemu-img reads of IMG.
same_as_qemu() {
	rm -f "$D/got.raw" "$D/want.raw"
	timeout 60 nbdcopy "$U" "$D/got.raw"
	qemu-img convert -U -O raw "$1" "$D/want.raw"
	cmp "$D/got.raw" "$D/want.raw"
}

# clean IMG: qemu-img check finds neither corruption nor leak.
clean() {
	run qemu-img check "$1"
	assert_success
	assert_output --partial "No errors were found on the image."
}

# set_be64 FILE OFFSET VALUE: rewrite a big-endian header field.
set_be64() {
	python3 - "$@" <<'PY'
import struct, sys
path, off, val = sys.argv[1], int(sys.argv[2]), int(sys.argv[3], 0)
with open(path, "r+b") as f:
    f.seek(off)
    f.write(struct.pack(">Q", val))
PY
}

# refuse CHAIN TEXT [ARGS...]: the worker does not start, saying TEXT.
refuse() {
	local chain=$1 text=$2
	shift 2
	run worker_start bad "$chain" "$@"
	assert_failure
	assert_output --partial "$text"
}

@test "qcow2: v2 (compat=0.10) and v3 images made by qemu-img (refcounts of 1, 16 and 64 bits; 512 B, 4 KiB and 64 KiB clusters; a refcount table that must grow) are served as qemu-img reads them, and written as qemu-io writes them" {
	local o i=0 c
	local w=('write -P 0x55 2M 4k' 'write -P 0x56 5M 64k' 'write -z 0 64k'
		'write -P 0x57 60M 3M' 'write -P 0x58 9M 512')
	for o in compat=0.10 compat=1.1 compat=1.1,refcount_bits=1,cluster_size=4096 \
		compat=1.1,refcount_bits=64,cluster_size=512; do
		i=$((i + 1))
		qemu-img create -q -f qcow2 -o "$o" "$D/a.qcow2" 64M
		qemu-io -f qcow2 -c 'write -P 0x11 0 1M' -c 'write -P 0x22 5M 64k' \
			-c 'write -P 0x33 9M 4k' -c 'write -z 5M 64k' \
			-c 'write -P 0x44 63M 1M' "$D/a.qcow2" >/dev/null
		cp "$D/a.qcow2" "$D/ref.qcow2"
		serve "v$i" "qcow2:$D/a.qcow2"
		run nbdinfo --size "$U"
		assert_output 67108864
		same_as_qemu "$D/a.qcow2"
		qio "${w[@]}" >/dev/null
		same_as_qemu "$D/a.qcow2"
		worker_stop
		for c in "${w[@]}"; do
			qemu-io -f qcow2 -c "$c" "$D/ref.qcow2" >/dev/null
		done
		clean "$D/a.qcow2"
		run qemu-img compare "$D/a.qcow2" "$D/ref.qcow2"
		assert_success
		rm -f "$D/a.qcow2" "$D/ref.qcow2"
	done
}

@test "qcow2: the worker's meta-cache key sizes the metadata cache; a bad value is refused naming it" {
	qemu-img create -q -f qcow2 "$D/m.qcow2" 64M
	BLKSTACK_CONF=$BATS_TEST_TMPDIR/blkstack.conf
	export BLKSTACK_CONF
	echo "meta-cache = 4M" >"$BLKSTACK_CONF"
	serve mc "qcow2:$D/m.qcow2"
	qio 'write 0 4k' >/dev/null
	run "$BIN/blkstack-ctl" --rundir "$WORKER_RUNDIR" stats --name mc --json
	assert_success
	assert_output --partial '"cache_slots":64'
	worker_stop
	# The smallest cache (8 slots) with 4 KiB clusters: 128 L2 tables
	# and 17 refcount blocks for 256 MiB, evicted and loaded all along.
	command -v fio >/dev/null || skip "fio is not installed"
	echo "meta-cache = 1" >"$BLKSTACK_CONF"
	qemu-img create -q -f qcow2 -o cluster_size=4096 "$D/s.qcow2" 256M
	serve ms "qcow2:$D/s.qcow2"
	run -0 timeout 300 fio --name=small --ioengine=nbd --uri="$U" \
		--rw=randwrite --bs=4k --size=256M --io_size=16M --iodepth=32 \
		--verify=crc32c --do_verify=1 --verify_fatal=1
	assert_output --partial "err= 0"
	run "$BIN/blkstack-ctl" --rundir "$WORKER_RUNDIR" stats --name ms --json
	assert_output --partial '"cache_slots":8'
	refute_output --partial '"cache_evictions":0,'
	worker_stop
	clean "$D/s.qcow2"
	echo "meta-cache = lots" >"$BLKSTACK_CONF"
	refuse "qcow2:$D/m.qcow2" "blkstack.conf:1: meta-cache: 'lots' is not a size"
}

@test "qcow2: backing chains: a qcow2 base named relative to the image, a raw base smaller than the image; copy on write through the worker matches qemu-io" {
	mkdir -p "$D/sub"
	qemu-img create -q -f qcow2 "$D/base.qcow2" 64M
	qemu-io -f qcow2 -c 'write -P 0x51 0 3M' -c 'write -P 0x52 60M 4M' \
		"$D/base.qcow2" >/dev/null
	(cd "$D/sub" && qemu-img create -q -f qcow2 -b ../base.qcow2 -F qcow2 \
		top.qcow2 64M)
	qemu-io -f qcow2 -c 'write -P 0x61 1M 512k' "$D/sub/top.qcow2" >/dev/null
	head -c $((24 << 20)) /dev/urandom >"$D/base.raw"
	qemu-img create -q -f qcow2 -b "$D/base.raw" -F raw "$D/top2.qcow2" 64M
	qemu-io -f qcow2 -c 'write -P 0x62 8M 64k' "$D/top2.qcow2" >/dev/null
	cp "$D/sub/top.qcow2" "$D/sub/ref.qcow2"
	cp "$D/top2.qcow2" "$D/ref2.qcow2"

	serve t1 "qcow2:$D/sub/top.qcow2"
	same_as_qemu "$D/sub/top.qcow2"
	# Parts of clusters: the rest comes from the base.
	local w=('write -P 0x71 4k 4k' 'write -P 0x72 1500k 8k'
		'write -P 0x73 61M 512' 'write -P 0x74 30M 64k')
	qio "${w[@]}" >/dev/null
	worker_stop
	local c
	for c in "${w[@]}"; do qemu-io -f qcow2 -c "$c" "$D/sub/ref.qcow2" >/dev/null; done
	clean "$D/sub/top.qcow2"
	run qemu-img compare "$D/sub/top.qcow2" "$D/sub/ref.qcow2"
	assert_success

	serve t2 "qcow2:$D/top2.qcow2"
	same_as_qemu "$D/top2.qcow2"
	local w2=('write -P 0x75 20M 4k' 'write -P 0x76 24M 4k' 'write -P 0x77 40M 4k')
	qio "${w2[@]}" >/dev/null
	worker_stop
	for c in "${w2[@]}"; do qemu-io -f qcow2 -c "$c" "$D/ref2.qcow2" >/dev/null; done
	clean "$D/top2.qcow2"
	run qemu-img compare "$D/top2.qcow2" "$D/ref2.qcow2"
	assert_success
	# Both bases untouched.
	clean "$D/base.qcow2"
}

@test "qcow2: compressed clusters (zlib, zstd) are read, and a write into one copies the rest" {
	local t
	python3 -c '
import random, sys
random.seed(7)
sys.stdout.buffer.write(b"".join(bytes([random.randrange(3) + 65]) * 512 for _ in range(16384)))
' >"$D/src.raw"
	for t in zlib zstd; do
		qemu-img convert -c -O qcow2 -o compression_type=$t "$D/src.raw" "$D/c.qcow2"
		run qemu-img info "$D/c.qcow2"
		assert_output --partial "compression type: $t"
		cp "$D/c.qcow2" "$D/ref.qcow2"
		serve "c$t" "qcow2:$D/c.qcow2"
		same_as_qemu "$D/c.qcow2"
		qio 'write -P 0x99 100k 4k' 'write -P 0x98 2M 64k' >/dev/null
		worker_stop
		qemu-io -f qcow2 -c 'write -P 0x99 100k 4k' -c 'write -P 0x98 2M 64k' \
			"$D/ref.qcow2" >/dev/null
		run qemu-img check "$D/c.qcow2"
		assert_output --partial "No errors were found"
		run qemu-img compare "$D/c.qcow2" "$D/ref.qcow2"
		assert_success
		rm -f "$D/c.qcow2" "$D/ref.qcow2"
	done
}

@test "qcow2: fio random write with verify through the worker: qemu-img check clean, same image as the job through qemu-nbd" {
	command -v fio >/dev/null || skip "fio is not installed"
	command -v qemu-nbd >/dev/null || skip "qemu-nbd is not installed"
	local job=(--rw=randwrite --bs=4k --size=64M --io_size=24M --iodepth=16
		--randrepeat=1 --randseed=42 --verify=pattern --verify_pattern=%o
		--do_verify=1 --verify_fatal=1)
	qemu-img create -q -f qcow2 "$D/f.qcow2" 64M
	qemu-img create -q -f raw "$D/f.raw" 64M
	serve f "qcow2:$D/f.qcow2"
	run -0 timeout 300 fio --name=q2 --ioengine=nbd --uri="$U" "${job[@]}"
	assert_output --partial "err= 0"
	worker_stop
	clean "$D/f.qcow2"
	qemu-nbd -t -f raw --cache=none --aio=native -k "$D/qnbd.sock" "$D/f.raw" &
	QNBD=$!
	local n=100
	while [ ! -S "$D/qnbd.sock" ] && [ $n -gt 0 ]; do sleep 0.1; n=$((n - 1)); done
	run -0 timeout 300 fio --name=q2 --ioengine=nbd \
		--uri="nbd+unix:///?socket=$D/qnbd.sock" "${job[@]}"
	kill "$QNBD"
	wait "$QNBD" || true
	QNBD=
	run qemu-img compare "$D/f.qcow2" "$D/f.raw"
	assert_success
	assert_output --partial "Images are identical."
}

@test "qcow2: block status: nbdinfo --map on the worker agrees with qemu-img map (data, zero, hole, from the backing file)" {
	command -v nbdinfo >/dev/null || skip "nbdinfo is not installed"
	qemu-img create -q -f qcow2 "$D/b.qcow2" 16M
	qemu-io -f qcow2 -c 'write -P 1 0 2M' -c 'write -P 2 8M 1M' "$D/b.qcow2" >/dev/null
	qemu-img create -q -f qcow2 -b "$D/b.qcow2" -F qcow2 "$D/t.qcow2" 16M
	qemu-io -f qcow2 -c 'write -P 3 1M 2M' -c 'write -z 8M 512k' \
		-c 'write -P 4 12M 64k' "$D/t.qcow2" >/dev/null
	serve m "qcow2:$D/t.qcow2"
	# qemu-img map: per range, data (1) or not, zero or not.
	qemu-img map --output=json "$D/t.qcow2" | python3 -c '
import json, sys
for e in json.load(sys.stdin):
    kind = "data" if e["data"] else ("zero" if e["present"] else "hole")
    print(e["start"], e["length"], kind)' | python3 -c '
import sys
out = []
for line in sys.stdin:
    s, l, k = line.split(); s, l = int(s), int(l)
    if out and out[-1][2] == k and out[-1][0] + out[-1][1] == s:
        out[-1][1] += l
    else:
        out.append([s, l, k])
for s, l, k in out: print(s, l, k)' >"$D/want.map"
	nbdinfo --map "$U" | awk '{
		k = ($3 == 0) ? "data" : ($3 == 2 ? "zero" : "hole");
		print $1, $2, k }' >"$D/got.map"
	diff "$D/want.map" "$D/got.map"
	# The depth (which image holds the range) is reported too.
	run nbdinfo --map=qemu:allocation-depth "$U"
	if [ "$status" -eq 0 ]; then
		assert_output --partial "local"
		assert_output --partial "backing depth 2"
	fi
}

@test "qcow2: discard and write_zeroes read back as zeroes; qemu-img check clean; zero clusters in qemu-img map" {
	qemu-img create -q -f qcow2 "$D/z.qcow2" 16M
	qemu-io -f qcow2 -c 'write -P 0x5a 0 8M' "$D/z.qcow2" >/dev/null
	qemu-img create -q -f qcow2 -b "$D/z.qcow2" -F qcow2 "$D/zt.qcow2" 16M
	serve z "qcow2:$D/z.qcow2"
	qio 'write -z 1M 1M' 'discard 2M 1M' 'write -z 4M 4k' 'write -z -u 5M 128k' \
		'write -z 3M 64k' >/dev/null
	run qio 'read -P 0 1M 1M' 'read -P 0 3M 64k' 'read -P 0x5a 3136k 4k' 'read -P 0 4M 4k' \
		'read -P 0x5a 4100k 60k' 'read -P 0 5M 128k'
	assert_success
	refute_output --partial "Pattern verification failed"
	worker_stop
	clean "$D/z.qcow2"
	run qemu-io -f qcow2 -c 'read -P 0 1M 1M' -c 'read -P 0 4M 4k' \
		-c 'read -P 0 5M 128k' "$D/z.qcow2"
	refute_output --partial "Pattern verification failed"
	run qemu-img map --output=json "$D/z.qcow2"
	assert_output --partial '"start": 1048576, "length": 1048576, "depth": 0, "present": true, "zero": true, "data": false'
	# Over a backing file, write_zeroes hides it (zero clusters).
	serve zt "qcow2:$D/zt.qcow2"
	qio 'write -z 0 1M' >/dev/null
	run qio 'read -P 0 0 1M' 'read -P 0x5a 6M 1M'
	refute_output --partial "Pattern verification failed"
	worker_stop
	clean "$D/zt.qcow2"
}

@test "qcow2: refusals name the feature: unknown incompatible bit, encryption, external data file, extended L2, dirty and corrupt for writing" {
	qemu-img create -q -f qcow2 "$D/u.qcow2" 1M
	set_be64 "$D/u.qcow2" 72 0x100
	refuse "qcow2:$D/u.qcow2" "unknown incompatible feature bit 8"
	# LUKS creation times its key derivation, which fails now and then on
	# a loaded machine ("Unable to get accurate CPU usage"): three tries.
	for _ in 1 2 3; do
		rm -f "$D/e.qcow2"
		! qemu-img create -q -f qcow2 --object secret,id=s0,data=123456 \
			-o encrypt.format=luks,encrypt.key-secret=s0 "$D/e.qcow2" 1M || break
	done
	[ -s "$D/e.qcow2" ]
	refuse "qcow2:$D/e.qcow2" "encryption"
	qemu-img create -q -f qcow2 -o data_file="$D/data.raw" "$D/x.qcow2" 1M
	refuse "qcow2:$D/x.qcow2" "external data file"
	qemu-img create -q -f qcow2 -o extended_l2=on "$D/l.qcow2" 1M
	refuse "qcow2:$D/l.qcow2" "extended L2"
	qemu-img create -q -f qcow2 "$D/c.qcow2" 1M
	set_be64 "$D/c.qcow2" 72 0x2
	refuse "qcow2:$D/c.qcow2" "the corrupt bit is set"
	serve cro "qcow2:$D/c.qcow2" --read-only
	worker_stop
	set_be64 "$D/c.qcow2" 72 0x1
	refuse "qcow2:$D/c.qcow2" "the dirty bit is set"
	serve dro "qcow2:$D/c.qcow2" --read-only
	worker_stop
}

@test "qcow2: refusals of broken images: truncated file, L1 table past the end, bad cluster_bits, a bad L2 entry is an I/O error" {
	qemu-img create -q -f qcow2 "$D/t.qcow2" 1M
	head -c 512 "$D/t.qcow2" >"$D/short.qcow2"
	refuse "qcow2:$D/short.qcow2" "past the end of the file"
	cp "$D/t.qcow2" "$D/l1.qcow2"
	set_be64 "$D/l1.qcow2" 40 $((1 << 30))
	refuse "qcow2:$D/l1.qcow2" "L1 table at 0x40000000"
	cp "$D/t.qcow2" "$D/cb.qcow2"
	python3 -c '
import sys
with open(sys.argv[1], "r+b") as f:
    f.seek(20); f.write((30).to_bytes(4, "big"))' "$D/cb.qcow2"
	refuse "qcow2:$D/cb.qcow2" "cluster_bits 30 is outside 9..21"
	# An L2 entry pointing past the end of the file.
	qemu-img create -q -f qcow2 "$D/e.qcow2" 1M
	qemu-io -f qcow2 -c 'write 0 4k' "$D/e.qcow2" >/dev/null
	local l2
	l2=$(python3 -c '
import struct, sys
with open(sys.argv[1], "rb") as f:
    f.seek(40); l1 = struct.unpack(">Q", f.read(8))[0]
    f.seek(l1); print(struct.unpack(">Q", f.read(8))[0] & 0x00fffffffffffe00)' "$D/e.qcow2")
	set_be64 "$D/e.qcow2" "$l2" 0x8000010000000000
	serve e "qcow2:$D/e.qcow2"
	run timeout 30 nbdcopy "$U" "$D/e.raw"
	assert_failure
	# The stats name the file, the table, the entry and its value.
	run "$BIN/blkstack-ctl" --rundir "$WORKER_RUNDIR" stats --name e --json
	assert_success
	assert_output --partial "e.qcow2: L2 table at 0x"
	assert_output --partial "entry 0: L2 entry: host cluster at 0x10000000000 is past the end of the file"
	worker_stop
}

@test "qcow2: a backing loop (a -> b -> a) and a chain deeper than 16 are refused, naming them" {
	qemu-img create -q -f qcow2 "$D/a.qcow2" 1M
	qemu-img create -q -f qcow2 -b "$D/a.qcow2" -F qcow2 "$D/b.qcow2" 1M
	qemu-img rebase -u -b "$D/b.qcow2" -F qcow2 "$D/a.qcow2"
	refuse "qcow2:$D/a.qcow2" "backing chain loop"
	assert_output --partial "$D/a.qcow2"
	# Through a symlink it is the same file.
	ln -s "$D/a.qcow2" "$D/link.qcow2"
	qemu-img rebase -u -b "$D/link.qcow2" -F qcow2 "$D/b.qcow2"
	refuse "qcow2:$D/a.qcow2" "backing chain loop"
	local i
	qemu-img create -q -f qcow2 "$D/d0.qcow2" 1M
	for i in $(seq 1 16); do
		qemu-img create -q -f qcow2 -b "d$((i - 1)).qcow2" -F qcow2 "$D/d$i.qcow2" 1M
	done
	refuse "qcow2:$D/d16.qcow2" "more than 16 layers"
	serve ok "qcow2:$D/d15.qcow2"
	worker_stop
}

@test "qcow2: log:|qcow2: the dirty log sees the guest's writes only, not the metadata" {
	qemu-img create -q -f qcow2 "$D/g.qcow2" 64M
	serve g "log:block=4K|qcow2:$D/g.qcow2"
	qio 'write 0 8k' 'write 1M 4k' 'write 40M 4k' >/dev/null
	run "$BIN/blkstack-ctl" --rundir "$WORKER_RUNDIR" dirty --name g
	assert_success
	assert_output "$(printf '0 8192\n1048576 4096\n41943040 4096')"
	worker_stop
	clean "$D/g.qcow2"
}

@test "qcow2: SIGKILL during random writes, five times: qemu-img check finds no corruption, every acknowledged write reads back" {
	command -v fio >/dev/null || skip "fio is not installed"
	local i log n=0
	qemu-img create -q -f qcow2 "$D/k.qcow2" 256M
	for i in 1 2 3 4 5; do
		serve "k$i" "qcow2:$D/k.qcow2"
		log=$BATS_TEST_TMPDIR/acked$i
		# Fresh clusters (acked-writes: 4 KiB blocks from offset 0, at
		# most 32768 of them: below fio's range, which starts at 128M and
		# would overwrite them), and random allocating writes beside.
		python3 "$TOP/tests/worker/acked-writes.py" --depth 16 "$NBD_SOCK" \
			32768 "$log" &
		local aw=$!
		fio --name=k --ioengine=nbd --uri="$U" --rw=randwrite --bs=4k \
			--offset=128M --size=128M --iodepth=16 --time_based --runtime=30 \
			--randseed=$i >/dev/null 2>&1 &
		local fpid=$!
		sleep "0.$((RANDOM % 9 + 1))"
		kill -KILL "$WORKER_PID"
		wait "$WORKER_PID" || true
		wait "$aw" || true
		kill "$fpid" 2>/dev/null || true
		wait "$fpid" || true
		run qemu-img check "$D/k.qcow2"
		# Leaks (status 3) are allowed; corruptions (status 2) are not.
		[ "$status" -eq 0 ] || [ "$status" -eq 3 ] || fail "check: $output"
		refute_output --partial "ERROR"
		qemu-img convert -O raw "$D/k.qcow2" "$D/k.raw"
		check_acked "$D/k.raw" "$log"
		n=$((n + $(wc -l <"$log")))
		rm -f "$D/k.raw"
	done
	[ "$n" -gt 0 ] || fail "no write was acknowledged before the kills"
}
