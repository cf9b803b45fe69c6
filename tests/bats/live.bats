#!/usr/bin/env bats
# Live operations (issue 15): snapshot, reopen (the image swap), commit and
# stream of a running worker's chain, on qcow2 and on VHD, each under an fio
# verify workload through the worker's NBD socket (fio's nbd engine), and
# the failure cases: an overlay on a full file system, a chain of another
# size, a cancel midway, a kill -9 midway through commit and stream.
#
# What proves the data: fio writes a pattern that depends only on the
# block's offset (verify=pattern, %o), so that its verify pass really
# compares what it reads with what it wrote; the same fio job (same seed,
# so the same blocks) is then run on a raw reference file that got the
# same preparation, and the chain the worker left on disk is compared with
# that reference by qemu-img compare (qemu reading the qcow2 chain itself;
# for a differencing VHD, which qemu-img cannot read, the chain as a fresh
# blkstack worker serves it, and qemu-img compare of the dynamic VHD a
# commit or a stream leaves).  Every image of the chain is checked by
# qemu-img check (qcow2), blkstack-img check and vhdiinfo (VHD).
bats_require_minimum_version 1.5.0

load helpers

setup() {
	img_dir
	D=$IMG_DIR
	IMGTOOL=$BIN/blkstack-img
	REF=$D/ref.raw
	: "${WORKER_RUNDIR=$BATS_TEST_TMPDIR/run}"
	export WORKER_RUNDIR
	FIO=
	MNT=
	WRITER=
}

teardown() {
	[ -z "${FIO:-}" ] || kill "$FIO" 2>/dev/null || true
	[ -z "${WRITER:-}" ] || kill "$WRITER" 2>/dev/null || true
	worker_teardown
	if [ -n "${MNT:-}" ]; then
		umount "$MNT" 2>/dev/null || umount -l "$MNT" 2>/dev/null || true
	fi
}

# ctl ARGS...: blkstack-ctl on this test's rundir, bounded.
ctl() {
	timeout 150 "$BIN/blkstack-ctl" --rundir "$WORKER_RUNDIR" "$@"
}

# jval JSON EXPR: EXPR (Python, over d = the parsed JSON) printed.
jval() {
	python3 -c 'import json, sys
d = json.loads(sys.argv[1])
v = eval(sys.argv[2])
print(json.dumps(v) if isinstance(v, (dict, list, tuple, bool)) or v is None else v)' "$1" "$2"
}

# info_val EXPR: EXPR of worker live's `info --json`.
info_val() {
	local out
	out=$(ctl info --name live --json) || return 1
	jval "$out" "$1"
}

# ---- images ---------------------------------------------------------------------

# mk_images FORMAT SIZE_MB PREFILL_MB: $REF, a raw SIZE_MB file whose first
# PREFILL_MB hold byte 0x5a (the rest a hole); $D/base.FORMAT with the
# same data (qcow2, or a dynamic VHD) and $D/top.FORMAT, an empty overlay
# over it (a differencing VHD made by blkstack-img).
mk_images() {
	local f=$1
	SIZE_MB=$2
	truncate -s "${SIZE_MB}M" "$REF"
	qemu-io -f raw -c "write -q -P 0x5a 0 ${3}M" "$REF" >/dev/null
	if [ "$f" = qcow2 ]; then
		qemu-img convert -q -f raw -O qcow2 "$REF" "$D/base.qcow2"
		qemu-img create -q -f qcow2 -b "$D/base.qcow2" -F qcow2 "$D/top.qcow2"
	else
		qemu-img convert -q -f raw -O vpc -o subformat=dynamic,force_size=on \
			"$REF" "$D/base.vhd"
		"$IMGTOOL" create -q -f vhd -b "$D/base.vhd" -F vhd "$D/top.vhd"
	fi
}

# both_write PATTERN OFFSET LENGTH: write PATTERN through the running
# worker's NBD socket and into $REF.
both_write() {
	qemu-io -f raw -c "write -q -P $1 $2 $3" "$(nbd_uri)" >/dev/null
	qemu-io -f raw -c "write -q -P $1 $2 $3" "$REF" >/dev/null
}

