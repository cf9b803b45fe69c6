/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Unit tests: the qcow2 on-disk format (libblkstack/qcow2-format.c):
 * headers built by bks_qcow2_build() and by the real qemu-img, parsed back;
 * every bad field refused with a message naming it; entry decoding;
 * refcounts of every width.  An image we build is checked by qemu-img
 * check and qemu-img info (when qemu-img is installed).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "blkstack/endian.h"
#include "blkstack/qcow2-format.h"
#include "unit-util.h"

static unsigned char *build(uint64_t size, uint32_t cb, uint32_t version,
			    const char *backing, const char *fmt, size_t *len)
{
	struct bks_qcow2_create c = {
	    .size = size,
	    .cluster_bits = cb,
	    .refcount_order = 4,
	    .version = version,
	    .backing_file = backing,
	    .backing_format = fmt,
	};
	struct bks_error err = {0};
	unsigned char *buf;

	assert_int_equal(bks_qcow2_build(&c, &buf, len, &err), 0);
	return buf;
}

static int parse(const unsigned char *buf, size_t len,
		 struct bks_qcow2_header *h, struct bks_error *err)
{
	return bks_qcow2_header_parse(buf, len, len, h, err);
}

static void test_build_parse(void **state)
{
	struct bks_qcow2_header h;
	struct bks_error err = {0};
	unsigned char *buf;
	size_t len;

	(void)state;
	buf = build(1ull << 30, 16, 3, "base.qcow2", "qcow2", &len);
	assert_int_equal(len, 4 << 16);
	assert_int_equal(parse(buf, len, &h, &err), 0);
	assert_int_equal(h.version, 3);
	assert_int_equal(h.size, 1ull << 30);
	assert_int_equal(h.cluster_bits, 16);
	assert_int_equal(h.refcount_table_offset, 1 << 16);
	assert_int_equal(h.l1_table_offset, 3 << 16);
	assert_int_equal(h.l1_size, 2);
	assert_true(h.has_backing);
	assert_string_equal(h.backing_file, "base.qcow2");
	assert_true(h.has_backing_format);
	assert_string_equal(h.backing_format, "qcow2");
	assert_string_equal(bks_qcow2_feature_name(&h, 0, 0), "dirty bit");
	assert_int_equal(
	    bks_qcow2_check_features(&h, BKS_QCOW2_OPEN_WRITE, &err), 0);
	/* Every metadata cluster counted once, nothing else. */
	for (uint64_t i = 0; i < 8; i++)
		assert_int_equal(
		    bks_qcow2_refcount_get(&h.g, buf + (2 << 16), i),
		    i < 4 ? 1 : 0);
	free(buf);

	/* Version 2, small clusters, a size needing many refcount blocks. */
	buf = build(64ull << 30, 9, 2, NULL, NULL, &len);
	assert_int_equal(parse(buf, len, &h, &err), 0);
	assert_int_equal(h.version, 2);
	assert_int_equal(h.refcount_order, 4);
	assert_false(h.has_backing);
	assert_true(len / 512 > 256); /* more than one refcount block */
	{
		uint64_t rb;

		for (uint64_t i = 0; i * 256 < len / 512; i++) {
			uint64_t e = bks_get_be64(buf + 512 + 8 * i);

			assert_int_equal(
			    bks_qcow2_reftable_decode(&h.g, e, &rb, &err), 0);
			assert_true(rb > 0 && rb < len);
		}
	}
	free(buf);
}

/* Write our image to a file and let qemu-img judge it. */
static void test_build_qemu_img(void **state)
{
	char path[256], base[256], cmd[600];
	unsigned char *buf;
	size_t len;
	FILE *f;

	(void)state;
	if (system("qemu-img --version >/dev/null 2>&1") != 0)
		skip();
	assert_int_equal(unit_tmpfile(base, sizeof(base), 1 << 20), 0);
	buf = build(3ull << 30, 16, 3, base, "raw", &len);
	assert_int_equal(unit_tmpfile(path, sizeof(path), 0), 0);
	f = fopen(path, "wb");
	assert_non_null(f);
	assert_int_equal(fwrite(buf, 1, len, f), len);
	fclose(f);
	snprintf(cmd, sizeof(cmd),
		 "qemu-img check -U -f qcow2 '%s' >/dev/null 2>&1", path);
	assert_int_equal(system(cmd), 0);
	snprintf(cmd, sizeof(cmd),
		 "qemu-img info -U --output=json '%s' 2>/dev/null | "
		 "grep -q '\"virtual-size\": 3221225472'",
		 path);
	assert_int_equal(system(cmd), 0);
	snprintf(cmd, sizeof(cmd),
		 "qemu-img info -U --output=json '%s' 2>/dev/null | "
		 "grep -q '\"backing-filename-format\": \"raw\"'",
		 path);
	assert_int_equal(system(cmd), 0);
	unlink(path);
	unlink(base);
	free(buf);
}

