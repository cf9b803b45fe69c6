#!/usr/bin/env bats
# The hotplug actions end to end: the script run as libxl runs it (through
# tests/toolstack's driver), a real xenstored, a real worker, and a real
# dom0 block device (blkstack-fuse + loop here: there is no nbd module).

load helpers

setup() {
	hotplug_setup
}

teardown() {
	hotplug_teardown
}

# After add: 64 KiB written through pdev reach the image; then remove and
# unprepare succeed and leave nothing.
write_reaches_image_then_detach() {
	local dev
	dev=$(xs_read "$HOTPLUG_PATH/pdev")
	head -c 65536 /dev/urandom >"$BATS_TEST_TMPDIR/data"
	dd if="$BATS_TEST_TMPDIR/data" of="$dev" bs=64k oflag=direct status=none
	cmp -n 65536 "$BATS_TEST_TMPDIR/data" "$IMG"
	run ts v2-run remove
	assert_success
	run ts v2-run unprepare
	assert_success
	assert_no_leftovers
}

# physical-device is the device's real major:minor, in hex.
assert_physdev() {
	local dev=$1 want
	want=$(printf '%x:%x' "$((0x$(stat -c %t "$dev")))" "$((0x$(stat -c %T "$dev")))")
	run xs_read "$BACKEND_PATH/physical-device"
	assert_output "$want"
}

@test "hotplug v2: the whole life of a disk, with data reaching the image" {
	run ts v2-attach
	assert_success
	dev=$(xs_read "$HOTPLUG_PATH/pdev")
	assert [ -b "$dev" ]
	run xs_read "$BACKEND_PATH/params"
	assert_output "$dev"
	run xs_read "$BACKEND_PATH/physical-device-path"
	assert_output "$dev"
	assert_physdev "$dev"
	run xs_read "$HOTPLUG_PATH/version"
	assert_output 2
	xs_read "$HOTPLUG_PATH/blkstack-worker"
	run blockdev --getsize64 "$dev"
	assert_output 67108864
	# Through the device, the worker and the chain, into the file.
	head -c 1M /dev/urandom >"$BATS_TEST_TMPDIR/data"
	dd if="$BATS_TEST_TMPDIR/data" of="$dev" bs=1M seek=3 oflag=direct status=none
	run cmp -n 1048576 "$BATS_TEST_TMPDIR/data" <(dd if="$IMG" bs=1M skip=3 count=1 status=none)
	assert_success
	# The log: layer saw it.
	run "$BIN/blkstack-ctl" --rundir "$BLKSTACK_RUNDIR" dirty --name "$(xs_read "$HOTPLUG_PATH/blkstack-worker")"
	assert_output --partial "3145728 1048576"
	run ts v2-detach
	assert_success
	xs_absent "$HOTPLUG_PATH"
	assert_no_leftovers
}

@test "hotplug v2: prepare stages blkstack-fuse, add only puts a loop device on it, unprepare ends it" {
	ts v2-create
	ts v2-run version
	run ts v2-run prepare
	assert_success
	stage=$(xs_read "$HOTPLUG_PATH/blkstack-stage")
	spid=$(field "$stage" fuse_pid)
	sdir=$(field "$stage" fuse_dir)
	[ "$(readlink "/proc/$spid/exe")" = "$(realpath "$BIN/blkstack-fuse")" ]
	grep -q " $sdir " /proc/self/mountinfo
	run losetup -j "$sdir/nbd"
	assert_output ""
	ts v2-backend
	run ts v2-run add
	assert_success
	rec=$(xs_read "$HOTPLUG_PATH/blkstack-dev")
	[ "$(field "$rec" staged)" = 1 ]
	[ "$(field "$rec" fuse_pid)" = "$spid" ]
	dev=$(xs_read "$HOTPLUG_PATH/pdev")
	run cat "/sys/block/${dev#/dev/}/loop/backing_file"
	assert_output "$sdir/nbd"
	# remove frees the loop device only: prepare's work is unprepare's.
	run ts v2-run remove
	assert_success
	xs_absent "$HOTPLUG_PATH/blkstack-dev"
	assert_not_exists "/sys/block/${dev#/dev/}/loop"
	kill -0 "$spid"
	run xs_read "$HOTPLUG_PATH/blkstack-stage"
	assert_output "$stage"
	# A second add (another attempt after a failure) reuses the stage.
	run ts v2-run add
	assert_success
	rec=$(xs_read "$HOTPLUG_PATH/blkstack-dev")
	[ "$(field "$rec" fuse_pid)" = "$spid" ]
	run ts v2-run remove
	assert_success
	run ts v2-run unprepare
	assert_success
	gone "$spid"
	assert_not_exists "$sdir"
	xs_absent "$HOTPLUG_PATH/blkstack-stage"
	assert_no_leftovers
}

