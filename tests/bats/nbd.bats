#!/usr/bin/env bats
# The NBD export of blkstack-worker, against real NBD clients: nbdinfo,
# nbdcopy (libnbd), qemu-io and qemu-img (QEMU's client), fio's nbd
# engine, and tests/nbd/hostile-client.py for what well-behaved clients
# never send.
#
# Every test starts its own workers with --foreground in a private rundir
# and stops them with SIGTERM in teardown.  aio: needs O_DIRECT, which
# tmpfs lacks: images go to $BATS_TEST_TMPDIR unless it is on tmpfs, else
# to a private directory under /var/tmp.

load helpers

HOSTILE=$TOP/tests/nbd/hostile-client.py

setup() {
	# fio and friends may leave files in the current directory.
	cd "$BATS_TEST_TMPDIR" || return 1
	RUNDIR=$BATS_TEST_TMPDIR/run
	mkdir -p "$RUNDIR"
	if [ "$(stat -f -c %T "$BATS_TEST_TMPDIR")" = tmpfs ]; then
		IMGDIR=$(mktemp -d /var/tmp/blkstack-nbd.XXXXXX)
	else
		IMGDIR=$BATS_TEST_TMPDIR/img
		mkdir -p "$IMGDIR"
	fi
	: >"$BATS_TEST_TMPDIR/pids"
	: >"$BATS_TEST_TMPDIR/holders"
	: >"$BATS_TEST_TMPDIR/mounts"
	[ -x "$BIN/blkstack-worker" ] || fail "build/bin/blkstack-worker is not built"
}

# wait_exit PID: wait (up to 10 s, then SIGKILL) for a worker started by
# this test to exit, and reap it; returns its exit status.
wait_exit() {
	local _ state rc=0
	for _ in $(seq 100); do
		state=$(awk '{ print $3 }' "/proc/$1/stat" 2>/dev/null) || break
		[ "$state" != Z ] || break
		sleep 0.1
	done
	kill -KILL "$1" 2>/dev/null || true
	wait "$1" 2>/dev/null || rc=$?
	return "$rc"
}

teardown() {
	local pid mnt
	# Background clients (hold_start) and nbdfuse mounts (fuse_attach).
	while read -r pid; do
		kill -TERM "$pid" 2>/dev/null || true
	done <"$BATS_TEST_TMPDIR/holders"
	while read -r mnt pid; do
		fusermount3 -u "$mnt" 2>/dev/null || true
		wait_exit "$pid" || true
	done <"$BATS_TEST_TMPDIR/mounts"
	while read -r pid; do
		kill -TERM "$pid" 2>/dev/null || continue
		wait_exit "$pid" || true
	done <"$BATS_TEST_TMPDIR/pids"
	case $IMGDIR in
	/var/tmp/blkstack-nbd.*) rm -rf -- "$IMGDIR" ;;
	esac
}

# start_worker NAME CHAIN [worker options]: start a worker in $RUNDIR and
# wait for its readiness (helpers.bash).  Sets SOCK, URI and PID.
start_worker() {
	local name=$1 chain=$2
	shift 2
	WORKER_RUNDIR=$RUNDIR worker_start "$name" "$chain" "$@" ||
		fail "worker $name did not start"
	PID=$WORKER_PID
	NAME=$name
	echo "$PID" >>"$BATS_TEST_TMPDIR/pids"
	SOCK=$NBD_SOCK
	URI=$(nbd_uri "$SOCK")
}

# nbdinfo_json: nbdinfo --json of $URI into JSON.
nbdinfo_json() {
	JSON=$(nbdinfo --json "$URI") || fail "nbdinfo --json $URI failed"
}

# info_json FIELD: a field of the export in $JSON, JSON-encoded (true,
# false, numbers, "strings", lists).
info_json() {
	python3 -c 'import json, sys
d = json.loads(sys.stdin.read())
print(json.dumps(d["exports"][0][sys.argv[1]]))' "$1" <<<"$JSON"
}