/* Parse the first cluster of a qemu-img-made image. */
static void test_parse_qemu_img(void **state)
{
	static const char *const opts[] = {
	    "compat=0.10",
	    "compat=1.1,cluster_size=4096,refcount_bits=64",
	    "compat=1.1,lazy_refcounts=on",
	};
	char path[256], base[256], cmd[900];

	(void)state;
	if (system("qemu-img --version >/dev/null 2>&1") != 0)
		skip();
	assert_int_equal(unit_tmpfile(base, sizeof(base), 1 << 20), 0);
	for (size_t i = 0; i < sizeof(opts) / sizeof(opts[0]); i++) {
		struct bks_qcow2_header h;
		struct bks_error err = {0};
		unsigned char buf[65536];
		struct stat st;
		size_t n;
		FILE *f;

		assert_int_equal(unit_tmpfile(path, sizeof(path), 0), 0);
		snprintf(cmd, sizeof(cmd),
			 "qemu-img create -q -f qcow2 -o %s -b '%s' -F raw "
			 "'%s' 5G",
			 opts[i], base, path);
		assert_int_equal(system(cmd), 0);
		f = fopen(path, "rb");
		assert_non_null(f);
		n = fread(buf, 1, sizeof(buf), f);
		fclose(f);
		assert_int_equal(stat(path, &st), 0);
		assert_int_equal(bks_qcow2_header_parse(
				     buf, n, (uint64_t)st.st_size, &h, &err),
				 0);
		assert_int_equal(h.size, 5ull << 30);
		assert_int_equal(h.version, i == 0 ? 2 : 3);
		assert_int_equal(h.refcount_order, i == 1 ? 6 : 4);
		assert_string_equal(h.backing_file, base);
		assert_string_equal(h.backing_format, "raw");
		assert_int_equal(bks_qcow2_check_features(&h, 0, &err), 0);
		unlink(path);
	}
	unlink(base);
}

/* A field set to a bad value is refused, the message naming it. */
static void expect_bad(unsigned char *buf, size_t len, const char *word)
{
	struct bks_qcow2_header h;
	struct bks_error err = {0};

	assert_int_equal(parse(buf, len, &h, &err), -EINVAL);
	if (!strstr(err.msg, word))
		fail_msg("'%s' does not name '%s'", err.msg, word);
}

