# shellcheck shell=bash
# Shared setup for the bats suites: every test gets its own real xenstored
# in a private directory, and loses it in teardown.
#
#   load helpers            (in a .bats file)
#   xsd_setup / xsd_teardown are called from setup()/teardown().
#
# Variables for the tests:
#   TOP        the source tree
#   BIN        build/bin
#   SCRIPT     build/hotplug/block-stack, the hotplug script as libxl runs it
#   TOOLSTACK  build/tests/xs-toolstack, the toolstack driver
#   XSD_DIR    this test's xenstored directory (XENSTORED_PATH is exported)

TOP=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd -P)
BIN=$TOP/build/bin
SCRIPT=$TOP/build/hotplug/block-stack
TOOLSTACK=$TOP/build/tests/xs-toolstack
XSD=$TOP/tests/xenstored/xsd
export TOP BIN SCRIPT TOOLSTACK XSD

bats_require_minimum_version 1.5.0
bats_load_library bats-support
bats_load_library bats-assert
bats_load_library bats-file

# Start a private xenstored for this test.
xsd_setup() {
	XSD_DIR=$(mktemp -d "${BATS_TMPDIR:-/tmp}/blkstack-xsd.XXXXXX")
	"$XSD" start "$XSD_DIR" >/dev/null
	export XSD_DIR
	export XENSTORED_PATH="$XSD_DIR/socket"
}

xsd_teardown() {
	[ -n "${XSD_DIR:-}" ] || return 0
	"$XSD" stop "$XSD_DIR"
	rm -rf -- "$XSD_DIR"
}

# xs_read PATH: the value, or fail.
xs_read() {
	xenstore-read "$1"
}

# xs_absent PATH: succeed if the node does not exist.
xs_absent() {
	! xenstore-exists "$1" 2>/dev/null
}

# field RECORD KEY: the value of KEY in a device record.
field() {
	local kv
	for kv in $1; do
		if [ "${kv%%=*}" = "$2" ]; then
			printf '%s\n' "${kv#*=}"
			return 0
		fi
	done
	return 1
}

# gone PID: the process has exited (a zombie awaiting init counts).
gone() {
	[ ! -e "/proc/$1" ] || [ "$(awk '{ print $3 }' "/proc/$1/stat")" = Z ]
}

# ---- workers ----------------------------------------------------------------

# A directory for disk images: aio: needs O_DIRECT, which tmpfs may lack.
# Sets IMG_DIR (removed by worker_teardown).
img_dir() {
	if [ "$(stat -f -c %T "$BATS_TEST_TMPDIR")" = tmpfs ]; then
		IMG_DIR=$(mktemp -d /var/tmp/blkstack-img.XXXXXX)
	else
		IMG_DIR=$BATS_TEST_TMPDIR/img
		mkdir -p "$IMG_DIR"
	fi
	export IMG_DIR
}

# worker_start NAME CHAIN [ARGS...]: start blkstack-worker in the
# background in WORKER_RUNDIR (unset: $BATS_TEST_TMPDIR/run; set but empty:
# no --rundir, so BLKSTACK_RUNDIR or the default applies) and wait for its
# readiness line on a FIFO (no polling).  Fails with the worker's message
# if it did not start.  Sets WORKER_PID and NBD_SOCK.
worker_start() {
	local name=$1 chain=$2 ready line dir
	local -a rundir=()
	shift 2
	: "${WORKER_RUNDIR=$BATS_TEST_TMPDIR/run}"
	export WORKER_RUNDIR
	dir=${WORKER_RUNDIR:-${BLKSTACK_RUNDIR:-/run/blkstack}}
	[ -z "$WORKER_RUNDIR" ] || rundir=(--rundir "$WORKER_RUNDIR")
	ready=$BATS_TEST_TMPDIR/$name.ready
	rm -f "$ready"
	mkfifo "$ready"
	"$BIN/blkstack-worker" "${rundir[@]}" --name "$name" \
		--chain "$chain" --foreground --ready-fd 3 "$@" \
		3>"$ready" </dev/null >>"$BATS_TEST_TMPDIR/$name.log" 2>&1 &
	WORKER_PID=$!
	IFS= read -r line <"$ready" || line="(no readiness line)"
	rm -f "$ready"
	if [ "$line" != ok ]; then
		echo "worker $name did not start: $line" >&2
		cat "$BATS_TEST_TMPDIR/$name.log" >&2
		return 1
	fi
	NBD_SOCK=$dir/$name/nbd.sock
	export WORKER_PID NBD_SOCK
}

