#!/usr/bin/env bats
# The hotplug script on a vbd3 disk (libxl's backendtype=tap,
# docs/libxl-hotplug-interface.txt section 11), run as libxl 4.20 runs it
# (v1: XENBUS_TYPE=vbd3, XENBUS_PATH=backend/vbd3/DOMID/DEVID) against a
# real xenstored and real workers: add starts the disk's worker and gives
# dom0 no device; remove takes it all away.

load helpers

DEV=51712

setup() {
	hotplug_setup
}

teardown() {
	local d
	for d in 3 5 6; do
		v3 remove "$d" >/dev/null 2>&1 || true
		"$TOOLSTACK" --quiet --script "$SCRIPT" --domid "$d" v1-detach \
			>/dev/null 2>&1 || true
	done
	hotplug_teardown
}

# be_of DOMID: the absolute backend directory of that domain's disk.
be_of() {
	echo "/local/domain/0/backend/vbd3/$1/$DEV"
}

# name_of DOMID: its worker's name (the records path, '/' as '-').
name_of() {
	echo "backend-vbd3-$1-$DEV"
}

# v3_disk DOMID PARAMS [VM]: the backend and frontend directories of a
# vbd3 disk as libxl 4.20 writes them (section 11), and the domain's vm.
v3_disk() {
	local dom=$1 be fe
	be=$(be_of "$dom")
	fe=/local/domain/$dom/device/vbd/$DEV
	xenstore-write "/local/domain/$dom/vm" \
		"${3:-/vm/0b7d2c3a-0000-4000-8000-00000000000$dom}"
	xenstore-write "$fe/state" 1 "$fe/backend" "$be" "$fe/backend-id" 0 \
		"$fe/virtual-device" "$DEV" "$fe/device-type" disk
	xenstore-write "$be/frontend" "$fe" "$be/frontend-id" "$dom" \
		"$be/online" 1 "$be/removable" 0 "$be/bootable" 1 \
		"$be/state" 1 "$be/dev" xvda "$be/type" vbd3 "$be/mode" w \
		"$be/device-type" disk "$be/discard-enable" 0 \
		"$be/params" "$2" "$be/script" "$SCRIPT"
}

# v3 ACTION [DOMID]: the script as libxl 4.20 runs it for that disk.
v3() {
	env XENBUS_PATH="backend/vbd3/${2:-5}/$DEV" XENBUS_TYPE=vbd3 \
		XENBUS_BASE_PATH=backend script="$SCRIPT" "$SCRIPT" "$1"
}

# serves DOMID SIZE CHAIN: that disk's worker runs the chain, and its NBD
# socket serves SIZE bytes.
serves() {
	local name
	name=$(name_of "$1")
	run "$BIN/blkstack-ctl" --rundir "$BLKSTACK_RUNDIR" info --name "$name"
	assert_success
	assert_line --regexp "^chain: +$(printf '%s' "$3" | sed 's/[|.]/\\&/g')\$"
	run nbdinfo --size "nbd+unix:///?socket=$BLKSTACK_RUNDIR/$name/nbd.sock"
	assert_success
	assert_output "$2"
}

# no_dom0_device: no loop or kernel NBD device, FUSE server or mount of ours.
no_dom0_device() {
	run bash -c "losetup -a | grep -c '$BLKSTACK_RUNDIR'"
	assert_output 0
	run grep -c "$BLKSTACK_RUNDIR" /proc/mounts
	assert_output 0
	run pgrep -f "(nbdfuse|blkstack-fuse).*$BLKSTACK_RUNDIR"
	assert_failure
	local d
	for d in /sys/block/nbd*/pid; do
		[ -e "$d" ] || continue
		run cat "$d"
		assert_failure
	done
}

# refused DOMID TEXT: add failed with hotplug-error TEXT and
# hotplug-status "error", and left nothing: no worker, no records.
refused() {
	local be
	be=$(be_of "$1")
	run xs_read "$be/hotplug-error"
	assert_success
	assert_output --partial "$2"
	run xs_read "$be/hotplug-status"
	assert_output error
	xs_absent "$be/physical-device-path"
	xs_absent "$be/physical-device"
	xs_absent "$be/blkstack-worker"
	run "$BIN/blkstack-ctl" --rundir "$BLKSTACK_RUNDIR" list
	assert_output ""
}

