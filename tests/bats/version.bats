#!/usr/bin/env bats
# 'version' end to end, and the error cases every action shares: the
# hotplug script run the way libxl runs it, against a real xenstored.

load helpers

setup() {
	xsd_setup
	eval "$("$TOOLSTACK" paths)"
}

teardown() {
	xsd_teardown
}

ts() {
	"$TOOLSTACK" --quiet --script "$SCRIPT" --target "aio:/images/vm.img" "$@"
}

# Run the script directly with exactly these variables (plus PATH and the
# socket), as a toolstack would, for the cases the driver refuses to make.
script_env() {
	env -i PATH="$PATH" XENSTORED_PATH="$XENSTORED_PATH" "$@"
}

@test "version: v2 writes HOTPLUG_PATH/version = 2" {
	ts v2-create
	run ts v2-run version
	assert_success
	run xs_read "$HOTPLUG_PATH/version"
	assert_output 2
	xs_absent "$HOTPLUG_PATH/hotplug-error"
}

@test "version: leaves the toolstack's nodes alone" {
	ts v2-create
	ts v2-run version
	run xs_read "$HOTPLUG_PATH/params"
	assert_output "aio:/images/vm.img"
	run xs_read "$HOTPLUG_PATH/script"
	assert_output "$SCRIPT"
	xs_absent "$HOTPLUG_PATH/pdev"
}

@test "version: is idempotent" {
	ts v2-create
	ts v2-run version
	before=$(xenstore-ls -f "$HOTPLUG_PATH")
	run ts v2-run version
	assert_success
	assert_equal "$(xenstore-ls -f "$HOTPLUG_PATH")" "$before"
}

@test "version: success clears a stale hotplug-error" {
	ts v2-create
	xenstore-write "$HOTPLUG_PATH/hotplug-error" "left by an earlier attempt"
	run ts v2-run version
	assert_success
	xs_absent "$HOTPLUG_PATH/hotplug-error"
}

@test "version: HOTPLUG_PATH missing from xenstore is an error, and is not created" {
	run --separate-stderr script_env HOTPLUG_PATH="$HOTPLUG_PATH" "$SCRIPT" version
	assert_failure 1
	assert_equal "${#stderr_lines[@]}" 1
	assert_regex "$stderr" "HOTPLUG_PATH $HOTPLUG_PATH does not exist"
	xs_absent "$HOTPLUG_PATH"
}

@test "errors: an unknown action is a one-line usage error" {
	ts v2-create
	run --separate-stderr script_env HOTPLUG_PATH="$HOTPLUG_PATH" "$SCRIPT" frobnicate
	assert_failure 2
	assert_equal "${#stderr_lines[@]}" 1
	assert_regex "$stderr" "unknown action 'frobnicate'"
}

@test "errors: control characters in the action do not break the line" {
	run --separate-stderr script_env HOTPLUG_PATH="$HOTPLUG_PATH" "$SCRIPT" $'ver\nsion\033[2J'
	assert_failure 2
	assert_equal "${#stderr_lines[@]}" 1
	assert_regex "$stderr" "unknown action 'ver\\?sion\\?\\[2J'"
}

@test "errors: no action, or two, is a usage error" {
	run --separate-stderr script_env HOTPLUG_PATH="$HOTPLUG_PATH" "$SCRIPT"
	assert_failure 2
	assert_regex "$stderr" "usage:"
	run --separate-stderr script_env HOTPLUG_PATH="$HOTPLUG_PATH" "$SCRIPT" version add
	assert_failure 2
}

@test "errors: neither HOTPLUG_PATH nor XENBUS_PATH is a usage error" {
	run --separate-stderr script_env "$SCRIPT" version
	assert_failure 2
	assert_equal "${#stderr_lines[@]}" 1
	assert_regex "$stderr" "neither HOTPLUG_PATH .* nor XENBUS_PATH"
}

@test "errors: a HOTPLUG_PATH with shell syntax is refused and nothing is written" {
	marker=$BATS_TEST_TMPDIR/pwned
	run --separate-stderr script_env HOTPLUG_PATH="/x/\$(touch $marker)" "$SCRIPT" version
	assert_failure 2
	assert_regex "$stderr" "HOTPLUG_PATH has a character xenstore does not allow"
	assert_file_not_exists "$marker"
	xs_absent /x
}