# check_img FILE [CRASHED]: FILE checks clean (qcow2: qemu-img check and
# blkstack-img check; VHD: blkstack-img check and vhdiinfo).  CRASHED=1
# (after a kill -9) allows leaked clusters (exit 3), never a corruption.
check_img() {
	local ok="0"
	[ "${2:-0}" = 1 ] && ok="0 3"
	case $1 in
	*.qcow2)
		run qemu-img check -f qcow2 "$1"
		[[ " $ok " == *" $status "* ]] || fail "qemu-img check $1 (exit $status): $output"
		refute_output --partial ERROR
		;;
	*.vhd)
		run vhdiinfo "$1"
		[ "$status" -eq 0 ] || fail "vhdiinfo $1: $output"
		;;
	esac
	run "$IMGTOOL" check "$1"
	[[ " $ok " == *" $status "* ]] || fail "blkstack-img check $1 (exit $status): $output"
}

# read_chain CHAIN OUT: the disk as a fresh read-only worker serves CHAIN.
read_chain() {
	local pid=${WORKER_PID:-} sock=${NBD_SOCK:-}
	worker_start readback "$1" --read-only
	rm -f "$2"
	nbdcopy "$(nbd_uri)" "$2"
	worker_stop
	WORKER_PID=$pid NBD_SOCK=$sock
}

# same_as_ref IMAGE: IMAGE (with its backing chain) reads as $REF.  qemu-img
# compare reads qcow2 and dynamic VHD itself; a differencing VHD is read
# through a fresh worker.
same_as_ref() {
	case $1 in
	*.qcow2)
		run qemu-img compare -f qcow2 -F raw "$1" "$REF"
		;;
	*.vhd)
		if vhdiinfo "$1" 2>/dev/null | grep -qi 'differential\|differencing'; then
			read_chain "vhd:$1" "$D/readback.raw"
			run qemu-img compare -f raw -F raw "$D/readback.raw" "$REF"
		else
			run qemu-img compare -f vpc -F raw "$1" "$REF"
		fi
		;;
	esac
	[ "$status" -eq 0 ] || fail "qemu-img compare $1 with the reference (exit $status): $output"
}

# no_backing IMAGE: IMAGE names no backing file any more.
no_backing() {
	case $1 in
	*.qcow2)
		run -0 qemu-img info --output=json "$1"
		refute_output --partial backing-filename
		;;
	*.vhd)
		run -0 vhdiinfo "$1"
		refute_output --regexp '[Dd]ifferen'
		;;
	esac
}

# ---- the fio workload -------------------------------------------------------------

# The job: 24 MiB of random writes of mixed sizes over the disk (every block
# at most once: fio's random map), a fixed seed, the offset pattern; the
# write rate keeps the write phase a few seconds long, so that the
# operation happens in it; then fio reads every block back and compares.
fio_job() {
	printf '%s\n' --name=live --rw=randwrite --bssplit=4k/50:64k/40:1m/10 \
		--size="${SIZE_MB}M" --io_size=24M --randseed=1515 \
		--verify=pattern --verify_pattern=0xc3%o --do_verify=1 \
		--verify_fatal=1 --verify_state_save=0
}

# fio_start: the job in the background through the worker's socket.
fio_start() {
	local -a job
	mapfile -t job < <(fio_job)
	fio "${job[@]}" --ioengine=nbd --uri="$(nbd_uri)" --iodepth=16 \
		--rate=,4m --output="$BATS_TEST_TMPDIR/fio.out" &
	FIO=$!
	sleep 1
	! gone "$FIO" || fail "fio ended before the operation (the test would not test it under load): $(cat "$BATS_TEST_TMPDIR/fio.out")"
}

