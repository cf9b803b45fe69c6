#!/usr/bin/env bats
# helpers/fuse/: blkstack-fuse, the loop fallback's FUSE server, against a
# real blkstack-worker started by hand in a private rundir, with real loop
# devices and fio.  The supervisor is not used: the tests kill and restart
# the worker themselves.

load helpers

setup() {
	command -v fio >/dev/null || skip "fio is not installed"
	[ -c /dev/fuse ] || skip "/dev/fuse is missing"
	img_dir
	WORKER_RUNDIR=$BATS_TEST_TMPDIR/run
	MNT=$BATS_TEST_TMPDIR/mnt
	FLOG=$BATS_TEST_TMPDIR/fuse.log
	mkdir -p "$MNT"
	export BLKSTACK_CONF=$BATS_TEST_TMPDIR/blkstack.conf
	: >"$BLKSTACK_CONF"
}

# Loop devices on our file, our mount, then the processes.
teardown() {
	fuse_teardown "$MNT" /nbd
}

# A worker d1 on a 64 MiB image with random data in its first 4 MiB.
start_disk() {
	truncate -s "${1:-64M}" "$IMG_DIR/d1.img"
	head -c 4194304 /dev/urandom |
		dd of="$IMG_DIR/d1.img" conv=notrunc status=none
	worker_start d1 "aio:$IMG_DIR/d1.img"
}

# fuse_start [ARGS...]: blkstack-fuse on $NBD_SOCK at $MNT, waiting for
# its readiness line (FIFO: no polling); sets FUSE_PID and READY.
fuse_start() {
	local ready=$BATS_TEST_TMPDIR/fuse.ready
	rm -f "$ready"
	mkfifo "$ready"
	"$BIN/blkstack-fuse" --socket "$NBD_SOCK" --mount "$MNT" \
		--foreground --ready-fd 3 "$@" \
		3>"$ready" </dev/null >>"$FLOG" 2>&1 &
	FUSE_PID=$!
	IFS= read -r READY <"$ready" || READY="(no readiness line)"
	rm -f "$ready"
}

# kill_worker: SIGKILL the worker and reap it.
kill_worker() {
	kill -KILL "$WORKER_PID"
	wait "$WORKER_PID" || true
}

# wait_gone PID: up to 15 s for PID to exit.
wait_gone() {
	local i
	for i in $(seq 150); do
		gone "$1" && return 0
		sleep 0.1
	done
	return 1
}

mounted() {
	awk -v d="$MNT" '$5 == d { f = 1 } END { exit !f }' /proc/self/mountinfo
}

@test "fuse: serves one file of the export's size and data; writes reach the image" {
	start_disk
	fuse_start
	[ "$READY" = ok ]
	mounted
	run ls -A "$MNT"
	assert_output nbd
	run stat -c %s "$MNT/nbd"
	assert_output 67108864
	cmp "$MNT/nbd" "$IMG_DIR/d1.img"
	head -c 1048576 /dev/urandom >"$BATS_TEST_TMPDIR/pat"
	dd if="$BATS_TEST_TMPDIR/pat" of="$MNT/nbd" bs=1M seek=10 \
		conv=notrunc,fsync status=none
	cmp -n 1048576 "$BATS_TEST_TMPDIR/pat" "$IMG_DIR/d1.img" 0 10485760
	# Beyond the end: nothing to read, no room to write.
	run dd if="$MNT/nbd" of=/dev/null bs=4096 skip=16384 count=1
	assert_output --partial "0+0 records in"
	run dd if="$BATS_TEST_TMPDIR/pat" of="$MNT/nbd" bs=4096 seek=16384 \
		count=1 conv=notrunc
	assert_failure
	assert_output --partial "No space left on device"
	# A loop device with direct I/O on it is the export too.
	dev=$(losetup --direct-io=on -f --show "$MNT/nbd")
	run cat "/sys/block/${dev#/dev/}/loop/dio"
	assert_output 1
	run blockdev --getsize64 "$dev"
	assert_output 67108864
	cmp "$dev" "$IMG_DIR/d1.img"
	# Punching a hole zeroes it (fallocate on the file, discard on loop).
	fallocate --punch-hole --keep-size -o 10485760 -l 65536 "$MNT/nbd"
	cmp -n 65536 /dev/zero "$IMG_DIR/d1.img" 0 10485760
	losetup -d "$dev"
}