@test "errors: malformed HOTPLUG_PATHs are refused" {
	for p in relative/path /a//b /a/b/ /@releaseDomain; do
		run --separate-stderr script_env HOTPLUG_PATH="$p" "$SCRIPT" version
		assert_failure 2
		assert_regex "$stderr" "HOTPLUG_PATH"
	done
}

@test "errors: an unreachable xenstored is named in a one-line error" {
	ts v2-create
	"$XSD" stop "$XSD_DIR"
	run --separate-stderr script_env HOTPLUG_PATH="$HOTPLUG_PATH" "$SCRIPT" version
	assert_failure 1
	assert_equal "${#stderr_lines[@]}" 1
	assert_regex "$stderr" "cannot connect to xenstored at $XENSTORED_PATH"
}

@test "errors: a failing action records hotplug-error where libxl reads it" {
	export BLKSTACK_RUNDIR=$BATS_TEST_TMPDIR/run
	ts v2-create
	ts v2-backend
	# add before prepare: there is no worker to attach to.
	run --separate-stderr ts v2-run add
	assert_failure 1
	assert_equal "${#stderr_lines[@]}" 1
	assert_regex "$stderr" "add: worker .* is not serving"
	for dir in "$HOTPLUG_PATH" "$BACKEND_PATH"; do
		run xs_read "$dir/hotplug-error"
		assert_output --partial "is not serving"
	done
	xs_absent "$BACKEND_PATH/physical-device"
	xs_absent "$HOTPLUG_PATH/pdev"
	# The undo actions cope with what was never done.
	for action in remove localdetach unprepare; do
		run ts v2-run "$action"
		assert_success
	done
}

@test "errors: add without BACKEND_PATH is a usage error" {
	ts v2-create
	run --separate-stderr script_env HOTPLUG_PATH="$HOTPLUG_PATH" "$SCRIPT" add
	assert_failure 2
	assert_regex "$stderr" "BACKEND_PATH is not set"
}

@test "v1: XENBUS_PATH selects v1; a failing add writes hotplug-error and hotplug-status" {
	export BLKSTACK_RUNDIR=$BATS_TEST_TMPDIR/run
	ts v1-create
	run --separate-stderr ts v1-run add
	assert_failure 1
	assert_regex "$stderr" "add: .*open /images/vm.img: No such file or directory"
	run xs_read "/local/domain/0/$XENBUS_PATH/hotplug-error"
	assert_output --partial "open /images/vm.img"
	run xs_read "/local/domain/0/$XENBUS_PATH/hotplug-status"
	assert_output error
}

@test "v1: a v2-only action with XENBUS_PATH is a usage error" {
	ts v1-create
	run --separate-stderr script_env XENBUS_PATH="$XENBUS_PATH" "$SCRIPT" version
	assert_failure 2
	assert_regex "$stderr" "'version' is a v2 action"
}

