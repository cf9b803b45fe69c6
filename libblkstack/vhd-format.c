/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The VHD on-disk format: see blkstack/vhd-format.h.
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include "blkstack/endian.h"
#include "blkstack/hexdigit.h"
#include "blkstack/vhd-format.h"

#define FOOTER_COOKIE "conectix"
#define HEADER_COOKIE "cxsparse"
#define VHD_VERSION   0x00010000u

uint32_t vhd_checksum(const unsigned char *buf, size_t n, size_t skip)
{
	uint32_t sum = 0;

	for (size_t i = 0; i < n; i++) {
		if (i >= skip && i < skip + 4)
			continue;
		sum += buf[i];
	}
	return ~sum;
}

void vhd_geometry(uint64_t total, uint16_t *c, uint8_t *h, uint8_t *s)
{
	uint64_t cth, spt, heads;

	if (total > VHD_MAX_CHS_SECTORS)
		total = VHD_MAX_CHS_SECTORS;
	if (total >= 65535ull * 16 * 63) {
		spt = 255;
		heads = 16;
		cth = total / spt;
	} else {
		spt = 17;
		cth = total / spt;
		heads = (cth + 1023) / 1024;
		if (heads < 4)
			heads = 4;
		if (cth >= heads * 1024 || heads > 16) {
			spt = 31;
			heads = 16;
			cth = total / spt;
		}
		if (cth >= heads * 1024) {
			spt = 63;
			heads = 16;
			cth = total / spt;
		}
	}
	*c = (uint16_t)(cth / heads);
	*h = (uint8_t)heads;
	*s = (uint8_t)spt;
}

uint64_t vhd_round_size(uint64_t size)
{
	uint64_t sectors = (size + VHD_SECTOR - 1) / VHD_SECTOR;
	uint16_t c;
	uint8_t h, s;

	if (sectors >= VHD_MAX_CHS_SECTORS)
		return sectors * VHD_SECTOR;
	/* The geometry of a little more covers it within a few tries. */
	for (uint64_t t = sectors; t < VHD_MAX_CHS_SECTORS; t++) {
		vhd_geometry(t, &c, &h, &s);
		if ((uint64_t)c * h * s >= sectors)
			return (uint64_t)c * h * s * VHD_SECTOR;
	}
	return sectors * VHD_SECTOR;
}

/* Creators whose images are sized by current_size (qemu's list). */
static bool uses_current_size(const char app[4])
{
	static const char known[][4] = {
	    {'w', 'i', 'n', ' '}, {'q', 'e', 'm', '2'}, {'d', '2', 'v', ' '},
	    {'C', 'T', 'X', 'S'}, {'t', 'a', 'p', 0},	{'b', 'k', 's', ' '},
	};

	for (size_t i = 0; i < sizeof(known) / sizeof(known[0]); i++) {
		if (memcmp(app, known[i], 4) == 0)
			return true;
	}
	return false;
}

uint64_t vhd_virtual_size(const struct vhd_footer *f)
{
	uint64_t chs = (uint64_t)f->cylinders * f->heads * f->sectors_per_track;

	if (uses_current_size(f->creator_app) || chs == VHD_MAX_CHS_SECTORS)
		return f->current_size;
	return chs * VHD_SECTOR;
}

int vhd_footer_parse(const unsigned char *b, struct vhd_footer *f,
		     struct bks_error *err)
{
	uint32_t sum;

	memset(f, 0, sizeof(*f));
	if (memcmp(b, FOOTER_COOKIE, 8) != 0)
		return bks_error_setmsg(err, EINVAL,
					"footer: no \"conectix\" cookie");
	f->features = bks_get_be32(b + 8);
	f->version = bks_get_be32(b + 12);
	f->data_offset = bks_get_be64(b + 16);
	f->timestamp = bks_get_be32(b + 24);
	memcpy(f->creator_app, b + 28, 4);
	f->creator_version = bks_get_be32(b + 32);
	f->creator_os = bks_get_be32(b + 36);
	f->original_size = bks_get_be64(b + 40);
	f->current_size = bks_get_be64(b + 48);
	f->cylinders = bks_get_be16(b + 56);
	f->heads = b[58];
	f->sectors_per_track = b[59];
	f->disk_type = bks_get_be32(b + 60);
	f->checksum = bks_get_be32(b + 64);
	memcpy(f->uuid, b + 68, 16);
	f->saved_state = b[84];

