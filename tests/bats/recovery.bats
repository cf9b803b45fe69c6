#!/usr/bin/env bats
# Actions after something went wrong: a killed worker, a killed action, a
# toolstack that removed HOTPLUG_PATH early, a prepare that fails half
# way.  Each action must find and free what the earlier run left, and
# never hand out a device that no longer serves the disk.

load helpers

setup() {
	hotplug_setup
}

teardown() {
	hotplug_teardown
}

worker_pid() {
	cat "$BLKSTACK_RUNDIR/$(xs_read "$HOTPLUG_PATH/blkstack-worker")/pid"
}

stage_file() {
	printf '%s/nbd\n' "$(field "$(xs_read "$HOTPLUG_PATH/blkstack-stage")" fuse_dir)"
}

@test "recovery: after the worker was killed, prepare and add give a device that reads, not the dead one" {
	# A bare worker that stays dead (a supervised one is restarted:
	# supervise.bats).
	sup_conf supervise=no
	run ts v2-attach
	assert_success
	old=$(xs_read "$HOTPLUG_PATH/pdev")
	head -c 65536 /dev/urandom >"$BATS_TEST_TMPDIR/data"
	dd if="$BATS_TEST_TMPDIR/data" of="$IMG" bs=64k conv=notrunc status=none
	pid=$(worker_pid)
	kill -9 "$pid"
	wait_gone() { for _ in $(seq 50); do gone "$pid" && return 0; sleep 0.1; done; return 1; }
	wait_gone
	run ts v2-run prepare
	assert_success
	run ts v2-run add
	assert_success
	dev=$(xs_read "$HOTPLUG_PATH/pdev")
	# The device reads the image (the old one, on a replaced stage, gave EIO).
	run dd if="$dev" of="$BATS_TEST_TMPDIR/back" bs=64k count=1 iflag=direct status=none
	assert_success
	cmp "$BATS_TEST_TMPDIR/data" "$BATS_TEST_TMPDIR/back"
	# The dead device was freed, not left beside the new one.
	[ "$dev" = "$old" ] || run losetup "$old"
	[ "$dev" = "$old" ] || assert_failure
	run field "$(xs_read "$HOTPLUG_PATH/blkstack-dev")" worker
	assert_output "$(worker_pid):$(awk '{ print $22 }' "/proc/$(worker_pid)/stat")"
	run ts v2-detach
	assert_success
	assert_no_leftovers
}

@test "recovery: a loop device a killed add left on the stage is freed by the next add, and by remove" {
	ts v2-create
	ts v2-run version
	ts v2-run prepare
	ts v2-backend
	file=$(stage_file)
	# What a killed add leaves: a loop device on the stage, no record.
	losetup -f --direct-io=on "$file"
	run ts v2-run add
	assert_success
	# One device on the stage: the recorded one (it may reuse the number).
	run bash -c "losetup -j '$file' | wc -l"
	assert_output 1
	run bash -c "losetup -j '$file' | cut -d: -f1"
	assert_output "$(xs_read "$HOTPLUG_PATH/pdev")"
	# Again, and this time remove (libxl's answer to a failed add) frees it.
	losetup -f --direct-io=on "$file"
	run ts v2-run remove
	assert_success
	run bash -c "losetup -j '$file' | wc -l"
	assert_output 0
	run ts v2-run unprepare
	assert_success
	assert_no_leftovers
}

@test "recovery: an nbdfuse a killed prepare left is freed when prepare runs again" {
	ts v2-create
	ts v2-run version
	ts v2-run prepare
	file=$(stage_file)
	# Forget the stage record, as if prepare was killed before writing it.
	xenstore-rm "$HOTPLUG_PATH/blkstack-stage"
	run ts v2-run prepare
	assert_success
	assert [ "$(stage_file)" != "$file" ]
	run grep -c " ${file%/nbd} " /proc/mounts
	assert_output 0
	run ts v2-run unprepare
	assert_success
	assert_no_leftovers
}

@test "recovery: unprepare after the toolstack deleted HOTPLUG_PATH frees everything and succeeds" {
	run ts v2-attach
	assert_success
	run ts v2-run remove
	assert_success
	xenstore-rm "$HOTPLUG_PATH"
	run ts v2-run unprepare
	assert_success
	assert_no_leftovers
	# And again: idempotent.
	run ts v2-run unprepare
	assert_success
}

@test "recovery: a prepare that fails after starting the worker stops it again" {
	ts v2-create
	ts v2-run version
	BLKSTACK_DEVICE=bogus run ts v2-run prepare
	assert_failure
	run xs_read "$HOTPLUG_PATH/hotplug-error"
	assert_output --partial "BLKSTACK_DEVICE"
	run "$BIN/blkstack-ctl" --rundir "$BLKSTACK_RUNDIR" list
	assert_output ""
	run ts v2-run unprepare
	assert_success
	assert_no_leftovers
}
