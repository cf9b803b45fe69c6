#!/bin/sh
# dom0-test.sh: runs in dom0 of the QEMU-booted Xen host (tests/xen/run),
# from /init once xenstored, xen-init-dom0 and xenconsoled are up.  One
# line per check on the console: "PASS <item>" or "FAIL <item> (why)";
# "INFO ..." lines are evidence.  Items are described in tests/xen/README.md.
# No set -e: a command failing outside a check must not end the run quietly
# (every item reports for itself); tests/xen/run requires "XENTEST done".
set -u
export PATH=/usr/lib/xen-4.17/bin:/usr/sbin:/usr/bin:/sbin:/bin
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

workers() { "$CTL" list 2>/dev/null | grep -c . || true; }
no_workers() { [ "$(workers)" = 0 ]; }
no_nbdfuse() { ! pgrep nbdfuse >/dev/null; }
no_backends() { [ -z "$(xenstore-ls /local/domain/0/backend/vbd 2>/dev/null)" ]; }
no_dom0_vbd() { [ -z "$(xenstore-ls /local/domain/0/backend/vbd/0 2>/dev/null)" ]; }
domain_gone() { ! xl domid "$1" >/dev/null 2>&1; }
in_log() { grep -q "$2" "$CONS/guest-$1.log"; }

# Images live on an ext2 filesystem, not on rootfs: aio: needs O_DIRECT.
mkdir -p "$IMGS"
truncate -s 600M /root/store.ext2
/usr/sbin/mke2fs -q -F -t ext2 /root/store.ext2
mount -o loop /root/store.ext2 "$IMGS"

guest_cfg() {
	# guest_cfg NAME IMAGE
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
disk = ['vdev=xvda,script=block-stack,target=log:|aio:$2']
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
	g=g-$mech-$mode
	tag=$mech
	[ "$mode" = kill ] && tag=$mech-kill
	img=$IMGS/disk-$mech-$mode.img
	truncate -s 64M "$img"
	printf 'blkstack-dom0-pattern' | dd of="$img" conv=notrunc 2>/dev/null
	guest_cfg "$g" "$img"
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

	if [ "$mode" = kill ]; then
		kill_test "$g" "$domid" "$w"
		return 0
	fi
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
	check "$tag: no nbdfuse left" no_nbdfuse
	check "$tag: no backend left in xenstore" no_backends
	info "$tag: losetup -a: $(losetup -a 2>&1 | tr '\n' ' ')"
	info "$tag: /run/blkstack: $(find /run/blkstack 2>&1 | tr '\n' ' ')"
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

	# A missing image under block-attach: libxl does not run remove.
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
	check "$mech: missing image: block-attach leaves no nbdfuse" no_nbdfuse
	if BLKSTACK_DEVICE=$mech xl block-detach "$g" xvdc >/tmp/detach-missing.out 2>&1; then
		info "$mech: xl block-detach of the failed xvdc: ok"
	else
		info "$mech: xl block-detach of the failed xvdc: $(tail -n 3 /tmp/detach-missing.out | tr '\n' '|')"
	fi
	info "$mech: backend xvdc after block-detach: $(xenstore-ls "$be3" 2>&1 | tr '\n' ' ' | cut -c1-200)"
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
	check "missing image: no nbdfuse left" no_nbdfuse
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
	check "boot: no nbdfuse left" no_nbdfuse
	check "boot: no backend left" no_backends
}

# ---- item 5: kill -9 the worker under guest I/O (nbd) -----------------------
kill_test() {
	g=$1
	domid=$2
	w=$3
	pid=$(cat "/run/blkstack/$w/pid" 2>/dev/null ||
		pgrep -f "blkstack-worker.*$w" | head -n 1 || true)
	info "kill: worker $w pid ${pid:-unknown}"
	info "kill: rundir: $(find "/run/blkstack/$w" 2>&1 | tr '\n' ' ')"
	[ -n "$pid" ] || { fail "kill: worker pid" "not found"; return 0; }
	kill -9 "$pid"
	sleep 5
	info "kill: dom0 dmesg: $(dmesg | tail -n 8 | tr '\n' '|')"
	info "kill: guest console: $(tail -n 5 "$CONS/guest-$g.log" | tr '\n' '|')"
	t1=$(now)
	xl destroy "$g" >/tmp/kill.destroy 2>&1 &
	dpid=$!
	if wait_for 60 domain_gone "$g"; then
		pass "kill: xl destroy after the worker died"
		info "kill: destroy took $(($(now) - t1))s"
	else
		fail "kill: xl destroy after the worker died" "domain still there after 60s"
	fi
	# xl destroy may itself be stuck (that is the failure above): do not
	# wait for it for ever.
	if wait_for 30 sh -c "! kill -0 $dpid"; then
		wait "$dpid" 2>/dev/null || true
	else
		info "kill: xl destroy still running after 90s; processes in D state:" \
			"$(ps -o pid,stat,args 2>/dev/null | awk '$2 ~ /D/' | tr '\n' '|')"
	fi
	info "kill: xl destroy said: $(tail -n 4 /tmp/kill.destroy | tr '\n' '|')"
	info "kill: workers left: $(workers); nbd devices with pid: $(grep -l . /sys/block/nbd*/pid 2>/dev/null | tr '\n' ' ')"
	info "kill: /run/blkstack: $(find /run/blkstack 2>&1 | tr '\n' ' ')"
	check "kill: no worker left" no_workers
	check "kill: nbd device released" sh -c '! grep -l . /sys/block/nbd*/pid 2>/dev/null'
	info "kill: guest saw: $(grep -c 'GUEST io-error' "$CONS/guest-$g.log") io-error lines"
	check "kill: no backend left" no_backends
}

echo "XENTEST start $(now)s"
guest_run loop
if modprobe nbd; then
	info "nbd module loaded"
else
	info "modprobe nbd failed"
fi
guest_run nbd
guest_run nbd kill
missing_create
bootloader_run
local_attach loop
local_attach nbd
echo "XENTEST done $(now)s"