# worker_stop [PID]: SIGTERM and wait; returns the worker's exit status.
worker_stop() {
	local pid=${1:-${WORKER_PID:-}}
	[ -n "$pid" ] || return 0
	kill -TERM "$pid" 2>/dev/null || return 0
	wait "$pid"
}

# Stop every worker this test started and remove the image directory.
worker_teardown() {
	local pid
	for pid in $(jobs -p); do
		kill -TERM "$pid" 2>/dev/null || true
	done
	wait || true
	case ${IMG_DIR:-} in
	/var/tmp/blkstack-img.*) rm -rf -- "$IMG_DIR" ;;
	esac
}

# sndbufs PID [PATH]: the send buffer (ss's skmem "tb", bytes) of each
# connected Unix stream socket of process PID, one a line; with PATH,
# only those whose local address is PATH (a server's accepted sockets).
sndbufs() {
	ss -x -m -p -n state established 2>/dev/null |
		awk -v pid="pid=$1," -v path="${2:-}" '
		index($0, pid) && (path == "" || $4 == path) &&
		match($0, /tb[0-9]+/) { print substr($0, RSTART + 2, RLENGTH - 2) }'
}

# The NBD URI of a worker's socket, for libnbd clients and fio.
nbd_uri() {
	printf 'nbd+unix:///?socket=%s\n' "${1:-$NBD_SOCK}"
}

# mounted_on DIR: something is mounted on DIR (per /proc/self/mountinfo).
mounted_on() {
	awk -v d="$1" '$5 == d { f = 1 } END { exit !f }' /proc/self/mountinfo
}

