#!/usr/bin/env bats
# blkstack-worker: start-up, readiness, the run directory, shutdown.

load helpers

setup() {
	img_dir
	WORKER_RUNDIR=$BATS_TEST_TMPDIR/run
}

teardown() {
	worker_teardown
}

@test "worker: serves, with 0600 sockets and its pid in the run directory" {
	worker_start vm1 "ram:16M"
	assert_file_exists "$WORKER_RUNDIR/vm1/pid"
	run cat "$WORKER_RUNDIR/vm1/pid"
	assert_output "$WORKER_PID"
	for s in nbd.sock ctl.sock; do
		run stat -c %a "$WORKER_RUNDIR/vm1/$s"
		assert_output 600
	done
	run nbdinfo --size "$(nbd_uri)"
	assert_success
	assert_output 16777216
}

@test "worker: a missing image fails the start with the driver's message" {
	ready=$BATS_TEST_TMPDIR/ready
	run "$BIN/blkstack-worker" --rundir "$WORKER_RUNDIR" --name bad \
		--chain "log:|aio:$IMG_DIR/missing.img" --foreground --ready-fd 3 3>"$ready"
	assert_failure 1
	run cat "$ready"
	assert_output "error: layer 2 (aio): open $IMG_DIR/missing.img: No such file or directory"
	# Nothing left to mislead a later start or a listing.
	assert_file_not_exists "$WORKER_RUNDIR/bad/pid"
	assert_file_not_exists "$WORKER_RUNDIR/bad/nbd.sock"
	assert_file_not_exists "$WORKER_RUNDIR/bad/ctl.sock"
}

@test "worker: a bad chain is refused with its position" {
	ready=$BATS_TEST_TMPDIR/ready
	run "$BIN/blkstack-worker" --rundir "$WORKER_RUNDIR" --name bad \
		--chain "log:||ram:1M" --foreground --ready-fd 3 3>"$ready"
	assert_failure 1
	run cat "$ready"
	assert_output "error: chain: layer 2 at offset 5: empty layer"
}

@test "worker: usage errors exit 2" {
	run "$BIN/blkstack-worker" --name "../x" --chain ram:1M
	assert_failure 2
	assert_output --partial "bad --name"
	run "$BIN/blkstack-worker" --name x
	assert_failure 2
	run "$BIN/blkstack-worker" --name x --chain ram:1M --ready-fd nope
	assert_failure 2
}

@test "worker: a second worker of the same name is refused" {
	worker_start vm1 "ram:1M"
	run worker_start vm1 "ram:1M"
	assert_failure
	assert_output --partial "worker vm1 is already running (pid $WORKER_PID)"
	# The first one is unharmed.
	run nbdinfo --size "$(nbd_uri)"
	assert_output 1048576
}

@test "worker: BLKSTACK_RUNDIR sets the run directory" {
	export BLKSTACK_RUNDIR=$BATS_TEST_TMPDIR/envrun
	WORKER_RUNDIR=
	worker_start e "ram:1M"
	assert_socket_exists "$BLKSTACK_RUNDIR/e/nbd.sock"
	assert_socket_exists "$BLKSTACK_RUNDIR/e/ctl.sock"
}

@test "worker: SIGTERM exits 0 and removes the sockets and the pid file" {
	worker_start vm1 "ram:1M"
	# Not under run: wait needs the worker to be this shell's child.
	worker_stop
	assert_file_not_exists "$WORKER_RUNDIR/vm1/pid"
	assert_file_not_exists "$WORKER_RUNDIR/vm1/nbd.sock"
	assert_file_not_exists "$WORKER_RUNDIR/vm1/ctl.sock"
}

@test "worker: SIGTERM during writes keeps every acknowledged write" {
	img=$IMG_DIR/disk.img
	truncate -s 16M "$img"
	worker_start vm1 "log:|aio:$img"
	log=$BATS_TEST_TMPDIR/acked
	python3 "$TOP/tests/worker/acked-writes.py" "$NBD_SOCK" 4096 "$log" &
	writer=$!
	# Let some writes through, then stop the worker under load.
	for _ in $(seq 1000); do
		[ "$(wc -l <"$log" 2>/dev/null || echo 0)" -ge 200 ] && break
		sleep 0.01
	done
	worker_stop
	wait "$writer"
	acked=$(wc -l <"$log")
	[ "$acked" -ge 200 ] || fail "only $acked writes acknowledged"
	# Every acknowledged block holds its byte, read straight from the file.
	python3 - "$img" "$log" <<'PY'
import sys
img, log = sys.argv[1], sys.argv[2]
with open(img, "rb") as f, open(log) as acked:
    for line in acked:
        off, byte = map(int, line.split())
        f.seek(off)
        if f.read(4096) != bytes([byte]) * 4096:
            sys.exit("acknowledged write at %d is not on disk" % off)
PY
}

@test "worker: valgrind is clean on a short run with I/O" {
	command -v valgrind >/dev/null || skip "valgrind is not installed"
	img=$IMG_DIR/vg.img
	truncate -s 8M "$img"
	ready=$BATS_TEST_TMPDIR/vg.ready
	mkfifo "$ready"
	valgrind -q --error-exitcode=99 --leak-check=full \
		--errors-for-leak-kinds=definite,indirect \
		"$BIN/blkstack-worker" --rundir "$WORKER_RUNDIR" --name vg \
		--chain "log:|aio:$img" --foreground --ready-fd 3 \
		3>"$ready" </dev/null >"$BATS_TEST_TMPDIR/vg.log" 2>&1 &
	pid=$!
	read -r line <"$ready"
	assert_equal "$line" ok
	sock=$WORKER_RUNDIR/vg/nbd.sock
	run qemu-io -f raw -c "write -P 0x5a 0 1M" -c "read -P 0x5a 0 1M" \
		-c "write -z 1M 64k" -c flush "$(nbd_uri "$sock")"
	assert_success
	run nbdinfo --json "$(nbd_uri "$sock")"
	assert_success
	worker_stop "$pid" || {
		cat "$BATS_TEST_TMPDIR/vg.log"
		fail "worker exited $? under valgrind"
	}
}
