#!/usr/bin/env bats
# Two hosts on one RBD image (issue 18), the rbd twin of
# tests/bats/migrate-nbd.bats: each host its own real xenstored and run
# directory (hosts_setup in helpers.bash), both reaching this file's
# private Ceph cluster (tests/ceph/cluster).  The v2 migration hands
# librbd's exclusive lock over to the destination; the cross-host sharing
# rule (libblkstack/drivers/rbd.c, "Claims"; docs/ceph.txt) refuses a
# disk of another VM, allows the same VM's destination, and does not let
# a killed worker hold the image for longer than the OSD's watch timeout.
# Every wait is bounded.

load ../bats/helpers
load ceph

VM=/vm/0b7d2c3a-0000-4000-8000-00000000beef
VM_B=/vm/0b7d2c3a-0000-4000-8000-0000000000b2

setup_file() {
	ceph_setup_file
}

teardown_file() {
	ceph_teardown_file
}

setup() {
	hosts_setup
	IMG=m$BATS_TEST_NUMBER
	rbdc create --size 64M "rbd/$IMG"
	TARGET="log:|rbd:rbd/$IMG,conf=$CEPH_CONF_FILE"
}

teardown() {
	as_b tsh b v2-detach >/dev/null 2>&1 || true
	hosts_teardown
}

# as_b CMD...: CMD for VM B's disk (domain 4) instead of VM A's (domain 3).
as_b() {
	VM=$VM_B DOMID=4 "$@"
}

# prepare_on a|b: v2-create, then prepare, with HOTPLUG_PATH/vm (the VM
# the disk's rbd: image is claimed for: docs/ceph.txt).
prepare_on() {
	tsh "$1" v2-create &&
		on "$1" xenstore-write "$(hp_path "$1")/vm" "$VM" &&
		tsh "$1" v2-run prepare
}

# attach_on a|b: prepare_on, then the backend and add.
attach_on() {
	prepare_on "$1" && tsh "$1" v2-backend && tsh "$1" v2-run add
}

# rbd_client a|b: the Ceph client id (client.N) of that host's worker of
# the disk (its rbd: layer's stats).
rbd_client() {
	on "$1" "$BIN/blkstack-ctl" stats --name "$(hp "$1" blkstack-worker)" \
		--json | python3 -c 'import json, sys
d = json.load(sys.stdin)
print("".join("client.%d" % l["rbd"]["client"]
              for l in d["layers"] if l["driver"] == "rbd"))'
}

# lock_owner: the client that holds the image's exclusive lock (rbd lock ls).
lock_owner() {
	rbdc lock ls --format json "rbd/$IMG" | python3 -c 'import json, sys
d = json.load(sys.stdin)
locks = d if isinstance(d, list) else list(d.values())
print(" ".join(l["locker"] for l in locks))'
}

# watchers: how many clients watch the image (rbd status).
watchers() {
	rbdc status --format json "rbd/$IMG" | python3 -c 'import json, sys
print(len(json.load(sys.stdin)["watchers"]))'
}

