#!/usr/bin/env bats
# The rbd: sink (libblkstack/drivers/rbd.c) against a real single-node
# Ceph cluster (tests/ceph/cluster: one mon, one bluestore OSD on a file,
# in this file's private directory), with real clients (fio's nbd engine,
# nbdcopy, nbdinfo, qemu-io) through the worker's NBD export.  Run by
# make check-ceph (not make check).  Every wait is bounded.

load ../bats/helpers
load ceph

setup_file() {
	ceph_setup_file
}

teardown_file() {
	ceph_teardown_file
}

setup() {
	IMG=t$BATS_TEST_NUMBER
}

teardown() {
	worker_teardown
	# The OSD may have been stopped by a test that failed half-way.
	if [ ! -s "$CEPH_DIR/run/osd.0.pid" ]; then
		"$CLUSTER" osd-start "$CEPH_DIR" || true
	fi
}

# chain [IMAGE[@SNAP]] [OPTIONS]: the rbd: chain of an image of the cluster.
chain() {
	printf 'rbd:rbd/%s,conf=%s%s\n' "${1:-$IMG}" "$CEPH_CONF_FILE" "${2:+,$2}"
}

# worker_fails CHAIN: start a worker that must fail; its message in output.
worker_fails() {
	run timeout 60 "$BIN/blkstack-worker" --rundir "$BATS_TEST_TMPDIR/run" \
		--name f --chain "$1" --foreground
	assert_failure
}

@test "rbd: fio verify through the worker, and rbd export holds what was written" {
	rbdc create --size 64M "rbd/$IMG"
	worker_start w "$(chain)"
	run nbdinfo --size "$(nbd_uri)"
	assert_output 67108864
	run timeout 300 fio --name=v --ioengine=nbd --uri="$(nbd_uri)" \
		--rw=randwrite --bs=4k --iodepth=16 --size=32M --verify=crc32c \
		--do_verify=1 --verify_fatal=1 --verify_state_save=0 \
		--output-format=terse
	assert_success
	# Another pattern over the start, and large requests at the end.
	head -c 8M /dev/urandom >"$BATS_TEST_TMPDIR/a"
	timeout 120 nbdcopy "$BATS_TEST_TMPDIR/a" "$(nbd_uri)"
	worker_stop
	rbdc export "rbd/$IMG" "$BATS_TEST_TMPDIR/export" >/dev/null 2>&1
	cmp -n 8388608 "$BATS_TEST_TMPDIR/a" "$BATS_TEST_TMPDIR/export"
	run stat -c %s "$BATS_TEST_TMPDIR/export"
	assert_output 67108864
}

@test "rbd: write zeroes, discard, flush and FUA writes reach the image" {
	rbdc create --size 16M "rbd/$IMG"
	worker_start w "log:|$(chain)"
	run timeout 120 qemu-io -f raw -c 'write -P 0xab 0 2M' \
		-c 'write -f -P 0xcd 2M 64k' -c 'write -z 512k 512k' \
		-c 'discard 1M 1M' -c flush "$(nbd_uri)"
	assert_success
	# The FUA write was a write and a flush.
	run "$BIN/blkstack-ctl" --rundir "$WORKER_RUNDIR" stats --name w --json
	assert_success
	assert_output --regexp '"fua_flushes": *[1-9]'
	worker_stop
	rbdc export "rbd/$IMG" "$BATS_TEST_TMPDIR/export" >/dev/null 2>&1
	# [0, 512k) 0xab; [512k, 1M) zeroes; [2M, 2M+64k) 0xcd.
	run cmp -n 524288 "$BATS_TEST_TMPDIR/export" <(head -c 524288 /dev/zero | tr '\0' '\253')
	assert_success
	run cmp -i 524288 -n 524288 "$BATS_TEST_TMPDIR/export" /dev/zero
	assert_success
	run cmp -i 2097152:0 -n 65536 "$BATS_TEST_TMPDIR/export" <(head -c 65536 /dev/zero | tr '\0' '\315')
	assert_success
}

