/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The qcow2 on-disk format: see blkstack/qcow2-format.h.  Pure functions on
 * buffers; every value read from an image is checked before it is used.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "blkstack/endian.h"
#include "blkstack/error.h"
#include "blkstack/qcow2-format.h"

void bks_qcow2_geom_init(struct bks_qcow2_geom *g, uint32_t cluster_bits,
			 uint32_t refcount_order)
{
	memset(g, 0, sizeof(*g));
	g->cluster_bits = cluster_bits;
	g->cluster_size = 1ull << cluster_bits;
	g->l2_bits = cluster_bits - 3;
	g->l2_entries = 1ull << g->l2_bits;
	g->refcount_order = refcount_order;
	g->rb_bits = cluster_bits + 3 - refcount_order;
	g->rb_entries = 1ull << g->rb_bits;
	g->refcount_max = refcount_order == 6
			      ? UINT64_MAX
			      : (1ull << (1u << refcount_order)) - 1;
	g->csize_shift = 62 - (cluster_bits - 8);
	g->csize_mask = (1ull << (cluster_bits - 8)) - 1;
	g->coffset_mask = (1ull << g->csize_shift) - 1;
}

uint64_t bks_qcow2_l1_entries_for(const struct bks_qcow2_geom *g, uint64_t size)
{
	uint32_t shift = g->cluster_bits + g->l2_bits;

	return (size >> shift) + ((size & ((1ull << shift) - 1)) != 0);
}

bool bks_qcow2_probe(const void *buf, size_t len)
{
	return len >= 4 && bks_get_be32(buf) == BKS_QCOW2_MAGIC;
}

int64_t bks_qcow2_header_need(const unsigned char *buf, size_t len,
			      uint64_t file_size, struct bks_error *err)
{
	uint32_t cb;
	uint64_t need;

	if (len < 24 || file_size < BKS_QCOW2_V2_HEADER_LEN)
		return bks_error_setmsg(err, EINVAL,
					"qcow2 header: file of %" PRIu64
					" bytes is too small for a header",
					file_size);
	if (!bks_qcow2_probe(buf, len))
		return bks_error_setmsg(err, EINVAL,
					"qcow2 header: magic 0x%08x is not "
					"qcow2's 0x%08x",
					bks_get_be32(buf), BKS_QCOW2_MAGIC);
	cb = bks_get_be32(buf + BKS_QCOW2_OFF_CLUSTER_BITS);
	if (cb < BKS_QCOW2_MIN_CLUSTER_BITS || cb > BKS_QCOW2_MAX_CLUSTER_BITS)
		return bks_error_setmsg(err, EINVAL,
					"qcow2 header: cluster_bits %" PRIu32
					" is outside 9..21",
					cb);
	need = 1ull << cb;
	return (int64_t)(need < file_size ? need : file_size);
}

/* Is [off, off + len) cluster-aligned (at off) and inside the file? */
static int check_region(const struct bks_qcow2_geom *g, uint64_t file_size,
			const char *what, uint64_t off, uint64_t len,
			struct bks_error *err)
{
	if (off & (g->cluster_size - 1))
		return bks_error_setmsg(err, EINVAL,
					"qcow2 header: %s offset 0x%" PRIx64
					" is not aligned to the cluster size "
					"%" PRIu64,
					what, off, g->cluster_size);
	if (off > BKS_QCOW2_MAX_HOST_OFFSET || len > file_size ||
	    off > file_size - len)
		return bks_error_setmsg(err, EINVAL,
					"qcow2 header: %s at 0x%" PRIx64
					" (%" PRIu64 " bytes) is past the end "
					"of the file (%" PRIu64 " bytes)",
					what, off, len, file_size);
	return 0;
}

