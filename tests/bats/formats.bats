#!/usr/bin/env bats
# Image formats through the hotplug path (issue 14): the script run as
# libxl runs it, a real xenstored, real workers and a real dom0 device
# (blkstack-fuse + loop), on qcow2 and VHD images made by qemu-img and
# blkstack-img, checked afterwards by qemu-img, vhdiinfo and a fresh
# worker.  The sharing rule's backing-file cases are in sharing.bats.

load helpers

setup() {
	hotplug_setup
	IMGTOOL=$BIN/blkstack-img
}

teardown() {
	[ -z "${FIO:-}" ] || kill "$FIO" 2>/dev/null || true
	for d in 1 2; do
		"$TOOLSTACK" --quiet --script "$SCRIPT" --domid "$d" v2-detach \
			>/dev/null 2>&1 || true
	done
	hotplug_teardown
}

# raw_base FILE: a 64 MiB raw image whose first 8 MiB are random (what an
# overlay reads through to), the rest a hole.
raw_base() {
	truncate -s 64M "$1"
	head -c 8M /dev/urandom | dd of="$1" bs=1M conv=notrunc status=none
}

# through_dev OFFSET_MB: 1 MiB of random data written at OFFSET_MB through
# the disk's pdev (O_DIRECT), read back through it and compared; leaves
# the data in $BATS_TEST_TMPDIR/data.
through_dev() {
	local dev
	dev=$(xs_read "$HOTPLUG_PATH/pdev")
	run blockdev --getsize64 "$dev"
	assert_output 67108864
	head -c 1M /dev/urandom >"$BATS_TEST_TMPDIR/data"
	dd if="$BATS_TEST_TMPDIR/data" of="$dev" bs=1M seek="$1" oflag=direct \
		status=none
	run cmp "$BATS_TEST_TMPDIR/data" \
		<(dd if="$dev" bs=1M skip="$1" count=1 iflag=direct status=none)
	assert_success
}

# expected BASE OFFSET_MB: $BATS_TEST_TMPDIR/expected, the disk as it must
# read now: BASE (or zeroes if "") with the data at OFFSET_MB.
expected() {
	local e=$BATS_TEST_TMPDIR/expected
	rm -f "$e"
	if [ -n "$1" ]; then
		cp --sparse=always "$1" "$e"
	fi
	truncate -s 64M "$e"
	dd if="$BATS_TEST_TMPDIR/data" of="$e" bs=1M seek="$2" conv=notrunc \
		status=none
}

# read_back CHAIN: the whole disk as a fresh worker on CHAIN serves it
# (nbdcopy over its socket), into $BATS_TEST_TMPDIR/back.
read_back() {
	rm -f "$BATS_TEST_TMPDIR/back"
	worker_start readback "$1"
	nbdcopy "$(nbd_uri)" "$BATS_TEST_TMPDIR/back"
	worker_stop
}

@test "formats: v2 on a qcow2 overlay over a raw base: the base shows through, writes go to the overlay" {
	raw_base "$IMG_DIR/base.raw"
	sum=$(sha256sum <"$IMG_DIR/base.raw")
	qemu-img create -q -f qcow2 -b "$IMG_DIR/base.raw" -F raw "$IMG_DIR/vm.qcow2"
	TARGET="qcow2:$IMG_DIR/vm.qcow2"
	run ts v2-attach
	assert_success
	dev=$(xs_read "$HOTPLUG_PATH/pdev")
	# Unallocated in the overlay: the base's data.
	run cmp -n 4194304 "$IMG_DIR/base.raw" \
		<(dd if="$dev" bs=1M count=4 iflag=direct status=none)
	assert_success
	# Into a cluster the base has data under, and into one it has not.
	through_dev 2
	cp "$BATS_TEST_TMPDIR/data" "$BATS_TEST_TMPDIR/data2"
	through_dev 40
	run ts v2-detach
	assert_success
	assert_no_leftovers
	# qemu-img agrees: a consistent image, with both writes on the base.
	run qemu-img check -f qcow2 "$IMG_DIR/vm.qcow2"
	assert_success
	assert_output --partial "No errors were found"
	expected "$IMG_DIR/base.raw" 40
	dd if="$BATS_TEST_TMPDIR/data2" of="$BATS_TEST_TMPDIR/expected" bs=1M \
		seek=2 conv=notrunc status=none
	run qemu-img compare -f qcow2 -F raw "$IMG_DIR/vm.qcow2" \
		"$BATS_TEST_TMPDIR/expected"
	assert_success
	assert_equal "$(sha256sum <"$IMG_DIR/base.raw")" "$sum"
}

