/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Unit tests: the VHD on-disk format (libblkstack/vhd-format.c): the CHS
 * geometry and size rounding against what qemu-img writes, footer and
 * dynamic header round trips and every refusal (with its message naming
 * the field and value), BAT entry bounds, sector bitmap runs, parent
 * locators (W2ku, W2ru, MacX) and the parent name.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <errno.h>
#include <string.h>

#include "blkstack/endian.h"
#include "blkstack/vhd-format.h"

/*
 * Sizes and geometries qemu-img 8 writes for `qemu-img create -f vpc F
 * SIZE` (read back with qemu-img info and the footer's bytes 56..59).
 */
static void test_geometry_qemu(void **state)
{
	static const struct {
		uint64_t asked, size;
		uint16_t c;
		uint8_t h, s;
	} cases[] = {
	    {1ull << 20, 1079296, 31, 4, 17},
	    {4ull << 20, 4212736, 121, 4, 17},
	    {100ull << 20, 104865792, 1004, 12, 17},
	    {1ull << 30, 1073995776, 2081, 16, 63},
	};
	uint16_t c;
	uint8_t h, s;

	(void)state;
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		uint64_t got = vhd_round_size(cases[i].asked);

		assert_int_equal(got, cases[i].size);
		vhd_geometry(got / 512, &c, &h, &s);
		assert_int_equal(c, cases[i].c);
		assert_int_equal(h, cases[i].h);
		assert_int_equal(s, cases[i].s);
		assert_int_equal((uint64_t)c * h * s * 512, got);
	}
	/* Beyond the CHS range: the largest geometry, sector rounding. */
	assert_int_equal(vhd_round_size(130ull << 30), 130ull << 30);
	vhd_geometry((130ull << 30) / 512, &c, &h, &s);
	assert_int_equal(c, 65535);
	assert_int_equal(h, 16);
	assert_int_equal(s, 255);
}

static void footer_of(struct vhd_footer *f, uint32_t type, uint64_t size,
		      const char *app)
{
	memset(f, 0, sizeof(*f));
	f->features = 2;
	f->version = 0x00010000;
	f->data_offset = type == VHD_TYPE_FIXED ? UINT64_MAX : 512;
	memcpy(f->creator_app, app, 4);
	f->current_size = f->original_size = size;
	vhd_geometry(size / 512, &f->cylinders, &f->heads,
		     &f->sectors_per_track);
	f->disk_type = type;
	for (int i = 0; i < 16; i++)
		f->uuid[i] = (uint8_t)(i * 17);
}

static void test_footer_roundtrip(void **state)
{
	unsigned char b[512];
	struct vhd_footer f, g;
	struct bks_error err = {0};

	(void)state;
	footer_of(&f, VHD_TYPE_DYNAMIC, 4212736, "bks ");
	f.timestamp = 12345;
	vhd_footer_build(b, &f);
	assert_memory_equal(b, "conectix", 8);
	assert_int_equal(vhd_checksum(b, 512, 64), bks_get_be32(b + 64));
	assert_int_equal(vhd_footer_parse(b, &g, &err), 0);
	assert_int_equal(g.virtual_size, 4212736);
	assert_int_equal(g.timestamp, 12345);
	assert_memory_equal(g.uuid, f.uuid, 16);
	assert_int_equal(g.disk_type, VHD_TYPE_DYNAMIC);
}

/* Rebuild b's checksum after poking a field. */
static void fix_sum(unsigned char *b, size_t n, size_t at)
{
	bks_put_be32(b + at, vhd_checksum(b, n, at));
}

static void expect_footer_error(unsigned char *b, const char *needle)
{
	struct vhd_footer g;
	struct bks_error err = {0};

	assert_int_equal(vhd_footer_parse(b, &g, &err), -EINVAL);
	if (!strstr(err.msg, needle))
		fail_msg("message '%s' lacks '%s'", err.msg, needle);
}