@test "vbd3: add serves the chain from its worker, with physical-device-path and hotplug-status but no dom0 device; remove leaves nothing" {
	local be name
	be=$(be_of 5)
	name=$(name_of 5)
	v3_disk 5 "aio:log:|aio:$IMG"
	run v3 add
	assert_success
	serves 5 67108864 "log:|aio:$IMG"
	run xs_read "$be/blkstack-worker"
	assert_output "$name"
	run xs_read "$be/physical-device-path"
	assert_output "$BLKSTACK_RUNDIR/$name/ctl.sock"
	[ -S "$BLKSTACK_RUNDIR/$name/ctl.sock" ]
	run xs_read "$be/hotplug-status"
	assert_output connected
	xs_absent "$be/physical-device"
	xs_absent "$be/hotplug-error"
	xs_absent "$be/blkstack-dev"
	xs_absent "$be/blkstack-stage"
	no_dom0_device
	run v3 remove
	assert_success
	xs_absent "$be/blkstack-worker"
	xs_absent "$be/blkstack-vm"
	xs_absent "$be/physical-device-path"
	assert_no_leftovers
	run ls -A "$BLKSTACK_RUNDIR"
	assert_output sharing.lock
}

@test "vbd3: a plain path is aio:PATH (format=raw) or vhd:PATH (format=vhd)" {
	local size
	v3_disk 5 "aio:$IMG"
	run v3 add 5
	assert_success
	serves 5 67108864 "aio:$IMG"
	run "$BIN/blkstack-img" create -f vhd "$IMG_DIR/d.vhd" 32M
	assert_success
	v3_disk 6 "vhd:$IMG_DIR/d.vhd"
	run v3 add 6
	assert_success
	# A VHD's size is its CHS geometry's: what blkstack-img says it is.
	size=$("$BIN/blkstack-img" info --json "$IMG_DIR/d.vhd" |
		sed -n 's/.*"virtual-size":\([0-9]*\).*/\1/p')
	[ "$size" -ge 33554432 ]
	serves 6 "$size" "vhd:$IMG_DIR/d.vhd"
	no_dom0_device
	run v3 remove 5
	assert_success
	run v3 remove 6
	assert_success
	assert_no_leftovers
}

@test "vbd3: add twice is one worker and the same records; remove twice succeeds" {
	local be pid
	be=$(be_of 5)
	v3_disk 5 "aio:log:|aio:$IMG"
	run v3 add
	assert_success
	pid=$(cat "$BLKSTACK_RUNDIR/$(name_of 5)/pid")
	run v3 add
	assert_success
	assert_equal "$(cat "$BLKSTACK_RUNDIR/$(name_of 5)/pid")" "$pid"
	run "$BIN/blkstack-ctl" --rundir "$BLKSTACK_RUNDIR" list
	assert_equal "${#lines[@]}" 1
	assert_output --partial "name=$(name_of 5) pid=$pid "
	run xs_read "$be/hotplug-status"
	assert_output connected
	serves 5 67108864 "log:|aio:$IMG"
	run v3 remove
	assert_success
	run v3 remove
	assert_success
	assert_no_leftovers
}

@test "vbd3: bad params are refused with hotplug-error, exit 1, no worker; remove then succeeds" {
	v3_disk 5 "qcow:$IMG"
	run v3 add
	assert_failure 1
	refused 5 "vbd3 params has FORMAT 'qcow': libxl writes aio (format=raw) or vhd (format=vhd)"
	run v3 remove
	assert_success
	assert_no_leftovers

	v3_disk 5 "aio:nosuch:|aio:$IMG"
	run v3 add
	assert_failure 1
	refused 5 "unknown driver 'nosuch'"
	run v3 remove
	assert_success
	assert_no_leftovers

	v3_disk 5 "aio:log:|"
	run v3 add
	assert_failure 1
	refused 5 "chain:"
	run v3 remove
	assert_success
	assert_no_leftovers

	v3_disk 5 "aio:$IMG_DIR/missing.img"
	run v3 add
	assert_failure 1
	refused 5 "missing.img"
	run v3 remove
	assert_success
	assert_no_leftovers
}

