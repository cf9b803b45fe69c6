#!/usr/bin/env bats
# The fuse device mechanism (helpers/hotplug/hp-dev.h): the worker serves
# the disk as its own FUSE file (blkstack-worker --fuse, DIR/NAME/fuse/disk)
# and the dom0 device is a loop device on it: no blkstack-fuse, no NBD hop.
# End to end through the hotplug script, a real xenstored, a real worker
# and real loop devices; what auto picks; a hung worker at remove.

load helpers

setup() {
	[ -c /dev/fuse ] || skip "/dev/fuse is missing"
	hotplug_setup
	export BLKSTACK_DEVICE=fuse
}

teardown() {
	[ -z "${STOPPED:-}" ] || kill -CONT "$STOPPED" 2>/dev/null || true
	hotplug_teardown
}

# The worker's directory, once prepare has run.
wdir() {
	echo "$BLKSTACK_RUNDIR/$(xs_read "$HOTPLUG_PATH/blkstack-worker")"
}

# attach_bare: v2-attach a disk whose worker is unsupervised; sets w
# (its directory), dev (the guest's device) and pid (the worker's).
attach_bare() {
	sup_conf supervise=no
	run ts v2-attach
	assert_success
	w=$(wdir)
	dev=$(xs_read "$HOTPLUG_PATH/pdev")
	pid=$(cat "$w/pid")
}

@test "fuse device v2: prepare starts the worker on its own FUSE file, add puts a loop device on it, unprepare leaves nothing" {
	ts v2-create
	run ts v2-run prepare
	assert_success
	w=$(wdir)
	stage=$(xs_read "$HOTPLUG_PATH/blkstack-stage")
	[ "$(field "$stage" mech)" = fuse ]
	[ "$(field "$stage" fuse_dir)" = "$w/fuse" ]
	[ "$(field "$stage" fuse_pid)" = 0 ]
	# The worker itself mounted it; no blkstack-fuse runs.
	run tr '\0' ' ' <"/proc/$(cat "$w/pid")/cmdline"
	assert_output --partial " --fuse "
	grep -q " $w/fuse .* - fuse.blkstack " /proc/self/mountinfo
	run pgrep -f "blkstack-fuse.*$BLKSTACK_RUNDIR"
	assert_failure
	ts v2-backend
	run ts v2-run add
	assert_success
	rec=$(xs_read "$HOTPLUG_PATH/blkstack-dev")
	[ "$(field "$rec" mech)" = fuse ]
	[ "$(field "$rec" staged)" = 1 ]
	dev=$(xs_read "$HOTPLUG_PATH/pdev")
	run cat "/sys/block/${dev#/dev/}/loop/backing_file"
	assert_output "$w/fuse/disk"
	run cat "/sys/block/${dev#/dev/}/loop/dio"
	assert_output 1
	run blockdev --getsize64 "$dev"
	assert_output 67108864
	head -c 1M /dev/urandom >"$BATS_TEST_TMPDIR/data"
	dd if="$BATS_TEST_TMPDIR/data" of="$dev" bs=1M seek=5 oflag=direct \
		status=none
	run cmp -n 1048576 "$BATS_TEST_TMPDIR/data" \
		<(dd if="$IMG" bs=1M skip=5 count=1 status=none)
	assert_success
	# remove frees the loop device; the file is the worker's.
	run ts v2-run remove
	assert_success
	assert_not_exists "/sys/block/${dev#/dev/}/loop"
	grep -q " $w/fuse .* - fuse.blkstack " /proc/self/mountinfo
	# A second add reuses the stage, and every action is idempotent.
	run ts v2-run add
	assert_success
	run ts v2-run add
	assert_success
	run ts v2-run remove
	assert_success
	run ts v2-run remove
	assert_success
	run ts v2-run unprepare
	assert_success
	run ts v2-run unprepare
	assert_success
	assert_not_exists "$w"
	assert_no_leftovers
}

@test "fuse device v2: localattach beside the guest's device shares the worker's file; both detach" {
	run ts v2-attach
	assert_success
	w=$(wdir)
	dev=$(xs_read "$BACKEND_PATH/params")
	run ts v2-run localattach
	assert_success
	# localattach's pdev replaces add's.
	ldev=$(xs_read "$HOTPLUG_PATH/pdev")
	[ "$ldev" != "$dev" ]
	run cat "/sys/block/${ldev#/dev/}/loop/backing_file"
	assert_output "$w/fuse/disk"
	# What the guest's device writes, dom0's device reads.
	head -c 65536 /dev/urandom >"$BATS_TEST_TMPDIR/data"
	dd if="$BATS_TEST_TMPDIR/data" of="$dev" bs=64k oflag=direct status=none
	run cmp -n 65536 "$BATS_TEST_TMPDIR/data" \
		<(dd if="$ldev" bs=64k count=1 iflag=direct status=none)
	assert_success
	run ts v2-run localdetach
	assert_success
	assert_not_exists "/sys/block/${ldev#/dev/}/loop"
	run cat "/sys/block/${dev#/dev/}/loop/backing_file"
	assert_output "$w/fuse/disk"
	run ts v2-detach
	assert_success
	assert_no_leftovers
}

@test "fuse device v1: add and remove with libxl 4.17's environment" {
	run ts v1-attach
	assert_success
	be=/local/domain/0/$XENBUS_PATH
	dev=$(xs_read "$be/physical-device-path")
	assert [ -b "$dev" ]
	run cat "/sys/block/${dev#/dev/}/loop/backing_file"
	assert_output --regexp "^$BLKSTACK_RUNDIR/[^/]+/fuse/disk\$"
	run ts v1-detach
	assert_success
	assert_no_leftovers
}