@test "rbd: a snapshot opens read-only, serves the snapshot's data and refuses writes" {
	rbdc create --size 16M "rbd/$IMG"
	head -c 1M /dev/urandom >"$BATS_TEST_TMPDIR/a"
	rbdc import --no-progress - "rbd/${IMG}b" <"$BATS_TEST_TMPDIR/a" 2>/dev/null ||
		rbdc import - "rbd/${IMG}b" <"$BATS_TEST_TMPDIR/a" >/dev/null 2>&1
	rbdc snap create "rbd/${IMG}b@s1" >/dev/null 2>&1
	# The image moves on after the snapshot.
	worker_start w "$(chain "${IMG}b")"
	head -c 1M /dev/urandom >"$BATS_TEST_TMPDIR/b"
	timeout 60 nbdcopy "$BATS_TEST_TMPDIR/b" "$(nbd_uri)"
	worker_stop
	worker_start s "$(chain "${IMG}b@s1")"
	run nbdinfo --can write "$(nbd_uri)"
	assert_failure
	timeout 60 nbdcopy "$(nbd_uri)" "$BATS_TEST_TMPDIR/c"
	cmp -n 1048576 "$BATS_TEST_TMPDIR/a" "$BATS_TEST_TMPDIR/c"
	run timeout 60 qemu-io -f raw -c 'write -P 0x11 0 4k' "$(nbd_uri)"
	assert_output --regexp 'read-only|Permission denied|Operation not permitted'
	worker_stop
	# The snapshot is unchanged.
	rbdc export "rbd/${IMG}b@s1" "$BATS_TEST_TMPDIR/export" >/dev/null 2>&1
	cmp -n 1048576 "$BATS_TEST_TMPDIR/a" "$BATS_TEST_TMPDIR/export"
}

@test "rbd: a missing image, pool or snapshot is refused, naming pool and image" {
	worker_fails "$(chain nosuch)"
	assert_output --partial 'rbd:rbd/nosuch: open: No such file or directory'
	worker_fails "rbd:nopool/vm1,conf=$CEPH_CONF_FILE"
	assert_output --partial "rbd:nopool/vm1: pool 'nopool': No such file or directory"
	rbdc create --size 4M "rbd/$IMG"
	worker_fails "$(chain "$IMG@nosnap")"
	assert_output --partial "rbd:rbd/$IMG@nosnap: open: No such file or directory"
}

@test "rbd: a bad or missing keyring is refused, naming the image and the keyring" {
	rbdc create --size 4M "rbd/$IMG"
	ceph-authtool --create-keyring "$BATS_TEST_TMPDIR/wrong.keyring" \
		--gen-key -n client.admin >/dev/null
	worker_fails "$(chain "$IMG" "keyring=$BATS_TEST_TMPDIR/wrong.keyring,timeout=10")"
	assert_output --regexp "rbd:rbd/$IMG: connecting to cluster 'ceph' as client.admin \(keyring $BATS_TEST_TMPDIR/wrong.keyring, timeout 10 s\): (Permission denied|Operation not permitted)"
	worker_fails "$(chain "$IMG" "keyring=$BATS_TEST_TMPDIR/none.keyring,timeout=10")"
	assert_output --partial "rbd:rbd/$IMG: connecting to cluster 'ceph' as client.admin (keyring $BATS_TEST_TMPDIR/none.keyring"
	worker_fails "$(chain "$IMG" "id=nobody,timeout=10")"
	assert_output --partial "rbd:rbd/$IMG: connecting to cluster 'ceph' as client.nobody"
}

@test "rbd: an unreachable cluster fails within the timeout" {
	local t0 t1 port
	port=$(python3 -c 'import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])')
	sed "s/^mon host = .*/mon host = [v2:127.0.0.1:$port]/" "$CEPH_CONF_FILE" \
		>"$BATS_TEST_TMPDIR/away.conf"
	t0=$(date +%s)
	worker_fails "rbd:rbd/vm1,conf=$BATS_TEST_TMPDIR/away.conf,timeout=3"
	t1=$(date +%s)
	assert_output --partial 'rbd:rbd/vm1: connecting to cluster'
	assert_output --partial 'timeout 3 s): Connection timed out'
	[ $((t1 - t0)) -le 10 ]
}

