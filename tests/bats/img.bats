#!/usr/bin/env bats
# blkstack-img against qemu-img: images blkstack-img creates are accepted
# by qemu-img info/check, images qemu-img (and qemu-io) makes are read
# alike by blkstack-img info/check/map; check finds the leaks and
# corruptions injected into qemu-img-made images (python3 writes the
# bytes), and --repair fixes leaks so that qemu-img check is clean after.
# map runs the worker's drivers in-process (libblkstack block status);
# the qcow2 cases need the qcow2: driver (branch qcow2) and skip, saying
# so, in a build without it.

load helpers

IMG=$TOP/build/bin/blkstack-img

setup() {
	[ -x "$IMG" ] || fail "build/bin/blkstack-img is not built"
	command -v qemu-img >/dev/null || skip "qemu-img is not installed"
	command -v qemu-io >/dev/null || skip "qemu-io is not installed"
	img_dir
	D=$IMG_DIR
}

teardown() {
	worker_teardown
}

# True if this build has the qcow2: driver (map and the worker need it).
have_qcow2_driver() {
	grep -q '^BKS_DRIVER(qcow2)' "$TOP/libblkstack/drivers.def"
}

need_qcow2_driver() {
	have_qcow2_driver ||
		skip "no qcow2: driver in this build (branch qcow2 not merged)"
}

# json_get FILE EXPR: print a python expression over the JSON in FILE (d).
json_get() {
	python3 -c 'import json, sys
d = json.load(open(sys.argv[1]))
print(eval(sys.argv[2]))' "$1" "$2"
}

# poke FILE OFFSET HEX: overwrite bytes of FILE at OFFSET.
poke() {
	python3 -c 'import sys
with open(sys.argv[1], "r+b") as f:
    f.seek(int(sys.argv[2], 0))
    f.write(bytes.fromhex(sys.argv[3]))' "$1" "$2" "$3"
}

# be64 FILE OFFSET: a big-endian 64-bit field of FILE, in decimal.
be64() {
	python3 -c 'import struct, sys
with open(sys.argv[1], "rb") as f:
    f.seek(int(sys.argv[2], 0))
    print(struct.unpack(">Q", f.read(8))[0])' "$1" "$2"
}

# same_map A B: two map --output=json lists describe the same disk
# (qemu-img's "offset" dropped, equal neighbours merged).
same_map() {
	python3 -c 'import json, sys
def norm(p):
    out = []
    for e in json.load(open(p)):
        e = {k: e[k] for k in
             ("start", "length", "depth", "present", "zero", "data")}
        if out and out[-1]["start"] + out[-1]["length"] == e["start"] and \
                all(out[-1][k] == e[k] for k in
                    ("depth", "present", "zero", "data")):
            out[-1]["length"] += e["length"]
        else:
            out.append(e)
    return out
a, b = norm(sys.argv[1]), norm(sys.argv[2])
if a != b:
    print("blkstack-img:", a)
    print("qemu-img:    ", b)
    sys.exit(1)' "$1" "$2"
}

# ---- create -----------------------------------------------------------------