/* One header extension at buf[pos], of len bytes; stored in h. */
static int parse_ext(struct bks_qcow2_header *h, uint32_t type,
		     const unsigned char *d, uint32_t dlen,
		     struct bks_error *err)
{
	switch (type) {
	case BKS_QCOW2_EXT_BACKING_FORMAT:
		if (dlen > BKS_QCOW2_MAX_BACKING_FMT)
			return bks_error_setmsg(
			    err, EINVAL,
			    "qcow2 header extension backing format: length "
			    "%" PRIu32 " is over %u",
			    dlen, BKS_QCOW2_MAX_BACKING_FMT);
		memcpy(h->backing_format, d, dlen);
		h->backing_format[dlen] = 0;
		if (strlen(h->backing_format) != dlen)
			return bks_error_setmsg(
			    err, EINVAL,
			    "qcow2 header extension backing "
			    "format: has a NUL byte");
		bks_sanitize_line(h->backing_format);
		h->has_backing_format = true;
		break;
	case BKS_QCOW2_EXT_FEATURE_TABLE:
		if (dlen % 48)
			return bks_error_setmsg(
			    err, EINVAL,
			    "qcow2 header extension feature table: length "
			    "%" PRIu32 " is not a multiple of 48",
			    dlen);
		for (uint32_t i = 0; i < dlen / 48; i++) {
			struct bks_qcow2_feature_name *f;
			const unsigned char *e = d + 48 * i;

			if (h->nfeature_names >= BKS_QCOW2_MAX_FEATURE_NAMES)
				break;
			f = &h->feature_names[h->nfeature_names++];
			f->type = e[0];
			f->bit = e[1];
			memcpy(f->name, e + 2, 46);
			f->name[46] = 0;
			bks_sanitize_line(f->name);
		}
		break;
	case BKS_QCOW2_EXT_BITMAPS:
		if (dlen < 24)
			return bks_error_setmsg(
			    err, EINVAL,
			    "qcow2 header extension bitmaps: length %" PRIu32
			    " is under 24",
			    dlen);
		h->has_bitmaps_ext = true;
		h->nb_bitmaps = bks_get_be32(d);
		h->bitmap_directory_size = bks_get_be64(d + 8);
		h->bitmap_directory_offset = bks_get_be64(d + 16);
		break;
	case BKS_QCOW2_EXT_CRYPTO:
		h->has_crypto_ext = true;
		break;
	case BKS_QCOW2_EXT_DATA_FILE:
		h->has_data_file_ext = true;
		break;
	default:
		/* Unknown extensions are ignored (the spec says so). */
		break;
	}
	return 0;
}

/* The extensions from h->ext_end (their start) to the end extension. */
static int parse_exts(struct bks_qcow2_header *h, const unsigned char *buf,
		      size_t len, struct bks_error *err)
{
	uint64_t pos = h->ext_end;

	/* Up to the end extension; a header without one ends at the
	 * cluster's (or the file's) end, as qemu reads it. */
	while (pos + 8 <= len) {
		uint32_t type = bks_get_be32(buf + pos);
		uint32_t dlen = bks_get_be32(buf + pos + 4);
		int r;

		pos += 8;
		if (type == BKS_QCOW2_EXT_END)
			break;
		if (dlen > len - pos)
			return bks_error_setmsg(
			    err, EINVAL,
			    "qcow2 header extension 0x%08" PRIx32 " at %" PRIu64
			    ": length %" PRIu32
			    " runs past the first cluster (%zu bytes)",
			    type, pos - 8, dlen, len);
		r = parse_ext(h, type, buf + pos, dlen, err);
		if (r < 0)
			return r;
		pos += ((uint64_t)dlen + 7) & ~7ull;
	}
	h->ext_end = (uint32_t)(pos < len ? pos : len);
	return 0;
}

static int parse_fields(struct bks_qcow2_header *h, const unsigned char *buf,
			size_t len, struct bks_error *err)
{
	h->version = bks_get_be32(buf + BKS_QCOW2_OFF_VERSION);
	if (h->version != 2 && h->version != 3)
		return bks_error_setmsg(err, EINVAL,
					"qcow2 header: version %" PRIu32
					" is not 2 or 3",
					h->version);
	h->backing_file_offset =
	    bks_get_be64(buf + BKS_QCOW2_OFF_BACKING_OFFSET);
	h->backing_file_size = bks_get_be32(buf + BKS_QCOW2_OFF_BACKING_SIZE);
	h->cluster_bits = bks_get_be32(buf + BKS_QCOW2_OFF_CLUSTER_BITS);
	h->size = bks_get_be64(buf + BKS_QCOW2_OFF_SIZE);
	h->crypt_method = bks_get_be32(buf + BKS_QCOW2_OFF_CRYPT_METHOD);
	h->l1_size = bks_get_be32(buf + BKS_QCOW2_OFF_L1_SIZE);
	h->l1_table_offset = bks_get_be64(buf + BKS_QCOW2_OFF_L1_OFFSET);
	h->refcount_table_offset =
	    bks_get_be64(buf + BKS_QCOW2_OFF_REFTABLE_OFFSET);
	h->refcount_table_clusters =
	    bks_get_be32(buf + BKS_QCOW2_OFF_REFTABLE_CLUSTERS);
	h->nb_snapshots = bks_get_be32(buf + BKS_QCOW2_OFF_NB_SNAPSHOTS);
	h->snapshots_offset =
	    bks_get_be64(buf + BKS_QCOW2_OFF_SNAPSHOTS_OFFSET);
	h->refcount_order = BKS_QCOW2_DEFAULT_REFCOUNT_ORDER;
	h->header_length = BKS_QCOW2_V2_HEADER_LEN;
	if (h->version == 2)
		return 0;
	if (len < BKS_QCOW2_V3_HEADER_MIN)
		return bks_error_setmsg(err, EINVAL,
					"qcow2 header: version 3 needs %u "
					"bytes, the file has %zu",
					BKS_QCOW2_V3_HEADER_MIN, len);
	h->incompatible_features = bks_get_be64(buf + BKS_QCOW2_OFF_INCOMPAT);
	h->compatible_features = bks_get_be64(buf + BKS_QCOW2_OFF_COMPAT);
	h->autoclear_features = bks_get_be64(buf + BKS_QCOW2_OFF_AUTOCLEAR);
	h->refcount_order = bks_get_be32(buf + BKS_QCOW2_OFF_REFCOUNT_ORDER);
	h->header_length = bks_get_be32(buf + BKS_QCOW2_OFF_HEADER_LENGTH);
	if (h->header_length < BKS_QCOW2_V3_HEADER_MIN ||
	    h->header_length % 8 || h->header_length > len)
		return bks_error_setmsg(err, EINVAL,
					"qcow2 header: header_length %" PRIu32
					" is not a multiple of 8 in %u..%zu",
					h->header_length,
					BKS_QCOW2_V3_HEADER_MIN, len);
	if (h->header_length > BKS_QCOW2_OFF_COMPRESSION_TYPE)
		h->compression_type = buf[BKS_QCOW2_OFF_COMPRESSION_TYPE];
	return 0;
}

