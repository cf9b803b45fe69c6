#!/usr/bin/env bats
# Programs that only parse chains (blkstack-ctl, blkstack-hotplug) link the
# parse-only driver table (libblkstack/drivers-parse.c), not the data path:
# no libaio, no liburing, no libnbd, no librbd, no io_submit, no driver ops.  The worker, which serves chains,
# is the control: the same checks find them there.

load helpers

# Succeeds if program $1 refers to libaio, liburing, libnbd or librbd or holds the
# data path.
has_data_path() {
	local prog=$1
	ldd "$prog" | grep -qE 'libaio|liburing|libnbd|librbd|librados' && return 0
	nm "$prog" | grep -qE ' (io_submit|io_uring_submit|nbd_aio_pread|bks_aioq_queue|bks_driver_aio|bks_driver_nbd|rbd_aio_readv|bks_driver_rbd)$'
}

@test "parse-only: blkstack-ctl links neither libaio, liburing nor the data path" {
	run has_data_path "$BIN/blkstack-ctl"
	assert_failure
}

@test "parse-only: blkstack-hotplug links neither libaio, liburing nor the data path" {
	run has_data_path "$BIN/blkstack-hotplug"
	assert_failure
	# It still has the parse-only table, and parses with it.
	run nm "$BIN/blkstack-hotplug"
	assert_output --partial bks_driver_descs
}

@test "parse-only: the worker, which serves chains, has both (the control)" {
	run has_data_path "$BIN/blkstack-worker"
	assert_success
	run ldd "$BIN/blkstack-worker"
	assert_output --partial libaio
	assert_output --partial liburing
}

# The nbd: and rbd: sinks are modules (libblkstack/driver-module.h): the
# worker links neither client library, the modules do, and a worker maps
# one only when its chain names it.
@test "parse-only: libnbd and librbd are in the modules, not in the worker" {
	run ldd "$BIN/blkstack-worker"
	assert_success
	refute_output --partial libnbd
	refute_output --partial librbd
	refute_output --partial librados
	run ldd "$TOP/build/lib/blkstack/modules/nbd.so"
	assert_output --partial libnbd
	run ldd "$TOP/build/lib/blkstack/modules/rbd.so"
	assert_output --partial librbd
	assert_output --partial librados
	# Each exports its bks_module_NAME, and the worker what they import.
	run nm -D --defined-only "$TOP/build/lib/blkstack/modules/nbd.so"
	assert_output --partial bks_module_nbd
	run nm -D --defined-only "$BIN/blkstack-worker"
	assert_output --partial bks_req_complete
	assert_output --partial bks_nbd_target_parse
}

@test "parse-only: a worker maps nbd.so and libnbd only for an nbd: chain" {
	img_dir
	truncate -s 16M "$IMG_DIR/a.img"
	worker_start a "aio:$IMG_DIR/a.img"
	local a=$WORKER_PID a_sock=$NBD_SOCK
	run grep -cE 'nbd\.so|rbd\.so|libnbd|librbd|librados' "/proc/$a/maps"
	assert_output 0
	worker_start b "nbd:nbd+unix:///?socket=$a_sock"
	grep -q '/modules/nbd\.so$' "/proc/$WORKER_PID/maps"
	grep -q 'libnbd' "/proc/$WORKER_PID/maps"
	run grep -cE 'rbd\.so|librbd' "/proc/$WORKER_PID/maps"
	assert_output 0
	# It serves: nbdinfo through b reads a's size.
	run nbdinfo --size "nbd+unix:///?socket=$NBD_SOCK"
	assert_success
	assert_output 16777216
	worker_stop
	worker_stop "$a"
}

@test "parse-only: without its module an nbd: chain fails with the driver and the file named" {
	BLKSTACK_MODULE_DIR=$BATS_TEST_TMPDIR/none run "$BIN/blkstack-worker" \
		--rundir "$BATS_TEST_TMPDIR/run" --name m \
		--chain "nbd:nbd+unix:///?socket=$BATS_TEST_TMPDIR/x.sock" --foreground
	assert_failure
	assert_output --partial "layer 1 (nbd): driver nbd: no module $BATS_TEST_TMPDIR/none/nbd.so"
	# The parse-only programs still check its args, with no module at all.
	BLKSTACK_MODULE_DIR=$BATS_TEST_TMPDIR/none BLKSTACK_RUNDIR=$BATS_TEST_TMPDIR/run \
		run "$BIN/blkstack-ctl" create --name q --chain "nbd:ftp://x"
	assert_failure
	assert_output --partial "layer 1 (nbd) at offset 0: URI 'ftp://x': not an NBD URI"
}

teardown() {
	worker_teardown
}