# nbd_of DOMID: the NBD URI of that disk's worker.
nbd_of() {
	echo "nbd+unix:///?socket=$BLKSTACK_RUNDIR/$(name_of "$1")/nbd.sock"
}

# read_only DOMID yes|no: what that disk's worker's info says.
read_only() {
	run "$BIN/blkstack-ctl" --rundir "$BLKSTACK_RUNDIR" info \
		--name "$(name_of "$1")"
	assert_success
	assert_line --regexp "^read-only: +$2\$"
}

@test "vbd3: a disk of mode r gets a read-only worker: info says so, its NBD export refuses writes; mode w gets a read-write one" {
	local sum
	v3_disk 5 "aio:$IMG"
	xenstore-write "$(be_of 5)/mode" r
	sum=$(md5sum <"$IMG")
	run v3 add
	assert_success
	serves 5 67108864 "aio:$IMG"
	read_only 5 yes
	run nbdinfo --is readonly "$(nbd_of 5)"
	assert_success
	run timeout 60 qemu-io -f raw -c 'write -P 0x5a 0 4k' "$(nbd_of 5)"
	assert_failure
	run timeout 60 qemu-io -r -f raw -c 'read 0 4k' "$(nbd_of 5)"
	assert_success
	[ "$(md5sum <"$IMG")" = "$sum" ]
	run xs_read "$(be_of 5)/hotplug-status"
	assert_output connected
	run v3 remove
	assert_success
	assert_no_leftovers

	xenstore-write "$(be_of 5)/mode" w
	run v3 add
	assert_success
	read_only 5 no
	run nbdinfo --is readonly "$(nbd_of 5)"
	assert_failure
	run v3 remove
	assert_success
	assert_no_leftovers
}

@test "vbd3: two VMs' mode r disks share an image read-only; a third VM's mode w disk is refused" {
	v3_disk 5 "aio:$IMG"
	xenstore-write "$(be_of 5)/mode" r
	v3_disk 6 "aio:$IMG"
	xenstore-write "$(be_of 6)/mode" r
	run v3 add 5
	assert_success
	run v3 add 6
	assert_success
	read_only 5 yes
	read_only 6 yes
	v3_disk 3 "aio:$IMG"
	run v3 add 3
	assert_failure 1
	run xs_read "$(be_of 3)/hotplug-error"
	assert_output --partial "is in use read-only by domain"
	xs_absent "$(be_of 3)/blkstack-worker"
	serves 5 67108864 "aio:$IMG"
	serves 6 67108864 "aio:$IMG"
	run v3 remove 3
	assert_success
	run v3 remove 6
	assert_success
	run v3 remove 5
	assert_success
	assert_no_leftovers
}

@test "vbd3: a mode other than r or w is refused with hotplug-error, exit 1, no worker; remove then succeeds" {
	local m
	for m in ro rw R x ""; do
		v3_disk 5 "aio:$IMG"
		xenstore-write "$(be_of 5)/mode" "$m"
		run v3 add
		assert_failure 1
		refused 5 "/mode '$m' is not r (read-only) or w (read-write)"
		run v3 remove
		assert_success
		assert_no_leftovers
		xenstore-rm "$(be_of 5)/hotplug-error" "$(be_of 5)/hotplug-status"
	done
	# None at all is w, as blkstack-xenbus reads it.
	v3_disk 5 "aio:$IMG"
	xenstore-rm "$(be_of 5)/mode"
	run v3 add
	assert_success
	read_only 5 no
	run v3 remove
	assert_success
	assert_no_leftovers
}