static int check_fields(struct bks_qcow2_header *h, uint64_t file_size,
			struct bks_error *err)
{
	struct bks_qcow2_geom *g = &h->g;
	uint64_t need;
	int r;

	if (h->refcount_order > BKS_QCOW2_MAX_REFCOUNT_ORDER)
		return bks_error_setmsg(
		    err, EINVAL,
		    "qcow2 header: refcount_order %" PRIu32 " is over %u",
		    h->refcount_order, BKS_QCOW2_MAX_REFCOUNT_ORDER);
	bks_qcow2_geom_init(g, h->cluster_bits, h->refcount_order);
	if (h->size > BKS_QCOW2_MAX_SIZE)
		return bks_error_setmsg(
		    err, EINVAL, "qcow2 header: size %" PRIu64 " is over 2^62",
		    h->size);
	if ((uint64_t)h->l1_size * 8 > BKS_QCOW2_MAX_L1_BYTES)
		return bks_error_setmsg(err, EINVAL,
					"qcow2 header: l1_size %" PRIu32
					" is over %u entries",
					h->l1_size, BKS_QCOW2_MAX_L1_BYTES / 8);
	need = bks_qcow2_l1_entries_for(g, h->size);
	if (h->l1_size < need)
		return bks_error_setmsg(err, EINVAL,
					"qcow2 header: l1_size %" PRIu32
					" is too small for size %" PRIu64
					" (needs %" PRIu64 ")",
					h->l1_size, h->size, need);
	r = check_region(g, file_size, "L1 table", h->l1_table_offset,
			 (uint64_t)h->l1_size * 8, err);
	if (r < 0)
		return r;
	if (h->refcount_table_clusters == 0 ||
	    ((uint64_t)h->refcount_table_clusters << h->cluster_bits) >
		BKS_QCOW2_MAX_REFTABLE_BYTES)
		return bks_error_setmsg(
		    err, EINVAL,
		    "qcow2 header: refcount_table_clusters %" PRIu32
		    " is 0 or over %u bytes",
		    h->refcount_table_clusters, BKS_QCOW2_MAX_REFTABLE_BYTES);
	r = check_region(
	    g, file_size, "refcount table", h->refcount_table_offset,
	    (uint64_t)h->refcount_table_clusters << h->cluster_bits, err);
	if (r < 0)
		return r;
	if (h->nb_snapshots > BKS_QCOW2_MAX_SNAPSHOTS)
		return bks_error_setmsg(
		    err, EINVAL,
		    "qcow2 header: nb_snapshots %" PRIu32 " is over %u",
		    h->nb_snapshots, BKS_QCOW2_MAX_SNAPSHOTS);
	if (h->nb_snapshots) {
		/* Each entry is at least 40 bytes. */
		r = check_region(g, file_size, "snapshot table",
				 h->snapshots_offset,
				 (uint64_t)h->nb_snapshots * 40, err);
		if (r < 0)
			return r;
	}
	if (h->compression_type != BKS_QCOW2_COMPRESSION_ZLIB &&
	    !(h->incompatible_features & BKS_QCOW2_INCOMPAT_COMPRESSION))
		return bks_error_setmsg(err, EINVAL,
					"qcow2 header: compression_type %u "
					"without the incompatible bit 3",
					h->compression_type);
	return 0;
}