@test "rbd: bad args are refused before anything connects" {
	worker_fails "rbd:rbd/vm1,conf=relative.conf"
	assert_output --partial 'not an absolute path'
	# shellcheck disable=SC2016 # no expansion: the worker gets it as is
	worker_fails 'rbd:rbd/vm$(id)'
	assert_output --partial "character '\$' is not allowed"
	worker_fails "rbd:rbd/vm1,id=a,id=b"
	assert_output --partial "option 'id' is given twice"
}

@test "rbd: the OSD killed and restarted under fio verify: I/O stalls, then resumes, nothing lost" {
	local fio_pid rc
	rbdc create --size 128M "rbd/$IMG"
	worker_start w "$(chain "$IMG" timeout=120)"
	timeout 600 fio --name=v --ioengine=nbd --uri="$(nbd_uri)" \
		--rw=randwrite --bs=4k --iodepth=16 --size=96M --verify=crc32c \
		--do_verify=1 --verify_fatal=1 --verify_state_save=0 \
		--output-format=terse >"$BATS_TEST_TMPDIR/fio.out" 2>&1 &
	fio_pid=$!
	sleep 3
	"$CLUSTER" osd-stop "$CEPH_DIR"
	sleep 5
	# fio is still running: its requests wait in the sink, not failing.
	kill -0 "$fio_pid"
	run "$BIN/blkstack-ctl" --rundir "$WORKER_RUNDIR" stats --name w --json
	assert_output --regexp '"in_flight": *[1-9]'
	assert_output --regexp '"errors": *0'
	"$CLUSTER" osd-start "$CEPH_DIR"
	rc=0
	wait "$fio_pid" || rc=$?
	cat "$BATS_TEST_TMPDIR/fio.out"
	[ "$rc" -eq 0 ]
	run "$BIN/blkstack-ctl" --rundir "$WORKER_RUNDIR" stats --name w --json
	assert_output --regexp '"errors": *0'
}

# merge: "OFFSET LENGTH" lines, in order, with adjacent ranges merged.
merge() {
	awk 'NF == 2 { if (n && $1 == o + l) { l += $2 } else { if (n) print o, l; o = $1; l = $2; n = 1 } }
		END { if (n) print o, l }'
}

# map_data URI: the data (not hole) extents of nbdinfo --map, merged.
map_data() {
	timeout 60 nbdinfo --map "$1" | awk '$3 % 2 == 0 { print $1, $2 }' | merge
}

# map_holes URI: its hole (reads as zeroes) extents, merged.
map_holes() {
	timeout 60 nbdinfo --map "$1" | awk '$3 == 3 { print $1, $2 }' | merge
}

# diff_data IMAGE[@SNAP]: what "rbd diff" says is data, merged.
diff_data() {
	rbdc diff "rbd/$1" | awk 'NR > 1 && $3 == "data" { print $1, $2 }' | merge
}

# covered OFFSET LENGTH: that range is inside one of the ranges on stdin.
covered() {
	awk -v o="$1" -v l="$2" '$1 <= o && o + l <= $1 + $2 { f = 1 } END { exit !f }'
}