@test "install: DESTDIR and PREFIX are honoured, and the installed script works" {
	root=$BATS_TEST_TMPDIR/root
	run make -C "$TOP" -s install DESTDIR="$root" PREFIX=/opt/bks
	assert_success
	assert_file_executable "$root/etc/xen/scripts/block-stack"
	assert_file_executable "$root/opt/bks/libexec/blkstack/blkstack-hotplug"
	# The man pages, and the configuration with its defaults.
	for p in man1/blkstack-img.1 man5/blkstack.conf.5 man7/blkstack-chains.7 \
		man8/block-stack.8 man8/blkstack-ctl.8 man8/blkstack-worker.8 \
		man8/blkstack-supervisor.8 man8/blkstack-fuse.8; do
		assert_file_exists "$root/opt/bks/share/man/$p"
	done
	run grep -c "opt/bks/libexec/blkstack/blkstack-hotplug" "$root/opt/bks/share/man/man8/block-stack.8"
	assert_output 1
	assert_files_equal "$root/etc/blkstack.conf" "$TOP/etc/blkstack.conf"
	# The driver modules, and blkstack-xenbus's unit naming PREFIX's program.
	assert_file_exists "$root/opt/bks/lib/blkstack/modules/nbd.so"
	assert_file_exists "$root/opt/bks/lib/blkstack/modules/rbd.so"
	run grep -c '^ExecStart=/opt/bks/sbin/blkstack-xenbus$' "$root/opt/bks/lib/systemd/system/blkstack-xenbus.service"
	assert_output 1
	# A second install keeps the administrator's configuration.
	echo "hang-action = restart" >"$root/etc/blkstack.conf"
	make -C "$TOP" -s install DESTDIR="$root" PREFIX=/opt/bks
	run cat "$root/etc/blkstack.conf"
	assert_output "hang-action = restart"
	run grep -c "^helperdir='/opt/bks/libexec/blkstack'$" "$root/etc/xen/scripts/block-stack"
	assert_output 1

	# A self-contained install (no DESTDIR) runs version for real.
	prefix=$BATS_TEST_TMPDIR/prefix
	make -C "$TOP" -s install PREFIX="$prefix" XENSCRIPTS="$prefix/scripts" SYSCONFDIR="$prefix/etc"
	assert_file_exists "$prefix/etc/blkstack.conf"
	"$TOOLSTACK" --quiet --script "$prefix/scripts/block-stack" --target x v2-create
	run "$TOOLSTACK" --quiet --script "$prefix/scripts/block-stack" v2-run version
	assert_success
	run xs_read "$HOTPLUG_PATH/version"
	assert_output 2
}

@test "install: the unconfigured source script says what is wrong" {
	run --separate-stderr script_env HOTPLUG_PATH="$HOTPLUG_PATH" "$TOP/hotplug/block-stack" version
	assert_failure 1
	assert_regex "$stderr" "helper '@HELPERDIR@/blkstack-hotplug' is missing"
}

# ---- blkstack's version: one place (tools/version), named by everything ----

@test "--version: every program names the version tools/version computes" {
	v=$("$TOP/tools/version")
	assert_regex "$v" '^[0-9]+\.[0-9]+\.[0-9]+'
	for p in ctl worker supervisor fuse img hotplug; do
		run --separate-stderr "$BIN/blkstack-$p" --version
		assert_success
		assert_output "blkstack-$p $v"
		assert_equal "$stderr" ""
	done
}

@test "version: block-stack version names the same version on stderr" {
	v=$("$TOP/tools/version")
	ts v2-create
	run --separate-stderr script_env HOTPLUG_PATH="$HOTPLUG_PATH" "$SCRIPT" version
	assert_success
	assert_equal "$stderr" "blkstack-hotplug: blkstack $v, hotplug interface 2"
	run xs_read "$HOTPLUG_PATH/version"
	assert_output 2
}

@test "tools/version: in this git checkout, VERSION or the tag plus git describe of HEAD" {
	git -C "$TOP" rev-parse --git-dir >/dev/null 2>&1 || skip "the tree is not a git checkout"
	v=$("$TOP/tools/version")
	if tag=$(git -C "$TOP" describe --tags --match 'v[0-9]*' --abbrev=0 2>/dev/null); then
		assert_regex "$v" "^${tag#v}"
	else
		assert_regex "$v" "^$(cat "$TOP/VERSION")\\+g$(git -C "$TOP" describe --always)"
	fi
	# A Debian version: no '-' (that would start a revision), no spaces.
	assert_regex "$v" '^[0-9][0-9A-Za-z.+~]*$'
}

@test "tools/version: outside git (a tarball, even inside another repository) it is VERSION" {
	outer=$BATS_TEST_TMPDIR/outer
	mkdir -p "$outer/blkstack-src/tools"
	git -C "$outer" init -q
	git -C "$outer" -c user.name=t -c user.email=t@t commit -q --allow-empty -m x
	cp "$TOP/tools/version" "$outer/blkstack-src/tools/"
	echo 9.8.7 >"$outer/blkstack-src/VERSION"
	run "$outer/blkstack-src/tools/version"
	assert_success
	assert_output 9.8.7
}