# fio_end: wait (3 minutes at most) for fio; it must report no error and
# its verify must have passed.  Then the same job on $REF.
fio_end() {
	local n=1800 st=0 out=$BATS_TEST_TMPDIR/fio.out
	local -a job
	while [ "$n" -gt 0 ] && ! gone "$FIO"; do
		sleep 0.1
		n=$((n - 1))
	done
	gone "$FIO" || fail "fio still running after 180 s"
	wait "$FIO" || st=$?
	FIO=
	[ "$st" -eq 0 ] || fail "fio exited $st: $(cat "$out")"
	run grep -c 'err= 0' "$out"
	assert_output 1
	run grep -E 'verify failed|bad pattern|error=' "$out"
	assert_failure
	mapfile -t job < <(fio_job)
	fio "${job[@]}" --ioengine=psync --filename="$REF" \
		--output="$BATS_TEST_TMPDIR/fio-ref.out" ||
		fail "fio on the reference: $(cat "$BATS_TEST_TMPDIR/fio-ref.out")"
}

# serving: the worker still serves: a read over NBD.
serving() {
	run -0 timeout 30 qemu-io -f raw -c 'read -q 0 64k' "$(nbd_uri)"
}

# ---- the controls: the checks fail when the data is wrong ---------------------------

# control FORMAT: the workload with no operation passes every check; then
# fio's verify with another pattern fails, and so does the comparison with
# the reference after one block of the top is changed behind its back.
control() {
	local f=$1
	local -a job
	mk_images "$f" 64 40
	worker_start live "$f:$D/top.$f"
	fio_start
	fio_end
	mapfile -t job < <(fio_job)
	run fio "${job[@]}" --verify_only --verify_pattern=0xc4%o \
		--ioengine=nbd --uri="$(nbd_uri)" --iodepth=16
	assert_failure
	assert_output --partial "got pattern 'c3', wanted 'c4'"
	worker_stop
	for i in top base; do
		check_img "$D/$i.$f"
	done
	same_as_ref "$D/top.$f"
	worker_start live "$f:$D/top.$f"
	qemu-io -f raw -c 'write -q -P 0x77 8M 4k' "$(nbd_uri)" >/dev/null
	worker_stop
	run same_as_ref "$D/top.$f"
	assert_failure
}

@test "live: control, qcow2: with no operation every check passes; fio's verify and the comparison with the reference fail on other data" {
	control qcow2
}

@test "live: control, VHD: with no operation every check passes; fio's verify and the comparison with the reference fail on other data" {
	control vhd
}

# ---- every operation under the fio verify load --------------------------------------

op_snapshot() {
	local f=$1 out
	mk_images "$f" 64 40
	worker_start live "$f:$D/top.$f"
	fio_start
	run ctl snapshot --name live --overlay "$D/snap.$f" --json
	assert_success
	out=$output
	run -0 jval "$out" 'd["ok"] and d["held_ms"] >= 0 and d["held_us"] >= 0'
	assert_output true
	run -0 jval "$out" 'd["chain"]'
	assert_output --partial "$D/snap.$f"
	run -0 info_val 'd["chain"]'
	assert_output --partial "$D/snap.$f"
	fio_end
	worker_stop
	if [ "$f" = qcow2 ]; then
		run -0 qemu-img info --backing-chain "$D/snap.qcow2"
		assert_output --partial "backing file: $D/top.qcow2"
	fi
	for i in snap top base; do
		check_img "$D/$i.$f"
	done
	same_as_ref "$D/snap.$f"
}

@test "live: snapshot of a qcow2 chain under fio verify writes: no error, every image checks clean, the new chain reads as the reference" {
	op_snapshot qcow2
}

@test "live: snapshot of a VHD chain under fio verify writes: no error, every image checks clean, the new chain reads as the reference" {
	op_snapshot vhd
}

