#!/usr/bin/env bats
# The vhd: sink in real workers, against real tools: images qemu-img
# made (dynamic and fixed) are served at the size qemu-img reports; what
# qemu-io writes through blkstack reads back identically through
# qemu-img convert -f vpc (compared with the same writes applied to a raw
# file); fio verifies a random write load; log:|vhd: logs guest writes
# only; corrupt images are refused with the file, structure and value
# named; a kill -9 under a write load leaves an image qemu-img and
# vhdiinfo open, with every acknowledged write in it; differencing images
# made by blkstack-img are read identically by vhdimount (libvhdi).
#
# Every worker runs with --foreground in this test's private rundir and
# is stopped in teardown; images live in IMG_DIR (img_dir: not tmpfs).

load helpers

setup() {
	cd "$BATS_TEST_TMPDIR" || return 1
	img_dir
	[ -x "$BIN/blkstack-worker" ] || fail "build/bin/blkstack-worker is not built"
	command -v qemu-img >/dev/null || fail "qemu-img is not installed (make deps)"
	command -v qemu-io >/dev/null || fail "qemu-io is not installed (make deps)"
}

teardown() {
	if [ -n "${MNT:-}" ]; then
		fusermount3 -u "$MNT" 2>/dev/null || fusermount -u "$MNT" 2>/dev/null || true
	fi
	worker_teardown
}

# The same qemu-io writes, to the worker's export and to a raw file.
WRITES=(
	-c 'write -P 0x11 0 4k'
	-c 'write -P 0x22 1020k 8k'
	-c 'write -P 0x33 2044k 12k'
	-c 'write -P 0x44 3m 1m'
	-c 'write -P 0x55 5000k 512'
	-c 'write -P 0x66 7m 64k'
	-c 'write -P 0x77 1536 512'
)

# virtual_size IMG: what qemu-img says, in bytes.
virtual_size() {
	qemu-img info -f vpc --output=json "$1" |
		python3 -c 'import json, sys; print(json.load(sys.stdin)["virtual-size"])'
}

# served_matches IMG: write WRITES through a worker on vhd:IMG, then
# compare the image (qemu-img convert -f vpc) with a raw file of the same
# size that got the same writes.
served_matches() {
	local img=$1 size raw=$IMG_DIR/expect.raw
	size=$(virtual_size "$img")
	worker_start w "vhd:$img"
	run -0 nbdinfo --size "$(nbd_uri)"
	assert_output "$size"
	run -0 qemu-io -f raw "${WRITES[@]}" "$(nbd_uri)"
	# Reads through blkstack: the same bytes.
	run -0 qemu-io -f raw -c 'read -P 0x22 1020k 8k' -c 'read -P 0 1028k 4k' \
		-c 'read -P 0x44 3m 1m' -c 'read -P 0x77 1536 512' "$(nbd_uri)"
	worker_stop
	truncate -s "$size" "$raw"
	run -0 qemu-io -f raw "${WRITES[@]}" "$raw"
	run -0 qemu-img compare -f vpc -F raw "$img" "$raw"
}

@test "vhd: a dynamic image qemu-img made is served at its size, and qemu-img reads back what blkstack wrote" {
	qemu-img create -f vpc "$IMG_DIR/d.vhd" 8M >/dev/null
	served_matches "$IMG_DIR/d.vhd"
	command -v vhdiinfo >/dev/null || fail "vhdiinfo is not installed (make deps)"
	run -0 vhdiinfo "$IMG_DIR/d.vhd"
	assert_output --partial 'Dynamic'
}

@test "vhd: a fixed image qemu-img made (subformat=fixed) is served and written in place" {
	qemu-img create -f vpc -o subformat=fixed "$IMG_DIR/f.vhd" 8M >/dev/null
	local size
	size=$(stat -c %s "$IMG_DIR/f.vhd")
	served_matches "$IMG_DIR/f.vhd"
	# Fixed: no allocation, the file does not grow.
	[ "$(stat -c %s "$IMG_DIR/f.vhd")" = "$size" ]
}

