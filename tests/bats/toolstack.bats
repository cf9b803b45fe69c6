#!/usr/bin/env bats
# The toolstack driver itself (build/tests/xs-toolstack): it must run a
# hotplug script exactly as libxl does, or every other suite tests the
# wrong thing.  A fake hotplug script records how it was called.

load helpers

bats_require_minimum_version 1.5.0

setup() {
	xsd_setup
	FAKE=$BATS_TEST_TMPDIR/fake-hotplug
	REC=$BATS_TEST_TMPDIR/rec
	mkdir -p "$REC"
	# Per run of ACTION the fake writes, into $REC:
	#   calls          ACTION appended, one per line
	#   ACTION.argc    $#          ACTION.args  "$@", one per line
	#   ACTION.env     env         ACTION.stdin  what fd 0 is
	#   ACTION.fds     what its descriptors are
	# and it obeys, from $REC:
	#   ACTION.exit    exit with this code (default 0)
	#   ACTION.sleep   exec sleep for this many seconds
	#   version        for ACTION version: write this to HOTPLUG_PATH/version
	cat >"$FAKE" <<EOF
#!/bin/bash
rec='$REC'
EOF
	cat >>"$FAKE" <<'EOF'
a=${1:-none}
printf '%s\n' "$a" >>"$rec/calls"
printf '%s\n' "$#" >"$rec/$a.argc"
printf '%s\n' "$@" >"$rec/$a.args"
env >"$rec/$a.env"
readlink /proc/self/fd/0 >"$rec/$a.stdin"
for fd in /proc/$$/fd/*; do readlink "$fd"; done >"$rec/$a.fds"
if [ "$a" = version ] && [ -f "$rec/version" ]; then
	xenstore-write "$HOTPLUG_PATH/version" "$(cat "$rec/version")"
fi
if [ -f "$rec/$a.sleep" ]; then
	exec sleep "$(cat "$rec/$a.sleep")"
fi
if [ -f "$rec/$a.exit" ]; then
	exit "$(cat "$rec/$a.exit")"
fi
exit 0
EOF
	chmod +x "$FAKE"
	eval "$("$TOOLSTACK" paths)"
}

teardown() {
	xsd_teardown
}

# The hotplug variables in the environment ACTION saw, sorted.
hotplug_env() {
	grep -E '^(HOTPLUG_PATH|BACKEND_PATH|script|XENBUS_TYPE|XENBUS_PATH|XENBUS_BASE_PATH)=' \
		"$REC/$1.env" | sort
}

ts() {
	"$TOOLSTACK" --script "$FAKE" "$@"
}

@test "toolstack: paths are libxl's, for the default and given ids" {
	run "$TOOLSTACK" paths
	assert_success
	assert_output "HOTPLUG_PATH=/local/domain/0/libxl/hotplug/1/vbd/51712
BACKEND_PATH=/local/domain/0/backend/vbd/1/51712
FRONTEND_PATH=/local/domain/1/device/vbd/51712
XENBUS_PATH=backend/vbd/1/51712"
	run "$TOOLSTACK" --domid 7 --devid 51728 --backend-domid 3 paths
	assert_success
	assert_output "HOTPLUG_PATH=/local/domain/3/libxl/hotplug/7/vbd/51728
BACKEND_PATH=/local/domain/3/backend/vbd/7/51728
FRONTEND_PATH=/local/domain/7/device/vbd/51728
XENBUS_PATH=backend/vbd/7/51728"
}

@test "toolstack: v2-run passes argv {script, ACTION} and only HOTPLUG_PATH" {
	for action in version prepare localattach localdetach unprepare; do
		run env XENBUS_PATH=stray BACKEND_PATH=/stray script=/stray \
			HOTPLUG_PATH=/stray XENBUS_TYPE=stray XENBUS_BASE_PATH=stray \
			KEEP_ME=yes "$TOOLSTACK" --script "$FAKE" v2-run "$action"
		assert_success
		assert_equal "$(cat "$REC/$action.argc")" 1
		assert_equal "$(cat "$REC/$action.args")" "$action"
		assert_equal "$(hotplug_env "$action")" "HOTPLUG_PATH=$HOTPLUG_PATH"
		# The rest of the environment is inherited.
		run grep -x KEEP_ME=yes "$REC/$action.env"
		assert_success
	done
}

@test "toolstack: v2-run adds BACKEND_PATH for add and remove only" {
	for action in add remove; do
		run env XENBUS_PATH=stray BACKEND_PATH=/stray \
			"$TOOLSTACK" --script "$FAKE" v2-run "$action"
		assert_success
		assert_equal "$(cat "$REC/$action.args")" "$action"
		assert_equal "$(hotplug_env "$action")" "BACKEND_PATH=$BACKEND_PATH
HOTPLUG_PATH=$HOTPLUG_PATH"
	done
}

@test "toolstack: v1-run sets exactly script, XENBUS_TYPE, relative XENBUS_PATH, XENBUS_BASE_PATH" {
	for action in add remove; do
		run env HOTPLUG_PATH=/stray BACKEND_PATH=/stray XENBUS_PATH=/stray \
			"$TOOLSTACK" --script "$FAKE" --domid 4 --devid 51744 \
			v1-run "$action"
		assert_success
		assert_equal "$(cat "$REC/$action.argc")" 1
		assert_equal "$(cat "$REC/$action.args")" "$action"
		assert_equal "$(hotplug_env "$action")" "XENBUS_BASE_PATH=backend
XENBUS_PATH=backend/vbd/4/51744
XENBUS_TYPE=vbd
script=$FAKE"
	done
}

@test "toolstack: v1-run refuses v2-only actions without running the script" {
	run ts v1-run prepare
	assert_failure 2
	assert_output --partial "v1 knows only add and remove"
	assert_file_not_exists "$REC/calls"
}

@test "toolstack: the script's stdin is /dev/null" {
	echo "not for scripts" >"$BATS_TEST_TMPDIR/input"
	run ts v2-run add <"$BATS_TEST_TMPDIR/input"
	assert_success
	assert_equal "$(cat "$REC/add.stdin")" /dev/null
	run ts v1-run remove <"$BATS_TEST_TMPDIR/input"
	assert_success
	assert_equal "$(cat "$REC/remove.stdin")" /dev/null
}

@test "toolstack: the script inherits no xenstore connection" {
	echo 2 >"$REC/version"
	run ts --target /img v2-attach
	assert_success
	assert_file_exists "$REC/prepare.fds"
	run grep -c 'socket:' "$REC/prepare.fds"
	assert_output 0
}

@test "toolstack: a *-run command exits with the script's status" {
	echo 3 >"$REC/add.exit"
	run -3 ts v2-run add
	assert_output --partial "v2 add: HOTPLUG_PATH=$HOTPLUG_PATH BACKEND_PATH=$BACKEND_PATH -> exit 3"
	printf '#!/bin/bash\nkill -TERM $$\n' >"$BATS_TEST_TMPDIR/killed"
	chmod +x "$BATS_TEST_TMPDIR/killed"
	run -143 "$TOOLSTACK" --script "$BATS_TEST_TMPDIR/killed" v1-run remove
	assert_output --partial "-> killed by signal 15"
	run -127 "$TOOLSTACK" --script "$BATS_TEST_TMPDIR/missing" v2-run add
	assert_output --partial "exec $BATS_TEST_TMPDIR/missing: No such file or directory"
}

@test "toolstack: a script past --timeout is killed and reported (124)" {
	# An odd duration, to find the process by.
	echo 30.4242 >"$REC/add.sleep"
	start=$SECONDS
	run -124 --separate-stderr ts --timeout 1 v2-run add
	[ $((SECONDS - start)) -lt 10 ]
	# shellcheck disable=SC2154 # $stderr comes from run --separate-stderr
	assert_equal "$stderr" "xs-toolstack: $FAKE add timed out after 1s, killed"
	assert_output --partial "-> timed out after 1s"
	# The script itself (exec'd into sleep) is gone.
	run pgrep -fx "sleep 30.4242"
	assert_failure 1
}

@test "toolstack: v2-create makes HOTPLUG_PATH, backend domain only, with params and script" {
	run ts --target "phy:/dev/vg/x" --domid 5 --backend-domid 3 v2-create
	assert_success
	hp=/local/domain/3/libxl/hotplug/5/vbd/51712
	run xenstore-read "$hp/params"
	assert_output "phy:/dev/vg/x"
	run xenstore-read "$hp/script"
	assert_output "$FAKE"
	run xenstore-ls -p "$(dirname "$hp")"
	assert_success
	assert_line --regexp '^51712 = "" .*\(n3\)$'
	assert_line --regexp '^ params = .*\(n3\)$'
	# Nothing else was created.
	run xenstore-exists /local/domain/3/backend
	assert_failure
}

@test "toolstack: v2-backend makes backend and frontend with libxl's permissions and nodes" {
	run ts --domid 5 --backend-domid 3 v2-backend
	assert_success
	be=/local/domain/3/backend/vbd/5/51712
	fe=/local/domain/5/device/vbd/51712
	run xenstore-ls -p "$(dirname "$be")"
	assert_line --regexp '^51712 = "" .*\(n3,r5\)$'
	run xenstore-ls -p "$(dirname "$fe")"
	assert_line --regexp '^51712 = "" .*\(n5,r3\)$'
	run xenstore-ls "$be"
	assert_output 'frontend = "/local/domain/5/device/vbd/51712"
frontend-id = "5"
online = "1"
removable = "0"
bootable = "1"
state = "2"
dev = "xvda"
type = "phy"
mode = "w"
device-type = "disk"'
	run xenstore-ls "$fe"
	assert_output 'backend = "/local/domain/3/backend/vbd/5/51712"
backend-id = "3"
state = "1"
virtual-device = "51712"
device-type = "disk"'
}

@test "toolstack: v1-create adds params and script to the backend" {
	run ts --target "/images/a.img" --devid 51728 v1-create
	assert_success
	be=/local/domain/0/backend/vbd/1/51728
	run xenstore-read "$be/params"
	assert_output /images/a.img
	run xenstore-read "$be/script"
	assert_output "$FAKE"
	run xenstore-read "$be/state"
	assert_output 2
	run xenstore-read "$be/dev"
	assert_output xvdb
	run xenstore-ls -p /local/domain/0/backend/vbd/1
	assert_line --regexp '^51728 = "" .*\(n0,r1\)$'
	run xenstore-ls -p /local/domain/1/device/vbd
	assert_line --regexp '^51728 = "" .*\(n1,r0\)$'
	run xenstore-exists /local/domain/0/libxl
	assert_failure
}

@test "toolstack: v2-attach runs version, prepare, add and builds all areas" {
	echo 2 >"$REC/version"
	run ts --target /img v2-attach
	assert_success
	assert_equal "$(cat "$REC/calls")" "version
prepare
add"
	# The backend exists by the time add runs, not before.
	run xenstore-read "$BACKEND_PATH/state"
	assert_output 2
	run xenstore-read "$HOTPLUG_PATH/params"
	assert_output /img
	run xenstore-read "$FRONTEND_PATH/backend"
	assert_output "$BACKEND_PATH"
}

@test "toolstack: v2-attach aborts when the script does not speak v2" {
	# version succeeds but says 1.
	echo 1 >"$REC/version"
	run ts --target /img v2-attach
	assert_failure 1
	assert_output --partial "script does not speak v2"
	assert_equal "$(cat "$REC/calls")" version
	run xenstore-exists "$BACKEND_PATH"
	assert_failure
	# version writes nothing.
	rm -f "$REC/calls" "$REC/version"
	run ts --target /img v2-attach
	assert_failure 1
	assert_output --partial "script does not speak v2"
	assert_equal "$(cat "$REC/calls")" version
	# version fails, as a v1-only script does.
	rm -f "$REC/calls"
	echo 2 >"$REC/version"
	echo 2 >"$REC/version.exit"
	run ts --target /img v2-attach
	assert_failure 1
	assert_output --partial "script does not speak v2"
	assert_equal "$(cat "$REC/calls")" version
}

@test "toolstack: v2-attach runs remove after a failed add" {
	echo 2 >"$REC/version"
	echo 1 >"$REC/add.exit"
	run ts --target /img v2-attach
	assert_failure 1
	assert_output --partial "v2 add: $FAKE failed with status 1"
	assert_equal "$(cat "$REC/calls")" "version
prepare
add
remove"
	assert_equal "$(hotplug_env remove)" "BACKEND_PATH=$BACKEND_PATH
HOTPLUG_PATH=$HOTPLUG_PATH"
}

@test "toolstack: v1-attach runs remove after a failed add" {
	echo 1 >"$REC/add.exit"
	run ts --target /img v1-attach
	assert_failure 1
	assert_equal "$(cat "$REC/calls")" "add
remove"
	run xenstore-read "$BACKEND_PATH/params"
	assert_output /img
}

@test "toolstack: v1-attach --keep-on-failure does not run remove" {
	echo 1 >"$REC/add.exit"
	run ts --target /img --keep-on-failure v1-attach
	assert_failure 1
	assert_equal "$(cat "$REC/calls")" add
}

@test "toolstack: v1-attach succeeds with one add" {
	run ts --target /img v1-attach
	assert_success
	assert_equal "$(cat "$REC/calls")" add
}

@test "toolstack: v2-detach runs remove and unprepare and removes all three areas" {
	echo 2 >"$REC/version"
	ts --quiet --target /img v2-attach
	rm -f "$REC/calls"
	run ts v2-detach
	assert_success
	assert_equal "$(cat "$REC/calls")" "remove
unprepare"
	for p in "$HOTPLUG_PATH" "$BACKEND_PATH" "$FRONTEND_PATH"; do
		run xenstore-exists "$p"
		assert_failure
	done
	assert_equal "$(hotplug_env unprepare)" "HOTPLUG_PATH=$HOTPLUG_PATH"
}

@test "toolstack: v2-detach runs unprepare after a failed remove, and fails" {
	echo 2 >"$REC/version"
	ts --quiet --target /img v2-attach
	rm -f "$REC/calls"
	echo 1 >"$REC/remove.exit"
	run ts v2-detach
	assert_failure 1
	assert_equal "$(cat "$REC/calls")" "remove
unprepare"
	run xenstore-exists "$HOTPLUG_PATH"
	assert_failure
}

@test "toolstack: v1-detach runs remove and removes backend and frontend" {
	ts --quiet --target /img v1-attach
	rm -f "$REC/calls"
	echo 1 >"$REC/remove.exit"
	run ts v1-detach
	assert_failure 1
	assert_equal "$(cat "$REC/calls")" remove
	run xenstore-exists "$BACKEND_PATH"
	assert_failure
	run xenstore-exists "$FRONTEND_PATH"
	assert_failure
}

@test "toolstack: --quiet prints no progress lines" {
	run ts v2-run add
	assert_output --partial "xs-toolstack: v2 add:"
	run ts --quiet v2-run add
	assert_success
	assert_output ""
}

@test "toolstack: bad options and numbers are usage errors (2)" {
	for args in "--domid -1 paths" "--domid 32752 paths" "--domid 1x paths" \
		"--devid '' paths" "--devid 0x10 paths" "--backend-domid 32752 paths" \
		"--timeout 0 paths" "--timeout 99999999999999999999 paths" \
		"--bogus paths" "frob" "" "paths extra" "v2-run" \
		"--target /x v2-create" "--script /x v2-create" "--script /x v1-run localattach"; do
		eval "run \"\$TOOLSTACK\" $args"
		assert_failure 2
		assert_output --regexp '^xs-toolstack: '
	done
	run "$TOOLSTACK" --domid 32751 --backend-domid 0 --timeout 1 paths
	assert_success
}

@test "toolstack: an unreachable xenstored is reported with its path" {
	run env XENSTORED_PATH="$BATS_TEST_TMPDIR/nosocket" \
		"$TOOLSTACK" --script "$FAKE" --target /img v2-create
	assert_failure 1
	assert_output "xs-toolstack: xenstore open $BATS_TEST_TMPDIR/nosocket: No such file or directory"
}