@test "fuse device: auto picks it where workers are supervised on Linux 6.9+, loop where they are not" {
	unset BLKSTACK_DEVICE
	# This kernel's answer, as the helper computes it.
	want=loop
	if kernel_can_resend; then
		want=fuse
	fi
	ts v2-create
	run ts v2-run prepare
	assert_success
	[ "$(field "$(xs_read "$HOTPLUG_PATH/blkstack-stage")" mech)" = "$want" ]
	run ts v2-run unprepare
	assert_success
	# Unsupervised, a crash would end the file: auto keeps blkstack-fuse.
	sup_conf supervise=no
	run ts v2-run prepare
	assert_success
	[ "$(field "$(xs_read "$HOTPLUG_PATH/blkstack-stage")" mech)" = loop ]
	run ts v2-run unprepare
	assert_success
	assert_no_leftovers
}

@test "fuse device: a worker started without its FUSE file gets a loop stage instead, and says so" {
	ts v2-create
	BLKSTACK_DEVICE=loop ts v2-run prepare
	spid=$(field "$(xs_read "$HOTPLUG_PATH/blkstack-stage")" fuse_pid)
	kill -KILL "$spid"
	while ! gone "$spid"; do sleep 0.05; done
	# The worker runs on, without --fuse: prepare cannot stage fuse on it.
	run --separate-stderr ts v2-run prepare
	assert_success
	assert [ "$(field "$(xs_read "$HOTPLUG_PATH/blkstack-stage")" mech)" = loop ]
	[[ $stderr == *"the worker serves no FUSE file on"*"using loop instead"* ]]
	run ts v2-run unprepare
	assert_success
	assert_no_leftovers
}

@test "fuse device: a loop device an add left unrecorded on the worker's file is freed by the next action" {
	ts v2-create
	ts v2-run prepare
	w=$(wdir)
	# What a killed add leaves: a loop device on the file, no record.
	stray=$(losetup --direct-io=on --find --show "$w/fuse/disk")
	run ts v2-run unprepare
	assert_success
	assert_not_exists "/sys/block/${stray#/dev/}/loop"
	assert_no_leftovers
}

@test "fuse device: remove with a hung unsupervised worker ends within its bound, aborting the file's connection" {
	attach_bare
	# Data the flush must take, then a worker that never answers.
	dd if=/dev/urandom of="$dev" bs=64k count=4 status=none
	kill -STOP "$pid"
	STOPPED=$pid
	SECONDS=0
	run --separate-stderr timeout 60 "$TOOLSTACK" --quiet --script "$SCRIPT" \
		--target "log:|aio:$IMG" v2-run remove
	elapsed=$SECONDS
	# The flush failed (reported), but the device is gone all the same.
	[[ $stderr == *"aborted FUSE connection"* ]]
	assert [ "$elapsed" -lt 45 ]
	assert_not_exists "/sys/block/${dev#/dev/}/loop"
	run ts v2-run remove
	assert_success
	kill -CONT "$pid"
	STOPPED=
	run ts v2-run unprepare
	assert_success
	assert_no_leftovers
}

@test "fuse device: a supervisor that gave up: remove succeeds on the dead file's device, unprepare leaves nothing" {
	sup_conf restart-limit=2 restart-window=60
	run ts v2-attach
	assert_success
	w=$(wdir)
	dev=$(xs_read "$HOTPLUG_PATH/pdev")
	kill_and_wait_restart "$w" >/dev/null
	# Still the one file after a restart: the next worker adopted it.
	run cat "/sys/block/${dev#/dev/}/loop/backing_file"
	assert_output "$w/fuse/disk"
	dd if=/dev/urandom of="$dev" bs=64k count=1 oflag=direct status=none
	kill -9 "$(cat "$w/pid")"
	wait_sup "$w" state gave-up
	# Nobody is left to take a flush: the dead file's device just goes.
	run timeout 60 "$TOOLSTACK" --quiet --script "$SCRIPT" \
		--target "log:|aio:$IMG" v2-run remove
	assert_success
	assert_not_exists "/sys/block/${dev#/dev/}/loop"
	run ts v2-run unprepare
	assert_success
	assert_not_exists "$w"
	assert_no_leftovers
}

@test "fuse device: prepare after an unsupervised worker died frees its device, then serves a new file; nothing leaks" {
	attach_bare
	kill -KILL "$pid"
	while ! gone "$pid"; do sleep 0.05; done
	run ts v2-run prepare
	assert_success
	[ "$(cat "$w/pid")" != "$pid" ]
	# The dead file's device went before the new mount hid it.
	xs_absent "$HOTPLUG_PATH/blkstack-dev"
	assert_not_exists "/sys/block/${dev#/dev/}/loop"
	ts v2-backend
	run ts v2-run add
	assert_success
	dev=$(xs_read "$HOTPLUG_PATH/pdev")
	head -c 65536 /dev/urandom >"$BATS_TEST_TMPDIR/data"
	dd if="$BATS_TEST_TMPDIR/data" of="$dev" bs=64k oflag=direct status=none
	cmp -n 65536 "$BATS_TEST_TMPDIR/data" "$IMG"
	run ts v2-detach
	assert_success
	assert_no_leftovers
	# No loop device on a file of a detached mount ("/disk") either.
	run bash -c "losetup -a | grep -c ' (/disk)' || true"
	assert_output 0
}
