#!/usr/bin/env bats
# The man pages (make man, docs/man/*.scd, tools/txt2scd): every page
# renders without a warning, says what the code does (every option, command
# and configuration key), and the two made from docs/*.txt say exactly
# what those files say.

load helpers

MAN=$TOP/build/man

setup_file() {
	make -C "$TOP" -s man >&2
}

# The words of stdin, one a line, lowercase.
words() {
	tr 'A-Z' 'a-z' | tr -s ' \t\n' '\n\n\n' | grep -v '^$'
}

# The body of page $1 as plain text: from its first section after NAME to
# SEE ALSO, unhyphenated, in lines longer than any paragraph.
body() {
	groff -man -Tascii -P-cbou -rLL=20000n -rHY=0 "$1" |
		sed -n '/^DESCRIPTION/,/^SEE ALSO/p' | sed '1d;$d' |
		grep -v "^$(basename "$1" | sed 's/\.\([0-9]\)$/(\1)/')"
}

# The page as man shows it, for grepping.
page() {
	MANWIDTH=200 man -l "$1" 2>/dev/null | col -b
}

@test "man: every page renders with groff -ww and man --warnings, silently" {
	n=0
	for p in "$MAN"/*.[1-8]; do
		run groff -man -ww -z "$p"
		assert_success
		assert_output ""
		run --separate-stderr env MANWIDTH=80 man --warnings -l "$p"
		assert_success
		assert_equal "$stderr" ""
		n=$((n + 1))
	done
	assert_equal "$n" 9
}

@test "man: every program and the hotplug script has a page" {
	for p in block-stack.8 blkstack-ctl.8 blkstack-worker.8 blkstack-supervisor.8 \
		blkstack-fuse.8 blkstack-xenbus.8 blkstack-img.1 blkstack-chains.7 blkstack.conf.5; do
		assert_file_exists "$MAN/$p"
	done
	for b in "$BIN"/blkstack-*; do
		name=$(basename "$b")
		[ "$name" = blkstack-hotplug ] && continue # block-stack(8)
		ls "$MAN/$name".[18] >/dev/null
	done
}

@test "man: blkstack-chains(7) says word for word what docs/chains.txt says" {
	tail -n +4 "$TOP/docs/chains.txt" | grep -v '^-\+$' | words >"$BATS_TEST_TMPDIR/txt"
	body "$MAN/blkstack-chains.7" | words >"$BATS_TEST_TMPDIR/man"
	run diff "$BATS_TEST_TMPDIR/txt" "$BATS_TEST_TMPDIR/man"
	assert_success
	[ "$(wc -l <"$BATS_TEST_TMPDIR/txt")" -gt 3000 ]
}

@test "man: blkstack-img(1) says word for word what docs/blkstack-img.txt says" {
	tail -n +4 "$TOP/docs/blkstack-img.txt" | grep -v '^-\+$' | words >"$BATS_TEST_TMPDIR/txt"
	body "$MAN/blkstack-img.1" | words >"$BATS_TEST_TMPDIR/man"
	run diff "$BATS_TEST_TMPDIR/txt" "$BATS_TEST_TMPDIR/man"
	assert_success
	[ "$(wc -l <"$BATS_TEST_TMPDIR/txt")" -gt 1000 ]
}

@test "man: the converter refuses what it cannot say, and the test above can fail" {
	printf 'T\n=\n\nText.\n.TH at the start\n' >"$BATS_TEST_TMPDIR/ok.txt"
	run awk -f "$TOP/tools/txt2scd" -v page=t -v section=7 -v what=x "$BATS_TEST_TMPDIR/ok.txt"
	assert_success
	printf 'T\n=\n\n.TH a paragraph starting with a dot\n' >"$BATS_TEST_TMPDIR/bad.txt"
	run awk -f "$TOP/tools/txt2scd" -v page=t -v section=7 -v what=x "$BATS_TEST_TMPDIR/bad.txt"
	assert_failure 1
	assert_output --partial "a paragraph starts with '.'"
}

@test "man: every driver in libblkstack/drivers.def has its entry in blkstack-chains(7)" {
	text=$(page "$MAN/blkstack-chains.7")
	n=0
	for d in $(sed -n 's/^BKS_\(DRIVER\|MODULE\)(\([a-z0-9]*\)).*/\2/p' "$TOP/libblkstack/drivers.def"); do
		# A term line of its own: "       aio:PATH", "       log:[block=SIZE]".
		grep -qE "^ {7}$d:" <<<"$text"
		n=$((n + 1))
	done
	[ "$n" -ge 7 ]
}