# check_info FIELD VALUE...: assert fields of $JSON (one python3 for all:
# it is slow to start on a busy machine).
check_info() {
	JSON=$JSON run python3 -c 'import json, os, sys
d = json.loads(os.environ["JSON"])["exports"][0]
a = sys.argv[1:]
bad = ["nbdinfo: %s is %s, expected %s" % (k, json.dumps(d.get(k)), v)
       for k, v in zip(a[::2], a[1::2]) if json.dumps(d.get(k)) != v]
print("\n".join(bad))
sys.exit(1 if bad else 0)' "$@"
	assert_success
}

# An image of SIZE bytes, sparse: echoes its path.
make_image() {
	local path=$IMGDIR/$1
	truncate -s "$2" "$path"
	echo "$path"
}

worker_alive() {
	kill -0 "$PID" || fail "the worker died"
}

# stat_nbd FIELD: a field of the worker's "nbd" or "limits"/"nbd" stats
# (blkstack-ctl).
stat_nbd() {
	"$BIN/blkstack-ctl" --rundir "$RUNDIR" stats --name "$NAME" --json |
		python3 -c 'import json, sys
d = json.load(sys.stdin)
print(dict(d["nbd"], **d["limits"]["nbd"])[sys.argv[1]])' "$1"
}

# hold_start SCENARIO [N]: a hostile-client.py hold scenario (N
# connections) in the background, killed in teardown; waits (at most
# 20 s) for its "holding" line.  Sets HOLD_PID.
hold_start() {
	local out=$BATS_TEST_TMPDIR/hold.$$.$RANDOM _
	HOSTILE_FLOOD=${2:-16} python3 "$HOSTILE" "$SOCK" "$1" >"$out" 2>&1 3>&- &
	HOLD_PID=$!
	echo "$HOLD_PID" >>"$BATS_TEST_TMPDIR/holders"
	for _ in $(seq 200); do
		grep -q '^holding' "$out" && return 0
		kill -0 "$HOLD_PID" 2>/dev/null || break
		sleep 0.1
	done
	fail "$1 did not start holding: $(cat "$out")"
}

# fuse_attach MNT: nbdfuse on $SOCK at MNT, the way hp-dev starts it (so
# with its default of 4 connections: multi-conn); waits (at most 10 s)
# for its file.  Unmounted in teardown.
fuse_attach() {
	local _ pid
	mkdir -p "$1"
	nbdfuse "$1" --unix "$SOCK" >>"$BATS_TEST_TMPDIR/nbdfuse.log" 2>&1 3>&- &
	pid=$!
	echo "$1 $pid" >>"$BATS_TEST_TMPDIR/mounts"
	for _ in $(seq 100); do
		[ -f "$1/nbd" ] && return 0
		kill -0 "$pid" 2>/dev/null || break
		sleep 0.1
	done
	fail "nbdfuse on $1 did not come up: $(cat "$BATS_TEST_TMPDIR/nbdfuse.log")"
}

# ---- what nbdinfo sees --------------------------------------------------

@test "nbd: nbdinfo: size and flags of a ram: export" {
	start_worker disk1 ram:16M
	nbdinfo_json
	check_info export-size 16777216 export-name '"disk1"' \
		description '"ram:16M"' is_read_only false can_flush true \
		can_fua true can_trim true can_zero true can_multi_conn true \
		can_df true can_cache false can_fast_zero false \
		block_size_minimum 512 block_size_preferred 4096 \
		block_size_maximum 33554432
}

@test "nbd: nbdinfo: size and flags of aio: and log:|aio: exports" {
	local img
	img=$(make_image a.img 48M)
	start_worker a "aio:$img"
	nbdinfo_json
	check_info export-size 50331648 is_read_only false can_flush true \
		can_fua true can_trim true can_zero true can_multi_conn true
	img=$(make_image b.img 40M)
	start_worker b "log:|aio:$img"
	nbdinfo_json
	check_info export-size 41943040 is_read_only false can_trim true \
		can_zero true can_multi_conn true
}

