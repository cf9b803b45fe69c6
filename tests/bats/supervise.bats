#!/usr/bin/env bats
# The supervisor (docs/control-protocol.txt, "Supervision"): real workers
# started by blkstack-ctl and the hotplug helper in private run
# directories, killed, stopped and shut down; real clients (nbdinfo) and a
# real xenstored for the hotplug-error.

load helpers

setup() {
	CTL=$BIN/blkstack-ctl
	RUNDIR=$BATS_TEST_TMPDIR/run
	export BLKSTACK_RUNDIR=$RUNDIR
	# Small limits, so that the tests need not wait for the defaults.
	sup_conf restart-limit=3 restart-window=60 hang-timeout=2
}

teardown() {
	local d pid
	strace_detach
	for d in "$RUNDIR"/*/; do
		[ -d "$d" ] || continue
		# A stopped worker must not outlive the test.
		pid=$(cat "$d/pid" 2>/dev/null) || pid=
		[ -z "$pid" ] || kill -CONT "$pid" 2>/dev/null || true
		timeout 40 "$CTL" destroy --name "$(basename "$d")" >/dev/null 2>&1 || true
	done
	if [ -n "${XSD_DIR:-}" ]; then
		hotplug_teardown
	fi
}

# create NAME CHAIN: a supervised worker, or fail the test.
create() {
	run "$CTL" create --name "$1" --chain "$2"
	assert_success
	assert_output "$RUNDIR/$1/nbd.sock"
}

# The process of pid file $1 (supervisor.pid or pid) of worker vm1.
pidof_file() {
	cat "$RUNDIR/vm1/$1"
}

# late_state_create NAME CHAIN: `create` under strace, which holds every
# rename onto NAME's supervisor.state.tmp (the supervisor's writes of
# supervisor.state) for 2 s, the window a loaded machine may leave between
# two steps of the supervisor.  Waits (60 s at most) for create to return:
# CREATE_RC and CREATE_OUT.  strace stays attached to the supervisor and
# the worker (STRACE_PID) until strace_detach.
late_state_create() {
	local out=$BATS_TEST_TMPDIR/create.$1 n=1200
	strace -I 1 -f -qq -o "$BATS_TEST_TMPDIR/strace.$1" \
		-P "$RUNDIR/$1/supervisor.state.tmp" -e trace=rename \
		-e inject=rename:delay_enter=2000000 \
		sh -c '"$0" create --name "$1" --chain "$2" >"$3" 2>&1; echo $? >"$3.rc"' \
		"$CTL" "$1" "$2" "$out" </dev/null >/dev/null 2>"$out.strace" 3>&- &
	STRACE_PID=$!
	while [ ! -s "$out.rc" ] && [ "$n" -gt 0 ]; do
		sleep 0.05
		n=$((n - 1))
	done
	CREATE_RC=$(cat "$out.rc" 2>/dev/null) || CREATE_RC="none within 60 s: $(cat "$out.strace")"
	CREATE_OUT=$(cat "$out")
}

# Let go of what late_state_create traces (SIGTERM: strace detaches; -I 1
# lets it take the signal).
strace_detach() {
	local n=400
	[ -n "${STRACE_PID:-}" ] || return 0
	kill "$STRACE_PID" 2>/dev/null || true
	while ! gone "$STRACE_PID" && [ "$n" -gt 0 ]; do
		sleep 0.05
		n=$((n - 1))
	done
	STRACE_PID=
}

@test "supervise: a worker killed with SIGKILL is restarted, serves again, and list counts it" {
	create vm1 'log:|ram:16M'
	spid=$(pidof_file supervisor.pid)
	pid=$(pidof_file pid)
	assert [ "$(sup_field "$RUNDIR/vm1" state)" = running ]
	assert [ "$(sup_field "$RUNDIR/vm1" worker_pid)" = "$pid" ]
	new=$(kill_and_wait_restart "$RUNDIR/vm1")
	assert [ "$new" != "$pid" ]
	gone "$pid"
	# The same supervisor, a new worker that holds the name and serves.
	assert [ "$(pidof_file supervisor.pid)" = "$spid" ]
	assert [ "$(pidof_file pid)" = "$new" ]
	run nbdinfo --size "nbd+unix:///?socket=$RUNDIR/vm1/nbd.sock"
	assert_success
	assert_output 16777216
	run "$CTL" list
	assert_success
	assert_output "name=vm1 pid=$new state=running chain=log:|ram:16M supervisor=running restarts=1 last_exit=\"killed by signal 9 (Killed)\""
	run "$CTL" list --json
	assert_success
	run python3 -c 'import json, sys; e = json.loads(sys.argv[1])[0]["supervisor"]; print(e["state"], e["pid"], e["restarts"], e["last_exit"])' "$output"
	assert_output "running $spid 1 killed by signal 9 (Killed)"
	# The kernel NBD rebind hook reported what it did (here: not in this build).
	run sup_field "$RUNDIR/vm1" reconnect
	refute_output ""
	# A second kill: counted too.
	new2=$(kill_and_wait_restart "$RUNDIR/vm1")
	assert [ "$new2" != "$new" ]
	assert [ "$(sup_field "$RUNDIR/vm1" restarts)" = 2 ]
	run "$CTL" destroy --name vm1
	assert_success
	gone "$new2"
	gone "$spid"
	assert [ ! -e "$RUNDIR/vm1" ]
}

@test "supervise: once create returns, list and destroy find the supervisor, however late its state would be written" {
	strace -f -qq -o /dev/null true || skip "strace cannot trace here"
	late_state_create vm1 ram:16M
	assert_equal "$CREATE_RC" 0
	assert_equal "$CREATE_OUT" "$RUNDIR/vm1/nbd.sock"
	spid=$(pidof_file supervisor.pid)
	run "$CTL" list
	assert_success
	assert_output "name=vm1 pid=$(pidof_file pid) state=running chain=ram:16M supervisor=running restarts=0"
	run "$CTL" list --json
	assert_success
	run python3 -c 'import json, sys; e = json.loads(sys.argv[1])[0]["supervisor"]; print(e["state"], e["pid"], e["restarts"])' "$output"
	assert_output "running $spid 0"
	strace_detach
	# The hold did happen: the test saw what a slow supervisor leaves.
	run grep -c 'supervisor.state.tmp.*(DELAYED)' "$BATS_TEST_TMPDIR/strace.vm1"
	assert_output 1
	run "$CTL" destroy --name vm1
	assert_success
	refute_output
	gone "$spid"
	assert [ ! -e "$RUNDIR/vm1" ]
	# destroy at once: the supervisor stops the worker and leaves nothing.
	late_state_create vm2 ram:16M
	assert_equal "$CREATE_RC" 0
	spid=$(cat "$RUNDIR/vm2/supervisor.pid")
	pid=$(cat "$RUNDIR/vm2/pid")
	run "$CTL" destroy --name vm2
	assert_success
	refute_output
	gone "$spid"
	gone "$pid"
	assert [ ! -e "$RUNDIR/vm2" ]
	strace_detach
}

# A supervisor SIGKILLed just after it restarted a crashed worker leaves
# that worker starting, with no lock yet: it counts as dead.  destroy (and
# the hotplug's remove, the same worker_stop) must stop it, not remove the
# files it is about to take and leave it serving with no record or claim.
@test "supervise: destroy kills a worker still starting (no lock yet) rather than leave it to serve unrecorded" {
	strace -f -qq -o /dev/null true || skip "strace cannot trace here"
	create vm1 ram:16M
	spid=$(pidof_file supervisor.pid)
	pid=$(pidof_file pid)
	kill -9 "$spid" "$pid"
	for _ in $(seq 200); do gone "$spid" && gone "$pid" && break; sleep 0.05; done
	gone "$spid"
	gone "$pid"
	# The restarted worker, as the dead supervisor started it, held for
	# 3 s on its way into flock() on DIR/vm1/lock.
	strace -I 1 -f -qq -o "$BATS_TEST_TMPDIR/strace.w" -e trace=flock \
		-e inject=flock:delay_enter=3000000 \
		"$BIN/blkstack-worker" --name vm1 --chain ram:16M --rundir "$RUNDIR" \
		--foreground </dev/null >"$BATS_TEST_TMPDIR/w.log" 2>&1 3>&- &
	STRACE_PID=$!
	wpid=
	for _ in $(seq 200); do
		wpid=$(pgrep -f "^$BIN/blkstack-worker --name vm1 " || true)
		# 73: flock on x86_64; the worker waits at its entry.
		[ -n "$wpid" ] && [ "$(cut -d' ' -f1 "/proc/$wpid/syscall" 2>/dev/null)" = 73 ] && break
		sleep 0.05
	done
	[ -n "$wpid" ]
	run "$CTL" destroy --name vm1
	assert_success
	assert_output "blkstack-ctl: worker vm1: pid $wpid was still starting (it held no lock yet); killed it and removed its files"
	gone "$wpid"
	assert [ ! -e "$RUNDIR/vm1" ]
	# Past the hold: nothing came back to serve vm1.
	sleep 3.5
	run pgrep -f "blkstack-worker --name vm1 "
	assert_failure
	assert [ ! -e "$RUNDIR/vm1" ]
	strace_detach
}

@test "supervise: restart-limit crashes in restart-window give up, say why, and destroy cleans up" {
	create vm1 'ram:16M'
	spid=$(pidof_file supervisor.pid)
	# restart-limit = 3: two crashes are restarted, the third gives up.
	kill_and_wait_restart "$RUNDIR/vm1" >/dev/null
	kill_and_wait_restart "$RUNDIR/vm1" >/dev/null
	pid=$(pidof_file pid)
	kill -9 "$pid"
	wait_sup "$RUNDIR/vm1" state gave-up
	run sup_field "$RUNDIR/vm1" gave_up
	assert_output "gave up after 3 crashes in 60 s: last killed by signal 9 (Killed)"
	# The supervisor exited; nothing serves.
	for _ in $(seq 100); do gone "$spid" && break; sleep 0.05; done
	gone "$spid"
	run nbdinfo --size "nbd+unix:///?socket=$RUNDIR/vm1/nbd.sock"
	assert_failure
	run "$CTL" list
	assert_success
	assert_output "name=vm1 state=dead (stale pid $pid) supervisor=gave-up restarts=2 last_exit=\"killed by signal 9 (Killed)\" gave_up=\"gave up after 3 crashes in 60 s: last killed by signal 9 (Killed)\""
	run "$CTL" destroy --name vm1
	assert_success
	assert [ ! -e "$RUNDIR/vm1" ]
	# The name is free again.
	create vm1 'ram:16M'
	assert [ "$(sup_field "$RUNDIR/vm1" restarts)" = 0 ]
}

@test "supervise: a clean shutdown is not restarted, and the supervisor leaves with its files" {
	create vm1 'log:|ram:16M'
	spid=$(pidof_file supervisor.pid)
	pid=$(pidof_file pid)
	# The control protocol's own "shutdown" (what destroy sends to a bare
	# worker): the worker says "stopping" to its supervisor first.
	run python3 -c '
import socket, sys
s = socket.socket(socket.AF_UNIX)
s.settimeout(10)
s.connect(sys.argv[1])
s.sendall(b"shutdown\n")
print(s.makefile().readline().strip())
' "$RUNDIR/vm1/ctl.sock"
	assert_success
	assert_output --partial '"ok":true' 
	for _ in $(seq 200); do gone "$spid" && break; sleep 0.05; done
	gone "$spid"
	gone "$pid"
	assert [ ! -e "$RUNDIR/vm1" ]
	run "$CTL" list
	assert_output ""
}

@test "supervise: SIGTERM to the supervisor stops the worker gracefully and removes everything" {
	create vm1 'log:|ram:16M'
	spid=$(pidof_file supervisor.pid)
	pid=$(pidof_file pid)
	kill -TERM "$spid"
	for _ in $(seq 200); do gone "$spid" && break; sleep 0.05; done
	gone "$spid"
	gone "$pid"
	assert [ ! -e "$RUNDIR/vm1" ]
}

@test "supervise: a SIGSTOPped worker is reported hung within the bound, and no longer once it runs" {
	create vm1 'ram:16M'
	pid=$(pidof_file pid)
	kill -STOP "$pid"
	# hang-timeout = 2 s: reported by then (bounded at 10 s here).
	wait_sup "$RUNDIR/vm1" hung 'no beat for *' 10
	run "$CTL" list
	assert_output --regexp "supervisor=running restarts=0 hung=\"no beat for [0-9]+ s\"$"
	# hang-action = report: the same worker, not killed.
	assert [ "$(pidof_file pid)" = "$pid" ]
	kill -CONT "$pid"
	wait_sup "$RUNDIR/vm1" hung '' 10
	assert [ "$(sup_field "$RUNDIR/vm1" restarts)" = 0 ]
}

@test "supervise: with hang-action = restart a hung worker is killed and replaced" {
	sup_conf restart-limit=3 restart-window=60 hang-timeout=1 hang-action=restart
	create vm1 'ram:16M'
	pid=$(pidof_file pid)
	kill -STOP "$pid"
	new=$(wait_restart "$RUNDIR/vm1" "$pid" 15)
	assert [ "$new" != "$pid" ]
	run sup_field "$RUNDIR/vm1" last_exit
	assert_output --regexp '^hung: no beat for [0-9]+ s$'
	run nbdinfo --size "nbd+unix:///?socket=$RUNDIR/vm1/nbd.sock"
	assert_success
}

@test "supervise: destroy of a SIGSTOPped worker finishes within a bound and leaves nothing" {
	create vm1 'log:|ram:16M'
	spid=$(pidof_file supervisor.pid)
	pid=$(pidof_file pid)
	kill -STOP "$pid"
	# Not yet known to be hung: the supervisor sees it stopped.
	run timeout 15 "$CTL" destroy --name vm1
	assert_success
	gone "$pid"
	gone "$spid"
	assert [ ! -e "$RUNDIR/vm1" ]
}

@test "supervise: a worker that cannot start leaves no supervisor and nothing behind" {
	run "$CTL" create --name vm1 --chain "aio:$BATS_TEST_TMPDIR/nope.img"
	assert_failure 1
	assert_output --partial "blkstack-ctl: worker vm1: "
	assert_output --partial "nope.img: No such file or directory"
	assert [ ! -e "$RUNDIR/vm1" ]
	run pgrep -f "blkstack-supervisor --name vm1 .*$RUNDIR"
	assert_failure
}

@test "supervise: a second create of a supervised name is refused" {
	create vm1 'ram:16M'
	run "$CTL" create --name vm1 --chain 'ram:16M'
	assert_failure 1
	assert_output --partial "worker vm1: already running"
}

@test "supervise: a bad key in the configuration is refused at create" {
	sup_conf restart-limit=0
	run "$CTL" create --name vm1 --chain 'ram:16M'
	assert_failure 1
	assert_output --partial "restart-limit: '0' is not a number from 1 to 100"
	assert [ ! -e "$RUNDIR/vm1" ]
	sup_conf supervise=maybe
	run "$CTL" create --name vm1 --chain 'ram:16M'
	assert_failure 1
	assert_output --partial "supervise: 'maybe' is not yes or no"
}

@test "supervise: supervise = no keeps the bare worker: a kill leaves it dead" {
	sup_conf supervise=no
	create vm1 'ram:16M'
	pid=$(pidof_file pid)
	assert [ ! -e "$RUNDIR/vm1/supervisor.pid" ]
	assert [ ! -e "$RUNDIR/vm1/supervisor.state" ]
	kill -9 "$pid"
	for _ in $(seq 100); do gone "$pid" && break; sleep 0.05; done
	run "$CTL" list
	assert_output "name=vm1 state=dead (stale pid $pid) supervisor=none"
	run "$CTL" destroy --name vm1
	assert_success
	assert [ ! -e "$RUNDIR/vm1" ]
}

# ---- hotplug-managed disks ----------------------------------------------------

@test "supervise: a hotplug-managed worker that keeps crashing writes hotplug-error" {
	hotplug_setup
	sup_conf restart-limit=2 restart-window=60
	run ts v2-attach
	assert_success
	name=$(xs_read "$HOTPLUG_PATH/blkstack-worker")
	wdir=$BLKSTACK_RUNDIR/$name
	kill_and_wait_restart "$wdir" >/dev/null
	kill -9 "$(cat "$wdir/pid")"
	wait_sup "$wdir" state gave-up
	# prepare started the worker: BACKEND_PATH was not valid yet, so the
	# supervisor writes HOTPLUG_PATH's node (hp-error.c's for prepare).
	run xs_read "$HOTPLUG_PATH/hotplug-error"
	assert_success
	assert_output "worker $name: gave up after 2 crashes in 60 s: last killed by signal 9 (Killed)"
	# Then the toolstack's clean-up still cleans up.  remove may report
	# the I/O error of the flush (nbdfuse does not reconnect to a new
	# worker, let alone to none); unprepare frees the rest.
	run timeout 40 "$TOOLSTACK" --quiet --script "$SCRIPT" --target "log:|aio:$IMG" v2-run remove
	refute [ "$status" = 124 ]
	run ts v2-run unprepare
	assert_success
	assert_no_leftovers
}

@test "supervise: hotplug unprepare of a SIGSTOPped worker finishes within a bound" {
	hotplug_setup
	run ts v2-attach
	assert_success
	name=$(xs_read "$HOTPLUG_PATH/blkstack-worker")
	pid=$(cat "$BLKSTACK_RUNDIR/$name/pid")
	run ts v2-run remove
	assert_success
	kill -STOP "$pid"
	run timeout 40 "$TOOLSTACK" --quiet --script "$SCRIPT" --target "log:|aio:$IMG" v2-run unprepare
	assert_success
	gone "$pid"
	assert_no_leftovers
}

@test "supervise: with hang-action = restart, hotplug remove of a SIGSTOPped worker finishes within a bound" {
	# remove flushes the device: through nbdfuse to a stopped worker that
	# blocks (in the kernel) until the worker is replaced.
	hotplug_setup
	sup_conf hang-timeout=1 hang-action=restart
	run ts v2-attach
	assert_success
	name=$(xs_read "$HOTPLUG_PATH/blkstack-worker")
	pid=$(cat "$BLKSTACK_RUNDIR/$name/pid")
	kill -STOP "$pid"
	run timeout 40 "$TOOLSTACK" --quiet --script "$SCRIPT" --target "log:|aio:$IMG" v2-run remove
	# Bounded: the flush ends once the hung worker is replaced (with an
	# I/O error: nbdfuse lost its connection and does not reconnect).
	refute [ "$status" = 124 ]
	run sup_field "$BLKSTACK_RUNDIR/$name" last_exit
	assert_output --regexp '^hung: no beat for [0-9]+ s$'
	run ts v2-run unprepare
	assert_success
	gone "$pid"
	assert_no_leftovers
}