# The long options of a C file's option tables ({"name", ...}).
long_opts() {
	grep -hoE '\{ *"[a-z][a-z-]*", *(no|required)_argument' "$@" |
		sed 's/^{ *"\([^"]*\)".*/\1/' | sort -u
}

@test "man: every long option of every program is in its page" {
	common=$TOP/helpers/common/worker-run.h
	for p in ctl worker supervisor fuse xenbus; do
		text=$(page "$MAN/blkstack-$p.8")
		opts=$(long_opts "$TOP/helpers/$p/blkstack-$p.c" $([ "$p" = worker ] || [ "$p" = supervisor ] && echo "$common"))
		[ -n "$opts" ]
		for o in $opts; do
			grep -qF -- "--$o" <<<"$text" || fail "blkstack-$p(8) lacks --$o"
		done
	done
	text=$(page "$MAN/blkstack-img.1")
	for o in $(long_opts "$TOP/helpers/img/blkstack-img.c"); do
		grep -qF -- "--$o" <<<"$text" || fail "blkstack-img(1) lacks --$o"
	done
}

@test "man: every blkstack-ctl command and every hotplug action is in its page" {
	text=$(page "$MAN/blkstack-ctl.8")
	cmds=$(sed -n '/^} commands\[\] = {/,/^};/s/^ *{"\([a-z]*\)",.*/\1/p' "$TOP/helpers/ctl/blkstack-ctl.c")
	[ "$(wc -w <<<"$cmds")" -ge 14 ]
	for c in $cmds; do
		grep -qE "^ {7}$c( |,|$)" <<<"$text" || fail "blkstack-ctl(8) lacks $c"
	done
	text=$(page "$MAN/block-stack.8")
	for a in version prepare add remove localattach localdetach unprepare; do
		grep -qE "^ {7}$a$" <<<"$text" || fail "block-stack(8) lacks $a"
	done
}

@test "man: blkstack.conf(5), etc/blkstack.conf and the code name the same keys" {
	code=$(grep -rhoE '(conf_find|conf_word|conf_seconds|read_uint)\([^"]*"[a-z-]+"' "$TOP/helpers" |
		grep -oE '"[a-z-]+"' | tr -d '"' | sort -u)
	[ "$(wc -w <<<"$code")" -ge 10 ]
	man=$(page "$MAN/blkstack.conf.5" | sed -n 's/^ \{7\}\([a-z-]*\) = .*/\1/p' | sort -u)
	conf=$(sed -n 's/^#\([a-z-]*\) = .*/\1/p' "$TOP/etc/blkstack.conf" | sort -u)
	assert_equal "$man" "$code"
	assert_equal "$conf" "$code"
}

@test "man: etc/blkstack.conf is what the programs accept, its defaults set or not" {
	img_dir
	truncate -s 1M "$IMG_DIR/a.img"
	# Every key uncommented at the value shown (images: this test's directory).
	sed -e 's/^#\([a-z]\)/\1/' -e "s|^images = .*|images = $IMG_DIR|" \
		"$TOP/etc/blkstack.conf" >"$BATS_TEST_TMPDIR/all.conf"
	for conf in "$TOP/etc/blkstack.conf" "$BATS_TEST_TMPDIR/all.conf"; do
		rundir=$(mktemp -d "$BATS_TEST_TMPDIR/run.XXXXXX")
		BLKSTACK_CONF=$conf run "$BIN/blkstack-ctl" --rundir "$rundir" create --name a --chain "aio:$IMG_DIR/a.img"
		assert_success
		run "$BIN/blkstack-ctl" --rundir "$rundir" list
		assert_output --partial "supervisor=running"
		run "$BIN/blkstack-ctl" --rundir "$rundir" destroy --name a
		assert_success
	done
	# And a bad value is refused naming the file and line.
	printf 'hang-action = kill\n' >"$BATS_TEST_TMPDIR/bad.conf"
	BLKSTACK_CONF=$BATS_TEST_TMPDIR/bad.conf run "$BIN/blkstack-ctl" --rundir "$BATS_TEST_TMPDIR/r2" create --name a --chain "aio:$IMG_DIR/a.img"
	assert_failure
	assert_output --partial "bad.conf:1: hang-action"
}

teardown() {
	worker_teardown
}
