#!/usr/bin/env bats
# The Debian package (make deb: debian/, tools/make-deb): lintian, what it
# holds and declares, and an upgrade under a private dpkg root while a
# worker of the older package runs.

load helpers

DEB=$TOP/build/deb/blkstack.deb

setup_file() {
	make -C "$TOP" -s deb >"$BATS_FILE_TMPDIR/make-deb.log" 2>&1 ||
		{ tail -n 40 "$BATS_FILE_TMPDIR/make-deb.log" >&2; return 1; }
}

teardown() {
	# A failed upgrade test leaves its (daemonized) worker: stop it.
	local d
	for d in "$BATS_TEST_TMPDIR"/run/*/; do
		[ -d "$d" ] || continue
		"$BIN/blkstack-ctl" --rundir "$BATS_TEST_TMPDIR/run" destroy \
			--name "$(basename "$d")" >/dev/null 2>&1 || true
	done
	worker_teardown
}

@test "deb: lintian reports no error and no warning" {
	run --separate-stderr lintian --fail-on error,warning "$DEB"
	assert_success
	refute_output --regexp '^[EW]: '
}

@test "deb: its version is tools/version's, and every program in it names it" {
	v=$("$TOP/tools/version")
	assert_equal "$(dpkg-deb -f "$DEB" Version)" "$v"
	assert_equal "$(dpkg-deb -f "$DEB" Package)" blkstack
	x=$BATS_TEST_TMPDIR/x
	dpkg -x "$DEB" "$x"
	for p in blkstack-ctl blkstack-worker blkstack-supervisor blkstack-fuse blkstack-img; do
		run "$x/usr/sbin/$p" --version
		assert_output "$p $v"
	done
	run "$x/usr/libexec/blkstack/blkstack-hotplug" --version
	assert_output "blkstack-hotplug $v"
}

@test "deb: the files where Debian's Xen packaging puts them, the conffiles, man pages, completion" {
	x=$BATS_TEST_TMPDIR/x
	dpkg -x "$DEB" "$x"
	for f in usr/sbin/blkstack-ctl usr/sbin/blkstack-worker usr/sbin/blkstack-supervisor \
		usr/sbin/blkstack-fuse usr/sbin/blkstack-img usr/libexec/blkstack/blkstack-hotplug \
		etc/xen/scripts/block-stack; do
		assert_file_executable "$x/$f"
	done
	run grep -c "^helperdir='/usr/libexec/blkstack'$" "$x/etc/xen/scripts/block-stack"
	assert_output 1
	assert_files_equal "$x/etc/blkstack.conf" "$TOP/etc/blkstack.conf"
	run sh -c "dpkg-deb --ctrl-tarfile '$DEB' | tar -xO ./conffiles"
	assert_output "$(printf '/etc/blkstack.conf\n/etc/xen/scripts/block-stack')"
	# No maintainer scripts: installing or upgrading restarts nothing.
	run sh -c "dpkg-deb --ctrl-tarfile '$DEB' | tar -t | sort"
	assert_output "$(printf './\n./conffiles\n./control\n./md5sums')"
	for c in blkstack-ctl blkstack-img; do
		assert_files_equal "$x/usr/share/bash-completion/completions/$c" "$TOP/completion/$c"
	done
	n=0
	for m in "$x"/usr/share/man/man*/*.gz; do
		run sh -c "zcat '$m' | groff -man -ww -z"
		assert_success
		assert_output ""
		n=$((n + 1))
	done
	assert_equal "$n" 9
	# The hotplug helper was built for /usr: it falls back to /usr/sbin.
	run grep -c /usr/sbin "$x/usr/libexec/blkstack/blkstack-hotplug"
	refute_output 0
	# The driver modules (nbd:, rbd:) where the worker looks for them,
	# /usr/sbin/../lib/blkstack/modules, not executable, with what they
	# link; the worker links neither client library.
	for m in nbd rbd; do
		assert_file_exists "$x/usr/lib/blkstack/modules/$m.so"
		assert_file_not_executable "$x/usr/lib/blkstack/modules/$m.so"
	done
	run readelf -d "$x/usr/lib/blkstack/modules/nbd.so"
	assert_output --partial libnbd.so
	run readelf -d "$x/usr/lib/blkstack/modules/rbd.so"
	assert_output --partial librbd.so
	run readelf -d "$x/usr/sbin/blkstack-worker"
	refute_output --partial libnbd.so
	refute_output --partial librbd.so
	run grep -c /usr/lib/blkstack/modules "$x/usr/sbin/blkstack-worker"
	refute_output 0
	# blkstack-xenbus's unit, where Debian 12's units are, naming the
	# package's program; systemd's own check of it (against the unpacked
	# program); installed disabled: no maintainer script enables it.
	u=$x/lib/systemd/system/blkstack-xenbus.service
	assert_file_exists "$u"
	run grep -c '^ExecStart=/usr/sbin/blkstack-xenbus$' "$u"
	assert_output 1
	if command -v systemd-analyze >/dev/null; then
		sed "s|^ExecStart=/usr/sbin/|ExecStart=$x/usr/sbin/|" "$u" >"$BATS_TEST_TMPDIR/blkstack-xenbus.service"
		run systemd-analyze verify --man=no "$BATS_TEST_TMPDIR/blkstack-xenbus.service"
		assert_success
		assert_output ""
	fi
}

