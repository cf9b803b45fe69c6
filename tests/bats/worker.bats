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
	# The message, then its errno by name (docs/control-protocol.txt).
	assert_output "$(printf 'error: layer 2 (aio): open %s/missing.img: No such file or directory\nerrno: ENOENT' "$IMG_DIR")"
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
	assert_output "$(printf 'error: chain: layer 2 at offset 5: empty layer\nerrno: EINVAL')"
}

@test "worker: usage errors exit 2" {
	run "$BIN/blkstack-worker" --name "../x" --chain ram:1M
	assert_failure 2
	assert_output --partial "bad --name"
	run "$BIN/blkstack-worker" --name x
	assert_failure 2
	run "$BIN/blkstack-worker" --name x --chain ram:1M --ready-fd nope
	assert_failure 2
	for t in 1,2 1,2,3,4 1,,3 1,2,x 1,2,99999999999 -1,2,3; do
		run "$BIN/blkstack-worker" --name x --chain ram:1M --timeouts "$t"
		assert_failure 2
		assert_output --partial "bad --timeouts '$t'"
	done
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

# ---- control connection limits (issue 11, defect 8) ---------------------

# hold_ctl N [LINE]: N control connections from one background process,
# each having sent LINE if given; waits (at most 20 s) until it holds
# them.  Sets HOLD_PID (stopped by worker_teardown, a job).
hold_ctl() {
	local out=$BATS_TEST_TMPDIR/hold-ctl.$RANDOM _
	python3 -c '
import socket, sys, time
socks = []
for _ in range(int(sys.argv[2])):
    s = socket.socket(socket.AF_UNIX)
    s.connect(sys.argv[1])
    if sys.argv[3]:
        s.sendall(sys.argv[3].encode() + b"\n")
    socks.append(s)
print("holding", flush=True)
time.sleep(120)
' "$WORKER_RUNDIR/$1/ctl.sock" "$2" "${3:-}" >"$out" 2>&1 &
	HOLD_PID=$!
	for _ in $(seq 200); do
		grep -q '^holding' "$out" && return 0
		kill -0 "$HOLD_PID" 2>/dev/null || break
		sleep 0.1
	done
	fail "the control connections were not opened: $(cat "$out")"
}

ctl() {
	timeout 20 "$BIN/blkstack-ctl" --rundir "$WORKER_RUNDIR" "$@"
}

@test "worker: 70 idle control connections: info, pause and destroy still work at once" {
	worker_start vm1 "ram:16M"
	hold_ctl vm1 70
	# The old code refused the 65th: "too many control connections".
	run -0 ctl info --name vm1
	run -0 ctl pause --name vm1
	run -0 ctl unpause --name vm1
	run -0 ctl stats --name vm1 --json
	run -0 python3 -c 'import json, sys
c = json.loads(sys.argv[1])["limits"]["control"]
assert c["evicted"] >= 6 and c["connections"] <= 64, c' "$output"
	# Promptly: the default idle timeout (30 s) is not what lets it in.
	run -0 ctl destroy --name vm1
	wait "$WORKER_PID" || fail "the worker exited $?"
	assert_file_not_exists "$WORKER_RUNDIR/vm1/pid"
}

@test "worker: idle control connections time out; ones that never read their replies too" {
	worker_start vm1 "ram:16M" --timeouts 0,0,500
	# Ten idle, and ten that ask for stats 200 times and read nothing.
	hold_ctl vm1 10
	idle_pid=$HOLD_PID
	hold_ctl vm1 10 "$(printf 'stats\n%.0s' $(seq 199))stats"
	for _ in $(seq 100); do
		n=$(ctl stats --name vm1 --json | python3 -c 'import json, sys
print(json.load(sys.stdin)["limits"]["control"]["timed_out"])')
		[ "$n" -ge 20 ] && break
		sleep 0.2
	done
	[ "$n" -ge 20 ] || fail "only $n control connections timed out"
	run -0 ctl info --name vm1
	kill "$idle_pid" "$HOLD_PID"
}
