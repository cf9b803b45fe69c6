/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * blkstack-img: qcow2 images (img.h).  The on-disk format's knowledge is
 * libblkstack/qcow2-format.c's (header parsing, entry decoding, the new
 * image's first clusters); this file reads and writes the file with
 * blocking calls: create, info, and check (every L1, L2, refcount table
 * and refcount block entry, the references to each host cluster counted
 * and compared with its refcount; --repair lowers leaked refcounts).
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "blkstack/endian.h"
#include "blkstack/qcow2-format.h"
#include "img.h"

/* ---- reading ------------------------------------------------------------ */

/* Read exactly n bytes at off; a short file is -EINVAL, "what" named. */
static int read_at(int fd, const char *path, void *buf, size_t n, uint64_t off,
		   const char *what, struct bks_error *err)
{
	size_t done = 0;

	while (done < n) {
		ssize_t r = pread(fd, (char *)buf + done, n - done,
				  (off_t)(off + done));

		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0)
			return bks_error_set(err, errno,
					     "%s: read %s at %" PRIu64, path,
					     what, off);
		if (r == 0)
			return bks_error_setmsg(err, EINVAL,
						"%s: %s at %" PRIu64
						" (%zu bytes) ends past the "
						"end of the file",
						path, what, off, n);
		done += (size_t)r;
	}
	return 0;
}

static int write_at(int fd, const char *path, const void *buf, size_t n,
		    uint64_t off, const char *what, struct bks_error *err)
{
	size_t done = 0;

	while (done < n) {
		ssize_t r = pwrite(fd, (const char *)buf + done, n - done,
				   (off_t)(off + done));

		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0)
			return bks_error_set(err, errno,
					     "%s: write %s at %" PRIu64, path,
					     what, off);
		done += (size_t)r;
	}
	return 0;
}

/* The file's size. */
static int file_size(int fd, const char *path, uint64_t *out,
		     struct bks_error *err)
{
	struct stat st;

	if (fstat(fd, &st) < 0)
		return bks_error_set(err, errno, "stat %s", path);
	if (!S_ISREG(st.st_mode))
		return bks_error_setmsg(err, EINVAL,
					"%s: a qcow2 image must be a regular "
					"file",
					path);
	*out = (uint64_t)st.st_size;
	return 0;
}

/* Read and parse the header of the image on fd; *fsize its file size. */
static int read_header(int fd, const char *path, struct bks_qcow2_header *h,
		       uint64_t *fsize, struct bks_error *err)
{
	unsigned char head[BKS_QCOW2_V3_HEADER_LEN], *buf = NULL;
	size_t n;
	int64_t need;
	int r;

	r = file_size(fd, path, fsize, err);
	if (r < 0)
		return r;
	n = *fsize < sizeof(head) ? (size_t)*fsize : sizeof(head);
	r = read_at(fd, path, head, n, 0, "qcow2 header", err);
	if (r < 0)
		return r;
	need = bks_qcow2_header_need(head, n, *fsize, err);
	if (need < 0)
		goto prepend;
	buf = malloc((size_t)need);
	if (!buf)
		return bks_error_set(err, ENOMEM, "%s: qcow2 header", path);
	r = read_at(fd, path, buf, (size_t)need, 0, "qcow2 header", err);
	if (r < 0)
		goto out;
	r = bks_qcow2_header_parse(buf, (size_t)need, *fsize, h, err);
	if (r < 0)
		goto prepend;
	goto out;
prepend:
	r = bks_error_prepend(err, "%s: ", path);
out:
	free(buf);
	return r;
}

/* ---- probe, create, info ------------------------------------------------ */

static bool qcow2_probe(const unsigned char *head, size_t n, uint64_t fsize)
{
	(void)fsize;
	return bks_qcow2_probe(head, n);
}

/* log2 of v if v is a power of two in [lo, hi], else -1. */
static int log2_in(uint64_t v, uint64_t lo, uint64_t hi)
{
	int b = 0;

	if (v < lo || v > hi || (v & (v - 1)))
		return -1;
	while ((1ull << b) < v)
		b++;
	return b;
}