@test "migrate-rbd: v2 between two hosts on one image: the exclusive lock moves to the destination, the load goes on there, no acknowledged write lost" {
	local log=$BATS_TEST_TMPDIR/acked writer src_client dst_client dst_dev
	run attach_on a
	assert_success
	src=$(hp a blkstack-worker)
	src_client=$(rbd_client a)
	# The guest on host a writes [0, 32M): 8192 blocks of 4 KiB, 8 in flight.
	python3 "$TOP/tests/worker/acked-writes.py" --depth 8 \
		"$RA/$src/nbd.sock" 8192 "$log" >"$BATS_TEST_TMPDIR/writer.out" 2>&1 &
	writer=$!
	wait_lines "$log" 1000

	# Host b, before the blackout, while host a writes: the same VM.
	run prepare_on b
	assert_success
	writer_done "$writer" "$log" 8192
	# Both hosts have the image open; host a's worker holds the lock.
	[ "$(watchers)" = 2 ]
	[ "$(lock_owner)" = "$src_client" ]

	# The blackout: host a lets go of the device, host b attaches.
	run tsh a v2-run remove
	assert_success
	tsh b v2-backend
	run tsh b v2-run add
	assert_success
	dst_client=$(rbd_client b)
	[ "$dst_client" != "$src_client" ]

	# The load goes on on host b, through its device, while host a's
	# worker still has the image open (until unprepare): [32M, 64M).
	dst_dev=$(hp b pdev)
	run timeout 300 fio --name=v --filename="$dst_dev" --ioengine=libaio \
		--direct=1 --offset=32M --size=32M --rw=randwrite --bs=4k \
		--iodepth=16 --verify=crc32c --do_verify=1 --verify_fatal=1 \
		--verify_state_save=0 --output-format=terse
	assert_success
	# librbd handed the exclusive lock over: host b's worker holds it.
	[ "$(lock_owner)" = "$dst_client" ]
	[ "$(watchers)" = 2 ]
	run tsh a v2-run unprepare
	assert_success
	nothing_on a
	[ "$(watchers)" = 1 ]

	# Every write host a acknowledged is in the image: through host b's
	# device, and in rbd export after host b let go too.
	dd if="$dst_dev" of="$BATS_TEST_TMPDIR/b-view" bs=1M count=32 \
		iflag=direct status=none
	check_acked "$BATS_TEST_TMPDIR/b-view" "$log"
	run tsh b v2-detach
	assert_success
	nothing_on b
	[ "$(watchers)" = 0 ]
	rbdc export "rbd/$IMG" "$BATS_TEST_TMPDIR/export" >/dev/null 2>&1
	check_acked "$BATS_TEST_TMPDIR/export" "$log"
	cmp -n 33554432 "$BATS_TEST_TMPDIR/b-view" "$BATS_TEST_TMPDIR/export"
}

@test "migrate-rbd: another VM's disk on another host is refused at prepare, naming the image and the VM; the same VM's destination is not; after a clean detach the other VM may take it" {
	run attach_on a
	assert_success
	# VM B on host b: refused, its worker gone.
	run as_b prepare_on b
	assert_failure
	run as_b hp b hotplug-error
	assert_output --regexp "rbd:rbd/$IMG: the image is in use read-write by VM $VM \(client\.[0-9]+ at [^)]+\), and this disk is VM $VM_B; refusing to share it"
	run as_b tsh b v2-run unprepare
	assert_success
	nothing_on b

	# VM A's destination on host b: allowed; given up, it leaves nothing.
	run prepare_on b
	assert_success
	run tsh b v2-run unprepare
	assert_success
	nothing_on b

	# A disk that names no VM (no HOTPLUG_PATH/vm) shares with nobody.
	tsh b v2-create
	on b xenstore-rm "$(hp_path b)/vm"
	run tsh b v2-run prepare
	assert_failure
	run hp b hotplug-error
	assert_output --partial "in use read-write by VM $VM"
	assert_output --partial "this disk names no VM (vm=)"
	run tsh b v2-run unprepare
	assert_success

	# A claim for a VM that is not the domain's is refused at add: host b
	# says VM A at prepare, but its domain 4 is VM B.
	as_b tsh b v2-create
	as_b on b xenstore-write "$(as_b hp_path b)/vm" "$VM"
	run as_b tsh b v2-run prepare
	assert_success
	as_b tsh b v2-backend
	run as_b tsh b v2-run add
	assert_failure
	run as_b hp b hotplug-error
	assert_output --partial "prepare claimed this disk's rbd: images for VM $VM"
	assert_output --partial "but its domain 4 is VM $VM_B; refusing"
	run as_b tsh b v2-detach
	assert_success
	nothing_on b

	# The VM is never the disk target's to say.
	TARGET="$TARGET,vm=$VM" run as_b prepare_on b
	assert_failure
	TARGET="$TARGET,vm=$VM" run as_b hp b hotplug-error
	assert_output --partial "names vm= for rbd:rbd/$IMG"
	TARGET="$TARGET,vm=$VM" as_b tsh b v2-run unprepare

	# VM A detaches cleanly: VM B may take the image, and then VM A may not.
	run tsh a v2-detach
	assert_success
	nothing_on a
	run as_b attach_on b
	assert_success
	run prepare_on a
	assert_failure
	run hp a hotplug-error
	assert_output --partial "in use read-write by VM $VM_B"
	run tsh a v2-run unprepare
	assert_success
	run as_b tsh b v2-detach
	assert_success
	nothing_on b
}