@test "rbd: block status (nbdinfo --map) is rbd diff's allocation; nbdcopy of it equals rbd export" {
	local u
	rbdc create --size 64M "rbd/$IMG"
	worker_start w "$(chain)"
	u=$(nbd_uri)
	# Written: [0, 1M), [20M, 20M+64k), [41M+512k, 42M+512k); nothing
	# from 48M on.
	run timeout 120 qemu-io -f raw -c 'write -P 0x11 0 1M' \
		-c 'write -P 0x22 20M 64k' -c 'write -P 0x33 42496k 1M' "$u"
	assert_success
	map_data "$u" >"$BATS_TEST_TMPDIR/map"
	map_holes "$u" >"$BATS_TEST_TMPDIR/holes"
	diff_data "$IMG" >"$BATS_TEST_TMPDIR/diff"
	cat "$BATS_TEST_TMPDIR/map" "$BATS_TEST_TMPDIR/holes" "$BATS_TEST_TMPDIR/diff"
	# Exactly librbd's allocation (whole_object=0, as rbd diff's).
	diff -u "$BATS_TEST_TMPDIR/diff" "$BATS_TEST_TMPDIR/map"
	# At least what was written is data...
	covered 0 1048576 <"$BATS_TEST_TMPDIR/map"
	covered 20971520 65536 <"$BATS_TEST_TMPDIR/map"
	covered 43515904 1048576 <"$BATS_TEST_TMPDIR/map"
	# ... and the objects never written are holes.
	covered 50331648 16777216 <"$BATS_TEST_TMPDIR/holes"
	covered 8388608 8388608 <"$BATS_TEST_TMPDIR/holes"
	# A copy that skips the holes holds the image.
	timeout 120 nbdcopy "$u" "$BATS_TEST_TMPDIR/copy"
	run "$BIN/blkstack-ctl" --rundir "$WORKER_RUNDIR" stats --name w --json
	assert_success
	assert_output --regexp '"block_status": *[1-9]'
	assert_output --regexp '"errors": *0'
	worker_stop
	rbdc export "rbd/$IMG" "$BATS_TEST_TMPDIR/export" >/dev/null 2>&1
	cmp "$BATS_TEST_TMPDIR/export" "$BATS_TEST_TMPDIR/copy"
}

@test "rbd: block status of a snapshot is the snapshot's, without fast-diff too" {
	local u feat
	for feat in "" "--image-feature layering,exclusive-lock"; do
		rbdc rm "rbd/$IMG" >/dev/null 2>&1 || true
		# shellcheck disable=SC2086 # the feature options, split
		rbdc create --size 32M $feat "rbd/$IMG"
		worker_start w "$(chain)"
		run timeout 60 qemu-io -f raw -c 'write -P 0x44 0 1M' "$(nbd_uri)"
		assert_success
		worker_stop
		rbdc snap create "rbd/$IMG@s1" >/dev/null 2>&1
		# After the snapshot: data at 16M in the head only.
		worker_start w "$(chain)"
		run timeout 60 qemu-io -f raw -c 'write -P 0x55 16M 1M' "$(nbd_uri)"
		assert_success
		map_data "$(nbd_uri)" >"$BATS_TEST_TMPDIR/head"
		worker_stop
		covered 16777216 1048576 <"$BATS_TEST_TMPDIR/head"
		worker_start s "$(chain "$IMG@s1")"
		u=$(nbd_uri)
		map_data "$u" >"$BATS_TEST_TMPDIR/map"
		map_holes "$u" >"$BATS_TEST_TMPDIR/holes"
		diff_data "$IMG@s1" >"$BATS_TEST_TMPDIR/diff"
		cat "$BATS_TEST_TMPDIR/map" "$BATS_TEST_TMPDIR/diff"
		diff -u "$BATS_TEST_TMPDIR/diff" "$BATS_TEST_TMPDIR/map"
		covered 0 1048576 <"$BATS_TEST_TMPDIR/map"
		covered 16777216 1048576 <"$BATS_TEST_TMPDIR/holes"
		timeout 60 nbdcopy "$u" "$BATS_TEST_TMPDIR/copy"
		worker_stop
		rbdc export "rbd/$IMG@s1" "$BATS_TEST_TMPDIR/export" >/dev/null 2>&1
		cmp "$BATS_TEST_TMPDIR/export" "$BATS_TEST_TMPDIR/copy"
		rm -f "$BATS_TEST_TMPDIR/copy" "$BATS_TEST_TMPDIR/export"
		rbdc snap purge "rbd/$IMG" >/dev/null 2>&1
	done
}
