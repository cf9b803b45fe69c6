#!/usr/bin/env bats
# helpers/hotplug/hp-dev.h (hp-dev.c and its dev-*.c): dom0 block devices
# on a worker's NBD socket, through build/tests/hp-dev-tool.  Only the loop
# fallback (blkstack-fuse + loop) runs end to end here: the test machines have no
# nbd kernel module, so the kernel path is tested up to the netlink call
# (handshake, clean failure).

load helpers

TOOL=$TOP/build/tests/hp-dev-tool

setup() {
	img_dir
	WORKER_RUNDIR=$BATS_TEST_TMPDIR/run
	STATE=$BATS_TEST_TMPDIR/state
	mkdir -m 0700 "$STATE"
	export BLKSTACK_DEVICE=loop
}

# Whatever a failed test left: the loop devices it made (listed in
# $BATS_TEST_TMPDIR/made; after a lazy unmount the backing file reads
# "/nbd"), loop devices on our fuse files, our fuse mounts (blkstack-fuse exits
# once its mount is gone), then the workers.
teardown() {
	local name back mnt dev dir
	if [ -f "$BATS_TEST_TMPDIR/made" ]; then
		while read -r dev dir; do
			back=$(cat "/sys/block/${dev#/dev/}/loop/backing_file" \
				2>/dev/null) || continue
			case $back in
			"$dir/nbd" | /nbd) losetup -d "$dev" || true ;;
			esac
		done <"$BATS_TEST_TMPDIR/made"
	fi
	while read -r name back; do
		case $back in
		"$BATS_TEST_TMPDIR"/*) losetup -d "$name" || true ;;
		esac
	done < <(losetup -l -n -O NAME,BACK-FILE 2>/dev/null)
	while read -r mnt; do
		umount -l "$mnt" || true
	done < <(awk -v d="$BATS_TEST_TMPDIR/" \
		'index($5, d) == 1 { print $5 }' /proc/self/mountinfo)
	worker_teardown
}

# made RECORD: note the device for teardown.
made() {
	echo "$(field "$1" path) $(field "$1" fuse_dir)" >>"$BATS_TEST_TMPDIR/made"
}

# mounted DIR: DIR is a mountpoint now.
mounted() {
	awk -v d="$1" '$5 == d { f = 1 } END { exit !f }' /proc/self/mountinfo
}

# A worker on a fresh 64 MiB image IMG_DIR/NAME.img.
start_disk() {
	truncate -s 64M "$IMG_DIR/$1.img"
	worker_start "$1" "aio:$IMG_DIR/$1.img"
}

# attach [--ro]: attach to $NBD_SOCK; sets REC, DEV, FUSE_PID, FUSE_DIR.
attach() {
	run -0 "$TOOL" attach "$@" "$NBD_SOCK" "$STATE"
	REC=$output
	made "$REC"
	DEV=$(field "$REC" path)
	FUSE_PID=$(field "$REC" fuse_pid)
	FUSE_DIR=$(field "$REC" fuse_dir)
}

# stage: stage blkstack-fuse for $NBD_SOCK; sets STAGE, SPID, SDIR.
stage() {
	run -0 "$TOOL" stage "$NBD_SOCK" "$STATE"
	STAGE=$output
	made "$STAGE"
	SPID=$(field "$STAGE" fuse_pid)
	SDIR=$(field "$STAGE" fuse_dir)
}

# Everything an attach made is gone: DEV unconfigured (no loop/ in
# sysfs), the mount, blkstack-fuse, the mountpoint and its log.
assert_all_gone() {
	assert_not_exists "/sys/block/${DEV#/dev/}/loop"
	run mounted "$FUSE_DIR"
	assert_failure
	gone "$FUSE_PID"
	assert_not_exists "$FUSE_DIR"
	assert_not_exists "$FUSE_DIR.log"
}

@test "dev: attach gives a loop device of the export's size; writes reach the image; detach removes it all" {
	start_disk d1
	# An inherited descriptor (a toolstack's pipe) must not reach blkstack-fuse.
	attach 7>"$BATS_TEST_TMPDIR/inherited"
	run ls -l "/proc/$FUSE_PID/fd"
	refute_output --partial inherited
	[[ $DEV =~ ^/dev/loop[0-9]+$ ]]
	[ -b "$DEV" ]
	run blockdev --getsize64 "$DEV"
	assert_output 67108864
	# The record's numbers are the node's.
	run stat -c '%t:%T' "$DEV"
	assert_output "$(printf '%x:%x' "$(field "$REC" major)" "$(field "$REC" minor)")"
	# Backed by our fuse file, with direct I/O.
	run cat "/sys/block/${DEV#/dev/}/loop/backing_file"
	assert_output "$FUSE_DIR/nbd"
	run cat "/sys/block/${DEV#/dev/}/loop/dio"
	assert_output 1
	[[ $FUSE_DIR == "$STATE"/fuse-* ]]
	mounted "$FUSE_DIR"
	[ "$(readlink "/proc/$FUSE_PID/exe")" = "$(realpath "$TOP/build/bin/blkstack-fuse")" ]

	head -c 4096 /dev/urandom >"$BATS_TEST_TMPDIR/pat"
	dd if="$BATS_TEST_TMPDIR/pat" of="$DEV" bs=4096 seek=256 oflag=direct \
		status=none
	cmp -n 4096 "$BATS_TEST_TMPDIR/pat" "$IMG_DIR/d1.img" 0 1048576

	run -0 "$TOOL" detach "$STATE" "$REC"
	assert_all_gone
	run -0 "$TOOL" detach "$STATE" "$REC"
	assert_output ""
}

@test "dev: a read-only attach refuses writes" {
	start_disk d1
	printf 'original' | dd of="$IMG_DIR/d1.img" conv=notrunc status=none
	attach --ro
	run blockdev --getro "$DEV"
	assert_output 1
	run dd if=/dev/zero of="$DEV" bs=4096 count=1 oflag=direct status=none
	assert_failure
	run head -c 8 "$IMG_DIR/d1.img"
	assert_output original
	run -0 "$TOOL" detach "$STATE" "$REC"
	assert_all_gone
}

@test "dev: detach after blkstack-fuse died (dead fuse_pid, device still there)" {
	start_disk d1
	attach
	kill -KILL "$FUSE_PID"
	while ! gone "$FUSE_PID"; do sleep 0.1; done
	run -0 "$TOOL" detach "$STATE" "$REC"
	assert_all_gone
	run -0 "$TOOL" detach "$STATE" "$REC"
}

@test "dev: staged attach: prepare's blkstack-fuse, add's loop device; each detach frees its own" {
	start_disk d1
	stage
	[ "$(field "$STAGE" path)" = "" ]
	[ "$(field "$STAGE" staged)" = 0 ]
	mounted "$SDIR"
	run -0 "$TOOL" staged-ok "$STATE" "$STAGE"

	run -0 "$TOOL" attach-staged "$STATE" "$STAGE"
	REC=$output
	made "$REC"
	DEV=$(field "$REC" path)
	[ "$(field "$REC" staged)" = 1 ]
	[ "$(field "$REC" fuse_pid)" = "$SPID" ]
	run cat "/sys/block/${DEV#/dev/}/loop/backing_file"
	assert_output "$SDIR/nbd"
	run cat "/sys/block/${DEV#/dev/}/loop/dio"
	assert_output 1
	head -c 4096 /dev/urandom >"$BATS_TEST_TMPDIR/pat"
	dd if="$BATS_TEST_TMPDIR/pat" of="$DEV" bs=4096 seek=256 oflag=direct \
		status=none
	cmp -n 4096 "$BATS_TEST_TMPDIR/pat" "$IMG_DIR/d1.img" 0 1048576

	# A read-only device on the same (writable) stage refuses writes.
	run -0 "$TOOL" attach-staged --ro "$STATE" "$STAGE"
	RO=$output
	made "$RO"
	ROD=$(field "$RO" path)
	run blockdev --getro "$ROD"
	assert_output 1
	run dd if=/dev/zero of="$ROD" bs=4096 count=1 oflag=direct status=none
	assert_failure
	cmp -n 4096 "$BATS_TEST_TMPDIR/pat" "$ROD" 0 1048576

	# The device's detach leaves the stage serving ...
	run -0 "$TOOL" detach "$STATE" "$REC"
	assert_not_exists "/sys/block/${DEV#/dev/}/loop"
	run -0 "$TOOL" detach "$STATE" "$REC"
	run -0 "$TOOL" detach "$STATE" "$RO"
	assert_not_exists "/sys/block/${ROD#/dev/}/loop"
	mounted "$SDIR"
	kill -0 "$SPID"
	run -0 "$TOOL" staged-ok "$STATE" "$STAGE"
	# ... and the stage's detach ends it.
	run -0 "$TOOL" detach "$STATE" "$STAGE"
	run mounted "$SDIR"
	assert_failure
	gone "$SPID"
	assert_not_exists "$SDIR"
	assert_not_exists "$SDIR.log"
	run -1 "$TOOL" staged-ok "$STATE" "$STAGE"
	run -1 "$TOOL" attach-staged "$STATE" "$STAGE"
	assert_output --partial "$SDIR/nbd: No such file or directory"
	run -0 "$TOOL" detach "$STATE" "$STAGE"
}

@test "dev: a stage whose blkstack-fuse died is not usable, and its detach cleans up" {
	start_disk d1
	stage
	kill -KILL "$SPID"
	while ! gone "$SPID"; do sleep 0.1; done
	run -1 "$TOOL" staged-ok "$STATE" "$STAGE"
	run -0 "$TOOL" detach "$STATE" "$STAGE"
	run mounted "$SDIR"
	assert_failure
	assert_not_exists "$SDIR"
	# A stage of the kernel NBD mechanism is nothing at all.
	run -0 env BLKSTACK_DEVICE=nbd "$TOOL" stage "$NBD_SOCK" "$STATE"
	assert_output "mech=nbd path= major=0 minor=0 staged=0 fuse_pid=0 fuse_dir="
	run -1 "$TOOL" staged-ok "$STATE" "$output"
	run ls -A "$STATE"
	assert_output ""
}

@test "dev: detach of an attach killed before the loop device (blkstack-fuse only)" {
	start_disk d1
	dir=$STATE/fuse-manual
	mkdir "$dir"
	"$TOP/build/bin/blkstack-fuse" --socket "$NBD_SOCK" --mount "$dir" \
		--ready-fd 3 3>"$BATS_TEST_TMPDIR/ready" </dev/null >/dev/null 2>&1 &
	pid=$!
	timeout 10 sh -c 'until [ -s "$1" ]; do sleep 0.1; done' sh \
		"$BATS_TEST_TMPDIR/ready"
	[ "$(cat "$BATS_TEST_TMPDIR/ready")" = ok ]
	run -0 "$TOOL" detach "$STATE" \
		"mech=loop path= major=0 minor=0 staged=0 fuse_pid=$pid fuse_dir=$dir"
	wait "$pid" || true
	gone "$pid"
	run mounted "$dir"
	assert_failure
	assert_not_exists "$dir"
	# And a record of nothing at all.
	run -0 "$TOOL" detach "$STATE" \
		"mech=loop path= major=0 minor=0 staged=0 fuse_pid=0 fuse_dir="
}

@test "dev: a stale record leaves other people's devices and processes alone" {
	start_disk d1
	attach
	# Someone else's loop device and process, named by a stale record.
	truncate -s 1M "$BATS_TEST_TMPDIR/other.img"
	other=$(losetup --find --show "$BATS_TEST_TMPDIR/other.img")
	sleep 1000 &
	sleeper=$!
	n=${other#/dev/loop}
	run -0 "$TOOL" detach "$STATE" \
		"mech=loop path=$other major=7 minor=$n staged=0 fuse_pid=$sleeper fuse_dir=$STATE/fuse-stale"
	run cat "/sys/block/loop$n/loop/backing_file"
	assert_output "$BATS_TEST_TMPDIR/other.img"
	kill -0 "$sleeper"
	kill "$sleeper"
	losetup -d "$other"
	# Our own device was left too (the record did not name it) ...
	mounted "$FUSE_DIR"
	[ -b "$DEV" ]
	run cat "/sys/block/${DEV#/dev/}/loop/backing_file"
	assert_output "$FUSE_DIR/nbd"
	# ... and the right record still detaches it.
	run -0 "$TOOL" detach "$STATE" "$REC"
	assert_all_gone
}

@test "dev: a failed attach leaves nothing behind" {
	run -1 "$TOOL" attach "$BATS_TEST_TMPDIR/no.sock" "$STATE"
	assert_output --partial "blkstack-fuse on $BATS_TEST_TMPDIR/no.sock: NBD connection to $BATS_TEST_TMPDIR/no.sock: connect"
	assert_output --partial "No such file or directory"
	run ls -A "$STATE"
	assert_output ""
}

@test "dev: mechanism from BLKSTACK_DEVICE, then the configuration file" {
	run -1 env BLKSTACK_DEVICE=bogus "$TOOL" choose
	assert_output --partial 'BLKSTACK_DEVICE="bogus": unknown device mechanism'
	run -1 env BLKSTACK_DEVICE=bogus "$TOOL" attach /nonexistent "$STATE"
	run -0 env BLKSTACK_DEVICE=loop "$TOOL" choose
	assert_output loop

	conf=$BATS_TEST_TMPDIR/blkstack.conf
	unset BLKSTACK_DEVICE
	printf '# comment\nother = x\n device =  nbd \n' >"$conf"
	run -0 env BLKSTACK_CONF="$conf" "$TOOL" choose
	assert_output nbd
	printf 'device = auto\n' >"$conf"
	run -0 env BLKSTACK_CONF="$conf" "$TOOL" choose
	# auto: kernel NBD where the nbd module is (or loads), else the
	# worker's FUSE file where it outlives a crash (supervised workers,
	# the default, on Linux 6.9+), else loop.
	want=loop
	if kernel_can_resend; then
		want=fuse
	fi
	if [ -d /sys/module/nbd ] || modprobe -q nbd 2>/dev/null; then
		want=nbd
	fi
	assert_output "$want"
	# Unsupervised, a crash would end the worker's file: not fuse.
	if [ "$want" = fuse ]; then
		printf 'device = auto\nsupervise = no\n' >"$conf"
		run -0 env BLKSTACK_CONF="$conf" "$TOOL" choose
		assert_output loop
		printf 'device = fuse\nsupervise = no\n' >"$conf"
		run -0 env BLKSTACK_CONF="$conf" "$TOOL" choose
		assert_output fuse
	fi
	printf 'device = auto\n' >"$conf"
	printf '\ndevice = floppy\n' >"$conf"
	run -1 env BLKSTACK_CONF="$conf" "$TOOL" choose
	assert_output --partial "$conf:2: unknown device mechanism \"floppy\""
	run -0 env BLKSTACK_CONF="$BATS_TEST_TMPDIR/missing.conf" "$TOOL" choose
	assert_output "$want"
	# The environment wins over the file.
	run -0 env BLKSTACK_CONF="$conf" BLKSTACK_DEVICE=loop "$TOOL" choose
	assert_output loop
}

@test "dev: the NBD handshake for the kernel path gets the export's size and flags" {
	start_disk d1
	run -0 "$TOOL" handshake "$NBD_SOCK"
	assert_output --regexp '^size=67108864 flags=0x[0-9a-f]+ min_block=[0-9]+$'
	flags=$(sed 's/.*flags=\(0x[0-9a-f]*\).*/\1/' <<<"$output")
	# NBD_FLAG_HAS_FLAGS and SEND_FLUSH set, READ_ONLY clear.
	[ $((flags & 0x1)) -ne 0 ]
	[ $((flags & 0x4)) -ne 0 ]
	[ $((flags & 0x2)) -eq 0 ]

	worker_start ro "aio:$IMG_DIR/d1.img" --read-only
	run -0 "$TOOL" handshake "$NBD_SOCK"
	flags=$(sed 's/.*flags=\(0x[0-9a-f]*\).*/\1/' <<<"$output")
	[ $((flags & 0x2)) -ne 0 ]

	# Something that is not an NBD server.
	python3 -c 'import socket,sys