@test "migrate-rbd: a worker killed with SIGKILL holds the image only until the OSD drops its watch; then another VM takes it, and its lock" {
	local wdir pid sup
	run attach_on a
	assert_success
	wdir=$RA/$(hp a blkstack-worker)
	pid=$(cat "$wdir/pid")
	sup=$(sup_field "$wdir" pid)
	# Host a dies: its supervisor (no restart) and worker, killed.
	[ -z "$sup" ] || kill -KILL "$sup"
	kill -KILL "$pid"
	timeout 10 tail --pid="$pid" -f /dev/null
	# Its claim stays while its watch does (the OSD's osd_client_watch_timeout:
	# 10 s in tests/ceph/cluster; VM B's prepare takes well under that).
	run as_b prepare_on b
	assert_failure
	run as_b hp b hotplug-error
	assert_output --partial "in use read-write by VM $VM"
	run as_b tsh b v2-run unprepare
	assert_success
	# Bounded: the watch goes within the timeout (and a ping interval).
	for _ in $(seq 120); do
		[ "$(watchers)" = 0 ] && break
		sleep 0.5
	done
	[ "$(watchers)" = 0 ]
	run as_b attach_on b
	assert_success
	# VM B writes: librbd takes the exclusive lock the dead worker held.
	head -c 1048576 /dev/urandom >"$BATS_TEST_TMPDIR/b"
	dd if="$BATS_TEST_TMPDIR/b" of="$(as_b hp b pdev)" bs=1M oflag=direct \
		conv=fsync status=none
	[ "$(lock_owner)" = "$(as_b rbd_client b)" ]
	run as_b tsh b v2-detach
	assert_success
	nothing_on b
	rbdc export "rbd/$IMG" "$BATS_TEST_TMPDIR/export" >/dev/null 2>&1
	cmp -n 1048576 "$BATS_TEST_TMPDIR/b" "$BATS_TEST_TMPDIR/export"
	# Host a's toolstack cleans up after the dead disk: remove may fail
	# (the device's flush: its worker is gone); unprepare leaves nothing.
	tsh a v2-run remove || true
	run tsh a v2-run unprepare
	assert_success
	nothing_on a
}

@test "migrate-rbd: v1 add takes the VM from the domain: another VM's disk on another host is refused, the same VM's is not" {
	local XENBUS_PATH
	run attach_on a
	assert_success
	run as_b tsh b --keep-on-failure v1-attach
	assert_failure
	eval "$(as_b on b "$TOOLSTACK" --domid 4 --vm "$VM_B" paths)"
	run on b xenstore-read "$XENBUS_PATH/hotplug-error"
	assert_output --regexp "rbd:rbd/$IMG: the image is in use read-write by VM $VM \(client\.[0-9]+ at [^)]+\), and this disk is VM $VM_B; refusing to share it"
	run as_b tsh b v1-detach
	assert_success
	nothing_on b
	# VM A on host b (its /local/domain/3/vm): allowed.
	run tsh b v1-attach
	assert_success
	run tsh b v1-detach
	assert_success
	nothing_on b
	run tsh a v2-detach
	assert_success
	nothing_on a
}