@test "deb: Depends is computed (\${shlibs:Depends}) and names the libraries the programs and modules link" {
	grep -q '^Depends: ${shlibs:Depends}, ${misc:Depends}$' "$TOP/debian/control"
	dep=$(dpkg-deb -f "$DEB" Depends)
	for lib in libc6 libxenstore4 libnl-genl-3-200 libfuse3-3 libaio1 liburing2 zlib1g libzstd1 librbd1 librados2 libnbd0 libxengnttab1 libxenevtchn1; do
		assert_regex "$dep" "(^|, )$lib( |,|$)"
	done
}

@test "deb: make deb writes nothing outside build/deb (the tree's parent may be read-only)" {
	parent=$(dirname "$TOP")
	run find "$parent" -maxdepth 1 -newer "$DEB" -name 'blkstack*'
	assert_output ""
	run find "$TOP/build/deb" -maxdepth 1 -name 'blkstack_*.changes'
	assert_output --partial blkstack_
	# Nothing of the build in the tree itself either.
	[ ! -e "$TOP/debian/blkstack" ]
	[ ! -e "$TOP/debian/files" ]
}

# dpkg_root ROOT ARGS...: dpkg on an empty private root (its own database;
# the libraries are the host's, so dependencies are forced).
dpkg_root() {
	local root=$1
	shift
	mkdir -p "$root/var/lib/dpkg/info" "$root/var/lib/dpkg/updates"
	touch "$root/var/lib/dpkg/status" "$root/var/lib/dpkg/available"
	dpkg --root="$root" --force-depends --force-confold "$@"
}

@test "deb: an upgrade over a running worker leaves it serving, keeps the conffile, and the new ctl drives it" {
	old=$BATS_FILE_TMPDIR/old
	BKS_DEB_VERSION=0.0.9 "$TOP/tools/make-deb" "$old" >"$BATS_TEST_TMPDIR/old.log" 2>&1 ||
		{ tail -n 30 "$BATS_TEST_TMPDIR/old.log"; false; }
	root=$BATS_TEST_TMPDIR/root
	run dpkg_root "$root" -i "$old/blkstack.deb"
	assert_success
	assert_equal "$(dpkg-query --root="$root" -W -f='${Version}' blkstack)" 0.0.9
	# The administrator's configuration.
	echo "hang-action = restart" >>"$root/etc/blkstack.conf"
	img_dir
	truncate -s 4M "$IMG_DIR/a.img"
	rundir=$BATS_TEST_TMPDIR/run
	run "$root/usr/sbin/blkstack-ctl" --rundir "$rundir" create --name vm1 --chain "log:|aio:$IMG_DIR/a.img"
	assert_success
	pid=$(cat "$rundir/vm1/pid")
	sup=$(cat "$rundir/vm1/supervisor.pid")
	assert_equal "$(readlink "/proc/$pid/exe")" "$root/usr/sbin/blkstack-worker"

	run dpkg_root "$root" -i "$DEB"
	assert_success
	v=$("$TOP/tools/version")
	assert_equal "$(dpkg-query --root="$root" -W -f='${Version}' blkstack)" "$v"
	run "$root/usr/sbin/blkstack-ctl" --version
	assert_output "blkstack-ctl $v"
	# The old worker and supervisor run on, from the replaced files.
	[ -d "/proc/$pid" ] && [ -d "/proc/$sup" ]
	assert_equal "$(cat "$rundir/vm1/pid")" "$pid"
	assert_equal "$(readlink "/proc/$pid/exe")" "$root/usr/sbin/blkstack-worker (deleted)"
	# ... and serve: the new ctl talks to the old worker, NBD works.
	run "$root/usr/sbin/blkstack-ctl" --rundir "$rundir" info --name vm1
	assert_success
	assert_output --regexp "state: +running"
	run nbdinfo --size "nbd+unix:///?socket=$rundir/vm1/nbd.sock"
	assert_output 4194304
	# The conffile kept the administrator's line.
	run tail -n 1 "$root/etc/blkstack.conf"
	assert_output "hang-action = restart"
	# The new ctl stops the old worker; removing the package leaves the conffile.
	run "$root/usr/sbin/blkstack-ctl" --rundir "$rundir" destroy --name vm1
	assert_success
	gone "$pid"
	run dpkg_root "$root" -r blkstack
	assert_success
	[ ! -e "$root/usr/sbin/blkstack-worker" ]
	assert_file_exists "$root/etc/blkstack.conf"
}
