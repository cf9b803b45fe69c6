#!/usr/bin/env bats
# The nbd: sink (libblkstack/drivers/nbd.c): a worker whose chain ends on a
# remote NBD server, against real servers (nbdkit's file plugin, qemu-nbd)
# and real clients (nbdcopy, nbdinfo, qemu-io, fio), including servers
# that die, stay away, come back different, or never answer.

load helpers

setup() {
	img_dir
	SRV_PIDS=()
}

teardown() {
	local p
	for p in "${SRV_PIDS[@]}"; do
		kill -9 "$p" 2>/dev/null || true
	done
	worker_teardown
}

# srv_nbdkit SOCK ARGS...: nbdkit serving on Unix socket SOCK (it forks
# once the socket listens); its pid goes to SRV_PID and SRV_PIDS.
srv_nbdkit() {
	local sock=$1 pidf
	shift
	pidf=$BATS_TEST_TMPDIR/nbdkit.$RANDOM.pid
	rm -f "$sock"
	nbdkit --unix "$sock" --pidfile "$pidf" "$@"
	SRV_PID=$(cat "$pidf")
	SRV_PIDS+=("$SRV_PID")
}

# free_port: a TCP port on 127.0.0.1 that nothing listens on now.
free_port() {
	python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# srv_nbdkit_tcp PORT PIDFILE ARGS...: nbdkit on 127.0.0.1:PORT (it forks
# once it listens); its pid goes to SRV_PIDS.
srv_nbdkit_tcp() {
	local port=$1 pidf=$2
	shift 2
	nbdkit -i 127.0.0.1 -p "$port" --pidfile "$pidf" "$@"
	SRV_PIDS+=("$(cat "$pidf")")
}

# srv_kill: SIGKILL the last server and wait until it has gone.
srv_kill() {
	kill -9 "$SRV_PID"
	local i
	for i in $(seq 100); do
		kill -0 "$SRV_PID" 2>/dev/null || return 0
		sleep 0.05
	done
	echo "server $SRV_PID did not die" >&2
	return 1
}

# sink_stats [NAME]: the nbd layer's own stats (docs/chains.txt) as one
# line of "key value" pairs, from the worker's stats --json.
sink_stats() {
	"$BIN/blkstack-ctl" --rundir "$WORKER_RUNDIR" stats --name "${1:-w}" \
		--json | python3 -c 'import json, sys
d = json.load(sys.stdin)
s = [x["nbd"] for x in d["layers"] if "nbd" in x][0]
print(" ".join("%s %s" % kv for kv in s.items()))'
}

# wait_sink PATTERN [SECONDS]: until the sink's stats match (bounded).
wait_sink() {
	local i
	for i in $(seq $((${2:-15} * 10))); do
		sink_stats | grep -qE "$1" && return 0
		sleep 0.1
	done
	echo "sink never matched '$1': $(sink_stats)" >&2
	return 1
}

@test "nbd-sink: nbdkit's file plugin behind a worker: data both ways, block status passes through" {
	truncate -s 64M "$IMG_DIR/img.raw"
	srv_nbdkit "$BATS_TEST_TMPDIR/s.sock" file "$IMG_DIR/img.raw"
	worker_start w "nbd:nbd+unix:///?socket=$BATS_TEST_TMPDIR/s.sock"
	head -c 8M /dev/urandom >"$BATS_TEST_TMPDIR/a"
	nbdcopy "$BATS_TEST_TMPDIR/a" "$(nbd_uri)"
	# What the worker acknowledged is in the server's file.
	cmp -n 8388608 "$BATS_TEST_TMPDIR/a" "$IMG_DIR/img.raw"
	nbdcopy "$(nbd_uri)" "$BATS_TEST_TMPDIR/b"
	cmp -n 8388608 "$BATS_TEST_TMPDIR/a" "$BATS_TEST_TMPDIR/b"
	run nbdinfo --size "$(nbd_uri)"
	assert_output 67108864
	# The server's holes, seen through the worker.
	run nbdinfo --map "$(nbd_uri)"
	assert_line --regexp '^ +0 +8388608 +0 +data$'
	assert_line --regexp '^ +8388608 +58720256 +3 +hole,zero$'
}

@test "nbd-sink: qemu-nbd behind a worker: fio verify, and qemu-img compare of the two views" {
	truncate -s 128M "$IMG_DIR/img.raw"
	qemu-nbd -f raw --cache=none --shared=4 -k "$BATS_TEST_TMPDIR/q.sock" --persistent \
		"$IMG_DIR/img.raw" &
	SRV_PIDS+=("$!")
	timeout 10 sh -c "until [ -S '$BATS_TEST_TMPDIR/q.sock' ]; do sleep 0.1; done"
	worker_start w "log:|nbd:nbd+unix:///?socket=$BATS_TEST_TMPDIR/q.sock"
	run fio --name=v --ioengine=nbd --uri="$(nbd_uri)" --rw=randwrite \
		--bs=4k --iodepth=16 --size=32M --verify=crc32c --do_verify=1 \
		--verify_fatal=1 --verify_state_save=0 --output-format=terse
	assert_success
	run qemu-img compare -f raw -F raw "$(nbd_uri)" \
		"nbd+unix:///?socket=$BATS_TEST_TMPDIR/q.sock"
	assert_success
	assert_output --partial 'Images are identical'
}

@test "nbd-sink: TCP to nbdkit on a local port" {
	local port
	truncate -s 16M "$IMG_DIR/img.raw"
	port=$(free_port)
	srv_nbdkit_tcp "$port" "$BATS_TEST_TMPDIR/t.pid" file "$IMG_DIR/img.raw"
	worker_start w "nbd:nbd://127.0.0.1:$port/"
	head -c 4096 /dev/urandom >"$BATS_TEST_TMPDIR/a"
	nbdcopy "$BATS_TEST_TMPDIR/a" "$(nbd_uri)"
	cmp -n 4096 "$BATS_TEST_TMPDIR/a" "$IMG_DIR/img.raw"
}

@test "nbd-sink: write zeroes, trim, flush and FUA reach the server as such" {
	truncate -s 16M "$IMG_DIR/img.raw"
	srv_nbdkit "$BATS_TEST_TMPDIR/s.sock" --filter=log file "$IMG_DIR/img.raw" \
		logfile="$BATS_TEST_TMPDIR/srv.log"
	worker_start w "nbd:nbd+unix:///?socket=$BATS_TEST_TMPDIR/s.sock"
	run qemu-io -f raw -c 'write -P 0xab 0 1M' -c 'write -f -P 0xcd 1M 64k' \
		-c 'write -z 2M 1M' -c 'discard 4M 1M' -c flush "$(nbd_uri)"
	assert_success
	refute_output --partial failed
	run od -An -tx1 -j 1048576 -N 4 "$IMG_DIR/img.raw"
	assert_output ' cd cd cd cd'
	run grep -E 'Write id=[0-9]+ offset=0x100000 count=0x10000 fua=1' \
		"$BATS_TEST_TMPDIR/srv.log"
	assert_success
	run grep -E 'Zero id=[0-9]+ offset=0x200000 count=0x100000' \
		"$BATS_TEST_TMPDIR/srv.log"
	assert_success
	run grep -E 'Trim id=[0-9]+ offset=0x400000 count=0x100000' \
		"$BATS_TEST_TMPDIR/srv.log"
	assert_success
	run grep -E 'Flush id=' "$BATS_TEST_TMPDIR/srv.log"
	assert_success
}

@test "nbd-sink: a read-only server gives a read-only disk" {
	truncate -s 16M "$IMG_DIR/img.raw"
	srv_nbdkit "$BATS_TEST_TMPDIR/s.sock" -r file "$IMG_DIR/img.raw"
	worker_start w "nbd:nbd+unix:///?socket=$BATS_TEST_TMPDIR/s.sock"
	run nbdinfo --json "$(nbd_uri)"
	assert_output --partial '"is_read_only": true'
	run qemu-io -f raw -c 'write 0 4k' "$(nbd_uri)"
	assert_output --partial 'ermission denied'
}

@test "nbd-sink: a server error reply is that request's error, not a lost connection" {
	truncate -s 16M "$IMG_DIR/img.raw"
	srv_nbdkit "$BATS_TEST_TMPDIR/s.sock" --filter=error file \
		"$IMG_DIR/img.raw" error-pread=ENOSPC error-pread-rate=100% \
		error-pread-file="$BATS_TEST_TMPDIR/fail"
	worker_start w "nbd:nbd+unix:///?socket=$BATS_TEST_TMPDIR/s.sock"
	touch "$BATS_TEST_TMPDIR/fail"
	run qemu-io -f raw -c 'read 0 4k' "$(nbd_uri)"
	assert_output --partial 'read failed'
	rm "$BATS_TEST_TMPDIR/fail"
	run qemu-io -f raw -c 'read 0 4k' "$(nbd_uri)"
	refute_output --partial failed
	run sink_stats
	assert_output --regexp 'reconnects 0 '
	assert_output --regexp 'requeued 0 '
}

@test "nbd-sink: the server killed and restarted under fio verify: no error, one reconnection" {
	local fio_pid
	truncate -s 64M "$IMG_DIR/img.raw"
	# 2 ms a request: fio's 8 are in flight whenever the server dies.
	srv_nbdkit "$BATS_TEST_TMPDIR/s.sock" --filter=delay file \
		"$IMG_DIR/img.raw" delay-read=2ms delay-write=2ms
	worker_start w "nbd:nbd+unix:///?socket=$BATS_TEST_TMPDIR/s.sock,retry=30"
	fio --name=v --ioengine=nbd --uri="$(nbd_uri)" --rw=randwrite --bs=4k \
		--iodepth=8 --size=16M --verify=crc32c \
		--do_verify=1 --verify_fatal=1 --verify_state_save=0 \
		--output="$BATS_TEST_TMPDIR/fio.out" &
	fio_pid=$!
	sleep 1
	kill -0 "$fio_pid" || {
		echo "fio finished before the server was killed" >&2
		return 1
	}
	srv_kill
	wait_sink 'connection down'
	sleep 1
	srv_nbdkit "$BATS_TEST_TMPDIR/s.sock" --filter=delay file \
		"$IMG_DIR/img.raw" delay-read=2ms delay-write=2ms
	run timeout 60 tail --pid="$fio_pid" -f /dev/null
	wait "$fio_pid"
	run grep -c 'err= 0' "$BATS_TEST_TMPDIR/fio.out"
	assert_output 1
	run sink_stats
	assert_output --regexp 'connection ready .*reconnects 1 '
	assert_output --regexp 'failed_while_down 0 '
	refute_output --regexp 'requeued 0 '
}

# srv_qemu_nbd SOCK IMAGE: qemu-nbd (O_DIRECT) on Unix socket SOCK, once
# it listens; its pid goes to SRV_PID and SRV_PIDS.
srv_qemu_nbd() {
	rm -f "$1"
	qemu-nbd -f raw --cache=none --shared=4 -k "$1" --persistent "$2" &
	SRV_PID=$!
	SRV_PIDS+=("$SRV_PID")
	timeout 10 sh -c "until [ -S '$1' ]; do sleep 0.1; done"
}

@test "nbd-sink: qemu-nbd SIGKILLed twice and restarted under fio verify: no error, two reconnections" {
	local fio_pid k
	truncate -s 64M "$IMG_DIR/img.raw"
	srv_qemu_nbd "$BATS_TEST_TMPDIR/q.sock" "$IMG_DIR/img.raw"
	worker_start w "nbd:nbd+unix:///?socket=$BATS_TEST_TMPDIR/q.sock,retry=30"
	fio --name=v --ioengine=nbd --uri="$(nbd_uri)" --rw=randwrite --bs=4k \
		--iodepth=16 --size=16M --loops=200 --verify=crc32c \
		--do_verify=1 --verify_fatal=1 --verify_state_save=0 \
		--output="$BATS_TEST_TMPDIR/fio.out" &
	fio_pid=$!
	for k in 1 2; do
		sleep 1
		kill -0 "$fio_pid" || {
			echo "fio finished before kill $k" >&2
			return 1
		}
		srv_kill
		wait_sink 'connection down'
		sleep 0.5
		srv_qemu_nbd "$BATS_TEST_TMPDIR/q.sock" "$IMG_DIR/img.raw"
		wait_sink "reconnects $k "
	done
	# Enough: the rest of fio's loops are not needed.
	sleep 1
	kill -INT "$fio_pid"
	run timeout 60 tail --pid="$fio_pid" -f /dev/null
	wait "$fio_pid" || true
	cat "$BATS_TEST_TMPDIR/fio.out"
	run grep -c 'err= 0' "$BATS_TEST_TMPDIR/fio.out"
	assert_output 1
	run sink_stats
	assert_output --regexp 'connection ready .*reconnects 2 '
	assert_output --regexp 'failed_while_down 0 '
}

@test "nbd-sink: a server that stays away: EIO after retry=, at once after that, and back when it returns" {
	truncate -s 16M "$IMG_DIR/img.raw"
	srv_nbdkit "$BATS_TEST_TMPDIR/s.sock" file "$IMG_DIR/img.raw"
	worker_start w "nbd:nbd+unix:///?socket=$BATS_TEST_TMPDIR/s.sock,retry=2"
	srv_kill
	# Down, or already failed: retry= is 2 s, which a loaded machine's
	# first look (a blkstack-ctl and a python3) can miss.
	wait_sink 'connection (down|failed)'
	run timeout 30 qemu-io -f raw -c 'read 0 4k' "$(nbd_uri)"
	assert_output --partial 'read failed: Input/output error'
	wait_sink 'connection failed'
	run timeout 5 qemu-io -f raw -c 'read 0 4k' "$(nbd_uri)"
	assert_output --partial 'read failed: Input/output error'
	srv_nbdkit "$BATS_TEST_TMPDIR/s.sock" file "$IMG_DIR/img.raw"
	wait_sink 'connection ready' 20
	run qemu-io -f raw -c 'read 0 4k' "$(nbd_uri)"
	refute_output --partial failed
}

@test "nbd-sink: unflushed writes lost with the connection fail the next flush once; reconnect-flush=trust sends it" {
	local mode
	for mode in fail trust; do
		truncate -s 16M "$IMG_DIR/img.$mode"
		srv_nbdkit "$BATS_TEST_TMPDIR/s.sock" file "$IMG_DIR/img.$mode"
		worker_start "$mode" "nbd:nbd+unix:///?socket=$BATS_TEST_TMPDIR/s.sock,reconnect-flush=$mode"
		# nbdcopy sends no flush of its own (qemu-io would).
		head -c 65536 /dev/urandom >"$BATS_TEST_TMPDIR/a"
		nbdcopy "$BATS_TEST_TMPDIR/a" "$(nbd_uri "$NBD_SOCK")"
		srv_kill
		srv_nbdkit "$BATS_TEST_TMPDIR/s.sock" file "$IMG_DIR/img.$mode"
		# A write first: qemu sends no flush when it has written nothing.
		run timeout 30 qemu-io -f raw -c 'write 1M 4k' -c flush \
			"$(nbd_uri "$NBD_SOCK")"
		# (qemu-io prints nothing for a failed flush: its status says it.)
		assert_output --partial 'wrote 4096/4096'
		if [ "$mode" = fail ]; then
			assert_failure
		else
			assert_success
		fi
		run sink_stats "$mode"
		if [ "$mode" = fail ]; then
			assert_output --regexp 'flush_failed_after_loss 1 '
		else
			assert_output --regexp 'flush_failed_after_loss 0 '
		fi
		assert_output --regexp 'reconnects 1 '
		# qemu-io flushed again when it closed: that one went through.
		run "$BIN/blkstack-ctl" --rundir "$WORKER_RUNDIR" stats --name "$mode"
		assert_output --regexp "flush +2 ops +0 bytes +$([ "$mode" = fail ] && echo 1 || echo 0) errors"
		worker_stop
		kill -9 "$SRV_PID"
	done
}

@test "nbd-sink: a server that comes back with another size is refused; requests fail after retry=" {
	truncate -s 16M "$IMG_DIR/img.raw"
	truncate -s 32M "$IMG_DIR/other.raw"
	srv_nbdkit "$BATS_TEST_TMPDIR/s.sock" file "$IMG_DIR/img.raw"
	worker_start w "nbd:nbd+unix:///?socket=$BATS_TEST_TMPDIR/s.sock,retry=3"
	srv_kill
	srv_nbdkit "$BATS_TEST_TMPDIR/s.sock" file "$IMG_DIR/other.raw"
	run timeout 30 qemu-io -f raw -c 'read 0 4k' "$(nbd_uri)"
	assert_output --partial 'read failed: Input/output error'
	# Attempts go on with a back-off: wait for one that reached it.
	wait_sink "the export's size changed" 15
	run sink_stats
	assert_output --regexp 'reconnects 0 '
}

@test "nbd-sink: refused at start: no server, a server that never answers, a bad URI" {
	run worker_start w "nbd:nbd+unix:///?socket=$BATS_TEST_TMPDIR/none.sock"
	assert_failure
	assert_output --partial "nbd+unix:///?socket=$BATS_TEST_TMPDIR/none.sock"
	assert_output --partial 'connect'

	# A socket that accepts and says nothing: connect-timeout bounds it.
	python3 -c 'import socket, sys, time
s = socket.socket(socket.AF_UNIX)
s.bind(sys.argv[1]); s.listen(4)
c = s.accept()
time.sleep(60)' "$BATS_TEST_TMPDIR/mute.sock" &
	SRV_PIDS+=("$!")
	timeout 10 sh -c "until [ -S '$BATS_TEST_TMPDIR/mute.sock' ]; do sleep 0.1; done"
	SECONDS=0
	run worker_start m "nbd:nbd+unix:///?socket=$BATS_TEST_TMPDIR/mute.sock,connect-timeout=1"
	assert_failure
	assert_output --partial 'no answer in 1 s (connect-timeout)'
	[ "$SECONDS" -lt 10 ]

	run worker_start b "nbd:nbd://host/e?socket=/x"
	assert_failure
	assert_output --partial 'socket= belongs to nbd+unix'
}

# mk_ca DIR NAME: a self-signed CA in DIR (ca-cert.pem, ca-key.pem).
mk_ca() {
	mkdir -p "$1"
	openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=$2" \
		-keyout "$1/ca-key.pem" -out "$1/ca-cert.pem" 2>/dev/null
}

# mk_cert CADIR DIR ROLE: DIR/ROLE-cert.pem and ROLE-key.pem signed by
# CADIR's CA, for localhost and 127.0.0.1, and a copy of the CA's
# certificate (the layout nbdkit and libnbd read).
mk_cert() {
	local ca=$1 dir=$2 role=$3 ext=$BATS_TEST_TMPDIR/ext.$RANDOM
	mkdir -p "$dir"
	printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=%s\n' \
		"$([ "$role" = server ] && echo serverAuth || echo clientAuth)" >"$ext"
	openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" \
		-keyout "$dir/$role-key.pem" -out "$dir/$role.csr" 2>/dev/null
	openssl x509 -req -in "$dir/$role.csr" -CA "$ca/ca-cert.pem" \
		-CAkey "$ca/ca-key.pem" -CAcreateserial -days 2 \
		-extfile "$ext" -out "$dir/$role-cert.pem" 2>/dev/null
	cp "$ca/ca-cert.pem" "$dir/ca-cert.pem"
	rm -f "$dir/$role.csr"
}

@test "nbd-sink: nbds:// to nbdkit with --tls=require: data both ways; a wrong CA, plain nbd:// and TLS to a plain server are refused" {
	command -v openssl >/dev/null || skip "openssl is not installed"
	nbdkit --dump-config | grep -qx 'tls=yes' || skip "this nbdkit has no TLS"
	local port plain t=$BATS_TEST_TMPDIR
	mk_ca "$t/ca" blkstack-test-ca
	mk_cert "$t/ca" "$t/srv" server
	mk_cert "$t/ca" "$t/cli" client
	truncate -s 16M "$IMG_DIR/img.raw"
	port=$(free_port)
	srv_nbdkit_tcp "$port" "$t/tls.pid" --tls=require \
		--tls-certificates="$t/srv" --tls-verify-peer file "$IMG_DIR/img.raw"
	worker_start w "nbd:nbds://localhost:$port/?tls-certificates=$t/cli"
	head -c 1048576 /dev/urandom >"$t/a"
	nbdcopy "$t/a" "$(nbd_uri)"
	cmp -n 1048576 "$t/a" "$IMG_DIR/img.raw"
	nbdcopy "$(nbd_uri)" - | cmp -n 1048576 - "$t/a"

	# A client whose certificates come from another CA: no session.
	mk_ca "$t/ca2" other-ca
	mk_cert "$t/ca2" "$t/cli2" client
	run worker_start x "nbd:nbds://localhost:$port/?tls-certificates=$t/cli2,connect-timeout=5"
	assert_failure
	assert_output --partial "nbds://localhost:$port/"
	# No TLS to a server that requires it.
	run worker_start y "nbd:nbd://localhost:$port/,connect-timeout=5"
	assert_failure
	assert_output --partial "nbd://localhost:$port/"
	# TLS required by us, a server without it.
	plain=$(free_port)
	srv_nbdkit_tcp "$plain" "$t/plain.pid" file "$IMG_DIR/img.raw"
	run worker_start z "nbd:nbds://localhost:$plain/?tls-certificates=$t/cli,connect-timeout=5"
	assert_failure
	assert_output --partial "nbds://localhost:$plain/"
	# The first worker still serves.
	nbdcopy "$(nbd_uri)" - | cmp -n 1048576 - "$t/a"
}