@test "hotplug v2: a stage that died is replaced: by prepare again, or by a whole attach in add" {
	ts v2-create
	ts v2-run prepare
	spid=$(field "$(xs_read "$HOTPLUG_PATH/blkstack-stage")" fuse_pid)
	kill -KILL "$spid"
	while ! gone "$spid"; do sleep 0.05; done
	# prepare again (it is idempotent) stages anew ...
	run ts v2-run prepare
	assert_success
	spid2=$(field "$(xs_read "$HOTPLUG_PATH/blkstack-stage")" fuse_pid)
	[ "$spid2" != "$spid" ]
	kill -0 "$spid2"
	# ... and add without a usable stage attaches the whole way.
	kill -KILL "$spid2"
	while ! gone "$spid2"; do sleep 0.05; done
	ts v2-backend
	run ts v2-run add
	assert_success
	rec=$(xs_read "$HOTPLUG_PATH/blkstack-dev")
	[ "$(field "$rec" staged)" = 0 ]
	write_reaches_image_then_detach
}

@test "hotplug v2: prepare after the worker died starts a new worker and a new stage" {
	# A bare worker that stays dead (supervise.bats: one restarted).
	sup_conf supervise=no
	ts v2-create
	ts v2-run prepare
	name=$(xs_read "$HOTPLUG_PATH/blkstack-worker")
	spid=$(field "$(xs_read "$HOTPLUG_PATH/blkstack-stage")" fuse_pid)
	pid=$(cat "$BLKSTACK_RUNDIR/$name/pid")
	kill -KILL "$pid"
	while ! gone "$pid"; do sleep 0.05; done
	run ts v2-run prepare
	assert_success
	[ "$(cat "$BLKSTACK_RUNDIR/$name/pid")" != "$pid" ]
	spid2=$(field "$(xs_read "$HOTPLUG_PATH/blkstack-stage")" fuse_pid)
	[ "$spid2" != "$spid" ]
	gone "$spid"
	ts v2-backend
	run ts v2-run add
	assert_success
	write_reaches_image_then_detach
}

@test "hotplug v2: unprepare frees devices an attach killed before recording them left" {
	ts v2-create
	ts v2-run prepare
	name=$(xs_read "$HOTPLUG_PATH/blkstack-worker")
	wdir=$BLKSTACK_RUNDIR/$name
	# What a hotplug helper SIGKILLed inside attach leaves: a
	# blkstack-fuse with a loop device on its file, another one alone, the
	# mount of one that died too, and a log whose mountpoint is gone; none of
	# them in a record.
	for m in fuse-killed1 fuse-killed2 fuse-killed3; do
		mkdir "$wdir/$m"
		"$BIN/blkstack-fuse" --socket "$wdir/nbd.sock" --mount "$wdir/$m" \
			</dev/null >/dev/null 2>"$wdir/$m.log" &
	done
	dead=$!
	: >"$wdir/fuse-gone.log"
	for m in fuse-killed1 fuse-killed2 fuse-killed3; do
		while [ ! -e "$wdir/$m/nbd" ]; do sleep 0.05; done
	done
	kill -KILL "$dead"
	wait "$dead" || true
	run stat "$wdir/fuse-killed3"
	assert_output --partial "Transport endpoint is not connected"
	loopdev=$(losetup --find --show --direct-io=on "$wdir/fuse-killed1/nbd")
	run ts v2-run unprepare
	assert_success
	assert_output --partial "freed 3 unrecorded device(s)"
	assert_not_exists "/sys/block/${loopdev#/dev/}/loop"
	run pgrep -f "blkstack-fuse --socket $wdir/"
	assert_failure
	assert_no_leftovers
	assert_not_exists "$wdir"
}

@test "hotplug v2: every action is idempotent" {
	ts v2-create
	ts v2-run version
	for a in prepare prepare; do
		run ts v2-run "$a"
		assert_success
	done
	ts v2-backend
	ts v2-run add
	dev=$(xs_read "$HOTPLUG_PATH/pdev")
	run ts v2-run add
	assert_success
	run xs_read "$HOTPLUG_PATH/pdev"
	assert_output "$dev"
	for a in remove remove unprepare unprepare; do
		run ts v2-run "$a"
		assert_success
	done
	xs_absent "$HOTPLUG_PATH/blkstack-dev"
	xs_absent "$HOTPLUG_PATH/blkstack-worker"
	assert_no_leftovers
}

@test "hotplug v2: prepare does not write the image" {
	head -c 64M /dev/urandom >"$IMG"
	sum=$(md5sum <"$IMG")
	ts v2-create
	run ts v2-run prepare
	assert_success
	run ts v2-run unprepare
	assert_success
	assert_equal "$(md5sum <"$IMG")" "$sum"
}