op_reopen() {
	local f=$1 sum
	mk_images "$f" 64 40
	worker_start live "$f:$D/top.$f"
	fio_start
	# The swap as an operator does it: pause (every acknowledged write is
	# in the file: metadata is written through), copy, reopen, unpause.
	run -0 ctl pause --name live
	cp --sparse=always "$D/top.$f" "$D/copy.$f"
	# A copy of an image open for writing carries the clusters its writer
	# holds in reserve (refcounted, not yet used) as leaks: repair them in
	# the copy before it serves.
	if [ "$f" = qcow2 ]; then
		run -0 qemu-img check -q -r leaks "$D/copy.$f"
	fi
	run ctl reopen --name live --chain "$f:$D/copy.$f" --json
	assert_success
	run -0 jval "$output" 'd["ok"] and d["held_ms"] >= 0'
	assert_output true
	run -0 ctl unpause --name live
	sum=$(sha256sum <"$D/top.$f")
	run -0 info_val 'd["chain"]'
	assert_output --partial "$D/copy.$f"
	fio_end
	worker_stop
	# The writes after the swap went to the copy only.
	assert_equal "$(sha256sum <"$D/top.$f")" "$sum"
	for i in copy base; do
		check_img "$D/$i.$f"
	done
	same_as_ref "$D/copy.$f"
}

@test "live: reopen of a qcow2 chain onto a copy under fio verify writes: no error, the old image untouched after the swap, the copy reads as the reference" {
	op_reopen qcow2
}

@test "live: reopen of a VHD chain onto a copy under fio verify writes: no error, the old image untouched after the swap, the copy reads as the reference" {
	op_reopen vhd
}

op_commit() {
	local f=$1
	mk_images "$f" 64 40
	worker_start live "$f:$D/top.$f"
	both_write 0x33 32M 8M
	fio_start
	run ctl commit --name live --json
	assert_success
	run -0 jval "$output" 'd["ok"]'
	assert_output true
	run -0 info_val 'd["chain"]'
	assert_output "$f:$D/base.$f"
	run -0 info_val 'd["last_job"]["kind"] + " " + d["last_job"]["result"]'
	assert_output "commit ok"
	fio_end
	worker_stop
	check_img "$D/base.$f"
	# The base alone holds everything now.
	same_as_ref "$D/base.$f"
}

@test "live: commit of a qcow2 overlay into its base under fio verify writes: no error, the chain is the base, which checks clean and reads as the reference" {
	op_commit qcow2
}

@test "live: commit of a differencing VHD into its base under fio verify writes: no error, the chain is the base, which checks clean and reads as the reference" {
	op_commit vhd
}

op_stream() {
	local f=$1
	mk_images "$f" 64 40
	worker_start live "$f:$D/top.$f"
	both_write 0x33 32M 8M
	fio_start
	run ctl stream --name live --json
	assert_success
	run -0 jval "$output" 'd["ok"]'
	assert_output true
	run -0 info_val 'd["last_job"]["kind"] + " " + d["last_job"]["result"]'
	assert_output "stream ok"
	fio_end
	worker_stop
	check_img "$D/top.$f"
	no_backing "$D/top.$f"
	# The top alone holds everything: the base is not needed any more.
	mv "$D/base.$f" "$D/base.$f.gone"
	same_as_ref "$D/top.$f"
}

@test "live: stream into a qcow2 overlay under fio verify writes: no error, the top has no backing and reads alone as the reference" {
	op_stream qcow2
}

@test "live: stream into a differencing VHD under fio verify writes: no error, the top is a dynamic VHD that reads alone as the reference" {
	op_stream vhd
}

# ---- failure cases ------------------------------------------------------------------

# full_fs: MNT, a 1 MiB tmpfs filled up (a new file can be created, not
# written).
full_fs() {
	MNT=$BATS_TEST_TMPDIR/full
	mkdir -p "$MNT"
	mount -t tmpfs -o size=1m blkstack-live-full "$MNT"
	dd if=/dev/zero of="$MNT/fill" bs=4k status=none 2>/dev/null || true
	run dd if=/dev/zero of="$MNT/probe" bs=4k count=1 status=none
	assert_failure
	rm -f "$MNT/probe"
}