@test "nbd: a --read-only worker is read-only, and refuses writes" {
	local img
	img=$(make_image ro.img 8M)
	start_worker ro "aio:$img" --read-only
	nbdinfo_json
	check_info is_read_only true can_trim false can_zero false \
		can_fua false export-size 8388608
	# QEMU sees the flag and will not even open it for writing ...
	run qemu-io -f raw "$URI" -c 'write -P 0x11 0 4k'
	assert_failure
	# ... a client that writes anyway gets EPERM for every kind of write.
	run -0 python3 "$HOSTILE" "$SOCK" read-only
	run -0 qemu-io -r -f raw "$URI" -c 'read -P 0 0 4k'
	run -0 cmp -n 8388608 "$img" /dev/zero
}

# ---- data ---------------------------------------------------------------

# copy_check CHAIN-PREFIX: nbdcopy random data in and out again.
copy_check() {
	local img src=$IMGDIR/src out=$IMGDIR/out
	img=$(make_image disk.img 40M)
	head -c 40M /dev/urandom >"$src"
	start_worker c "$1$img"
	run -0 nbdcopy "$src" "$URI"
	run -0 nbdcopy "$URI" "$out"
	run -0 cmp "$src" "$out"
	run -0 qemu-img compare -f raw -F raw "$src" "$img"
	run -0 qemu-img compare -f raw -F raw "$src" "$URI"
}

@test "nbd: nbdcopy in and out of aio: is identical" {
	copy_check aio:
}

@test "nbd: nbdcopy in and out of log:|aio: is identical" {
	copy_check 'log:|aio:'
}

@test "nbd: qemu-io patterns: aligned, unaligned, large, discard, zeroes" {
	local img
	img=$(make_image q.img 64M)
	start_worker q "aio:$img"
	run -0 qemu-io -f raw "$URI" \
		-c 'write -P 0x55 0 1M' \
		-c 'write -P 0xaa 1000 3000' \
		-c 'write -P 0x3c 16M 16M' \
		-c 'write -f -P 0x77 40M 64k' \
		-c 'write -P 0x66 48M 1M' \
		-c 'write -P 0x67 56M 1M' \
		-c 'discard 48M 1M' \
		-c 'write -z 56M 1M' \
		-c 'write -z 100 200' \
		-c 'flush'
	run -0 qemu-io -f raw "$URI" \
		-c 'read -P 0x55 0 100' \
		-c 'read -P 0 100 200' \
		-c 'read -P 0x55 300 700' \
		-c 'read -P 0xaa 1000 3000' \
		-c 'read -P 0x55 4000 1044576' \
		-c 'read -P 0x3c 16M 16M' \
		-c 'read -P 0x3c 17000000 123457' \
		-c 'read -P 0x77 40M 64k' \
		-c 'read -P 0 48M 1M' \
		-c 'read -P 0 56M 1M'
	# A wrong pattern is noticed (the checks above can fail).
	run qemu-io -f raw "$URI" -c 'read -P 0x56 0 4k'
	assert_output --partial 'Pattern verification failed'
	# And the file holds what the client wrote.
	run -0 qemu-io -f raw "$img" -c 'read -P 0xaa 1000 3000' \
		-c 'read -P 0x3c 16M 16M'
}

@test "nbd: requests that ignore the block size (read-modify-write)" {
	local img
	img=$(make_image u.img 16M)
	start_worker u "aio:$img"
	run -0 python3 "$HOSTILE" "$SOCK" unaligned same-block \
		zeroes-unaligned trim-unaligned
	img=$(make_image u2.img 16M)
	start_worker u2 "log:|aio:$img"
	run -0 python3 "$HOSTILE" "$SOCK" unaligned same-block \
		zeroes-unaligned
}

