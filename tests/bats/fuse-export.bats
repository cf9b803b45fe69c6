#!/usr/bin/env bats
# libblkstack/export/fuse/: the worker's own FUSE export (--fuse-mount),
# against a real blkstack-worker in a private rundir, the kernel's FUSE,
# real loop devices with direct I/O, fio and nbdinfo.  What both
# transports serve is tested on each (readv, and io_uring: "[io_uring]"
# in the name, which sets the fuse module's enable_uring and puts it
# back after); what they differ in, a crash under a supervisor, apart.

load helpers

setup() {
	command -v fio >/dev/null || skip "fio is not installed"
	[ -c /dev/fuse ] || skip "/dev/fuse is missing"
	img_dir
	WORKER_RUNDIR=$BATS_TEST_TMPDIR/run
	MNT=$BATS_TEST_TMPDIR/mnt
	mkdir -p "$MNT"
	export BLKSTACK_CONF=$BATS_TEST_TMPDIR/blkstack.conf
	: >"$BLKSTACK_CONF"
	FUSE_TRANSPORT=readv
	URING_WAS=
}

# Loop devices on our file, our mount, then the processes.  A file
# system the worker has already unmounted (lazily) shows its file as
# "/disk": such a loop device is ours too, and is detached by name.
teardown() {
	if [ -n "${LOOP:-}" ]; then
		losetup -d "$LOOP" 2>/dev/null || true
	fi
	fuse_teardown "$MNT" /disk
	if [ -n "$URING_WAS" ]; then
		echo "$URING_WAS" >"$URING_PARAM"
	fi
}

URING_PARAM=/sys/module/fuse/parameters/enable_uring

# uring_param Y|N: set the fuse module's enable_uring (the value before
# is put back by teardown); skip where the kernel has no such thing.
uring_param() {
	[ -e "$URING_PARAM" ] ||
		skip "Linux $(uname -r) has no FUSE over io_uring (6.14+, CONFIG_FUSE_IO_URING)"
	[ -n "$URING_WAS" ] || URING_WAS=$(cat "$URING_PARAM")
	echo "$1" >"$URING_PARAM"
}

# use_uring: the tests that follow serve over io_uring.
use_uring() {
	uring_param Y
	FUSE_TRANSPORT=io_uring
}

mounted() {
	mounted_on "$MNT"
}

# A 64 MiB image with random data in its first 4 MiB, served by worker d1
# with --fuse-mount $MNT (and ARGS).
start_disk() {
	truncate -s 64M "$IMG_DIR/d1.img"
	head -c 4194304 /dev/urandom |
		dd of="$IMG_DIR/d1.img" conv=notrunc status=none
	worker_start d1 "aio:$IMG_DIR/d1.img" --fuse-mount "$MNT" \
		--fuse-transport "${FUSE_TRANSPORT:-readv}" "$@"
}

# io_fails_soon PID: fio PID on $LOOP ends within 30 s (its I/O fails:
# no hang), and so does a read of $LOOP.
io_fails_soon() {
	local i
	for i in $(seq 300); do
		gone "$1" && break
		sleep 0.1
	done
	gone "$1"
	run dd if="$LOOP" of=/dev/null bs=4k count=1 iflag=direct
	[ "$status" -ne 0 ]
}

# loop_on [ARGS...]: a loop device with direct I/O on $MNT/disk: LOOP.
loop_on() {
	LOOP=$(losetup --direct-io=on "$@" -f --show "$MNT/disk")
}

# stat_of KEY: the FUSE export's counter KEY from the worker's stats.
stat_of() {
	"$BIN/blkstack-ctl" --rundir "$WORKER_RUNDIR" stats --name d1 --json |
		python3 -c 'import json,sys; print(json.load(sys.stdin)["fuse"][sys.argv[1]])' "$1"
}

# layer_ops OP: the sink's count of OP requests.
layer_ops() {
	"$BIN/blkstack-ctl" --rundir "$WORKER_RUNDIR" stats --name d1 --json |
		python3 -c 'import json,sys; print(json.load(sys.stdin)["layers"][-1]["ops"][sys.argv[1]]["ops"])' "$1"
}