	sum = vhd_checksum(b, VHD_FOOTER_SIZE, 64);
	if (sum != f->checksum)
		return bks_error_setmsg(
		    err, EINVAL, "footer: checksum 0x%08x, computed 0x%08x",
		    f->checksum, sum);
	if (f->version >> 16 != 1)
		return bks_error_setmsg(err, EINVAL,
					"footer: file format version 0x%08x "
					"(only 1.x is known)",
					f->version);
	switch (f->disk_type) {
	case VHD_TYPE_FIXED:
		if (f->data_offset != UINT64_MAX)
			return bks_error_setmsg(
			    err, EINVAL,
			    "footer: data offset 0x%llx of a fixed disk "
			    "(must be 0xffffffffffffffff)",
			    (unsigned long long)f->data_offset);
		break;
	case VHD_TYPE_DYNAMIC:
	case VHD_TYPE_DIFF:
		if (f->data_offset < VHD_FOOTER_SIZE ||
		    f->data_offset % VHD_SECTOR ||
		    f->data_offset > (1ull << 41))
			return bks_error_setmsg(
			    err, EINVAL,
			    "footer: data offset 0x%llx (the dynamic header "
			    "must be sector-aligned, after the footer copy)",
			    (unsigned long long)f->data_offset);
		break;
	default:
		return bks_error_setmsg(err, EINVAL,
					"footer: disk type %u (known: 2 fixed, "
					"3 dynamic, 4 differencing)",
					f->disk_type);
	}
	f->virtual_size = vhd_virtual_size(f);
	if (f->virtual_size == 0 || f->virtual_size % VHD_SECTOR)
		return bks_error_setmsg(err, EINVAL,
					"footer: disk size %llu bytes (current "
					"size %llu, geometry %u/%u/%u) is not "
					"a non-zero multiple of 512",
					(unsigned long long)f->virtual_size,
					(unsigned long long)f->current_size,
					f->cylinders, f->heads,
					f->sectors_per_track);
	if (f->virtual_size > VHD_MAX_SIZE)
		return bks_error_setmsg(err, EINVAL,
					"footer: disk size %llu bytes is over "
					"the VHD limit of 2040 GiB",
					(unsigned long long)f->virtual_size);
	return 0;
}

void vhd_footer_build(unsigned char *b, const struct vhd_footer *f)
{
	memset(b, 0, VHD_FOOTER_SIZE);
	memcpy(b, FOOTER_COOKIE, 8);
	bks_put_be32(b + 8, f->features);
	bks_put_be32(b + 12, f->version);
	bks_put_be64(b + 16, f->data_offset);
	bks_put_be32(b + 24, f->timestamp);
	memcpy(b + 28, f->creator_app, 4);
	bks_put_be32(b + 32, f->creator_version);
	bks_put_be32(b + 36, f->creator_os);
	bks_put_be64(b + 40, f->original_size);
	bks_put_be64(b + 48, f->current_size);
	bks_put_be16(b + 56, f->cylinders);
	b[58] = f->heads;
	b[59] = f->sectors_per_track;
	bks_put_be32(b + 60, f->disk_type);
	memcpy(b + 68, f->uuid, 16);
	b[84] = f->saved_state;
	bks_put_be32(b + 64, vhd_checksum(b, VHD_FOOTER_SIZE, 64));
}

uint64_t vhd_bat_bytes(uint32_t max_entries)
{
	return ((uint64_t)max_entries * 4 + VHD_SECTOR - 1) / VHD_SECTOR *
	       VHD_SECTOR;
}