@test "nbd: fio, 4 connections (multi-conn), random r/w, crc32c verify" {
	local img
	img=$(make_image f.img 128M)
	start_worker f "aio:$img"
	run -0 fio --name=multiconn --ioengine=nbd --uri="$URI" \
		--rw=randrw --bsrange=4k-64k --size=32M --offset_increment=32M \
		--numjobs=4 --iodepth=16 --verify=crc32c --do_verify=1 \
		--verify_fatal=1 --verify_state_save=0 --group_reporting
	assert_output --partial 'err= 0'
	nbdinfo_json
	check_info can_multi_conn true
}

@test "nbd: fio on log:|aio:, many requests in flight per connection" {
	local img
	img=$(make_image f2.img 64M)
	start_worker f2 "log:|aio:$img"
	run -0 fio --name=deep --ioengine=nbd --uri="$URI" --rw=randrw \
		--bsrange=512-256k --size=32M --iodepth=128 --verify=crc32c \
		--do_verify=1 --verify_fatal=1 --verify_state_save=0
	assert_output --partial 'err= 0'
	run -0 python3 "$HOSTILE" "$SOCK" pipeline
}

# ---- block status -------------------------------------------------------

@test "nbd: each connection gets a send buffer for whole 1 MiB replies" {
	# As root, SO_SNDBUFFORCE passes net.core.wmem_max (blkstack/sock.h).
	[ "$(id -u)" -eq 0 ] || skip "SO_SNDBUFFORCE needs root"
	start_worker d1 "ram:16M"
	python3 -c 'import socket, sys, time
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
time.sleep(30)' "$SOCK" 3>&- &
	echo "$!" >>"$BATS_TEST_TMPDIR/holders"
	for _ in $(seq 100); do
		[ -z "$(sndbufs "$PID" "$SOCK")" ] || break
		sleep 0.1
	done
	run sndbufs "$PID" "$SOCK"
	assert_success
	[ "${#lines[@]}" -eq 1 ] || fail "expected one connection: $output"
	[ "$output" -ge 4194304 ] || fail "send buffer $output < 4 MiB"
	# One 1 MiB read still comes back whole and right.
	head -c 1048576 /dev/urandom >"$BATS_TEST_TMPDIR/pat"
	nbdcopy "$BATS_TEST_TMPDIR/pat" "$URI"
	nbdcopy "$URI" "$BATS_TEST_TMPDIR/back"
	cmp -n 1048576 "$BATS_TEST_TMPDIR/pat" "$BATS_TEST_TMPDIR/back"
}

@test "nbd: base:allocation: nbdinfo --map shows holes and data" {
	local img
	img=$(make_image sparse.img 16M)
	dd if=/dev/urandom of="$img" bs=1M count=1 seek=4 conv=notrunc \
		status=none
	start_worker s "aio:$img"
	nbdinfo_json
	run -0 info_json contexts
	assert_output '["base:allocation", "qemu:allocation-depth"]'
	run -0 nbdinfo --map "$URI"
	assert_line --regexp '^ +0 +4194304 +3 +hole,zero$'
	assert_line --regexp '^ +4194304 +1048576 +0 +data$'
	assert_line --regexp '^ +5242880 +11534336 +3 +hole,zero$'
	run -0 python3 "$HOSTILE" "$SOCK" block-status
	# ram: knows no holes: no context offered, all data.
	start_worker r ram:8M
	nbdinfo_json
	run -0 info_json contexts
	assert_output '[]'
}

@test "nbd: qemu:allocation-depth: a raw image is depth 1 everywhere" {
	local img
	img=$(make_image depth.img 16M)
	dd if=/dev/urandom of="$img" bs=1M count=1 seek=4 conv=notrunc \
		status=none
	start_worker d "log:|aio:$img"
	# Holes and data alike are the raw file's own: one extent, depth 1.
	run -0 nbdinfo --map=qemu:allocation-depth "$URI"
	assert_line --regexp '^ +0 +16777216 +1 +local$'
	[ "${#lines[@]}" -eq 1 ] || fail "expected one extent: $output"
	# base:allocation is unchanged beside it.
	run -0 nbdinfo --map "$URI"
	assert_line --regexp '^ +4194304 +1048576 +0 +data$'
	# qemu-img map reads both contexts in one connection and agrees.
	run -0 qemu-img map --output=json -f raw "$URI"
	assert_output --partial '"start": 4194304, "length": 1048576, "depth": 0, "present": true, "zero": false, "data": true'
}