t_data() {
	start_disk
	[ "$(ls "$MNT")" = disk ]
	[ "$(stat -c %s "$MNT/disk")" = 67108864 ]
	[ "$(stat -c %a "$MNT/disk")" = 600 ]
	cmp <(head -c 4194304 "$IMG_DIR/d1.img") \
		<(dd if="$MNT/disk" bs=1M count=4 iflag=direct status=none)
	run touch "$MNT/other"
	[ "$status" -ne 0 ]
	run truncate -s 1M "$MNT/disk"
	[ "$status" -ne 0 ]
	[ "$(stat_of mounted)" = True ]
	[ "$(stat_of transport)" = "$FUSE_TRANSPORT" ]
	# The NBD export serves the same disk beside it.
	if command -v nbdinfo >/dev/null; then
		[ "$(nbdinfo --size "nbd+unix:///d1?socket=$NBD_SOCK")" = 67108864 ]
	fi
}

@test "fuse-export: DIR/disk has the disk's size and data, in a read-only directory" {
	t_data
}

@test "fuse-export: DIR/disk has the disk's size and data, in a read-only directory [io_uring]" {
	use_uring
	t_data
}

t_verify() {
	start_disk
	loop_on
	fio --name=v --filename="$LOOP" --ioengine=libaio --direct=1 \
		--rw=randwrite --bs=4k --iodepth=16 --size=32M \
		--verify=crc32c --verify_state_save=0 --output=/dev/null
	fio --name=s --filename="$LOOP" --ioengine=libaio --direct=1 \
		--rw=write --bs=1M --iodepth=4 --offset=32M --size=16M \
		--verify=crc32c --verify_state_save=0 --output=/dev/null
	head -c 2097152 /dev/urandom >"$BATS_TEST_TMPDIR/pat"
	dd if="$BATS_TEST_TMPDIR/pat" of="$LOOP" bs=64k seek=800 \
		oflag=direct status=none
	cmp "$BATS_TEST_TMPDIR/pat" \
		<(dd if="$IMG_DIR/d1.img" bs=64k skip=800 count=32 status=none)
	[ "$(stat_of errors)" = 0 ]
	[ "$(stat_of bytes_written)" -ge $((48 << 20)) ]
	[ "$(stat_of transport)" = "$FUSE_TRANSPORT" ]
}

@test "fuse-export: a loop device on it passes fio verify, and the writes are in the image" {
	t_verify
}

@test "fuse-export: a loop device on it passes fio verify, and the writes are in the image [io_uring]" {
	use_uring
	t_verify
}

t_flush_discard() {
	start_disk
	loop_on
	local f0
	f0=$(layer_ops flush)
	dd if=/dev/urandom of="$LOOP" bs=4k count=1 oflag=direct,dsync \
		status=none
	[ "$(layer_ops flush)" -gt "$f0" ]
	blkdiscard -o 1048576 -l 1048576 "$LOOP"
	cmp <(head -c 1048576 /dev/zero) \
		<(dd if="$IMG_DIR/d1.img" bs=1M skip=1 count=1 status=none)
	blkdiscard -z -o 2097152 -l 1048576 "$LOOP"
	cmp <(head -c 1048576 /dev/zero) \
		<(dd if="$IMG_DIR/d1.img" bs=1M skip=2 count=1 status=none)
	# The rest is untouched.
	[ "$(layer_ops write-zeroes)" -ge 2 ]
	cmp <(dd if="$IMG_DIR/d1.img" bs=1M skip=3 count=1 status=none) \
		<(dd if="$LOOP" bs=1M skip=3 count=1 iflag=direct status=none)
}

@test "fuse-export: fsync reaches the sink as a flush; discard and zero-out read back as zeroes" {
	t_flush_discard
}

@test "fuse-export: fsync reaches the sink as a flush; discard and zero-out read back as zeroes [io_uring]" {
	use_uring
	t_flush_discard
}

t_past_end() {
	start_disk
	run dd if=/dev/zero of="$MNT/disk" bs=4096 seek=16384 count=1 \
		oflag=direct conv=notrunc status=none
	[ "$status" -ne 0 ]
	[[ "$output" == *"No space left"* ]]
	[ "$(stat -c %s "$IMG_DIR/d1.img")" = 67108864 ]
	[ "$(stat -c %s "$MNT/disk")" = 67108864 ]
}

@test "fuse-export: nothing is written past the end of the disk" {
	t_past_end
}

@test "fuse-export: nothing is written past the end of the disk [io_uring]" {
	use_uring
	t_past_end
}

t_read_only() {
	start_disk --read-only
	[ "$(stat -c %a "$MNT/disk")" = 400 ]
	run dd if=/dev/zero of="$MNT/disk" bs=4096 count=1 oflag=direct \
		conv=notrunc status=none
	[ "$status" -ne 0 ]
	[[ "$output" == *"Read-only file system"* ]]
	loop_on -r
	cmp <(head -c 4194304 "$IMG_DIR/d1.img") \
		<(dd if="$LOOP" bs=1M count=4 iflag=direct status=none)
}

@test "fuse-export: a read-only worker serves a read-only file" {
	t_read_only
}

@test "fuse-export: a read-only worker serves a read-only file [io_uring]" {
	use_uring
	t_read_only
}

@test "fuse-export: bad mount points are refused, naming the directory" {
	truncate -s 64M "$IMG_DIR/d1.img"
	run "$BIN/blkstack-worker" --rundir "$WORKER_RUNDIR" --name d1 \
		--chain "aio:$IMG_DIR/d1.img" --foreground --fuse-mount rel/dir
	[ "$status" -eq 2 ]
	[[ "$output" == *"absolute path"* ]]

	run worker_start d1 "aio:$IMG_DIR/d1.img" \
		--fuse-mount "$BATS_TEST_TMPDIR/nowhere"
	[ "$status" -ne 0 ]
	[[ "$output" == *"mount point $BATS_TEST_TMPDIR/nowhere: No such file"* ]]

	: >"$BATS_TEST_TMPDIR/afile"
	run worker_start d1 "aio:$IMG_DIR/d1.img" \
		--fuse-mount "$BATS_TEST_TMPDIR/afile"
	[ "$status" -ne 0 ]
	[[ "$output" == *"Not a directory"* ]]

	: >"$MNT/something"
	run worker_start d1 "aio:$IMG_DIR/d1.img" --fuse-mount "$MNT"
	[ "$status" -ne 0 ]
	[[ "$output" == *"mount point $MNT: Directory not empty"* ]]
	! mounted
	# Nothing of the failed starts is left in the rundir.
	[ ! -e "$WORKER_RUNDIR/d1" ]
}

t_sigterm() {
	start_disk
	loop_on
	fio --name=bg --filename="$LOOP" --ioengine=libaio --direct=1 \
		--rw=randrw --bs=4k --iodepth=16 --time_based --runtime=30 \
		--output=/dev/null >/dev/null 2>&1 &
	local fio_pid=$!
	sleep 1
	kill -TERM "$WORKER_PID"
	run timeout 30 tail --pid="$WORKER_PID" -f /dev/null
	[ "$status" -eq 0 ]
	wait "$WORKER_PID"
	! mounted
	# fio ends with errors once the file system is gone.
	io_fails_soon "$fio_pid"
}

@test "fuse-export: SIGTERM under I/O unmounts, and the loop device above gets errors, not a hang" {
	t_sigterm
}

@test "fuse-export: SIGTERM under I/O unmounts, and the loop device above gets errors, not a hang [io_uring]" {
	use_uring
	t_sigterm
}

t_dead_mount() {
	start_disk
	kill -KILL "$WORKER_PID"
	wait "$WORKER_PID" || true
	run stat "$MNT/disk"
	[ "$status" -ne 0 ]
	worker_start d1 "aio:$IMG_DIR/d1.img" --fuse-mount "$MNT" \
		--fuse-transport "$FUSE_TRANSPORT"
	[ "$(stat -c %s "$MNT/disk")" = 67108864 ]
	cmp <(head -c 4194304 "$IMG_DIR/d1.img") \
		<(dd if="$MNT/disk" bs=1M count=4 iflag=direct status=none)
	# One mount, not a dead one under a live one.
	[ "$(awk -v d="$MNT" '$5 == d' /proc/self/mountinfo | wc -l)" = 1 ]
}

@test "fuse-export: a killed worker's dead mount is taken over by the next worker" {
	t_dead_mount
}

@test "fuse-export: a killed worker's dead mount is taken over by the next worker [io_uring]" {
	use_uring
	t_dead_mount
}


# sup_disk [ARGS...]: like start_disk, but under blkstack-supervisor
# (restart limit 20 in 60 s; ARGS for every worker), waiting for its
# readiness line.  Sets SUP_PID, WDIR.
sup_disk() {
	local ready=$BATS_TEST_TMPDIR/sup.ready line
	truncate -s 64M "$IMG_DIR/d1.img"
	sup_conf restart-limit=20 restart-window=60
	mkfifo "$ready"
	"$BIN/blkstack-supervisor" --rundir "$WORKER_RUNDIR" --name d1 \
		--chain "aio:$IMG_DIR/d1.img" --ready-fd 3 \
		-- --fuse-mount "$MNT" "$@" \
		3>"$ready" </dev/null >>"$BATS_TEST_TMPDIR/sup.log" 2>&1 &
	SUP_PID=$!
	IFS= read -r line <"$ready" || line="(no readiness line)"
	rm -f "$ready"
	[ "$line" = ok ]
	WDIR=$WORKER_RUNDIR/d1
	# The worker's INIT is done once the file is there.
	[ "$(stat -c %s "$MNT/disk")" = 67108864 ]
}

@test "fuse-export: a supervised worker SIGKILLed under verifying writes: the loop device sees no error" {
	kernel_can_resend || skip "Linux $(uname -r) cannot resend FUSE requests (6.9+)"
	sup_disk
	# The supervisor holds a duplicate of the session's /dev/fuse.
	run ls -l "/proc/$SUP_PID/fd"
	assert_output --partial /dev/fuse
	loop_on
	fio --name=v --filename="$LOOP" --direct=1 --ioengine=libaio \
		--iodepth=16 --rw=randwrite --bs=4k --size=32M \
		--verify=crc32c --verify_fatal=1 --do_verify=1 --loops=40 \
		--verify_state_save=0 \
		--output="$BATS_TEST_TMPDIR/fio.out" &
	local fio_pid=$! i rc=0
	for i in 1 2 3 4; do
		sleep 0.5
		gone "$fio_pid" && break
		kill_and_wait_restart "$WDIR" >/dev/null
	done
	# Four crashes happened while fio ran (else the test proves nothing).
	[ "$i" = 4 ]
	[ "$(sup_field "$WDIR" restarts)" = 4 ]
	timeout 120 tail --pid="$fio_pid" -f /dev/null
	wait "$fio_pid" || rc=$?
	cat "$BATS_TEST_TMPDIR/fio.out"
	[ "$rc" -eq 0 ]
	grep -q 'err= 0' "$BATS_TEST_TMPDIR/fio.out"
	# The same mount all along: one, with a live server.
	[ "$(awk -v d="$MNT" '$5 == d' /proc/self/mountinfo | wc -l)" = 1 ]
	[ "$(stat_of mounted)" = True ]
	# A graceful stop still ends the file system with the worker.
	losetup -d "$LOOP"
	LOOP=
	kill -TERM "$SUP_PID"
	timeout 30 tail --pid="$SUP_PID" -f /dev/null
	! mounted
}

@test "fuse-export: [io_uring] a supervised worker SIGKILLed under writes: the file system ends with it, no acknowledged write is lost, the next one mounts anew" {
	use_uring
	sup_disk --fuse-transport io_uring
	[ "$(stat_of transport)" = io_uring ]
	# Nothing to hand over (the kernel would not resend what the ring
	# held): the supervisor holds no /dev/fuse.
	run ls -l "/proc/$SUP_PID/fd"
	refute_output --partial /dev/fuse
	loop_on
	head -c 4194304 /dev/urandom >"$BATS_TEST_TMPDIR/pat"
	dd if="$BATS_TEST_TMPDIR/pat" of="$LOOP" bs=64k seek=160 \
		oflag=direct status=none
	fio --name=w --filename="$LOOP" --direct=1 --ioengine=libaio \
		--iodepth=16 --rw=randwrite --bs=4k --offset=32M --size=32M \
		--time_based --runtime=60 --output=/dev/null >/dev/null 2>&1 &
	local fio_pid=$!
	sleep 1
	kill_and_wait_restart "$WDIR" >/dev/null
	# The loop device's I/O fails, soon: no hang.
	io_fails_soon "$fio_pid"
	# What was acknowledged is on the image.
	cmp "$BATS_TEST_TMPDIR/pat" \
		<(dd if="$IMG_DIR/d1.img" bs=64k skip=160 count=64 status=none)
	# The next worker serves it on a new mount, over io_uring again.
	[ "$(stat -c %s "$MNT/disk")" = 67108864 ]
	[ "$(awk -v d="$MNT" '$5 == d' /proc/self/mountinfo | wc -l)" = 1 ]
	cmp "$BATS_TEST_TMPDIR/pat" \
		<(dd if="$MNT/disk" bs=64k skip=160 count=64 iflag=direct status=none)
	[ "$(stat_of transport)" = io_uring ]
}

# info_of KEY: the worker d1's info KEY.
info_of() {
	"$BIN/blkstack-ctl" --rundir "$WORKER_RUNDIR" info --name d1 --json |
		python3 -c 'import json,sys; print(json.load(sys.stdin)[sys.argv[1]])' "$1"
}

@test "fuse-export: auto is readv under a supervisor, even where io_uring is enabled" {
	kernel_can_resend || skip "Linux $(uname -r) cannot resend FUSE requests (6.9+)"
	uring_param Y
	sup_disk
	[ "$(info_of fuse_transport)" = readv ]
	[ "$(stat_of transport)" = readv ]
	run ls -l "/proc/$SUP_PID/fd"
	assert_output --partial /dev/fuse
}

@test "fuse-export: unsupervised, auto is io_uring where the kernel serves it, else readv; io_uring without it is refused" {
	uring_param Y
	FUSE_TRANSPORT=auto
	start_disk
	# bench/README.md, "Means tried" (uring.c's FX_AUTO_URING).
	[ "$(info_of fuse_transport)" = io_uring ]
	[ "$(stat_of transport)" = io_uring ]
	worker_stop
	uring_param N
	start_disk
	[ "$(info_of fuse_transport)" = readv ]
	[ "$(stat_of transport)" = readv ]
	worker_stop
	FUSE_TRANSPORT=io_uring
	run start_disk
	[ "$status" -ne 0 ]
	assert_output --partial "--fuse-transport io_uring: this kernel does not serve FUSE over io_uring"
	! mounted
	FUSE_TRANSPORT=uring
	run start_disk
	[ "$status" -ne 0 ]
	assert_output --partial "FUSE transport 'uring': must be auto, io_uring or readv"
}

@test "fuse-export: --fuse-fd with nothing mounted mounts anew; one that is not /dev/fuse is refused" {
	truncate -s 64M "$IMG_DIR/d1.img"
	# Nothing on $MNT (an administrator unmounted it): a new mount.
	worker_start d1 "aio:$IMG_DIR/d1.img" --fuse-mount "$MNT" --fuse-fd 5 5<>/dev/fuse
	grep -q "nothing is mounted on $MNT any more: mounting anew" "$BATS_TEST_TMPDIR/d1.log"
	[ "$(stat -c %s "$MNT/disk")" = 67108864 ]
	# A live mount there, and a descriptor that is not /dev/fuse.
	truncate -s 64M "$IMG_DIR/d2.img"
	run worker_start d2 "aio:$IMG_DIR/d2.img" --fuse-mount "$MNT" --fuse-fd 5 5</dev/null
	[ "$status" -ne 0 ]
	assert_output --partial "adopt descriptor 5: not /dev/fuse"
	run "$BIN/blkstack-worker" --name d3 --chain "aio:$IMG_DIR/d1.img" --fuse-fd 5 5</dev/null
	[ "$status" -eq 2 ]
	assert_output --partial "--fuse-fd needs --fuse-mount"
	# d1 still serves its file.
	[ "$(stat -c %s "$MNT/disk")" = 67108864 ]
}

@test "fuse-export: a supervised worker whose mount was taken down, killed: the next one mounts anew" {
	kernel_can_resend || skip "Linux $(uname -r) cannot resend FUSE requests (6.9+)"
	sup_disk
	umount -l "$MNT"
	! mounted
	kill_and_wait_restart "$WDIR" >/dev/null
	[ "$(stat -c %s "$MNT/disk")" = 67108864 ]
	dd if="$MNT/disk" of=/dev/null bs=1M count=4 iflag=direct status=none
	# The supervisor holds one session, not the old one beside the new.
	[ "$(ls -l "/proc/$SUP_PID/fd" | grep -c /dev/fuse)" = 1 ]
}