op_full() {
	local f=$1 chain
	mk_images "$f" 64 40
	full_fs
	worker_start live "$f:$D/top.$f"
	chain=$(info_val 'd["chain"]')
	fio_start
	run --separate-stderr ctl snapshot --name live --overlay "$MNT/snap.$f" --json
	assert_failure
	run -0 jval "$output" 'd["ok"]'
	assert_output false
	# The overlay was removed, the chain is the same, the worker serves.
	assert_not_exist "$MNT/snap.$f"
	run -0 info_val 'd["chain"]'
	assert_output "$chain"
	serving
	fio_end
	worker_stop
	for i in top base; do
		check_img "$D/$i.$f"
	done
	same_as_ref "$D/top.$f"
}

@test "live: snapshot of a qcow2 chain onto a full file system under load fails: no overlay left, the chain unchanged, fio sees no error" {
	op_full qcow2
}

@test "live: snapshot of a VHD chain onto a full file system under load fails: no overlay left, the chain unchanged, fio sees no error" {
	op_full vhd
}

op_other_size() {
	local f=$1 chain reply
	mk_images "$f" 64 40
	if [ "$f" = qcow2 ]; then
		qemu-img create -q -f qcow2 "$D/other.qcow2" 32M
	else
		qemu-img create -q -f vpc -o subformat=dynamic,force_size=on "$D/other.vhd" 32M
	fi
	worker_start live "$f:$D/top.$f"
	chain=$(info_val 'd["chain"]')
	fio_start
	run --separate-stderr ctl reopen --name live --chain "$f:$D/other.$f" --json
	assert_failure
	reply=$output
	run -0 jval "$reply" 'd["ok"]'
	assert_output false
	run -0 jval "$reply" 'd["error"]'
	assert_output --partial size
	run -0 info_val 'd["chain"]'
	assert_output "$chain"
	serving
	fio_end
	worker_stop
	for i in top base; do
		check_img "$D/$i.$f"
	done
	same_as_ref "$D/top.$f"
}

@test "live: reopen of a qcow2 chain onto a chain of another size under load fails with the sizes: the old chain serves, fio sees no error" {
	op_other_size qcow2
}

@test "live: reopen of a VHD chain onto a chain of another size under load fails with the sizes: the old chain serves, fio sees no error" {
	op_other_size vhd
}

op_cancel() {
	local f=$1 kind=$2 chain
	mk_images "$f" 256 64
	worker_start live "$f:$D/top.$f"
	# Much to copy: the job is still running when the cancel comes.
	both_write 0x33 64M 192M
	chain=$(info_val 'd["chain"]')
	fio_start
	run -0 ctl "$kind" --name live --no-wait --json
	run ctl cancel --name live --json
	assert_success
	run -0 info_val 'd["job"] is None and d["last_job"]["kind"] + " " + d["last_job"]["result"]'
	assert_output "$kind cancelled"
	run -0 info_val 'd["chain"]'
	assert_output "$chain"
	serving
	fio_end
	# The chain on disk is consistent and reads as the reference.
	worker_stop
	for i in top base; do
		check_img "$D/$i.$f"
	done
	same_as_ref "$D/top.$f"
	# The operation can be started again, and completes.
	worker_start live "$f:$D/top.$f"
	run ctl "$kind" --name live --json
	assert_success
	worker_stop
	if [ "$kind" = commit ]; then
		check_img "$D/base.$f"
		same_as_ref "$D/base.$f"
	else
		check_img "$D/top.$f"
		no_backing "$D/top.$f"
		same_as_ref "$D/top.$f"
	fi
}

@test "live: commit of a qcow2 overlay cancelled midway under load: the chain unchanged and consistent, fio sees no error, a new commit completes" {
	op_cancel qcow2 commit
}

@test "live: commit of a differencing VHD cancelled midway under load: the chain unchanged and consistent, fio sees no error, a new commit completes" {
	op_cancel vhd commit
}

