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
	assert_output --partial libnbd
	assert_output --partial librbd
}
