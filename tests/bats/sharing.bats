#!/usr/bin/env bats
# The sharing rule (docs/libxl-hotplug-interface.txt, section 8) and
# migration on one host: the script run as libxl runs it, on a real
# xenstored, with real workers and loop devices.  Source and destination
# of a localhost migration are two domains of one VM (the same
# /local/domain/N/vm), both served from one rundir.

load helpers

setup() {
	hotplug_setup
	SRC=(--domid 3 --vm /vm/0b7d2c3a-0000-4000-8000-00000000beef)
	DST=(--domid 4 --vm /vm/0b7d2c3a-0000-4000-8000-00000000beef)
}

teardown() {
	for d in 1 2 3 4 5; do
		"$TOOLSTACK" --quiet --script "$SCRIPT" --domid "$d" v2-detach \
			>/dev/null 2>&1 || true
		"$TOOLSTACK" --quiet --script "$SCRIPT" --domid "$d" v1-detach \
			>/dev/null 2>&1 || true
	done
	hotplug_teardown
}

# paths_of ARGS...: set HOTPLUG_PATH, BACKEND_PATH, ... for that disk.
paths_of() {
	eval "$("$TOOLSTACK" "$@" paths)"
}

# stage_field ARGS... KEY: a field of that disk's blkstack-stage record.
record_field() {
	local node=$1 key=$2
	shift 2
	paths_of "$@"
	field "$(xs_read "$HOTPLUG_PATH/$node")" "$key"
}

# worker_pid_of ARGS...: the pid of that disk's worker.
worker_pid_of() {
	paths_of "$@"
	cat "$BLKSTACK_RUNDIR/$(xs_read "$HOTPLUG_PATH/blkstack-worker")/pid"
}

@test "sharing: v1 migration as libxl 4.17 runs it: the destination's add while the source is attached" {
	run ts "${SRC[@]}" v1-attach
	assert_success
	run ts "${DST[@]}" v1-attach
	assert_success
	# Two workers on one image, both added, for one VM.
	run "$BIN/blkstack-ctl" --rundir "$BLKSTACK_RUNDIR" list
	assert_equal "${#lines[@]}" 2
	run ts "${SRC[@]}" v1-detach
	assert_success
	run ts "${DST[@]}" v1-detach
	assert_success
	assert_no_leftovers
}

@test "sharing: v2 migration: prepare beside the source, source remove, add only attaches, source unprepare" {
	run ts "${SRC[@]}" v2-attach
	assert_success
	paths_of "${SRC[@]}"
	src_dev=$(xs_read "$HOTPLUG_PATH/pdev")
	head -c 1048576 /dev/urandom >"$BATS_TEST_TMPDIR/data"
	dd if="$BATS_TEST_TMPDIR/data" of="$src_dev" bs=1M oflag=direct status=none

	# Destination, before the blackout: the slow part.
	run ts "${DST[@]}" v2-create
	assert_success
	run ts "${DST[@]}" v2-run version
	assert_success
	run ts "${DST[@]}" v2-run prepare
	assert_success
	pid_before=$(worker_pid_of "${DST[@]}")
	fuse_before=$(record_field blkstack-stage fuse_pid "${DST[@]}")
	[ "$fuse_before" -gt 0 ]

	# The blackout: the source lets go of the device, the destination adds.
	run ts "${SRC[@]}" v2-run remove
	assert_success
	ts "${DST[@]}" v2-backend
	run ts "${DST[@]}" v2-run add
	assert_success
	# add only attached: the same worker, a loop device on the same stage.
	assert_equal "$(worker_pid_of "${DST[@]}")" "$pid_before"
	assert_equal "$(record_field blkstack-dev fuse_pid "${DST[@]}")" "$fuse_before"
	assert_equal "$(record_field blkstack-dev staged "${DST[@]}")" 1

	run ts "${SRC[@]}" v2-run unprepare
	assert_success
	# The destination's device has what the source wrote.
	paths_of "${DST[@]}"
	dd if="$(xs_read "$HOTPLUG_PATH/pdev")" of="$BATS_TEST_TMPDIR/back" bs=1M \
		count=1 iflag=direct status=none
	cmp "$BATS_TEST_TMPDIR/data" "$BATS_TEST_TMPDIR/back"
	run "$BIN/blkstack-ctl" --rundir "$BLKSTACK_RUNDIR" list
	assert_equal "${#lines[@]}" 1
	run ts "${DST[@]}" v2-detach
	assert_success
	assert_no_leftovers
}