s = socket.socket(socket.AF_UNIX); s.bind(sys.argv[1]); s.listen(1)
c, _ = s.accept(); c.sendall(b"HELLO, NOT NBD AT ALL"); c.close()' \
		"$BATS_TEST_TMPDIR/junk.sock" &
	while [ ! -S "$BATS_TEST_TMPDIR/junk.sock" ]; do sleep 0.05; done
	run -1 "$TOOL" handshake "$BATS_TEST_TMPDIR/junk.sock"
	assert_output --partial "not a fixed newstyle NBD server"
}

@test "dev: without the nbd module, an nbd attach fails cleanly after the handshake" {
	[ ! -e /sys/module/nbd ] || skip "the nbd module is loaded here"
	start_disk d1
	run -1 env BLKSTACK_DEVICE=nbd "$TOOL" attach "$NBD_SOCK" "$STATE"
	assert_output --partial 'generic netlink family "nbd"'
	assert_output --partial "is the nbd kernel module loaded?"
	run ls -A "$STATE"
	assert_output ""
	# A record of an nbd device that does not exist detaches as gone.
	run -0 "$TOOL" detach "$STATE" \
		"mech=nbd path=/dev/nbd7 major=43 minor=224 staged=0 fuse_pid=0 fuse_dir="
}

@test "dev: reconnect and give-up find no kernel NBD device of a worker that has none" {
	start_disk d1
	# No /dev/nbdN serves this socket (without the module there is none at
	# all): both succeed having done nothing, and the worker is untouched.
	run -0 "$TOOL" reconnect "$NBD_SOCK"
	assert_output "reconnected=0"
	run -0 "$TOOL" fail "$NBD_SOCK"
	run -0 "$TOOL" handshake "$NBD_SOCK"
}

