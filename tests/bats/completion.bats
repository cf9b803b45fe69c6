#!/usr/bin/env bats
# Bash completion (completion/blkstack-ctl, completion/blkstack-img): the
# completion functions driven as bash drives them (COMP_WORDS, COMP_CWORD),
# against real workers, and loaded by the real bash-completion from where
# make install puts them.

load helpers

setup() {
	# shellcheck source=/dev/null
	source "$TOP/completion/blkstack-ctl"
	# shellcheck source=/dev/null
	source "$TOP/completion/blkstack-img"
}

teardown() {
	worker_teardown
}

# complete FUNCTION WORD...: COMPREPLY for the last word, one a line, sorted.
complete_words() {
	local fn=$1
	shift
	COMP_WORDS=("$@")
	COMP_CWORD=$((${#COMP_WORDS[@]} - 1))
	COMPREPLY=()
	"$fn"
	printf '%s\n' "${COMPREPLY[@]}" | sort
}

@test "completion: blkstack-ctl commands and options before the command" {
	run complete_words _blkstack_ctl blkstack-ctl ""
	assert_equal "$(echo "$output" | wc -l)" 14
	assert_line create
	assert_line reconnect
	run complete_words _blkstack_ctl blkstack-ctl s
	assert_output "$(printf 'snapshot\nstats\nstream')"
	run complete_words _blkstack_ctl blkstack-ctl --
	assert_output "$(printf -- '--help\n--rundir\n--version')"
	run complete_words _blkstack_ctl blkstack-ctl --rundir /tmp/x de
	assert_output "destroy"
}

@test "completion: each blkstack-ctl command's options are the ones blkstack-ctl.c allows" {
	declare -A flag=([OPT_NAME]=--name [OPT_CHAIN]=--chain [OPT_READ_ONLY]=--read-only
		[OPT_JSON]=--json [OPT_CLEAR]=--clear [OPT_OVERLAY]=--overlay
		[OPT_FORMAT]=--format [OPT_TOP]=--top [OPT_BASE]=--base
		[OPT_NO_WAIT]=--no-wait)
	# The commands table, one entry a line: name, required, allowed.
	table=$(sed -n '/^} commands\[\] = {/,/^};/p' "$TOP/helpers/ctl/blkstack-ctl.c" |
		tr -d '\n\t' | sed 's/},/}\n/g' | sed -n 's/.*{"\([a-z]*\)", *[^,]*, *\([^}]*\)}.*/\1 \2/p')
	n=0
	while read -r cmd allowed; do
		want=$(for b in $(tr -d '|' <<<"$allowed"); do
			[ "$b" = 0 ] && continue
			[ -n "${flag[$b]:-}" ] || fail "no flag for $b: update this test"
			echo "${flag[$b]}"
		done | sort)
		run complete_words _blkstack_ctl blkstack-ctl "$cmd" --
		got=$(grep -vxE -- '--rundir|--help' <<<"$output" || true)
		assert_equal "$cmd: $got" "$cmd: $want"
		n=$((n + 1))
	done <<<"$table"
	assert_equal "$n" 14
}

@test "completion: --name offers the workers running in the run directory the line names" {
	img_dir
	truncate -s 1M "$IMG_DIR/a.img"
	WORKER_RUNDIR=$BATS_TEST_TMPDIR/run
	worker_start vm-alpha "aio:$IMG_DIR/a.img"
	worker_start vm-beta "aio:$IMG_DIR/a.img" --read-only
	beta=$WORKER_PID
	run complete_words _blkstack_ctl blkstack-ctl --rundir "$WORKER_RUNDIR" stats --name ""
	assert_output "$(printf 'vm-alpha\nvm-beta')"
	run complete_words _blkstack_ctl blkstack-ctl destroy --rundir "$WORKER_RUNDIR" --name vm-a
	assert_output "vm-alpha"
	# From $BLKSTACK_RUNDIR when the line has no --rundir.
	BLKSTACK_RUNDIR=$WORKER_RUNDIR run complete_words _blkstack_ctl blkstack-ctl info --name vm-b
	assert_output "vm-beta"
	# Another run directory has none of them.
	run complete_words _blkstack_ctl blkstack-ctl --rundir "$BATS_TEST_TMPDIR/other" info --name ""
	assert_output ""
	# A worker killed with SIGKILL leaves its pid file: it is not offered.
	kill -KILL "$beta"
	wait "$beta" || true
	assert_file_exists "$WORKER_RUNDIR/vm-beta/pid"
	run complete_words _blkstack_ctl blkstack-ctl --rundir "$WORKER_RUNDIR" info --name ""
	assert_output "vm-alpha"
	# create names a new worker: nothing offered.
	run complete_words _blkstack_ctl blkstack-ctl --rundir "$WORKER_RUNDIR" create --name ""
	assert_output ""
}

@test "completion: blkstack-img commands, options, values and files" {
	run complete_words _blkstack_img blkstack-img ""
	assert_output "$(printf -- '--help\n--version\ncheck\ncreate\ninfo\nmap')"
	run complete_words _blkstack_img blkstack-img check -
	assert_output "$(printf -- '--help\n--json\n--output\n--repair\n-f\n-r')"
	run complete_words _blkstack_img blkstack-img create -f ""
	assert_output "$(printf 'qcow2\nraw\nvhd')"
	run complete_words _blkstack_img blkstack-img info --output j
	assert_output json
	touch "$BATS_TEST_TMPDIR/disk.qcow2"
	run complete_words _blkstack_img blkstack-img info "$BATS_TEST_TMPDIR/disk.q"
	assert_output "$BATS_TEST_TMPDIR/disk.qcow2"
}

@test "completion: make install puts both where bash-completion loads them" {
	[ -f /usr/share/bash-completion/bash_completion ] || skip "bash-completion is not installed"
	root=$BATS_TEST_TMPDIR/root
	make -C "$TOP" -s install DESTDIR="$root" PREFIX=/usr
	dir=$root/usr/share/bash-completion/completions
	assert_file_exists "$dir/blkstack-ctl"
	assert_file_exists "$dir/blkstack-img"
	# The real loader, told to look there first (as for a user's own).
	run env -i PATH="$PATH" HOME="$BATS_TEST_TMPDIR" BASH_COMPLETION_USER_DIR="$root/usr/share/bash-completion" \
		bash --norc -c '. /usr/share/bash-completion/bash_completion
			__load_completion blkstack-ctl && __load_completion blkstack-img
			complete -p blkstack-ctl blkstack-img'
	assert_success
	assert_line "complete -F _blkstack_ctl blkstack-ctl"
	assert_line "complete -F _blkstack_img blkstack-img"
}
