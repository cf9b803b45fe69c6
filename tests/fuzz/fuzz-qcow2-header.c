/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * libFuzzer target for the qcow2 format code (libblkstack/qcow2-format.c):
 * an image's first bytes are untrusted.  The input is the start of an
 * image file of size bytes.  Properties checked beyond "no crash, no leak,
 * no UB" (ASan and UBSan are on):
 *   - a refusal has a one-line, non-empty message;
 *   - an accepted header has consistent geometry, its L1 table, refcount
 *     table and backing name inside the file;
 *   - every 8 bytes of the input decode as L1, L2 and refcount table
 *     entries without harm, and a decoded L2 entry's offset fits its type;
 *   - an image built from parameters taken from the input parses back
 *     with those parameters.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "blkstack/endian.h"
#include "blkstack/qcow2-format.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check_msg(const struct bks_error *err)
{
	if (err->msg[0] == '\0' || strchr(err->msg, '\n'))
		abort();
}

static void entries(const struct bks_qcow2_header *h, const uint8_t *data,
		    size_t size, uint64_t file_size)
{
	const struct bks_qcow2_geom *g = &h->g;

	for (size_t i = 0; i + 8 <= size && i < 4096; i += 8) {
		uint64_t e = bks_get_be64(data + i), off;
		struct bks_error err = {0};
		struct bks_qcow2_l2 l2;
		bool copied;

		if (bks_qcow2_l2_decode(g, e, &l2, &err) == 0) {
			if (l2.type != BKS_QCOW2_COMPRESSED &&
			    (l2.host_offset & (g->cluster_size - 1)))
				abort();
			if (bks_qcow2_l2_check_bounds(g, &l2, file_size,
						      &err) == 0 &&
			    l2.type != BKS_QCOW2_UNALLOCATED &&
			    l2.type != BKS_QCOW2_ZERO_PLAIN &&
			    l2.host_offset >= file_size)
				abort();
		} else {
			check_msg(&err);
		}
		if (bks_qcow2_l1_decode(g, e, &off, &copied, &err) == 0 &&
		    (off & (g->cluster_size - 1)))
			abort();
		if (bks_qcow2_reftable_decode(g, e, &off, &err) == 0 &&
		    (off & (g->cluster_size - 1)))
			abort();
	}
	/* Refcounts of every width over the input as a block. */
	if (size >= g->cluster_size) {
		unsigned char *block = malloc(g->cluster_size);

		memcpy(block, data, g->cluster_size);
		for (uint64_t i = 0; i < g->rb_entries && i < 512; i++) {
			uint64_t v = bks_qcow2_refcount_get(g, block, i);

			if (v > g->refcount_max)
				abort();
			bks_qcow2_refcount_set(g, block, i, v + 1);
			if (bks_qcow2_refcount_get(g, block, i) !=
			    ((v + 1) & g->refcount_max))
				abort();
		}
		free(block);
	}
}

/* Build an image from the input's first bytes; it must parse back. */
static void build(const uint8_t *data, size_t size)
{
	struct bks_qcow2_create c = {0};
	struct bks_qcow2_header *h;
	struct bks_error err = {0};
	char backing[64] = "", fmt[8] = "";
	unsigned char *buf;
	size_t len;

	if (size < 16)
		return;
	c.version = data[0] % 4;
	c.cluster_bits = data[1] % 23;
	c.refcount_order = data[2] % 8;
	c.lazy_refcounts = data[3] & 1;
	/* Sizes up to 64 GiB, any 512 multiple: metadata stays small. */
	c.size = (bks_get_be64(data + 8) & ((1ull << 36) - 1)) & ~511ull;
	if (c.cluster_bits && c.cluster_bits < 12 && c.size > (1ull << 30))
		c.size >>= 6;
	if (data[4] & 1) {
		size_t n = data[5] % (sizeof(backing) - 1);

		if (n > size - 16)
			n = size - 16;
		memcpy(backing, data + 16, n);
		backing[n] = '\0'; /* a NUL inside shortens it */
		c.backing_file = backing[0] ? backing : NULL;
		if ((data[4] & 2) && c.backing_file) {
			strcpy(fmt, data[4] & 4 ? "raw" : "qcow2");
			c.backing_format = fmt;
		}
	}
	if (bks_qcow2_build(&c, &buf, &len, &err) < 0) {
		check_msg(&err);
		return;
	}
	h = malloc(sizeof(*h));
	if (bks_qcow2_header_parse(buf, len, len, h, &err) < 0)
		abort();
	if (h->size != c.size || h->version != (c.version ? c.version : 3u) ||
	    h->cluster_bits != (c.cluster_bits ? c.cluster_bits : 16u) ||
	    h->refcount_order != c.refcount_order ||
	    h->has_backing != (c.backing_file != NULL) ||
	    (c.backing_file && strcmp(h->backing_file, c.backing_file)) ||
	    (c.backing_format && strcmp(h->backing_format, c.backing_format)))
		abort();
	if (bks_qcow2_check_features(h, BKS_QCOW2_OPEN_WRITE, &err) < 0)
		abort();
	free(h);
	free(buf);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct bks_qcow2_header *h = malloc(sizeof(*h));
	struct bks_error err = {0};
	/* The file is the input, or (last byte odd) longer than it. */
	uint64_t file_size = size && (data[size - 1] & 1)
				 ? size + ((uint64_t)data[0] << 20)
				 : size;
	int64_t need = bks_qcow2_header_need(data, size, file_size, &err);

	if (need < 0) {
		check_msg(&err);
	} else if (bks_qcow2_header_parse(data, size, file_size, h, &err) < 0) {
		check_msg(&err);
	} else {
		if (h->g.cluster_size != 1ull << h->cluster_bits ||
		    h->l1_table_offset + (uint64_t)h->l1_size * 8 > file_size ||
		    h->refcount_table_offset +
			    ((uint64_t)h->refcount_table_clusters
			     << h->cluster_bits) >
			file_size ||
		    (h->has_backing &&
		     strlen(h->backing_file) != h->backing_file_size))
			abort();
		if (bks_qcow2_check_features(
			h, BKS_QCOW2_OPEN_WRITE | BKS_QCOW2_HAVE_ZSTD, &err) <
		    0)
			check_msg(&err);
		entries(h, data, size, file_size);
	}
	free(h);
	build(data, size);
	return 0;
}