@test "fuse: the connection to the worker has a send buffer for whole 1 MiB writes" {
	[ "$(id -u)" -eq 0 ] || skip "SO_SNDBUFFORCE needs root"
	start_disk
	fuse_start
	[ "$READY" = ok ]
	run sndbufs "$FUSE_PID"
	assert_success
	[ "${#lines[@]}" -eq 1 ] || fail "expected one connection: $output"
	[ "$output" -ge 4194304 ] || fail "send buffer $output < 4 MiB"
	# The worker's side of it too.
	run sndbufs "$WORKER_PID" "$NBD_SOCK"
	[ "$output" -ge 4194304 ] || fail "worker's send buffer $output < 4 MiB"
}

@test "fuse: read-only refuses writes" {
	start_disk
	fuse_start --read-only
	[ "$READY" = ok ]
	run stat -c %a "$MNT/nbd"
	assert_output 400
	run dd if=/dev/zero of="$MNT/nbd" bs=4096 count=1 conv=notrunc
	assert_failure
	cmp "$MNT/nbd" "$IMG_DIR/d1.img"
}

@test "fuse: reads and writes of every size on a direct-I/O loop device reach the image intact (request blocks are reused across sizes)" {
	start_disk
	fuse_start
	[ "$READY" = ok ]
	dev=$(losetup --direct-io=on -f --show "$MNT/nbd")
	# Sizes in every reuse class (4 KiB to 128 KiB), beyond it (1 MiB),
	# small writes (copied) and big ones (libfuse's buffer kept); reads
	# and writes mixed so that a block goes from one kind to the other.
	run timeout 120 fio --name=mix --filename="$dev" --ioengine=libaio \
		--direct=1 --rw=randrw \
		--bssplit=512/5:4k/40:8k/10:24k/10:64k/10:128k/10:200k/5:1m/10 \
		--iodepth=32 --size=64M --io_size=96M --verify=crc32c \
		--do_verify=1 --verify_fatal=1 --verify_state_save=0
	assert_success
	refute_output --partial "verify: bad"
	assert_output --partial "err= 0"
	cmp "$dev" "$IMG_DIR/d1.img"
	# Plain reads of random data at odd sizes, unaligned to the pages.
	for bs in 512 3584 4096 69632 1048576; do
		cmp <(dd if="$dev" bs="$bs" skip=3 count=7 iflag=direct \
			status=none) <(dd if="$IMG_DIR/d1.img" bs="$bs" skip=3 \
			count=7 status=none)
	done
	losetup -d "$dev"
}

@test "fuse: kill -9 of the worker under an fio verify write load on loop: a new worker on the same socket, and fio sees no error" {
	start_disk 128M
	fuse_start
	[ "$READY" = ok ]
	dev=$(losetup --direct-io=on -f --show "$MNT/nbd")
	# rate keeps the write phase ~8 s long, so the kill lands in it.
	# Small writes are copied, big ones keep libfuse's buffer: both.
	fio --name=verify --filename="$dev" --ioengine=libaio --direct=1 \
		--rw=randwrite --bssplit=4k/70:64k/20:1m/10 --iodepth=32 \
		--size=128M --rate=16m --verify=crc32c --do_verify=1 \
		--verify_fatal=1 --verify_state_save=0 \
		--output="$BATS_TEST_TMPDIR/fio.out" &
	fio_pid=$!
	sleep 1
	kill_worker
	sleep 1
	worker_start d1 "aio:$IMG_DIR/d1.img"
	# fio's own runtime bound: 128 MiB at 16 MiB/s, plus the verify.
	for _ in $(seq 600); do
		gone "$fio_pid" && break
		sleep 0.1
	done
	gone "$fio_pid" || fail "fio still running after 60 s"
	st=0
	wait "$fio_pid" || st=$?
	cat "$BATS_TEST_TMPDIR/fio.out"
	[ "$st" -eq 0 ]
	run grep -c 'err= 0' "$BATS_TEST_TMPDIR/fio.out"
	assert_output 1
	run grep -E 'verify: bad|Input/output error' "$BATS_TEST_TMPDIR/fio.out"
	assert_failure
	run cat "$FLOG"
	assert_output --partial "lost the connection to $NBD_SOCK"
	assert_output --partial "reconnected to $NBD_SOCK after"
	refute_output --partial "failed with EIO"
	losetup -d "$dev"
	# After remove: nothing left (the mount goes with SIGTERM).
	kill -TERM "$FUSE_PID"
	wait_gone "$FUSE_PID"
	run mounted
	assert_failure
}