@test "img create: raw and qcow2 images qemu-img info and check accept" {
	run -0 "$IMG" create -f raw "$D/r.img" 3M
	run -0 qemu-img info --output=json -f raw "$D/r.img"
	echo "$output" >"$D/r.json"
	[ "$(json_get "$D/r.json" 'd["virtual-size"]')" = 3145728 ]

	run -0 "$IMG" create -q -f qcow2 "$D/a.qcow2" 4M
	[ -z "$output" ]
	run -0 qemu-img check "$D/a.qcow2"
	assert_output --partial 'No errors were found on the image.'
	run -0 qemu-img info --output=json "$D/a.qcow2"
	echo "$output" >"$D/a.json"
	[ "$(json_get "$D/a.json" 'd["virtual-size"]')" = 4194304 ]
	[ "$(json_get "$D/a.json" 'd["cluster-size"]')" = 65536 ]
	[ "$(json_get "$D/a.json" 'd["format-specific"]["data"]["compat"]')" = 1.1 ]

	# Version 2, 512-byte clusters, 1-bit and 64-bit refcounts.
	run -0 "$IMG" create -q -f qcow2 -o compat=0.10,cluster_size=512 \
		"$D/v2.qcow2" 1M
	run -0 qemu-img check "$D/v2.qcow2"
	run -0 qemu-img info --output=json "$D/v2.qcow2"
	echo "$output" >"$D/v2.json"
	[ "$(json_get "$D/v2.json" 'd["format-specific"]["data"]["compat"]')" = 0.10 ]
	[ "$(json_get "$D/v2.json" 'd["cluster-size"]')" = 512 ]
	for bits in 1 64; do
		run -0 "$IMG" create -q -f qcow2 -o refcount_bits=$bits \
			"$D/rc$bits.qcow2" 1G
		run -0 qemu-img check "$D/rc$bits.qcow2"
		run -0 qemu-img info --output=json "$D/rc$bits.qcow2"
		echo "$output" >"$D/rc.json"
		[ "$(json_get "$D/rc.json" 'd["format-specific"]["data"]["refcount-bits"]')" = $bits ]
	done

	# qemu-io writes through them: data lands where it should.
	run -0 qemu-io -f qcow2 -c 'write -P 0x5a 64k 128k' "$D/a.qcow2"
	run -0 qemu-io -f qcow2 -c 'read -P 0x5a 64k 128k' \
		-c 'read -P 0 0 64k' "$D/a.qcow2"
	run -0 qemu-img check "$D/a.qcow2"
}

@test "img create -b: the backing name is stored as given, its size and format found" {
	run -0 "$IMG" create -q -f raw "$D/base.raw" 2M
	# Relative to the new image's directory, not the current one.
	cd "$BATS_TEST_TMPDIR"
	run -0 "$IMG" create -f qcow2 -b base.raw "$D/mid.qcow2"
	assert_output --partial 'backing_file=base.raw backing_fmt=raw'
	run -0 "$IMG" create -q -f qcow2 -b mid.qcow2 -F qcow2 "$D/top.qcow2"
	run -0 qemu-img info --output=json --backing-chain "$D/top.qcow2"
	echo "$output" >"$D/chain.json"
	[ "$(json_get "$D/chain.json" 'len(d)')" = 3 ]
	[ "$(json_get "$D/chain.json" 'd[0]["backing-filename"]')" = mid.qcow2 ]
	[ "$(json_get "$D/chain.json" 'd[0]["backing-filename-format"]')" = qcow2 ]
	[ "$(json_get "$D/chain.json" 'd[1]["backing-filename"]')" = base.raw ]
	[ "$(json_get "$D/chain.json" 'd[1]["backing-filename-format"]')" = raw ]
	[ "$(json_get "$D/chain.json" 'd[0]["virtual-size"]')" = 2097152 ]
	run -0 qemu-img check "$D/top.qcow2"
	# A larger overlay than its backing file is fine; a missing one is not.
	run -0 "$IMG" create -q -f qcow2 -b base.raw "$D/big.qcow2" 8M
	run -0 qemu-img info --output=json "$D/big.qcow2"
	echo "$output" >"$D/big.json"
	[ "$(json_get "$D/big.json" 'd["virtual-size"]')" = 8388608 ]
	run -1 "$IMG" create -f qcow2 -b nothere.qcow2 "$D/x.qcow2"
	assert_output --partial 'nothere.qcow2'
	assert_output --partial 'No such file or directory'
	assert_not_exist "$D/x.qcow2"
}