static void test_footer_refusals(void **state)
{
	unsigned char b[512], good[512];
	struct vhd_footer f;

	(void)state;
	footer_of(&f, VHD_TYPE_DYNAMIC, 4212736, "bks ");
	vhd_footer_build(good, &f);

	memcpy(b, good, 512);
	b[0] = 'C';
	expect_footer_error(b, "cookie");

	memcpy(b, good, 512);
	b[100] ^= 1;
	expect_footer_error(b, "checksum");

	memcpy(b, good, 512);
	bks_put_be32(b + 60, 7);
	fix_sum(b, 512, 64);
	expect_footer_error(b, "disk type 7");

	memcpy(b, good, 512);
	bks_put_be32(b + 12, 0x00020000);
	fix_sum(b, 512, 64);
	expect_footer_error(b, "version 0x00020000");

	memcpy(b, good, 512);
	bks_put_be64(b + 16, 513);
	fix_sum(b, 512, 64);
	expect_footer_error(b, "data offset 0x201");

	/* A fixed disk has no header. */
	memcpy(b, good, 512);
	bks_put_be32(b + 60, VHD_TYPE_FIXED);
	fix_sum(b, 512, 64);
	expect_footer_error(b, "fixed disk");

	/* current_size creators: over 2040 GiB, and not sector-sized. */
	memcpy(b, good, 512);
	bks_put_be64(b + 48, (2041ull << 30));
	bks_put_be16(b + 56, 65535);
	b[58] = 16;
	b[59] = 255;
	fix_sum(b, 512, 64);
	expect_footer_error(b, "2040 GiB");

	memcpy(b, good, 512);
	bks_put_be64(b + 48, 1000);
	fix_sum(b, 512, 64);
	expect_footer_error(b, "multiple of 512");

	/* A CHS creator: size 0 from a zero geometry. */
	footer_of(&f, VHD_TYPE_DYNAMIC, 4212736, "qemu");
	f.cylinders = 0;
	vhd_footer_build(b, &f);
	expect_footer_error(b, "geometry 0/4/17");
}

/* qemu's rule: CHS size for "qemu"/"vpc " and unknown creators. */
static void test_virtual_size_rule(void **state)
{
	struct vhd_footer f;

	(void)state;
	footer_of(&f, VHD_TYPE_DYNAMIC, 4212736, "qemu");
	f.current_size = 5000000 / 512 * 512;
	assert_int_equal(vhd_virtual_size(&f), 4212736);
	memcpy(f.creator_app, "vpc ", 4);
	assert_int_equal(vhd_virtual_size(&f), 4212736);
	memcpy(f.creator_app, "win ", 4);
	assert_int_equal(vhd_virtual_size(&f), f.current_size);
	memcpy(f.creator_app, "tap\0", 4);
	assert_int_equal(vhd_virtual_size(&f), f.current_size);
	memcpy(f.creator_app, "qem2", 4);
	assert_int_equal(vhd_virtual_size(&f), f.current_size);
	/* The largest geometry: current_size whoever made it. */
	memcpy(f.creator_app, "qemu", 4);
	f.cylinders = 65535;
	f.heads = 16;
	f.sectors_per_track = 255;
	assert_int_equal(vhd_virtual_size(&f), f.current_size);
}

static void header_of(struct vhd_header *h, uint32_t entries, uint32_t bs)
{
	memset(h, 0, sizeof(*h));
	h->data_offset = UINT64_MAX;
	h->table_offset = 1536;
	h->version = 0x00010000;
	h->max_entries = entries;
	h->block_size = bs;
}

static void expect_header_error(const unsigned char *b,
				const struct vhd_footer *f, uint64_t fsize,
				const char *needle)
{
	struct vhd_header h;
	struct bks_error err = {0};

	assert_int_equal(vhd_header_parse(b, f, fsize, &h, &err), -EINVAL);
	if (!strstr(err.msg, needle))
		fail_msg("message '%s' lacks '%s'", err.msg, needle);
}