@test "live: stream into a qcow2 overlay cancelled midway under load: the chain unchanged and consistent, fio sees no error, a new stream completes" {
	op_cancel qcow2 stream
}

@test "live: stream into a differencing VHD cancelled midway under load: the chain unchanged and consistent, fio sees no error, a new stream completes" {
	op_cancel vhd stream
}

# kill_midway FORMAT KIND: start KIND (commit or stream) with a writer
# logging its acknowledged writes (tests/worker/acked-writes.py, 4 KiB
# blocks from offset 0 on, 8 in flight) and kill -9 the worker while the
# job copies; then the images must be consistent and hold every
# acknowledged write, and a new worker must run the job to its end.
op_kill() {
	local f=$1 kind=$2 n phase chainf=$WORKER_RUNDIR/live/chain chain
	mk_images "$f" 128 128
	worker_start live "$f:$D/top.$f"
	both_write 0x33 64M 64M
	python3 "$TOP/tests/worker/acked-writes.py" --depth 8 "$NBD_SOCK" 16384 \
		"$BATS_TEST_TMPDIR/acked.log" >"$BATS_TEST_TMPDIR/acked.out" 2>&1 &
	WRITER=$!
	# The writer has had writes acknowledged before the job starts.
	n=300
	while [ "$n" -gt 0 ] && [ ! -s "$BATS_TEST_TMPDIR/acked.log" ]; do
		gone "$WRITER" && fail "acked-writes: $(cat "$BATS_TEST_TMPDIR/acked.out")"
		sleep 0.1
		n=$((n - 1))
	done
	[ -s "$BATS_TEST_TMPDIR/acked.log" ] || fail "no write acknowledged in 30 s"
	run -0 ctl "$kind" --name live --no-wait --json
	# Hold the job midway: a pause holds it (it starts no copy while the
	# chain is drained), and is let go until the job has copied something.
	n=100
	phase=
	while [ "$n" -gt 0 ]; do
		run -0 ctl pause --name live
		phase=$(info_val 'd["job"] and d["job"]["done_bytes"] > 0 and d["job"]["phase"]') || phase=
		case $phase in copying | converging) break ;; esac
		[ "$(info_val 'd["job"] is None')" = false ] ||
			fail "the $kind ended before the kill: $(info_val 'd["last_job"]')"
		run -0 ctl unpause --name live
		sleep 0.01
		n=$((n - 1))
	done
	[ "$n" -gt 0 ] || fail "the $kind copied nothing in 100 rounds"
	kill -9 "$WORKER_PID"
	wait "$WORKER_PID" || true
	n=300
	while [ "$n" -gt 0 ] && ! gone "$WRITER"; do
		sleep 0.1
		n=$((n - 1))
	done
	gone "$WRITER" || fail "the writer still runs 30 s after the kill"
	wait "$WRITER" || fail "acked-writes: $(cat "$BATS_TEST_TMPDIR/acked.out")"
	WRITER=
	[ -s "$BATS_TEST_TMPDIR/acked.log" ] || fail "no write was acknowledged"
	# The images as the dead worker left them, its chain (the recorded one
	# if the switch was recorded).
	chain="$f:$D/top.$f"
	[ ! -s "$chainf" ] || chain=$(cat "$chainf")
	for i in top base; do
		check_img "$D/$i.$f" 1
	done
	read_chain "$chain" "$D/crashed.raw"
	check_acked "$D/crashed.raw" "$BATS_TEST_TMPDIR/acked.log"
	run cmp -i 64M "$D/crashed.raw" "$REF"
	assert_success
	# The acknowledged writes go into the reference too.
	python3 - "$REF" "$BATS_TEST_TMPDIR/acked.log" <<'PY'
import sys
with open(sys.argv[1], "r+b") as f, open(sys.argv[2]) as log:
    for line in log:
        off, byte = map(int, line.split())
        f.seek(off)
        f.write(bytes([byte]) * 4096)