uint32_t vhd_bitmap_bytes(uint32_t block_size)
{
	uint32_t bits = block_size / VHD_SECTOR;

	return (bits / 8 + VHD_SECTOR - 1) / VHD_SECTOR * VHD_SECTOR;
}

static bool power_of_two(uint32_t v)
{
	return v && !(v & (v - 1));
}

int vhd_header_parse(const unsigned char *b, const struct vhd_footer *f,
		     uint64_t file_size, struct vhd_header *h,
		     struct bks_error *err)
{
	uint64_t meta_end, coverage;
	uint32_t sum;
	char pn[5];

	memset(h, 0, sizeof(*h));
	if (memcmp(b, HEADER_COOKIE, 8) != 0)
		return bks_error_setmsg(err, EINVAL,
					"dynamic header at 0x%llx: no "
					"\"cxsparse\" cookie",
					(unsigned long long)f->data_offset);
	h->data_offset = bks_get_be64(b + 8);
	h->table_offset = bks_get_be64(b + 16);
	h->version = bks_get_be32(b + 24);
	h->max_entries = bks_get_be32(b + 28);
	h->block_size = bks_get_be32(b + 32);
	h->checksum = bks_get_be32(b + 36);
	memcpy(h->parent_uuid, b + 40, 16);
	h->parent_timestamp = bks_get_be32(b + 56);
	memcpy(h->parent_name, b + 64, VHD_PARENT_NAME_BYTES);
	for (unsigned int i = 0; i < VHD_LOCATORS; i++) {
		const unsigned char *l = b + 576 + 24 * i;

		h->loc[i].code = bks_get_be32(l);
		h->loc[i].space = bks_get_be32(l + 4);
		h->loc[i].length = bks_get_be32(l + 8);
		h->loc[i].offset = bks_get_be64(l + 16);
	}

	sum = vhd_checksum(b, VHD_HEADER_SIZE, 36);
	if (sum != h->checksum)
		return bks_error_setmsg(
		    err, EINVAL,
		    "dynamic header: checksum 0x%08x, computed 0x%08x",
		    h->checksum, sum);
	if (h->version >> 16 != 1)
		return bks_error_setmsg(err, EINVAL,
					"dynamic header: version 0x%08x (only "
					"1.x is known)",
					h->version);
	if (!power_of_two(h->block_size) || h->block_size < VHD_MIN_BLOCK ||
	    h->block_size > VHD_MAX_BLOCK)
		return bks_error_setmsg(err, EINVAL,
					"dynamic header: block size %u (must "
					"be a power of two, 512 B..256 MiB)",
					h->block_size);
	if (file_size < f->data_offset + VHD_HEADER_SIZE + VHD_FOOTER_SIZE)
		return bks_error_setmsg(err, EINVAL,
					"dynamic header at 0x%llx: beyond the "
					"file's %llu bytes",
					(unsigned long long)f->data_offset,
					(unsigned long long)file_size);
	coverage = (uint64_t)h->max_entries * h->block_size;
	if (h->max_entries == 0 || coverage < f->virtual_size)
		return bks_error_setmsg(
		    err, EINVAL,
		    "dynamic header: max table entries %u of %u-byte "
		    "blocks cover %llu bytes, less than the disk's %llu",
		    h->max_entries, h->block_size, (unsigned long long)coverage,
		    (unsigned long long)f->virtual_size);
	/* More entries than the disk needs are allowed, but not absurdly
	 * many: a BAT can address 2^32 sectors at most. */
	if (coverage > (1ull << 41) + h->block_size)
		return bks_error_setmsg(err, EINVAL,
					"dynamic header: max table entries %u "
					"of %u-byte blocks cover more than the "
					"2 TiB a BAT can address",
					h->max_entries, h->block_size);
	if (h->table_offset % VHD_SECTOR || h->table_offset < VHD_FOOTER_SIZE ||
	    h->table_offset > file_size ||
	    vhd_bat_bytes(h->max_entries) >
		file_size - VHD_FOOTER_SIZE - h->table_offset ||
	    (h->table_offset < f->data_offset + VHD_HEADER_SIZE &&
	     h->table_offset + vhd_bat_bytes(h->max_entries) > f->data_offset))
		return bks_error_setmsg(
		    err, EINVAL,
		    "dynamic header: BAT at 0x%llx of %u entries is not "
		    "sector-aligned, overlaps the header or is not inside "
		    "the file's %llu bytes before the footer",
		    (unsigned long long)h->table_offset, h->max_entries,
		    (unsigned long long)file_size);
	meta_end = file_size - VHD_FOOTER_SIZE;
	for (unsigned int i = 0; i < VHD_LOCATORS; i++) {
		const struct vhd_locator *l = &h->loc[i];

		if (l->code == VHD_PLAT_NONE)
			continue;
		if (l->length > VHD_LOCATOR_MAX || l->offset > meta_end ||
		    l->length > meta_end - l->offset ||
		    l->offset < VHD_FOOTER_SIZE)
			return bks_error_setmsg(
			    err, EINVAL,
			    "parent locator %u (%s): %u bytes at 0x%llx are "
			    "not inside the file's %llu bytes before the "
			    "footer (or over %u bytes)",
			    i, vhd_plat_name(l->code, pn), l->length,
			    (unsigned long long)l->offset,
			    (unsigned long long)file_size, VHD_LOCATOR_MAX);
	}
	return 0;
}