static void test_header(void **state)
{
	unsigned char b[1024];
	struct vhd_footer f;
	struct vhd_header h, g;
	struct bks_error err = {0};
	uint64_t fsize = 1536 + 512 + 512;

	(void)state;
	footer_of(&f, VHD_TYPE_DYNAMIC, 4212736, "bks ");
	f.virtual_size = vhd_virtual_size(&f);
	header_of(&h, 3, 2u << 20);
	vhd_header_build(b, &h);
	assert_int_equal(vhd_header_parse(b, &f, fsize, &g, &err), 0);
	assert_int_equal(g.max_entries, 3);
	assert_int_equal(g.block_size, 2u << 20);

	/* Too few entries for the disk. */
	header_of(&h, 2, 2u << 20);
	vhd_header_build(b, &h);
	expect_header_error(b, &f, fsize, "max table entries 2");
	/* A block size that is not a power of two. */
	header_of(&h, 3, 3u << 20);
	vhd_header_build(b, &h);
	expect_header_error(b, &f, fsize, "block size 3145728");
	/* A BAT beyond the file. */
	header_of(&h, 3, 2u << 20);
	h.table_offset = 1ull << 40;
	vhd_header_build(b, &h);
	expect_header_error(b, &f, fsize, "BAT at 0x10000000000");
	/* A BAT over the header. */
	h.table_offset = 1024;
	vhd_header_build(b, &h);
	expect_header_error(b, &f, fsize, "overlaps the header");
	/* An absurd number of entries: more than 2 TiB. */
	header_of(&h, 0x7FFFFFFF, 2u << 20);
	vhd_header_build(b, &h);
	expect_header_error(b, &f, fsize, "2 TiB");
	/* A locator outside the file. */
	header_of(&h, 3, 2u << 20);
	h.loc[2].code = VHD_PLAT_W2KU;
	h.loc[2].length = 100;
	h.loc[2].offset = fsize;
	vhd_header_build(b, &h);
	expect_header_error(b, &f, fsize, "parent locator 2 (W2ku)");
	/* A checksum off by one. */
	header_of(&h, 3, 2u << 20);
	vhd_header_build(b, &h);
	b[900] ^= 0x40;
	expect_header_error(b, &f, fsize, "checksum");
	/* No cookie. */
	vhd_header_build(b, &h);
	memcpy(b, "cxsparsX", 8);
	expect_header_error(b, &f, fsize, "cxsparse");
}

static void test_bat_and_bitmap(void **state)
{
	unsigned char bm[512] = {0};
	struct bks_error err = {0};
	bool set;

	(void)state;
	assert_int_equal(vhd_bat_bytes(1), 512);
	assert_int_equal(vhd_bat_bytes(129), 1024);
	assert_int_equal(vhd_bitmap_bytes(2u << 20), 512);
	assert_int_equal(vhd_bitmap_bytes(4096), 512);
	assert_int_equal(vhd_bitmap_bytes(8u << 20), 2048);

	assert_int_equal(
	    vhd_bat_check(0, VHD_BAT_UNUSED, 2u << 20, 2048, 4096, &err), 0);
	assert_int_equal(
	    vhd_bat_check(0, 4, 2u << 20, 2048, 2048 + 512 + (2u << 20), &err),
	    0);
	/* One byte short of the footer. */
	assert_int_equal(
	    vhd_bat_check(5, 4, 2u << 20, 2048, 2048 + 511 + (2u << 20), &err),
	    -EINVAL);
	assert_non_null(strstr(err.msg, "BAT entry 5"));
	/* Inside the metadata. */
	assert_int_equal(vhd_bat_check(1, 2, 4096, 2048, 1 << 20, &err),
			 -EINVAL);
	assert_non_null(strstr(err.msg, "sector 2"));
	/* Far beyond: no overflow. */
	assert_int_equal(
	    vhd_bat_check(1, 0xFFFFFFFE, 1u << 28, 2048, 1ull << 40, &err),
	    -EINVAL);

	vhd_set_bit(bm, 3);
	assert_int_equal(bm[0], 0x10); /* MSB first: sector 0 is 0x80 */
	for (uint32_t i = 16; i < 40; i++)
		vhd_set_bit(bm, i);
	assert_int_equal(vhd_bitmap_run(bm, 0, 4096, &set), 3);
	assert_false(set);
	assert_int_equal(vhd_bitmap_run(bm, 3, 4096, &set), 4);
	assert_true(set);
	assert_int_equal(vhd_bitmap_run(bm, 4, 4096, &set), 16);
	assert_false(set);
	assert_int_equal(vhd_bitmap_run(bm, 16, 4096, &set), 40);
	assert_true(set);
	assert_int_equal(vhd_bitmap_run(bm, 20, 30, &set), 30);
	assert_int_equal(vhd_bitmap_run(bm, 40, 4096, &set), 4096);
	assert_false(set);
}