@test "sharing: v2 migration: the destination's add before the source's remove (same VM)" {
	run ts "${SRC[@]}" v2-attach
	assert_success
	run ts "${DST[@]}" v2-attach
	assert_success
	run ts "${SRC[@]}" v2-detach
	assert_success
	run ts "${DST[@]}" v2-detach
	assert_success
	assert_no_leftovers
}

@test "sharing: another VM's domain is refused the image, with the reason" {
	run ts "${SRC[@]}" v2-attach
	assert_success
	run ts --domid 5 --vm /vm/0b7d2c3a-0000-4000-8000-00000000cafe v2-attach
	assert_failure
	paths_of --domid 5
	run xs_read "$BACKEND_PATH/hotplug-error"
	assert_output --partial "in use read-write by domain 3"
	assert_output --partial "not this disk's VM"
	xs_absent "$BACKEND_PATH/physical-device"
	run ts --domid 5 v2-detach
	assert_success
	run ts "${SRC[@]}" v2-detach
	assert_success
	assert_no_leftovers
}

@test "sharing: the check is about what the worker opened, not what params says at add" {
	truncate -s 64M "$IMG_DIR/other.img"
	run ts --domid 1 v2-attach
	assert_success
	# Domain 2 prepares on the same image (allowed: prepare does not claim)...
	run ts --domid 2 v2-create
	run ts --domid 2 v2-run version
	run ts --domid 2 v2-run prepare
	assert_success
	# ...then params is changed to an image nobody uses, before add.
	paths_of --domid 2
	xenstore-write "$HOTPLUG_PATH/params" "log:|aio:$IMG_DIR/other.img"
	ts --domid 2 v2-backend
	run ts --domid 2 v2-run add
	assert_failure
	run xs_read "$BACKEND_PATH/hotplug-error"
	assert_output --partial "in use read-write by domain 1"
	xs_absent "$BACKEND_PATH/physical-device"
	run ts --domid 2 v2-detach
	assert_success
	run ts --domid 1 v2-detach
	assert_success
	assert_no_leftovers
}

@test "sharing: two adds of one image for two VMs at once: exactly one wins, every time" {
	for trial in 1 2 3 4 5 6 7 8; do
		for d in 1 2; do
			ts --domid "$d" v2-create
			ts --domid "$d" v2-run version
			ts --domid "$d" v2-run prepare
			ts --domid "$d" v2-backend
		done
		ts --domid 1 v2-run add >/dev/null 2>&1 &
		a=$!
		ts --domid 2 v2-run add >/dev/null 2>&1 &
		b=$!
		ok=0
		wait "$a" && ok=$((ok + 1))
		wait "$b" && ok=$((ok + 1))
		[ "$ok" -eq 1 ] || fail "trial $trial: $ok of 2 adds succeeded"
		for d in 1 2; do
			ts --domid "$d" v2-detach
		done
	done
	assert_no_leftovers
}

@test "sharing: one backend is served by one disk: a second disk naming it is refused" {
	run ts --domid 1 v2-attach
	assert_success
	paths_of --domid 1
	taken=$BACKEND_PATH
	before=$(xs_read "$taken/physical-device")
	# Another disk (its own HOTPLUG_PATH and image) whose add is handed
	# domain 1's backend directory.
	truncate -s 64M "$IMG_DIR/other.img"
	TARGET="aio:$IMG_DIR/other.img" run ts --domid 1 --devid 51728 v2-create
	TARGET="aio:$IMG_DIR/other.img" run ts --domid 1 --devid 51728 v2-run version
	TARGET="aio:$IMG_DIR/other.img" run ts --domid 1 --devid 51728 v2-run prepare
	assert_success
	paths_of --domid 1 --devid 51728
	run env HOTPLUG_PATH="$HOTPLUG_PATH" BACKEND_PATH="$taken" "$SCRIPT" add
	assert_failure
	assert_output --partial "$taken"
	assert_equal "$(xs_read "$taken/physical-device")" "$before"
	run ts --domid 1 --devid 51728 v2-detach
	assert_success
	run ts --domid 1 v2-detach
	assert_success
	assert_no_leftovers
}

