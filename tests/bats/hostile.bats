#!/usr/bin/env bats
# Hostile or mistaken input to the hotplug side: dom0's policy on images,
# the run directory, planted symlinks, a BACKEND_PATH that is not this
# disk's, a NUL byte in a xenstore value.  Each is refused with a clear
# message, and nothing is left behind.

load helpers

setup() {
	hotplug_setup
}

teardown() {
	for m in $(awk -v d="$BATS_TEST_TMPDIR" 'index($2, d) == 1 { print $2 }' /proc/mounts); do
		umount "$m" 2>/dev/null || true
	done
	[ -z "${LOOPDEV:-}" ] || losetup -d "$LOOPDEV" 2>/dev/null || true
	hotplug_teardown
}

# prepare_fails TARGET TEXT [OPTIONS...]: v2 create, version, prepare of
# TARGET (for the disk xs-toolstack OPTIONS name) fails, hotplug-error
# says TEXT, no worker of that disk is left, and unprepare copes.
prepare_fails() {
	local target=$1 text=$2
	shift 2
	TARGET=$target run ts "$@" v2-create
	TARGET=$target run ts "$@" v2-run version
	TARGET=$target run ts "$@" v2-run prepare
	assert_failure 1
	eval "$("$TOOLSTACK" "$@" paths)"
	run xs_read "$HOTPLUG_PATH/hotplug-error"
	assert_output --partial "$text"
	# The disk's worker is named after its records path ('/' as '-').
	local name=${HOTPLUG_PATH#/}
	run "$BIN/blkstack-ctl" --rundir "$BLKSTACK_RUNDIR" list
	refute_output --partial "name=${name//\//-} "
	TARGET=$target run ts "$@" v2-detach
	assert_success
	eval "$("$TOOLSTACK" paths)"
}

@test "hostile: a block device mounted in dom0 is refused, with where" {
	truncate -s 32M "$BATS_TEST_TMPDIR/fs.img"
	mke2fs -q -F "$BATS_TEST_TMPDIR/fs.img"
	LOOPDEV=$(losetup -f --show "$BATS_TEST_TMPDIR/fs.img")
	mkdir "$BATS_TEST_TMPDIR/mnt"
	mount "$LOOPDEV" "$BATS_TEST_TMPDIR/mnt"
	prepare_fails "sync:$LOOPDEV" "mounted at $BATS_TEST_TMPDIR/mnt"
	assert_no_leftovers
	# Unmounted, the same device is a fine image.
	umount "$BATS_TEST_TMPDIR/mnt"
	TARGET="sync:$LOOPDEV" run ts v2-attach
	assert_success
	TARGET="sync:$LOOPDEV" run ts v2-detach
	assert_success
	assert_no_leftovers
}

@test "hostile: blkstack's own dom0 device of one disk is refused as another's image" {
	run ts v2-attach
	assert_success
	dev=$(xs_read "$HOTPLUG_PATH/pdev")
	prepare_fails "aio:$dev" "a dom0 device blkstack made for a disk" --domid 2
	run ts v2-detach
	assert_success
	assert_no_leftovers
}

@test "hostile: with images = DIR, an image outside it is refused, symlinks resolved" {
	export BLKSTACK_CONF=$BATS_TEST_TMPDIR/blkstack.conf
	printf '# only here\nimages = %s /nonexistent/dir\n' "$IMG_DIR" >"$BLKSTACK_CONF"
	truncate -s 16M "$BATS_TEST_TMPDIR/outside.img"
	prepare_fails "aio:$BATS_TEST_TMPDIR/outside.img" "outside the image directories"
	assert_no_leftovers
	ln -s "$BATS_TEST_TMPDIR/outside.img" "$IMG_DIR/link.img"
	prepare_fails "aio:$IMG_DIR/link.img" "image $BATS_TEST_TMPDIR/outside.img is outside"
	assert_no_leftovers
	# Inside is fine.
	run ts v2-attach
	assert_success
	run ts v2-detach
	assert_success
	assert_no_leftovers
}

@test "hostile: a bad images = line is refused with the file and line" {
	export BLKSTACK_CONF=$BATS_TEST_TMPDIR/blkstack.conf
	printf 'device = loop\nimages = relative/dir\n' >"$BLKSTACK_CONF"
	prepare_fails "aio:$IMG" "blkstack.conf:2: images: \"relative/dir\""
	assert_no_leftovers
	printf 'images = /a/../b\n' >"$BLKSTACK_CONF"
	prepare_fails "aio:$IMG" "blkstack.conf:1: images"
	assert_no_leftovers
}

@test "hostile: a run directory others may write, or a symlink, is refused" {
	mkdir -m 0777 "$BATS_TEST_TMPDIR/open"
	BLKSTACK_RUNDIR=$BATS_TEST_TMPDIR/open run ts v2-attach
	assert_failure
	assert_output --partial "mode 0777"
	run ts v2-detach
	mkdir "$BATS_TEST_TMPDIR/real"
	ln -s "$BATS_TEST_TMPDIR/real" "$BATS_TEST_TMPDIR/link"
	BLKSTACK_RUNDIR=$BATS_TEST_TMPDIR/link run ts v2-attach
	assert_failure
	assert_output --partial "not a directory (a symlink?)"
	run ts v2-detach
	mkdir "$BATS_TEST_TMPDIR/theirs"
	chown nobody "$BATS_TEST_TMPDIR/theirs"
	BLKSTACK_RUNDIR=$BATS_TEST_TMPDIR/theirs run ts v2-attach
	assert_failure
	assert_output --partial "owned by uid $(id -u nobody)"
	# Nothing was started in any of them.
	run find "$BATS_TEST_TMPDIR/open" "$BATS_TEST_TMPDIR/real" "$BATS_TEST_TMPDIR/theirs" -mindepth 1
	assert_output ""
}

@test "hostile: a symlink planted at the usage record's temporary does not make add write through it" {
	ts v2-create
	ts v2-run version
	ts v2-run prepare
	ts v2-backend
	name=$(xs_read "$HOTPLUG_PATH/blkstack-worker")
	echo precious >"$BATS_TEST_TMPDIR/victim"
	ln -s "$BATS_TEST_TMPDIR/victim" "$BLKSTACK_RUNDIR/$name.attached.tmp"
	run ts v2-run add
	assert_success
	assert_equal "$(cat "$BATS_TEST_TMPDIR/victim")" precious
	[ -f "$BLKSTACK_RUNDIR/$name.attached" ] && [ ! -L "$BLKSTACK_RUNDIR/$name.attached" ]
	run ts v2-detach
	assert_success
	assert_no_leftovers
}

@test "hostile: add with a BACKEND_PATH that does not exist fails and does not create it" {
	ts v2-create
	ts v2-run version
	ts v2-run prepare
	run env HOTPLUG_PATH="$HOTPLUG_PATH" BACKEND_PATH=/local/domain/0/backend/vbd/1/51712 "$SCRIPT" add
	assert_failure 1
	assert_output --partial "does not exist"
	xs_absent /local/domain/0/backend/vbd/1/51712
	run ts v2-detach
	assert_success
	assert_no_leftovers
}

@test "hostile: a BACKEND_PATH whose frontend disagrees, or not the one add served, is refused" {
	run ts v2-attach
	assert_success
	# Another guest's backend, with a frontend-id that does not match its path.
	ts --domid 2 v2-backend
	xenstore-write /local/domain/0/backend/vbd/2/51712/frontend-id 1
	run env HOTPLUG_PATH="$HOTPLUG_PATH" BACKEND_PATH=/local/domain/0/backend/vbd/2/51712 "$SCRIPT" add
	assert_failure 1
	assert_output --partial "frontend-id is '1', not '2'"
	# No report was written into that foreign directory.
	xs_absent /local/domain/0/backend/vbd/2/51712/hotplug-error
	xs_absent /local/domain/0/backend/vbd/2/51712/physical-device
	# A consistent backend, but not the one this disk's add served.
	xenstore-write /local/domain/0/backend/vbd/2/51712/frontend-id 2
	run env HOTPLUG_PATH="$HOTPLUG_PATH" BACKEND_PATH=/local/domain/0/backend/vbd/2/51712 "$SCRIPT" add
	assert_failure 1
	assert_output --partial "this disk's backend is $BACKEND_PATH"
	xs_absent /local/domain/0/backend/vbd/2/51712/physical-device
	# Not a vbd backend path at all.
	run env HOTPLUG_PATH="$HOTPLUG_PATH" BACKEND_PATH=/local/domain/0/libxl/x "$SCRIPT" add
	assert_failure 1
	assert_output --partial "is not a vbd backend directory"
	xs_absent /local/domain/0/libxl/x
	run ts v2-detach
	assert_success
	run ts --domid 2 v2-detach
	assert_no_leftovers
}

@test "hostile: a NUL byte in params is refused, not cut short" {
	ts v2-create
	ts v2-run version
	# xenstore-write cannot carry a NUL: speak the wire protocol (XS_WRITE).
	python3 - "$XENSTORED_PATH" "$HOTPLUG_PATH/params" "aio:$IMG" <<'EOF'
import socket, struct, sys
sock, path, value = sys.argv[1:]
payload = path.encode() + b"\0" + value.encode() + b"\0|error:"
s = socket.socket(socket.AF_UNIX)
s.connect(sock)
s.sendall(struct.pack("<IIII", 11, 1, 0, len(payload)) + payload)
hdr = s.recv(16)
assert struct.unpack("<IIII", hdr)[0] == 11, hdr
EOF
	run ts v2-run prepare
	assert_failure 1
	assert_output --partial "has a NUL byte at offset $((${#IMG} + 4))"
	run ts v2-detach
	assert_no_leftovers
}