static void test_locators(void **state)
{
	unsigned char buf[VHD_LOCATOR_MAX];
	char out[VHD_LOCATOR_MAX];
	struct bks_error err = {0};
	int n;

	(void)state;
	n = vhd_locator_encode(VHD_PLAT_W2KU, "/images/base é.vhd", buf,
			       sizeof(buf));
	assert_true(n > 0);
	/* UTF-16LE "C:\images\..." */
	assert_int_equal(buf[0], 'C');
	assert_int_equal(buf[1], 0);
	assert_int_equal(buf[4], '\\');
	assert_int_equal(vhd_locator_decode(VHD_PLAT_W2KU, buf, (size_t)n, out,
					    sizeof(out), &err),
			 0);
	assert_string_equal(out, "/images/base é.vhd");

	n = vhd_locator_encode(VHD_PLAT_W2RU, "base.vhd", buf, sizeof(buf));
	assert_int_equal(vhd_locator_decode(VHD_PLAT_W2RU, buf, (size_t)n, out,
					    sizeof(out), &err),
			 0);
	assert_string_equal(out, "./base.vhd");

	n = vhd_locator_encode(VHD_PLAT_MACX, "base.vhd", buf, sizeof(buf));
	assert_int_equal(n, (int)strlen("file://./base.vhd"));
	assert_memory_equal(buf, "file://./base.vhd", (size_t)n);
	assert_int_equal(vhd_locator_decode(VHD_PLAT_MACX, buf, (size_t)n, out,
					    sizeof(out), &err),
			 0);
	assert_string_equal(out, "base.vhd");
	assert_int_equal(
	    vhd_locator_decode(VHD_PLAT_MACX,
			       (const unsigned char *)"file:///a%20b/c.vhd", 19,
			       out, sizeof(out), &err),
	    0);
	assert_string_equal(out, "/a b/c.vhd");

	/* Refusals: a lone surrogate, odd length, %00, empty, Mac alias. */
	buf[0] = 0x00;
	buf[1] = 0xD8;
	buf[2] = 'a';
	buf[3] = 0;
	assert_int_equal(
	    vhd_locator_decode(VHD_PLAT_W2KU, buf, 4, out, sizeof(out), &err),
	    -EINVAL);
	assert_int_equal(
	    vhd_locator_decode(VHD_PLAT_W2KU, buf, 3, out, sizeof(out), &err),
	    -EINVAL);
	assert_non_null(strstr(err.msg, "odd length 3"));
	assert_int_equal(vhd_locator_decode(VHD_PLAT_MACX,
					    (const unsigned char *)"file://%00",
					    10, out, sizeof(out), &err),
			 -EINVAL);
	assert_int_equal(vhd_locator_decode(VHD_PLAT_MACX,
					    (const unsigned char *)"file://", 7,
					    out, sizeof(out), &err),
			 -EINVAL);
	assert_non_null(strstr(err.msg, "empty"));
	assert_int_equal(vhd_locator_decode(VHD_PLAT_MAC,
					    (const unsigned char *)"x", 1, out,
					    sizeof(out), &err),
			 -ENOTSUP);
	/* Too long for out. */
	n = vhd_locator_encode(VHD_PLAT_MACX, "/aaaaaaaaaaaaaaaaaaaaaaaa", buf,
			       sizeof(buf));
	assert_int_equal(
	    vhd_locator_decode(VHD_PLAT_MACX, buf, (size_t)n, out, 8, &err),
	    -ENAMETOOLONG);
}

static void test_parent_name(void **state)
{
	uint8_t name[VHD_PARENT_NAME_BYTES];
	char out[1024];

	(void)state;
	assert_int_equal(vhd_parent_name_encode(name, "base.vhd"), 0);
	assert_int_equal(name[0], 0);
	assert_int_equal(name[1], 'b'); /* UTF-16BE */
	assert_int_equal(vhd_parent_name_decode(name, out, sizeof(out)), 0);
	assert_string_equal(out, "base.vhd");
	/* 256 units, no NUL: all of them, and no overrun. */
	memset(name, 0, sizeof(name));
	for (int i = 0; i < 256; i++)
		name[2 * i + 1] = 'x';
	assert_int_equal(vhd_parent_name_decode(name, out, sizeof(out)), 0);
	assert_int_equal(strlen(out), 256);
	assert_int_equal(vhd_parent_name_decode(name, out, 100), -ENAMETOOLONG);
}

static void test_parent_time(void **state)
{
	(void)state;
	assert_true(vhd_parent_time_ok(1000, 1000, 0));
	assert_true(vhd_parent_time_ok(1000, 5, VHD_EPOCH_OFFSET + 1000));
	assert_false(vhd_parent_time_ok(1000, 5, VHD_EPOCH_OFFSET + 1001));
	assert_false(vhd_parent_time_ok(1000, 5, 1000));
	assert_false(vhd_parent_time_ok(0, 5, -1));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_geometry_qemu),
	    cmocka_unit_test(test_footer_roundtrip),
	    cmocka_unit_test(test_footer_refusals),
	    cmocka_unit_test(test_virtual_size_rule),
	    cmocka_unit_test(test_header),
	    cmocka_unit_test(test_bat_and_bitmap),
	    cmocka_unit_test(test_locators),
	    cmocka_unit_test(test_parent_name),
	    cmocka_unit_test(test_parent_time),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