static void test_bad_fields(void **state)
{
	unsigned char *buf;
	size_t len;

	(void)state;
	buf = build(1ull << 30, 16, 3, "b", NULL, &len);
#define FIELD_BAD(off, bits, val, word)                                        \
	do {                                                                   \
		unsigned char save[8];                                         \
		memcpy(save, buf + (off), 8);                                  \
		if ((bits) == 32)                                              \
			bks_put_be32(buf + (off), (uint32_t)(val));            \
		else                                                           \
			bks_put_be64(buf + (off), (uint64_t)(val));            \
		expect_bad(buf, len, word);                                    \
		memcpy(buf + (off), save, 8);                                  \
	} while (0)
	FIELD_BAD(BKS_QCOW2_OFF_MAGIC, 32, 0x12345678, "magic");
	FIELD_BAD(BKS_QCOW2_OFF_VERSION, 32, 4, "version 4");
	FIELD_BAD(BKS_QCOW2_OFF_CLUSTER_BITS, 32, 8, "cluster_bits 8");
	FIELD_BAD(BKS_QCOW2_OFF_CLUSTER_BITS, 32, 22, "cluster_bits 22");
	FIELD_BAD(BKS_QCOW2_OFF_SIZE, 64, 1ull << 63, "size");
	FIELD_BAD(BKS_QCOW2_OFF_SIZE, 64, 1ull << 40, "l1_size 2");
	FIELD_BAD(BKS_QCOW2_OFF_L1_SIZE, 32, 0xffffffffu, "l1_size");
	FIELD_BAD(BKS_QCOW2_OFF_L1_OFFSET, 64, 0x30200, "L1 table offset");
	FIELD_BAD(BKS_QCOW2_OFF_L1_OFFSET, 64, 1ull << 40, "past the end");
	FIELD_BAD(BKS_QCOW2_OFF_L1_OFFSET, 64, ~0ull << 16, "L1 table");
	FIELD_BAD(BKS_QCOW2_OFF_REFTABLE_OFFSET, 64, 1ull << 50,
		  "refcount table");
	FIELD_BAD(BKS_QCOW2_OFF_REFTABLE_CLUSTERS, 32, 0,
		  "refcount_table_clusters 0");
	FIELD_BAD(BKS_QCOW2_OFF_REFTABLE_CLUSTERS, 32, 1000,
		  "refcount_table_clusters 1000");
	FIELD_BAD(BKS_QCOW2_OFF_REFCOUNT_ORDER, 32, 7, "refcount_order 7");
	FIELD_BAD(BKS_QCOW2_OFF_HEADER_LENGTH, 32, 100, "header_length 100");
	FIELD_BAD(BKS_QCOW2_OFF_HEADER_LENGTH, 32, 1u << 20, "header_length");
	FIELD_BAD(BKS_QCOW2_OFF_NB_SNAPSHOTS, 32, 70000, "nb_snapshots");
	FIELD_BAD(BKS_QCOW2_OFF_BACKING_SIZE, 32, 1024, "backing_file_size");
	FIELD_BAD(BKS_QCOW2_OFF_BACKING_OFFSET, 64, 65535, "backing file name");
	FIELD_BAD(BKS_QCOW2_OFF_BACKING_OFFSET, 64, 8, "inside the header");
	/* The compression type byte without its incompatible bit. */
	buf[BKS_QCOW2_OFF_COMPRESSION_TYPE] = 1;
	expect_bad(buf, len, "compression_type 1");
	buf[BKS_QCOW2_OFF_COMPRESSION_TYPE] = 0;
	/* An extension longer than the cluster. */
	bks_put_be32(buf + BKS_QCOW2_V3_HEADER_LEN + 4, 1u << 20);
	expect_bad(buf, len, "runs past the first cluster");
	/* Truncated files. */
	expect_bad(buf, 50, "too small");
	{
		struct bks_qcow2_header h;
		struct bks_error err = {0};

		assert_int_equal(
		    bks_qcow2_header_parse(buf, 4096, 1 << 20, &h, &err),
		    -EINVAL);
	}
	free(buf);
}

static void expect_feature(unsigned char *buf, size_t len, uint64_t incompat,
			   uint32_t crypt, unsigned int flags, int code,
			   const char *word)
{
	struct bks_qcow2_header h;
	struct bks_error err = {0};

	bks_put_be64(buf + BKS_QCOW2_OFF_INCOMPAT, incompat);
	bks_put_be32(buf + BKS_QCOW2_OFF_CRYPT_METHOD, crypt);
	assert_int_equal(parse(buf, len, &h, &err), 0);
	assert_int_equal(bks_qcow2_check_features(&h, flags, &err), code);
	if (code && !strstr(err.msg, word))
		fail_msg("'%s' does not name '%s'", err.msg, word);
}