@test "dev: a bad reconnect-timeout or nbd-io-timeout fails an nbd attach before any device" {
	start_disk d1
	conf=$BATS_TEST_TMPDIR/blkstack.conf
	printf 'device = nbd\nreconnect-timeout = soon\n' >"$conf"
	run -1 env BLKSTACK_CONF="$conf" BLKSTACK_DEVICE=nbd "$TOOL" attach "$NBD_SOCK" "$STATE"
	assert_output --partial "$conf:2: reconnect-timeout wants a number of seconds, 0 to 86400"
	printf 'nbd-io-timeout = 0\n' >"$conf"
	run -1 env BLKSTACK_CONF="$conf" BLKSTACK_DEVICE=nbd "$TOOL" attach "$NBD_SOCK" "$STATE"
	assert_output --partial "$conf:1: nbd-io-timeout wants a number of seconds, 1 to 86400"
	run ls -A "$STATE"
	assert_output ""
}

@test "dev: records from outside are checked strictly" {
	ok="mech=loop path=/dev/loop3 major=7 minor=3 staged=0 fuse_pid=12 fuse_dir=$STATE/fuse-ab"
	run -0 "$TOOL" parse "$STATE" "$ok"
	assert_output "$ok"
	for bad in \
		"mech=loop path=/dev/sda major=7 minor=3 staged=0 fuse_pid=12 fuse_dir=$STATE/fuse-ab" \
		"mech=loop path=/dev/nbd3 major=7 minor=3 staged=0 fuse_pid=12 fuse_dir=$STATE/fuse-ab" \
		"mech=loop path=/dev/loop3 major=8 minor=3 staged=0 fuse_pid=12 fuse_dir=$STATE/fuse-ab" \
		"mech=loop path=/dev/loop3 major=7 minor=3 staged=0 fuse_pid=12 fuse_dir=$STATE/.." \
		"mech=loop path=/dev/loop3 major=7 minor=3 staged=0 fuse_pid=12 fuse_dir=$STATE/a/b" \
		"mech=loop path=/dev/loop3 major=7 minor=3 staged=0 fuse_pid=12 fuse_dir=/tmp/fuse-ab" \
		"mech=loop path=/dev/loop3 major=7 minor=3 staged=0 fuse_pid=12 fuse_dir=${STATE}.fuse-ab" \
		"mech=loop path=/dev/loop3 major=7 minor=3 staged=0 fuse_pid=12 fuse_dir=$STATE/" \
		"mech=loop path=/dev/loop3 major=7 minor=3 staged=0 fuse_pid=012 fuse_dir=$STATE/fuse-ab" \
		"mech=loop path=/dev/loop3 major=7 minor=3 staged=0 fuse_pid=12  fuse_dir=$STATE/fuse-ab" \
		"mech=loop path=/dev/loop3 major=7 minor=3 staged=0 fuse_pid=12 fuse_dir=$STATE/fuse-ab " \
		"mech=nbd path=/dev/nbd3 major=43 minor=3 staged=0 fuse_pid=12 fuse_dir=" \
		"mech=loop path=/dev/loop3 major=7 minor=3 staged=0 fuse_pid=-1 fuse_dir=$STATE/fuse-ab" \
		"mech=loop path=/dev/loop3 major=7 minor=3 staged=0 fuse_pid=99999999 fuse_dir=$STATE/fuse-ab" \
		"mech=loop path=/dev/loop3 major=7 minor=3 staged=0 fuse_pid=12" \
		"mech=auto path= major=0 minor=0 staged=0 fuse_pid=0 fuse_dir=" \
		"mech=loop path= major=7 minor=0 staged=0 fuse_pid=0 fuse_dir=" \
		"path=/dev/loop3 mech=loop major=7 minor=3 staged=0 fuse_pid=12 fuse_dir=$STATE/fuse-ab"; do
		run -1 "$TOOL" parse "$STATE" "$bad"
		assert_output --partial "invalid device record"
	done
}