void vhd_header_build(unsigned char *b, const struct vhd_header *h)
{
	memset(b, 0, VHD_HEADER_SIZE);
	memcpy(b, HEADER_COOKIE, 8);
	bks_put_be64(b + 8, h->data_offset);
	bks_put_be64(b + 16, h->table_offset);
	bks_put_be32(b + 24, h->version);
	bks_put_be32(b + 28, h->max_entries);
	bks_put_be32(b + 32, h->block_size);
	memcpy(b + 40, h->parent_uuid, 16);
	bks_put_be32(b + 56, h->parent_timestamp);
	memcpy(b + 64, h->parent_name, VHD_PARENT_NAME_BYTES);
	for (unsigned int i = 0; i < VHD_LOCATORS; i++) {
		unsigned char *l = b + 576 + 24 * i;

		bks_put_be32(l, h->loc[i].code);
		bks_put_be32(l + 4, h->loc[i].space);
		bks_put_be32(l + 8, h->loc[i].length);
		bks_put_be64(l + 16, h->loc[i].offset);
	}
	bks_put_be32(b + 36, vhd_checksum(b, VHD_HEADER_SIZE, 36));
}

int vhd_bat_check(uint32_t index, uint32_t e, uint32_t block_size,
		  uint64_t first_data, uint64_t data_end, struct bks_error *err)
{
	uint64_t start = (uint64_t)e * VHD_SECTOR;
	uint64_t len = (uint64_t)vhd_bitmap_bytes(block_size) + block_size;

	if (e == VHD_BAT_UNUSED)
		return 0;
	if (start < first_data || start > data_end || len > data_end - start)
		return bks_error_setmsg(
		    err, EINVAL,
		    "BAT entry %u: block at sector %u (byte 0x%llx, %llu "
		    "bytes) is not between the metadata's end 0x%llx and "
		    "the footer at 0x%llx",
		    index, e, (unsigned long long)start,
		    (unsigned long long)len, (unsigned long long)first_data,
		    (unsigned long long)data_end);
	return 0;
}

bool vhd_parent_time_ok(uint32_t recorded, uint32_t parent_footer_ts,
			int64_t parent_mtime)
{
	if (recorded == parent_footer_ts)
		return true;
	return parent_mtime >= (int64_t)VHD_EPOCH_OFFSET &&
	       (uint64_t)parent_mtime - VHD_EPOCH_OFFSET == recorded;
}

