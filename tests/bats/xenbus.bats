#!/usr/bin/env bats
# blkstack-xenbus, the xenstore side of the vbd3 backend (libxl's
# backendtype=tap), against a real xenstored: the states it writes as
# libxl and a guest's blkfront write theirs (xenstore-write, as those
# write them), what it refuses to touch, and its own life.

load helpers

BASE=/local/domain/0/backend/vbd3
DOM=5
DEV=51712
BE=$BASE/$DOM/$DEV
FE=/local/domain/$DOM/device/vbd/$DEV

setup() {
	xsd_setup
	RUN_DIR=$(mktemp -d "${BATS_TMPDIR:-/tmp}/blkstack-xb.XXXXXX")
	XB_PID=
	RW_PID=
}

teardown() {
	if [ -n "$RW_PID" ]; then
		kill -9 "$RW_PID" 2>/dev/null || true
		wait "$RW_PID" 2>/dev/null || true
	fi
	if [ -n "$XB_PID" ]; then
		kill "$XB_PID" 2>/dev/null || true
		wait "$XB_PID" 2>/dev/null || true
	fi
	# The hotplug script's workers (the last test's), and their images.
	local d
	for d in "$RUN_DIR"/hp/*/; do
		[ -d "$d" ] || continue
		"$BIN/blkstack-ctl" --rundir "$RUN_DIR/hp" destroy \
			--name "$(basename "$d")" >/dev/null 2>&1 || true
	done
	[ -z "${IMG_DIR:-}" ] || worker_teardown
	rm -rf -- "$RUN_DIR"
	xsd_teardown
}

# xb_start: the daemon, verbose, until it says it watches.
xb_start() {
	"$BIN/blkstack-xenbus" --rundir "$RUN_DIR" --verbose "$@" \
		>"$RUN_DIR/out" 2>"$RUN_DIR/err" &
	XB_PID=$!
	wait_lines "$RUN_DIR/out" 1 10
}

# add_device [DOM DEV FRONTEND-ID FRONTEND]: the backend directory as
# libxl writes it (in one transaction there; here state last), and the
# guest's frontend directory in Initialising.
add_device() {
	local dom=${1:-$DOM} dev=${2:-$DEV}
	local fid=${3:-$dom} fe=${4:-/local/domain/$dom/device/vbd/$dev}
	local be=$BASE/$dom/$dev
	xenstore-write "$fe/state" 1 "$fe/backend" "$be" "$fe/backend-id" 0
	xenstore-write "$be/frontend" "$fe" "$be/frontend-id" "$fid" \
		"$be/params" "aio:/images/g.img" "$be/type" vbd3 \
		"$be/mode" w "$be/online" 1 "$be/dev" xvda
	xenstore-write "$be/state" 1
}

# state_is PATH N [SECONDS]: until PATH/state is N (default 10 s).
state_is() {
	local _
	for _ in $(seq $((${3:-10} * 20))); do
		[ "$(xenstore-read "$1/state" 2>/dev/null)" = "$2" ] && return 0
		sleep 0.05
	done
	echo "$1/state is '$(xenstore-read "$1/state" 2>&1)', not $2" >&2
	return 1
}

# ring_worker_start: tests/bats/ring-worker.py as worker "rw" of RUN_DIR
# (a stand-in whose ring connects: no /dev/xen here), until it listens.
ring_worker_start() {
	python3 "$BATS_TEST_DIRNAME/ring-worker.py" "$RUN_DIR" rw "$RUN_DIR/rw.log" \
		>"$RUN_DIR/rw.out" 2>&1 &
	RW_PID=$!
	wait_lines "$RUN_DIR/rw.out" 1 10
}

# ring_connected: the device of add_device served by "rw", Connected.
ring_connected() {
	ring_worker_start
	xb_start
	add_device
	state_is "$BE" 2
	xenstore-write "$BE/blkstack-worker" rw "$BE/hotplug-status" connected
	xenstore-write "$FE/ring-ref" 8 "$FE/event-channel" 12 \
		"$FE/protocol" x86_64-abi "$FE/state" 3
	state_is "$BE" 4
	# The watch follows the connect's transaction: wait for it.
	wait_lines "$RUN_DIR/rw.log" 2 10
	run cat "$RUN_DIR/rw.log"
	assert_line --index 0 "blkif-connect $DOM 12 8 x86_64-abi w"
	assert_line --index 1 blkif-watch
}

# rw_cmd LINE: one command to the stand-in worker, its reply printed.
rw_cmd() {
	python3 - "$RUN_DIR/rw/ctl.sock" "$1" <<'EOF2'
import socket, sys
s = socket.socket(socket.AF_UNIX)
s.settimeout(10)
s.connect(sys.argv[1])
f = s.makefile("rwb")
f.write(sys.argv[2].encode() + b"\n")
f.flush()
sys.stdout.write(f.readline().decode())
EOF2
}

# stays PATH N: PATH/state is still N after a second.
stays() {
	sleep 1
	run xenstore-read "$1/state"
	assert_success
	assert_output "$2"
}

@test "xenbus: a run directory that is relative, has a control character or is too long is refused" {
	run "$BIN/blkstack-xenbus" --rundir relative/run
	assert_failure 2
	assert_output --partial "--rundir 'relative/run' is not an absolute path"
	BLKSTACK_RUNDIR=run run "$BIN/blkstack-xenbus"
	assert_failure 2
	assert_output --partial "BLKSTACK_RUNDIR 'run' is not an absolute path"
	run "$BIN/blkstack-xenbus" --rundir "$(printf '/tmp/a\tb')"
	assert_failure 2
	assert_output --partial "--rundir has a control character"
	run "$BIN/blkstack-xenbus" --rundir "/$(head -c 4000 /dev/zero | tr '\0' a)"
	assert_failure 2
	assert_output --partial "--rundir is too long"
}

@test "xenbus: a new vbd3 device goes to InitWait with max-ring-page-order" {
	xb_start
	add_device
	state_is "$BE" 2
	run xenstore-read "$BE/max-ring-page-order"
	assert_success
	assert_output 4
	run cat "$RUN_DIR/err"
	assert_output --partial "$BE: Initialising -> InitWait"
}

@test "xenbus: devices already there when it starts are served, order as told" {
	add_device
	add_device 6 51728
	xb_start --max-ring-page-order 2
	state_is "$BE" 2
	state_is "$BASE/6/51728" 2
	run xenstore-read "$BASE/6/51728/max-ring-page-order"
	assert_output 2
}

@test "xenbus: a ready frontend waits in InitWait for the script's add, said once" {
	xb_start
	add_device
	state_is "$BE" 2
	xenstore-write "$FE/state" 3
	stays "$BE" 2
	xenstore-write "$FE/ring-ref" 8 "$FE/state" 4
	stays "$BE" 2
	run grep -c "waiting for the hotplug script's add" "$RUN_DIR/err"
	assert_output 1
}

@test "xenbus: the frontend closes, then reconnects (Closed -> InitWait only on Initialising)" {
	xb_start
	add_device
	state_is "$BE" 2
	xenstore-write "$FE/state" 5
	state_is "$BE" 5
	xenstore-write "$FE/state" 6
	state_is "$BE" 6
	# Closed stays Closed while the frontend is Closed...
	stays "$BE" 6
	# ... and goes back to InitWait when it is Initialising again.
	xenstore-write "$FE/state" 1
	state_is "$BE" 2
}

@test "xenbus: the toolstack's detach (online 0, Closing) ends in Closed" {
	xb_start
	add_device
	state_is "$BE" 2
	# What libxl writes, in one transaction there.
	xenstore-write "$BE/online" 0 "$BE/state" 5
	state_is "$BE" 6
	# An offline device stays Closed even if the frontend starts over.
	xenstore-write "$FE/state" 1
	stays "$BE" 6
}

@test "xenbus: a frontend that disappears closes its backend" {
	xb_start
	add_device
	state_is "$BE" 2
	xenstore-rm "$FE"
	state_is "$BE" 6
}

@test "xenbus: the backend directory removed and made again is served again" {
	xb_start
	add_device
	state_is "$BE" 2
	xenstore-rm "$BASE/$DOM"
	wait_lines "$RUN_DIR/err" 2 10
	run cat "$RUN_DIR/err"
	assert_output --partial "$BE: gone"
	add_device
	state_is "$BE" 2
	kill -0 "$XB_PID"
}

@test "xenbus: hostile nodes: a device is never touched, the others still are" {
	xb_start
	# frontend-id not the domain of the path
	add_device 7 51712 8
	# a frontend path that is not the guest's vbd
	add_device 9 51712 9 /local/domain/0/device/vbd/51712
	# a backend state that is not a number
	add_device 10 51712
	xenstore-write "$BASE/10/51712/state" "2; rm -rf /"
	# a device id that is not a number
	xenstore-write "$BASE/11/xvda/frontend-id" 11 "$BASE/11/xvda/state" 1
	add_device
	state_is "$BE" 2
	stays "$BASE/7/51712" 1
	stays "$BASE/9/51712" 1
	run xenstore-read "$BASE/10/51712/state"
	assert_output "2; rm -rf /"
	run xenstore-read "$BASE/11/xvda/state"
	assert_output 1
	run cat "$RUN_DIR/err"
	assert_output --partial "frontend-id '8' is not the guest's domain 7"
	assert_output --partial "frontend '/local/domain/0/device/vbd/51712' is not /local/domain/9/device/vbd/51712"
	assert_output --partial "is not a backend state"
	xs_absent "$BASE/7/51712/max-ring-page-order"
	kill -0 "$XB_PID"
}

@test "xenbus: one per run directory; bad usage exits 2; SIGTERM exits 0" {
	xb_start
	run "$BIN/blkstack-xenbus" --rundir "$RUN_DIR"
	assert_failure 1
	assert_output --partial "another blkstack-xenbus runs"
	run "$BIN/blkstack-xenbus" --max-ring-page-order 5
	assert_failure 2
	run "$BIN/blkstack-xenbus" --backend-dir relative/path
	assert_failure 2
	run "$BIN/blkstack-xenbus" extra
	assert_failure 2
	kill -TERM "$XB_PID"
	# wait, not run wait: run's subshell is not the daemon's parent.
	rc=0
	wait "$XB_PID" || rc=$?
	assert_equal "$rc" 0
	XB_PID=
	assert_file_not_exists "$RUN_DIR/xenbus.lock"
}

@test "xenbus: with it, libxl's v1 add of a vbd3 disk reaches the script, which starts the disk's worker and says connected; remove stops it" {
	local name=backend-vbd3-$DOM-$DEV
	export BLKSTACK_RUNDIR=$RUN_DIR/hp
	img_dir
	truncate -s 16M "$IMG_DIR/g.img"
	xb_start --rundir "$BLKSTACK_RUNDIR"
	add_device
	xenstore-write "$BE/params" "aio:log:|aio:$IMG_DIR/g.img"
	state_is "$BE" 2
	# What libxl 4.20 runs once the backend is in InitWait.
	run env XENBUS_PATH="backend/vbd3/$DOM/$DEV" XENBUS_TYPE=vbd3 \
		XENBUS_BASE_PATH=backend script="$SCRIPT" "$SCRIPT" add
	assert_success
	run xenstore-read "$BE/hotplug-status"
	assert_output connected
	run xenstore-read "$BE/blkstack-worker"
	assert_output "$name"
	run xenstore-read "$BE/physical-device-path"
	assert_output "$BLKSTACK_RUNDIR/$name/ctl.sock"
	run xenstore-exists "$BE/physical-device"
	assert_failure
	run nbdinfo --size "nbd+unix:///?socket=$BLKSTACK_RUNDIR/$name/nbd.sock"
	assert_output 16777216
	# The frontend's ring: blkstack-xenbus hands it to that worker, which
	# cannot map it here (no /dev/xen): the backend says why and closes.
	xenstore-write "$FE/ring-ref" 8 "$FE/event-channel" 12 \
		"$FE/protocol" x86_64-abi "$FE/state" 3
	state_is "$BE" 5
	run xenstore-read "$BE/error"
	assert_output --partial "worker $name: blkif-connect domain $DOM: blkif: xengnttab_open (/dev/xen/gntdev)"
	run xenstore-exists "$BE/sectors"
	assert_failure
	run "$BIN/blkstack-ctl" --rundir "$BLKSTACK_RUNDIR" info --name "$name"
	assert_success
	assert_output --partial "state:        running"
	xenstore-write "$FE/state" 6
	state_is "$BE" 6
	# libxl's teardown: online 0 and Closing, Closed, then remove.
	xenstore-write "$BE/online" 0 "$BE/state" 5
	state_is "$BE" 6
	run env XENBUS_PATH="backend/vbd3/$DOM/$DEV" XENBUS_TYPE=vbd3 \
		XENBUS_BASE_PATH=backend script="$SCRIPT" "$SCRIPT" remove
	assert_success
	run "$BIN/blkstack-ctl" --rundir "$BLKSTACK_RUNDIR" list
	assert_output ""
	run xenstore-exists "$BE/blkstack-worker"
	assert_failure
}

@test "xenbus: hostile ring nodes and worker names are refused with an error node and Closing; nothing is asked of a worker" {
	xb_start
	add_device
	state_is "$BE" 2
	# As the script's add leaves it, naming a worker that is not there.
	xenstore-write "$BE/blkstack-worker" nosuch "$BE/hotplug-status" connected
	xenstore-write "$FE/ring-ref" x "$FE/event-channel" 12 "$FE/state" 3
	state_is "$BE" 5
	run xenstore-read "$BE/error"
	assert_output --partial "ring-ref"
	xenstore-write "$FE/state" 6
	state_is "$BE" 6
	# Reconnect: Initialising takes it back to InitWait; now too many pages.
	xenstore-rm "$BE/error"
	xenstore-write "$FE/ring-ref" 8 "$FE/state" 1
	state_is "$BE" 2
	xenstore-write "$FE/ring-page-order" 5 "$FE/state" 3
	state_is "$BE" 5
	run xenstore-read "$BE/error"
	assert_output --partial "ring-page-order"
	xenstore-write "$FE/state" 6
	state_is "$BE" 6
	# Good nodes, a worker name that is a path: refused before any call.
	xenstore-rm "$FE/ring-page-order"
	xenstore-write "$BE/blkstack-worker" "../x" "$FE/state" 1
	state_is "$BE" 2
	xenstore-write "$FE/state" 3
	state_is "$BE" 5
	run xenstore-read "$BE/error"
	assert_output --partial "is not a worker's name"
	# Good everything, no such worker: its control client says so.
	xenstore-write "$FE/state" 6
	state_is "$BE" 6
	xenstore-write "$BE/blkstack-worker" nosuch "$FE/state" 1
	state_is "$BE" 2
	xenstore-write "$FE/state" 3
	state_is "$BE" 5
	run xenstore-read "$BE/error"
	assert_output --partial "worker nosuch: "
}

@test "xenbus: a Connected ring's worker that dies takes the backend to Closing with an error node; Closed after the frontend" {
	ring_connected
	run xenstore-read "$BE/sectors"
	assert_output 32768
	xs_absent "$BE/error"
	kill -9 "$RW_PID"
	wait "$RW_PID" 2>/dev/null || true
	RW_PID=
	state_is "$BE" 5
	run xenstore-read "$BE/error"
	assert_output "$BE: worker rw: the worker died (its blkif-watch connection ended while it served the ring)"
	run cat "$RUN_DIR/err"
	assert_output --partial "$BE: worker rw: the worker died"
	# What blkfront does on Closing; the table takes it from there.
	xenstore-write "$FE/state" 6
	state_is "$BE" 6
	# And a guest that starts over meets InitWait, as after any close.
	xenstore-write "$FE/state" 1
	state_is "$BE" 2
	kill -0 "$XB_PID"
}

@test "xenbus: a ring the guest broke takes the backend to Closing with the worker's reason, and the ring is taken back" {
	ring_connected
	run rw_cmd "test-break req_prod 99 is 67 past the responses"
	assert_output '{"ok":true}'
	state_is "$BE" 5
	run xenstore-read "$BE/error"
	assert_output "$BE: worker rw: blkif: the ring of domain $DOM is broken: req_prod 99 is 67 past the responses"
	# The broken ring is still mapped in the worker: blkif-disconnect.
	wait_lines "$RUN_DIR/rw.log" 4 10
	run cat "$RUN_DIR/rw.log"
	assert_line --index 3 blkif-disconnect
	xenstore-write "$FE/state" 6
	state_is "$BE" 6
	kill -0 "$XB_PID"
}

@test "xenbus: its own disconnect (the frontend closes) writes no error, and the watch is gone before it" {
	ring_connected
	xenstore-write "$FE/state" 5
	state_is "$BE" 5
	wait_lines "$RUN_DIR/rw.log" 4 10
	run cat "$RUN_DIR/rw.log"
	# The watch was closed by blkstack-xenbus first, then the disconnect.
	assert_line --index 2 "watch closed"
	assert_line --index 3 blkif-disconnect
	xs_absent "$BE/error"
	# A worker that dies now is nobody's concern.
	kill -9 "$RW_PID"
	wait "$RW_PID" 2>/dev/null || true
	RW_PID=
	stays "$BE" 5
	xs_absent "$BE/error"
	xenstore-write "$FE/state" 6
	state_is "$BE" 6
	xs_absent "$BE/error"
}

@test "xenbus: a Connected device the toolstack removes drops its watch (no error, no Closing written)" {
	ring_connected
	xenstore-rm "$BASE/$DOM"
	wait_lines "$RUN_DIR/rw.log" 4 10
	run cat "$RUN_DIR/rw.log"
	assert_line --index 2 "watch closed"
	assert_line --index 3 blkif-disconnect
	run cat "$RUN_DIR/err"
	assert_output --partial "$BE: gone"
	run xenstore-exists "$BE"
	assert_failure
	kill -0 "$XB_PID"
}
