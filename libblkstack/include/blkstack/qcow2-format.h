/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The qcow2 on-disk format (qemu's docs/interop/qcow2.txt), as pure
 * functions on byte buffers: no I/O, no loop, no allocation except where a
 * function says so.  Used by the qcow2: driver (drivers/qcow2.c), by
 * blkstack-img (helpers/img/img-qcow2.c, a blocking tool) and by the
 * fuzzers; every function is safe on untrusted bytes.
 *
 * Everything on disk is big-endian.  Every header field and table entry is
 * untrusted: the parsers check each one and refuse a bad one with -EINVAL
 * (or -ENOTSUP for a valid feature this code does not implement) and a
 * message naming the structure, the field and the value.  Callers
 * prepend the file name (bks_error_prepend()).
 *
 * Layout reminders:
 *   - The header is at offset 0: 72 bytes in version 2, header_length
 *     (>= 104) in version 3.  Header extensions follow it (at 72 in
 *     version 2, at header_length in version 3), each {be32 type, be32
 *     length, data padded to 8 bytes}, up to an end extension (type 0) or
 *     the end of the first cluster.  The backing file name is at
 *     backing_file_offset, inside the first cluster.
 *   - The L1 table (l1_size be64 entries at l1_table_offset) points at L2
 *     tables (one cluster each, cluster_size / 8 be64 entries) which map
 *     guest clusters to host clusters.
 *   - The refcount table (refcount_table_clusters clusters of be64
 *     entries at refcount_table_offset) points at refcount blocks (one
 *     cluster each, of 2^refcount_order-bit refcounts), one per host
 *     cluster.
 */
#ifndef BLKSTACK_QCOW2_FORMAT_H
#define BLKSTACK_QCOW2_FORMAT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "blkstack/error.h"

/* ---- constants ----------------------------------------------------------- */

#define BKS_QCOW2_MAGIC 0x514649fbu /* "QFI\xfb" */

/* Header sizes: version 2's fixed header, version 3's minimum, and ours
 * (version 3 with the compression type byte, padded to 8). */
#define BKS_QCOW2_V2_HEADER_LEN 72u
#define BKS_QCOW2_V3_HEADER_MIN 104u
#define BKS_QCOW2_V3_HEADER_LEN 112u

/* Byte offsets of the header fields (for rewriting one in place). */
#define BKS_QCOW2_OFF_MAGIC		0
#define BKS_QCOW2_OFF_VERSION		4
#define BKS_QCOW2_OFF_BACKING_OFFSET	8
#define BKS_QCOW2_OFF_BACKING_SIZE	16
#define BKS_QCOW2_OFF_CLUSTER_BITS	20
#define BKS_QCOW2_OFF_SIZE		24
#define BKS_QCOW2_OFF_CRYPT_METHOD	32
#define BKS_QCOW2_OFF_L1_SIZE		36
#define BKS_QCOW2_OFF_L1_OFFSET		40
#define BKS_QCOW2_OFF_REFTABLE_OFFSET	48
#define BKS_QCOW2_OFF_REFTABLE_CLUSTERS 56
#define BKS_QCOW2_OFF_NB_SNAPSHOTS	60
#define BKS_QCOW2_OFF_SNAPSHOTS_OFFSET	64
#define BKS_QCOW2_OFF_INCOMPAT		72
#define BKS_QCOW2_OFF_COMPAT		80
#define BKS_QCOW2_OFF_AUTOCLEAR		88
#define BKS_QCOW2_OFF_REFCOUNT_ORDER	96
#define BKS_QCOW2_OFF_HEADER_LENGTH	100
#define BKS_QCOW2_OFF_COMPRESSION_TYPE	104

/* Cluster sizes: 512 B .. 2 MiB (what qemu accepts). */
#define BKS_QCOW2_MIN_CLUSTER_BITS     9u
#define BKS_QCOW2_MAX_CLUSTER_BITS     21u
#define BKS_QCOW2_DEFAULT_CLUSTER_BITS 16u
/* Refcount widths 1..64 bits: refcount_order 0..6; 4 (16 bits) in v2. */
#define BKS_QCOW2_MAX_REFCOUNT_ORDER	 6u
#define BKS_QCOW2_DEFAULT_REFCOUNT_ORDER 4u
/* Longest backing file name (qemu's limit), without the NUL. */
#define BKS_QCOW2_MAX_BACKING_NAME 1023u
/* Longest backing format name we keep (the extension's data), no NUL. */
#define BKS_QCOW2_MAX_BACKING_FMT 31u
/* Largest L1 table and refcount table, in bytes (qemu's limits). */
#define BKS_QCOW2_MAX_L1_BYTES	     (32u << 20)
#define BKS_QCOW2_MAX_REFTABLE_BYTES (8u << 20)
/* Most internal snapshots. */
#define BKS_QCOW2_MAX_SNAPSHOTS 65536u
/* Host offsets are 56 bits (bits 0..55 of an entry). */
#define BKS_QCOW2_MAX_HOST_OFFSET (((uint64_t)1 << 56) - 1)
/* Largest virtual size we accept (qemu's: 2^63 - 512, we say 2^62). */
#define BKS_QCOW2_MAX_SIZE ((uint64_t)1 << 62)

/* Header extension types. */
#define BKS_QCOW2_EXT_END	     0x00000000u
#define BKS_QCOW2_EXT_BACKING_FORMAT 0xe2792acau
#define BKS_QCOW2_EXT_FEATURE_TABLE  0x6803f857u
#define BKS_QCOW2_EXT_BITMAPS	     0x23852875u
#define BKS_QCOW2_EXT_CRYPTO	     0x0537be77u
#define BKS_QCOW2_EXT_DATA_FILE	     0x44415441u

/* Incompatible feature bits. */
#define BKS_QCOW2_INCOMPAT_DIRTY       ((uint64_t)1 << 0)
#define BKS_QCOW2_INCOMPAT_CORRUPT     ((uint64_t)1 << 1)
#define BKS_QCOW2_INCOMPAT_DATA_FILE   ((uint64_t)1 << 2)
#define BKS_QCOW2_INCOMPAT_COMPRESSION ((uint64_t)1 << 3)
#define BKS_QCOW2_INCOMPAT_EXTL2       ((uint64_t)1 << 4)
#define BKS_QCOW2_INCOMPAT_KNOWN       ((uint64_t)0x1f)
/* Compatible feature bits. */
#define BKS_QCOW2_COMPAT_LAZY_REFCOUNTS ((uint64_t)1 << 0)
/* Autoclear feature bits. */
#define BKS_QCOW2_AUTOCLEAR_BITMAPS  ((uint64_t)1 << 0)
#define BKS_QCOW2_AUTOCLEAR_DATA_RAW ((uint64_t)1 << 1)

/* Compression types (header byte 104). */
#define BKS_QCOW2_COMPRESSION_ZLIB 0u
#define BKS_QCOW2_COMPRESSION_ZSTD 1u

/* Table entries. */
#define BKS_QCOW2_OFLAG_COPIED	   ((uint64_t)1 << 63)
#define BKS_QCOW2_OFLAG_COMPRESSED ((uint64_t)1 << 62)
#define BKS_QCOW2_OFLAG_ZERO	   ((uint64_t)1 << 0)
/* Bits 9..55: a cluster-aligned host offset in L1, standard L2 entries. */
#define BKS_QCOW2_OFFSET_MASK ((uint64_t)0x00fffffffffffe00)
/* Reserved bits that must be 0: L1 entries (0..8, 56..62), standard L2
 * entries (1..8, 56..61), refcount table entries (0..8). */
#define BKS_QCOW2_L1_RESERVED	    ((uint64_t)0x7f000000000001ff)
#define BKS_QCOW2_L2_STD_RESERVED   ((uint64_t)0x3f000000000001fe)
#define BKS_QCOW2_REFTABLE_RESERVED ((uint64_t)0x00000000000001ff)

/* ---- geometry ------------------------------------------------------------ */

/* What follows from cluster_bits and refcount_order: see qcow2_geom_init. */
struct bks_qcow2_geom {
	uint32_t cluster_bits;
	uint64_t cluster_size;
	uint32_t l2_bits;	 /* log2 of entries per L2 table */
	uint64_t l2_entries;	 /* entries per L2 table */
	uint32_t refcount_order; /* refcount width: 1 << refcount_order bits */
	uint32_t rb_bits;	 /* log2 of refcounts per refcount block */
	uint64_t rb_entries;	 /* refcounts per refcount block */
	uint64_t refcount_max;	 /* largest refcount value */
	/* Compressed descriptors: host offset in bits 0..csize_shift - 1,
	 * additional 512-byte sectors in csize_shift..61. */
	uint32_t csize_shift;
	uint64_t csize_mask;
	uint64_t coffset_mask;
};

/*
 * Fill g for cluster_bits (9..21) and refcount_order (0..6); the caller
 * has checked both (bks_qcow2_header_parse() does).  Called by the
 * header parser, the image builder, the driver and blkstack-img.
 */
void bks_qcow2_geom_init(struct bks_qcow2_geom *g, uint32_t cluster_bits,
			 uint32_t refcount_order);

/* Guest offset -> L1 index, L2 index, offset in the cluster (the driver's
 * lookups, blkstack-img map). */
static inline uint64_t bks_qcow2_l1_index(const struct bks_qcow2_geom *g,
					  uint64_t off)
{
	return off >> (g->cluster_bits + g->l2_bits);
}
static inline uint64_t bks_qcow2_l2_index(const struct bks_qcow2_geom *g,
					  uint64_t off)
{
	return (off >> g->cluster_bits) & (g->l2_entries - 1);
}
static inline uint64_t bks_qcow2_in_cluster(const struct bks_qcow2_geom *g,
					    uint64_t off)
{
	return off & (g->cluster_size - 1);
}

/* Entries the L1 table needs for size bytes (may exceed UINT32_MAX):
 * the header check and bks_qcow2_build(); blkstack-img resize. */
uint64_t bks_qcow2_l1_entries_for(const struct bks_qcow2_geom *g,
				  uint64_t size);

/* ---- the header ---------------------------------------------------------- */

/* One named feature of the feature name table extension. */
struct bks_qcow2_feature_name {
	uint8_t type; /* 0 incompatible, 1 compatible, 2 autoclear */
	uint8_t bit;
	char name[47]; /* NUL-terminated, sanitised */
};

/* Most feature names kept from the table (the rest are skipped). */
#define BKS_QCOW2_MAX_FEATURE_NAMES 64

struct bks_qcow2_header {
	/* The fields, as on disk (version 2 images get the v3 defaults:
	 * no feature bits, refcount_order 4, header_length 72). */
	uint32_t version; /* 2 or 3 */
	uint64_t backing_file_offset;
	uint32_t backing_file_size;
	uint32_t cluster_bits;
	uint64_t size; /* virtual size in bytes */
	uint32_t crypt_method;
	uint32_t l1_size; /* entries */
	uint64_t l1_table_offset;
	uint64_t refcount_table_offset;
	uint32_t refcount_table_clusters;
	uint32_t nb_snapshots;
	uint64_t snapshots_offset;
	uint64_t incompatible_features;
	uint64_t compatible_features;
	uint64_t autoclear_features;
	uint32_t refcount_order;
	uint32_t header_length;
	uint8_t compression_type;

	/* From the extensions and the backing name. */
	bool has_backing;
	char backing_file[BKS_QCOW2_MAX_BACKING_NAME + 1]; /* raw bytes, NUL */
	bool has_backing_format;
	char backing_format[BKS_QCOW2_MAX_BACKING_FMT + 1]; /* sanitised */
	bool has_bitmaps_ext;
	uint32_t nb_bitmaps;
	uint64_t bitmap_directory_size, bitmap_directory_offset;
	bool has_crypto_ext;
	bool has_data_file_ext;
	unsigned int nfeature_names;
	struct bks_qcow2_feature_name
	    feature_names[BKS_QCOW2_MAX_FEATURE_NAMES];
	/* Offset just past the extensions (their end extension included). */
	uint32_t ext_end;

	/* Derived. */
	struct bks_qcow2_geom g;
};

/* True if buf (len bytes) starts with the qcow2 magic.  Called by the
 * driver's get_parent (probing a backing file without a format) and by
 * blkstack-img's format detection. */
bool bks_qcow2_probe(const void *buf, size_t len);

/*
 * How many bytes of the file the header parser needs: the first cluster
 * (the header, its extensions and the backing name live there), clipped to
 * file_size.  buf holds the first len (>= 24) bytes.  Returns that count,
 * or -EINVAL with err set (not qcow2, bad cluster_bits, file too small).
 * Called by the driver and blkstack-img before bks_qcow2_header_parse().
 */
int64_t bks_qcow2_header_need(const unsigned char *buf, size_t len,
			      uint64_t file_size, struct bks_error *err);

/*
 * Parse and check the header, its extensions and the backing file name in
 * buf (the first len bytes of an image of file_size bytes; len as
 * bks_qcow2_header_need() says).  Checks every field's structure: magic,
 * version 2 or 3, cluster_bits 9..21, size (<= 2^62, an L1 large enough
 * for it, l1_size * 8 <= 32 MiB), L1 table, refcount table and snapshot
 * table offsets cluster-aligned and their extent within the file (and
 * under 2^56), refcount_table_clusters (<= 8 MiB), refcount_order <= 6 (4
 * in version 2), header_length (>= 104, a multiple of 8, <= the cluster),
 * compression type byte (needs the incompatible bit when not zlib),
 * backing name (offset and length within the first cluster, length <=
 * 1023, no NUL in it), every extension's length within the cluster.  It
 * does NOT refuse features (see bks_qcow2_check_features()): a checking
 * tool may want to look at a dirty or encrypted image.
 *
 * Returns 0 with h filled, or -EINVAL with err naming the field and its
 * value ("qcow2 header: cluster_bits 30 is outside 9..21").
 */
int bks_qcow2_header_parse(const unsigned char *buf, size_t len,
			   uint64_t file_size, struct bks_qcow2_header *h,
			   struct bks_error *err);

/* What bks_qcow2_check_features() is asked about. */
enum {
	BKS_QCOW2_OPEN_WRITE = 1u << 0, /* opening for writing */
	BKS_QCOW2_HAVE_ZSTD = 1u << 1,	/* the caller can inflate zstd */
};

/*
 * Refuse what the caller cannot serve, naming the feature (with its name
 * from the image's feature table, if any): unknown incompatible bits,
 * encryption (crypt_method != 0), an external data file, extended L2
 * entries, a compression type other than zlib (zstd unless
 * BKS_QCOW2_HAVE_ZSTD); for writing also the dirty bit and the corrupt
 * bit (run `qemu-img check -r all`), and internal snapshots (not
 * supported for writing).  Returns 0, or -ENOTSUP (unsupported
 * feature), -EROFS (not writable: dirty, corrupt, snapshots) with err
 * set.  Called by the driver at open, and by blkstack-img.
 */
int bks_qcow2_check_features(const struct bks_qcow2_header *h,
			     unsigned int flags, struct bks_error *err);

/*
 * The name the image's feature table gives (type 0/1/2, bit), or NULL;
 * sanitised, NUL-terminated, valid as long as h.  Called by
 * bks_qcow2_check_features() and blkstack-img info.
 */
const char *bks_qcow2_feature_name(const struct bks_qcow2_header *h,
				   unsigned int type, unsigned int bit);

/* ---- table entries ------------------------------------------------------- */

/* What an L2 entry says of a guest cluster. */
enum bks_qcow2_ctype {
	BKS_QCOW2_UNALLOCATED, /* entry 0: backing file or zeroes */
	BKS_QCOW2_ZERO_PLAIN,  /* zero flag, no host cluster */
	BKS_QCOW2_ZERO_ALLOC,  /* zero flag, a host cluster preallocated */
	BKS_QCOW2_NORMAL,      /* data at host_offset */
	BKS_QCOW2_COMPRESSED,  /* compressed data at host_offset */
};

struct bks_qcow2_l2 {
	enum bks_qcow2_ctype type;
	uint64_t host_offset; /* cluster-aligned, except compressed: a byte */
	uint64_t csize;	      /* compressed: bytes to read (at most) */
	bool copied;	      /* refcount 1: writable in place */
};

/*
 * Decode a standard (not extended) L2 entry with geometry g.  Refuses
 * (-EINVAL, err saying "L2 entry 0x...: ...") reserved bits set, an
 * unaligned host offset, a compressed entry with the copied flag, an
 * offset beyond 2^56.  Bounds against the file are the caller's (it knows
 * the file size): bks_qcow2_l2_check_bounds().
 */
int bks_qcow2_l2_decode(const struct bks_qcow2_geom *g, uint64_t entry,
			struct bks_qcow2_l2 *out, struct bks_error *err);

/*
 * The host cluster of a decoded entry within file_size?  Its first byte
 * must lie in the file (normal, zero-alloc and compressed alike): qemu
 * leaves the last cluster of a file written only in part, and the rest
 * reads as zeroes; a compressed read is clipped to the file.  Returns 0
 * or -EINVAL with err set.
 */
int bks_qcow2_l2_check_bounds(const struct bks_qcow2_geom *g,
			      const struct bks_qcow2_l2 *l2, uint64_t file_size,
			      struct bks_error *err);

/*
 * Decode an L1 entry: *l2_offset 0 (no L2 table) or a cluster-aligned
 * offset, *copied its flag.  Refuses reserved bits and an unaligned
 * offset (-EINVAL, err set).
 */
int bks_qcow2_l1_decode(const struct bks_qcow2_geom *g, uint64_t entry,
			uint64_t *l2_offset, bool *copied,
			struct bks_error *err);

/* Decode a refcount table entry into *rb_offset (0: none); as above. */
int bks_qcow2_reftable_decode(const struct bks_qcow2_geom *g, uint64_t entry,
			      uint64_t *rb_offset, struct bks_error *err);

/* Entries to write (the driver's allocations, blkstack-img): a standard L2
 * entry, a zero L2 entry (host 0 or a preallocated cluster), an L1 entry
 * (copied set).  They return the entry, in host order (store it with
 * bks_put_be64()). */
uint64_t bks_qcow2_l2_make(uint64_t host_offset, bool copied);
uint64_t bks_qcow2_l2_make_zero(uint64_t host_offset, bool copied);
uint64_t bks_qcow2_l1_make(uint64_t l2_offset);

/*
 * Refcount index (< g->rb_entries) in a refcount block (cluster_size
 * bytes): get returns it, set stores value & refcount_max.  Widths below
 * 8 bits pack from the least significant bit of each byte; wider ones are
 * big-endian.  Called by the driver's allocator, bks_qcow2_build() and
 * blkstack-img check.
 */
uint64_t bks_qcow2_refcount_get(const struct bks_qcow2_geom *g,
				const unsigned char *block, uint64_t index);
void bks_qcow2_refcount_set(const struct bks_qcow2_geom *g,
			    unsigned char *block, uint64_t index,
			    uint64_t value);

/* ---- a new image --------------------------------------------------------- */

struct bks_qcow2_create {
	uint64_t size;		    /* virtual size: a multiple of 512 */
	uint32_t cluster_bits;	    /* 9..21; 0 = 16 (64 KiB) */
	uint32_t refcount_order;    /* 0..6, literal (4 = 16 bits; v2: 4) */
	uint32_t version;	    /* 2 or 3; 0 = 3 */
	const char *backing_file;   /* NULL: none; <= 1023 bytes */
	const char *backing_format; /* NULL: none; e.g. "qcow2", "raw" */
	bool lazy_refcounts;	    /* set the compatible bit (v3) */
};

/*
 * Build the first clusters of a new, empty image: the header (with a
 * backing format extension, a feature name table and the end extension,
 * then the backing name), the refcount table, the refcount blocks (every
 * metadata cluster counted 1) and an L1 table of zeroes, in that order,
 * as qemu-img lays them out for small images (header at 0, refcount
 * table at cluster 1, refcount block at 2, L1 from 3), more of each when
 * the image needs more.  *buf (malloc'd: the caller frees it) gets *len
 * bytes (a whole number of clusters) to write at offset 0 of an empty
 * file; the file's size is then *len.  Returns 0, or -EINVAL (a bad
 * parameter, named), -ENOMEM with err set.  Called by blkstack-img create
 * and the tests.
 */
int bks_qcow2_build(const struct bks_qcow2_create *c, unsigned char **buf,
		    size_t *len, struct bks_error *err);

#endif /* BLKSTACK_QCOW2_FORMAT_H */