@test "fuse: a worker that never comes back: I/O fails with EIO after the reconnect timeout, and works again once it is back" {
	start_disk
	fuse_start --reconnect-timeout 2
	[ "$READY" = ok ]
	kill_worker
	run timeout 30 dd if="$MNT/nbd" of=/dev/null bs=4096 count=1
	assert_failure 1
	assert_output --partial "Input/output error"
	run cat "$FLOG"
	assert_output --partial "failed with EIO: no connection to $NBD_SOCK"
	# A new outage bound for a new request; the worker comes back within it.
	worker_start d1 "aio:$IMG_DIR/d1.img"
	run timeout 30 cmp "$MNT/nbd" "$IMG_DIR/d1.img"
	assert_success
	mounted
}

@test "fuse: with --reconnect-timeout 0 a lost worker fails I/O at once" {
	start_disk
	fuse_start --reconnect-timeout 0
	[ "$READY" = ok ]
	kill_worker
	run timeout 30 dd if="$MNT/nbd" of=/dev/null bs=4096 count=1
	assert_failure 1
	assert_output --partial "Input/output error"
}

@test "fuse: another export size after the reconnect fails I/O for good" {
	start_disk
	fuse_start
	[ "$READY" = ok ]
	kill_worker
	truncate -s 32M "$IMG_DIR/d1.img"
	worker_start d1 "aio:$IMG_DIR/d1.img"
	run timeout 30 dd if="$MNT/nbd" of=/dev/null bs=4096 count=1
	assert_failure 1
	assert_output --partial "Input/output error"
	run timeout 30 dd if="$MNT/nbd" of=/dev/null bs=4096 count=1 skip=1
	assert_failure 1
	run cat "$FLOG"
	assert_output --partial "now serves another export (size 33554432, was 67108864"
}

@test "fuse: the supervisor's gave-up state fails held I/O at once" {
	start_disk
	fuse_start --reconnect-timeout 600
	[ "$READY" = ok ]
	kill_worker
	printf 'restarts=5\nstate=gave-up\n' \
		>"$WORKER_RUNDIR/d1/supervisor.state"
	run timeout 30 dd if="$MNT/nbd" of=/dev/null bs=4096 count=1
	assert_failure 1
	assert_output --partial "Input/output error"
	run cat "$FLOG"
	assert_output --partial "gave up"
}

@test "fuse: SIGUSR1 (a detach is coming) bounds a dead worker's held I/O at 5 s, not the reconnect timeout" {
	start_disk
	fuse_start --reconnect-timeout 600
	[ "$READY" = ok ]
	dev=$(losetup --direct-io=on -f --show "$MNT/nbd")
	kill_worker
	kill -USR1 "$FUSE_PID"
	run timeout 60 dd if="$dev" of=/dev/null bs=4096 count=1 iflag=direct
	assert_failure 1
	assert_output --partial "Input/output error"
	losetup -d "$dev"
	run cat "$FLOG"
	assert_output --partial "hurried"
}

@test "fuse: SIGUSR1 with a hung worker (SIGSTOP): the connection is dropped and I/O fails, nothing hangs" {
	start_disk
	fuse_start
	[ "$READY" = ok ]
	kill -STOP "$WORKER_PID"
	timeout 60 dd if="$MNT/nbd" of=/dev/null bs=4096 count=1 \
		iflag=direct 2>"$BATS_TEST_TMPDIR/dd.err" &
	dd_pid=$!
	sleep 0.5
	kill -USR1 "$FUSE_PID"
	st=0
	wait "$dd_pid" || st=$?
	kill -CONT "$WORKER_PID"
	[ "$st" -eq 1 ]
	run cat "$BATS_TEST_TMPDIR/dd.err"
	assert_output --partial "Input/output error"
	run cat "$FLOG"
	assert_output --partial "has not answered for"
	# The worker is back: the file works again (a new open ends the hurry).
	run timeout 30 cmp "$MNT/nbd" "$IMG_DIR/d1.img"
	assert_success
}