uint32_t vhd_bitmap_run(const unsigned char *bm, uint32_t first, uint32_t end,
			bool *set)
{
	bool v = vhd_bit(bm, first);
	uint32_t n = first + 1;

	*set = v;
	while (n < end) {
		/* Whole bytes at once where aligned. */
		if ((n & 7) == 0 && n + 8 <= end &&
		    bm[n >> 3] == (v ? 0xFF : 0x00)) {
			n += 8;
			continue;
		}
		if (vhd_bit(bm, n) != v)
			break;
		n++;
	}
	return n;
}

/* ---- locators ------------------------------------------------------------ */

/* Append code point cp as UTF-8; false if it does not fit. */
static bool put_utf8(char *out, size_t size, size_t *n, uint32_t cp)
{
	unsigned char b[4];
	size_t k;

	if (cp < 0x80) {
		b[0] = (unsigned char)cp;
		k = 1;
	} else if (cp < 0x800) {
		b[0] = (unsigned char)(0xC0 | cp >> 6);
		b[1] = (unsigned char)(0x80 | (cp & 0x3F));
		k = 2;
	} else if (cp < 0x10000) {
		b[0] = (unsigned char)(0xE0 | cp >> 12);
		b[1] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
		b[2] = (unsigned char)(0x80 | (cp & 0x3F));
		k = 3;
	} else {
		b[0] = (unsigned char)(0xF0 | cp >> 18);
		b[1] = (unsigned char)(0x80 | ((cp >> 12) & 0x3F));
		b[2] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
		b[3] = (unsigned char)(0x80 | (cp & 0x3F));
		k = 4;
	}
	if (*n + k >= size)
		return false;
	memcpy(out + *n, b, k);
	*n += k;
	return true;
}

/* Decode UTF-16 (big- or little-endian) units into UTF-8; stops at NUL. */
static int utf16_decode(const unsigned char *d, size_t units, bool be,
			char *out, size_t size)
{
	size_t n = 0;

	if (size == 0)
		return -EINVAL;
	for (size_t i = 0; i < units; i++) {
		uint32_t u = be ? (uint32_t)(d[2 * i] << 8 | d[2 * i + 1])
				: (uint32_t)(d[2 * i + 1] << 8 | d[2 * i]);

		if (u == 0)
			break;
		if (u >= 0xD800 && u < 0xDC00) {
			uint32_t lo;

			if (++i >= units)
				return -EINVAL;
			lo = be ? (uint32_t)(d[2 * i] << 8 | d[2 * i + 1])
				: (uint32_t)(d[2 * i + 1] << 8 | d[2 * i]);
			if (lo < 0xDC00 || lo >= 0xE000)
				return -EINVAL;
			u = 0x10000 + ((u - 0xD800) << 10) + (lo - 0xDC00);
		} else if (u >= 0xDC00 && u < 0xE000) {
			return -EINVAL;
		}
		if (!put_utf8(out, size, &n, u))
			return -ENAMETOOLONG;
	}
	out[n] = 0;
	return 0;
}

/* Next code point of UTF-8 s at *i; -1 for invalid. */
static int32_t get_utf8(const unsigned char *s, size_t *i)
{
	uint32_t c = s[*i], cp;
	int k;

	if (c < 0x80) {
		(*i)++;
		return (int32_t)c;
	}
	if ((c & 0xE0) == 0xC0) {
		cp = c & 0x1F;
		k = 1;
	} else if ((c & 0xF0) == 0xE0) {
		cp = c & 0x0F;
		k = 2;
	} else if ((c & 0xF8) == 0xF0) {
		cp = c & 0x07;
		k = 3;
	} else {
		return -1;
	}
	for (int j = 1; j <= k; j++) {
		if ((s[*i + j] & 0xC0) != 0x80)
			return -1;
		cp = cp << 6 | (s[*i + j] & 0x3F);
	}
	*i += (size_t)k + 1;
	if (cp > 0x10FFFF || (cp >= 0xD800 && cp < 0xE000))
		return -1;
	return (int32_t)cp;
}