@test "img create: refusals name what is wrong and leave no file" {
	: >"$D/exists"
	run -1 "$IMG" create -f qcow2 "$D/exists" 1M
	assert_output --partial "$D/exists exists"
	run -1 "$IMG" create -f qcow2 "$D/n.qcow2" 12x
	assert_output --partial 'bad size "12x"'
	run -1 "$IMG" create -f qcow2 "$D/n.qcow2" 1000
	assert_output --partial 'multiple of 512'
	run -1 "$IMG" create -f qcow2 -o cluster_size=3000 "$D/n.qcow2" 1M
	assert_output --partial 'cluster_size 3000'
	run -1 "$IMG" create -f qcow2 -o preallocation=full "$D/n.qcow2" 1M
	assert_output --partial 'unknown option "preallocation"'
	assert_output --partial 'cluster_size, compat'
	run -1 "$IMG" create -f qed "$D/n.qcow2" 1M
	assert_output --partial 'unknown format "qed" (known:'
	run -1 "$IMG" create -f raw -b "$D/exists" "$D/n.raw"
	assert_output --partial 'raw images have no backing file'
	assert_not_exist "$D/n.qcow2"
	assert_not_exist "$D/n.raw"
}

# ---- info -------------------------------------------------------------------

@test "img info: qemu-img-made images read alike (v2, v3, backing, format keys)" {
	qemu-img create -q -f qcow2 -o cluster_size=4096,compat=0.10 \
		"$D/v2.qcow2" 2M
	qemu-img create -q -f qcow2 -o lazy_refcounts=on,refcount_bits=8 \
		-b v2.qcow2 -F qcow2 "$D/v3.qcow2" 6M
	for f in v2 v3; do
		run -0 "$IMG" info --json "$D/$f.qcow2"
		echo "$output" >"$D/b.json"
		run -0 qemu-img info --output=json "$D/$f.qcow2"
		echo "$output" >"$D/q.json"
		for k in virtual-size cluster-size format; do
			[ "$(json_get "$D/b.json" "d[0]['$k']")" = \
				"$(json_get "$D/q.json" "d['$k']")" ] ||
				fail "$f: $k differs"
		done
		for k in compat refcount-bits; do
			[ "$(json_get "$D/b.json" "d[0]['format-specific']['data']['$k']")" = \
				"$(json_get "$D/q.json" "d['format-specific']['data']['$k']")" ] ||
				fail "$f: format-specific $k differs"
		done
	done
	run -0 "$IMG" info --json "$D/v3.qcow2"
	echo "$output" >"$D/b.json"
	[ "$(json_get "$D/b.json" 'd[0]["backing-filename"]')" = v2.qcow2 ]
	[ "$(json_get "$D/b.json" 'd[0]["full-backing-filename"]')" = "$D/v2.qcow2" ]
	[ "$(json_get "$D/b.json" 'd[0]["format-specific"]["data"]["lazy-refcounts"]')" = True ]
	# The text form says the same.
	run -0 "$IMG" info "$D/v3.qcow2"
	assert_line 'file format: qcow2'
	assert_line 'virtual size: 6 MiB (6291456 bytes)'
	assert_line "backing file: v2.qcow2 (actual path: $D/v2.qcow2)"
	assert_line '    refcount-bits: 8'
}

@test "img info --json: the whole chain of 3 (qcow2, qcow2, raw), top first" {
	qemu-img create -q -f raw "$D/base.raw" 4M
	qemu-img create -q -f qcow2 -b base.raw -F raw "$D/mid.qcow2"
	"$IMG" create -q -f qcow2 -b mid.qcow2 "$D/top.qcow2"
	run -0 "$IMG" info --json "$D/top.qcow2"
	echo "$output" >"$D/i.json"
	[ "$(json_get "$D/i.json" 'len(d)')" = 3 ]
	[ "$(json_get "$D/i.json" '[e["format"] for e in d]')" = \
		"['qcow2', 'qcow2', 'raw']" ]
	[ "$(json_get "$D/i.json" 'd[1]["filename"]')" = "$D/mid.qcow2" ]
	[ "$(json_get "$D/i.json" 'd[2]["filename"]')" = "$D/base.raw" ]
	[ "$(json_get "$D/i.json" 'd[1]["backing-filename-format"]')" = raw ]
	[ "$(json_get "$D/i.json" '[e["virtual-size"] for e in d]')" = \
		'[4194304, 4194304, 4194304]' ]
	[ "$(json_get "$D/i.json" '"backing-filename" in d[2]')" = False ]
	run -0 "$IMG" info "$D/top.qcow2"
	[ "$(grep -c '^image: ' <<<"$output")" = 3 ]
}