static int parse_backing(struct bks_qcow2_header *h, const unsigned char *buf,
			 size_t len, struct bks_error *err)
{
	uint64_t off = h->backing_file_offset;
	uint32_t n = h->backing_file_size;

	if (off == 0)
		return 0;
	if (n == 0 || n > BKS_QCOW2_MAX_BACKING_NAME)
		return bks_error_setmsg(err, EINVAL,
					"qcow2 header: backing_file_size "
					"%" PRIu32 " is outside 1..%u",
					n, BKS_QCOW2_MAX_BACKING_NAME);
	if (off > len || n > len - off)
		return bks_error_setmsg(err, EINVAL,
					"qcow2 header: backing file name at "
					"%" PRIu64 " (%" PRIu32
					" bytes) is outside the first "
					"cluster (%zu bytes)",
					off, n, len);
	if (off < h->header_length)
		return bks_error_setmsg(err, EINVAL,
					"qcow2 header: backing_file_offset "
					"%" PRIu64 " is inside the header",
					off);
	if (memchr(buf + off, 0, n))
		return bks_error_setmsg(err, EINVAL,
					"qcow2 header: the backing file name "
					"has a NUL byte");
	memcpy(h->backing_file, buf + off, n);
	h->backing_file[n] = 0;
	h->has_backing = true;
	return 0;
}

int bks_qcow2_header_parse(const unsigned char *buf, size_t len,
			   uint64_t file_size, struct bks_qcow2_header *h,
			   struct bks_error *err)
{
	int64_t need;
	int r;

	memset(h, 0, sizeof(*h));
	need = bks_qcow2_header_need(buf, len, file_size, err);
	if (need < 0)
		return (int)need;
	if (len < (uint64_t)need)
		return bks_error_setmsg(err, EINVAL,
					"qcow2 header: %zu bytes given, the "
					"first cluster has %" PRId64,
					len, need);
	len = (size_t)need;
	r = parse_fields(h, buf, len, err);
	if (r == 0)
		r = check_fields(h, file_size, err);
	if (r < 0)
		return r;
	h->ext_end = h->header_length;
	r = parse_exts(h, buf, len, err);
	if (r == 0)
		r = parse_backing(h, buf, len, err);
	return r;
}

const char *bks_qcow2_feature_name(const struct bks_qcow2_header *h,
				   unsigned int type, unsigned int bit)
{
	for (unsigned int i = 0; i < h->nfeature_names; i++)
		if (h->feature_names[i].type == type &&
		    h->feature_names[i].bit == bit)
			return h->feature_names[i].name;
	return NULL;
}

int bks_qcow2_check_features(const struct bks_qcow2_header *h,
			     unsigned int flags, struct bks_error *err)
{
	uint64_t unknown = h->incompatible_features & ~BKS_QCOW2_INCOMPAT_KNOWN;
	bool write = flags & BKS_QCOW2_OPEN_WRITE;

	if (unknown) {
		unsigned int bit = (unsigned int)__builtin_ctzll(unknown);
		const char *name = bks_qcow2_feature_name(h, 0, bit);

		return bks_error_setmsg(err, ENOTSUP,
					"qcow2: unknown incompatible feature "
					"bit %u (%s) in 0x%" PRIx64,
					bit, name ? name : "no name",
					h->incompatible_features);
	}
	if (h->crypt_method || h->has_crypto_ext)
		return bks_error_setmsg(err, ENOTSUP,
					"qcow2: encryption (crypt_method "
					"%" PRIu32 ") is not supported",
					h->crypt_method);
	if (h->incompatible_features & BKS_QCOW2_INCOMPAT_DATA_FILE)
		return bks_error_setmsg(err, ENOTSUP,
					"qcow2: an external data file "
					"(incompatible bit 2) is not "
					"supported");
	if (h->incompatible_features & BKS_QCOW2_INCOMPAT_EXTL2)
		return bks_error_setmsg(err, ENOTSUP,
					"qcow2: extended L2 entries "
					"(incompatible bit 4, subclusters) are "
					"not supported");
	if (h->compression_type == BKS_QCOW2_COMPRESSION_ZSTD &&
	    !(flags & BKS_QCOW2_HAVE_ZSTD))
		return bks_error_setmsg(err, ENOTSUP,
					"qcow2: compression type zstd is not "
					"built in");
	if (h->compression_type > BKS_QCOW2_COMPRESSION_ZSTD)
		return bks_error_setmsg(err, ENOTSUP,
					"qcow2: compression type %u is not "
					"zlib (0) or zstd (1)",
					h->compression_type);
	if (!write)
		return 0;
	if (h->incompatible_features & BKS_QCOW2_INCOMPAT_CORRUPT)
		return bks_error_setmsg(err, EROFS,
					"qcow2: the corrupt bit is set: open "
					"it read-only, or repair it (qemu-img "
					"check -r all, blkstack-img check "
					"--repair)");
	if (h->incompatible_features & BKS_QCOW2_INCOMPAT_DIRTY)
		return bks_error_setmsg(err, EROFS,
					"qcow2: the dirty bit is set (lazy "
					"refcounts not flushed): open it "
					"read-only, or repair it (qemu-img "
					"check -r all, blkstack-img check "
					"--repair)");
	if (h->nb_snapshots)
		return bks_error_setmsg(
		    err, EROFS,
		    "qcow2: %" PRIu32 " internal snapshot(s): writing an image "
		    "with snapshots is not supported; open "
		    "it read-only",
		    h->nb_snapshots);
	return 0;
}