static void test_features(void **state)
{
	const unsigned int w = BKS_QCOW2_OPEN_WRITE;
	unsigned char *buf;
	size_t len;

	(void)state;
	buf = build(1ull << 30, 16, 3, NULL, NULL, &len);
	expect_feature(buf, len, 1ull << 9, 0, 0, -ENOTSUP, "bit 9");
	expect_feature(buf, len, 0, 2, 0, -ENOTSUP, "encryption");
	expect_feature(buf, len, BKS_QCOW2_INCOMPAT_DATA_FILE, 0, 0, -ENOTSUP,
		       "external data file");
	expect_feature(buf, len, BKS_QCOW2_INCOMPAT_EXTL2, 0, 0, -ENOTSUP,
		       "extended L2");
	expect_feature(buf, len, BKS_QCOW2_INCOMPAT_DIRTY, 0, 0, 0, NULL);
	expect_feature(buf, len, BKS_QCOW2_INCOMPAT_DIRTY, 0, w, -EROFS,
		       "dirty");
	expect_feature(buf, len, BKS_QCOW2_INCOMPAT_CORRUPT, 0, w, -EROFS,
		       "corrupt");
	expect_feature(buf, len, BKS_QCOW2_INCOMPAT_CORRUPT, 0, 0, 0, NULL);
	/* zstd: refused unless the caller has it. */
	buf[BKS_QCOW2_OFF_COMPRESSION_TYPE] = 1;
	expect_feature(buf, len, BKS_QCOW2_INCOMPAT_COMPRESSION, 0, 0, -ENOTSUP,
		       "zstd");
	expect_feature(buf, len, BKS_QCOW2_INCOMPAT_COMPRESSION, 0,
		       BKS_QCOW2_HAVE_ZSTD, 0, NULL);
	buf[BKS_QCOW2_OFF_COMPRESSION_TYPE] = 7;
	expect_feature(buf, len, BKS_QCOW2_INCOMPAT_COMPRESSION, 0,
		       BKS_QCOW2_HAVE_ZSTD, -ENOTSUP, "compression type 7");
	free(buf);
}

static void test_entries(void **state)
{
	struct bks_qcow2_geom g;
	struct bks_qcow2_l2 l2;
	struct bks_error err = {0};
	uint64_t off;
	bool copied;

	(void)state;
	bks_qcow2_geom_init(&g, 16, 4);
	assert_int_equal(bks_qcow2_l2_decode(&g, 0, &l2, &err), 0);
	assert_int_equal(l2.type, BKS_QCOW2_UNALLOCATED);
	assert_int_equal(
	    bks_qcow2_l2_decode(&g, bks_qcow2_l2_make(0x50000, 1), &l2, &err),
	    0);
	assert_int_equal(l2.type, BKS_QCOW2_NORMAL);
	assert_int_equal(l2.host_offset, 0x50000);
	assert_true(l2.copied);
	assert_int_equal(bks_qcow2_l2_decode(&g, 1, &l2, &err), 0);
	assert_int_equal(l2.type, BKS_QCOW2_ZERO_PLAIN);
	assert_int_equal(bks_qcow2_l2_decode(
			     &g, bks_qcow2_l2_make_zero(0x70000, 1), &l2, &err),
			 0);
	assert_int_equal(l2.type, BKS_QCOW2_ZERO_ALLOC);
	/* Reserved bits, unaligned offsets. */
	assert_int_equal(bks_qcow2_l2_decode(&g, 0x50002, &l2, &err), -EINVAL);
	assert_non_null(strstr(err.msg, "reserved"));
	assert_int_equal(bks_qcow2_l2_decode(&g, 1ull << 57, &l2, &err),
			 -EINVAL);
	assert_int_equal(bks_qcow2_l2_decode(&g, 0x50200, &l2, &err), -EINVAL);
	assert_non_null(strstr(err.msg, "cluster-aligned"));
	/* Compressed: 64 KiB clusters: offset bits 0..53, sectors 54..61. */
	{
		uint64_t e =
		    BKS_QCOW2_OFLAG_COMPRESSED | (3ull << 54) | 0x123456;

		assert_int_equal(g.csize_shift, 54);
		assert_int_equal(bks_qcow2_l2_decode(&g, e, &l2, &err), 0);
		assert_int_equal(l2.type, BKS_QCOW2_COMPRESSED);
		assert_int_equal(l2.host_offset, 0x123456);
		assert_int_equal(l2.csize, 4 * 512 - 0x56);
		assert_int_equal(bks_qcow2_l2_decode(
				     &g, e | BKS_QCOW2_OFLAG_COPIED, &l2, &err),
				 -EINVAL);
		assert_int_equal(bks_qcow2_l2_decode(&g, e, &l2, &err), 0);
		assert_int_equal(
		    bks_qcow2_l2_check_bounds(&g, &l2, 0x123456, &err),
		    -EINVAL);
		assert_int_equal(
		    bks_qcow2_l2_check_bounds(&g, &l2, 0x123457, &err), 0);
	}
	assert_int_equal(
	    bks_qcow2_l2_decode(&g, bks_qcow2_l2_make(0x50000, 1), &l2, &err),
	    0);
	assert_int_equal(bks_qcow2_l2_check_bounds(&g, &l2, 0x50000, &err),
			 -EINVAL);
	assert_int_equal(bks_qcow2_l2_check_bounds(&g, &l2, 0x50001, &err), 0);
	assert_int_equal(bks_qcow2_l2_check_bounds(&g, &l2, 0x60000, &err), 0);
	/* L1 and refcount table entries. */
	assert_int_equal(bks_qcow2_l1_decode(&g, bks_qcow2_l1_make(0x40000),
					     &off, &copied, &err),
			 0);
	assert_int_equal(off, 0x40000);
	assert_true(copied);
	assert_int_equal(bks_qcow2_l1_decode(&g, 0x40001, &off, &copied, &err),
			 -EINVAL);
	assert_int_equal(
	    bks_qcow2_l1_decode(&g, 1ull << 60 | 0x40000, &off, &copied, &err),
	    -EINVAL);
	assert_int_equal(bks_qcow2_l1_decode(&g, 0x48000, &off, &copied, &err),
			 -EINVAL);
	assert_int_equal(bks_qcow2_reftable_decode(&g, 0x20000, &off, &err), 0);
	assert_int_equal(off, 0x20000);
	assert_int_equal(bks_qcow2_reftable_decode(&g, 0x20100, &off, &err),
			 -EINVAL);
	assert_int_equal(bks_qcow2_reftable_decode(&g, 0x28000, &off, &err),
			 -EINVAL);
}