@test "fuse: the hotplug helper's detach of a loop device whose worker is dead is bounded, and frees everything" {
	start_disk
	state=$BATS_TEST_TMPDIR/state
	mkdir -m 0700 "$state"
	BLKSTACK_DEVICE=loop run -0 "$TOP/build/tests/hp-dev-tool" attach \
		"$NBD_SOCK" "$state"
	rec=$output
	dev=$(field "$rec" path)
	fpid=$(field "$rec" fuse_pid)
	kill_worker
	# The flush fails (the worker is gone), after at most 5 s.
	run timeout 60 "$TOP/build/tests/hp-dev-tool" detach "$state" "$rec"
	[ "$status" -ne 124 ]
	assert_not_exists "/sys/block/${dev#/dev/}/loop"
	wait_gone "$fpid"
	run ls -A "$state"
	assert_output ""
}

# odd_server MODE: tests/fuse/odd-nbd-server.py on $NBD_SOCK, then
# blkstack-fuse on it; a read gets the first connection's broken reply,
# and must come back from the second connection with the data.
odd_server() {
	NBD_SOCK=$BATS_TEST_TMPDIR/odd.sock
	python3 "$TOP/tests/fuse/odd-nbd-server.py" "$NBD_SOCK" "$1" \
		>"$BATS_TEST_TMPDIR/odd.log" 2>&1 &
	for _ in $(seq 100); do
		[ -S "$NBD_SOCK" ] && break
		sleep 0.1
	done
	fuse_start
	[ "$READY" = ok ]
	run stat -c %s "$MNT/nbd"
	assert_output 1048576
	run timeout 30 dd if="$MNT/nbd" of="$BATS_TEST_TMPDIR/got" bs=4096 \
		count=1 iflag=direct
	assert_success
	head -c 4096 /dev/zero | tr '\0' Z >"$BATS_TEST_TMPDIR/want"
	cmp "$BATS_TEST_TMPDIR/got" "$BATS_TEST_TMPDIR/want"
	run cat "$BATS_TEST_TMPDIR/odd.log"
	assert_output --partial "conn 2"
	run cat "$FLOG"
	assert_output --partial "lost the connection to $NBD_SOCK ($2"
	assert_output --partial "reconnected to $NBD_SOCK"
}

@test "fuse: a reply with a cookie never sent drops the connection; the request is re-sent on the next one" {
	odd_server bad-cookie "reply to no request of ours"
}

@test "fuse: a reply with a bad magic drops the connection; the request is re-sent on the next one" {
	odd_server bad-magic "reply with a bad magic"
}

@test "fuse: random bytes for a reply drop the connection; the request is re-sent on the next one" {
	odd_server garbage "reply"
}

@test "fuse: SIGTERM unmounts and exits 0" {
	start_disk
	fuse_start
	[ "$READY" = ok ]
	mounted
	kill -TERM "$FUSE_PID"
	wait_gone "$FUSE_PID"
	wait "$FUSE_PID"
	run mounted
	assert_failure
	run ls -A "$MNT"
	assert_output ""
}

@test "fuse: start-up failures are reported on the ready fd" {
	NBD_SOCK=$BATS_TEST_TMPDIR/no.sock
	fuse_start
	[ "$READY" = "error: NBD connection to $NBD_SOCK: connect: No such file or directory" ]
	st=0
	wait "$FUSE_PID" || st=$?
	[ "$st" -eq 1 ]
	run mounted
	assert_failure
	# The configuration's reconnect-timeout is checked.
	start_disk
	echo "reconnect-timeout = soon" >"$BLKSTACK_CONF"
	fuse_start
	[ "$READY" = "error: $BLKSTACK_CONF:1: reconnect-timeout: not a number of seconds from 0 to 86400" ]
	echo "reconnect-timeout = 7" >"$BLKSTACK_CONF"
	fuse_start
	[ "$READY" = ok ]
	run cat "$FLOG"
	assert_output --partial "reconnect timeout 7 s"
	# Usage errors.
	run "$BIN/blkstack-fuse" --socket relative --mount "$MNT"
	assert_failure 2
	run "$BIN/blkstack-fuse" --socket "$NBD_SOCK" --mount "$MNT" \
		--reconnect-timeout 1e3
	assert_failure 2
}
