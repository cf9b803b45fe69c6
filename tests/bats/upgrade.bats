#!/usr/bin/env bats
# Upgrades: a disk attached by an older blkstack (its hotplug helper, worker,
# supervisor and blkstack-fuse, built from git history) is re-added, taken
# down and removed by this tree's hotplug helper, which must read every
# record the older one wrote (xenstore nodes, run-directory files).
#
# The older blkstack is the parent of the commit that added VERSION: the
# last one before there was a package, whose record format every later
# helper must keep reading.  BKS_OLD_REV names another revision.  Built
# once into build/upgrade/REV/ (a git archive of it, make all).

load helpers

old_rev() {
	if [ -n "${BKS_OLD_REV:-}" ]; then
		git -C "$TOP" rev-parse --verify "$BKS_OLD_REV^{commit}"
	else
		git -C "$TOP" rev-parse --verify \
			"$(git -C "$TOP" log --diff-filter=A --format=%H -- VERSION | tail -n 1)^"
	fi
}

setup_file() {
	# A tarball has no history: there is no older blkstack to build.
	git -C "$TOP" rev-parse --git-dir >/dev/null 2>&1 || return 0
	[ "$(git -C "$TOP" rev-parse --is-shallow-repository)" = false ] || return 0
	rev=$(old_rev)
	OLD=$TOP/build/upgrade/$rev
	if [ ! -x "$OLD/build/bin/blkstack-hotplug" ]; then
		rm -rf "$OLD"
		mkdir -p "$OLD"
		git -C "$TOP" archive "$rev" | tar -x -C "$OLD"
		make -C "$OLD" -s -j2 all >"$BATS_FILE_TMPDIR/old-build.log" 2>&1 ||
			{ tail -n 30 "$BATS_FILE_TMPDIR/old-build.log" >&2; return 1; }
	fi
	export OLD
}

setup() {
	git -C "$TOP" rev-parse --git-dir >/dev/null 2>&1 ||
		skip "not a git checkout: no older blkstack to build"
	[ "$(git -C "$TOP" rev-parse --is-shallow-repository)" = false ] ||
		skip "a shallow clone: the older revision is not in it"
	hotplug_setup
	OLD_SCRIPT=$OLD/build/hotplug/block-stack
}

teardown() {
	# Whatever is left, with the old helper (it knows its own records).
	"$TOOLSTACK" --quiet --script "$OLD_SCRIPT" v2-detach >/dev/null 2>&1 || true
	hotplug_teardown
}

old_ts() {
	"$TOOLSTACK" --quiet --script "$OLD_SCRIPT" --target "${TARGET:-log:|aio:$IMG}" "$@"
}

@test "upgrade: the older blkstack is another build, and it attaches a disk" {
	[ "$OLD/build/bin/blkstack-hotplug" != "$BIN/blkstack-hotplug" ]
	# It predates --version: the new helper's answer is not its.
	run "$OLD/build/bin/blkstack-ctl" --version
	assert_failure
	run old_ts v2-attach
	assert_success
	for n in blkstack-worker blkstack-stage blkstack-dev pdev; do
		xs_read "$HOTPLUG_PATH/$n" >/dev/null
	done
}

# install_old DIR: the older programs in DIR, and DIR/block-stack running
# the helper there.  upgrade_in_place DIR: this tree's programs over them
# the way dpkg replaces files (a new file renamed over the old one), so that
# what runs goes on running the replaced file ("PATH (deleted)").
install_old() {
	mkdir -p "$1"
	cp "$OLD"/build/bin/blkstack-* "$1/"
	sed "s|@HELPERDIR@|$1|" "$OLD/hotplug/block-stack" >"$1/block-stack"
	chmod 0755 "$1/block-stack"
}

upgrade_in_place() {
	local f
	for f in "$BIN"/blkstack-*; do
		cp "$f" "$1/.new"
		mv -f "$1/.new" "$1/${f##*/}"
	done
	sed "s|@HELPERDIR@|$1|" "$TOP/hotplug/block-stack" >"$1/.new"
	chmod 0755 "$1/.new"
	mv -f "$1/.new" "$1/block-stack"
}