/* Parse create's -o "key=value,...". */
static int parse_options(const char *opts, struct bks_qcow2_create *c,
			 struct bks_error *err)
{
	static const char known[] =
	    "cluster_size, compat (0.10, 1.1), refcount_bits, "
	    "lazy_refcounts (on, off)";
	char buf[512], *save = NULL;
	int r = 0;

	if (!opts || !opts[0])
		return 0;
	if (strlen(opts) >= sizeof(buf))
		return bks_error_setmsg(err, EINVAL, "-o: options too long");
	snprintf(buf, sizeof(buf), "%s", opts);
	for (char *kv = strtok_r(buf, ",", &save); kv;
	     kv = strtok_r(NULL, ",", &save)) {
		char *v = strchr(kv, '='), *end = NULL;
		unsigned long long n = 0;
		int b;

		if (!v)
			return bks_error_setmsg(
			    err, EINVAL, "-o: \"%s\" is not key=value", kv);
		*v++ = '\0';
		if (strcmp(kv, "cluster_size") == 0 ||
		    strcmp(kv, "refcount_bits") == 0) {
			errno = 0;
			n = strtoull(v, &end, 10);
			if (errno || end == v || *end)
				return bks_error_setmsg(err, EINVAL,
							"-o: %s=%s is not a "
							"number",
							kv, v);
		}
		if (strcmp(kv, "cluster_size") == 0) {
			b = log2_in(n, 1ull << BKS_QCOW2_MIN_CLUSTER_BITS,
				    1ull << BKS_QCOW2_MAX_CLUSTER_BITS);
			if (b < 0)
				return bks_error_setmsg(
				    err, EINVAL,
				    "-o: cluster_size %llu is not a power of "
				    "two from 512 to 2097152",
				    n);
			c->cluster_bits = (uint32_t)b;
		} else if (strcmp(kv, "refcount_bits") == 0) {
			b = log2_in(n, 1, 64);
			if (b < 0)
				return bks_error_setmsg(
				    err, EINVAL,
				    "-o: refcount_bits %llu is not a power of "
				    "two from 1 to 64",
				    n);
			c->refcount_order = (uint32_t)b;
		} else if (strcmp(kv, "compat") == 0) {
			if (strcmp(v, "0.10") == 0 || strcmp(v, "v2") == 0)
				c->version = 2;
			else if (strcmp(v, "1.1") == 0 || strcmp(v, "v3") == 0)
				c->version = 3;
			else
				return bks_error_setmsg(err, EINVAL,
							"-o: compat=%s: want "
							"0.10 or 1.1",
							v);
		} else if (strcmp(kv, "lazy_refcounts") == 0) {
			if (strcmp(v, "on") == 0)
				c->lazy_refcounts = true;
			else if (strcmp(v, "off") == 0)
				c->lazy_refcounts = false;
			else
				return bks_error_setmsg(err, EINVAL,
							"-o: lazy_refcounts=%s:"
							" want on or off",
							v);
		} else {
			return bks_error_setmsg(err, EINVAL,
						"-o: unknown option \"%s\" "
						"(qcow2 knows %s)",
						kv, known);
		}
	}
	return r;
}