/* ---- entries ------------------------------------------------------------- */

int bks_qcow2_l2_decode(const struct bks_qcow2_geom *g, uint64_t entry,
			struct bks_qcow2_l2 *out, struct bks_error *err)
{
	memset(out, 0, sizeof(*out));
	out->copied = entry & BKS_QCOW2_OFLAG_COPIED;
	if (entry & BKS_QCOW2_OFLAG_COMPRESSED) {
		uint64_t sectors;

		if (out->copied)
			return bks_error_setmsg(err, EINVAL,
						"L2 entry 0x%016" PRIx64
						": compressed with the copied "
						"flag",
						entry);
		out->type = BKS_QCOW2_COMPRESSED;
		out->host_offset = entry & g->coffset_mask;
		sectors = ((entry >> g->csize_shift) & g->csize_mask) + 1;
		out->csize = sectors * 512 - (out->host_offset & 511);
		if (out->host_offset == 0 ||
		    out->host_offset > BKS_QCOW2_MAX_HOST_OFFSET)
			return bks_error_setmsg(err, EINVAL,
						"L2 entry 0x%016" PRIx64
						": compressed data offset "
						"0x%" PRIx64 " is invalid",
						entry, out->host_offset);
		return 0;
	}
	if (entry & BKS_QCOW2_L2_STD_RESERVED)
		return bks_error_setmsg(err, EINVAL,
					"L2 entry 0x%016" PRIx64
					": reserved bits 0x%" PRIx64 " set",
					entry,
					entry & BKS_QCOW2_L2_STD_RESERVED);
	out->host_offset = entry & BKS_QCOW2_OFFSET_MASK;
	if (out->host_offset & (g->cluster_size - 1))
		return bks_error_setmsg(err, EINVAL,
					"L2 entry 0x%016" PRIx64
					": host offset 0x%" PRIx64
					" is not cluster-aligned",
					entry, out->host_offset);
	if (entry & BKS_QCOW2_OFLAG_ZERO)
		out->type = out->host_offset ? BKS_QCOW2_ZERO_ALLOC
					     : BKS_QCOW2_ZERO_PLAIN;
	else
		out->type =
		    out->host_offset ? BKS_QCOW2_NORMAL : BKS_QCOW2_UNALLOCATED;
	return 0;
}

int bks_qcow2_l2_check_bounds(const struct bks_qcow2_geom *g,
			      const struct bks_qcow2_l2 *l2, uint64_t file_size,
			      struct bks_error *err)
{
	switch (l2->type) {
	case BKS_QCOW2_NORMAL:
	case BKS_QCOW2_ZERO_ALLOC:
		(void)g;
		if (l2->host_offset >= file_size)
			return bks_error_setmsg(err, EINVAL,
						"L2 entry: host cluster at "
						"0x%" PRIx64
						" is past the end of the file "
						"(%" PRIu64 " bytes)",
						l2->host_offset, file_size);
		return 0;
	case BKS_QCOW2_COMPRESSED:
		if (l2->host_offset >= file_size)
			return bks_error_setmsg(err, EINVAL,
						"L2 entry: compressed data at "
						"0x%" PRIx64
						" is past the end of the file "
						"(%" PRIu64 " bytes)",
						l2->host_offset, file_size);
		return 0;
	default:
		return 0;
	}
}