PY
	# A new worker (it opens the recorded chain, and comes up paused, as
	# the dead one was) runs the job to its end.
	worker_start live "$f:$D/top.$f"
	run -0 ctl unpause --name live
	run ctl "$kind" --name live --json
	assert_success
	run -0 info_val 'd["last_job"]["result"]'
	assert_output ok
	worker_stop
	if [ "$kind" = commit ]; then
		check_img "$D/base.$f" 1
		read_chain "$f:$D/base.$f" "$D/base.raw"
		check_acked "$D/base.raw" "$BATS_TEST_TMPDIR/acked.log"
		run -0 cmp -i 64M "$D/base.raw" "$REF"
	else
		check_img "$D/top.$f" 1
		no_backing "$D/top.$f"
		mv "$D/base.$f" "$D/base.$f.gone"
		read_chain "$f:$D/top.$f" "$D/top.raw"
		check_acked "$D/top.raw" "$BATS_TEST_TMPDIR/acked.log"
		run -0 cmp -i 64M "$D/top.raw" "$REF"
	fi
}

@test "live: kill -9 midway through a qcow2 commit under acknowledged writes: images consistent with every acknowledged write, a new worker commits to the end" {
	op_kill qcow2 commit
}

@test "live: kill -9 midway through a VHD commit under acknowledged writes: images consistent with every acknowledged write, a new worker commits to the end" {
	op_kill vhd commit
}

@test "live: kill -9 midway through a qcow2 stream under acknowledged writes: images consistent with every acknowledged write, a new worker streams to the end" {
	op_kill qcow2 stream
}

@test "live: kill -9 midway through a VHD stream under acknowledged writes: images consistent with every acknowledged write, a new worker streams to the end" {
	op_kill vhd stream
}

# ---- log: across a snapshot: the incremental backup -------------------------------

# extents: worker live's dirty extents, "OFFSET+LENGTH" a line.
extents() {
	local out
	out=$(ctl dirty --name live --json) || return 1
	jval "$out" '"\n".join("%d+%d" % (o, l) for o, l in d["extents"])'
}

@test "live: log: across a snapshot: the dirty set continues, a backup of the old top plus dirty --clear leaves only what was written since" {
	local M=1048576 K=65536
	mk_images qcow2 64 40
	worker_start live "log:|qcow2:$D/top.qcow2"
	# The full backup: everything clean from here on.
	run -0 ctl dirty --name live --clear
	nbdcopy "$(nbd_uri)" "$D/backup.raw"
	run -0 cmp "$D/backup.raw" "$REF"
	# A: written before the snapshot.
	both_write 0x11 1M 1M
	both_write 0x11 5M 64k
	cp "$REF" "$D/at-snapshot.raw"
	run ctl snapshot --name live --overlay "$D/snap.qcow2" --json
	assert_success
	# B: written after it.
	both_write 0x22 20M 1M
	both_write 0x22 1M 64k
	# The dirty set went on across the snapshot: A and B.
	run -0 extents
	assert_output "$(printf '%d+%d\n%d+%d\n%d+%d' $M $M $((5 * M)) $K $((20 * M)) $M)"
	# The incremental backup: the dirty blocks of the old top (read-only
	# now, as it was at the snapshot), onto the full backup.
	qemu-img convert -f qcow2 -O raw "$D/top.qcow2" "$D/old-top.raw"
	while IFS=+ read -r off len; do
		dd if="$D/old-top.raw" of="$D/backup.raw" bs=64k skip=$((off / K)) \
			seek=$((off / K)) count=$((len / K)) conv=notrunc status=none
	done < <(extents)
	run -0 cmp "$D/backup.raw" "$D/at-snapshot.raw"
	# The backup of the old top is taken: clearing leaves only B (what the
	# old top does not have), whatever A and B share included.
	run -0 ctl dirty --name live --clear
	run -0 extents
	assert_output "$(printf '%d+%d\n%d+%d' $M $K $((20 * M)) $M)"
	worker_stop
	for i in snap top base; do
		check_img "$D/$i.qcow2"
	done
	same_as_ref "$D/snap.qcow2"
}