# ---- hostile clients ----------------------------------------------------

@test "nbd: hostile clients are dropped alone; the next client is served" {
	local img
	img=$(make_image h.img 16M)
	start_worker h "aio:$img"
	# (The scenarios write below 1M only.)
	run -0 qemu-io -f raw "$URI" -c 'write -P 0x5a 8M 64k'
	run -0 python3 "$HOSTILE" "$SOCK" garbage bad-flags \
		bad-option-magic bad-request-magic huge-write mid-header \
		mid-payload mid-option
	worker_alive
	run -0 python3 "$HOSTILE" "$SOCK" options too-big-option errors \
		past-end simple-replies
	worker_alive
	nbdinfo_json
	check_info export-size 16777216
	run -0 qemu-io -f raw "$URI" -c 'read -P 0x5a 8M 64k'
}

@test "nbd: a hostile client does not block a good one meanwhile" {
	local img pid
	img=$(make_image h2.img 16M)
	start_worker h2 "aio:$img"
	# A client that connects and then says nothing, and one stuck in the
	# middle of a request header (kept open in the background).
	python3 -c '
import socket, sys, time
a = socket.socket(socket.AF_UNIX); a.connect(sys.argv[1])
b = socket.socket(socket.AF_UNIX); b.connect(sys.argv[1])
b.recv(18); b.sendall(b"\0\0\0\3")
b.sendall(b"IHAVEOPT\0\0\0\7\0\0\0\6\0\0")
time.sleep(30)' "$SOCK" 3>&- &
	pid=$!
	sleep 0.5
	run -0 timeout 20 qemu-io -f raw "$URI" -c 'write -P 0x21 0 1M' \
		-c 'read -P 0x21 0 1M'
	run -0 timeout 20 nbdinfo "$URI"
	kill "$pid"
	wait "$pid" || true
	worker_alive
}

# ---- connection limits (issue 11, defect 8) ------------------------------

@test "nbd: idle clients that fill the table lock no one out; idle nbdfuse devices outlive them" {
	local img pat=$IMGDIR/pattern m1=$BATS_TEST_TMPDIR/m1 m2=$BATS_TEST_TMPDIR/m2
	command -v nbdfuse >/dev/null && [ -c /dev/fuse ] ||
		skip "nbdfuse or /dev/fuse is missing"
	img=$(make_image d.img 16M)
	python3 -c 'import sys; sys.stdout.buffer.write(b"\x6d" * (16 << 20))' >"$pat"
	start_worker d "aio:$img"
	run -0 qemu-io -f raw "$URI" -c 'write -P 0x6d 0 16M'
	# The dom0 device, attached before the idlers come; it does no I/O
	# until the end.
	fuse_attach "$m1"
	# 16 clients that finish the handshake and idle, kept open; then
	# rounds of 16 more that come and go, each round checking that a new
	# client is served meanwhile (the old code refused it: the defect).
	hold_start idle-hold
	# One process holds at most 8: the device's 4 and 8 idlers are open.
	run -0 stat_nbd connections
	assert_output 12
	run -0 timeout 60 python3 "$HOSTILE" "$SOCK" idle-flood
	run -0 timeout 20 nbdinfo --size "$URI"
	assert_output 16777216
	# Another process fills the table up; a re-attach of the device is
	# accepted all the same (all four connections), and does its I/O.
	hold_start idle-hold 8
	fuse_attach "$m2"
	run -0 timeout 20 cmp -n 1048576 "$m2/nbd" "$pat"
	run -0 timeout 60 python3 "$HOSTILE" "$SOCK" idle-flood
	# Both devices still serve: none of their connections was evicted
	# (nbdfuse does not reconnect: a lost one would fail these reads).
	run -0 timeout 20 cmp -i 4194304 -n 1048576 "$m1/nbd" "$pat"
	run -0 timeout 20 cmp -i 8388608 -n 1048576 "$m2/nbd" "$pat"
	run -0 stat_nbd evicted
	[ "$output" -gt 0 ] || fail "nothing was evicted: $output"
	run -0 stat_nbd connections
	[ "$output" -le 16 ] || fail "more connections than the table: $output"
	worker_alive
}