@test "vhd: fio random writes with crc32c verify, 2 MiB blocks allocated concurrently" {
	command -v fio >/dev/null || fail "fio is not installed (make deps)"
	qemu-img create -f vpc "$IMG_DIR/fio.vhd" 64M >/dev/null
	worker_start w "vhd:$IMG_DIR/fio.vhd"
	run -0 fio --name=vhd --ioengine=nbd --uri="$(nbd_uri)" --rw=randwrite \
		--bsrange=512-128k --size=60M --iodepth=32 --verify=crc32c \
		--do_verify=1 --verify_fatal=1 --verify_state_save=0
	assert_output --partial 'err= 0'
	# What fio wrote, as blkstack serves it, is what qemu reads.
	nbdcopy "$(nbd_uri)" "$IMG_DIR/served.raw"
	worker_stop
	run -0 qemu-img compare -f vpc -F raw "$IMG_DIR/fio.vhd" "$IMG_DIR/served.raw"
}

@test "vhd: log:|vhd: logs the guest's writes, not the allocation's metadata" {
	qemu-img create -f vpc "$IMG_DIR/l.vhd" 16M >/dev/null
	export BLKSTACK_RUNDIR=$BATS_TEST_TMPDIR/run
	export WORKER_RUNDIR=$BLKSTACK_RUNDIR
	worker_start vm1 "log:block=4K|vhd:$IMG_DIR/l.vhd"
	run -0 qemu-io -f raw -c 'write 0 4k' -c 'write 6m 8k' "$(nbd_uri)"
	run -0 "$BIN/blkstack-ctl" dirty --name vm1
	# Two allocations wrote footers, bitmaps and BAT sectors too: none
	# of it is a guest write.
	assert_output "$(printf '0 4096\n6291456 8192')"
	run -0 "$BIN/blkstack-ctl" stats --name vm1 --json
	assert_output --partial '"allocations":2'
}

# corrupt IMG OFFSET HEX: overwrite bytes of IMG.
corrupt() {
	printf '%b' "$3" | dd of="$1" bs=1 seek="$2" conv=notrunc status=none
}

@test "vhd: corrupt images are refused, naming the file, structure and value" {
	local img=$IMG_DIR/c.vhd size
	qemu-img create -f vpc "$img" 8M >/dev/null
	size=$(stat -c %s "$img")
	# The footer's checksum.
	cp "$img" "$IMG_DIR/sum.vhd"
	corrupt "$IMG_DIR/sum.vhd" $((size - 512 + 70)) '\xff'
	run ! worker_start a "vhd:$IMG_DIR/sum.vhd"
	assert_output --partial "$IMG_DIR/sum.vhd"
	assert_output --partial 'footer: checksum'
	# The block size in the dynamic header: its checksum catches it.
	cp "$img" "$IMG_DIR/hdr.vhd"
	corrupt "$IMG_DIR/hdr.vhd" $((512 + 32)) '\x00\x30'
	run ! worker_start b "vhd:$IMG_DIR/hdr.vhd"
	assert_output --partial 'dynamic header: checksum'
	# A BAT entry (no checksum) far beyond the file.
	cp "$img" "$IMG_DIR/bat.vhd"
	corrupt "$IMG_DIR/bat.vhd" 1536 '\x00\xab\xcd\xef'
	run ! worker_start d "vhd:$IMG_DIR/bat.vhd"
	assert_output --partial "$IMG_DIR/bat.vhd: BAT entry 0: block at sector 11259375"
	# Not a VHD at all.
	truncate -s 8M "$IMG_DIR/raw.vhd"
	run ! worker_start c "vhd:$IMG_DIR/raw.vhd"
	assert_output --partial 'footer: no "conectix" cookie'
}