@test "formats: v2 on a qcow2 image blkstack-img made, and log:|qcow2: through the hotplug path" {
	run "$IMGTOOL" create -f qcow2 "$IMG_DIR/vm.qcow2" 64M
	assert_success
	TARGET="log:|qcow2:$IMG_DIR/vm.qcow2"
	run ts v2-attach
	assert_success
	through_dev 5
	# The log: layer above the format saw the write.
	run "$BIN/blkstack-ctl" --rundir "$BLKSTACK_RUNDIR" dirty \
		--name "$(xs_read "$HOTPLUG_PATH/blkstack-worker")"
	assert_output --partial "5242880 1048576"
	run ts v2-detach
	assert_success
	assert_no_leftovers
	run qemu-img check -f qcow2 "$IMG_DIR/vm.qcow2"
	assert_success
	expected "" 5
	run qemu-img compare -f qcow2 -F raw "$IMG_DIR/vm.qcow2" \
		"$BATS_TEST_TMPDIR/expected"
	assert_success
}

@test "formats: v1 add and remove on qcow2: (libxl 4.17's environment)" {
	raw_base "$IMG_DIR/base.raw"
	qemu-img create -q -f qcow2 -b "$IMG_DIR/base.raw" -F raw "$IMG_DIR/vm.qcow2"
	TARGET="qcow2:$IMG_DIR/vm.qcow2"
	run ts v1-attach
	assert_success
	be=/local/domain/0/$XENBUS_PATH
	dev=$(xs_read "$be/physical-device-path")
	run cmp -n 1048576 "$IMG_DIR/base.raw" \
		<(dd if="$dev" bs=1M count=1 iflag=direct status=none)
	assert_success
	run ts v1-detach
	assert_success
	assert_no_leftovers
}

@test "formats: v2 on a dynamic VHD (qemu-img's vpc): data round-trips, qemu-img and vhdiinfo read it" {
	qemu-img create -q -f vpc -o subformat=dynamic,force_size=on \
		"$IMG_DIR/vm.vhd" 64M
	TARGET="vhd:$IMG_DIR/vm.vhd"
	run ts v2-attach
	assert_success
	through_dev 7
	run ts v2-detach
	assert_success
	assert_no_leftovers
	run vhdiinfo "$IMG_DIR/vm.vhd"
	assert_success
	assert_output --partial "Dynamic"
	expected "" 7
	run qemu-img compare -f vpc -F raw "$IMG_DIR/vm.vhd" \
		"$BATS_TEST_TMPDIR/expected"
	assert_success
}

@test "formats: v2 on a differencing VHD over a dynamic base (blkstack-img -b), and log:|vhd:" {
	# The base, with data in its first 8 MiB, written by qemu-img.
	raw_base "$IMG_DIR/base.raw"
	qemu-img convert -q -f raw -O vpc -o subformat=dynamic,force_size=on \
		"$IMG_DIR/base.raw" "$IMG_DIR/base.vhd"
	sum=$(sha256sum <"$IMG_DIR/base.vhd")
	run "$IMGTOOL" create -f vhd -b "$IMG_DIR/base.vhd" -F vhd "$IMG_DIR/vm.vhd"
	assert_success
	run vhdiinfo "$IMG_DIR/vm.vhd"
	assert_success
	assert_output --partial "Differential"
	assert_output --partial "Parent filename"
	TARGET="log:|vhd:$IMG_DIR/vm.vhd"
	run ts v2-attach
	assert_success
	dev=$(xs_read "$HOTPLUG_PATH/pdev")
	run cmp -n 8388608 "$IMG_DIR/base.raw" \
		<(dd if="$dev" bs=1M count=8 iflag=direct status=none)
	assert_success
	through_dev 3
	run "$BIN/blkstack-ctl" --rundir "$BLKSTACK_RUNDIR" dirty \
		--name "$(xs_read "$HOTPLUG_PATH/blkstack-worker")"
	assert_output --partial "3145728 1048576"
	run ts v2-detach
	assert_success
	assert_no_leftovers
	# The base is untouched; a fresh worker reads base + write back.
	assert_equal "$(sha256sum <"$IMG_DIR/base.vhd")" "$sum"
	read_back "vhd:$IMG_DIR/vm.vhd"
	expected "$IMG_DIR/base.raw" 3
	cmp "$BATS_TEST_TMPDIR/expected" "$BATS_TEST_TMPDIR/back"
}