@test "nbd: 16 clients that never read their replies: the worker's memory stays bounded, others are served" {
	local img rss before after _
	img=$(make_image nr.img 64M)
	# A short stall timeout (--timeouts: for tests) to see them dropped.
	start_worker nr "aio:$img" --timeouts 0,6000,0
	# 16 clients in two processes (one process gets at most 8), each
	# sending 32 MiB reads and reading nothing.
	hold_start no-read 8
	hold_start no-read 8
	# Wait (at most 20 s) until the worker has stopped taking requests.
	before=-1
	for _ in $(seq 40); do
		after=$(stat_nbd requests)
		[ "$after" = "$before" ] && break
		before=$after
		sleep 0.5
	done
	rss=$(awk '/^VmRSS:/ { print $2 }' "/proc/$PID/status")
	echo "# worker VmRSS with 16 never-reading clients: $rss kB" >&3
	# The old code held 96 MiB per connection: 1.5 GiB.
	[ "$rss" -lt $((160 << 10)) ] || fail "worker RSS $rss kB"
	run -0 stat_nbd buffer_bytes
	[ "$output" -le $((64 << 20)) ] || fail "buffers over the budget: $output"
	# A good client is served meanwhile (a never-reader makes room once
	# it has taken nothing for 2 s: retry, at most 10 times).
	for _ in $(seq 10); do
		timeout 20 qemu-io -f raw "$URI" -c 'read -P 0 0 1M' >/dev/null 2>&1 && break
		sleep 1
	done
	run -0 timeout 20 qemu-io -f raw "$URI" -c 'read -P 0 0 1M'
	# And the stall check drops them (6 s here; at most 60 s of waiting).
	for _ in $(seq 120); do
		[ "$(stat_nbd timed_out)" -ge 8 ] && break
		sleep 0.5
	done
	run -0 stat_nbd timed_out
	[ "$output" -ge 8 ] || fail "only $output clients timed out"
	run -0 timeout 20 qemu-io -f raw "$URI" -c 'read -P 0 0 1M'
	worker_alive
}

@test "nbd: a client that stalls in its handshake or in a request is dropped; an idle one is not" {
	start_worker hs ram:16M --timeouts 500,500,0
	run -0 timeout 20 python3 -c '
import socket, sys, time
sys.path.insert(0, sys.argv[2])
hc = __import__("hostile-client")
idle = hc.Client(sys.argv[1]); idle.greeting(); idle.go()
slow = hc.Client(sys.argv[1])   # says nothing at all
half = hc.Client(sys.argv[1]); half.greeting(); half.go()
half.send(b"\x25\x60\x95\x13\0\0")   # half a request header
for c, what in ((slow, "handshake"), (half, "half a request")):
    if not c.closed_by_server():
        sys.exit("not dropped: " + what)
time.sleep(2)   # four times the stall timeout: idle is no stall
idle.read(0, 4096)
' "$SOCK" "$TOP/tests/nbd"
	run -0 stat_nbd timed_out
	assert_output 2
}

# ---- errors from the chain ----------------------------------------------

