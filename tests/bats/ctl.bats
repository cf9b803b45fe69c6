#!/usr/bin/env bats
# blkstack-ctl and the worker's control socket (docs/control-protocol.txt),
# end to end with the real worker: every test has its own run directory,
# and teardown stops whatever it started.

load helpers

setup() {
	CTL=$BIN/blkstack-ctl
	RUNDIR=$BATS_TEST_TMPDIR/run
	export BLKSTACK_RUNDIR=$RUNDIR
	# aio: opens images with O_DIRECT, which tmpfs refuses.
	IMGDIR=$BATS_TEST_TMPDIR
	if [ "$(stat -f -c %T "$BATS_TEST_TMPDIR")" = tmpfs ]; then
		IMGDIR=$(mktemp -d /var/tmp/blkstack-ctl.XXXXXX)
	fi
	EXTRA_RUNDIR=
}

# Stop every worker of run directory $1: destroy, else SIGKILL.
stop_all() {
	local dir=$1 d pid
	for d in "$dir"/*/; do
		[ -d "$d" ] || continue
		pid=$(cat "$d/pid" 2>/dev/null) || pid=
		timeout 40 "$CTL" --rundir "$dir" destroy --name "$(basename "$d")" \
			>/dev/null 2>&1 || true
		if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
			kill -9 "$pid" 2>/dev/null || true
		fi
	done
}

teardown() {
	stop_all "$RUNDIR"
	if [ -n "$EXTRA_RUNDIR" ]; then
		stop_all "$EXTRA_RUNDIR"
		rm -rf -- "$EXTRA_RUNDIR"
	fi
	if [ "$IMGDIR" != "$BATS_TEST_TMPDIR" ]; then
		rm -rf -- "$IMGDIR"
	fi
}

# create NAME CHAIN [OPTION...]: start a worker, or fail the test.
create() {
	local name=$1 chain=$2
	shift 2
	run "$CTL" create --name "$name" --chain "$chain" "$@"
	assert_success
	assert_output "$RUNDIR/$name/nbd.sock"
}

# errno_num NAME: the number of errno NAME here.
errno_num() {
	python3 -c 'import errno, sys; print(getattr(errno, sys.argv[1]))' "$1"
}

# nbd NAME: the NBD URI of worker NAME.
nbd() {
	echo "nbd+unix:///?socket=$RUNDIR/$1/nbd.sock"
}

# qio NAME COMMAND...: qemu-io commands against worker NAME's disk.
qio() {
	local name=$1 args=() c
	shift
	for c in "$@"; do
		args+=(-c "$c")
	done
	timeout 60 qemu-io -f raw "${args[@]}" "$(nbd "$name")"
}

# jq_py JSON EXPR: print the Python expression EXPR of the parsed JSON `d`.
jq_py() {
	python3 -c 'import json, sys
d = json.loads(sys.argv[1])
v = eval(sys.argv[2])
print(json.dumps(v) if isinstance(v, (dict, list, tuple, bool)) or v is None else v)' "$1" "$2"
}

# raw NAME LINE...: send lines over worker NAME's ctl.sock as they are,
# print each reply line (then what else arrives before EOF).
raw() {
	local sock=$RUNDIR/$1/ctl.sock
	shift
	python3 - "$sock" "$@" <<'EOF'
import socket, sys
s = socket.socket(socket.AF_UNIX)
s.settimeout(30)
s.connect(sys.argv[1])
f = s.makefile("rwb")
for line in sys.argv[2:]:
    f.write(line.encode() + b"\n")
    f.flush()
    sys.stdout.write(f.readline().decode())
EOF
}

# exited PID: the process is gone, or a zombie its new parent has not
# reaped yet (the workers' starter, blkstack-ctl, exits at once).
exited() {
	[ ! -e "/proc/$1" ] || grep -q '^[0-9]* (.*) [ZX] ' "/proc/$1/stat"
}

# wait_exit PID: wait (at most 30 s) for a process that is not our child.
wait_exit() {
	local _
	for _ in $(seq 300); do
		exited "$1" && return 0
		sleep 0.1
	done
	return 1
}

# stat_of NAME EXPR: EXPR of worker NAME's `stats` reply.
stat_of() {
	local json
	json=$("$CTL" stats --name "$1" --json) || return 1
	jq_py "$json" "$2"
}

@test "ctl: create returns when the worker serves, and list shows it" {
	create vm1 'log:|ram:64M'
	# Ready means serving: no waiting for the sockets.
	assert [ -S "$RUNDIR/vm1/nbd.sock" ]
	assert [ -S "$RUNDIR/vm1/ctl.sock" ]
	assert_file_exists "$RUNDIR/vm1/pid"
	pid=$(cat "$RUNDIR/vm1/pid")
	run "$CTL" list
	assert_success
	assert_output "name=vm1 pid=$pid state=running chain=log:|ram:64M supervisor=running restarts=0"
	run "$CTL" list --json
	assert_success
	run jq_py "$output" '[(e["name"], e["pid"], e["state"], e["chain"], e["size"], e["supervisor"]["state"], e["supervisor"]["restarts"]) for e in d]'
	assert_output "[[\"vm1\", $pid, \"running\", \"log:|ram:64M\", 67108864, \"running\", 0]]"
	# The NBD export answers.
	run nbdinfo --size "$(nbd vm1)"
	assert_success
	assert_output 67108864
}

@test "ctl: create with a missing image fails with the driver's message and leaves nothing behind" {
	run "$CTL" create --name bad --chain "log:|aio:$IMGDIR/missing.img"
	assert_failure 1
	assert_output "blkstack-ctl: worker bad: layer 2 (aio): open $IMGDIR/missing.img: No such file or directory"
	assert [ ! -e "$RUNDIR/bad" ]
	run pgrep -f -- "--rundir $RUNDIR"
	assert_failure
	# A bad chain string: the parser's message.
	run "$CTL" create --name bad --chain 'log:|'
	assert_failure 1
	assert_output --partial "blkstack-ctl: worker bad: "
	assert_output --partial "empty layer"
	assert [ ! -e "$RUNDIR/bad" ]
}

@test "ctl: create twice with the same name fails clearly; the first worker is untouched" {
	create vm1 'ram:16M'
	pid=$(cat "$RUNDIR/vm1/pid")
	run "$CTL" create --name vm1 --chain 'ram:32M'
	assert_failure 1
	assert_output "blkstack-ctl: worker vm1: already running (pid $pid)"
	run "$CTL" info --name vm1 --json
	assert_success
	run jq_py "$output" '(d["pid"], d["size"], d["state"])'
	assert_output "[$pid, 16777216, \"running\"]"
}

@test "ctl: info reports the worker's identity (JSON and text)" {
	truncate -s 32M "$IMGDIR/disk.img"
	create vm1 "log:block=4K|aio:$IMGDIR/disk.img"
	pid=$(cat "$RUNDIR/vm1/pid")
	run "$CTL" info --name vm1 --json
	assert_success
	json=$output
	run jq_py "$json" 'sorted(d)'
	assert_output '["blkif", "block_size", "chain", "connections", "fuse_transport", "in_flight", "io_engine", "job", "last_job", "layers", "name", "nbd_socket", "ok", "oldest_request_ms", "pid", "read_only", "size", "started_paused", "state", "uptime_s"]'
	run jq_py "$json" '(d["ok"], d["name"], d["chain"], d["size"], d["block_size"], d["read_only"], d["state"], d["pid"], d["connections"], d["layers"])'
	assert_output "[true, \"vm1\", \"log:block=4K|aio:$IMGDIR/disk.img\", 33554432, 512, false, \"running\", $pid, 0, [\"log\", \"aio\"]]"
	run jq_py "$json" 'isinstance(d["uptime_s"], int) and d["nbd_socket"]'
	assert_output "$RUNDIR/vm1/nbd.sock"
	run "$CTL" info --name vm1
	assert_success
	assert_line "name:         vm1"
	assert_line "state:        running"
	assert_line "pid:          $pid"
	assert_line "io engine:    io_uring"
	assert_line "layers:       log aio"
}

@test "ctl: --read-only is reported, and writes are refused" {
	create ro 'ram:16M' --read-only
	run "$CTL" info --name ro --json
	assert_success
	run jq_py "$output" 'd["read_only"]'
	assert_output true
	run qio ro 'write 0 4k'
	assert_failure
	run timeout 60 qemu-io -r -f raw -c 'read 0 4k' "$(nbd ro)"
	assert_success
}

@test "ctl: stats has every layer's counters, and they move with I/O" {
	truncate -s 32M "$IMGDIR/disk.img"
	create vm1 "log:|error:ops=discard|aio:$IMGDIR/disk.img"
	run stat_of vm1 '[l["driver"] for l in d["layers"]]'
	assert_output '["log", "error", "aio"]'
	run stat_of vm1 'sorted(d["layers"][0]["ops"])'
	assert_output '["discard", "flush", "read", "write", "write-zeroes"]'
	run stat_of vm1 'sorted(d["nbd"])'
	assert_output '["bytes_read", "bytes_written", "connections", "connections_total", "dropped", "errors", "held", "holding", "in_flight", "refused", "requests"]'
	run stat_of vm1 '(d["layers"][0]["ops"]["write"], d["nbd"]["bytes_written"], d["layers"][0]["log"]["dirty_bytes"])'
	assert_output '[{"ops": 0, "bytes": 0, "errors": 0}, 0, 0]'

	run qio vm1 'write -P 0x5a 0 64k' 'read -P 0x5a 0 64k'
	assert_success

	run stat_of vm1 '(d["layers"][0]["ops"]["write"]["bytes"], d["layers"][2]["ops"]["write"]["bytes"], d["nbd"]["bytes_written"], d["nbd"]["bytes_read"], d["nbd"]["connections_total"])'
	assert_output '[65536, 65536, 65536, 65536, 1]'
	run stat_of vm1 '(d["layers"][0]["log"], d["layers"][1]["error"]["injected"], d["layers"][2]["aio"]["completed"] >= 2, d["layers"][2]["aio"]["in_flight"])'
	assert_output '[{"dirty_bytes": 65536, "block_size": 65536, "persisted": 1}, 0, true, 0]'
	run "$CTL" stats --name vm1
	assert_success
	assert_line --index 0 --regexp '^worker vm1: running, 0 pauses, 0 ms paused, up [0-9]+ s$'
	assert_line --regexp '^layer 0 log: 0 in flight$'
	assert_line --regexp '^  write +1 ops +65536 bytes +0 errors$'
	assert_line --regexp '^  aio +requests [0-9]+ submitted'
}

@test "ctl: injected errors are counted by the error: layer" {
	create vm1 'error:ops=write,count=1|ram:16M'
	run qio vm1 'write 0 4k'
	assert_failure
	run qio vm1 'write 0 4k'
	assert_success
	run stat_of vm1 '(d["layers"][0]["error"], d["layers"][0]["ops"]["write"]["errors"])'
	assert_output '[{"seen": 2, "injected": 1}, 1]'
}

@test "ctl: pause, then unpause" {
	create vm1 'ram:16M'
	run "$CTL" pause --name vm1
	assert_success
	assert_output ""
	run stat_of vm1 'd["worker"]["state"]'
	assert_output paused
	# Pausing a paused worker answers at once.
	run "$CTL" pause --name vm1
	assert_success
	run "$CTL" unpause --name vm1
	assert_success
	run stat_of vm1 '(d["worker"]["state"], d["worker"]["pauses"])'
	assert_output '["running", 1]'
	# Unpausing a running worker is fine too.
	run "$CTL" unpause --name vm1
	assert_success
}

@test "ctl: pause answers only when quiesced; requests that arrive meanwhile wait for unpause" {
	create vm1 'log:|ram:2G'
	# Load: a copy of 2 GiB through the export, 16 requests at a time,
	# every byte read and written (no extents, no zero detection): long
	# enough that the pause below lands in its middle on a fast machine
	# too (512 MiB could finish first under load).
	truncate -s 2G "$IMGDIR/src.img"
	timeout 120 nbdcopy --no-extents --sparse=0 --request-size=1048576 \
		--requests=16 "$IMGDIR/src.img" "$(nbd vm1)" &
	copy=$!
	for _ in $(seq 100); do
		[ "$(stat_of vm1 'd["nbd"]["requests"]')" -gt 0 ] && break
		sleep 0.05
	done
	run "$CTL" pause --name vm1
	assert_success
	# The reply came when nothing was in flight, anywhere.
	run stat_of vm1 '(d["worker"]["state"], d["nbd"]["in_flight"], d["chain"]["in_flight"], [l["in_flight"] for l in d["layers"]])'
	assert_output '["paused", 0, 0, [0, 0]]'
	run "$CTL" unpause --name vm1
	assert_success
	assert wait "$copy"
	# The pause did fall in the middle of the copy.
	run stat_of vm1 '(d["worker"]["pauses"], d["nbd"]["held"] > 0, d["nbd"]["bytes_written"])'
	assert_output '[1, true, 2147483648]'

	# A request sent while paused is held, not refused, and completes
	# after unpause.
	run "$CTL" pause --name vm1
	assert_success
	writes=$(stat_of vm1 'd["layers"][0]["ops"]["write"]["ops"]')
	qio vm1 'write -P 7 0 4k' &
	writer=$!
	for _ in $(seq 100); do
		[ "$(stat_of vm1 'd["nbd"]["holding"]')" -ge 1 ] && break
		sleep 0.1
	done
	run stat_of vm1 '(d["nbd"]["holding"], d["layers"][0]["ops"]["write"]["ops"])'
	assert_output "[1, $writes]"
	assert kill -0 "$writer"
	run "$CTL" unpause --name vm1
	assert_success
	assert wait "$writer"
	run qio vm1 'read -P 7 0 4k'
	assert_success
}

@test "ctl: a client that leaves while pausing does not hurt the worker" {
	create vm1 'ram:16M'
	python3 - "$RUNDIR/vm1/ctl.sock" <<'EOF'
import socket, sys
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
s.sendall(b"pause\ninfo\n")
s.close()
EOF
	run raw vm1 pause info
	assert_success
	assert_line --index 0 '{"ok":true,"state":"paused"}'
	run "$CTL" unpause --name vm1
	assert_success
	run qio vm1 'write 0 4k'
	assert_success
}

@test "ctl: dirty reports written extents, and --clear empties it" {
	create vm1 'log:block=4K|ram:16M'
	run "$CTL" dirty --name vm1
	assert_success
	assert_output ""
	run qio vm1 'write 0 8k' 'write 1M 4k' 'write 4M 1k'
	assert_success
	run "$CTL" dirty --name vm1
	assert_success
	assert_output "$(printf '0 8192\n1048576 4096\n4194304 4096')"
	run "$CTL" dirty --name vm1 --json
	assert_success
	run jq_py "$output" '(d["ok"], d["block_size"], d["extents"])'
	assert_output '[true, 4096, [[0, 8192], [1048576, 4096], [4194304, 4096]]]'
	# Part of it, over the socket: only whole blocks become clean.
	run raw vm1 'clear-dirty 0 4096' 'clear-dirty 1048576 100'
	assert_success
	assert_line --index 0 '{"ok":true,"dirty_bytes":12288}'
	assert_line --index 1 '{"ok":true,"dirty_bytes":12288}'
	run "$CTL" dirty --name vm1 --clear
	assert_success
	run "$CTL" dirty --name vm1
	assert_success
	assert_output ""
	run stat_of vm1 'd["layers"][0]["log"]["dirty_bytes"]'
	assert_output 0
}

@test "ctl: dirty follows next past one reply's 4096 extents" {
	create vm1 'log:block=4K|ram:64M'
	# 4100 separate dirty blocks: every other 4K block.
	for i in $(seq 0 4099); do
		echo "write $((i * 8192)) 4096"
	done | timeout 120 qemu-io -f raw "$(nbd vm1)" >/dev/null
	run raw vm1 dirty
	assert_success
	run jq_py "$output" '(len(d["extents"]), d["next"])'
	assert_output "[4096, $((4095 * 8192 + 4096))]"
	run "$CTL" dirty --name vm1
	assert_success
	assert_equal "${#lines[@]}" 4100
	assert_line --index 4099 "$((4099 * 8192)) 4096"
}

@test "ctl: dirty without a log: layer is an error" {
	create vm1 'ram:16M'
	run "$CTL" dirty --name vm1
	assert_failure 1
	assert_output "blkstack-ctl: worker vm1: dirty: the chain has no log: layer"
	run "$CTL" dirty --name vm1 --clear
	assert_failure 1
	assert_output "blkstack-ctl: worker vm1: clear-dirty: the chain has no log: layer"
}

@test "ctl: only root and the worker's own uid may use the control socket" {
	# A run directory that nobody may traverse, and a copy of the ctl
	# that nobody may run (the work tree may not be reachable).
	EXTRA_RUNDIR=$(mktemp -d /tmp/blkstack-ctl-perm.XXXXXX)
	chmod 0711 "$EXTRA_RUNDIR"
	cp "$CTL" "$EXTRA_RUNDIR/blkstack-ctl"
	cp "$BIN/blkstack-worker" "$EXTRA_RUNDIR/blkstack-worker"
	cp "$BIN/blkstack-supervisor" "$EXTRA_RUNDIR/blkstack-supervisor"
	chmod 0755 "$EXTRA_RUNDIR/blkstack-ctl" "$EXTRA_RUNDIR/blkstack-worker" \
		"$EXTRA_RUNDIR/blkstack-supervisor"
	run "$EXTRA_RUNDIR/blkstack-ctl" --rundir "$EXTRA_RUNDIR" create --name vm1 --chain 'ram:16M'
	assert_success
	chmod 0711 "$EXTRA_RUNDIR/vm1"
	as_nobody() {
		setpriv --reuid=nobody --regid=nogroup --clear-groups -- \
			"$EXTRA_RUNDIR/blkstack-ctl" --rundir "$EXTRA_RUNDIR" "$@"
	}
	# The socket's mode refuses first...
	run as_nobody info --name vm1
	assert_failure 1
	assert_output "blkstack-ctl: worker vm1: connect $EXTRA_RUNDIR/vm1/ctl.sock: Permission denied"
	# ...and with the mode opened, the worker's SO_PEERCRED check does.
	chmod 0666 "$EXTRA_RUNDIR/vm1/ctl.sock"
	run as_nobody info --name vm1
	assert_failure 1
	assert_output "blkstack-ctl: worker vm1: permission denied: uid $(id -u nobody) may not control this worker"
	run as_nobody destroy --name vm1
	assert_failure 1
	run "$EXTRA_RUNDIR/blkstack-ctl" --rundir "$EXTRA_RUNDIR" info --name vm1 --json
	assert_success
	run jq_py "$output" 'd["state"]'
	assert_output running
}

@test "ctl: a worker killed with SIGKILL is listed as dead, and destroy cleans it up" {
	# A bare worker: a supervised one is restarted (supervise.bats).
	sup_conf supervise=no
	create vm1 'ram:16M'
	create vm2 'ram:16M'
	pid=$(cat "$RUNDIR/vm1/pid")
	pid2=$(cat "$RUNDIR/vm2/pid")
	kill -9 "$pid"
	wait_exit "$pid"
	run "$CTL" list
	assert_success
	assert_line --index 0 "name=vm1 state=dead (stale pid $pid) supervisor=none"
	assert_line --index 1 "name=vm2 pid=$pid2 state=running chain=ram:16M supervisor=none"
	run "$CTL" list --json
	assert_success
	run jq_py "$output" '[(e["name"], e["state"], e["pid"]) for e in d]'
	assert_output "[[\"vm1\", \"dead\", $pid], [\"vm2\", \"running\", $pid2]]"
	run "$CTL" info --name vm1
	assert_failure 1
	assert_output "blkstack-ctl: worker vm1: connection refused (stale socket; the worker is dead)"
	run "$CTL" destroy --name vm1
	assert_success
	assert_output "blkstack-ctl: worker vm1: stale (pid $pid is dead); removed its files"
	assert [ ! -e "$RUNDIR/vm1" ]
	# The name is free again.
	create vm1 'ram:16M'
}

@test "ctl: reconnect after a restart by hand finds the worker's kernel NBD devices (none here) and leaves the worker alone" {
	# A restart by hand: no supervisor to restart it first.
	printf 'supervise = no\n' >"$BATS_TEST_TMPDIR/blkstack.conf"
	export BLKSTACK_CONF=$BATS_TEST_TMPDIR/blkstack.conf
	create vm1 'ram:16M'
	pid=$(cat "$RUNDIR/vm1/pid")
	kill -9 "$pid"
	wait_exit "$pid"
	create vm1 'ram:16M'
	run -0 "$CTL" reconnect --name vm1
	# No /dev/nbdN carries this worker's backend identifier (without the
	# nbd module there is no /dev/nbdN at all): nothing to do.
	assert_output "reconnected 0 kernel NBD devices"
	run -0 "$CTL" info --name vm1
	run -2 "$CTL" reconnect
	assert_output "blkstack-ctl: reconnect: needs --name NAME"
	run -2 "$CTL" reconnect --name vm1 --json
	run -2 "$CTL" reconnect --name ../x
	assert_output --partial "invalid worker name"
}

@test "ctl: destroy stops the worker and is idempotent" {
	create vm1 'log:|ram:16M'
	pid=$(cat "$RUNDIR/vm1/pid")
	run "$CTL" destroy --name vm1
	assert_success
	assert_output ""
	assert exited "$pid"
	assert [ ! -e "$RUNDIR/vm1" ]
	run "$CTL" destroy --name vm1
	assert_success
	assert_output "blkstack-ctl: no worker vm1"
	run "$CTL" info --name vm1
	assert_failure 1
	assert_output "blkstack-ctl: worker vm1: not running (no $RUNDIR/vm1/ctl.sock)"
}

@test "ctl: SIGTERM removes everything the worker made, its directory included" {
	create vm1 'log:|ram:16M'
	pid=$(cat "$RUNDIR/vm1/pid")
	# Supervised (the default): the supervisor sees the clean exit, ends
	# too, and removes its own files; the directory goes with the last.
	spid=$(cat "$RUNDIR/vm1/supervisor.pid")
	kill -TERM "$pid"
	wait_exit "$pid"
	wait_exit "$spid"
	assert [ ! -e "$RUNDIR/vm1" ]
	run "$CTL" list
	assert_success
	assert_output ""
	run "$CTL" destroy --name vm1
	assert_success
	assert_output "blkstack-ctl: no worker vm1"
	# The name is free again at once.
	create vm1 'ram:16M'
	run "$CTL" list
	assert_output --regexp "^name=vm1 pid=[0-9]+ state=running"
}

@test "ctl: a directory left by a killed worker does not hold the name" {
	sup_conf supervise=no
	create vm1 'ram:16M'
	pid=$(cat "$RUNDIR/vm1/pid")
	kill -KILL "$pid"
	wait_exit "$pid"
	run "$CTL" list
	assert_output --partial "name=vm1 state=dead"
	create vm1 'ram:16M'
	run "$CTL" list
	assert_output --regexp "^name=vm1 pid=[0-9]+ state=running"
}

@test "ctl: shutdown over the socket answers, then the worker exits" {
	create vm1 'ram:16M'
	pid=$(cat "$RUNDIR/vm1/pid")
	# The client keeps the connection open: the worker still exits, and
	# the connection ends with it.
	run python3 - "$RUNDIR/vm1/ctl.sock" <<'EOF'
import socket, sys
s = socket.socket(socket.AF_UNIX)
s.settimeout(20)
s.connect(sys.argv[1])
s.sendall(b"shutdown\n")
print(s.recv(100).decode(), end="")
print("eof" if s.recv(100) == b"" else "more")
EOF
	assert_success
	assert_output "$(printf '{"ok":true}\neof')"
	wait_exit "$pid"
	assert [ ! -e "$RUNDIR/vm1/ctl.sock" ]
}

@test "ctl: the raw protocol: unknown commands, bad arguments, one reply per line" {
	create vm1 'log:|ram:16M'
	run raw vm1 frobnicate 'info extra' '' 'dirty nope' 'clear-dirty 1' info
	assert_success
	assert_line --index 0 "{\"ok\":false,\"error\":\"vm1: unknown command 'frobnicate'\",\"errno\":\"ENOSYS\",\"errnum\":$(errno_num ENOSYS)}"
	assert_line --index 1 "{\"ok\":false,\"error\":\"vm1: info takes no arguments\",\"errno\":\"EINVAL\",\"errnum\":$(errno_num EINVAL)}"
	assert_line --index 2 "{\"ok\":false,\"error\":\"vm1: empty command\",\"errno\":\"EINVAL\",\"errnum\":$(errno_num EINVAL)}"
	assert_line --index 3 --partial '"error":"vm1: dirty: bad start '"'"'nope'"'"
	assert_line --index 4 "{\"ok\":false,\"error\":\"vm1: usage: clear-dirty [OFFSET LENGTH]\",\"errno\":\"EINVAL\",\"errnum\":$(errno_num EINVAL)}"
	run jq_py "${lines[5]}" '(d["ok"], d["name"])'
	assert_output '[true, "vm1"]'
	# Pipelined requests, an over-long line, and the close after it.
	run python3 - "$RUNDIR/vm1/ctl.sock" <<'EOF'
import socket, sys
s = socket.socket(socket.AF_UNIX)
s.settimeout(30)
s.connect(sys.argv[1])
s.sendall(b"stats\r\nunpause\ninfo\n" + b"x" * 5000 + b"\n")
data = b""
while True:
    try:
        chunk = s.recv(65536)
    except ConnectionResetError:
        break
    if not chunk:
        break
    data += chunk
for line in data.decode().splitlines():
    print(line[:60])
EOF
	assert_success
	assert_equal "${#lines[@]}" 4
	assert_line --index 0 --partial '{"ok":true,"worker":'
	assert_line --index 1 '{"ok":true}'
	assert_line --index 2 --partial '{"ok":true,"name":"vm1"'
	assert_line --index 3 --partial '"error":"vm1: command line too long'
}

@test "ctl: blkif-connect checks its arguments, says which Xen device is missing, and leaves the worker serving" {
	# No Xen here: the connect gets as far as /dev/xen/gntdev and stops.
	[ ! -e /dev/xen/gntdev ] || skip "this machine has /dev/xen/gntdev (a dom0): make check-xen tests the ring"
	create vm1 'ram:16M'
	run raw vm1 'blkif-connect 5 12 8 x86_64-abi w' \
		'blkif-connect 0 12 8 - w' 'blkif-connect 5 12 8,9,10 - w' \
		'blkif-connect 5 12 8 - rw' 'blkif-connect 5 12' \
		blkif-disconnect blkif-disconnect info
	assert_success
	assert_line --index 0 "{\"ok\":false,\"error\":\"vm1: blkif-connect domain 5: blkif: xengnttab_open (/dev/xen/gntdev): No such file or directory\",\"errno\":\"ENOENT\",\"errnum\":$(errno_num ENOENT)}"
	assert_line --index 1 --partial '"error":"vm1: blkif-connect: DOMID must be'
	assert_line --index 2 --partial '"error":"vm1: blkif-connect: 3 ring pages: not a power of two"'
	assert_line --index 3 --partial '"error":"vm1: blkif-connect: MODE must be r or w"'
	assert_line --index 4 --partial '"error":"vm1: usage: blkif-connect DOMID PORT REFS PROTOCOL MODE"'
	# Nothing connected: disconnect is a no-op, twice.
	assert_line --index 5 '{"ok":true}'
	assert_line --index 6 '{"ok":true}'
	run jq_py "${lines[7]}" '(d["ok"], d["blkif"])'
	assert_output '[true, "none"]'
	run stat_of vm1 'd["blkif"]'
	assert_output null
	# Still serving NBD.
	run nbdinfo --size "$(nbd vm1)"
	assert_output 16777216
}

@test "ctl: blkif-watch without a ring is refused (ENOTCONN), with arguments too (EINVAL); the connection serves on" {
	create vm1 'ram:16M'
	run raw vm1 blkif-watch 'blkif-watch 5' info
	assert_success
	assert_line --index 0 "{\"ok\":false,\"error\":\"vm1: blkif-watch: no ring is connected\",\"errno\":\"ENOTCONN\",\"errnum\":$(errno_num ENOTCONN)}"
	assert_line --index 1 --partial '"error":"vm1: blkif-watch takes no arguments","errno":"EINVAL"'
	run jq_py "${lines[2]}" '(d["ok"], d["blkif"])'
	assert_output '[true, "none"]'
	# Nothing is kept for it: no connection waits, none was dropped.
	run stat_of vm1 '(d["limits"]["control"]["connections"], d["limits"]["control"]["timed_out"])'
	assert_output '[1, 0]'
}

@test "ctl: usage errors exit 2, before touching anything" {
	run "$CTL"
	assert_failure 2
	run "$CTL" frob
	assert_failure 2
	assert_output "blkstack-ctl: unknown command 'frob' (try --help)"
	run "$CTL" info
	assert_failure 2
	assert_output "blkstack-ctl: info: needs --name NAME"
	run "$CTL" create --name vm1
	assert_failure 2
	run "$CTL" info --name vm1 --chain ram:1M
	assert_failure 2
	run "$CTL" info --name vm1 extra
	assert_failure 2
	for bad in . .. ../x a/b '' "$(printf '%065d' 0)" 'a b'; do
		run "$CTL" destroy --name "$bad"
		assert_failure 2
		assert_output --partial "invalid worker name"
	done
	assert [ ! -e "$RUNDIR" ]
	run "$CTL" --help
	assert_success
	assert_output --partial "usage: blkstack-ctl"
}

@test "ctl: list copes with a missing run directory and ignores what is not a worker" {
	run "$CTL" list
	assert_success
	assert_output ""
	run "$CTL" list --json
	assert_success
	assert_output "[]"
	mkdir -p "$RUNDIR/bad name" "$RUNDIR/empty"
	touch "$RUNDIR/file"
	run "$CTL" list
	assert_success
	assert_output "name=empty state=dead (no pid file) supervisor=none"
}

@test "ctl: --rundir takes precedence over BLKSTACK_RUNDIR" {
	other=$BATS_TEST_TMPDIR/other
	run "$CTL" --rundir "$other" create --name vm1 --chain 'ram:16M'
	assert_success
	assert_output "$other/vm1/nbd.sock"
	run "$CTL" list
	assert_output ""
	run "$CTL" list --rundir "$other"
	assert_success
	assert_output --regexp '^name=vm1 pid=[0-9]+ state=running'
	run "$CTL" --rundir "$other" destroy --name vm1
	assert_success
	assert [ ! -e "$other/vm1" ]
}