@test "img info: a backing loop, a missing backing file, hostile headers are errors naming the file" {
	qemu-img create -q -f qcow2 "$D/a.qcow2" 1M
	qemu-img create -q -f qcow2 -b a.qcow2 -F qcow2 "$D/b.qcow2"
	# a's backing name becomes b.qcow2: a -> b -> a.  The name goes at
	# 0x10000 (the image has 64 KiB clusters; the file is longer).
	poke "$D/a.qcow2" 8 0000000000000f00
	poke "$D/a.qcow2" 16 00000007
	printf b.qcow2 | dd of="$D/a.qcow2" bs=1 seek=$((0xf00)) \
		conv=notrunc status=none
	run -1 "$IMG" info "$D/b.qcow2"
	assert_output --partial 'backing chain loops back to'
	assert_output --partial "$D/b.qcow2"

	qemu-img create -q -f qcow2 -b gone.raw -F raw "$D/orphan.qcow2" 1M \
		2>/dev/null || qemu-img create -q -f qcow2 -u -b gone.raw \
		-F raw "$D/orphan.qcow2" 1M
	run -1 "$IMG" info "$D/orphan.qcow2"
	assert_output --regexp "open .*gone.raw: No such file or directory"

	qemu-img create -q -f qcow2 "$D/h.qcow2" 1M
	cp "$D/h.qcow2" "$D/bits.qcow2"
	poke "$D/bits.qcow2" 20 0000001e # cluster_bits 30
	run -1 "$IMG" info "$D/bits.qcow2"
	assert_output --partial "$D/bits.qcow2"
	assert_output --partial 'cluster_bits 30'
	cp "$D/h.qcow2" "$D/l1.qcow2"
	poke "$D/l1.qcow2" 40 0000000100000000 # L1 table at 4 GiB
	run -1 "$IMG" check "$D/l1.qcow2"
	assert_output --partial "$D/l1.qcow2"
	head -c 100 "$D/h.qcow2" >"$D/short.qcow2"
	run -1 "$IMG" info "$D/short.qcow2"
	assert_output --partial "$D/short.qcow2"
}

# ---- check ------------------------------------------------------------------

# Images with data, zero clusters, compressed clusters, v2: clean.
make_varied() {
	qemu-img create -q -f qcow2 -o cluster_size=4096 "$D/v3.qcow2" 4M
	qemu-io -f qcow2 -c 'write -P 0x11 0 64k' -c 'write -z 1M 64k' \
		-c 'write -P 0x22 3M 4k' "$D/v3.qcow2" >/dev/null
	qemu-img create -q -f qcow2 -o compat=0.10,cluster_size=512 \
		"$D/v2.qcow2" 1M
	qemu-io -f qcow2 -c 'write -P 0x33 512 8k' "$D/v2.qcow2" >/dev/null
	qemu-img create -q -f raw "$D/src.raw" 2M
	qemu-io -f raw -c 'write -P 0x44 0 256k' "$D/src.raw" >/dev/null
	qemu-img convert -c -O qcow2 -o cluster_size=4096 "$D/src.raw" \
		"$D/comp.qcow2"
}

@test "img check: qemu-img-made images (data, zero, compressed, v2) are clean, as qemu-img says" {
	make_varied
	for f in v3 v2 comp; do
		run -0 qemu-img check "$D/$f.qcow2"
		run -0 "$IMG" check "$D/$f.qcow2"
		assert_line 'No errors were found on the image.'
		run -0 "$IMG" check --json "$D/$f.qcow2"
		echo "$output" >"$D/c.json"
		run -0 qemu-img check --output=json "$D/$f.qcow2"
		echo "$output" >"$D/q.json"
		for k in allocated-clusters total-clusters corruptions leaks; do
			[ "$(json_get "$D/c.json" "d.get('$k', 0)")" = \
				"$(json_get "$D/q.json" "d.get('$k', 0)")" ] ||
				fail "$f: $k differs"
		done
	done
	run -63 "$IMG" check "$D/src.raw"
	assert_output --partial 'raw images have nothing to check'
}