@test "vhd: kill -9 under a write load: every acknowledged write is there, qemu-img and vhdiinfo open the image" {
	command -v vhdiinfo >/dev/null || fail "vhdiinfo is not installed (make deps)"
	local img=$IMG_DIR/k.vhd log=$BATS_TEST_TMPDIR/acked
	qemu-img create -f vpc "$img" 64M >/dev/null
	worker_start k "vhd:$img"
	# 4 KiB writes, 8 in flight, over 32 blocks (allocations).
	python3 "$TOP/tests/worker/acked-writes.py" --depth 8 "$NBD_SOCK" 16384 "$log" &
	writer=$!
	for _ in $(seq 1000); do
		[ "$(wc -l 2>/dev/null <"$log" || echo 0)" -ge 3000 ] && break
		sleep 0.01
	done
	kill -KILL "$WORKER_PID"
	wait "$WORKER_PID" || true
	wait "$writer" || true
	acked=$(wc -l <"$log")
	[ "$acked" -ge 3000 ] || fail "only $acked writes acknowledged"
	run -0 vhdiinfo "$img"
	qemu-img convert -f vpc -O raw "$img" "$IMG_DIR/after.raw"
	check_acked "$IMG_DIR/after.raw" "$log"
	# No corruption; a cut-short allocation is a leak at most (exit 3).
	if [ -x "$BIN/blkstack-img" ]; then
		run "$BIN/blkstack-img" check "$img"
		[ "$status" -eq 0 ] || [ "$status" -eq 3 ] ||
			fail "blkstack-img check: $output"
	fi
	# blkstack opens it again and serves the same.
	worker_start k2 "vhd:$img"
	nbdcopy "$(nbd_uri)" "$IMG_DIR/again.raw"
	worker_stop
	cmp "$IMG_DIR/after.raw" "$IMG_DIR/again.raw"
}

@test "vhd: a differencing image from blkstack-img: vhdimount reads what blkstack serves" {
	[ -x "$BIN/blkstack-img" ] || fail "blkstack-img is not built"
	command -v vhdimount >/dev/null || fail "vhdimount is not installed (make deps)"
	cd "$IMG_DIR"
	"$BIN/blkstack-img" create -f vhd base.vhd 8M
	worker_start b "vhd:$IMG_DIR/base.vhd"
	run -0 qemu-io -f raw -c 'write -P 0x11 0 8m' "$(nbd_uri)"
	worker_stop
	"$BIN/blkstack-img" create -f vhd -b base.vhd child.vhd
	run -0 "$BIN/blkstack-img" info child.vhd
	assert_output --partial 'base.vhd'
	worker_start c "vhd:$IMG_DIR/child.vhd"
	run -0 qemu-io -f raw -c 'write -P 0x22 1m 64k' -c 'write -P 0x33 6m 4k' "$(nbd_uri)"
	nbdcopy "$(nbd_uri)" "$IMG_DIR/served.raw"
	worker_stop
	run -0 "$BIN/blkstack-img" check child.vhd
	MNT=$IMG_DIR/mnt
	mkdir "$MNT"
	timeout 60 vhdimount child.vhd "$MNT" >/dev/null 2>&1 &
	for _ in $(seq 100); do
		[ -e "$MNT/vhdi2" ] && break
		sleep 0.1
	done
	cmp "$MNT/vhdi2" "$IMG_DIR/served.raw"
}

@test "vhd: valgrind is clean on a worker that allocates, rewrites, reads and flushes" {
	command -v valgrind >/dev/null || skip "valgrind is not installed"
	local img=$IMG_DIR/vg.vhd ready=$BATS_TEST_TMPDIR/vg.ready line pid
	qemu-img create -f vpc "$img" 8M >/dev/null
	mkfifo "$ready"
	valgrind -q --error-exitcode=99 --leak-check=full \
		--errors-for-leak-kinds=definite,indirect \
		"$BIN/blkstack-worker" --rundir "$BATS_TEST_TMPDIR/run" --name vg \
		--chain "log:|vhd:$img" --foreground --ready-fd 3 \
		3>"$ready" </dev/null >"$BATS_TEST_TMPDIR/vg.log" 2>&1 &
	pid=$!
	read -r line <"$ready"
	assert_equal "$line" ok
	run -0 qemu-io -f raw -c 'write -P 0x5a 1m 2m' -c 'write -P 0x5b 1m 4k' \
		-c 'read -P 0x5b 1m 4k' -c 'read -P 0x5a 1028k 1m' -c 'read -P 0 0 1m' \
		-c flush "$(nbd_uri "$BATS_TEST_TMPDIR/run/vg/nbd.sock")"
	run -0 nbdinfo --map "$(nbd_uri "$BATS_TEST_TMPDIR/run/vg/nbd.sock")"
	worker_stop "$pid" || {
		cat "$BATS_TEST_TMPDIR/vg.log"
		fail "worker exited $? under valgrind"
	}
}
