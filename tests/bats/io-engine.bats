#!/usr/bin/env bats
# The file queue's two engines (issue 16): a worker forced onto libaio and
# one forced onto io_uring each serve writes and reads (fio --verify
# through NBD, qemu-img compare for qcow2:), and info/stats say which
# engine the chain uses; the conf key io-engine is honoured, --io-engine
# beats it, and a bad value is refused naming it.

load helpers

setup() {
	command -v fio >/dev/null || skip "fio is not installed"
	command -v qemu-img >/dev/null || skip "qemu-img is not installed"
	cd "$BATS_TEST_TMPDIR" || return 1
	img_dir
	D=$IMG_DIR
	BLKSTACK_CONF=$BATS_TEST_TMPDIR/blkstack.conf
	export BLKSTACK_CONF
	: >"$BLKSTACK_CONF"
}

teardown() {
	worker_teardown
}

# engine_is NAME WANT: info --json and stats --json of worker NAME say
# "io_engine":"WANT".
engine_is() {
	run --separate-stderr "$BIN/blkstack-ctl" --rundir "$WORKER_RUNDIR" \
		info --name "$1" --json
	assert_success
	assert_output --partial "\"io_engine\":\"$2\""
	run --separate-stderr "$BIN/blkstack-ctl" --rundir "$WORKER_RUNDIR" \
		stats --name "$1" --json
	assert_success
	assert_output --partial "\"io_engine\":\"$2\""
}

# verify_rw: random 4k writes then reads, checked (crc32c), QD 32.
verify_rw() {
	run -0 timeout 120 fio --name=v --ioengine=nbd --uri="$(nbd_uri)" \
		--rw=randwrite --bs=4k --size=32M --iodepth=32 \
		--verify=crc32c --do_verify=1 --verify_fatal=1
	assert_output --partial "err= 0"
}

@test "io-engine: aio: on --io-engine=libaio and --io-engine=io_uring serves verified writes and reads; info and stats say the engine" {
	local e
	for e in libaio io_uring; do
		truncate -s 64M "$D/$e.img"
		worker_start "w-$e" "aio:$D/$e.img" --io-engine="$e"
		engine_is "w-$e" "$e"
		verify_rw
		# What went through the worker is on the file.
		run -0 timeout 60 nbdcopy "$(nbd_uri)" "$D/$e.copy"
		cmp "$D/$e.img" "$D/$e.copy"
		worker_stop
	done
}

@test "io-engine: auto (the default) is io_uring here; the conf key is honoured and --io-engine beats it" {
	truncate -s 16M "$D/a.img"
	worker_start auto "aio:$D/a.img"
	engine_is auto io_uring
	worker_stop
	echo "io-engine = libaio" >"$BLKSTACK_CONF"
	worker_start conf "aio:$D/a.img"
	engine_is conf libaio
	worker_stop
	worker_start opt "aio:$D/a.img" --io-engine=io_uring
	engine_is opt io_uring
	worker_stop
}

@test "io-engine: a bad value is refused with a message naming it (option and conf key), exit 1" {
	truncate -s 16M "$D/b.img"
	run worker_start bad "aio:$D/b.img" --io-engine=uring
	assert_failure
	assert_output --partial "--io-engine: io engine 'uring': must be auto, io_uring or libaio"
	run "$BIN/blkstack-worker" --rundir "$BATS_TEST_TMPDIR/run" --name bad2 \
		--chain "aio:$D/b.img" --foreground --io-engine=
	[ "$status" -eq 1 ]
	assert_output --partial "io engine ''"
	echo "io-engine = fast" >"$BLKSTACK_CONF"
	run worker_start bad3 "aio:$D/b.img"
	assert_failure
	assert_output --partial "blkstack.conf:1: io-engine: 'fast' is not"
}

@test "io-engine: qcow2: on both engines: verified random writes, then a whole copy in that qemu-img compare finds equal to its source; the image checks clean" {
	local e
	head -c 64M /dev/urandom >"$D/src.raw"
	for e in libaio io_uring; do
		qemu-img create -q -f qcow2 "$D/$e.qcow2" 64M
		worker_start "q-$e" "qcow2:$D/$e.qcow2" --io-engine="$e"
		engine_is "q-$e" "$e"
		verify_rw
		run -0 timeout 60 nbdcopy "$D/src.raw" "$(nbd_uri)"
		worker_stop
		run qemu-img check "$D/$e.qcow2"
		assert_success
		assert_output --partial "No errors were found on the image."
		run qemu-img compare -f qcow2 -F raw "$D/$e.qcow2" "$D/src.raw"
		assert_success
	done
}