@test "formats: a missing backing file fails v1 add and v2 prepare, naming the missing file" {
	raw_base "$IMG_DIR/base.raw"
	qemu-img create -q -f qcow2 -b "$IMG_DIR/base.raw" -F raw "$IMG_DIR/vm.qcow2"
	rm "$IMG_DIR/base.raw"
	TARGET="qcow2:$IMG_DIR/vm.qcow2"
	run ts --keep-on-failure v1-attach
	assert_failure
	be=/local/domain/0/$XENBUS_PATH
	run xs_read "$be/hotplug-error"
	assert_output --partial "$IMG_DIR/base.raw"
	assert_output --partial "No such file or directory"
	run xs_read "$be/hotplug-status"
	assert_output error
	assert_no_leftovers

	ts v2-create
	run ts v2-run prepare
	assert_failure 1
	run xs_read "$HOTPLUG_PATH/hotplug-error"
	assert_output --partial "$IMG_DIR/base.raw"
	assert_output --partial "No such file or directory"
	run ts v2-run unprepare
	assert_success
	assert_no_leftovers
}

@test "formats: a differencing VHD whose parent is gone fails v1 add, naming the parent" {
	qemu-img create -q -f vpc -o subformat=dynamic,force_size=on \
		"$IMG_DIR/base.vhd" 64M
	run "$IMGTOOL" create -f vhd -b "$IMG_DIR/base.vhd" -F vhd "$IMG_DIR/vm.vhd"
	assert_success
	rm "$IMG_DIR/base.vhd"
	TARGET="log:|vhd:$IMG_DIR/vm.vhd"
	run ts --keep-on-failure v1-attach
	assert_failure
	run xs_read "/local/domain/0/$XENBUS_PATH/hotplug-error"
	assert_output --partial "base.vhd"
	assert_no_leftovers
}

@test "formats: a read-only disk (mode r) on a qcow2 overlay: it reads, writes are refused" {
	raw_base "$IMG_DIR/base.raw"
	qemu-img create -q -f qcow2 -b "$IMG_DIR/base.raw" -F raw "$IMG_DIR/vm.qcow2"
	TARGET="qcow2:$IMG_DIR/vm.qcow2"
	ts v2-create
	ts v2-run version
	ts v2-run prepare
	ts v2-backend
	xenstore-write "$BACKEND_PATH/mode" r
	run ts v2-run add
	assert_success
	dev=$(xs_read "$HOTPLUG_PATH/pdev")
	run cmp -n 1048576 "$IMG_DIR/base.raw" \
		<(dd if="$dev" bs=1M count=1 iflag=direct status=none)
	assert_success
	run dd if=/dev/zero of="$dev" bs=4096 count=1 oflag=direct status=none
	assert_failure
	run ts v2-detach
	assert_success
	assert_no_leftovers
	run qemu-img check -f qcow2 "$IMG_DIR/vm.qcow2"
	assert_success
}

@test "formats: with images = DIR, a backing file outside it is refused at prepare, naming it" {
	# The overlay is the guest's; its backing name points anywhere.
	export BLKSTACK_CONF=$BATS_TEST_TMPDIR/blkstack.conf
	printf 'images = %s\n' "$IMG_DIR" >"$BLKSTACK_CONF"
	truncate -s 64M "$BATS_TEST_TMPDIR/outside.raw"
	qemu-img create -q -f qcow2 -b "$BATS_TEST_TMPDIR/outside.raw" -F raw \
		"$IMG_DIR/vm.qcow2"
	TARGET="qcow2:$IMG_DIR/vm.qcow2"
	ts v2-create
	run ts v2-run prepare
	assert_failure 1
	run xs_read "$HOTPLUG_PATH/hotplug-error"
	assert_output --partial "image $BATS_TEST_TMPDIR/outside.raw is outside"
	run ts v2-detach
	assert_success
	assert_no_leftovers
	# The same overlay over a base inside the directory is fine.
	truncate -s 64M "$IMG_DIR/base.raw"
	qemu-img rebase -q -u -f qcow2 -b "$IMG_DIR/base.raw" -F raw "$IMG_DIR/vm.qcow2"
	run ts v2-attach
	assert_success
	run ts v2-detach
	assert_success
	assert_no_leftovers
}