@test "dev: 10 parallel attaches to 10 workers get 10 devices and all detach" {
	local i pids=()
	for i in $(seq 10); do
		start_disk "p$i"
		socks[i]=$NBD_SOCK
	done
	for i in $(seq 10); do
		"$TOOL" attach "${socks[i]}" "$STATE" >"$BATS_TEST_TMPDIR/rec$i" \
			2>&1 &
		pids+=($!)
	done
	for i in "${pids[@]}"; do wait "$i"; done
	for i in $(seq 10); do
		recs[i]=$(cat "$BATS_TEST_TMPDIR/rec$i")
		made "${recs[i]}"
		field "${recs[i]}" path
	done >"$BATS_TEST_TMPDIR/devs"
	run sort -u "$BATS_TEST_TMPDIR/devs"
	assert_equal "${#lines[@]}" 10
	# Each device is its own disk: write its number, read it in the image.
	for i in $(seq 10); do
		printf 'disk%02d' "$i" | dd of="$(field "${recs[i]}" path)" bs=4096 \
			conv=sync oflag=direct status=none
	done
	for i in $(seq 10); do
		run head -c 6 "$IMG_DIR/p$i.img"
		assert_output "$(printf 'disk%02d' "$i")"
	done
	pids=()
	for i in $(seq 10); do
		"$TOOL" detach "$STATE" "${recs[i]}" &
		pids+=($!)
	done
	for i in "${pids[@]}"; do wait "$i"; done
	for i in $(seq 10); do
		DEV=$(field "${recs[i]}" path)
		FUSE_DIR=$(field "${recs[i]}" fuse_dir)
		FUSE_PID=$(field "${recs[i]}" fuse_pid)
		assert_all_gone
	done
	run ls -A "$STATE"
	assert_output ""
}
