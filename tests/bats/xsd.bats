#!/usr/bin/env bats
# The test harness itself: a real xenstored under the shim, in a private
# directory, started and stopped cleanly.

load helpers

setup() {
	xsd_setup
}

teardown() {
	xsd_teardown
}

@test "xsd: the daemon answers real clients on its private socket" {
	run xenstore-write /blkstack/probe hello
	assert_success
	run xenstore-read /blkstack/probe
	assert_success
	assert_output hello
}

@test "xsd: permissions are enforced by the real daemon" {
	xenstore-write /blkstack/perm x
	xenstore-chmod /blkstack/perm n0 r5
	run xenstore-ls -p /blkstack
	assert_success
	assert_output --partial "(n0,r5)"
}

@test "xsd: transactions and watches work" {
	# xenstore-watch exits after the first event past the initial one.
	timeout 10 xenstore-watch -n 2 /blkstack/w >"$XSD_DIR/watch.out" &
	watcher=$!
	# Wait until the watch is registered: its initial event is printed.
	for _ in $(seq 100); do
		[ -s "$XSD_DIR/watch.out" ] && break
		sleep 0.02
	done
	xenstore-write /blkstack/w/child 1
	wait "$watcher"
	run cat "$XSD_DIR/watch.out"
	assert_line /blkstack/w/child
}

@test "xsd: two daemons run side by side without sharing state" {
	other=$(mktemp -d "${BATS_TMPDIR:-/tmp}/blkstack-xsd2.XXXXXX")
	"$XSD" start "$other" >/dev/null
	xenstore-write /blkstack/which first
	XENSTORED_PATH=$other/socket xenstore-write /blkstack/which second
	run xenstore-read /blkstack/which
	assert_output first
	run env XENSTORED_PATH="$other/socket" xenstore-read /blkstack/which
	assert_output second
	"$XSD" stop "$other"
	rm -rf -- "$other"
}

@test "xsd: a second start in the same directory is refused" {
	run "$XSD" start "$XSD_DIR"
	assert_failure
	assert_output --partial "already runs"
}

@test "xsd: stop removes the socket and is idempotent" {
	"$XSD" stop "$XSD_DIR"
	assert_file_not_exists "$XSD_DIR/socket"
	run "$XSD" stop "$XSD_DIR"
	assert_success
	run xenstore-read /
	assert_failure
}

@test "xsd: the event-channel FIFO survives garbage and the VIRQ" {
	pid=$(cat "$XSD_DIR/pid")
	printf 'not-a-port\n\n' >"$XSD_DIR/evtchn"
	printf '0 running\n7 dying\n' >"$XSD_DIR/domains"
	# VIRQ_DOM_EXC: the daemon rescans the domain list through the shim.
	cat "$XSD_DIR/virq-port" >"$XSD_DIR/evtchn"
	xenstore-write /blkstack/after-virq 1
	run xenstore-read /blkstack/after-virq
	assert_success
	assert_output 1
	run kill -0 "$pid"
	assert_success
}