/* UTF-8 into UTF-16 units (be or le) in out (size bytes): bytes used. */
static int utf16_encode(const char *s, bool be, unsigned char *out, size_t size)
{
	size_t i = 0, n = 0;

	while (s[i]) {
		int32_t cp = get_utf8((const unsigned char *)s, &i);
		uint32_t u[2];
		int k = 1;

		if (cp < 0)
			return -EINVAL;
		if (cp >= 0x10000) {
			u[0] = 0xD800 + (((uint32_t)cp - 0x10000) >> 10);
			u[1] = 0xDC00 + (((uint32_t)cp - 0x10000) & 0x3FF);
			k = 2;
		} else {
			u[0] = (uint32_t)cp;
		}
		for (int j = 0; j < k; j++) {
			if (n + 2 > size)
				return -ENAMETOOLONG;
			out[n + (be ? 0 : 1)] = (unsigned char)(u[j] >> 8);
			out[n + (be ? 1 : 0)] = (unsigned char)u[j];
			n += 2;
		}
	}
	return (int)n;
}

int vhd_locator_decode(uint32_t code, const unsigned char *data, size_t len,
		       char *out, size_t size, struct bks_error *err)
{
	char pn[5];
	size_t n = 0;
	int r;

	if (size == 0)
		return -EINVAL;
	if (code == VHD_PLAT_W2KU || code == VHD_PLAT_W2RU) {
		char *p;

		if (len % 2)
			return bks_error_setmsg(err, EINVAL,
						"parent locator %s: odd length "
						"%zu of UTF-16 data",
						vhd_plat_name(code, pn), len);
		r = utf16_decode(data, len / 2, false, out, size);
		if (r < 0)
			return bks_error_setmsg(
			    err, -r == ENAMETOOLONG ? ENAMETOOLONG : EINVAL,
			    "parent locator %s: invalid or "
			    "too long UTF-16 path",
			    vhd_plat_name(code, pn));
		for (p = out; *p; p++)
			if (*p == '\\')
				*p = '/';
		/* A drive letter means nothing here: "C:/x" is "/x". */
		if (((out[0] | 0x20) >= 'a' && (out[0] | 0x20) <= 'z') &&
		    out[1] == ':')
			memmove(out, out + 2, strlen(out + 2) + 1);
		n = strlen(out);
	} else if (code == VHD_PLAT_MACX) {
		size_t i = 0;

		if (len >= 7 && memcmp(data, "file://", 7) == 0)
			i = 7;
		for (; i < len && data[i]; i++) {
			unsigned char c = data[i];

			if (c == '%' && i + 2 < len &&
			    bks_hexdigit(data[i + 1]) >= 0 &&
			    bks_hexdigit(data[i + 2]) >= 0) {
				c = (unsigned char)(bks_hexdigit(data[i + 1])
							<< 4 |
						    bks_hexdigit(data[i + 2]));
				i += 2;
				if (c == 0)
					return bks_error_setmsg(
					    err, EINVAL,
					    "parent locator MacX: %%00 in "
					    "the URL");
			}
			if (n + 1 >= size)
				return bks_error_setmsg(err, ENAMETOOLONG,
							"parent locator MacX: "
							"URL too long");
			out[n++] = (char)c;
		}
		out[n] = 0;
		/* tapdisk writes "file://./rel" for a relative name. */
		if (n >= 2 && out[0] == '.' && out[1] == '/') {
			memmove(out, out + 2, n - 1);
			n -= 2;
		}
	} else {
		return bks_error_setmsg(err, ENOTSUP,
					"parent locator %s: platform code not "
					"supported",
					vhd_plat_name(code, pn));
	}
	if (n == 0)
		return bks_error_setmsg(err, EINVAL,
					"parent locator %s: empty path",
					vhd_plat_name(code, pn));
	return 0;
}