# ro_attach ARGS...: v2-attach, but with the backend's mode "r".
ro_attach() {
	ts "$@" v2-create
	ts "$@" v2-run version
	ts "$@" v2-run prepare
	ts "$@" v2-backend
	paths_of "$@"
	xenstore-write "$BACKEND_PATH/mode" r
	ts "$@" v2-run add
}

@test "sharing: read-only disks of two VMs may share an image; a writer may not join them" {
	run ro_attach --domid 1
	assert_success
	run ro_attach --domid 2
	assert_success
	run ts --domid 5 v2-attach
	assert_failure
	paths_of --domid 5
	run xs_read "$BACKEND_PATH/hotplug-error"
	assert_output --partial "in use read-only by domain"
	for d in 1 2 5; do
		run ts --domid "$d" v2-detach
	done
	assert_no_leftovers
}

# ---- backing files (issue 14) -------------------------------------------------
# A qcow2 overlay's base is its worker's parent, opened read-only: the
# worker holds it open for reading, so the rule sees it as a read-only use.

# overlays N...: a 64 MiB raw base $IMG_DIR/base.raw and, for each N, a
# qcow2 overlay $IMG_DIR/vmN.qcow2 over it (qemu-img).
overlays() {
	truncate -s 64M "$IMG_DIR/base.raw"
	head -c 1M /dev/urandom | dd of="$IMG_DIR/base.raw" conv=notrunc status=none
	for n in "$@"; do
		qemu-img create -q -f qcow2 -b "$IMG_DIR/base.raw" -F raw \
			"$IMG_DIR/vm$n.qcow2"
	done
}

# worker_of ARGS...: that disk's worker name (paths_of, when called as
# $(worker_of ...), sets nothing in the caller).
worker_of() {
	paths_of "$@"
	xs_read "$HOTPLUG_PATH/blkstack-worker"
}

@test "sharing: two VMs' overlays over one base: both added, the base recorded read-only, each guest writes its own overlay" {
	overlays 1 2
	sum=$(sha256sum <"$IMG_DIR/base.raw")
	TARGET="qcow2:$IMG_DIR/vm1.qcow2" run ts --domid 1 v2-attach
	assert_success
	TARGET="qcow2:$IMG_DIR/vm2.qcow2" run ts --domid 2 v2-attach
	assert_success
	# Each record has the overlay read-write and the base read-only.
	base=$(stat -c '%d %i' "$IMG_DIR/base.raw")
	for d in 1 2; do
		run grep -c "^image f r $base\$" "$BLKSTACK_RUNDIR/$(worker_of --domid "$d").attached"
		assert_output 1
		run grep -c '^image f w ' "$BLKSTACK_RUNDIR/$(worker_of --domid "$d").attached"
		assert_output 1
	done
	for d in 1 2; do
		paths_of --domid "$d"
		head -c 65536 /dev/urandom >"$BATS_TEST_TMPDIR/data$d"
		dd if="$BATS_TEST_TMPDIR/data$d" of="$(xs_read "$HOTPLUG_PATH/pdev")" \
			bs=64k oflag=direct status=none
	done
	for d in 1 2; do
		run ts --domid "$d" v2-detach
		assert_success
	done
	assert_no_leftovers
	assert_equal "$(sha256sum <"$IMG_DIR/base.raw")" "$sum"
	for d in 1 2; do
		run qemu-img check -f qcow2 "$IMG_DIR/vm$d.qcow2"
		assert_success
		qemu-img convert -f qcow2 -O raw "$IMG_DIR/vm$d.qcow2" \
			"$BATS_TEST_TMPDIR/back$d"
		run cmp -n 65536 "$BATS_TEST_TMPDIR/data$d" "$BATS_TEST_TMPDIR/back$d"
		assert_success
		# Beyond the write, each reads the base.
		run cmp -i 65536 -n 983040 "$IMG_DIR/base.raw" "$BATS_TEST_TMPDIR/back$d"
		assert_success
	done
}