@test "upgrade: v2, a disk attached before an upgrade in place is re-added and removed after it" {
	inst=$BATS_TEST_TMPDIR/inst
	install_old "$inst"
	OLD_SCRIPT=$inst/block-stack
	run old_ts v2-attach
	assert_success
	dev=$(xs_read "$HOTPLUG_PATH/pdev")
	rec=$(xs_read "$HOTPLUG_PATH/blkstack-dev")
	stage=$(xs_read "$HOTPLUG_PATH/blkstack-stage")
	name=$(xs_read "$HOTPLUG_PATH/blkstack-worker")
	pid=$(cat "$BLKSTACK_RUNDIR/$name/pid")
	fuse=$(sed -n 's/.* fuse_pid=\([0-9]*\) .*/\1/p' <<<"$rec")
	[ -n "$fuse" ]
	head -c 65536 /dev/urandom >"$BATS_TEST_TMPDIR/data"
	dd if="$BATS_TEST_TMPDIR/data" of="$dev" bs=64k oflag=direct status=none

	upgrade_in_place "$inst"
	run "$inst/blkstack-ctl" --version
	assert_output --partial "blkstack-ctl $("$TOP/tools/version")"
	assert_equal "$(readlink "/proc/$pid/exe")" "$inst/blkstack-worker (deleted)"
	assert_equal "$(readlink "/proc/$fuse/exe")" "$inst/blkstack-fuse (deleted)"

	# The new helper, same script: add again reuses the old records'
	# device (same device, record and stage; the old worker and
	# blkstack-fuse still serving it, the data still there).
	run --separate-stderr "$TOOLSTACK" --quiet --script "$inst/block-stack" --target "log:|aio:$IMG" v2-run add
	assert_success
	assert_equal "$(xs_read "$HOTPLUG_PATH/pdev")" "$dev"
	assert_equal "$(xs_read "$HOTPLUG_PATH/blkstack-dev")" "$rec"
	assert_equal "$(xs_read "$HOTPLUG_PATH/blkstack-stage")" "$stage"
	assert_equal "$(cat "$BLKSTACK_RUNDIR/$name/pid")" "$pid"
	[ -d "/proc/$fuse" ]
	run cmp -n 65536 "$BATS_TEST_TMPDIR/data" "$dev"
	assert_success
	# The new blkstack-ctl reads the old worker's run directory.
	run "$inst/blkstack-ctl" --rundir "$BLKSTACK_RUNDIR" list
	assert_output --partial "name=$name pid=$pid state=running"

	for action in remove unprepare; do
		run "$TOOLSTACK" --quiet --script "$inst/block-stack" v2-run "$action"
		assert_success
	done
	gone "$pid"
	gone "$fuse"
	cmp -n 65536 "$BATS_TEST_TMPDIR/data" "$IMG"
	assert_no_leftovers
}

@test "upgrade: v1, a disk the older helper added is removed by the new one" {
	run old_ts v1-attach
	assert_success
	name=$(xs_read "/local/domain/0/$XENBUS_PATH/blkstack-worker")
	pid=$(cat "$BLKSTACK_RUNDIR/$name/pid")
	run ts v1-run remove
	assert_success
	gone "$pid"
	assert_no_leftovers
}

@test "upgrade: a record the new helper cannot read fails remove (so the tests above can fail)" {
	run old_ts v2-attach
	assert_success
	rec=$(xs_read "$HOTPLUG_PATH/blkstack-dev")
	xenstore-write "$HOTPLUG_PATH/blkstack-dev" "${rec/mech=loop/mech=tap}"
	run --separate-stderr ts v2-run remove
	assert_failure 1
	assert_regex "$stderr" "remove: invalid device record"
	# Put it back: the new helper then takes the disk down.
	xenstore-write "$HOTPLUG_PATH/blkstack-dev" "$rec"
	run ts v2-run remove
	assert_success
	run ts v2-run unprepare
	assert_success
	assert_no_leftovers
}