static int qcow2_create(const struct img_create_opts *o, struct bks_error *err)
{
	struct bks_qcow2_create c = {
	    .size = o->size,
	    .refcount_order = BKS_QCOW2_DEFAULT_REFCOUNT_ORDER,
	};
	unsigned char *buf = NULL;
	size_t len = 0;
	int fd = -1, r;

	r = parse_options(o->options, &c, err);
	if (r < 0)
		goto prepend;
	if (c.version == 2 && c.lazy_refcounts) {
		r = bks_error_setmsg(err, EINVAL,
				     "-o: lazy_refcounts needs compat=1.1");
		goto prepend;
	}
	if (o->backing) {
		if (strlen(o->backing) > BKS_QCOW2_MAX_BACKING_NAME) {
			r = bks_error_setmsg(err, EINVAL,
					     "backing file name longer than "
					     "%u bytes",
					     BKS_QCOW2_MAX_BACKING_NAME);
			goto prepend;
		}
		c.backing_file = o->backing;
		c.backing_format = o->backing_fmt;
	}
	r = bks_qcow2_build(&c, &buf, &len, err);
	if (r < 0)
		goto prepend;
	fd = open(o->path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
	if (fd < 0) {
		r = bks_error_set(err, errno, "create %s", o->path);
		goto out;
	}
	r = write_at(fd, o->path, buf, len, 0, "qcow2 metadata", err);
	if (r < 0)
		goto out;
	if (fsync(fd) < 0)
		r = bks_error_set(err, errno, "fsync %s", o->path);
	goto out;
prepend:
	bks_error_prepend(err, "%s: ", o->path);
out:
	if (fd >= 0 && close(fd) < 0 && r == 0)
		r = bks_error_set(err, errno, "close %s", o->path);
	if (r < 0 && fd >= 0)
		unlink(o->path);
	free(buf);
	return r;
}

static int qcow2_info(int fd, const char *path, struct img_info *out,
		      struct json_writer *extra, struct bks_error *err)
{
	struct bks_qcow2_header *h;
	uint64_t fsize;
	int r;

	h = calloc(1, sizeof(*h));
	if (!h)
		return bks_error_set(err, ENOMEM, "%s: qcow2 header", path);
	r = read_header(fd, path, h, &fsize, err);
	if (r < 0)
		goto out;
	memset(out, 0, sizeof(*out));
	snprintf(out->format, sizeof(out->format), "qcow2");
	out->virtual_size = h->size;
	out->cluster_size = h->g.cluster_size;
	if (h->has_backing)
		snprintf(out->backing, sizeof(out->backing), "%s",
			 h->backing_file);
	if (h->has_backing_format)
		snprintf(out->backing_fmt, sizeof(out->backing_fmt), "%s",
			 h->backing_format);
	out->dirty = (h->incompatible_features & BKS_QCOW2_INCOMPAT_DIRTY) != 0;
	json_kv_str(extra, "compat", h->version == 2 ? "0.10" : "1.1");
	if (h->version >= 3) {
		json_kv_str(extra, "compression-type",
			    h->compression_type == BKS_QCOW2_COMPRESSION_ZSTD
				? "zstd"
				: "zlib");
		json_kv_bool(extra, "lazy-refcounts",
			     (h->compatible_features &
			      BKS_QCOW2_COMPAT_LAZY_REFCOUNTS) != 0);
	}
	json_kv_u64(extra, "refcount-bits", 1ull << h->refcount_order);
	json_kv_bool(extra, "corrupt",
		     (h->incompatible_features & BKS_QCOW2_INCOMPAT_CORRUPT) !=
			 0);
	json_kv_bool(extra, "extended-l2",
		     (h->incompatible_features & BKS_QCOW2_INCOMPAT_EXTL2) !=
			 0);
	if (h->nb_snapshots)
		json_kv_u64(extra, "snapshots", h->nb_snapshots);
	if (h->crypt_method)
		json_kv_u64(extra, "encrypt-method", h->crypt_method);
out:
	free(h);
	return r;
}

/* ---- check -------------------------------------------------------------- */

/* One check's state. */
struct ck {
	int fd;
	const char *path;
	FILE *report;
	struct bks_qcow2_header *h;
	const struct bks_qcow2_geom *g;
	uint64_t fsize;
	uint64_t nclusters;  /* host clusters tracked: the file's, plus slack */
	uint64_t *rc;	     /* refcount of each, from the refcount blocks */
	uint32_t *refs;	     /* references to each, counted */
	unsigned char *meta; /* 1 for each cluster holding metadata */
	uint64_t *rb_off;    /* refcount table: each block's offset, 0 none */
	uint64_t nrb;	     /* refcount table entries */
	unsigned char *cbuf; /* one cluster */
	/*
	 * Corruptions a repair can fix: a cluster referenced once whose
	 * refcount is 0 (what a crash under lazy refcounts leaves), and the
	 * OFLAG_COPIED mismatch each of those shows.  Repaired only when
	 * every corruption is one of them.
	 */
	uint64_t fixable;
	struct img_check *out;
};

/* A problem that makes data wrong (or could): one report line. */
static void corrupt(struct ck *k, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void corrupt(struct ck *k, const char *fmt, ...)
{
	va_list ap;

	k->out->corruptions++;
	fprintf(k->report, "ERROR ");
	va_start(ap, fmt);
	vfprintf(k->report, fmt, ap);
	va_end(ap);
	fprintf(k->report, "\n");
}

/*
 * Count one reference to each host cluster of [off, off + len); a range
 * past what the file holds is a corruption, what names it.
 */
static void ref_range(struct ck *k, uint64_t off, uint64_t len,
		      const char *what)
{
	uint64_t cs = k->g->cluster_size, first, last;

	if (len == 0)
		return;
	first = off / cs;
	last = (off + len - 1) / cs;
	if (off + len < off || last >= k->nclusters) {
		corrupt(k,
			"%s at 0x%" PRIx64 " (%" PRIu64
			" bytes) is past the end of the file (%" PRIu64
			" bytes)",
			what, off, len, k->fsize);
		return;
	}
	for (uint64_t c = first; c <= last; c++)
		if (k->refs[c] < UINT32_MAX)
			k->refs[c]++;
}

/* Like ref_range(), for metadata: its clusters may be used once only. */
static void ref_meta(struct ck *k, uint64_t off, uint64_t len, const char *what)
{
	uint64_t cs = k->g->cluster_size;

	ref_range(k, off, len, what);
	if (len == 0 || off + len < off || (off + len - 1) / cs >= k->nclusters)
		return;
	for (uint64_t c = off / cs; c <= (off + len - 1) / cs; c++)
		k->meta[c] = 1;
}

/* True if host cluster at off is referenced already (by anything). */
static bool referenced(const struct ck *k, uint64_t off)
{
	uint64_t c = off >> k->g->cluster_bits;

	return c < k->nclusters && k->refs[c] > 0;
}

/* The refcount blocks: read each, keep every cluster's refcount. */
static int ck_refcounts(struct ck *k, struct bks_error *err)
{
	const struct bks_qcow2_geom *g = k->g;
	size_t tbytes = (size_t)k->h->refcount_table_clusters * g->cluster_size;
	unsigned char *t = NULL;
	int r;

	k->nrb = tbytes / 8;
	t = malloc(tbytes ? tbytes : 1);
	k->rb_off = calloc(k->nrb ? k->nrb : 1, sizeof(*k->rb_off));
	if (!t || !k->rb_off) {
		r = bks_error_set(err, ENOMEM, "%s: refcount table", k->path);
		goto out;
	}
	r = read_at(k->fd, k->path, t, tbytes, k->h->refcount_table_offset,
		    "refcount table", err);
	if (r < 0)
		goto out;
	ref_meta(k, k->h->refcount_table_offset, tbytes, "refcount table");
	for (uint64_t i = 0; i < k->nrb; i++) {
		struct bks_error e = {0};
		uint64_t off, base = i * g->rb_entries;

		if (bks_qcow2_reftable_decode(g, bks_get_be64(t + 8 * i), &off,
					      &e) < 0) {
			corrupt(k, "refcount table entry %" PRIu64 ": %s", i,
				e.msg);
			continue;
		}
		if (off == 0)
			continue;
		if (off > k->fsize || g->cluster_size > k->fsize - off) {
			corrupt(k,
				"refcount block %" PRIu64 " at 0x%" PRIx64
				" is past the end of the file (%" PRIu64
				" bytes)",
				i, off, k->fsize);
			continue;
		}
		if (referenced(k, off)) {
			corrupt(k,
				"refcount block %" PRIu64 " at 0x%" PRIx64
				" overlaps other metadata",
				i, off);
			ref_range(k, off, g->cluster_size, "refcount block");
			continue;
		}
		ref_meta(k, off, g->cluster_size, "refcount block");
		k->rb_off[i] = off;
		if (base >= k->nclusters)
			continue; /* it counts clusters past the file only */
		r = read_at(k->fd, k->path, k->cbuf, g->cluster_size, off,
			    "refcount block", err);
		if (r < 0)
			goto out;
		for (uint64_t j = 0;
		     j < g->rb_entries && base + j < k->nclusters; j++)
			k->rc[base + j] = bks_qcow2_refcount_get(g, k->cbuf, j);
	}
	r = 0;
out:
	free(t);
	return r;
}

/* The refcount of host cluster at off (0 past what is tracked). */
static uint64_t rc_of(const struct ck *k, uint64_t off)
{
	uint64_t c = off >> k->g->cluster_bits;

	return c < k->nclusters ? k->rc[c] : 0;
}

/* One L2 table (at l2off, for L1 entry i): count its references. */
static int ck_l2(struct ck *k, uint64_t i, uint64_t l2off, unsigned char *l2,
		 struct bks_error *err)
{
	const struct bks_qcow2_geom *g = k->g;
	uint64_t guest_clusters =
	    (k->h->size + g->cluster_size - 1) >> g->cluster_bits;
	int r;

	r = read_at(k->fd, k->path, l2, g->cluster_size, l2off, "L2 table",
		    err);
	if (r < 0)
		return r;
	for (uint64_t j = 0; j < g->l2_entries; j++) {
		uint64_t e = bks_get_be64(l2 + 8 * j);
		uint64_t gc = (i << g->l2_bits) + j;
		struct bks_error de = {0};
		struct bks_qcow2_l2 d;

		if (e == 0)
			continue;
		if (bks_qcow2_l2_decode(g, e, &d, &de) < 0) {
			corrupt(k,
				"L2 table 0x%" PRIx64 " entry %" PRIu64 ": %s",
				l2off, j, de.msg);
			continue;
		}
		if (d.type == BKS_QCOW2_UNALLOCATED ||
		    d.type == BKS_QCOW2_ZERO_PLAIN)
			continue;
		if (gc >= guest_clusters) {
			corrupt(k,
				"L2 table 0x%" PRIx64 " entry %" PRIu64
				": maps guest cluster %" PRIu64
				" past the virtual size",
				l2off, j, gc);
			continue;
		}
		k->out->allocated++;
		if (bks_qcow2_l2_check_bounds(g, &d, k->fsize, &de) < 0) {
			corrupt(k,
				"L2 table 0x%" PRIx64 " entry %" PRIu64 ": %s",
				l2off, j, de.msg);
			continue;
		}
		if (d.type == BKS_QCOW2_COMPRESSED) {
			ref_range(k, d.host_offset & ~511ull,
				  d.csize + (d.host_offset & 511),
				  "compressed cluster");
			continue;
		}
		ref_range(k, d.host_offset, g->cluster_size, "data cluster");
		if (d.copied != (rc_of(k, d.host_offset) == 1)) {
			if (d.copied && rc_of(k, d.host_offset) == 0)
				k->fixable++;
			corrupt(k,
				"OFLAG_COPIED data cluster: l2_entry=%" PRIx64
				" refcount=%" PRIu64,
				e, rc_of(k, d.host_offset));
		}
	}
	return 0;
}

/* The L1 table and the L2 tables it points at. */
static int ck_tables(struct ck *k, struct bks_error *err)
{
	const struct bks_qcow2_geom *g = k->g;
	size_t bytes = (size_t)k->h->l1_size * 8;
	unsigned char *l1 = NULL;
	int r;

	l1 = malloc(bytes ? bytes : 1);
	if (!l1)
		return bks_error_set(err, ENOMEM, "%s: L1 table", k->path);
	r = read_at(k->fd, k->path, l1, bytes, k->h->l1_table_offset,
		    "L1 table", err);
	if (r < 0)
		goto out;
	ref_meta(k, k->h->l1_table_offset, bytes, "L1 table");
	for (uint64_t i = 0; i < k->h->l1_size; i++) {
		uint64_t e = bks_get_be64(l1 + 8 * i), off;
		struct bks_error de = {0};
		bool copied;

		if (e == 0)
			continue;
		if (bks_qcow2_l1_decode(g, e, &off, &copied, &de) < 0) {
			corrupt(k, "L1 entry %" PRIu64 ": %s", i, de.msg);
			continue;
		}
		if (off == 0)
			continue;
		if (off > k->fsize || g->cluster_size > k->fsize - off) {
			corrupt(k,
				"L2 table of L1 entry %" PRIu64 " at 0x%" PRIx64
				" is past the end of the file (%" PRIu64
				" bytes)",
				i, off, k->fsize);
			continue;
		}
		if (referenced(k, off)) {
			/* Counted, not walked again (that bounds the work). */
			corrupt(k,
				"L2 table of L1 entry %" PRIu64 " at 0x%" PRIx64
				" overlaps other metadata",
				i, off);
			ref_range(k, off, g->cluster_size, "L2 table");
			continue;
		}
		ref_meta(k, off, g->cluster_size, "L2 table");
		if (copied != (rc_of(k, off) == 1)) {
			if (copied && rc_of(k, off) == 0)
				k->fixable++;
			corrupt(k,
				"OFLAG_COPIED L2 cluster: l1_index=%" PRIu64
				" l1_entry=%" PRIx64 " refcount=%" PRIu64,
				i, e, rc_of(k, off));
		}
		r = ck_l2(k, i, off, k->cbuf, err);
		if (r < 0)
			goto out;
	}
	r = 0;
out:
	free(l1);
	return r;
}

/*
 * Set the refcount of every cluster whose refcount is not its count of
 * references to that count, a refcount block at a time: leaks are
 * lowered, and (called only when every corruption is fixable) clusters
 * referenced once with refcount 0 get 1.  Then clear the dirty bit (the
 * refcounts are true now).
 */
static int ck_repair(struct ck *k, struct bks_error *err)
{
	const struct bks_qcow2_geom *g = k->g;
	unsigned char feat[8];
	int r;

	for (uint64_t b = 0; b < k->nrb; b++) {
		uint64_t base = b * g->rb_entries, fixed = 0;

		if (!k->rb_off[b] || base >= k->nclusters)
			continue;
		uint64_t raised = 0;

		for (uint64_t j = 0;
		     j < g->rb_entries && base + j < k->nclusters; j++) {
			if (k->rc[base + j] > k->refs[base + j])
				fixed++;
			else if (k->rc[base + j] < k->refs[base + j])
				raised++;
		}
		if (!fixed && !raised)
			continue;
		r = read_at(k->fd, k->path, k->cbuf, g->cluster_size,
			    k->rb_off[b], "refcount block", err);
		if (r < 0)
			return r;
		for (uint64_t j = 0;
		     j < g->rb_entries && base + j < k->nclusters; j++)
			if (k->rc[base + j] != k->refs[base + j])
				bks_qcow2_refcount_set(g, k->cbuf, j,
						       k->refs[base + j]);
		r = write_at(k->fd, k->path, k->cbuf, g->cluster_size,
			     k->rb_off[b], "refcount block", err);
		if (r < 0)
			return r;
		k->out->leaks_fixed += fixed;
		k->out->corruptions_fixed += raised;
	}
	if (fsync(k->fd) < 0)
		return bks_error_set(err, errno, "fsync %s", k->path);
	if (k->h->version >= 3 &&
	    (k->h->incompatible_features & BKS_QCOW2_INCOMPAT_DIRTY)) {
		bks_put_be64(feat, k->h->incompatible_features &
				       ~BKS_QCOW2_INCOMPAT_DIRTY);
		r = write_at(k->fd, k->path, feat, 8, BKS_QCOW2_OFF_INCOMPAT,
			     "qcow2 header", err);
		if (r < 0)
			return r;
		if (fsync(k->fd) < 0)
			return bks_error_set(err, errno, "fsync %s", k->path);
	}
	return 0;
}

static int qcow2_check(int fd, const char *path, bool repair, FILE *report,
		       struct img_check *out, struct bks_error *err)
{
	struct ck k = {.fd = fd, .path = path, .report = report, .out = out};
	uint64_t cs, slack;
	int r;

	memset(out, 0, sizeof(*out));
	k.h = calloc(1, sizeof(*k.h));
	if (!k.h)
		return bks_error_set(err, ENOMEM, "%s: qcow2 header", path);
	r = read_header(fd, path, k.h, &k.fsize, err);
	if (r < 0)
		goto out;
	r = bks_qcow2_check_features(k.h, BKS_QCOW2_HAVE_ZSTD, err);
	if (r < 0) {
		bks_error_prepend(err, "%s: ", path);
		goto out;
	}
	/*
	 * Snapshots and bitmaps own clusters this check does not walk:
	 * counting without them would call their clusters leaks (and a
	 * repair would free them).
	 */
	if (k.h->nb_snapshots || k.h->has_bitmaps_ext) {
		r = bks_error_setmsg(err, ENOTSUP,
				     "%s: qcow2 image with %s: check does not "
				     "walk them (use qemu-img check)",
				     path,
				     k.h->nb_snapshots ? "internal snapshots"
						       : "persistent bitmaps");
		goto out;
	}
	k.g = &k.h->g;
	cs = k.g->cluster_size;
	/*
	 * Host clusters tracked: the file's, and room for a compressed
	 * cluster's last sectors that the file may end inside.
	 */
	slack = (((k.g->csize_mask + 1) * 512) >> k.g->cluster_bits) + 2;
	k.nclusters = (k.fsize + cs - 1) / cs + slack;
	k.rc = calloc(k.nclusters, sizeof(*k.rc));
	k.refs = calloc(k.nclusters, sizeof(*k.refs));
	k.meta = calloc(k.nclusters, 1);
	k.cbuf = malloc(cs);
	if (!k.rc || !k.refs || !k.meta || !k.cbuf) {
		r = bks_error_set(err, ENOMEM, "%s: check", path);
		goto out;
	}
	out->total = (k.h->size + cs - 1) / cs;
	ref_meta(&k, 0, cs, "qcow2 header");
	r = ck_refcounts(&k, err);
	if (r < 0)
		goto out;
	r = ck_tables(&k, err);
	if (r < 0)
		goto out;
	for (uint64_t c = 0; c < k.nclusters; c++) {
		if (k.meta[c] && k.refs[c] > 1)
			corrupt(&k,
				"cluster %" PRIu64 " holds metadata and is "
				"referenced %" PRIu32 " times",
				c, k.refs[c]);
		if (k.rc[c] > k.refs[c]) {
			out->leaks++;
			fprintf(report,
				"Leaked cluster %" PRIu64 " refcount=%" PRIu64
				" reference=%" PRIu32 "\n",
				c, k.rc[c], k.refs[c]);
		} else if (k.rc[c] < k.refs[c]) {
			if (k.rc[c] == 0 && k.refs[c] == 1 &&
			    c / k.g->rb_entries < k.nrb &&
			    k.rb_off[c / k.g->rb_entries])
				k.fixable++;
			corrupt(&k,
				"cluster %" PRIu64 " refcount=%" PRIu64
				" reference=%" PRIu32,
				c, k.rc[c], k.refs[c]);
		}
	}
	if (repair && out->corruptions == k.fixable)
		r = ck_repair(&k, err);
	else if (repair)
		fprintf(report, "Not repaired: the image has corruptions "
				"that a repair cannot fix safely\n");
out:
	free(k.cbuf);
	free(k.meta);
	free(k.refs);
	free(k.rc);
	free(k.rb_off);
	free(k.h);
	return r;
}

const struct img_format img_format_qcow2 = {
    .name = "qcow2",
    .probe = qcow2_probe,
    .create = qcow2_create,
    .info = qcow2_info,
    .check = qcow2_check,
};