# fuse_teardown DIR [FILE]: detach the loop devices on files under DIR
# (or on FILE), unmount DIR lazily, then stop this test's workers.  Fails
# if such a loop device is still there: a leaked one would hang whatever
# scans block devices later (lvm2's scripts did, in dpkg).
fuse_teardown() {
	local name back left=
	while read -r name back; do
		case $back in
		"$1"/* | "${2:-$1/}") losetup -d "$name" || true ;;
		esac
	done < <(losetup -l -n -O NAME,BACK-FILE 2>/dev/null)
	if mounted_on "$1"; then
		umount -l "$1" || true
	fi
	worker_teardown
	while read -r name back; do
		case $back in
		"$1"/* | "${2:-$1/}") left="$left $name" ;;
		esac
	done < <(losetup -l -n -O NAME,BACK-FILE 2>/dev/null)
	if [ -n "$left" ]; then
		echo "loop devices left:$left" >&2
		return 1
	fi
}

# ---- supervision (docs/control-protocol.txt, "Supervision") -----------------

# sup_conf KEY=VALUE...: a private configuration file with these keys,
# exported as BLKSTACK_CONF (what blkstack-ctl, the hotplug helper and
# the supervisor read).
sup_conf() {
	local kv
	BLKSTACK_CONF=$BATS_TEST_TMPDIR/blkstack.conf
	: >"$BLKSTACK_CONF"
	for kv in "$@"; do
		printf '%s = %s\n' "${kv%%=*}" "${kv#*=}" >>"$BLKSTACK_CONF"
	done
	export BLKSTACK_CONF
}

# sup_field WDIR KEY: KEY's value in WDIR/supervisor.state (WDIR is
# RUNDIR/NAME); empty if there is none.
sup_field() {
	sed -n "s/^$2=//p" "$1/supervisor.state" 2>/dev/null || true
}

# wait_sup WDIR KEY VALUE [SECONDS]: wait (default 20 s at most) until
# supervisor.state says KEY=VALUE; VALUE '?*' waits for any non-empty one.
wait_sup() {
	local wdir=$1 key=$2 want=$3 n=$((${4:-20} * 20)) v
	while [ "$n" -gt 0 ]; do
		v=$(sup_field "$wdir" "$key")
		# shellcheck disable=SC2053 # $want may be a pattern
		if [[ $v == $want ]]; then
			return 0
		fi
		sleep 0.05
		n=$((n - 1))
	done
	echo "$wdir: $key is '$v', not '$want', after ${4:-20} s" >&2
	return 1
}

# wait_restart WDIR OLDPID [SECONDS]: wait (default 20 s at most) until
# the supervisor says a new worker (not OLDPID) serves; prints its pid.
wait_restart() {
	local wdir=$1 old=$2 n=$((${3:-20} * 20)) pid
	while [ "$n" -gt 0 ]; do
		pid=$(sup_field "$wdir" worker_pid)
		if [ "$(sup_field "$wdir" state)" = running ] &&
			[ -n "$pid" ] && [ "$pid" != 0 ] && [ "$pid" != "$old" ]; then
			printf '%s\n' "$pid"
			return 0
		fi
		sleep 0.05
		n=$((n - 1))
	done
	echo "$wdir: no new worker after ${3:-20} s (state $(sup_field "$wdir" state))" >&2
	return 1
}

# kill_and_wait_restart WDIR [SIGNAL]: kill WDIR's worker (SIGKILL by
# default) and wait for its replacement; prints the new pid.
kill_and_wait_restart() {
	local wdir=$1 sig=${2:-KILL} pid
	pid=$(cat "$wdir/pid")
	kill -"$sig" "$pid"
	wait_restart "$wdir" "$pid"
}

# lines FILE: its line count, 0 if it is not there yet.
lines() {
	if [ -e "$1" ]; then wc -l <"$1"; else echo 0; fi
}

# wait_lines FILE N [SECONDS]: until FILE has N lines or more (default 30
# s at most); fails, saying how many it has, if it does not.
wait_lines() {
	local _
	for _ in $(seq $((${3:-30} * 20))); do
		[ "$(lines "$1")" -ge "$2" ] && return 0
		sleep 0.05
	done
	echo "$1: $(lines "$1") lines, not $2, after ${3:-30} s" >&2
	return 1
}

# check_acked IMG LOG: every acknowledged block in LOG (tests/worker/
# acked-writes.py) holds its byte in IMG.
check_acked() {
	python3 - "$1" "$2" <<'PY'
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

# Linux 6.9 and later can resend the FUSE requests a dead server had read
# (FUSE_NOTIFY_RESEND): what a supervised worker's crash survival needs.
kernel_can_resend() {
	local v
	v=$(uname -r)
	v=${v%%-*}
	[ "$(printf '%s\n6.9\n' "$v" | sort -V | head -n 1)" = 6.9 ]
}

# ---- the hotplug actions (hotplug.bats, sharing.bats) -------------------------

# hotplug_setup: a private xenstored, rundir and 64 MiB image $IMG; the
# toolstack's paths for the default disk.  hotplug_teardown: whatever a
# failed test left: devices, then workers, then the daemon.
# ts ARGS...: xs-toolstack with the script and ${TARGET:-log:|aio:$IMG}.
hotplug_setup() {
	xsd_setup
	img_dir
	export BLKSTACK_RUNDIR=$BATS_TEST_TMPDIR/run
	export BLKSTACK_DEVICE=loop
	IMG=$IMG_DIR/disk.img
	truncate -s 64M "$IMG"
	eval "$("$TOOLSTACK" paths)"
}

hotplug_teardown() {
	# Whatever a failed test left: devices, then workers.
	"$TOOLSTACK" --quiet --script "$SCRIPT" v2-detach >/dev/null 2>&1 || true
	for d in "$BLKSTACK_RUNDIR"/*/; do
		[ -d "$d" ] || continue
		"$BIN/blkstack-ctl" --rundir "$BLKSTACK_RUNDIR" destroy \
			--name "$(basename "$d")" >/dev/null 2>&1 || true
	done
	worker_teardown
	xsd_teardown
}

ts() {
	"$TOOLSTACK" --quiet --script "$SCRIPT" --target "${TARGET:-log:|aio:$IMG}" "$@"
}

