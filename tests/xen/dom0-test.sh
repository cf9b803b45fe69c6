#!/bin/sh
# dom0-test.sh: runs in dom0 of the QEMU-booted Xen host (tests/xen/run),
# from /init once xenstored, xen-init-dom0 and xenconsoled are up.  One
# line per check on the console: "PASS <item>" or "FAIL <item> (why)";
# "INFO ..." lines are evidence.  Items are described in tests/xen/README.md.
# No set -e: a command failing outside a check must not end the run quietly
# (every item reports for itself); tests/xen/run requires "XENTEST done".
set -u
XEN_VERSION=$(cat /etc/xentest-xen-version)
export PATH="/usr/lib/xen-$XEN_VERSION/bin":/usr/sbin:/usr/bin:/sbin:/bin
dmesg -n 1 2>/dev/null || true

SCRIPT=/etc/xen/scripts/block-stack
CTL=/usr/sbin/blkstack-ctl
CONS=/var/log/xen/console
IMGS=/images
XVDA=51712
XVDB=51728
XVDC=51744

pass() { echo "PASS $1"; }
fail() { echo "FAIL $1 ($2)"; }
info() { echo "INFO $*"; }
check() {
	# check ITEM COMMAND...: PASS if the command succeeds.
	item=$1
	shift
	if "$@" >/tmp/check.out 2>&1; then
		pass "$item"
	else
		fail "$item" "$(tr '\n' ' ' </tmp/check.out | cut -c1-300)"
	fi
}
now() { cut -d. -f1 /proc/uptime; }

# wait_for SECONDS COMMAND...: until the command succeeds.
wait_for() {
	n=$1
	shift
	while [ "$n" -gt 0 ]; do
		"$@" >/dev/null 2>&1 && return 0
		sleep 1
		n=$((n - 1))
	done
	return 1
}