int bks_qcow2_l1_decode(const struct bks_qcow2_geom *g, uint64_t entry,
			uint64_t *l2_offset, bool *copied,
			struct bks_error *err)
{
	*l2_offset = entry & BKS_QCOW2_OFFSET_MASK;
	*copied = entry & BKS_QCOW2_OFLAG_COPIED;
	if (entry & BKS_QCOW2_L1_RESERVED)
		return bks_error_setmsg(err, EINVAL,
					"L1 entry 0x%016" PRIx64
					": reserved bits 0x%" PRIx64 " set",
					entry, entry & BKS_QCOW2_L1_RESERVED);
	if (*l2_offset & (g->cluster_size - 1))
		return bks_error_setmsg(err, EINVAL,
					"L1 entry 0x%016" PRIx64
					": L2 table offset 0x%" PRIx64
					" is not cluster-aligned",
					entry, *l2_offset);
	return 0;
}

int bks_qcow2_reftable_decode(const struct bks_qcow2_geom *g, uint64_t entry,
			      uint64_t *rb_offset, struct bks_error *err)
{
	*rb_offset = entry & ~BKS_QCOW2_REFTABLE_RESERVED;
	if (entry & BKS_QCOW2_REFTABLE_RESERVED)
		return bks_error_setmsg(err, EINVAL,
					"refcount table entry 0x%016" PRIx64
					": reserved bits 0x%" PRIx64 " set",
					entry,
					entry & BKS_QCOW2_REFTABLE_RESERVED);
	if ((*rb_offset & (g->cluster_size - 1)) ||
	    *rb_offset > BKS_QCOW2_MAX_HOST_OFFSET)
		return bks_error_setmsg(err, EINVAL,
					"refcount table entry 0x%016" PRIx64
					": refcount block offset 0x%" PRIx64
					" is not cluster-aligned or too large",
					entry, *rb_offset);
	return 0;
}

uint64_t bks_qcow2_l2_make(uint64_t host_offset, bool copied)
{
	return (host_offset & BKS_QCOW2_OFFSET_MASK) |
	       (copied ? BKS_QCOW2_OFLAG_COPIED : 0);
}

uint64_t bks_qcow2_l2_make_zero(uint64_t host_offset, bool copied)
{
	return bks_qcow2_l2_make(host_offset, copied) | BKS_QCOW2_OFLAG_ZERO;
}

uint64_t bks_qcow2_l1_make(uint64_t l2_offset)
{
	return (l2_offset & BKS_QCOW2_OFFSET_MASK) | BKS_QCOW2_OFLAG_COPIED;
}

uint64_t bks_qcow2_refcount_get(const struct bks_qcow2_geom *g,
				const unsigned char *block, uint64_t index)
{
	uint32_t order = g->refcount_order;

	switch (order) {
	case 0:
	case 1:
	case 2: {
		uint32_t w = 1u << order, per = 8u >> order;
		unsigned int sh = (unsigned int)(index % per) * w;

		return (block[index / per] >> sh) & ((1u << w) - 1);
	}
	case 3:
		return block[index];
	case 4:
		return bks_get_be16(block + 2 * index);
	case 5:
		return bks_get_be32(block + 4 * index);
	default:
		return bks_get_be64(block + 8 * index);
	}
}

void bks_qcow2_refcount_set(const struct bks_qcow2_geom *g,
			    unsigned char *block, uint64_t index,
			    uint64_t value)
{
	uint32_t order = g->refcount_order;

	value &= g->refcount_max;
	switch (order) {
	case 0:
	case 1:
	case 2: {
		uint32_t w = 1u << order, per = 8u >> order;
		unsigned int sh = (unsigned int)(index % per) * w;
		unsigned char mask = (unsigned char)(((1u << w) - 1) << sh);
		unsigned char *p = &block[index / per];

		*p = (unsigned char)((*p & ~mask) | ((value << sh) & mask));
		break;
	}
	case 3:
		block[index] = (unsigned char)value;
		break;
	case 4:
		bks_put_be16(block + 2 * index, (uint16_t)value);
		break;
	case 5:
		bks_put_be32(block + 4 * index, (uint32_t)value);
		break;
	default:
		bks_put_be64(block + 8 * index, value);
		break;
	}
}

/* ---- a new image --------------------------------------------------------- */

/* Header extensions of a new image, written at pos; returns the end. */
static size_t put_ext(unsigned char *buf, size_t pos, uint32_t type,
		      const void *data, uint32_t len)
{
	bks_put_be32(buf + pos, type);
	bks_put_be32(buf + pos + 4, len);
	if (len)
		memcpy(buf + pos + 8, data, len);
	return pos + 8 + ((len + 7u) & ~7u);
}

