/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The blkif ring export: the two ring layouts a backend serves.  The
 * offsets are those of xen/include/public/io/blkif.h's structs as a
 * 64-bit (x86_64-abi) and a 32-bit (x86_32-abi, where uint64_t is 4-byte
 * aligned) guest lays them out; tests/unit/test-blkif.c checks the
 * native one against Xen's own header.  Fields are read from our private
 * copy of an entry, little-endian, never from the shared page.  See
 * internal.h.
 */
#include <errno.h>
#include <string.h>

#include "internal.h"

static const struct blkif_layout layout_x86_64 = {
    .name = "x86_64-abi",
    .entry = 112, /* request 112, response 16 */
    .rw_id = 8,
    .rw_sector = 16,
    .rw_seg = 24,
    .d_id = 8,
    .d_sector = 16,
    .d_nr = 24,
    .i_nseg = 2,
    .i_id = 8,
    .i_sector = 16,
    .i_grefs = 28,
    .r_id = 0,
    .r_op = 8,
    .r_status = 10,
};

static const struct blkif_layout layout_x86_32 = {
    .name = "x86_32-abi",
    .entry = 108, /* request 108, response 12 */
    .rw_id = 4,
    .rw_sector = 12,
    .rw_seg = 20,
    .d_id = 4,
    .d_sector = 12,
    .d_nr = 20,
    .i_nseg = 2,
    .i_id = 4,
    .i_sector = 12,
    .i_grefs = 24,
    .r_id = 0,
    .r_op = 8,
    .r_status = 10,
};

const struct blkif_layout *abi_layout(enum bks_blkif_abi abi)
{
	return abi == BKS_BLKIF_ABI_X86_32 ? &layout_x86_32 : &layout_x86_64;
}

int bks_blkif_abi_parse(const char *protocol, size_t len,
			enum bks_blkif_abi *out, struct bks_error *err)
{
	static const struct {
		const char *name;
		enum bks_blkif_abi abi;
	} names[] = {
	    {"x86_64-abi", BKS_BLKIF_ABI_X86_64},
	    {"x86_32-abi", BKS_BLKIF_ABI_X86_32},
	};
	char shown[24];
	size_t n;

	if (!protocol || len == 0) {
		*out = BKS_BLKIF_ABI_X86_64;
		return 0;
	}
	for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
		if (strlen(names[i].name) == len &&
		    memcmp(names[i].name, protocol, len) == 0) {
			*out = names[i].abi;
			return 0;
		}
	}
	n = len < sizeof(shown) - 1 ? len : sizeof(shown) - 1;
	memcpy(shown, protocol, n);
	shown[n] = '\0';
	bks_sanitize_line(shown);
	return bks_error_setmsg(err, EPROTONOSUPPORT,
				"blkif: protocol '%s%s' is not served "
				"(x86_64-abi, x86_32-abi)",
				shown, n < len ? "..." : "");
}

static uint16_t get16(const unsigned char *p)
{
	return (uint16_t)(p[0] | p[1] << 8);
}

static uint32_t get32(const unsigned char *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
	       (uint32_t)p[3] << 24;
}

static uint64_t get64(const unsigned char *p)
{
	return (uint64_t)get32(p) | (uint64_t)get32(p + 4) << 32;
}

static void put16(unsigned char *p, uint16_t v)
{
	p[0] = (unsigned char)v;
	p[1] = (unsigned char)(v >> 8);
}

static void put64(unsigned char *p, uint64_t v)
{
	for (int i = 0; i < 8; i++)
		p[i] = (unsigned char)(v >> (8 * i));
}

/* One 8-byte segment: gref, first_sect, last_sect, padding. */
static void decode_seg(const unsigned char *p, struct blkif_seg *s)
{
	s->gref = get32(p);
	s->first = p[4];
	s->last = p[5];
}

void abi_decode_segs(const unsigned char *raw, unsigned int n,
		     struct blkif_seg *out)
{
	for (unsigned int i = 0; i < n; i++)
		decode_seg(raw + 8 * i, &out[i]);
}

void abi_decode(const struct blkif_layout *lay, const unsigned char *e,
		struct blkif_msg *m)
{
	memset(m, 0, sizeof(*m));
	m->op = e[0];
	m->rsp_op = m->op;
	switch (m->op) {
	case BKS_BLKIF_OP_DISCARD:
		m->flag = e[1];
		m->id = get64(e + lay->d_id);
		m->sector = get64(e + lay->d_sector);
		m->nsectors = get64(e + lay->d_nr);
		break;
	case BKS_BLKIF_OP_INDIRECT:
		m->rsp_op = e[1]; /* indirect_op */
		m->nseg = get16(e + lay->i_nseg);
		m->id = get64(e + lay->i_id);
		m->sector = get64(e + lay->i_sector);
		for (unsigned int i = 0; i < BKS_BLKIF_MAX_INDIRECT_PAGES; i++)
			m->igref[i] = get32(e + lay->i_grefs + 4 * i);
		break;
	default:
		/* read, write, flush, barrier; an unknown op has an id here */
		m->nseg = e[1];
		m->id = get64(e + lay->rw_id);
		m->sector = get64(e + lay->rw_sector);
		for (unsigned int i = 0; i < m->nseg && i < BKS_BLKIF_MAX_SEGS;
		     i++)
			decode_seg(e + lay->rw_seg + 8 * i, &m->seg[i]);
		break;
	}
}

void abi_encode_rsp(const struct blkif_layout *lay, unsigned char *e,
		    uint64_t id, uint8_t op, int16_t status)
{
	put64(e + lay->r_id, id);
	e[lay->r_op] = op;
	put16(e + lay->r_status, (uint16_t)status);
}