@test "img check: leaks are found (exit 3) and --repair fixes them: qemu-img check is clean after" {
	make_varied
	# 4 KiB clusters, 16-bit refcounts: the refcount block's offset is
	# the refcount table's first entry.  Raise two unused clusters past
	# the end (extending the file) to refcount 1.
	local rt rb end
	rt=$(be64 "$D/v3.qcow2" 48)
	rb=$(be64 "$D/v3.qcow2" "$rt")
	end=$(($(stat -c %s "$D/v3.qcow2") / 4096))
	poke "$D/v3.qcow2" $((rb + 2 * end)) 0001
	poke "$D/v3.qcow2" $((rb + 2 * (end + 2))) 0001
	truncate -s $(((end + 3) * 4096)) "$D/v3.qcow2"
	cp "$D/v3.qcow2" "$D/before.qcow2"
	run -3 qemu-img check "$D/v3.qcow2"
	run -3 "$IMG" check "$D/v3.qcow2"
	assert_line "Leaked cluster $end refcount=1 reference=0"
	assert_line "Leaked cluster $((end + 2)) refcount=1 reference=0"
	assert_line '2 leaked clusters were found on the image.'
	run -3 "$IMG" check --json "$D/v3.qcow2"
	echo "$output" | grep -v '^Leaked' >"$D/c.json"
	[ "$(json_get "$D/c.json" 'd["leaks"]')" = 2 ]
	cmp "$D/v3.qcow2" "$D/before.qcow2" # check alone writes nothing
	run -0 "$IMG" check --repair "$D/v3.qcow2"
	assert_line '    2 leaked clusters'
	assert_line 'No errors were found on the image.'
	run -0 qemu-img check "$D/v3.qcow2"
	assert_output --partial 'No errors were found on the image.'
	# The guest's data did not move.
	run -0 qemu-img compare -f qcow2 -F qcow2 "$D/v3.qcow2" \
		"$D/before.qcow2"
}

@test "img check: corruptions (refcount 0, past EOF, misaligned, overlap) exit 2, as qemu-img's; --repair leaves them alone" {
	local l1 l2 data
	qemu-img create -q -f qcow2 "$D/base.qcow2" 4M
	qemu-io -f qcow2 -c 'write -P 0x55 0 64k' "$D/base.qcow2" >/dev/null
	l1=$(be64 "$D/base.qcow2" 40)
	l2=$(($(be64 "$D/base.qcow2" "$l1") & 0x00fffffffffffe00))
	data=$(($(be64 "$D/base.qcow2" "$l2") & 0x00fffffffffffe00))
	local rb
	rb=$(be64 "$D/base.qcow2" "$(be64 "$D/base.qcow2" 48)")

	cp "$D/base.qcow2" "$D/ref0.qcow2"
	poke "$D/ref0.qcow2" $((rb + 2 * (data / 65536))) 0000
	cp "$D/base.qcow2" "$D/eof.qcow2"
	poke "$D/eof.qcow2" "$l2" 8000000006400000
	cp "$D/base.qcow2" "$D/align.qcow2"
	poke "$D/align.qcow2" "$l2" "$(printf '%016x' $(((1 << 63) | (data + 4096))))"
	cp "$D/base.qcow2" "$D/overlap.qcow2"
	# Guest cluster 1 mapped onto the L1 table's cluster.
	poke "$D/overlap.qcow2" $((l2 + 8)) "$(printf '%016x' $(((1 << 63) | l1)))"

	run -2 "$IMG" check "$D/ref0.qcow2"
	assert_line "ERROR cluster $((data / 65536)) refcount=0 reference=1"
	run -2 "$IMG" check "$D/eof.qcow2"
	assert_output --partial 'past the end of the file'
	run -2 "$IMG" check "$D/align.qcow2"
	assert_output --partial 'is not cluster-aligned'
	run -2 "$IMG" check "$D/overlap.qcow2"
	assert_line "ERROR cluster $((l1 / 65536)) holds metadata and is referenced 2 times"
	for f in ref0 eof align overlap; do
		run -2 qemu-img check "$D/$f.qcow2"
		run -2 "$IMG" check --json "$D/$f.qcow2"
		echo "$output" | grep -v '^ERROR\|^Leaked' >"$D/c.json"
		[ "$(json_get "$D/c.json" 'd["corruptions"] > 0')" = True ]
		cp "$D/$f.qcow2" "$D/keep.qcow2"
		[ "$f" = ref0 ] && continue # fixable: see the next test
		run -2 "$IMG" check --repair "$D/$f.qcow2"
		assert_output --partial 'Not repaired'
		cmp "$D/$f.qcow2" "$D/keep.qcow2"
	done
}

