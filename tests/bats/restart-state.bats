#!/usr/bin/env bats
# State that survives a restart of a worker (docs/control-protocol.txt,
# "State kept across a restart"): a paused worker killed with SIGKILL
# comes back paused, a log:'s dirty bits survive kill -9, a state file of
# another chain is refused clearly, and a graceful stop removes it all.
# Real workers, started by hand with blkstack-ctl create in a private
# run directory (no supervisor), killed with SIGKILL, started again.

load helpers

setup() {
	CTL=$BIN/blkstack-ctl
	RUNDIR=$BATS_TEST_TMPDIR/run
	export BLKSTACK_RUNDIR=$RUNDIR
	# Restarts by hand: no supervisor (crash.bats has the supervised ones).
	sup_conf supervise=no
	# aio: opens images with O_DIRECT, which tmpfs refuses.
	IMGDIR=$BATS_TEST_TMPDIR
	if [ "$(stat -f -c %T "$BATS_TEST_TMPDIR")" = tmpfs ]; then
		IMGDIR=$(mktemp -d /var/tmp/blkstack-rs.XXXXXX)
	fi
	WRITER=
	STOPPED=
	MNT=
}

teardown() {
	local d pid
	if [ -n "$STOPPED" ]; then
		kill -CONT "$STOPPED" 2>/dev/null || true
	fi
	if [ -n "$WRITER" ]; then
		kill "$WRITER" 2>/dev/null || true
	fi
	if [ -n "$MNT" ]; then
		timeout 40 "$CTL" destroy --name top >/dev/null 2>&1 || true
		fusermount3 -u "$MNT" 2>/dev/null || true
	fi
	for d in "$RUNDIR"/*/; do
		[ -d "$d" ] || continue
		pid=$(cat "$d/pid" 2>/dev/null) || pid=
		timeout 40 "$CTL" destroy --name "$(basename "$d")" \
			>/dev/null 2>&1 || true
		if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
			kill -9 "$pid" 2>/dev/null || true
		fi
	done
	if [ "$IMGDIR" != "$BATS_TEST_TMPDIR" ]; then
		rm -rf -- "$IMGDIR"
	fi
}

# create NAME CHAIN: start a worker, or fail the test.
create() {
	run "$CTL" create --name "$1" --chain "$2"
	assert_success
	assert_output "$RUNDIR/$1/nbd.sock"
}

# jq_py JSON EXPR: print the Python expression EXPR of the parsed JSON `d`.
jq_py() {
	python3 -c 'import json, sys
d = json.loads(sys.argv[1])
v = eval(sys.argv[2])
print(json.dumps(v) if isinstance(v, (dict, list, tuple, bool)) or v is None else v)' "$1" "$2"
}

# stat_of NAME EXPR / info_of NAME EXPR: EXPR of the stats / info reply.
stat_of() {
	local json
	json=$("$CTL" stats --name "$1" --json) || return 1
	jq_py "$json" "$2"
}

info_of() {
	local json
	json=$("$CTL" info --name "$1" --json) || return 1
	jq_py "$json" "$2"
}

# kill9 NAME: SIGKILL worker NAME and wait until it is gone (10 s).
kill9() {
	local pid
	pid=$(cat "$RUNDIR/$1/pid")
	kill -9 "$pid"
	for _ in $(seq 200); do
		gone "$pid" && return 0
		sleep 0.05
	done
	echo "worker $1 (pid $pid) did not die" >&2
	return 1
}

# until_state NAME STATE: wait (10 s) for the worker's state.
until_state() {
	for _ in $(seq 200); do
		[ "$(stat_of "$1" 'd["worker"]["state"]')" = "$2" ] && return 0
		sleep 0.05
	done
	stat_of "$1" 'd["worker"]' >&2
	return 1
}

nbd() {
	echo "nbd+unix:///?socket=$RUNDIR/$1/nbd.sock"
}

@test "restart-state: a paused worker killed with SIGKILL comes back paused; unpause lets held requests through" {
	create vm1 'log:block=4K|ram:16M'
	run info_of vm1 'd["started_paused"]'
	assert_output false
	run "$CTL" pause --name vm1
	assert_success
	assert_file_exists "$RUNDIR/vm1/paused"
	kill9 vm1

	create vm1 'log:block=4K|ram:16M'
	until_state vm1 paused
	run info_of vm1 '(d["state"], d["started_paused"], d["in_flight"])'
	assert_output '["paused", true, 0]'
	run stat_of vm1 'd["worker"]["started_paused"]'
	assert_output true
	# A write is held, not refused, and not passed down.
	timeout 60 qemu-io -f raw -c 'write -P 7 0 4k' "$(nbd vm1)" &
	WRITER=$!
	for _ in $(seq 200); do
		[ "$(stat_of vm1 'd["nbd"]["holding"]')" -ge 1 ] && break
		sleep 0.05
	done
	run stat_of vm1 '(d["nbd"]["holding"], d["layers"][0]["ops"]["write"]["ops"])'
	assert_output '[1, 0]'
	assert kill -0 "$WRITER"
	# Pausing again answers at once; unpause works as usual.
	run "$CTL" pause --name vm1
	assert_success
	run "$CTL" unpause --name vm1
	assert_success
	assert wait "$WRITER"
	WRITER=
	assert_file_not_exists "$RUNDIR/vm1/paused"
	run stat_of vm1 '(d["worker"]["state"], d["nbd"]["holding"], d["layers"][0]["ops"]["write"]["ops"])'
	assert_output '["running", 0, 1]'

	# Unpaused, then killed: the next one runs.
	kill9 vm1
	create vm1 'log:block=4K|ram:16M'
	run info_of vm1 '(d["state"], d["started_paused"])'
	assert_output '["running", false]'
}

@test "restart-state: log: dirty bits survive kill -9, and so does dirty --clear" {
	truncate -s 16M "$IMGDIR/disk.img"
	chain="log:block=4K|aio:$IMGDIR/disk.img"
	create vm1 "$chain"
	run timeout 60 qemu-io -f raw -c 'write 0 8k' -c 'write 1M 4k' \
		-c 'write 12M 64k' "$(nbd vm1)"
	assert_success
	run "$CTL" dirty --name vm1
	assert_success
	assert_output "$(printf '0 8192\n1048576 4096\n12582912 65536')"
	run stat_of vm1 'd["layers"][0]["log"]'
	assert_output '{"dirty_bytes": 77824, "block_size": 4096, "persisted": 1}'
	assert_file_exists "$RUNDIR/vm1/layer0.state"
	kill9 vm1

	create vm1 "$chain"
	run "$CTL" dirty --name vm1
	assert_success
	assert_output "$(printf '0 8192\n1048576 4096\n12582912 65536')"
	run stat_of vm1 'd["layers"][0]["log"]["dirty_bytes"]'
	assert_output 77824
	# Writes after the restart add to the same log.
	run timeout 60 qemu-io -f raw -c 'write 2M 4k' "$(nbd vm1)"
	assert_success
	run "$CTL" dirty --name vm1 --clear
	assert_success
	kill9 vm1

	create vm1 "$chain"
	run "$CTL" dirty --name vm1
	assert_success
	assert_output ""
	# The data written before the kills is there (aio:, acknowledged).
	run timeout 60 qemu-io -f raw -c 'read -P 0xcd 0 8k' \
		-c 'read -P 0xcd 12M 64k' "$(nbd vm1)"
	assert_success
}

@test "restart-state: a dirty log of another chain is refused, never merged; destroy removes it" {
	create vm1 'log:block=4K|ram:16M'
	run timeout 60 qemu-io -f raw -c 'write 64k 4k' "$(nbd vm1)"
	assert_success
	kill9 vm1
	sum=$(cksum <"$RUNDIR/vm1/layer0.state")

	# Another size, another block size: the worker does not start.
	run timeout 60 "$BIN/blkstack-worker" --name vm1 --rundir "$RUNDIR" \
		--chain 'log:block=4K|ram:32M' --foreground
	assert_failure 1
	assert_output --partial "layer 1 (log): state file $RUNDIR/vm1/layer0.state is the dirty log of another chain (layer 0, 16777216 bytes in blocks of 4096; this is layer 0, 33554432 bytes in blocks of 4096): not merged"
	run timeout 60 "$BIN/blkstack-worker" --name vm1 --rundir "$RUNDIR" \
		--chain 'log:block=64K|ram:16M' --foreground
	assert_failure 1
	assert_output --partial "is the dirty log of another chain"
	# Left as it was: the right chain still finds its bits.
	assert_equal "$(cksum <"$RUNDIR/vm1/layer0.state")" "$sum"
	create vm1 'log:block=4K|ram:16M'
	run "$CTL" dirty --name vm1
	assert_output "65536 4096"
	kill9 vm1

	# blkstack-ctl create says why, then removes the dead worker's
	# leftovers as after any failed start: the next one starts clean.
	run "$CTL" create --name vm1 --chain 'log:block=4K|ram:32M'
	assert_failure 1
	assert_output --partial "is the dirty log of another chain"
	assert_not_exists "$RUNDIR/vm1"
	create vm1 'log:block=4K|ram:32M'
	run "$CTL" dirty --name vm1
	assert_success
	assert_output ""
	kill9 vm1

	# destroy of a dead worker removes its state too.
	assert_file_exists "$RUNDIR/vm1/layer0.state"
	run "$CTL" destroy --name vm1
	assert_success
	assert_not_exists "$RUNDIR/vm1"
}

@test "restart-state: a graceful stop removes the pause and the dirty log" {
	create vm1 'log:block=4K|ram:16M'
	run timeout 60 qemu-io -f raw -c 'write 0 4k' "$(nbd vm1)"
	assert_success
	run "$CTL" pause --name vm1
	assert_success
	assert_file_exists "$RUNDIR/vm1/paused"
	assert_file_exists "$RUNDIR/vm1/layer0.state"
	run "$CTL" destroy --name vm1
	assert_success
	assert_not_exists "$RUNDIR/vm1"
	create vm1 'log:block=4K|ram:16M'
	run info_of vm1 '(d["state"], d["started_paused"])'
	assert_output '["running", false]'
	run "$CTL" dirty --name vm1
	assert_output ""
	run stat_of vm1 '(d["chain"]["in_flight"], d["chain"]["oldest_request_ms"])'
	assert_output '[0, 0]'
}

@test "restart-state: acked-writes --reconnect rides out a kill -9 and a restart by hand, re-sending what was not acknowledged" {
	truncate -s 64M "$IMGDIR/disk.img"
	chain="log:|aio:$IMGDIR/disk.img"
	create vm1 "$chain"
	log=$BATS_TEST_TMPDIR/acked
	out=$BATS_TEST_TMPDIR/writer.out
	python3 "$TOP/tests/worker/acked-writes.py" --reconnect 30 --depth 8 \
		"$RUNDIR/vm1/nbd.sock" 8192 "$log" >"$out" 2>&1 &
	WRITER=$!
	for _ in $(seq 1000); do
		[ "$(lines "$log")" -ge 300 ] && break
		sleep 0.01
	done
	kill9 vm1
	# The writer waits for a worker: it has not finished, nor failed.
	sleep 0.3
	assert kill -0 "$WRITER"
	create vm1 "$chain"
	rc=0
	wait "$WRITER" || rc=$?
	WRITER=
	cat "$out" >&2
	assert_equal "$rc" 0
	run cat "$out"
	assert_output --regexp '^acked=8192 reconnects=[1-9][0-9]* longest_outage_ms=[0-9]+$'
	# Every block once in the log, and on disk with its byte.
	run sh -c "cut -d' ' -f1 '$log' | sort -u | wc -l"
	assert_output 8192
	check_acked "$IMGDIR/disk.img" "$log"
	# The dirty log saw the writes of both workers: all 32 MiB of them.
	run stat_of vm1 'd["layers"][0]["log"]["dirty_bytes"]'
	assert_output 33554432
}

@test "restart-state: acked-writes --reconnect gives up after SECONDS without a worker" {
	create vm1 'ram:16M'
	log=$BATS_TEST_TMPDIR/acked
	python3 "$TOP/tests/worker/acked-writes.py" --reconnect 1 \
		"$RUNDIR/vm1/nbd.sock" 1000000 "$log" \
		>"$BATS_TEST_TMPDIR/out" 2>&1 &
	WRITER=$!
	for _ in $(seq 1000); do
		[ "$(lines "$log")" -ge 10 ] && break
		sleep 0.01
	done
	kill9 vm1
	rc=0
	wait "$WRITER" || rc=$?
	WRITER=
	assert_equal "$rc" 1
	run cat "$BATS_TEST_TMPDIR/out"
	assert_output --partial "acked-writes: no connection to $RUNDIR/vm1/nbd.sock within 1 s of the failure"
}

@test "restart-state: stats and info report the age of a request stuck below (oldest_request_ms)" {
	command -v nbdfuse >/dev/null || skip "nbdfuse is not installed"
	[ -c /dev/fuse ] || skip "no /dev/fuse"
	# top's sink is a file that nbdfuse serves from worker below: stopping
	# below leaves top's request in flight, stuck.
	create below 'ram:16M'
	MNT=$BATS_TEST_TMPDIR/mnt
	mkdir "$MNT"
	nbdfuse "$MNT" --unix "$RUNDIR/below/nbd.sock" &
	for _ in $(seq 200); do
		[ -e "$MNT/nbd" ] && break
		sleep 0.05
	done
	create top "aio:$MNT/nbd"
	run stat_of top '(d["chain"]["in_flight"], d["chain"]["oldest_request_ms"])'
	assert_output '[0, 0]'
	STOPPED=$(cat "$RUNDIR/below/pid")
	kill -STOP "$STOPPED"
	timeout 60 qemu-io -f raw -c 'write -P 9 0 4k' "$(nbd top)" &
	WRITER=$!
	# Its age grows while it is stuck: wait until it passes 1 s.
	for _ in $(seq 200); do
		[ "$(stat_of top 'd["chain"]["oldest_request_ms"]')" -ge 1000 ] && break
		sleep 0.05
	done
	run stat_of top '(d["chain"]["in_flight"], d["chain"]["oldest_request_ms"] >= 1000)'
	assert_output '[1, true]'
	run info_of top '(d["in_flight"], d["oldest_request_ms"] >= 1000)'
	assert_output '[1, true]'
	kill -CONT "$STOPPED"
	STOPPED=
	assert wait "$WRITER"
	WRITER=
	run stat_of top '(d["chain"]["in_flight"], d["chain"]["oldest_request_ms"])'
	assert_output '[0, 0]'
}

@test "restart-state: a pause that cannot be recorded fails, and the worker runs on" {
	create vm1 'ram:16M'
	# A directory where the record goes: creating the file fails.
	mkdir "$RUNDIR/vm1/paused"
	run "$CTL" pause --name vm1
	assert_failure 1
	assert_output --partial "pause: Is a directory"
	run stat_of vm1 '(d["worker"]["state"], d["worker"]["pauses"], d["nbd"]["holding"])'
	assert_output '["running", 0, 0]'
	run timeout 60 qemu-io -f raw -c 'write 0 4k' "$(nbd vm1)"
	assert_success
	rmdir "$RUNDIR/vm1/paused"
	run "$CTL" pause --name vm1
	assert_success
	assert_file_exists "$RUNDIR/vm1/paused"
	run "$CTL" unpause --name vm1
	assert_success
	assert_file_not_exists "$RUNDIR/vm1/paused"
}