@test "hotplug v2: localattach beside the guest's device, then localdetach" {
	run ts v2-attach
	assert_success
	guest=$(xs_read "$BACKEND_PATH/params")
	printf 'written by the guest' | dd of="$guest" bs=4096 conv=sync oflag=direct status=none
	run ts v2-run localattach
	assert_success
	local_dev=$(xs_read "$HOTPLUG_PATH/pdev")
	assert [ "$local_dev" != "$guest" ]
	run bash -c "dd if='$local_dev' bs=4096 count=1 iflag=direct status=none | head -c 20"
	assert_output "written by the guest"
	run ts v2-run localdetach
	assert_success
	assert [ ! -e "$local_dev" ] || ! losetup "$local_dev" >/dev/null 2>&1
	# The guest's device is untouched.
	run bash -c "dd if='$guest' bs=4096 count=1 iflag=direct status=none | head -c 20"
	assert_output "written by the guest"
	run ts v2-detach
	assert_success
	assert_no_leftovers
}

@test "hotplug v1: add and remove with libxl 4.17's environment" {
	run ts v1-attach
	assert_success
	be=/local/domain/0/$XENBUS_PATH
	dev=$(xs_read "$be/physical-device-path")
	assert [ -b "$dev" ]
	run xs_read "$be/hotplug-status"
	assert_output connected
	# v1 keeps the target line in params.
	run xs_read "$be/params"
	assert_output "log:|aio:$IMG"
	BACKEND_PATH=$be assert_physdev "$dev"
	run ts v1-detach
	assert_success
	assert_no_leftovers
}

@test "hotplug v1: a failed add cleans up after itself and says why" {
	TARGET="aio:$IMG_DIR/missing.img"
	run ts --keep-on-failure v1-attach
	assert_failure
	be=/local/domain/0/$XENBUS_PATH
	run xs_read "$be/hotplug-error"
	assert_output --partial "open $IMG_DIR/missing.img: No such file or directory"
	run xs_read "$be/hotplug-status"
	assert_output error
	assert_no_leftovers
}

@test "hotplug: a bad chain fails prepare with its position" {
	TARGET="log:||aio:$IMG"
	ts v2-create
	run ts v2-run prepare
	assert_failure 1
	run xs_read "$HOTPLUG_PATH/hotplug-error"
	assert_output "prepare: chain: layer 2 at offset 5: empty layer"
	run ts v2-run unprepare
	assert_success
	assert_no_leftovers
}

@test "hotplug: a missing image fails prepare with the driver's message" {
	TARGET="log:|aio:$IMG_DIR/nope.img"
	ts v2-create
	run ts v2-run prepare
	assert_failure 1
	run xs_read "$HOTPLUG_PATH/hotplug-error"
	assert_output --partial "layer 2 (aio): open $IMG_DIR/nope.img: No such file or directory"
	run ts v2-run unprepare
	assert_success
	assert_no_leftovers
}

@test "hotplug: the worker killed between prepare and add" {
	# A bare worker that stays dead (supervise.bats: one restarted).
	sup_conf supervise=no
	ts v2-create
	ts v2-run prepare
	name=$(xs_read "$HOTPLUG_PATH/blkstack-worker")
	pid=$(cat "$BLKSTACK_RUNDIR/$name/pid")
	kill -KILL "$pid"
	# Dead (gone, or a zombie nobody reaped yet) before add runs.
	for _ in $(seq 500); do
		state=$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null || echo gone)
		[ "$state" = Z ] || [ "$state" = gone ] && break
		sleep 0.01
	done
	ts v2-backend
	run ts v2-run add
	assert_failure 1
	run xs_read "$BACKEND_PATH/hotplug-error"
	assert_output --partial "worker $name is not serving"
	xs_absent "$BACKEND_PATH/physical-device"
	# remove after the failed add, and unprepare of the dead worker.
	run ts v2-run remove
	assert_success
	run ts v2-run unprepare
	assert_success
	assert_no_leftovers
}

@test "hotplug: add with no device to be had fails clearly; remove copes" {
	ts v2-create
	# There is no nbd module here: forcing kernel NBD cannot give a device.
	# prepare decides the mechanism; add uses it.
	BLKSTACK_DEVICE=nbd ts v2-run prepare
	ts v2-backend
	run ts v2-run add
	assert_failure 1
	run xs_read "$BACKEND_PATH/hotplug-error"
	assert_output --partial "nbd"
	xs_absent "$BACKEND_PATH/physical-device"
	run ts v2-run remove
	assert_success
	run ts v2-run unprepare
	assert_success
	assert_no_leftovers
}