@test "img check -r all: a crash under lazy refcounts (dirty, refcounts 0) is repaired; qemu-img agrees" {
	qemu-img create -q -f qcow2 -o lazy_refcounts=on "$D/lazy.qcow2" 4M
	# qemu-io's abort leaves the image as a crash does: dirty.
	qemu-io -f qcow2 -c 'write -P 0x66 0 128k' -c abort "$D/lazy.qcow2" \
		>/dev/null 2>&1 || :
	run -0 "$IMG" info "$D/lazy.qcow2"
	assert_line 'dirty flag: yes'
	run -2 "$IMG" check "$D/lazy.qcow2"
	assert_output --partial 'refcount=0 reference=1'
	run -0 "$IMG" check -r all "$D/lazy.qcow2"
	assert_line 'No errors were found on the image.'
	run -0 "$IMG" info "$D/lazy.qcow2"
	refute_line 'dirty flag: yes'
	run -0 qemu-img check "$D/lazy.qcow2"
	run -0 qemu-io -f qcow2 -c 'read -P 0x66 0 128k' "$D/lazy.qcow2"
}

# ---- map --------------------------------------------------------------------

@test "img map: a sparse raw image, as qemu-img map --output=json says" {
	qemu-img create -q -f raw "$D/r.raw" 8M
	qemu-io -f raw -c 'write -P 1 1M 64k' -c 'write -P 2 6M 1M' \
		"$D/r.raw" >/dev/null
	run -0 "$IMG" map --output=json "$D/r.raw"
	echo "$output" >"$D/b.json"
	run -0 qemu-img map --output=json -f raw "$D/r.raw"
	echo "$output" >"$D/q.json"
	run -0 same_map "$D/b.json" "$D/q.json"
	# Every byte is described once.
	[ "$(json_get "$D/b.json" 'sum(e["length"] for e in d)')" = 8388608 ]
	run -0 "$IMG" map "$D/r.raw"
	assert_line --regexp "^0x100000 +0x10000 +$D/r.raw\$"
	assert_line --regexp "^0x600000 +0x100000 +$D/r.raw\$"
}

@test "img map: qcow2 with data, zero clusters, holes and backing data agrees with qemu-img map" {
	need_qcow2_driver
	qemu-img create -q -f raw "$D/base.raw" 4M
	qemu-io -f raw -c 'write -P 1 0 256k' "$D/base.raw" >/dev/null
	qemu-img create -q -f qcow2 -b base.raw -F raw "$D/mid.qcow2"
	qemu-io -f qcow2 -c 'write -P 2 1M 64k' -c 'write -z 128k 64k' \
		"$D/mid.qcow2" >/dev/null
	qemu-img create -q -f qcow2 -b mid.qcow2 -F qcow2 "$D/top.qcow2"
	qemu-io -f qcow2 -c 'write -P 3 2M 128k' -c 'write -z 3M 64k' \
		"$D/top.qcow2" >/dev/null
	for f in top.qcow2 mid.qcow2; do
		run -0 "$IMG" map --output=json "$D/$f"
		echo "$output" >"$D/b.json"
		run -0 qemu-img map --output=json "$D/$f"
		echo "$output" >"$D/q.json"
		run -0 same_map "$D/b.json" "$D/q.json"
	done
	# Without backing: unallocated is "not present", at depth 0.
	qemu-img create -q -f qcow2 -o cluster_size=4096 "$D/alone.qcow2" 2M
	qemu-io -f qcow2 -c 'write -P 4 8k 4k' -c 'write -z 64k 8k' \
		"$D/alone.qcow2" >/dev/null
	run -0 "$IMG" map --output=json "$D/alone.qcow2"
	echo "$output" >"$D/b.json"
	run -0 qemu-img map --output=json "$D/alone.qcow2"
	echo "$output" >"$D/q.json"
	run -0 same_map "$D/b.json" "$D/q.json"
}