@test "nbd: an error: layer gives the client EIO; the worker goes on" {
	start_worker e 'error:ops=write|ram:16M'
	run qemu-io -f raw "$URI" -c 'write -P 0x11 0 4k'
	assert_output --partial 'Input/output error'
	run qemu-io -f raw "$URI" -c 'write -P 0x11 1000 100'
	assert_output --partial 'Input/output error'
	worker_alive
	run -0 qemu-io -f raw "$URI" -c 'read -P 0 0 64k'
	run -0 qemu-io -f raw "$URI" -c 'write -z 0 64k' -c 'flush'
}

# ---- pause (the server's hold) ------------------------------------------

@test "nbd: pause holds client requests; unpause lets them through" {
	local ctl=$BIN/blkstack-ctl qpid
	[ -x "$ctl" ] || skip "blkstack-ctl is not built"
	start_worker p ram:16M
	run -0 "$ctl" --rundir "$RUNDIR" pause --name p
	qemu-io -f raw "$URI" -c 'write -P 0x4e 0 64k' \
		>"$BATS_TEST_TMPDIR/q.out" 2>&1 3>&- &
	qpid=$!
	sleep 1
	# Received and held, not done.
	run -0 "$ctl" --rundir "$RUNDIR" stats --name p --json
	assert_output --partial '"holding":1'
	kill -0 "$qpid" || fail "the write finished while paused"
	run -0 "$ctl" --rundir "$RUNDIR" unpause --name p
	wait "$qpid" || fail "the held write failed: $(cat "$BATS_TEST_TMPDIR/q.out")"
	run -0 qemu-io -f raw "$URI" -c 'read -P 0x4e 0 64k'
}

@test "nbd: pause and unpause in the middle of an fio run: fio finishes clean" {
	local ctl=$BIN/blkstack-ctl img fpid
	img=$(make_image fp.img 64M)
	start_worker fp "log:|aio:$img"
	# Rate-limited so that the run lasts a few seconds around the pause.
	fio --name=paused --ioengine=nbd --uri="$URI" --rw=randrw --bs=4k \
		--size=16M --iodepth=8 --rate_iops=1500 --verify=crc32c \
		--do_verify=1 --verify_fatal=1 --verify_state_save=0 \
		>"$BATS_TEST_TMPDIR/fio.out" 2>&1 3>&- &
	fpid=$!
	sleep 1
	run -0 "$ctl" --rundir "$RUNDIR" pause --name fp
	sleep 1
	run -0 "$ctl" --rundir "$RUNDIR" stats --name fp --json
	stats=$output
	run -0 "$ctl" --rundir "$RUNDIR" unpause --name fp
	wait "$fpid" || fail "fio failed: $(cat "$BATS_TEST_TMPDIR/fio.out")"
	run -0 grep -c 'err= 0' "$BATS_TEST_TMPDIR/fio.out"
	# While paused, nothing was in flight and fio's requests were held.
	python3 -c '
import json, sys
s = json.loads(sys.argv[1])
nbd = s["nbd"]
assert s["worker"]["state"] == "paused", s["worker"]
assert nbd["in_flight"] == 0, nbd
assert nbd["held"] > 0 and nbd["holding"] > 0, nbd
' "$stats"
}

# ---- shutdown -----------------------------------------------------------

@test "nbd: SIGTERM with busy clients: the worker drains and exits 0" {
	local img fpid
	img=$(make_image t.img 64M)
	start_worker t "aio:$img"
	fio --name=busy --ioengine=nbd --uri="$URI" --rw=randrw --bs=64k \
		--size=64M --numjobs=2 --iodepth=32 --time_based --runtime=30 \
		>/dev/null 2>&1 3>&- &
	fpid=$!
	sleep 1
	kill -TERM "$PID"
	wait_exit "$PID" || fail "the worker exited with status $?"
	run grep -c stopped "$BATS_TEST_TMPDIR/t.log"
	assert_output 1
	kill "$fpid" 2>/dev/null || true
	wait "$fpid" || true
	[ ! -e "$SOCK" ] || fail "nbd.sock left behind"
}