int vhd_locator_encode(uint32_t code, const char *path, unsigned char *out,
		       size_t size)
{
	if (code == VHD_PLAT_W2KU || code == VHD_PLAT_W2RU) {
		char tmp[VHD_LOCATOR_MAX];
		size_t i;
		int n;

		if (strlen(path) + 3 > sizeof(tmp))
			return -ENAMETOOLONG;
		/* Windows paths: absolute ones on a drive, backslashes. */
		snprintf(tmp, sizeof(tmp), "%s%s",
			 code == VHD_PLAT_W2KU && path[0] == '/' ? "C:" : "",
			 code == VHD_PLAT_W2RU && path[0] != '.' ? ".\\" : "");
		i = strlen(tmp);
		for (const char *p = path; *p && i + 1 < sizeof(tmp); p++)
			tmp[i++] = *p == '/' ? '\\' : *p;
		tmp[i] = 0;
		n = utf16_encode(tmp, false, out, size);
		return n;
	}
	if (code == VHD_PLAT_MACX) {
		int n = snprintf((char *)out, size, "file://%s%s",
				 path[0] == '/' ? "" : "./", path);

		if (n < 0 || (size_t)n >= size)
			return -ENAMETOOLONG;
		return n;
	}
	return -EINVAL;
}

int vhd_parent_name_decode(const uint8_t *name, char *out, size_t size)
{
	return utf16_decode(name, VHD_PARENT_NAME_BYTES / 2, true, out, size);
}

int vhd_parent_name_encode(uint8_t *name, const char *utf8)
{
	unsigned char tmp[VHD_PARENT_NAME_BYTES * 4];
	int n = utf16_encode(utf8, true, tmp, sizeof(tmp));

	if (n < 0)
		return n;
	memset(name, 0, VHD_PARENT_NAME_BYTES);
	memcpy(name, tmp,
	       (size_t)n < VHD_PARENT_NAME_BYTES ? (size_t)n
						 : VHD_PARENT_NAME_BYTES);
	return 0;
}

const char *vhd_plat_name(uint32_t code, char buf[5])
{
	for (int i = 0; i < 4; i++) {
		unsigned char c = (unsigned char)(code >> (24 - 8 * i));

		buf[i] = c >= 0x20 && c < 0x7F ? (char)c : '?';
	}
	buf[4] = 0;
	return buf;
}

const char *vhd_type_name(uint32_t type)
{
	switch (type) {
	case VHD_TYPE_FIXED:
		return "fixed";
	case VHD_TYPE_DYNAMIC:
		return "dynamic";
	case VHD_TYPE_DIFF:
		return "differencing";
	default:
		return "unknown";
	}
}

void vhd_uuid_str(const uint8_t u[16], char out[37])
{
	snprintf(out, 37,
		 "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-"
		 "%02x%02x%02x%02x%02x%02x",
		 u[0], u[1], u[2], u[3], u[4], u[5], u[6], u[7], u[8], u[9],
		 u[10], u[11], u[12], u[13], u[14], u[15]);
}

void vhd_footer_new(struct vhd_footer *f, uint64_t size, uint32_t type)
{
	memset(f, 0, sizeof(*f));
	f->features = 2;
	f->version = 0x00010000;
	f->data_offset = type == VHD_TYPE_FIXED ? UINT64_MAX : VHD_FOOTER_SIZE;
	f->timestamp = (uint32_t)((uint64_t)time(NULL) - VHD_EPOCH_OFFSET);
	memcpy(f->creator_app, "bks ", 4);
	f->creator_version = 0x00010000u;
	f->creator_os = 0x5769326Bu; /* "Wi2k" */
	f->original_size = f->current_size = size;
	vhd_geometry(size / VHD_SECTOR, &f->cylinders, &f->heads,
		     &f->sectors_per_track);
	f->disk_type = type;
	if (getrandom(f->uuid, sizeof(f->uuid), 0) != sizeof(f->uuid)) {
		uint64_t t = (uint64_t)time(NULL) ^ (uint64_t)getpid() << 32;

		memcpy(f->uuid, &t, sizeof(t));
	}
	f->uuid[6] = (uint8_t)((f->uuid[6] & 0x0F) | 0x40);
	f->uuid[8] = (uint8_t)((f->uuid[8] & 0x3F) | 0x80);
}