@test "img map: the worker's qemu:allocation-depth on a qcow2 chain says where each range lives" {
	need_qcow2_driver
	command -v nbdinfo >/dev/null || skip "nbdinfo is not installed"
	qemu-img create -q -f qcow2 "$D/base.qcow2" 4M
	qemu-io -f qcow2 -c 'write -P 1 0 64k' "$D/base.qcow2" >/dev/null
	qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 "$D/top.qcow2"
	qemu-io -f qcow2 -c 'write -P 2 1M 64k' "$D/top.qcow2" >/dev/null
	worker_start d "qcow2:$D/top.qcow2" --read-only
	run -0 nbdinfo --map=qemu:allocation-depth "$(nbd_uri)"
	assert_line --regexp '^ +0 +65536 +2 +backing depth 2$'
	assert_line --regexp '^ +1048576 +65536 +1 +local$'
	assert_line --regexp '^ +65536 +983040 +0 +absent$'
}

@test "img: an image blkstack-img made, written by the worker's qcow2:, checks clean with both tools and maps alike" {
	need_qcow2_driver
	"$IMG" create -q -f raw "$D/base.raw" 8M
	qemu-io -f raw -c 'write -P 7 0 1M' "$D/base.raw" >/dev/null
	"$IMG" create -q -f qcow2 -o cluster_size=4096 -b base.raw \
		"$D/top.qcow2"
	worker_start w "qcow2:$D/top.qcow2"
	run -0 qemu-io -f raw "$(nbd_uri)" -c 'write -P 8 512k 1M' \
		-c 'write -z 4M 64k' -c 'write -P 9 6M 4k' -c 'flush'
	worker_stop
	# A clean stop leaves no leak (the driver gives back at close the
	# clusters it reserved ahead), for either tool.
	run -0 "$IMG" check "$D/top.qcow2"
	assert_line 'No errors were found on the image.'
	run -0 qemu-img check "$D/top.qcow2"
	run -0 qemu-io -f qcow2 -c 'read -P 7 0 512k' -c 'read -P 8 512k 1M' \
		-c 'read -P 0 4M 64k' -c 'read -P 9 6M 4k' "$D/top.qcow2"
	run -0 "$IMG" map --output=json "$D/top.qcow2"
	echo "$output" >"$D/b.json"
	run -0 qemu-img map --output=json "$D/top.qcow2"
	echo "$output" >"$D/q.json"
	run -0 same_map "$D/b.json" "$D/q.json"
}

@test "img check: after kill -9 of a worker writing a qcow2 image, no corruption; --repair leaves it clean" {
	need_qcow2_driver
	command -v fio >/dev/null || skip "fio is not installed"
	"$IMG" create -q -f qcow2 -o cluster_size=4096 "$D/k.qcow2" 64M
	for round in 1 2 3; do
		worker_start k "qcow2:$D/k.qcow2"
		fio --name=w --ioengine=nbd --uri="$(nbd_uri)" --rw=randwrite \
			--bs=4k --size=64M --iodepth=16 --time_based \
			--runtime=10 >/dev/null 2>&1 &
		local fio=$!
		sleep 0.$((3 + round))
		kill -9 "$WORKER_PID"
		wait "$WORKER_PID" || :
		wait "$fio" || :
		# Leaks are allowed after a crash (exit 3), corruptions not.
		run "$IMG" check "$D/k.qcow2"
		[ "$status" -eq 0 ] || [ "$status" -eq 3 ] ||
			fail "round $round: check exited $status: $output"
		run -0 "$IMG" check --repair "$D/k.qcow2"
		assert_line 'No errors were found on the image.'
		run -0 qemu-img check "$D/k.qcow2"
	done
}