static const struct {
	uint8_t type, bit;
	const char *name;
} feature_table[] = {
    {0, 0, "dirty bit"},
    {0, 1, "corrupt bit"},
    {0, 2, "external data file"},
    {0, 3, "compression type"},
    {0, 4, "extended L2 entries"},
    {1, 0, "lazy refcounts"},
    {2, 0, "bitmaps"},
    {2, 1, "raw external data"},
};

#define FEATURE_COUNT (sizeof(feature_table) / sizeof(feature_table[0]))

int bks_qcow2_build(const struct bks_qcow2_create *c, unsigned char **bufp,
		    size_t *lenp, struct bks_error *err)
{
	struct bks_qcow2_geom g;
	uint32_t cb =
	    c->cluster_bits ? c->cluster_bits : BKS_QCOW2_DEFAULT_CLUSTER_BITS;
	uint32_t version = c->version ? c->version : 3;
	uint64_t l1_entries, l1_clusters, rt_clusters, rb_count, total;
	size_t hdr_len, pos, blen = 0, flen = 0;
	unsigned char *buf = NULL;
	unsigned char feat[FEATURE_COUNT * 48];

	*bufp = NULL;
	*lenp = 0;
	if (version != 2 && version != 3)
		return bks_error_setmsg(
		    err, EINVAL,
		    "qcow2 create: version %" PRIu32 " is not 2 or 3", version);
	if (cb < BKS_QCOW2_MIN_CLUSTER_BITS || cb > BKS_QCOW2_MAX_CLUSTER_BITS)
		return bks_error_setmsg(err, EINVAL,
					"qcow2 create: cluster_bits %" PRIu32
					" is outside 9..21",
					cb);
	if (c->refcount_order > BKS_QCOW2_MAX_REFCOUNT_ORDER ||
	    (version == 2 &&
	     c->refcount_order != BKS_QCOW2_DEFAULT_REFCOUNT_ORDER))
		return bks_error_setmsg(err, EINVAL,
					"qcow2 create: refcount_order %" PRIu32
					" is over 6 (or not 4 in version 2)",
					c->refcount_order);
	if (c->size % 512 || c->size > BKS_QCOW2_MAX_SIZE)
		return bks_error_setmsg(err, EINVAL,
					"qcow2 create: size %" PRIu64
					" is not a multiple of 512 up to 2^62",
					c->size);
	if (c->lazy_refcounts && version == 2)
		return bks_error_setmsg(err, EINVAL,
					"qcow2 create: lazy refcounts need "
					"version 3");
	if (c->backing_file) {
		blen = strlen(c->backing_file);
		if (blen == 0 || blen > BKS_QCOW2_MAX_BACKING_NAME)
			return bks_error_setmsg(err, EINVAL,
						"qcow2 create: backing file "
						"name of %zu bytes is outside "
						"1..%u",
						blen,
						BKS_QCOW2_MAX_BACKING_NAME);
	}
	if (c->backing_format) {
		flen = strlen(c->backing_format);
		if (flen == 0 || flen > BKS_QCOW2_MAX_BACKING_FMT ||
		    !c->backing_file)
			return bks_error_setmsg(err, EINVAL,
						"qcow2 create: backing format "
						"of %zu bytes is outside 1..%u "
						"or has no backing file",
						flen,
						BKS_QCOW2_MAX_BACKING_FMT);
	}
	bks_qcow2_geom_init(&g, cb, c->refcount_order);

	/* The header cluster's contents must fit in it. */
	hdr_len =
	    version == 2 ? BKS_QCOW2_V2_HEADER_LEN : BKS_QCOW2_V3_HEADER_LEN;
	pos = hdr_len;
	if (flen)
		pos += 8 + ((flen + 7) & ~7u);
	if (version == 3)
		pos += 8 + sizeof(feat);
	pos += 8; /* end */
	if (pos + blen > g.cluster_size)
		return bks_error_setmsg(
		    err, EINVAL,
		    "qcow2 create: the header needs %zu "
		    "bytes, more than a cluster of %" PRIu64,
		    pos + blen, g.cluster_size);

	l1_entries = bks_qcow2_l1_entries_for(&g, c->size);
	if (l1_entries * 8 > BKS_QCOW2_MAX_L1_BYTES)
		return bks_error_setmsg(err, EINVAL,
					"qcow2 create: size %" PRIu64
					" needs an L1 table of %" PRIu64
					" bytes, over 32 MiB: use larger "
					"clusters",
					c->size, l1_entries * 8);
	if (l1_entries == 0)
		l1_entries = 1;
	l1_clusters = (l1_entries * 8 + g.cluster_size - 1) >> cb;
	/* Find how many refcount blocks and table clusters cover them all. */
	rt_clusters = 1;
	rb_count = 1;
	for (;;) {
		uint64_t want_rb, want_rt;

		total = 1 + rt_clusters + rb_count + l1_clusters;
		want_rb = (total + g.rb_entries - 1) >> g.rb_bits;
		want_rt = (want_rb * 8 + g.cluster_size - 1) >> cb;
		if (want_rb <= rb_count && want_rt <= rt_clusters)
			break;
		if (want_rb > rb_count)
			rb_count = want_rb;
		if (want_rt > rt_clusters)
			rt_clusters = want_rt;
	}
	if ((rt_clusters << cb) > BKS_QCOW2_MAX_REFTABLE_BYTES ||
	    (total << cb) > SIZE_MAX / 2)
		return bks_error_setmsg(err, EINVAL,
					"qcow2 create: size %" PRIu64
					" needs too much metadata: use larger "
					"clusters",
					c->size);
	buf = calloc(1, (size_t)(total << cb));
	if (!buf)
		return bks_error_set(err, ENOMEM,
				     "qcow2 create: %" PRIu64 " bytes",
				     total << cb);

	/* Layout: header 0, refcount table 1.., blocks next, L1 last. */
	{
		uint64_t rt_off = 1ull << cb;
		uint64_t rb_off = rt_off + (rt_clusters << cb);
		uint64_t l1_off = rb_off + (rb_count << cb);
		unsigned char *p = buf;

		bks_put_be32(p + BKS_QCOW2_OFF_MAGIC, BKS_QCOW2_MAGIC);
		bks_put_be32(p + BKS_QCOW2_OFF_VERSION, version);
		bks_put_be32(p + BKS_QCOW2_OFF_CLUSTER_BITS, cb);
		bks_put_be64(p + BKS_QCOW2_OFF_SIZE, c->size);
		bks_put_be32(p + BKS_QCOW2_OFF_L1_SIZE, (uint32_t)l1_entries);
		bks_put_be64(p + BKS_QCOW2_OFF_L1_OFFSET, l1_off);
		bks_put_be64(p + BKS_QCOW2_OFF_REFTABLE_OFFSET, rt_off);
		bks_put_be32(p + BKS_QCOW2_OFF_REFTABLE_CLUSTERS,
			     (uint32_t)rt_clusters);
		if (version == 3) {
			bks_put_be64(p + BKS_QCOW2_OFF_COMPAT,
				     c->lazy_refcounts
					 ? BKS_QCOW2_COMPAT_LAZY_REFCOUNTS
					 : 0);
			bks_put_be32(p + BKS_QCOW2_OFF_REFCOUNT_ORDER,
				     c->refcount_order);
			bks_put_be32(p + BKS_QCOW2_OFF_HEADER_LENGTH,
				     (uint32_t)hdr_len);
		}
		pos = hdr_len;
		if (flen)
			pos = put_ext(p, pos, BKS_QCOW2_EXT_BACKING_FORMAT,
				      c->backing_format, (uint32_t)flen);
		if (version == 3) {
			memset(feat, 0, sizeof(feat));
			for (size_t i = 0; i < FEATURE_COUNT; i++) {
				feat[48 * i] = feature_table[i].type;
				feat[48 * i + 1] = feature_table[i].bit;
				memcpy(feat + 48 * i + 2, feature_table[i].name,
				       strlen(feature_table[i].name));
			}
			pos = put_ext(p, pos, BKS_QCOW2_EXT_FEATURE_TABLE, feat,
				      sizeof(feat));
		}
		pos = put_ext(p, pos, BKS_QCOW2_EXT_END, NULL, 0);
		if (blen) {
			memcpy(p + pos, c->backing_file, blen);
			bks_put_be64(p + BKS_QCOW2_OFF_BACKING_OFFSET, pos);
			bks_put_be32(p + BKS_QCOW2_OFF_BACKING_SIZE,
				     (uint32_t)blen);
		}
		for (uint64_t i = 0; i < rb_count; i++)
			bks_put_be64(p + rt_off + 8 * i, rb_off + (i << cb));
		for (uint64_t i = 0; i < total; i++)
			bks_qcow2_refcount_set(
			    &g, p + rb_off + ((i >> g.rb_bits) << cb),
			    i & (g.rb_entries - 1), 1);
	}
	*bufp = buf;
	*lenp = (size_t)(total << cb);
	return 0;
}
