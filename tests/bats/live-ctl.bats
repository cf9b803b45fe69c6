#!/usr/bin/env bats
# The live chain commands of the control socket and of blkstack-ctl
# (docs/control-protocol.txt: snapshot, reopen, commit, stream, cancel,
# DIR/NAME/chain): argument validation, the happy paths and the failure
# paths, with the real worker on real images.  The fio-under-load matrix
# is tests/bats/live.bats.

load helpers

setup() {
	CTL=$BIN/blkstack-ctl
	RUNDIR=$BATS_TEST_TMPDIR/run
	export BLKSTACK_RUNDIR=$RUNDIR
	# aio: and qcow2: open images with O_DIRECT, which tmpfs refuses.
	IMGDIR=$BATS_TEST_TMPDIR
	if [ "$(stat -f -c %T "$BATS_TEST_TMPDIR")" = tmpfs ]; then
		IMGDIR=$(mktemp -d /var/tmp/blkstack-live-ctl.XXXXXX)
	fi
}

teardown() {
	local d pid
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

create() {
	run "$CTL" create --name "$1" --chain "$2"
	assert_success
	assert_output "$RUNDIR/$1/nbd.sock"
}

qio() {
	local name=$1 args=() c
	shift
	for c in "$@"; do
		args+=(-c "$c")
	done
	timeout 60 qemu-io -f raw "${args[@]}" \
		"nbd+unix:///?socket=$RUNDIR/$name/nbd.sock"
}

jq_py() {
	python3 -c 'import json, sys
d = json.loads(sys.argv[1])
v = eval(sys.argv[2])
print(json.dumps(v) if isinstance(v, (dict, list, tuple, bool)) or v is None else v)' "$1" "$2"
}

# raw NAME LINE...: each line over ctl.sock, each reply printed.
raw() {
	local sock=$RUNDIR/$1/ctl.sock
	shift
	python3 - "$sock" "$@" <<'PY'
import socket, sys
s = socket.socket(socket.AF_UNIX)
s.settimeout(30)
s.connect(sys.argv[1])
f = s.makefile("rwb")
for line in sys.argv[2:]:
    f.write(line.encode() + b"\n")
    f.flush()
    sys.stdout.write(f.readline().decode())
PY
}

info_of() {
	local json
	json=$("$CTL" info --name "$1" --json) || return 1
	jq_py "$json" "$2"
}

# A qcow2 base of 64 MiB with 1 MiB of 0x11 at 0.
make_base() {
	qemu-img create -q -f qcow2 "$IMGDIR/base.qcow2" 64M
	qemu-io -f qcow2 -c 'write -P 0x11 0 1M' "$IMGDIR/base.qcow2" >/dev/null
}

@test "live-ctl: blkstack-ctl usage errors of the live commands exit 2" {
	run "$CTL" snapshot --name vm1
	assert_failure 2
	assert_output --partial "needs --overlay NEW"
	run "$CTL" snapshot --name vm1 --overlay rel.qcow2
	assert_failure 2
	assert_output --partial "absolute path"
	run "$CTL" snapshot --name vm1 --overlay /x.qcow2 --format raw
	assert_failure 2
	assert_output --partial "qcow2 or vhd"
	run "$CTL" reopen --name vm1
	assert_failure 2
	assert_output --partial "needs --chain CHAIN"
	run "$CTL" stream --name vm1 --top /x
	assert_failure 2
	run "$CTL" cancel --name vm1 --no-wait
	assert_failure 2
	run "$CTL" commit --name vm1 --top '/a b'
	assert_failure 2
	assert_output --partial "white space"
}

@test "live-ctl: the raw protocol validates every argument" {
	make_base
	create vm1 "qcow2:$IMGDIR/base.qcow2"
	touch "$IMGDIR/exists.qcow2"
	run raw vm1 snapshot 'snapshot rel.qcow2' \
		"snapshot $IMGDIR/n.qcow2 raw" "snapshot $IMGDIR/exists.qcow2" \
		"snapshot $IMGDIR/a b c" reopen 'reopen nope:x' \
		'commit a b c' 'stream x' cancel "commit /no/such.qcow2" \
		commit stream info
	assert_success
	assert_line --index 0 --partial '"error":"vm1: usage: snapshot OVERLAY'
	assert_line --index 1 --partial 'absolute path'
	assert_line --index 2 --partial "format 'raw': qcow2 or vhd"
	assert_line --index 3 --partial 'exists already","errno":"EEXIST"'
	assert_line --index 4 --partial '"errno":"EINVAL"'
	assert_line --index 5 --partial '"error":"vm1: usage: reopen CHAIN"'
	assert_line --index 6 --partial '"error":"vm1: reopen: '
	assert_line --index 6 --partial '"errno":"EINVAL"'
	assert_line --index 7 --partial 'usage: commit [TOP [BASE]]'
	assert_line --index 8 --partial 'stream takes no arguments'
	assert_line --index 9 --partial '"errno":"ENOENT"'
	assert_line --index 10 --partial 'is not an image of the chain'
	assert_line --index 11 --partial 'has no image below it'
	assert_line --index 12 --partial 'stream: '
	assert_line --index 12 --partial 'has no backing image'
	run jq_py "${lines[13]}" '(d["ok"], d["job"], d["last_job"])'
	assert_output '[true, null, null]'
	# Nothing was created, nothing changed.
	[ ! -e "$IMGDIR/n.qcow2" ]
	[ ! -e "$RUNDIR/vm1/chain" ]
	run info_of vm1 'd["chain"]'
	assert_output "qcow2:$IMGDIR/base.qcow2"
}

@test "live-ctl: snapshot of a qcow2 chain with log: (the chain file, the data, the mark)" {
	make_base
	create vm1 "log:|qcow2:$IMGDIR/base.qcow2"
	run qio vm1 'write -P 0x22 1M 1M'
	assert_success
	run "$CTL" snapshot --name vm1 --overlay "$IMGDIR/s1.qcow2" --json
	assert_success
	run jq_py "$output" '(d["ok"], d["chain"], d["held_us"] >= d["held_ms"] * 1000)'
	assert_output "[true, \"log:|qcow2:$IMGDIR/s1.qcow2\", true]"
	run cat "$RUNDIR/vm1/chain"
	assert_output "log:|qcow2:$IMGDIR/s1.qcow2"
	run info_of vm1 '(d["chain"], d["layers"])'
	assert_output "[\"log:|qcow2:$IMGDIR/s1.qcow2\", [\"log\", \"qcow2\", \"qcow2\"]]"
	run qemu-img info "$IMGDIR/s1.qcow2"
	assert_output --partial "backing file: $IMGDIR/base.qcow2"
	# Writes go to the overlay; the old top keeps its data, unchanged.
	run qio vm1 'write -P 0x33 2M 1M' 'read -P 0x11 0 1M' 'read -P 0x22 1M 1M' \
		'read -P 0x33 2M 1M'
	assert_success
	refute_output --partial 'Pattern verification failed'
	run qemu-io -r -U -f qcow2 -c 'read -P 0x22 1M 1M' -c 'read -P 0 2M 1M' \
		"$IMGDIR/base.qcow2"
	assert_success
	refute_output --partial 'Pattern verification failed'
	# The dirty log went on across the switch; the mark lets a clear
	# without a range drop only the frozen set (the old top's blocks).
	run "$CTL" dirty --name vm1
	assert_success
	assert_output --partial "1048576 2097152"
	run raw vm1 clear-dirty
	assert_line --index 0 --partial '"ok":true'
	run "$CTL" dirty --name vm1
	assert_output "2097152 1048576"
	# A graceful stop removes the chain file with the other state.
	run "$CTL" destroy --name vm1
	assert_success
	[ ! -e "$RUNDIR/vm1/chain" ]
	run qemu-img check "$IMGDIR/s1.qcow2"
	assert_success
	run qemu-img check "$IMGDIR/base.qcow2"
	assert_success
}

@test "live-ctl: snapshot of a raw image makes a qcow2 overlay; a SIGKILLed worker comes back on it" {
	truncate -s 16M "$IMGDIR/disk.raw"
	create vm1 "aio:$IMGDIR/disk.raw"
	run qio vm1 'write -P 0x44 0 64k'
	assert_success
	run "$CTL" snapshot --name vm1 --overlay "$IMGDIR/top.qcow2"
	assert_success
	assert_output --regexp "^snapshot: serving qcow2:$IMGDIR/top.qcow2 \(I/O held [0-9]+ us\)$"
	run qio vm1 'write -P 0x55 64k 64k'
	assert_success
	pid=$(cat "$RUNDIR/vm1/pid")
	kill -9 "$pid"
	# The supervisor starts a new worker with the same --chain, which
	# names the old image: the chain file wins.
	new=
	for _ in $(seq 300); do
		new=$(info_of vm1 'd["pid"]' 2>/dev/null) || new=
		[ -n "$new" ] && [ "$new" != "$pid" ] && break
		sleep 0.1
	done
	[ -n "$new" ] && [ "$new" != "$pid" ]
	run info_of vm1 'd["chain"]'
	assert_output "qcow2:$IMGDIR/top.qcow2"
	run qio vm1 'read -P 0x44 0 64k' 'read -P 0x55 64k 64k'
	assert_success
	refute_output --partial 'Pattern verification failed'
	run cmp -n 65536 "$IMGDIR/disk.raw" <(head -c 65536 /dev/zero | tr '\0' 'D')
	assert_success
}

@test "live-ctl: snapshot failures leave the chain serving" {
	make_base
	create vm1 "qcow2:$IMGDIR/base.qcow2"
	run "$CTL" snapshot --name vm1 --overlay "$IMGDIR/no/such/dir.qcow2"
	assert_failure 1
	assert_output --partial "snapshot: create the overlay"
	# A VHD overlay needs a VHD below it.
	run "$CTL" snapshot --name vm1 --overlay "$IMGDIR/s.vhd" --format vhd
	assert_failure 1
	[ ! -e "$IMGDIR/s.vhd" ]
	run info_of vm1 'd["chain"]'
	assert_output "qcow2:$IMGDIR/base.qcow2"
	run qio vm1 'write -P 0x66 0 64k' 'read -P 0x66 0 64k'
	assert_success
	refute_output --partial 'Pattern verification failed'
	[ ! -e "$RUNDIR/vm1/chain" ]
	run "$CTL" create --name ro --chain "qcow2:$IMGDIR/base.qcow2" --read-only
	assert_success
	run "$CTL" snapshot --name ro --overlay "$IMGDIR/ro.qcow2" --json
	assert_failure 1
	assert_output --partial "read-only"
	[ ! -e "$IMGDIR/ro.qcow2" ]
}

@test "live-ctl: reopen swaps to a copy; another size or a bad chain is refused" {
	truncate -s 16M "$IMGDIR/a.raw" "$IMGDIR/b.raw"
	truncate -s 8M "$IMGDIR/small.raw"
	create vm1 "aio:$IMGDIR/a.raw"
	run qio vm1 'write -P 0x77 0 64k'
	assert_success
	run "$CTL" pause --name vm1
	assert_success
	cp "$IMGDIR/a.raw" "$IMGDIR/b.raw"
	run "$CTL" unpause --name vm1
	assert_success
	run "$CTL" reopen --name vm1 --chain "aio:$IMGDIR/small.raw" --json
	assert_failure 1
	assert_output --partial "size"
	run "$CTL" reopen --name vm1 --chain "aio:$IMGDIR/missing.raw"
	assert_failure 1
	run info_of vm1 'd["chain"]'
	assert_output "aio:$IMGDIR/a.raw"
	[ ! -e "$RUNDIR/vm1/chain" ]
	run "$CTL" reopen --name vm1 --chain "aio:$IMGDIR/b.raw" --json
	assert_success
	run jq_py "$output" '(d["ok"], d["chain"])'
	assert_output "[true, \"aio:$IMGDIR/b.raw\"]"
	run cat "$RUNDIR/vm1/chain"
	assert_output "aio:$IMGDIR/b.raw"
	run qio vm1 'write -P 0x78 64k 64k' 'read -P 0x77 0 64k'
	assert_success
	refute_output --partial 'Pattern verification failed'
	# The write went to b, not a.
	run qemu-io -r -f raw -c 'read -P 0x78 64k 64k' "$IMGDIR/b.raw"
	refute_output --partial 'Pattern verification failed'
	run qemu-io -r -f raw -c 'read -P 0 64k 64k' "$IMGDIR/a.raw"
	refute_output --partial 'Pattern verification failed'
}

@test "live-ctl: commit and stream are refused while paused; cancel without a job" {
	make_base
	qemu-img create -q -f qcow2 -b "$IMGDIR/base.qcow2" -F qcow2 "$IMGDIR/top.qcow2"
	create vm1 "qcow2:$IMGDIR/top.qcow2"
	run "$CTL" cancel --name vm1
	assert_failure 1
	assert_output --partial "no job is running"
	run "$CTL" pause --name vm1
	assert_success
	run "$CTL" commit --name vm1 --json
	assert_failure 1
	assert_output --partial "paused"
	run "$CTL" stream --name vm1
	assert_failure 1
	assert_output --partial "paused"
	run "$CTL" commit --name vm1 --base "$IMGDIR/nope.qcow2"
	assert_failure 1
	run "$CTL" unpause --name vm1
	assert_success
	run "$CTL" commit --name vm1 --top "$IMGDIR/base.qcow2"
	assert_failure 1
	assert_output --partial "has no image below it"
}

@test "live-ctl: commit of the top into its base, then the chain file names the base" {
	make_base
	qemu-img create -q -f qcow2 -b "$IMGDIR/base.qcow2" -F qcow2 "$IMGDIR/top.qcow2"
	create vm1 "log:|qcow2:$IMGDIR/top.qcow2"
	run qio vm1 'write -P 0x22 1M 1M'
	assert_success
	run "$CTL" commit --name vm1 --json
	assert_success
	run jq_py "$output" '(d["ok"], d["job"], d["result"])'
	assert_output '[true, "commit", "ok"]'
	run info_of vm1 '(d["chain"], d["job"], d["last_job"]["result"])'
	assert_output "[\"log:|qcow2:$IMGDIR/base.qcow2\", null, \"ok\"]"
	run cat "$RUNDIR/vm1/chain"
	assert_output "log:|qcow2:$IMGDIR/base.qcow2"
	run qio vm1 'read -P 0x11 0 1M' 'read -P 0x22 1M 1M'
	refute_output --partial 'Pattern verification failed'
	run "$CTL" destroy --name vm1
	assert_success
	run qemu-io -r -f qcow2 -c 'read -P 0x22 1M 1M' "$IMGDIR/base.qcow2"
	refute_output --partial 'Pattern verification failed'
	run qemu-img check "$IMGDIR/base.qcow2"
	assert_success
}

@test "live-ctl: stream pulls the backing data up; not a tty: lines, then done" {
	make_base
	qemu-img create -q -f qcow2 -b "$IMGDIR/base.qcow2" -F qcow2 "$IMGDIR/top.qcow2"
	create vm1 "qcow2:$IMGDIR/top.qcow2"
	run "$CTL" stream --name vm1
	assert_success
	assert_output --regexp "stream: done, .* copied"
	run info_of vm1 '(d["layers"], d["last_job"]["kind"], d["last_job"]["result"])'
	assert_output '[["qcow2"], "stream", "ok"]'
	run "$CTL" destroy --name vm1
	assert_success
	run qemu-img info "$IMGDIR/top.qcow2"
	refute_output --partial "backing file"
	run qemu-io -r -f qcow2 -c 'read -P 0x11 0 1M' "$IMGDIR/top.qcow2"
	refute_output --partial 'Pattern verification failed'
}

@test "live-ctl: after a snapshot of a chain whose top is the sink, a new NBD client may write" {
	# The top layer itself changes here (no filter above the sink): the
	# export must read the chain's info anew, not keep the old top's.
	qemu-img create -q -f qcow2 "$IMGDIR/q.qcow2" 16M
	create vm1 "qcow2:$IMGDIR/q.qcow2"
	run "$CTL" snapshot --name vm1 --overlay "$IMGDIR/q1.qcow2"
	assert_success
	run info_of vm1 'd["read_only"]'
	assert_output false
	run qio vm1 'write -P 0x5a 0 64k' 'read -P 0x5a 0 64k'
	assert_success
	refute_output --partial 'Pattern verification failed'
}