@test "formats: a backing chain that loops fails prepare with a message, and leaves nothing" {
	qemu-img create -q -f qcow2 "$IMG_DIR/a.qcow2" 64M
	qemu-img create -q -f qcow2 -u -b "$IMG_DIR/a.qcow2" -F qcow2 "$IMG_DIR/b.qcow2" 64M
	qemu-img rebase -q -u -f qcow2 -b "$IMG_DIR/b.qcow2" -F qcow2 "$IMG_DIR/a.qcow2"
	TARGET="qcow2:$IMG_DIR/a.qcow2"
	ts v2-create
	run timeout 30 "$TOOLSTACK" --quiet --script "$SCRIPT" --target "$TARGET" \
		v2-run prepare
	assert_failure 1
	run xs_read "$HOTPLUG_PATH/hotplug-error"
	assert_output --regexp "$IMG_DIR/(a|b)\.qcow2"
	run ts v2-detach
	assert_success
	assert_no_leftovers
}

# crash_load TARGET: v2-attach TARGET (supervised), an fio verify write
# load on its loop-fallback device with three kill -9 of the worker in it;
# fio must see no error (every acknowledged write reads back), and detach
# must leave nothing.
crash_load() {
	local dev w st n
	sup_conf restart-limit=10 restart-window=60
	TARGET=$1 run ts v2-attach
	assert_success
	dev=$(xs_read "$HOTPLUG_PATH/pdev")
	w=$BLKSTACK_RUNDIR/$(xs_read "$HOTPLUG_PATH/blkstack-worker")
	# Mostly allocating writes (a fresh overlay), a mix of sizes, many in
	# flight; rate keeps the write phase long enough for the kills.
	fio --name=verify --filename="$dev" --ioengine=libaio --direct=1 \
		--rw=randwrite --bssplit=4k/70:64k/20:1m/10 --iodepth=32 \
		--size=48M --rate=12m --verify=crc32c --do_verify=1 \
		--verify_fatal=1 --verify_state_save=0 \
		--output="$BATS_TEST_TMPDIR/fio.out" &
	FIO=$!
	sleep 1
	for _ in 1 2 3; do
		kill_and_wait_restart "$w" >/dev/null
		sleep 0.7
	done
	n=1200
	while [ "$n" -gt 0 ] && ! gone "$FIO"; do
		sleep 0.1
		n=$((n - 1))
	done
	gone "$FIO" || fail "fio still running after 120 s"
	st=0
	wait "$FIO" || st=$?
	FIO=
	cat "$BATS_TEST_TMPDIR/fio.out"
	[ "$st" -eq 0 ]
	run grep -c 'err= 0' "$BATS_TEST_TMPDIR/fio.out"
	assert_output 1
	[ "$(sup_field "$w" restarts)" = 3 ]
	TARGET=$1 run ts v2-detach
	assert_success
	assert_no_leftovers
}

@test "formats: three kill -9 of a qcow2 overlay's worker under fio verify writes: no error, the image checks without corruption, the base unchanged" {
	raw_base "$IMG_DIR/base.raw"
	sum=$(sha256sum <"$IMG_DIR/base.raw")
	qemu-img create -q -f qcow2 -b "$IMG_DIR/base.raw" -F raw "$IMG_DIR/vm.qcow2"
	crash_load "qcow2:$IMG_DIR/vm.qcow2"
	# A kill may leak clusters (exit 3), never corrupt (exit 2).
	run qemu-img check -f qcow2 "$IMG_DIR/vm.qcow2"
	[ "$status" -eq 0 ] || [ "$status" -eq 3 ] || fail "qemu-img check: $output"
	refute_output --partial ERROR
	run "$IMGTOOL" check "$IMG_DIR/vm.qcow2"
	[ "$status" -eq 0 ] || [ "$status" -eq 3 ] || fail "blkstack-img check: $output"
	assert_equal "$(sha256sum <"$IMG_DIR/base.raw")" "$sum"
}

@test "formats: three kill -9 of a differencing VHD's worker under fio verify writes: no error, blkstack-img check clean, the base unchanged" {
	raw_base "$IMG_DIR/base.raw"
	qemu-img convert -q -f raw -O vpc -o subformat=dynamic,force_size=on \
		"$IMG_DIR/base.raw" "$IMG_DIR/base.vhd"
	sum=$(sha256sum <"$IMG_DIR/base.vhd")
	"$IMGTOOL" create -q -f vhd -b "$IMG_DIR/base.vhd" -F vhd "$IMG_DIR/vm.vhd"
	crash_load "vhd:$IMG_DIR/vm.vhd"
	run "$IMGTOOL" check "$IMG_DIR/vm.vhd"
	[ "$status" -eq 0 ] || [ "$status" -eq 3 ] || fail "blkstack-img check: $output"
	run vhdiinfo "$IMG_DIR/vm.vhd"
	assert_success
	assert_equal "$(sha256sum <"$IMG_DIR/base.vhd")" "$sum"
}