static void test_refcounts(void **state)
{
	unsigned char block[512];

	(void)state;
	for (uint32_t order = 0; order <= 6; order++) {
		struct bks_qcow2_geom g;

		bks_qcow2_geom_init(&g, 9, order);
		memset(block, 0, sizeof(block));
		assert_int_equal(g.rb_entries, 4096u >> order);
		for (uint64_t i = 0; i < g.rb_entries; i++)
			bks_qcow2_refcount_set(&g, block, i,
					       (i * 7 + 3) & g.refcount_max);
		for (uint64_t i = 0; i < g.rb_entries; i++)
			assert_int_equal(bks_qcow2_refcount_get(&g, block, i),
					 (i * 7 + 3) & g.refcount_max);
	}
	/* 16 bits: big-endian; 1 bit: least significant bit first. */
	{
		struct bks_qcow2_geom g;

		bks_qcow2_geom_init(&g, 9, 4);
		memset(block, 0, sizeof(block));
		bks_qcow2_refcount_set(&g, block, 1, 0x1234);
		assert_int_equal(block[2], 0x12);
		assert_int_equal(block[3], 0x34);
		bks_qcow2_geom_init(&g, 9, 0);
		memset(block, 0, sizeof(block));
		bks_qcow2_refcount_set(&g, block, 9, 1);
		assert_int_equal(block[1], 0x02);
	}
}

static void test_build_bad(void **state)
{
	struct bks_qcow2_create c = {.size = 1 << 20, .refcount_order = 4};
	struct bks_error err = {0};
	unsigned char *buf;
	size_t len;

	(void)state;
	c.size = 1000;
	assert_int_equal(bks_qcow2_build(&c, &buf, &len, &err), -EINVAL);
	c.size = 1 << 20;
	c.cluster_bits = 22;
	assert_int_equal(bks_qcow2_build(&c, &buf, &len, &err), -EINVAL);
	c.cluster_bits = 0;
	c.version = 2;
	c.refcount_order = 3;
	assert_int_equal(bks_qcow2_build(&c, &buf, &len, &err), -EINVAL);
	c.refcount_order = 4;
	c.backing_format = "raw";
	assert_int_equal(bks_qcow2_build(&c, &buf, &len, &err), -EINVAL);
	c.backing_format = NULL;
	c.size = 1ull << 62;
	c.cluster_bits = 9;
	assert_int_equal(bks_qcow2_build(&c, &buf, &len, &err), -EINVAL);
	assert_non_null(strstr(err.msg, "L1"));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_build_parse),
	    cmocka_unit_test(test_build_qemu_img),
	    cmocka_unit_test(test_parse_qemu_img),
	    cmocka_unit_test(test_bad_fields),
	    cmocka_unit_test(test_features),
	    cmocka_unit_test(test_entries),
	    cmocka_unit_test(test_refcounts),
	    cmocka_unit_test(test_build_bad),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