@test "sharing: a base another VM's overlay reads may not be a disk read-write: refused, naming both disks" {
	overlays 1
	TARGET="qcow2:$IMG_DIR/vm1.qcow2" run ts --domid 1 v2-attach
	assert_success
	reader=$(worker_of --domid 1)
	TARGET="aio:$IMG_DIR/base.raw" run ts --domid 5 \
		--vm /vm/0b7d2c3a-0000-4000-8000-00000000cafe v2-attach
	assert_failure
	writer=$(worker_of --domid 5)
	paths_of --domid 5
	run xs_read "$BACKEND_PATH/hotplug-error"
	assert_output --partial "image $IMG_DIR/base.raw of this disk (worker $writer, read-write)"
	assert_output --partial "in use read-only by domain 1 (worker $reader"
	xs_absent "$BACKEND_PATH/physical-device"
	TARGET="aio:$IMG_DIR/base.raw" run ts --domid 5 v2-detach
	assert_success
	TARGET="qcow2:$IMG_DIR/vm1.qcow2" run ts --domid 1 v2-detach
	assert_success
	assert_no_leftovers
}

@test "sharing: an overlay over another VM's read-write disk is refused, naming both disks" {
	overlays 1
	TARGET="aio:$IMG_DIR/base.raw" run ts --domid 5 \
		--vm /vm/0b7d2c3a-0000-4000-8000-00000000cafe v2-attach
	assert_success
	writer=$(worker_of --domid 5)
	TARGET="qcow2:$IMG_DIR/vm1.qcow2" run ts --domid 1 v2-attach
	assert_failure
	reader=$(worker_of --domid 1)
	paths_of --domid 1
	run xs_read "$BACKEND_PATH/hotplug-error"
	assert_output --partial "image $IMG_DIR/base.raw of this disk (worker $reader, read-only)"
	assert_output --partial "in use read-write by domain 5 (worker $writer"
	xs_absent "$BACKEND_PATH/physical-device"
	TARGET="qcow2:$IMG_DIR/vm1.qcow2" run ts --domid 1 v2-detach
	assert_success
	# Once the writer lets go, the overlay's disk is added.
	TARGET="aio:$IMG_DIR/base.raw" run ts --domid 5 v2-detach
	assert_success
	TARGET="qcow2:$IMG_DIR/vm1.qcow2" run ts --domid 1 v2-attach
	assert_success
	TARGET="qcow2:$IMG_DIR/vm1.qcow2" run ts --domid 1 v2-detach
	assert_success
	assert_no_leftovers
}

@test "sharing: two differencing VHDs over one dynamic base (blkstack-img): both added" {
	qemu-img create -q -f vpc -o subformat=dynamic,force_size=on \
		"$IMG_DIR/base.vhd" 64M
	for d in 1 2; do
		"$BIN/blkstack-img" create -f vhd -b "$IMG_DIR/base.vhd" -F vhd \
			"$IMG_DIR/vm$d.vhd"
	done
	for d in 1 2; do
		TARGET="vhd:$IMG_DIR/vm$d.vhd" run ts --domid "$d" v2-attach
		assert_success
	done
	base=$(stat -c '%d %i' "$IMG_DIR/base.vhd")
	run grep -c "^image f r $base\$" "$BLKSTACK_RUNDIR/$(worker_of --domid 2).attached"
	assert_output 1
	# The base as a third VM's read-write disk: refused.
	TARGET="vhd:$IMG_DIR/base.vhd" run ts --domid 5 \
		--vm /vm/0b7d2c3a-0000-4000-8000-00000000cafe v2-attach
	assert_failure
	writer=$(worker_of --domid 5)
	paths_of --domid 5
	run xs_read "$BACKEND_PATH/hotplug-error"
	assert_output --partial "image $IMG_DIR/base.vhd of this disk (worker $writer, read-write)"
	assert_output --partial "in use read-only by domain"
	for d in 5 1 2; do
		run ts --domid "$d" v2-detach
		assert_success
	done
	assert_no_leftovers
}
