#!/usr/bin/env bats
# Migration between two hosts on shared storage (issue 18): the disk is an
# nbd: sink on one real nbdkit both hosts reach.  Each host is its own real
# xenstored and its own run directory (hosts_setup in helpers.bash); the
# toolstack driver runs the v2 sequence libxl runs for a migration, under a
# writing load.  tests/ceph/migrate-rbd.bats is its twin on an RBD image.

load helpers

# shellcheck disable=SC2034 # tsh, hp (helpers.bash) use it
VM=/vm/0b7d2c3a-0000-4000-8000-00000000beef

setup() {
	img_dir
	hosts_setup
	IMG=$IMG_DIR/shared.img
	truncate -s 64M "$IMG"
	SOCK=$BATS_TEST_TMPDIR/nbdkit.sock
	nbdkit --unix "$SOCK" --pidfile "$BATS_TEST_TMPDIR/nbdkit.pid" \
		file "$IMG"
	SRV=$(cat "$BATS_TEST_TMPDIR/nbdkit.pid")
	TARGET="log:|nbd:nbd+unix:///?socket=$SOCK"
}

teardown() {
	hosts_teardown
	kill "$SRV" 2>/dev/null || true
}

@test "migrate-nbd: v2 between two hosts on one nbdkit: prepare beside the writing source, add attaches, no acknowledged write lost" {
	local log=$BATS_TEST_TMPDIR/acked writer
	run tsh a v2-attach
	assert_success
	src=$(hp a blkstack-worker)
	# The guest on host a writes: 16384 blocks of 4 KiB, 8 in flight.
	python3 "$TOP/tests/worker/acked-writes.py" --depth 8 \
		"$RA/$src/nbd.sock" 16384 "$log" >"$BATS_TEST_TMPDIR/writer.out" 2>&1 &
	writer=$!
	wait_lines "$log" 2000

	# Host b, before the blackout, while host a writes: the slow part.
	run tsh b v2-create
	assert_success
	run tsh b v2-run prepare
	assert_success
	writer_done "$writer" "$log" 16384

	# The blackout: host a lets go, host b attaches what it prepared.
	run tsh a v2-run remove
	assert_success
	tsh b v2-backend
	run tsh b v2-run add
	assert_success
	run tsh a v2-run unprepare
	assert_success
	nothing_on a

	# Every write host a acknowledged is on the shared storage, and host
	# b's device reads it.
	check_acked "$IMG" "$log"
	dst_dev=$(hp b pdev)
	cmp <(dd if="$dst_dev" bs=1M count=64 iflag=direct status=none) "$IMG"
	# Host b's writes reach it too.
	head -c 1048576 /dev/urandom >"$BATS_TEST_TMPDIR/b"
	dd if="$BATS_TEST_TMPDIR/b" of="$dst_dev" bs=1M seek=8 oflag=direct \
		conv=fsync status=none
	cmp -n 1048576 -i 0:8388608 "$BATS_TEST_TMPDIR/b" "$IMG"
	run tsh b v2-detach
	assert_success
	nothing_on b
	# The server outlived both hosts' disks.
	kill -0 "$SRV"
}

@test "migrate-nbd: a host that cannot reach the server fails prepare naming the URI; unprepare leaves nothing" {
	# shellcheck disable=SC2034 # tsh (helpers.bash) uses it
	TARGET="log:|nbd:nbd+unix:///?socket=$BATS_TEST_TMPDIR/none.sock"
	run tsh b v2-create
	assert_success
	run tsh b v2-run prepare
	assert_failure 1
	run hp b hotplug-error
	assert_output --partial "nbd+unix:///?socket=$BATS_TEST_TMPDIR/none.sock"
	assert_output --partial "connect"
	run tsh b v2-run unprepare
	assert_success
	nothing_on b
}