@test "vbd3: after a failed add, a good one clears hotplug-error; remove works when the worker is dead" {
	local be pid sup _
	be=$(be_of 5)
	v3_disk 5 "aio:$IMG_DIR/missing.img"
	run v3 add
	assert_failure 1
	xenstore-write "$be/params" "aio:log:|aio:$IMG"
	run v3 add
	assert_success
	xs_absent "$be/hotplug-error"
	pid=$(cat "$BLKSTACK_RUNDIR/$(name_of 5)/pid")
	# Its supervisor first, or it would restart the worker.
	sup=
	if [ -e "$BLKSTACK_RUNDIR/$(name_of 5)/supervisor.pid" ]; then
		sup=$(cat "$BLKSTACK_RUNDIR/$(name_of 5)/supervisor.pid")
		kill -KILL "$sup"
	fi
	kill -KILL "$pid"
	for _ in $(seq 100); do
		gone "$pid" && { [ -z "$sup" ] || gone "$sup"; } && break
		sleep 0.05
	done
	gone "$pid"
	run v3 remove
	assert_success
	xs_absent "$be/blkstack-worker"
	assert_no_leftovers
}

@test "vbd3: a disk another VM holds is refused by the sharing rule, vbd3 or vbd; the holder keeps serving" {
	local vbd_name
	v3_disk 5 "aio:log:|aio:$IMG"
	run v3 add 5
	assert_success
	v3_disk 6 "aio:$IMG"
	run v3 add 6
	assert_failure 1
	refused_other() {
		run xs_read "$(be_of 6)/hotplug-error"
		assert_output --partial "in use read-write by domain $1"
		assert_output --partial "not this disk's VM"
		run xs_read "$(be_of 6)/hotplug-status"
		assert_output error
		xs_absent "$(be_of 6)/physical-device-path"
		xs_absent "$(be_of 6)/blkstack-worker"
		run "$BIN/blkstack-ctl" --rundir "$BLKSTACK_RUNDIR" list
		assert_equal "${#lines[@]}" 1
		assert_output --partial "name=$2 "
	}
	refused_other 5 "$(name_of 5)"
	serves 5 67108864 "log:|aio:$IMG"
	run v3 remove 6
	assert_success
	run v3 remove 5
	assert_success
	assert_no_leftovers

	# A vbd disk (blkback's, through a loop device) of domain 3 holds it.
	run ts --domid 3 --vm /vm/0b7d2c3a-0000-4000-8000-00000000beef v1-attach
	assert_success
	run v3 add 6
	assert_failure 1
	run "$BIN/blkstack-ctl" --rundir "$BLKSTACK_RUNDIR" list
	vbd_name=$(printf '%s\n' "$output" | sed -n 's/^name=\([^ ]*\) .*/\1/p')
	[ -n "$vbd_name" ]
	refused_other 3 "$vbd_name"
	run v3 remove 6
	assert_success
	run ts --domid 3 v1-detach
	assert_success
	assert_no_leftovers
}

@test "vbd3: remove after libxl removed the backend directory still stops the worker" {
	v3_disk 5 "aio:log:|aio:$IMG"
	run v3 add
	assert_success
	xenstore-rm "$(be_of 5)"
	run v3 remove
	assert_success
	assert_no_leftovers
}

@test "vbd3: v2 add with a vbd3 BACKEND_PATH is refused (v1 only), exit 1; remove and unprepare leave nothing" {
	local hp=/local/domain/0/libxl/hotplug/5/vbd/$DEV be
	be=$(be_of 5)
	v3_disk 5 "aio:log:|aio:$IMG"
	xenstore-write "$hp/params" "log:|aio:$IMG" "$hp/script" "$SCRIPT"
	run env HOTPLUG_PATH="$hp" script="$SCRIPT" "$SCRIPT" prepare
	assert_success
	run env HOTPLUG_PATH="$hp" BACKEND_PATH="$be" script="$SCRIPT" \
		"$SCRIPT" add
	assert_failure 1
	run xs_read "$hp/hotplug-error"
	assert_output --partial "is a vbd3 backend (backendtype=tap): blkstack serves vbd3 disks through the v1 interface only"
	xs_absent "$be/physical-device"
	xs_absent "$be/physical-device-path"
	run env HOTPLUG_PATH="$hp" BACKEND_PATH="$be" script="$SCRIPT" \
		"$SCRIPT" remove
	assert_success
	run env HOTPLUG_PATH="$hp" script="$SCRIPT" "$SCRIPT" unprepare
	assert_success
	assert_no_leftovers
}