# No worker, device, FUSE server, mount, socket or lock is left in the rundir.
assert_no_leftovers() {
	run "$BIN/blkstack-ctl" --rundir "$BLKSTACK_RUNDIR" list
	assert_output ""
	# Per-disk locks go; the host-wide sharing.lock belongs to no disk.
	run bash -c "compgen -G '$BLKSTACK_RUNDIR/*.lock' | grep -v '/sharing.lock$'"
	assert_failure
	run compgen -G "$BLKSTACK_RUNDIR/*.tmp"
	assert_failure
	run compgen -G "$BLKSTACK_RUNDIR/*.attached"
	assert_failure
	run grep -c "$BLKSTACK_RUNDIR" /proc/mounts
	assert_output 0
	run pgrep -f "(nbdfuse|blkstack-fuse).*$BLKSTACK_RUNDIR"
	assert_failure
	run bash -c "losetup -a | grep -c '$BLKSTACK_RUNDIR'"
	assert_output 0
}


# ---- two hosts (migrate-nbd.bats, tests/ceph/migrate-rbd.bats) ----------------

# hosts_setup: two hosts, a and b, each its own real xenstored (XA, XB)
# and run directory (RA, RB): the script, workers, devices and records of
# one host never see the other's.  The tests set TARGET (the disk's params)
# and VM (the guest's /vm path); DOMID (default 3) is the guest's domid.
# hosts_teardown: whatever a test left on either host (devices, workers),
# then both daemons.
hosts_setup() {
	export BLKSTACK_DEVICE=loop
	XA=$(mktemp -d "${BATS_TMPDIR:-/tmp}/blkstack-xsd.XXXXXX")
	XB=$(mktemp -d "${BATS_TMPDIR:-/tmp}/blkstack-xsd.XXXXXX")
	"$XSD" start "$XA" >/dev/null
	"$XSD" start "$XB" >/dev/null
	RA=$BATS_TEST_TMPDIR/run-a
	RB=$BATS_TEST_TMPDIR/run-b
}

hosts_teardown() {
	local h d
	for h in a b; do
		tsh "$h" v2-detach >/dev/null 2>&1 || true
		for d in "$(rundir "$h")"/*/; do
			[ -d "$d" ] || continue
			on "$h" "$BIN/blkstack-ctl" destroy --name "$(basename "$d")" \
				>/dev/null 2>&1 || true
		done
	done
	worker_teardown
	for h in "${XA:-}" "${XB:-}"; do
		[ -n "$h" ] || continue
		"$XSD" stop "$h"
		rm -rf -- "$h"
	done
}

# rundir a|b: that host's run directory.
rundir() {
	if [ "$1" = a ]; then echo "$RA"; else echo "$RB"; fi
}

# on a|b CMD...: CMD on that host (its xenstored, its run directory).
on() {
	local h=$1 x=$XA
	shift
	[ "$h" = a ] || x=$XB
	XENSTORED_PATH=$x/socket BLKSTACK_RUNDIR=$(rundir "$h") "$@"
}

# tsh a|b ARGS...: the toolstack driver on that host, for the VM's disk.
tsh() {
	local h=$1
	shift
	on "$h" "$TOOLSTACK" --quiet --script "$SCRIPT" --target "$TARGET" \
		--domid "${DOMID:-3}" --vm "$VM" "$@"
}

# hp_path a|b: that host's HOTPLUG_PATH of the disk.
hp_path() {
	local HOTPLUG_PATH
	eval "$(on "$1" "$TOOLSTACK" --domid "${DOMID:-3}" --vm "$VM" paths)"
	printf '%s\n' "$HOTPLUG_PATH"
}

# hp a|b NODE: that host's hotplug node NODE of the disk.
hp() {
	on "$1" xenstore-read "$(hp_path "$1")/$2"
}

# Nothing of the disk is left on host h.
nothing_on() {
	run on "$1" "$BIN/blkstack-ctl" list
	assert_output ""
	run bash -c "losetup -a | grep -c '$(rundir "$1")'"
	assert_output 0
	run grep -c "$(rundir "$1")" /proc/mounts
	assert_output 0
}

# writer_done PID LOG N: the background writer PID (tests/worker/
# acked-writes.py) is still running (else the test is skipped: its load
# proved nothing), then ends within 120 s, status 0, with N acknowledged
# writes in LOG.
writer_done() {
	local rc=0
	gone "$1" && skip "the writer finished before prepare: the load proves nothing"
	timeout 120 tail --pid="$1" -f /dev/null
	wait "$1" || rc=$?
	[ "$rc" -eq 0 ]
	[ "$(lines "$2")" = "$3" ]
}