# procs NAME: the pids of the processes whose command name (comm) is NAME.
# dom0's busybox has no pgrep (a check built on it passed whatever ran).
procs() {
	for _c in /proc/[0-9]*/comm; do
		_n=''
		read -r _n 2>/dev/null <"$_c" || continue
		[ "$_n" = "$1" ] || continue
		_c=${_c#/proc/}
		echo "${_c%/comm}"
	done
	return 0
}
# The "nothing left" checks.  Each says what it found when it fails; the
# controls in local_attach and guest_run show each of them failing while
# the thing it looks for exists.
workers() { "$CTL" list 2>/dev/null | grep -c . || true; }
no_workers() {
	_n=$(workers)
	_p=$(procs blkstack-worker | tr '\n' ' ')
	# A supervisor's comm is cut to 15 characters.
	_s=$(procs blkstack-superv | tr '\n' ' ')
	[ "$_n" = 0 ] && [ -z "$_p" ] && [ -z "$_s" ] && return 0
	echo "blkstack-ctl list: $_n workers; blkstack-worker processes:" \
		"${_p:-none}; blkstack-supervisor processes: ${_s:-none}"
	return 1
}
# The loop mechanism's FUSE server: nbdfuse before issue 13, blkstack-fuse
# since (either may be the one in this build).
fuse_servers() {
	procs nbdfuse
	procs blkstack-fuse
}
no_nbdfuse() {
	_p=$(fuse_servers | tr '\n' ' ')
	[ -z "$_p" ] && return 0
	echo "FUSE server (nbdfuse, blkstack-fuse) running: pids $_p"
	return 1
}
no_fuse_mount() {
	_m=$(grep ' fuse' /proc/mounts | tr '\n' '|')
	[ -z "$_m" ] && return 0
	echo "fuse mounts: $_m"
	return 1
}
# no_loopdev: no loop device bound but the one /images is on.
no_loopdev() {
	_l=''
	for _f in /sys/block/loop*/loop/backing_file; do
		[ -e "$_f" ] || continue
		_b=$(cat "$_f" 2>/dev/null)
		[ "$_b" = /root/store.ext2 ] && continue
		_d=${_f#/sys/block/}
		_l="$_l ${_d%%/*}=$_b"
	done
	[ -z "$_l" ] && return 0
	echo "loop devices bound:$_l"
	return 1
}
no_nbddev() {
	_l=''
	for _f in /sys/block/nbd*/pid; do
		[ -e "$_f" ] || continue
		_d=${_f#/sys/block/}
		_l="$_l ${_d%%/*}(pid $(cat "$_f" 2>/dev/null))"
	done
	[ -z "$_l" ] && return 0
	echo "nbd devices connected:$_l"
	return 1
}
no_backends() {
	_b=$(xenstore-ls /local/domain/0/backend/vbd 2>/dev/null | head -n 3 | tr '\n' '|')
	[ -z "$_b" ] && return 0
	echo "backend/vbd holds: $_b"
	return 1
}
no_dom0_vbd() { [ -z "$(xenstore-ls /local/domain/0/backend/vbd/0 2>/dev/null)" ]; }
domain_gone() {
	xl domid "$1" >/dev/null 2>&1 || return 0
	echo "domain $1 is there: $(xl list "$1" 2>&1 | tail -n 1)"
	return 1
}
no_blockdev() {
	_r=0
	no_loopdev || _r=1
	no_nbddev || _r=1
	return "$_r"
}
# not COMMAND...: succeeds when the command fails (for check).
not() { ! "$@"; }
in_log() { grep -q "$2" "$CONS/guest-$1.log"; }

# Images live on an ext2 filesystem, not on rootfs: aio: needs O_DIRECT.
mkdir -p "$IMGS"
truncate -s 600M /root/store.ext2
/usr/sbin/mke2fs -q -F -t ext2 /root/store.ext2
mount -o loop /root/store.ext2 "$IMGS"

guest_cfg() {
	# guest_cfg NAME IMAGE [TARGET]: TARGET defaults to log:|aio:IMAGE.
	_target=${3:-log:|aio:$2}
	cat >"/root/$1.cfg" <<EOF
name = "$1"
type = "pv"
kernel = "/root/guest-vmlinuz"
ramdisk = "/root/guest.cpio.gz"
extra = "console=hvc0 quiet"
memory = 192
vcpus = 1
on_poweroff = "destroy"
on_crash = "destroy"
on_reboot = "destroy"
disk = ['vdev=xvda,script=block-stack,target=$_target']
EOF
}

# cleanup_after DOMAIN: after a failed step, report and remove what is left
# (domain, workers) so that the later items start clean.
cleanup_after() {
	info "left after failure: domains: $(xl list 2>&1 | tail -n +3 | tr '\n' '|')" \
		"workers: $("$CTL" list 2>&1 | tr '\n' ' ')"
	xl destroy "$1" >/dev/null 2>&1 || true
	wait_for 30 domain_gone "$1" || true
	for w in $("$CTL" list 2>/dev/null | sed -n 's/^name=\([^ ]*\).*/\1/p'); do
		"$CTL" destroy --name "$w" >/dev/null 2>&1 || true
	done
	info "after cleanup: workers: $(workers), backends: $(xenstore-ls /local/domain/0/backend/vbd 2>/dev/null | grep -c . || true) lines"
}

# ---- item 1 (+2, 3b): a guest's disk through block-stack --------------------
guest_run() {
	mech=$1
	mode=${2:-shutdown}
	# sink: aio (the image file), or nbdkit (an nbd: sink on an nbdkit
	# serving the image in dom0: shared storage's remote NBD server).
	sink=${3:-aio}
	g=g-$mech-$mode
	tag=$mech
	target=
	if [ "$sink" != aio ]; then
		g=$g-$sink
		tag=$mech+$sink
	fi
	img=$IMGS/disk-$mech-$mode-$sink.img
	truncate -s 64M "$img"
	printf 'blkstack-dom0-pattern' | dd of="$img" conv=notrunc 2>/dev/null
	if [ "$sink" = nbdkit ]; then
		rm -f /run/nbdkit-g.sock /run/nbdkit-g.pid
		if ! nbdkit --unix /run/nbdkit-g.sock --pidfile /run/nbdkit-g.pid \
			file "$img" >/tmp/nbdkit-g.out 2>&1; then
			fail "$tag: nbdkit starts" "$(tr '\n' ' ' </tmp/nbdkit-g.out)"
			return 0
		fi
		target="log:|nbd:nbd+unix:///?socket=/run/nbdkit-g.sock"
	fi
	guest_cfg "$g" "$img" "$target"
	t0=$(now)
	if ! BLKSTACK_DEVICE=$mech xl create "/root/$g.cfg" >"/tmp/$g.create" 2>&1; then
		fail "$tag: xl create" "$(tail -n 5 "/tmp/$g.create" | tr '\n' ' ')"
		dmesg | tail -n 15 | sed 's/^/INFO dmesg: /'
		cleanup_after "$g"
		return 0
	fi
	pass "$tag: xl create with script=block-stack"
	info "$tag: xl create took $(($(now) - t0))s"
	domid=$(xl domid "$g")
	be=/local/domain/0/backend/vbd/$domid/$XVDA
	info "$tag: physical-device-path=$(xenstore-read "$be/physical-device-path" 2>&1)" \
		"physical-device=$(xenstore-read "$be/physical-device" 2>&1)"
	if wait_for 120 in_log "$g" "GUEST wrote"; then
		info "$tag: guest wrote $(($(now) - t0))s after xl create"
	fi
	check "$tag: guest reads dom0's pattern" in_log "$g" "GUEST read-ok"
	check "$tag: guest writes" in_log "$g" "GUEST wrote"
	w=$(xenstore-read "$be/blkstack-worker" 2>/dev/null || echo none)
	"$CTL" dirty --name "$w" >"/tmp/$g.dirty" 2>&1 || true
	info "$tag: dirty of $w: $(tr '\n' ' ' <"/tmp/$g.dirty")"
	check "$tag: blkstack-ctl dirty shows the guest's write" \
		grep -q '^1048576 ' "/tmp/$g.dirty"
	got=$(dd if="$img" bs=512 skip=2048 count=1 2>/dev/null | head -c 22)
	check "$tag: guest's pattern is in the image (guest running)" \
		[ "$got" = blkstack-guest-pattern ]
	check "$tag: control: the backend check sees the guest's backend" \
		not no_backends
	check "$tag: control: the domain check sees the guest" not domain_gone "$g"

	attach_tests "$g" "$domid"

	t1=$(now)
	xl shutdown "$g" >"/tmp/$g.shutdown" 2>&1 || true
	if wait_for 90 domain_gone "$g"; then
		pass "$tag: guest shut down, domain gone"
		info "$tag: shutdown took $(($(now) - t1))s"
	else
		fail "$tag: guest shut down" "still there after 90s; destroying"
		info "$tag: xl shutdown said: $(tr '\n' '|' <"/tmp/$g.shutdown")"
		info "$tag: xl list: $(xl list 2>&1 | tr '\n' '|')"
		info "$tag: guest console: $(tail -n 8 "$CONS/guest-$g.log" | tr '\n' '|')"
		xl destroy "$g" || true
		wait_for 30 domain_gone "$g" || true
	fi
	got=$(dd if="$img" bs=512 skip=2048 count=1 2>/dev/null | head -c 22)
	check "$tag: guest's pattern is in the image after shutdown" [ "$got" = blkstack-guest-pattern ]
	wait_for 20 no_workers || true
	check "$tag: no worker left" no_workers
	check "$tag: no FUSE server left" no_nbdfuse
	check "$tag: no fuse mount left" no_fuse_mount
	check "$tag: no loop or nbd device left" no_blockdev
	check "$tag: no backend left in xenstore" no_backends
	info "$tag: losetup -a: $(losetup -a 2>&1 | tr '\n' ' ')"
	info "$tag: /run/blkstack: $(find /run/blkstack 2>&1 | tr '\n' ' ')"
	if [ "$sink" = nbdkit ]; then
		check "$tag: nbdkit served to the end" kill -0 "$(cat /run/nbdkit-g.pid)"
		kill "$(cat /run/nbdkit-g.pid)" 2>/dev/null || true
		rm -f "$img"
	fi
}

attach_tests() {
	g=$1
	domid=$2
	img2=$IMGS/disk2-$mech.img
	truncate -s 32M "$img2"
	if BLKSTACK_DEVICE=$mech xl block-attach "$g" "vdev=xvdb,script=block-stack,target=log:|aio:$img2" \
		>/tmp/attach.out 2>&1; then
		pass "$mech: xl block-attach of a second disk"
	else
		fail "$mech: xl block-attach" "$(tail -n 5 /tmp/attach.out | tr '\n' ' ')"
	fi
	be2=/local/domain/0/backend/vbd/$domid/$XVDB
	if wait_for 60 sh -c "[ \"\$(xenstore-read $be2/state)\" = 4 ]"; then
		pass "$mech: second disk connected (backend state 4)"
	else
		fail "$mech: second disk connected" "state $(xenstore-read "$be2/state" 2>&1)"
	fi
	check "$mech: two workers while attached" [ "$(workers)" = 2 ]
	if BLKSTACK_DEVICE=$mech xl block-detach "$g" xvdb >/tmp/detach.out 2>&1; then
		pass "$mech: xl block-detach"
	else
		fail "$mech: xl block-detach" "$(tail -n 5 /tmp/detach.out | tr '\n' ' ')"
	fi
	wait_for 30 sh -c "! xenstore-exists $be2" || true
	check "$mech: second disk's backend gone" sh -c "! xenstore-exists $be2"
	check "$mech: one worker after detach" [ "$(workers)" = 1 ]

	# A missing image under block-attach: libxl does not run remove.  The
	# guest's xvda has an nbdfuse of its own under loop: the failed attach
	# must not add one.
	fuse_before=$(fuse_servers | sort | tr '\n' ' ')
	if BLKSTACK_DEVICE=$mech xl block-attach "$g" "vdev=xvdc,script=block-stack,target=log:|aio:$IMGS/missing.img" \
		>/tmp/attach-missing.out 2>&1; then
		fail "$mech: missing image: block-attach fails" "it succeeded"
	else
		pass "$mech: missing image: block-attach fails"
	fi
	grep 'script:\|hotplug' /tmp/attach-missing.out | head -n 3 | sed 's/^/INFO block-attach: /'
	check "$mech: missing image: block-attach shows blkstack's error" \
		grep -q 'missing.img' /tmp/attach-missing.out
	be3=/local/domain/0/backend/vbd/$domid/$XVDC
	info "missing image: after block-attach, backend xvdc:" \
		"$(xenstore-ls "$be3" 2>&1 | tr '\n' ' ' | cut -c1-300)"
	check "$mech: missing image: block-attach leaves no worker" [ "$(workers)" = 1 ]
	fuse_after=$(fuse_servers | sort | tr '\n' ' ')
	info "$mech: FUSE servers before the failed block-attach: ${fuse_before:-none}; after: ${fuse_after:-none}"
	check "$mech: missing image: block-attach leaves no FUSE server" \
		[ "$fuse_after" = "$fuse_before" ]
	if BLKSTACK_DEVICE=$mech xl block-detach "$g" xvdc >/tmp/detach-missing.out 2>&1; then
		info "$mech: xl block-detach of the failed xvdc: ok"
	else
		info "$mech: xl block-detach of the failed xvdc: $(tail -n 3 /tmp/detach-missing.out | tr '\n' '|')"
	fi
	info "$mech: backend xvdc after block-detach: $(xenstore-ls "$be3" 2>&1 | tr '\n' ' ' | cut -c1-200)"
}

# ---- item 2b: a guest disk served over its blkif ring (backendtype=tap) ---
# Xen 4.19+: libxl writes the disk's backend under backend/vbd3;
# blkstack-xenbus (the xenstore side of blkstack's ring backend) takes it
# to InitWait; libxl runs block-stack, whose add starts the disk's worker
# and makes no dom0 block device; blkstack-xenbus then hands the
# frontend's ring to the worker (blkif-connect) and says Connected, and
# the guest's blkfront talks to the worker itself.  Its variables are
# _v3*: the caller's must survive it.
no_vbd3_backends() {
	_b=$(xenstore-ls /local/domain/0/backend/vbd3 2>/dev/null | head -n 3 | tr '\n' '|')
	[ -z "$_b" ] && return 0
	echo "backend/vbd3 holds: $_b"
	return 1
}
be_state_is() { [ "$(xenstore-read "$1/state" 2>/dev/null)" = "$2" ]; }
ring_info() {
	info "ring: backend $1: $(xenstore-ls "$1" 2>&1 | tr '\n' ' ' | cut -c1-700)"
	sed 's/^/INFO blkstack-xenbus: /' /tmp/xenbus.err | tail -n 12
}
be_left_connected() {
	_s=$(xenstore-read "$1/state" 2>/dev/null)
	[ "$_s" = 5 ] || [ "$_s" = 6 ]
}
# The second ring disk's worker dies (SIGKILL; its supervisor restarts
# it, with no ring): blkstack-xenbus's blkif-watch sees the connection
# end, writes the reason to the backend's error node and goes to Closing
# (issue 17); the guest's blkfront closes the unused disk, and the
# backend reaches Closed.  Its watch must outlive the worker's control
# idle timeout (30 s) first.
ring_lost_worker() {
	_v3w2=$(xenstore-read "$_v3be2/blkstack-worker" 2>/dev/null || echo none)
	_v3fe2=/local/domain/$_v3dom/device/vbd/$XVDB
	sleep 35
	check "ring: lost worker: 35 s on, the second disk is still Connected (its blkif-watch outlives the control idle timeout)" \
		be_state_is "$_v3be2" 4
	_v3wpid=$(cat "/run/blkstack/$_v3w2/pid" 2>/dev/null || echo)
	if [ -n "$_v3wpid" ] && kill -9 "$_v3wpid"; then
		pass "ring: lost worker: SIGKILL of the second disk's worker ($_v3w2, pid $_v3wpid)"
	else
		fail "ring: lost worker: SIGKILL of the second disk's worker" "no pid for '$_v3w2'"
	fi
	check "ring: lost worker: the backend leaves Connected within 20 s" \
		wait_for 20 be_left_connected "$_v3be2"
	info "ring: lost worker: backend error node: $(xenstore-read "$_v3be2/error" 2>&1)"
	check "ring: lost worker: the backend's error node says the worker died" \
		sh -c "xenstore-read $_v3be2/error | grep -q 'worker $_v3w2: the worker died'"
	check "ring: lost worker: the guest's blkfront closes (frontend Closed)" \
		wait_for 30 be_state_is "$_v3fe2" 6
	check "ring: lost worker: the backend reaches Closed" \
		wait_for 30 be_state_is "$_v3be2" 6
	check "ring: lost worker: the guest runs on (its root disk Connected)" \
		be_state_is "$_v3be" 4
	info "ring: lost worker: frontend: $(xenstore-ls "$_v3fe2" 2>&1 | tr '\n' ' ' | cut -c1-300)"
	ring_info "$_v3be2"
}
ring_item() {
	_v3g="g-ring"
	_v3img=$IMGS/ring.img
	truncate -s 64M "$_v3img"
	printf 'blkstack-dom0-pattern' | dd of="$_v3img" conv=notrunc 2>/dev/null
	blkstack-xenbus --verbose >/tmp/xenbus.out 2>/tmp/xenbus.err &
	_v3pid=$!
	check "ring: blkstack-xenbus watches backend/vbd3" \
		wait_for 10 grep -q 'watching /local/domain/0/backend/vbd3' /tmp/xenbus.out
	guest_cfg "$_v3g" "$_v3img"
	sed -i "s|^disk = \['vdev=xvda,|disk = ['vdev=xvda,backendtype=tap,|" "/root/$_v3g.cfg"
	_v3t0=$(now)
	if xl create "/root/$_v3g.cfg" >"/tmp/$_v3g.create" 2>&1; then
		pass "ring: xl create with backendtype=tap,script=block-stack"
	else
		fail "ring: xl create with backendtype=tap,script=block-stack" \
			"$(tail -n 5 "/tmp/$_v3g.create" | tr '\n' ' ')"
		ring_info "(none)"
		cleanup_after "$_v3g"
		kill "$_v3pid"
		wait "$_v3pid"
		return 0
	fi
	_v3dom=$(xl domid "$_v3g")
	_v3be=/local/domain/0/backend/vbd3/$_v3dom/$XVDA
	check "ring: backend Connected (state 4)" wait_for 60 be_state_is "$_v3be" 4
	if wait_for 120 in_log "$_v3g" "GUEST wrote"; then
		info "ring: guest wrote $(($(now) - _v3t0))s after xl create"
	fi
	check "ring: guest reads dom0's pattern" in_log "$_v3g" "GUEST read-ok"
	check "ring: guest writes" in_log "$_v3g" "GUEST wrote"
	_v3got=$(dd if="$_v3img" bs=512 skip=2048 count=1 2>/dev/null | head -c 22)
	check "ring: guest's pattern is in the image (guest running)" \
		[ "$_v3got" = blkstack-guest-pattern ]
	_v3w=$(xenstore-read "$_v3be/blkstack-worker" 2>/dev/null || echo none)
	"$CTL" info --name "$_v3w" --json >/tmp/ring.info 2>&1 || true
	check "ring: the disk's worker serves the ring (info: blkif connected)" \
		grep -q '"blkif":"connected"' /tmp/ring.info
	"$CTL" stats --name "$_v3w" --json >/tmp/ring.stats 2>&1 || true
	info "ring: worker stats blkif: $(sed -n 's/.*"blkif":\({[^}]*}\).*/\1/p' /tmp/ring.stats)"
	check "ring: the ring's requests are counted, none failed" \
		grep -q '"blkif":{[^}]*"errors":0,' /tmp/ring.stats
	check "ring: no dom0 block device serves it" no_blockdev
	check "ring: the backend names the worker's socket" \
		[ "$(xenstore-read "$_v3be/physical-device-path" 2>/dev/null)" = "/run/blkstack/$_v3w/ctl.sock" ]
	xl block-list "$_v3g" >/tmp/ring.blist 2>&1 || true
	info "ring: xl block-list: $(tr '\n' '|' </tmp/ring.blist)"
	check "ring: xl block-list shows the disk" grep -q "^$XVDA " /tmp/ring.blist
	ring_info "$_v3be"

	# A second ring disk, attached and detached while the guest runs.
	_v3img2=$IMGS/ring2.img
	truncate -s 32M "$_v3img2"
	if xl block-attach "$_v3g" "vdev=xvdb,backendtype=tap,script=block-stack,target=log:|aio:$_v3img2" \
		>/tmp/attach-ring.out 2>&1; then
		pass "ring: xl block-attach of a second ring disk"
	else
		fail "ring: xl block-attach of a second ring disk" "$(tail -n 3 /tmp/attach-ring.out | tr '\n' ' ')"
	fi
	_v3be2=/local/domain/0/backend/vbd3/$_v3dom/$XVDB
	check "ring: second disk Connected (state 4)" wait_for 60 be_state_is "$_v3be2" 4
	check "ring: two workers while attached" [ "$(workers)" = 2 ]
	ring_lost_worker
	if xl block-detach "$_v3g" xvdb >/tmp/detach-ring.out 2>&1; then
		pass "ring: xl block-detach of the second disk"
	else
		fail "ring: xl block-detach of the second disk" "$(tail -n 3 /tmp/detach-ring.out | tr '\n' ' ')"
	fi
	wait_for 30 sh -c "! xenstore-exists $_v3be2" || true
	check "ring: second disk's backend gone" sh -c "! xenstore-exists $_v3be2"
	check "ring: blkstack-xenbus closed it (Closing, then Closed)" \
		grep -q "backend/vbd3/$_v3dom/$XVDB: .* -> Closed" /tmp/xenbus.err
	wait_for 20 sh -c "[ \"\$($CTL list 2>/dev/null | grep -c .)\" = 1 ]" || true
	check "ring: one worker after detach" [ "$(workers)" = 1 ]
	check "ring: the first disk still serves (state 4)" be_state_is "$_v3be" 4

	xl shutdown "$_v3g" >/tmp/ring.shutdown 2>&1 || true
	if wait_for 90 domain_gone "$_v3g"; then
		pass "ring: guest shut down, domain gone"
	else
		fail "ring: guest shut down" "still there after 90s; destroying"
		info "ring: guest console: $(tail -n 8 "$CONS/guest-$_v3g.log" | tr '\n' '|')"
		ring_info "$_v3be"
		xl destroy "$_v3g" || true
		wait_for 30 domain_gone "$_v3g" || true
	fi
	_v3got=$(dd if="$_v3img" bs=512 skip=2048 count=1 2>/dev/null | head -c 22)
	check "ring: guest's pattern is in the image after shutdown" \
		[ "$_v3got" = blkstack-guest-pattern ]
	wait_for 20 no_workers || true
	check "ring: no worker left" no_workers
	check "ring: no backend left in xenstore" no_vbd3_backends
	kill "$_v3pid"
	check "ring: blkstack-xenbus exits 0 on SIGTERM" wait "$_v3pid"
	info "ring: blkstack-xenbus said: $(grep -c . /tmp/xenbus.err) lines"
}

# ---- item 3: a missing image at xl create -----------------------------------
missing_create() {
	guest_cfg g-missing "$IMGS/missing.img"
	if BLKSTACK_DEVICE=loop xl create /root/g-missing.cfg >/tmp/missing.out 2>&1; then
		fail "missing image: xl create fails" "it succeeded"
		xl destroy g-missing || true
	else
		pass "missing image: xl create fails"
	fi
	grep 'script:\|hotplug' /tmp/missing.out | head -n 3 | sed 's/^/INFO xl create: /'
	check "missing image: xl create shows blkstack's error" \
		grep -q 'missing.img' /tmp/missing.out
	wait_for 20 domain_gone g-missing || true
	check "missing image: no domain left" domain_gone g-missing
	check "missing image: no worker left" no_workers
	check "missing image: no FUSE server left" no_nbdfuse
	check "missing image: no backend left" no_backends
}

# ---- item 4: localattach/localdetach as libxl v2 would ----------------------
local_attach() {
	mech=$1
	img=$IMGS/local-$mech.img
	truncate -s 16M "$img"
	ts() {
		BLKSTACK_DEVICE=$mech xs-toolstack --quiet --script "$SCRIPT" \
			--domid 77 --target "log:|aio:$img" "$@"
	}
	hp=$(ts paths | sed -n 's/^HOTPLUG_PATH=//p' | tr -d "'\"")
	if ts v2-create && ts v2-run version && ts v2-run prepare >/tmp/la.out 2>&1; then
		pass "$mech: v2 create, version, prepare"
	else
		fail "$mech: v2 create, version, prepare" "$(tr '\n' ' ' </tmp/la.out)"
	fi
	if ts v2-run localattach >/tmp/la.out 2>&1; then
		pass "$mech: localattach"
	else
		fail "$mech: localattach" "$(tr '\n' ' ' </tmp/la.out)"
	fi
	dev=$(xenstore-read "$hp/pdev" 2>/dev/null || echo none)
	info "$mech: localattach pdev=$dev"
	# Controls: each "nothing left" check fails while this disk is up.
	check "$mech: control: the worker check sees the worker" not no_workers
	if [ "$mech" = loop ]; then
		check "loop: control: the FUSE server check sees it" not no_nbdfuse
		check "loop: control: the fuse mount check sees its mount" \
			not no_fuse_mount
		check "loop: control: the loop device check sees $dev" not no_loopdev
	elif [ "$mech" = fuse ]; then
		# The worker's own file: no FUSE server of its own.
		check "fuse: no blkstack-fuse or nbdfuse runs" no_nbdfuse
		check "fuse: control: the fuse mount check sees the worker's mount" \
			not no_fuse_mount
		check "fuse: control: the loop device check sees $dev" not no_loopdev
	else
		check "nbd: control: the nbd device check sees $dev" not no_nbddev
	fi
	printf 'blkstack-local-pattern' >/tmp/lp
	if [ -b "$dev" ] && dd if=/tmp/lp of="$dev" bs=512 conv=sync,fsync 2>/dev/null; then
		got=$(dd if="$img" bs=512 count=1 2>/dev/null | head -c 22)
		check "$mech: dom0 write through the local device reaches the image" \
			[ "$got" = blkstack-local-pattern ]
	else
		fail "$mech: write to the local device" "$dev is not usable"
	fi
	check "$mech: localdetach" ts v2-run localdetach
	check "$mech: unprepare" ts v2-run unprepare
	check "$mech: no worker left after unprepare" no_workers
	check "$mech: no FUSE server left after unprepare" no_nbdfuse
	check "$mech: no fuse mount left after unprepare" no_fuse_mount
	check "$mech: no loop or nbd device left after unprepare" no_blockdev
	xenstore-rm "${hp%/vbd/*}" 2>/dev/null || true
}

# ---- item 4b: xl's own local attach, for a disk-reading bootloader ---------
# libxl attaches a script= disk to dom0 itself (a vbd from dom0 to dom0,
# the script's add, xen-blkfront in dom0), runs the bootloader on the
# /dev/xvdX it gets, then detaches it (the script's remove) before the
# guest's own add.  tests/xen/test-bootloader stands in for pygrub.
bootloader_run() {
	g=guest-boot
	img=$IMGS/disk-boot.img
	truncate -s 64M "$img"
	printf 'blkstack-dom0-pattern' | dd of="$img" conv=notrunc 2>/dev/null
	cat >"/root/$g.cfg" <<EOF
name = "$g"
type = "pv"
bootloader = "/root/test-bootloader"
memory = 192
vcpus = 1
on_poweroff = "destroy"
on_crash = "destroy"
on_reboot = "destroy"
disk = ['vdev=xvda,script=block-stack,target=log:|aio:$img']
EOF
	rm -f /tmp/bootloader.seen
	t0=$(now)
	if ! BLKSTACK_DEVICE=loop xl create "/root/$g.cfg" >"/tmp/$g.create" 2>&1; then
		fail "boot: xl create with a disk-reading bootloader" \
			"$(tail -n 5 "/tmp/$g.create" | tr '\n' ' ')"
		info "boot: bootloader saw: $(cat /tmp/bootloader.seen 2>&1)"
		cleanup_after "$g"
		return 0
	fi
	pass "boot: xl create with a disk-reading bootloader"
	info "boot: xl create took $(($(now) - t0))s; bootloader saw: $(cat /tmp/bootloader.seen 2>&1)"
	check "boot: the bootloader read dom0's pattern through libxl's local attach" \
		grep -q '^disk=/dev/xvd[a-z]* pattern=blkstack-dom0-pattern$' /tmp/bootloader.seen
	check "boot: dom0's local vbd is gone after the bootloader" no_dom0_vbd
	check "boot: one worker (the guest's) while it runs" [ "$(workers)" = 1 ]
	if wait_for 120 in_log "$g" "GUEST wrote"; then
		info "boot: guest wrote $(($(now) - t0))s after xl create"
	fi
	check "boot: guest booted from the bootloader's kernel reads its disk" \
		in_log "$g" "GUEST read-ok"
	xl shutdown "$g" >/dev/null 2>&1 || true
	wait_for 90 domain_gone "$g" || xl destroy "$g" >/dev/null 2>&1 || true
	wait_for 30 domain_gone "$g" || true
	wait_for 20 no_workers || true
	check "boot: no domain left" domain_gone "$g"
	check "boot: no worker left" no_workers
	check "boot: no FUSE server left" no_nbdfuse
	check "boot: no backend left" no_backends
}

# ---- item 5: the guest's I/O resumes when its worker dies (kernel NBD) ------
# A PV guest writing records (bks-records, as in item 6) on a kernel NBD
# disk.  5a, by hand (supervise = no): kill -9 the worker, the guest's
# writes wait (dead_conn_timeout), start a new worker of the same name and
# chain, `blkstack-ctl reconnect`, the writes resume with no I/O error and
# no acknowledged record lost; then kill -9 again with no restart: xl
# destroy is bounded and leaves nothing.  5b, with the supervisor (when it
# is in the image): kill -9, SIGSTOP (hang-action=restart), repeated
# crashes up to the give-up limit, xl destroy.

# rec_cfg NAME TYPE IMAGE: a guest that writes records (guest-init).
rec_cfg() {
	cat >"/root/$1.cfg" <<EOC
name = "$1"
type = "$2"
kernel = "/root/guest-vmlinuz"
ramdisk = "/root/guest.cpio.gz"
extra = "console=hvc0 quiet bks_records"
memory = 160
vcpus = 1
tsc_mode = "native"
on_poweroff = "destroy"
on_crash = "destroy"
on_reboot = "destroy"
disk = ['vdev=xvda,script=block-stack,target=log:|aio:$3']
EOC
}
# io_errors NAME: the guest's console lines that tell of a failed I/O.
io_errors() {
	tr -d '\r' <"$CONS/guest-$1.log" | grep -i 'I/O error\|REC error\|blk_update_request\|Buffer I/O' | head -n 3
}
no_io_errors() {
	_e=$(io_errors "$1")
	[ -z "$_e" ] && return 0
	echo "guest console: $_e" | tr '\n' '|'
	return 1
}
# worker_pid NAME: the worker's pid (its pid file).
worker_pid() { cat "/run/blkstack/$1/pid" 2>/dev/null || true; }
# first_ack_after NAME N SECONDS: wait (0.2 s steps) for an ack beyond N;
# prints the milliseconds waited, or nothing.
first_ack_after() {
	_t0=$(now_ms)
	_n=$(($3 * 5))
	while [ "$_n" -gt 0 ]; do
		if acks_beyond "$1" "$2"; then
			echo $(($(now_ms) - _t0))
			return 0
		fi
		sleep 0.2
		_n=$((_n - 1))
	done
	return 1
}
# nbd_failed_since N LINES: dom0's kernel failed I/O of /dev/nbdN (or shut
# its sockets down) after the first LINES lines of dmesg.  (Connected or
# not is not visible: the device stays configured while blkback has it
# open.)
nbd_failed_since() {
	_f=$(dmesg | tail -n +$(($2 + 1)) |
		grep "nbd$1: shutting down sockets\|nbd$1: Dead connection\|I/O error, dev nbd$1" |
		head -n 3 | tr '\n' '|')
	[ -n "$_f" ] || return 1
	echo "dmesg: $_f"
	return 0
}

# rec_guest_up NAME TAG CONF [MECH]: create the records guest on kernel NBD
# (or MECH) under
# BLKSTACK_CONF=CONF, wait for 20 acks; sets domid be w dev nbdn (N of
# /dev/nbdN; not n, which wait_for uses).  Fails
# (returns 1) after reporting and cleaning up.
rec_guest_up() {
	_g=$1
	_tag=$2
	img=$IMGS/rec-$_g.img
	truncate -s 128M "$img"
	printf 'blkstack-dom0-pattern' | dd of="$img" conv=notrunc 2>/dev/null
	rec_cfg "$_g" pv "$img"
	if ! BLKSTACK_CONF=$3 BLKSTACK_DEVICE=${4:-nbd} xl create "/root/$_g.cfg" \
		>"/tmp/$_g.create" 2>&1; then
		fail "$_tag: xl create" "$(xl_errors "/tmp/$_g.create")"
		cleanup_after "$_g"
		return 1
	fi
	pass "$_tag: xl create (PV guest writing records, ${4:-nbd})"
	domid=$(xl domid "$_g")
	be=/local/domain/0/backend/vbd/$domid/$XVDA
	w=$(xenstore-read "$be/blkstack-worker" 2>/dev/null || echo none)
	dev=$(xenstore-read "$be/physical-device-path" 2>/dev/null || echo none)
	nbdn=${dev#/dev/nbd}
	if [ "${4:-nbd}" = nbd ]; then
		info "$_tag: worker $w, device $dev, backend identifier" \
			"'$(cat "/sys/block/nbd$nbdn/backend" 2>&1)'," \
			"io_timeout $(cat "/sys/block/nbd$nbdn/queue/io_timeout" 2>&1) ms"
	else
		info "$_tag: worker $w, device $dev"
	fi
	wait_for 150 acks_or_gone "$_g" 20 || true
	if ! acks_beyond "$_g" 20; then
		fail "$_tag: guest writes records" "last ack $(last_ack "$_g"); console: $(tr -d '\r' <"$CONS/guest-$_g.log" | tail -n 5 | tr '\n' '|')"
		cleanup_after "$_g"
		return 1
	fi
	pass "$_tag: guest writes records (O_DIRECT|O_DSYNC, acknowledged)"
	return 0
}

# rec_verify NAME TAG FROM: after the guest is gone, every acknowledged
# record is in the image (bks-records check), from one writer run.
rec_verify() {
	acked=$(last_ack "$1")
	bks-records check "$img" "$REC_BASE" "$3" >"/tmp/$1.records" 2>&1
	r=$(cat "/tmp/$1.records")
	info "$2: records in the image: $r; last acknowledged on the console: $acked"
	kv() { echo "$r" | tr ' ' '\n' | sed -n "s/^$1=//p"; }
	last=$(kv last)
	check "$2: one run of the writer in the image" [ "$(kv other_run)" = 0 ]
	check "$2: no acknowledged record lost (records 0..$acked contiguous in the image)" \
		sh -c "[ '$(kv bad)' = 0 ] && [ '$(kv after_hole)' = 0 ] && [ '${last:--1}' -ge '$acked' ] && [ '$acked' -ge 0 ]"
	info "$2: largest gap between records after $3: $(kv from_gap_ms) ms at record $(kv from_gap_at)"
}

# nothing_left TAG: no worker, nbd device, backend.
nothing_left() {
	wait_for 20 no_workers || true
	check "$1: no worker left" no_workers
	check "$1: no nbd device left" no_nbddev
	check "$1: no backend left in xenstore" no_backends
	check "$1: no worker run directory left" \
		sh -c "[ -z \"\$(find /run/blkstack -mindepth 1 -maxdepth 1 -type d)\" ] || { find /run/blkstack; exit 1; }"
}

# destroy_bounded NAME TAG: xl destroy, bounded (60 s), reporting.
destroy_bounded() {
	t1=$(now_ms)
	xl destroy "$1" >"/tmp/$1.destroy" 2>&1 &
	dpid=$!
	if wait_for 60 domain_gone "$1"; then
		pass "$2: xl destroy takes the guest down"
		info "$2: xl destroy took $(($(now_ms) - t1)) ms"
	else
		fail "$2: xl destroy takes the guest down" "domain still there after 60s"
	fi
	if wait_for 30 sh -c "! kill -0 $dpid"; then
		wait "$dpid" 2>/dev/null || true
	else
		info "$2: xl destroy still running after 90s; processes in D state:" \
			"$(ps -o pid,stat,args 2>/dev/null | awk '$2 ~ /D/' | tr '\n' '|')"
	fi
	info "$2: xl destroy said: $(tail -n 4 "/tmp/$1.destroy" | tr '\n' '|')"
}

# 5a: a restart by hand and `blkstack-ctl reconnect`.
restart_item() {
	g=nbd-restart
	tag="restart nbd"
	conf=/root/nosup.conf
	printf 'supervise = no\n' >"$conf"
	rec_guest_up "$g" "$tag" "$conf" || return 0
	check "$tag: the device's request timer is nbd-io-timeout (5 s)" \
		[ "$(cat "/sys/block/nbd$nbdn/queue/io_timeout" 2>&1)" = 5000 ]
	chain=$("$CTL" list | sed -n "s/^name=$w .* chain=\([^ ]*\).*/\1/p")
	pid=$(worker_pid "$w")
	info "$tag: worker pid ${pid:-unknown}, chain ${chain:-unknown}"
	if [ -z "$pid" ] || [ -z "$chain" ]; then
		fail "$tag: worker pid and chain" "not found"
		cleanup_after "$g"
		return 0
	fi
	# SIGSTOP first, so that a write is surely in flight (sent to the
	# socket, never answered) when the worker dies: the kernel must re-send
	# it to the new worker, not fail it.
	pre=$(last_ack "$g")
	kill -STOP "$pid"
	sleep 2
	stopped=$(last_ack "$g")
	d0=$(dmesg | wc -l)
	kill -9 "$pid"
	tk=$(now_ms)
	sleep 3
	mid=$(last_ack "$g")
	# (The console lags: acks of writes done before SIGSTOP may still come
	# in during its first 2 s, so the count is from the kill on.)
	info "$tag: last ack $pre at SIGSTOP, $stopped 2 s later at the kill, $mid 3 s after it"
	check "$tag: the guest's writes wait while no worker serves" \
		[ "$mid" -le $((stopped + 1)) ]
	check "$tag: dom0's kernel queues the I/O, it fails none" \
		not nbd_failed_since "$nbdn" "$d0"
	check "$tag: no I/O error on the guest while it waits" no_io_errors "$g"
	if "$CTL" create --name "$w" --chain "$chain" >"/tmp/$g.start" 2>&1; then
		pass "$tag: a new worker of the same name and chain (blkstack-ctl create)"
	else
		fail "$tag: a new worker of the same name and chain" "$(tr '\n' ' ' <"/tmp/$g.start")"
	fi
	"$CTL" reconnect --name "$w" >"/tmp/$g.reconnect" 2>&1
	tr=$(now_ms)
	check "$tag: blkstack-ctl reconnect reconnects the device" \
		grep -q '^reconnected 1 kernel NBD device$' "/tmp/$g.reconnect"
	waited=$(first_ack_after "$g" "$mid" 60)
	if [ -n "$waited" ]; then
		pass "$tag: the guest's writes resume after the reconnect"
		info "$tag: kill to first new ack $((tr - tk + waited)) ms;" \
			"reconnect to first new ack $waited ms"
	else
		fail "$tag: the guest's writes resume after the reconnect" \
			"no ack beyond $mid in 60 s; console: $(tr -d '\r' <"$CONS/guest-$g.log" | tail -n 4 | tr '\n' '|')"
	fi
	wait_for 60 acks_beyond "$g" $((mid + 20)) || true
	check "$tag: the guest keeps writing (20 more records)" acks_beyond "$g" $((mid + 20))
	check "$tag: no I/O error on the guest's console" no_io_errors "$g"
	check "$tag: dom0's kernel failed no I/O across the restart" \
		not nbd_failed_since "$nbdn" "$d0"
	dmesg | grep "nbd$nbdn" | tail -n 6 | sed "s/^/INFO $tag: dmesg: /"
	info "$tag: requests the kernel re-sent after its timer fired:" \
		"$(dmesg | grep -c "nbd$nbdn: Possible stuck request")"
	"$CTL" reconnect --name "$w" >"/tmp/$g.reconnect2" 2>&1
	check "$tag: reconnect leaves a live connection alone" \
		grep -q '^reconnected 0 kernel NBD devices$' "/tmp/$g.reconnect2"
	check "$tag: the guest still writes after that" \
		first_ack_after "$g" "$(last_ack "$g")" 30

	# The worker dies again and nothing restarts it: the guest's I/O waits
	# for a reconnect; xl destroy's remove must not wait that long.
	pid=$(worker_pid "$w")
	kill -9 "$pid"
	sleep 2
	destroy_bounded "$g" "$tag"
	rec_verify "$g" "$tag" "$pre"
	nothing_left "$tag"
}

# sup_state W KEY: KEY's value in DIR/W/supervisor.state.
sup_state() { sed -n "s/^$2=//p" "/run/blkstack/$1/supervisor.state" 2>/dev/null; }
sup_state_is() { [ "$(sup_state "$1" "$2")" = "$3" ]; }
# new_worker W OLD: a worker pid other than OLD is in W's pid file.
new_worker() {
	_p=$(worker_pid "$1")
	[ -n "$_p" ] && [ "$_p" != "$2" ] && kill -0 "$_p" 2>/dev/null
}
sup_info() {
	info "$1: supervisor.state: $(tr '\n' ' ' <"/run/blkstack/$2/supervisor.state" 2>&1)"
}

# 5b: the supervisor restarts a killed worker and a hung one, and gives up
# after restart-limit crashes in restart-window.
supervised_item() {
	g=nbd-super
	tag="supervised nbd"
	if [ ! -x /usr/sbin/blkstack-supervisor ]; then
		fail "$tag: blkstack-supervisor in dom0" "not in this build"
		return 0
	fi
	conf=/root/super.conf
	printf '%s\n' 'supervise = yes' 'restart-limit = 3' \
		'restart-window = 300' 'hang-timeout = 5' 'hang-action = restart' \
		>"$conf"
	rec_guest_up "$g" "$tag" "$conf" || return 0
	sup_info "$tag" "$w"
	check "$tag: the worker runs under its supervisor" \
		sup_state_is "$w" state running

	# kill -9: restarted and reconnected; the guest sees latency only.
	# SIGSTOP for 1 s first (less than hang-timeout), so that a write is
	# in flight at the kill and the ack counted is one that needed the
	# new worker.
	pid=$(worker_pid "$w")
	d0=$(dmesg | wc -l)
	kill -STOP "$pid"
	sleep 1
	pre=$(last_ack "$g")
	kill -9 "$pid"
	waited=$(first_ack_after "$g" "$pre" 60)
	if [ -n "$waited" ]; then
		pass "$tag: kill -9: the guest's writes resume (restarted, reconnected)"
		info "$tag: kill -9 to the first completed write: $waited ms"
	else
		fail "$tag: kill -9: the guest's writes resume" \
			"no ack beyond $pre in 60 s; console: $(tr -d '\r' <"$CONS/guest-$g.log" | tail -n 4 | tr '\n' '|')"
	fi
	wait_for 10 sup_state_is "$w" restarts 1 || true
	sup_info "$tag" "$w"
	check "$tag: kill -9: a new worker" new_worker "$w" "$pid"
	check "$tag: kill -9: supervisor.state counts the restart" \
		sup_state_is "$w" restarts 1
	check "$tag: kill -9: supervisor.state says the worker was killed by signal 9" \
		sh -c "sed -n 's/^last_exit=//p' /run/blkstack/$w/supervisor.state | grep -q 'signal 9'"
	check "$tag: kill -9: the supervisor reconnected the device" \
		sh -c "sed -n 's/^reconnect=//p' /run/blkstack/$w/supervisor.state | grep -q 'reconnected 1'"
	check "$tag: kill -9: no I/O error on the guest" no_io_errors "$g"
	"$CTL" list 2>&1 | sed "s/^/INFO $tag: blkstack-ctl list: /"

	# SIGSTOP: no beat; after hang-timeout the supervisor kills it and
	# starts another (hang-action = restart).
	pid=$(worker_pid "$w")
	pre=$(last_ack "$g")
	kill -STOP "$pid"
	ts=$(now_ms)
	if wait_for 60 new_worker "$w" "$pid"; then
		pass "$tag: SIGSTOP: the hung worker is replaced"
		info "$tag: SIGSTOP to a new worker: $(($(now_ms) - ts)) ms"
	else
		fail "$tag: SIGSTOP: the hung worker is replaced" "pid still $(worker_pid "$w") after 60 s"
	fi
	sup_info "$tag" "$w"
	check "$tag: SIGSTOP: supervisor.state says it hung" \
		sh -c "grep '^last_exit=\|^hung=' /run/blkstack/$w/supervisor.state | grep -qi 'hung\|hang'"
	waited=$(first_ack_after "$g" $((pre + 1)) 60)
	check "$tag: SIGSTOP: the guest's writes resume" [ -n "$waited" ]
	info "$tag: SIGSTOP: first ack beyond the next record $(($(now_ms) - ts)) ms after SIGSTOP"
	check "$tag: SIGSTOP: no I/O error on the guest" no_io_errors "$g"
	check "$tag: dom0's kernel failed no I/O across both restarts" \
		not nbd_failed_since "$nbdn" "$d0"
	kill -9 "$pid" 2>/dev/null || true

	# Repeated crashes: the third in restart-window is the last.
	acked_before=$(last_ack "$g")
	d1=$(dmesg | wc -l)
	i=0
	while [ "$i" -lt 5 ] && ! sup_state_is "$w" state gave-up; do
		pid=$(worker_pid "$w")
		[ -n "$pid" ] && kill -9 "$pid" 2>/dev/null
		wait_for 20 sh -c "[ \"\$(sed -n 's/^state=//p' /run/blkstack/$w/supervisor.state 2>/dev/null)\" = gave-up ] || { p=\$(cat /run/blkstack/$w/pid 2>/dev/null); [ -n \"\$p\" ] && [ \"\$p\" != '$pid' ] && kill -0 \"\$p\"; }" || true
		i=$((i + 1))
	done
	wait_for 10 sup_state_is "$w" state gave-up || true
	sup_info "$tag" "$w"
	check "$tag: repeated crashes: the supervisor gives up (restart-limit 3)" \
		sup_state_is "$w" state gave-up
	herr=$(xenstore-read "$be/hotplug-error" 2>/dev/null || true)
	info "$tag: hotplug-error: ${herr:-none}"
	check "$tag: repeated crashes: hotplug-error says the supervisor gave up" \
		sh -c "echo '$herr' | grep -qi 'gave up\|giving up\|give up'"
	# The give-up disconnects the device: queued I/O fails now rather
	# than at reconnect-timeout (60 s).  (The device stays configured
	# while blkback holds it open, so /sys/block/nbdN/pid says nothing.)
	tg=$(now_ms)
	if wait_for 30 sh -c "tr -d '\r' <'$CONS/guest-$g.log' | grep -q 'REC error\|I/O error'"; then
		pass "$tag: give-up: the guest gets errors instead of hanging"
		info "$tag: give-up: the guest's first error $(($(now_ms) - tg)) ms after state=gave-up was seen"
	else
		fail "$tag: give-up: the guest gets errors instead of hanging" \
			"none in 30 s; console: $(tr -d '\r' <"$CONS/guest-$g.log" | tail -n 4 | tr '\n' '|')"
	fi
	# The control for the checks above: now the kernel does fail I/O.
	check "$tag: give-up: dom0's kernel fails the device's I/O" \
		nbd_failed_since "$nbdn" "$d1"
	dmesg | grep "nbd$nbdn" | tail -n 4 | sed "s/^/INFO $tag: dmesg: /"
	destroy_bounded "$g" "$tag"
	rec_verify "$g" "$tag" "$acked_before"
	nothing_left "$tag"
}

# 5c: the loop fallback (blkstack-fuse + loop) across a kill -9 under the
# supervisor: blkstack-fuse holds and re-sends the requests, the guest
# sees latency.  Before blkstack-fuse (nbdfuse), nothing to test here.
loop_kill_item() {
	g=loop-kill
	tag="supervised loop"
	if [ ! -x /usr/libexec/blkstack/blkstack-fuse ] &&
		[ ! -x /usr/sbin/blkstack-fuse ]; then
		info "$tag: no blkstack-fuse in this build: the loop fallback's restart is not tested here"
		return 0
	fi
	conf=/root/loop-super.conf
	printf '%s\n' 'supervise = yes' >"$conf"
	rec_guest_up "$g" "$tag" "$conf" loop || return 0
	info "$tag: FUSE servers: $(fuse_servers | tr '\n' ' ')"
	pid=$(worker_pid "$w")
	kill -STOP "$pid"
	sleep 1
	pre=$(last_ack "$g")
	kill -9 "$pid"
	waited=$(first_ack_after "$g" "$pre" 60)
	if [ -n "$waited" ]; then
		pass "$tag: kill -9: the guest's writes resume"
		info "$tag: kill -9 to the first completed write: $waited ms"
	else
		fail "$tag: kill -9: the guest's writes resume" \
			"no ack beyond $pre in 60 s; console: $(tr -d '\r' <"$CONS/guest-$g.log" | tail -n 4 | tr '\n' '|')"
	fi
	wait_for 60 acks_beyond "$g" $((pre + 20)) || true
	check "$tag: the guest keeps writing (20 more records)" acks_beyond "$g" $((pre + 20))
	check "$tag: no I/O error on the guest" no_io_errors "$g"
	sup_info "$tag" "$w"
	xl shutdown "$g" >/dev/null 2>&1 || true
	if ! wait_for 90 domain_gone "$g"; then
		fail "$tag: guest shut down" "still there after 90s; destroying"
		xl destroy "$g" >/dev/null 2>&1 || true
		wait_for 30 domain_gone "$g" || true
	fi
	rec_verify "$g" "$tag" "$pre"
	nothing_left "$tag"
	check "$tag: no FUSE server left" no_nbdfuse
	check "$tag: no loop device left" no_loopdev
}

# ---- item 6: live migration and save/restore of a writing guest -------------
# The guest runs bks-records (tests/xen/bks-records.c, guest-init with
# bks_records): one O_DIRECT|O_DSYNC record per 4 KiB slot from 16 MiB
# (sequence number, CLOCK_REALTIME), every 30 ms, "REC ack N" on its
# console once the write returned.  Localhost live migration needs a PVH
# guest here (Debian's Xen has no shadow paging, PV log-dirty needs it);
# save/restore runs the PV guest.
REC_BASE=16777216

now_ms() { awk '{ printf "%d", $1 * 1000 }' /proc/uptime; }
# last_ack NAME: the highest "REC ack" on the guest's consoles (the incoming
# domain of a migration is NAME--incoming until it takes over), -1 if none.
last_ack() {
	cat "$CONS/guest-$1".log "$CONS/guest-$1"--*.log 2>/dev/null |
		tr -d '\r' | sed -n 's/^REC ack \([0-9][0-9]*\)$/\1/p' |
		sort -n | tail -n 1 | grep . || echo -1
}
acks_beyond() { [ "$(last_ack "$1")" -gt "$2" ]; }
# acks_or_gone NAME N: acks beyond N, or the domain is gone (a crash: do
# not wait for acks that cannot come).
acks_or_gone() { acks_beyond "$1" "$2" || domain_gone "$1" >/dev/null; }
# running NAME: the domain exists and is running or blocked (not paused,
# suspended, shut down or crashed).
running() {
	_s=$(xl list "$1" 2>/dev/null | awk 'NR == 2 { print $5 }')
	# Running, blocked, or runnable waiting for a CPU (------), on any
	# mix of vCPUs (rb----); not paused, shut down, crashed or dying.
	case $_s in
	'' | *p* | *s* | *c* | *d*) ;;
	*[!rb-]*) ;;
	*) return 0 ;;
	esac
	echo "state of $1: ${_s:-no such domain}"
	return 1
}
# fail_xen ITEM WHY: FAIL, after Xen's view (xl dmesg) as INFO.  A PVH guest
# under TCG now and then triple-faults, which is not blkstack's doing: the
# FAIL text says so when xl dmesg shows one.
fail_xen() {
	xl dmesg 2>&1 | tail -n 12 | sed 's/^/INFO xl dmesg: /'
	for _f in "$CONS/guest-$g".log "$CONS/guest-$g"--*.log; do
		[ -e "$_f" ] || continue
		tr -d '\r' <"$_f" | grep -v '^REC ack' | tail -n 6 |
			sed "s|^|INFO console ${_f##*/}: |"
	done
	if xl dmesg 2>/dev/null | grep -qi 'triple fault'; then
		fail "$1" "$2; the guest TRIPLE-FAULTED (xl dmesg): TCG/PVH, not blkstack"
	else
		fail "$1" "$2"
	fi
}
# xl_errors FILE: the error lines of an xl command's output, one line.
xl_errors() {
	grep -i 'error\|script\|hotplug\|fail' "$1" | head -n 6 | tr '\n' '|' | cut -c1-900
}
# rec_cleanup NAME: after a failure, take down whatever is left of NAME
# (after a failed migration the sender resumes the guest, but xl's monitor
# for it is gone: xl shutdown would leave it suspended, so destroy it).
rec_cleanup() {
	xl destroy "$1--incoming" >/dev/null 2>&1 || true
	cleanup_after "$1"
	rm -f "/root/$1.save"
}

# rec_run MECH MODE: MODE migrate (PVH, xl migrate to localhost) or save
# (PV, xl save + xl restore).  MECH ring: the disk is backendtype=tap, its
# ring served by the worker (blkstack-xenbus running: rec_ring_items);
# the backends are under backend/vbd3 and no dom0 device is made.
rec_run() {
	mech=$1
	mode=$2
	g=$mode-$mech
	tag="$mode $mech"
	img=$IMGS/rec-$g.img
	type=pvh
	[ "$mode" = save ] && type=pv
	bt=''
	bedir=vbd
	nobe=no_backends
	dmech=$mech
	if [ "$mech" = ring ]; then
		bt=backendtype=tap,
		bedir=vbd3
		nobe=no_vbd3_backends
		dmech=auto
	fi
	truncate -s 128M "$img"
	printf 'blkstack-dom0-pattern' | dd of="$img" conv=notrunc 2>/dev/null
	cat >"/root/$g.cfg" <<EOC
name = "$g"
type = "$type"
kernel = "/root/guest-vmlinuz"
ramdisk = "/root/guest.cpio.gz"
extra = "console=hvc0 quiet bks_records"
memory = 160
vcpus = 1
tsc_mode = "native"
on_poweroff = "destroy"
on_crash = "destroy"
on_reboot = "destroy"
disk = ['vdev=xvda,${bt}script=block-stack,target=log:|aio:$img']
EOC
	t0=$(now)
	if ! BLKSTACK_DEVICE=$dmech xl create "/root/$g.cfg" >"/tmp/$g.create" 2>&1; then
		sed 's/^/INFO xl create: /' "/tmp/$g.create"
		fail_xen "$tag: xl create ($type)" "$(xl_errors "/tmp/$g.create")"
		rec_cleanup "$g"
		return 0
	fi
	pass "$tag: xl create ($type guest writing records)"
	domid=$(xl domid "$g")
	wait_for 150 acks_or_gone "$g" 20 || true
	if ! acks_beyond "$g" 20; then
		fail_xen "$tag: guest writes records" "last ack $(last_ack "$g"); console: $(tr -d '\r' <"$CONS/guest-$g.log" | tail -n 5 | tr '\n' '|')"
		rec_cleanup "$g"
		return 0
	fi
	pass "$tag: guest writes records (O_DIRECT|O_DSYNC, acknowledged)"
	info "$tag: $(tr -d '\r' <"$CONS/guest-$g.log" | grep '^REC start')," \
		"first 20 records $(($(now) - t0))s after xl create"
	pre=$(last_ack "$g")
	t1=$(now_ms)
	if [ "$mode" = migrate ]; then
		BLKSTACK_DEVICE=$dmech xl migrate -s '' "$g" 'xl migrate-receive' \
			>"/tmp/$g.op" 2>&1
		rc=$?
		t2=$(now_ms)
		info "$tag: xl migrate took $((t2 - t1)) ms (exit $rc)"
		if [ "$rc" != 0 ]; then
			sed 's/^/INFO xl: /' "/tmp/$g.op"
			fail_xen "$tag: xl migrate to localhost" "exit $rc: $(xl_errors "/tmp/$g.op")"
			rec_cleanup "$g"
			return 0
		fi
		pass "$tag: xl migrate to localhost"
	else
		rm -f "/root/$g.save"
		xl save "$g" "/root/$g.save" >"/tmp/$g.op" 2>&1
		rc=$?
		t2=$(now_ms)
		info "$tag: xl save took $((t2 - t1)) ms (exit $rc)," \
			"$(($(wc -c <"/root/$g.save" 2>/dev/null || echo 0) / 1048576)) MiB"
		if [ "$rc" != 0 ]; then
			sed 's/^/INFO xl: /' "/tmp/$g.op"
			fail_xen "$tag: xl save" "exit $rc: $(xl_errors "/tmp/$g.op")"
			rec_cleanup "$g"
			return 0
		fi
		pass "$tag: xl save"
		wait_for 30 domain_gone "$g" || true
		wait_for 20 no_workers || true
		check "$tag: saved: domain gone" domain_gone "$g"
		check "$tag: saved: no worker left" no_workers
		check "$tag: saved: no backend left" "$nobe"
		check "$tag: saved: no FUSE server left" no_nbdfuse
		check "$tag: saved: no loop or nbd device left" no_blockdev
		t3=$(now_ms)
		BLKSTACK_DEVICE=$dmech xl restore "/root/$g.save" >"/tmp/$g.op2" 2>&1
		rc=$?
		t4=$(now_ms)
		rm -f "/root/$g.save"
		info "$tag: xl restore took $((t4 - t3)) ms (exit $rc)"
		if [ "$rc" != 0 ]; then
			sed 's/^/INFO xl: /' "/tmp/$g.op2"
			fail_xen "$tag: xl restore" "exit $rc: $(xl_errors "/tmp/$g.op2")"
			rec_cleanup "$g"
			return 0
		fi
		pass "$tag: xl restore"
	fi
	domid2=$(xl domid "$g" 2>/dev/null || echo none)
	info "$tag: domid $domid before, $domid2 after"
	check "$tag: the guest runs on a new domid" \
		sh -c "[ '$domid2' != none ] && [ '$domid2' != '$domid' ]"
	check "$tag: the guest is running, not paused or suspended" running "$g"
	if [ "$mech" = ring ]; then
		check "$tag: the new domain's disk is its ring, Connected" \
			wait_for 60 be_state_is "/local/domain/0/backend/vbd3/$domid2/$XVDA" 4
		_rw=$(xenstore-read "/local/domain/0/backend/vbd3/$domid2/$XVDA/blkstack-worker" 2>/dev/null || echo none)
		"$CTL" info --name "$_rw" --json >"/tmp/$g.info" 2>&1 || true
		check "$tag: the new domain's worker serves the ring" \
			grep -q '"blkif":"connected"' "/tmp/$g.info"
		check "$tag: no dom0 block device" no_blockdev
	fi
	check "$tag: the old domain $domid is gone" not xl list "$domid"
	wait_for 30 sh -c "! xenstore-exists /local/domain/0/backend/$bedir/$domid" || true
	check "$tag: the old domain's backend is gone" \
		not xenstore-exists "/local/domain/0/backend/$bedir/$domid"
	wait_for 30 sh -c "[ \"\$($CTL list 2>/dev/null | grep -c .)\" = 1 ]" || true
	check "$tag: exactly one worker once the old domain is gone" \
		sh -c "[ \"\$($CTL list 2>/dev/null | grep -c .)\" = 1 ] && [ $(procs blkstack-worker | grep -c .) = 1 ]"
	info "$tag: workers: $("$CTL" list 2>&1 | tr '\n' ' ')"
	post=$(last_ack "$g")
	wait_for 90 acks_or_gone "$g" $((post + 10)) || true
	if acks_beyond "$g" $((post + 10)); then
		pass "$tag: the guest keeps writing on the new domain"
	else
		fail_xen "$tag: the guest keeps writing on the new domain" \
			"no ack beyond $post (last $(last_ack "$g")); console: $(tr -d '\r' <"$CONS/guest-$g.log" | tail -n 4 | tr '\n' '|')"
	fi

	t5=$(now_ms)
	xl shutdown "$g" >"/tmp/$g.shutdown" 2>&1 || true
	if wait_for 90 domain_gone "$g"; then
		pass "$tag: guest shut down, domain gone"
	else
		fail_xen "$tag: guest shut down" "still there after 90s: $(xl list "$g" 2>&1 | tail -n 1); destroying"
		xl destroy "$g" >/dev/null 2>&1 || true
		wait_for 30 domain_gone "$g" || true
	fi
	acked=$(last_ack "$g")
	bks-records check "$img" "$REC_BASE" "$pre" >"/tmp/$g.records" 2>&1
	r=$(cat "/tmp/$g.records")
	info "$tag: records in the image: $r; last acknowledged on the console: $acked"
	kv() { echo "$r" | tr ' ' '\n' | sed -n "s/^$1=//p"; }
	last=$(kv last)
	check "$tag: one run of the writer in the image (the guest did not restart)" \
		[ "$(kv other_run)" = 0 ]
	check "$tag: no acknowledged record lost (records 0..$acked contiguous in the image)" \
		sh -c "[ '$(kv bad)' = 0 ] && [ '$(kv after_hole)' = 0 ] && [ '${last:--1}' -ge '$acked' ] && [ '$acked' -ge 0 ]"
	check "$tag: records written after the $mode are in the image" \
		sh -c "[ '${last:--1}' -gt '$((post + 10))' ]"
	info "$tag: guest-visible blackout: $(kv from_gap_ms) ms (largest gap between" \
		"records after $pre, at record $(kv from_gap_at); mean interval $(kv mean_ms) ms);" \
		"$mode wall time $((t2 - t1)) ms"
	info "$tag: clock check: the guest's records span $(kv from_span_ms) ms from" \
		"record $pre to the last; dom0 saw $((t5 - t1)) ms from then to xl shutdown;" \
		"largest step back in the guest's clock $(kv back_ms) ms"
	wait_for 20 no_workers || true
	check "$tag: no worker left" no_workers
	check "$tag: no FUSE server left" no_nbdfuse
	check "$tag: no fuse mount left" no_fuse_mount
	check "$tag: no loop or nbd device left" no_blockdev
	check "$tag: no backend left in xenstore" "$nobe"
	check "$tag: no domain left" sh -c "! xl list '$g' && ! xl list '$g--incoming'"
}

# Save/restore and migration of a guest whose disk is its blkif ring
# (issue 17): rec_run's ring mechanism, blkstack-xenbus running.
rec_ring_items() {
	blkstack-xenbus --verbose >/tmp/xenbus-rec.out 2>/tmp/xenbus-rec.err &
	_rrpid=$!
	check "ring rec: blkstack-xenbus watches backend/vbd3" \
		wait_for 10 grep -q 'watching /local/domain/0/backend/vbd3' /tmp/xenbus-rec.out
	rec_item ring save
	rec_item ring migrate
	sed 's/^/INFO blkstack-xenbus (rec): /' /tmp/xenbus-rec.err | tail -n 24
	kill "$_rrpid"
	check "ring rec: blkstack-xenbus exits 0 on SIGTERM" wait "$_rrpid"
}

# rec_item MECH MODE: rec_run.  A PVH guest under TCG now and then
# triple-faults (xl dmesg: "Triple fault"), which is no fault of blkstack's:
# when the first attempt failed and Xen logged one, its lines are kept as
# INFO ("attempt 1: ...") and the item runs once more, the second attempt's
# result counting.  Any other failure counts at once.
rec_item() {
	xl dmesg -c >/dev/null 2>&1 || true
	rec_run "$1" "$2" >/tmp/rec-item.out 2>&1
	if grep -q '^FAIL ' /tmp/rec-item.out &&
		xl dmesg 2>/dev/null | grep -qi 'triple fault'; then
		sed 's/^/INFO attempt 1: /' /tmp/rec-item.out
		info "$2 $1: attempt 1 failed and the guest TRIPLE-FAULTED" \
			"(xl dmesg: $(xl dmesg | grep -i 'triple fault' | tr '\n' '|'));" \
			"TCG, not blkstack: running the item once more"
		xl dmesg -c >/dev/null 2>&1 || true
		rec_run "$1" "$2"
	else
		cat /tmp/rec-item.out
	fi
}

# ---- item 7: image formats (issue 14) ---------------------------------------
# A PV guest on a qcow2 overlay over a raw base (target=qcow2:..., kernel
# NBD), and one on a differencing VHD (blkstack-img create -b) over a
# dynamic VHD base (qemu-img), target=vhd:..., on the loop fallback; both
# at once (they take as long as one).  The guest reads dom0's pattern (in the base) through the overlay, writes
# records (bks-records, as in item 6), and at shutdown reads them back from
# its disk (guest-init's bks_readback).  dom0 then checks the overlay
# (qemu-img check, or blkstack-img check), reads the records out of it
# (qemu-img convert; for VHD, which qemu-img cannot read when
# differencing, a dom0 device on a fresh worker through xs-toolstack's
# localattach), and that the base is unchanged.
FMT_REC_MB=32

# fmt_judge RESULT ACKED: bks-records check's RESULT line holds every
# acknowledged record (0..ACKED, at least 20 of them), from one writer
# run, none torn; says what it found when not.
fmt_judge() {
	_last=$(echo "$1" | tr ' ' '\n' | sed -n 's/^last=//p')
	_bad=$(echo "$1" | tr ' ' '\n' | sed -n 's/^bad=//p')
	_hole=$(echo "$1" | tr ' ' '\n' | sed -n 's/^after_hole=//p')
	_other=$(echo "$1" | tr ' ' '\n' | sed -n 's/^other_run=//p')
	[ "${_bad:-x}" = 0 ] && [ "${_hole:-x}" = 0 ] && [ "${_other:-x}" = 0 ] &&
		[ "${_last:--1}" -ge "$2" ] && [ "$2" -ge 20 ] && return 0
	echo "found: ${1:-nothing}; acknowledged: 0..$2"
	return 1
}
# fmt_records TAG WHERE: bks-records check of WHERE (a file or a device),
# shown as INFO; sets recs.
fmt_records() {
	recs=$(bks-records check "$2" "$REC_BASE" 0 2>&1)
	info "$1: records in $2: $recs"
}

# fmt_vars FORMAT MECH: g, tag, img, base of that guest.
fmt_vars() {
	f=$1
	mech=$2
	g=fmt-$f
	tag="$f $mech"
	if [ "$f" = qcow2 ]; then
		base=$IMGS/fmt-$f-base.raw
		img=$IMGS/fmt-vm.qcow2
	else
		base=$IMGS/fmt-base.vhd
		img=$IMGS/fmt-vm.vhd
	fi
}

# fmt_up FORMAT MECH: FORMAT qcow2 (overlay over raw) or vhd
# (differencing over dynamic), on the dom0 device mechanism MECH: make
# the images and create the guest (/tmp/fmt-FORMAT.up says it is up, and
# .sum holds the base's sha256).  Both guests run at once: fmt_down
# then waits for each.
fmt_up() {
	fmt_vars "$1" "$2"
	rm -f "/tmp/$g.up"
	base_raw=$IMGS/fmt-$f-base.raw
	truncate -s "${FMT_REC_MB}M" "$base_raw"
	printf 'blkstack-dom0-pattern' | dd of="$base_raw" conv=notrunc 2>/dev/null
	if [ "$f" = qcow2 ]; then
		qemu-img create -q -f qcow2 -b "$base" -F raw "$img" >"/tmp/$g.mk" 2>&1
	else
		qemu-img convert -f raw -O vpc -o subformat=dynamic,force_size=on \
			"$base_raw" "$base" >"/tmp/$g.mk" 2>&1 &&
			rm -f "$base_raw" &&
			blkstack-img create -f vhd -b "$base" -F vhd "$img" >>"/tmp/$g.mk" 2>&1
	fi
	rc=$?
	if [ "$rc" != 0 ]; then
		fail "$tag: make the overlay over its base" "$(tr '\n' ' ' <"/tmp/$g.mk")"
		return 0
	fi
	pass "$tag: overlay made over its base ($(basename "$base"))"
	sha256sum <"$base" >"/tmp/$g.sum"
	cat >"/root/$g.cfg" <<EOC
name = "$g"
type = "pv"
kernel = "/root/guest-vmlinuz"
ramdisk = "/root/guest.cpio.gz"
extra = "console=hvc0 quiet bks_records bks_readback"
memory = 160
vcpus = 1
on_poweroff = "destroy"
on_crash = "destroy"
on_reboot = "destroy"
disk = ['vdev=xvda,script=block-stack,target=$f:$img']
EOC
	now >"/tmp/$g.t0"
	if ! BLKSTACK_DEVICE=$mech xl create "/root/$g.cfg" >"/tmp/$g.create" 2>&1; then
		fail "$tag: xl create with target=$f:$img" "$(xl_errors "/tmp/$g.create")"
		# Only this guest: the other one of item 7 may be running.
		info "$tag: left after failure: $(xl list 2>&1 | tail -n +3 | tr '\n' '|')"
		xl destroy "$g" >/dev/null 2>&1 || true
		wait_for 30 domain_gone "$g" || true
		rm -f "$img" "$base"
		return 0
	fi
	pass "$tag: xl create with target=$f:$img"
	domid=$(xl domid "$g")
	be=/local/domain/0/backend/vbd/$domid/$XVDA
	info "$tag: physical-device-path=$(xenstore-read "$be/physical-device-path" 2>&1)," \
		"worker $(xenstore-read "$be/blkstack-worker" 2>&1)"
	: >"/tmp/$g.up"
}

# fmt_wait FORMAT MECH: wait for the guest fmt_up started to read the base
# and write 20 records, then ask it to shut down (it reads its records
# back first).
fmt_wait() {
	fmt_vars "$1" "$2"
	[ -e "/tmp/$g.up" ] || return 0
	t0=$(cat "/tmp/$g.t0")
	wait_for 150 acks_or_gone "$g" 20 || true
	check "$tag: the guest reads dom0's pattern in the base through the overlay" \
		in_log "$g" "GUEST read-ok"
	if acks_beyond "$g" 20; then
		pass "$tag: guest writes records on the overlay"
		info "$tag: 20 records $(($(now) - t0))s after xl create"
	else
		fail "$tag: guest writes records on the overlay" \
			"last ack $(last_ack "$g"); console: $(tr -d '\r' <"$CONS/guest-$g.log" | tail -n 5 | tr '\n' '|')"
	fi
	now >"/tmp/$g.t1"
	xl shutdown "$g" >/dev/null 2>&1 || true
}

# fmt_gone FORMAT MECH: the guest is gone (destroyed after 90 s).
fmt_gone() {
	fmt_vars "$1" "$2"
	[ -e "/tmp/$g.up" ] || return 0
	if wait_for 90 domain_gone "$g"; then
		info "$tag: shutdown (with the guest's read-back) took $(($(now) - $(cat "/tmp/$g.t1")))s"
	else
		fail "$tag: guest shut down" "still there after 90s; destroying"
		xl destroy "$g" >/dev/null 2>&1 || true
		wait_for 30 domain_gone "$g" || true
	fi
}

# fmt_check FORMAT MECH: with both guests gone, what the guest read back,
# the base, and the overlay as other tools (or a fresh worker) read it.
fmt_check() {
	fmt_vars "$1" "$2"
	[ -e "/tmp/$g.up" ] || return 0
	sum=$(cat "/tmp/$g.sum")
	acked=$(last_ack "$g")
	rb=$(tr -d '\r' <"$CONS/guest-$g.log" | sed -n 's/^GUEST check //p' | tail -n 1)
	info "$tag: the guest's read-back: ${rb:-none}; last acknowledged $acked"
	check "$tag: the guest read every acknowledged record back from its disk" \
		fmt_judge "$rb" "$acked"
	check "$tag: the base is unchanged" [ "$(sha256sum <"$base")" = "$sum" ]
	if [ "$f" = qcow2 ]; then
		check "$tag: qemu-img check of the overlay" qemu-img check -f qcow2 "$img"
		out=$IMGS/fmt-check.raw
		rm -f "$out"
		if qemu-img convert -f qcow2 -O raw "$img" "$out" >/tmp/fmt-convert.out 2>&1; then
			fmt_records "$tag" "$out"
			check "$tag: qemu-img reads every acknowledged record from the overlay" \
				fmt_judge "$recs" "$acked"
			got=$(dd if="$out" bs=512 skip=2048 count=1 2>/dev/null | head -c 22)
			check "$tag: the guest's pattern is in the overlay" \
				[ "$got" = blkstack-guest-pattern ]
		else
			fail "$tag: qemu-img convert of the overlay" "$(tr '\n' ' ' </tmp/fmt-convert.out)"
		fi
		rm -f "$out"
	else
		check "$tag: blkstack-img check of the differencing VHD" blkstack-img check "$img"
		# A dom0 device on a fresh worker of the same target.
		ts() {
			BLKSTACK_DEVICE=loop xs-toolstack --quiet --script "$SCRIPT" \
				--domid 78 --target "vhd:$img" "$@"
		}
		hp=$(ts paths | sed -n 's/^HOTPLUG_PATH=//p' | tr -d "'\"")
		if ts v2-create && ts v2-run version && ts v2-run prepare &&
			ts v2-run localattach >/tmp/fmt-la.out 2>&1; then
			dev=$(xenstore-read "$hp/pdev" 2>/dev/null || echo none)
			fmt_records "$tag" "$dev"
			check "$tag: a fresh worker reads every acknowledged record from the overlay ($dev)" \
				fmt_judge "$recs" "$acked"
			got=$(dd if="$dev" bs=512 skip=2048 count=1 2>/dev/null | head -c 22)
			check "$tag: the guest's pattern is in the overlay" \
				[ "$got" = blkstack-guest-pattern ]
		else
			fail "$tag: localattach of the differencing VHD" "$(tr '\n' ' ' </tmp/fmt-la.out)"
		fi
		ts v2-run localdetach >/dev/null 2>&1 || true
		ts v2-run unprepare >/dev/null 2>&1 || true
		xenstore-rm "${hp%/vbd/*}" 2>/dev/null || true
		check "$tag: the base is unchanged after the read-back" \
			[ "$(sha256sum <"$base")" = "$sum" ]
	fi
	rm -f "$img" "$base"
}

# fmt_item: both guests at once (item 7), then the checks.
fmt_item() {
	fmt_up qcow2 nbd
	fmt_up vhd loop
	fmt_wait qcow2 nbd
	fmt_wait vhd loop
	fmt_gone qcow2 nbd
	fmt_gone vhd loop
	wait_for 20 no_workers || true
	check "formats: both guests gone: no worker left" no_workers
	check "formats: no FUSE server left" no_nbdfuse
	check "formats: no loop or nbd device left" no_blockdev
	check "formats: no backend left in xenstore" no_backends
	fmt_check qcow2 nbd
	fmt_check vhd loop
	wait_for 20 no_workers || true
	check "formats: after the read-backs: no worker left" no_workers
	check "formats: after the read-backs: no FUSE server left" no_nbdfuse
	check "formats: after the read-backs: no loop or nbd device left" no_blockdev
}

# ---- item 8: live snapshot and commit of a writing guest (issue 15) ---------
# A PV guest on a qcow2 overlay over a raw base (target=qcow2:..., kernel
# NBD) writes records (bks-records, as in items 5-7).  While it writes,
# dom0 takes a snapshot (blkstack-ctl snapshot: a new qcow2 overlay on top,
# the old top read-only), lets it write on the snapshot, then commits the
# snapshot back into the old top (blkstack-ctl commit, the guest writing
# all along), and lets it write again.  The guest must see no I/O error,
# read back every acknowledged record at shutdown, and dom0 must find them
# all in the old top alone (qemu-img convert) with qemu-img check clean;
# the base is unchanged.
LIVE_MB=64

# live_wait G N WHAT: wait (150 s at most) for an ack beyond N.
live_wait() {
	wait_for 150 acks_or_gone "$1" "$2" || true
	if acks_beyond "$1" "$2"; then
		pass "live: the guest writes records $3"
		return 0
	fi
	fail "live: the guest writes records $3" \
		"last ack $(last_ack "$1"); console: $(tr -d '\r' <"$CONS/guest-$1.log" | tail -n 5 | tr '\n' '|')"
	return 1
}

# live_json FILE KEY: KEY's number in a one-line JSON reply.
live_json() { sed -n "s/.*\"$2\":\([0-9][0-9]*\).*/\1/p" "$1" | head -n 1; }

live_item() {
	g=live
	base=$IMGS/live-base.raw
	img=$IMGS/live-vm.qcow2
	snap=$IMGS/live-snap.qcow2
	rm -f "$base" "$img" "$snap"
	truncate -s "${LIVE_MB}M" "$base"
	printf 'blkstack-dom0-pattern' | dd of="$base" conv=notrunc 2>/dev/null
	if ! qemu-img create -q -f qcow2 -b "$base" -F raw "$img" >/tmp/live.mk 2>&1; then
		fail "live: make the overlay" "$(tr '\n' ' ' </tmp/live.mk)"
		return 0
	fi
	sum=$(sha256sum <"$base")
	cat >"/root/$g.cfg" <<EOC
name = "$g"
type = "pv"
kernel = "/root/guest-vmlinuz"
ramdisk = "/root/guest.cpio.gz"
extra = "console=hvc0 quiet bks_records bks_readback"
memory = 160
vcpus = 1
on_poweroff = "destroy"
on_crash = "destroy"
on_reboot = "destroy"
disk = ['vdev=xvda,script=block-stack,target=qcow2:$img']
EOC
	if ! BLKSTACK_DEVICE=nbd xl create "/root/$g.cfg" >/tmp/live.create 2>&1; then
		fail "live: xl create with target=qcow2:$img" "$(xl_errors /tmp/live.create)"
		cleanup_after "$g"
		return 0
	fi
	pass "live: xl create with target=qcow2:$img"
	domid=$(xl domid "$g")
	w=$(xenstore-read "/local/domain/0/backend/vbd/$domid/$XVDA/blkstack-worker" 2>/dev/null)
	info "live: worker ${w:-none}"
	if ! live_wait "$g" 20 "before the snapshot"; then
		cleanup_after "$g"
		return 0
	fi
	a0=$(last_ack "$g")
	"$CTL" snapshot --name "$w" --overlay "$snap" --json >/tmp/live.snap 2>&1
	info "live: snapshot at record $a0: $(cat /tmp/live.snap)"
	check "live: blkstack-ctl snapshot of the running guest's disk" \
		grep -q '"ok":true' /tmp/live.snap
	info "live: the snapshot held the guest's I/O $(live_json /tmp/live.snap held_us) us"
	check "live: the chain is the snapshot over the old top" \
		sh -c "'$CTL' info --name '$w' --json | grep -q 'qcow2:$snap'"
	a1=$(last_ack "$g")
	live_wait "$g" $((a1 + 20)) "on the snapshot"
	a2=$(last_ack "$g")
	t0=$(now)
	"$CTL" commit --name "$w" --json >/tmp/live.commit 2>&1
	info "live: commit from record $a2 on, $(($(now) - t0))s: $(cat /tmp/live.commit)"
	check "live: blkstack-ctl commit of the snapshot into the old top, the guest writing" \
		grep -q '"ok":true' /tmp/live.commit
	"$CTL" info --name "$w" --json >/tmp/live.info 2>&1
	info "live: after the commit: $(cut -c1-400 /tmp/live.info)"
	check "live: the chain is the old top alone again" \
		grep -q "\"chain\":\"qcow2:$img\"" /tmp/live.info
	a3=$(last_ack "$g")
	live_wait "$g" $((a3 + 20)) "after the commit"
	t1=$(now)
	xl shutdown "$g" >/dev/null 2>&1 || true
	if wait_for 90 domain_gone "$g"; then
		info "live: shutdown (with the guest's read-back) took $(($(now) - t1))s"
	else
		fail "live: guest shut down" "still there after 90s; destroying"
		xl destroy "$g" >/dev/null 2>&1 || true
		wait_for 30 domain_gone "$g" || true
	fi
	check "live: no I/O error in the guest across snapshot and commit" no_io_errors "$g"
	acked=$(last_ack "$g")
	rb=$(tr -d '\r' <"$CONS/guest-$g.log" | sed -n 's/^GUEST check //p' | tail -n 1)
	info "live: the guest's read-back: ${rb:-none}; last acknowledged $acked"
	check "live: the guest read every acknowledged record back from its disk" \
		fmt_judge "$rb" "$acked"
	wait_for 20 no_workers || true
	check "live: guest gone: no worker left" no_workers
	check "live: no loop or nbd device left" no_blockdev
	check "live: the base is unchanged" [ "$(sha256sum <"$base")" = "$sum" ]
	check "live: qemu-img check of the old top" qemu-img check -f qcow2 "$img"
	out=$IMGS/live-check.raw
	rm -f "$out"
	if qemu-img convert -f qcow2 -O raw "$img" "$out" >/tmp/live-convert.out 2>&1; then
		fmt_records live "$out"
		check "live: qemu-img reads every acknowledged record from the old top (the snapshot merged into it)" \
			fmt_judge "$recs" "$acked"
	else
		fail "live: qemu-img convert of the old top" "$(tr '\n' ' ' </tmp/live-convert.out)"
	fi
	rm -f "$out" "$img" "$snap" "$base"
}

echo "XENTEST start $(now)s"
# xentest_only=rec, =kill, =fmt, =live or =ring on dom0's command line
# (tests/xen/run: XEN_ONLY=rec|kill|fmt|live|ring): only the migration and
# save/restore items, only item 5, only item 7 (formats), only item 8
# (live snapshot and commit), or only item 2b (the blkif ring, Xen 4.19+,
# with its save/restore and migration),
# for working on them.
only=$(sed -n 's/.*xentest_only=\([a-z]*\).*/\1/p' /proc/cmdline)
# Every command this script relies on is in dom0 (busybox lacks some, e.g.
# pgrep; a missing one must not make a check pass).
missing=''
for c in xl xenstore-read xenstore-write xenstore-ls xenstore-exists \
	xenstore-rm xs-toolstack bks-records "$CTL" mke2fs losetup mount \
	modprobe dmesg awk sed grep tr cut head tail sort wc find ps dd \
	truncate kill sleep qemu-img blkstack-img sha256sum nbdkit; do
	command -v "$c" >/dev/null 2>&1 || missing="$missing $c"
done
check "dom0 has every command dom0-test.sh uses" sh -c \
	"[ -z '$missing' ] || { echo 'missing:$missing'; exit 1; }"
# blkstack came from its Debian package (build-images: dpkg -x of
# build/deb/blkstack.deb): the programs, the hotplug script and its helper
# where the package puts them, naming the package's version.
package_check() {
	[ -n "$1" ] || { echo "no /etc/blkstack-package-version"; return 1; }
	for _p in blkstack-ctl blkstack-worker blkstack-supervisor blkstack-fuse blkstack-img; do
		_out=$("/usr/sbin/$_p" --version) || return 1
		[ "$_out" = "$_p $1" ] || { echo "$_p says: $_out"; return 1; }
	done
	_out=$(/usr/libexec/blkstack/blkstack-hotplug --version) || return 1
	[ "$_out" = "blkstack-hotplug $1" ] || { echo "hotplug helper says: $_out"; return 1; }
	grep -q "^helperdir='/usr/libexec/blkstack'$" "$SCRIPT" ||
		{ echo "$SCRIPT does not run /usr/libexec/blkstack"; return 1; }
	[ -f /etc/blkstack.conf ] || { echo "no /etc/blkstack.conf"; return 1; }
}
pkgv=$(cat /etc/blkstack-package-version 2>/dev/null)
check "blkstack is the package's, version $pkgv" package_check "$pkgv"
# Xen 4.19 added backendtype=tap; 4.17's xl refuses the word.
if [ "$XEN_VERSION" != 4.17 ] && { [ -z "$only" ] || [ "$only" = ring ]; }; then
	ring_item
	rec_ring_items
fi
if [ -z "$only" ]; then
	guest_run loop
	# The worker's own FUSE file (Debian 12's 6.1 cannot resend FUSE
	# requests, so auto does not pick it here: forced).
	guest_run fuse
fi
if modprobe nbd; then
	info "nbd module loaded"
else
	info "modprobe nbd failed"
fi
if [ -z "$only" ]; then
	guest_run nbd
	guest_run nbd shutdown nbdkit
fi
if [ -z "$only" ] || [ "$only" = kill ]; then
	restart_item
	supervised_item
	loop_kill_item
fi
if [ -z "$only" ]; then
	missing_create
	bootloader_run
	local_attach loop
	local_attach fuse
	local_attach nbd
else
	info "xentest_only=$only: the other items skipped"
fi
if [ -z "$only" ] || [ "$only" = fmt ]; then
	fmt_item
fi
if [ -z "$only" ] || [ "$only" = live ]; then
	live_item
fi
if [ -z "$only" ] || [ "$only" = rec ]; then
	rec_item loop migrate
	rec_item nbd migrate
	rec_item loop save
	rec_item nbd save
fi
echo "XENTEST done $(now)s"
