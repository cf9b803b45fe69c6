#!/usr/bin/env bats
# A worker killed under load, end to end (issue 13): its supervisor
# restarts it, the clients reconnect (blkstack-fuse under the loop
# fallback's device; the kernel's FUSE session, kept by the supervisor and
# adopted by the new worker, under the fuse mechanism's; a reconnecting
# NBD client on the socket; kernel NBD is make check-xen's item 5), the
# load completes with no error, no
# acknowledged write is lost, and remove + unprepare leave nothing.

load helpers

setup() {
	command -v fio >/dev/null || skip "fio is not installed"
	[ -c /dev/fuse ] || skip "/dev/fuse is missing"
	hotplug_setup
	# Room for the kills of one test within the window.
	sup_conf restart-limit=10 restart-window=60
	CTL=("$BIN/blkstack-ctl" --rundir "$BLKSTACK_RUNDIR")
}

teardown() {
	[ -z "${WRITER:-}" ] || kill "$WRITER" 2>/dev/null || true
	[ -z "${FIO:-}" ] || kill "$FIO" 2>/dev/null || true
	hotplug_teardown
}

# wait_pid PID SECONDS: until PID is gone, at most SECONDS.
wait_pid() {
	local n=$(($2 * 10))
	while [ "$n" -gt 0 ] && ! gone "$1"; do
		sleep 0.1
		n=$((n - 1))
	done
	gone "$1"
}

# kills_under_fio: attach (with $BLKSTACK_DEVICE), three kill -9 of the
# worker under an fio verify write load on the device; fio must see no
# error, and remove and unprepare leave nothing.
kills_under_fio() {
	truncate -s 128M "$IMG"
	run ts v2-attach
	assert_success
	dev=$(xs_read "$HOTPLUG_PATH/pdev")
	w=$BLKSTACK_RUNDIR/$(xs_read "$HOTPLUG_PATH/blkstack-worker")
	[ "$(field "$(xs_read "$HOTPLUG_PATH/blkstack-dev")" mech)" = "$BLKSTACK_DEVICE" ]
	[ "$(sup_field "$w" state)" = running ]
	# rate keeps the write phase about 6 s long, so that the kills land in
	# it; a mix of sizes, many in flight.
	fio --name=verify --filename="$dev" --ioengine=libaio --direct=1 \
		--rw=randwrite --bssplit=4k/70:64k/20:1m/10 --iodepth=32 \
		--size=96M --rate=16m --verify=crc32c --do_verify=1 \
		--verify_fatal=1 --verify_state_save=0 \
		--output="$BATS_TEST_TMPDIR/fio.out" &
	FIO=$!
	sleep 1
	for _ in 1 2 3; do
		kill_and_wait_restart "$w" >/dev/null
		sleep 1
	done
	# 96 MiB at 16 MiB/s, then the verify: well inside 120 s.
	wait_pid "$FIO" 120 || fail "fio still running after 120 s"
	st=0
	wait "$FIO" || st=$?
	FIO=
	cat "$BATS_TEST_TMPDIR/fio.out"
	[ "$st" -eq 0 ]
	run grep -c 'err= 0' "$BATS_TEST_TMPDIR/fio.out"
	assert_output 1
	run grep -E 'verify: bad|Input/output error' "$BATS_TEST_TMPDIR/fio.out"
	assert_failure
	[ "$(sup_field "$w" restarts)" = 3 ]
	run "${CTL[@]}" list
	assert_output --partial "restarts=3"
	run ts v2-detach
	assert_success
	assert_no_leftovers
}

@test "crash: three kill -9 of the worker under an fio verify write load on the loop fallback: fio sees no error; remove and unprepare leave nothing" {
	BLKSTACK_DEVICE=loop kills_under_fio
}

@test "crash: three kill -9 of the worker under an fio verify write load on the worker's own FUSE file: fio sees no error; remove and unprepare leave nothing" {
	# The supervisor keeps the file's session; Linux 6.9 resends.
	kernel_can_resend || skip "Linux $(uname -r) cannot resend FUSE requests (6.9+)"
	BLKSTACK_DEVICE=fuse kills_under_fio
}

@test "crash: five kill -9 under a reconnecting NBD client on the socket: every write acknowledged once and on disk" {
	run "${CTL[@]}" create --name c1 --chain "log:|aio:$IMG"
	assert_success
	w=$BLKSTACK_RUNDIR/c1
	log=$BATS_TEST_TMPDIR/acked
	out=$BATS_TEST_TMPDIR/writer.out
	# 16384 blocks of 4 KiB: the whole 64 MiB image, 8 writes in flight.
	python3 "$TOP/tests/worker/acked-writes.py" --reconnect 30 --depth 8 \
		"$w/nbd.sock" 16384 "$log" >"$out" 2>&1 &
	WRITER=$!
	for k in 1 2 3 4 5; do
		# Each kill after another 2000 acknowledged writes (bounded).
		for _ in $(seq 600); do
			[ "$(lines "$log")" -ge $((k * 2000)) ] && break
			gone "$WRITER" && break
			sleep 0.05
		done
		kill_and_wait_restart "$w" >/dev/null
	done
	wait_pid "$WRITER" 120 || fail "the writer still runs after 120 s"
	rc=0
	wait "$WRITER" || rc=$?
	WRITER=
	cat "$out" >&2
	assert_equal "$rc" 0
	run cat "$out"
	assert_output --regexp '^acked=16384 reconnects=([5-9]|[1-9][0-9]+) longest_outage_ms=[0-9]+$'
	run sh -c "cut -d' ' -f1 '$log' | sort -u | wc -l"
	assert_output 16384
	check_acked "$IMG" "$log"
	[ "$(sup_field "$w" restarts)" = 5 ]
	run "${CTL[@]}" destroy --name c1
	assert_success
	[ ! -e "$w" ]
	assert_no_leftovers
}