@test "hotplug: prepare decides the mechanism; add only uses it, and runs no program" {
	ts v2-create
	BLKSTACK_DEVICE=loop run ts v2-run prepare
	assert_success
	run field "$(xs_read "$HOTPLUG_PATH/blkstack-stage")" mech
	assert_output loop
	ts v2-backend
	# Neither the environment nor the configuration is read again at add.
	echo "device = nbd" >"$BATS_TEST_TMPDIR/blkstack.conf"
	BLKSTACK_DEVICE=nbd BLKSTACK_CONF=$BATS_TEST_TMPDIR/blkstack.conf \
		run strace -f -qq -e trace=execve -o "$BATS_TEST_TMPDIR/execs" \
		"$TOOLSTACK" --quiet --script "$SCRIPT" --target "log:|aio:$IMG" \
		v2-run add
	assert_success
	run field "$(xs_read "$HOTPLUG_PATH/blkstack-dev")" mech
	assert_output loop
	# The script and the helper, nothing else: no modprobe, no blkstack-ctl.
	run grep -c 'execve(' "$BATS_TEST_TMPDIR/execs"
	assert_output 3
	run grep -E 'modprobe|blkstack-ctl|nbdfuse|blkstack-fuse' "$BATS_TEST_TMPDIR/execs"
	assert_failure
	write_reaches_image_then_detach
}

@test "hotplug: migration-like: B prepares while A is attached, then A goes, then B adds" {
	A=$BATS_TEST_TMPDIR/hostA B=$BATS_TEST_TMPDIR/hostB
	BLKSTACK_RUNDIR=$A run ts v2-attach
	assert_success
	# Host B (its own rundir) prepares while A's worker has the image open.
	BLKSTACK_RUNDIR=$B run ts --domid 2 v2-create
	BLKSTACK_RUNDIR=$B run ts --domid 2 v2-run version
	BLKSTACK_RUNDIR=$B run ts --domid 2 v2-run prepare
	assert_success
	BLKSTACK_RUNDIR=$A run ts v2-detach
	assert_success
	BLKSTACK_RUNDIR=$B ts --domid 2 v2-backend
	start=$(date +%s%N)
	BLKSTACK_RUNDIR=$B run ts --domid 2 v2-run add
	end=$(date +%s%N)
	assert_success
	echo "# add (blackout) took $(((end - start) / 1000)) us" >&3
	BLKSTACK_RUNDIR=$B run ts --domid 2 v2-detach
	assert_success
	BLKSTACK_RUNDIR=$A assert_no_leftovers
	BLKSTACK_RUNDIR=$B assert_no_leftovers
}

@test "hotplug: an image in use read-write by another guest is refused" {
	run ts --domid 1 v2-attach
	assert_success
	# Domain 2 wants the same image: prepare may (migration), add may not.
	run ts --domid 2 v2-attach
	assert_failure
	eval "$("$TOOLSTACK" --domid 2 paths)"
	run xs_read "$BACKEND_PATH/hotplug-error"
	assert_output --partial "in use read-write by domain 1"
	xs_absent "$BACKEND_PATH/physical-device"
	# A second disk of the same guest on the same image is its own call.
	run ts --domid 1 --devid 51728 v2-attach
	assert_success
	run ts --domid 1 --devid 51728 v2-detach
	assert_success
	# Once domain 1 lets go, domain 2 gets it.
	run ts --domid 1 v2-detach
	assert_success
	run ts --domid 2 v2-detach
	assert_success
	run ts --domid 2 v2-attach
	assert_success
	run ts --domid 2 v2-detach
	assert_success
	assert_no_leftovers
}

# run_parallel CMD...: run "xs-toolstack --domid I CMD" for I in 1..20 at
# once; fail with their output if any failed.
run_parallel() {
	local i failed=0 job
	for i in $(seq 1 20); do
		"$TOOLSTACK" --quiet --script "$SCRIPT" --domid "$i" \
			--target "aio:$IMG_DIR/p$i.img" "$@" \
			>"$BATS_TEST_TMPDIR/p$i.log" 2>&1 3>&- &
	done
	for job in $(jobs -p); do
		wait "$job" || failed=$((failed + 1))
	done
	[ "$failed" -eq 0 ] || fail "$failed of 20 '$*' failed: $(cat "$BATS_TEST_TMPDIR"/p*.log)"
}

@test "hotplug: 20 parallel full sequences on distinct devices" {
	for i in $(seq 1 20); do
		truncate -s 16M "$IMG_DIR/p$i.img"
	done
	run_parallel v2-attach
	for i in $(seq 1 20); do
		eval "$("$TOOLSTACK" --domid "$i" paths)"
		xs_read "$HOTPLUG_PATH/pdev"
	done >"$BATS_TEST_TMPDIR/devs"
	run sort -u "$BATS_TEST_TMPDIR/devs"
	assert_equal "${#lines[@]}" 20
	run_parallel v2-detach
	assert_no_leftovers
}
