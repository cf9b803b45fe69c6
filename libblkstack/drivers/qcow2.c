/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * qcow2:PATH -- a sink on a qcow2 image (versions 2 and 3), with its
 * backing file as its parent (BKS_CHILD_BACKING).
 *
 * The file is opened with O_DIRECT and served through one bks_aioq: guest
 * data and metadata alike (metadata through aligned buffers).  The format
 * is libblkstack/qcow2-format.c; this file opens, closes and describes the
 * layer; the requests are qcow2-req.c, the per-cluster operations
 * qcow2-op.c, the lookups qcow2-map.c, the metadata cache and writer
 * qcow2-cache.c, cluster allocation and refcounts qcow2-alloc.c (see
 * qcow2-int.h).  See docs/chains.txt "qcow2:" for what is supported and
 * refused.
 *
 * A guest request gets a context (struct qreq, a fixed pool) whose cursor
 * walks its range cluster by cluster: it looks the cluster up (L1 in
 * memory, the L2 table from the cache, waiting for a load without
 * blocking), and issues a piece for each run of clusters of one kind --
 * allocated data straight through the aioq, zeroes copied in, unallocated
 * ranges read from the backing child -- under a join that completes the
 * request.  Writes to allocated clusters (copied flag set) go straight
 * through.  Everything that changes metadata for one guest cluster is an
 * operation (struct qop, a fixed pool): an allocating write, a zeroing or
 * discard, or a compressed read.  Operations on one guest cluster are
 * serialised (a second waits for the first); operations on different
 * clusters run concurrently.
 *
 * An allocating write, in order:
 *   1. a host cluster: the preallocated one of a zero cluster, or a fresh
 *      one from the reservation (qcow2-alloc.c: its refcount is already
 *      1 on disk and synced);
 *   2. the cluster's data written: the guest's bytes, and for the rest of
 *      the cluster the backing file's bytes (copy on write), the old
 *      cluster's (compressed: inflated), or zeroes (a fresh cluster is a
 *      hole that reads as zeroes: only the guest's bytes are written);
 *   3. after that write completed, the L2 entry is written (one block of
 *      the cached table); a new L2 table is written whole, then its L1
 *      entry;
 *   4. after those writes completed, the guest's request is completed.
 * Each step is issued only when the one before has completed, so after
 * the process dies at any point the file holds a prefix of this sequence:
 * a cluster counted but not referenced (a leak), or data no L2 entry
 * points at yet (the write was not acknowledged), never an entry pointing
 * at unwritten data or at a cluster whose refcount is 0.  For power loss,
 * the reservation's fdatasync keeps refcounts ahead of their use; a
 * guest's flush (fdatasync) makes everything completed before it durable,
 * metadata included, as NBD asks; a FUA write is followed by one.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../qcow2-int.h"
#include "blkstack/chain.h"
#include "blkstack/endian.h"
#include "blkstack/iov.h"

#define QCOW2_USAGE "qcow2:PATH (a qcow2 image, version 2 or 3)"

#define Q2_QUEUE_DEPTH 128u
#define Q2_SUBREQS     1024u
/* Helper threads: ftruncate, inflate, fdatasync where there is no aio
 * fdsync. */
#define Q2_THREADS	 2u
#define Q2_CLOSE_WAIT_NS (5ull * 1000 * 1000 * 1000)

struct qcow2_state;

static int qcow2_submit(void *state, struct bks_layer *self,
			struct bks_req *req)
{
	(void)self;
	q2_req_submit(state, req);
	return 0;
}

/* ---- open, close, info --------------------------------------------------- */

static bool power_of_two(uint32_t v)
{
	return v && !(v & (v - 1));
}

static int read_at(struct q2 *s, void *buf, size_t len, uint64_t off,
		   const char *what, struct bks_error *err)
{
	/* len is whole blocks; the file may end inside the last. */
	uint64_t want = off >= s->file_size	   ? 0
			: s->file_size - off < len ? s->file_size - off
						   : len;
	ssize_t n = want ? pread(s->img.fd, buf, len, (off_t)off) : 0;

	if (n < 0)
		return bks_error_set(err, errno, "%s: reading the %s", s->path,
				     what);
	if ((uint64_t)n < want)
		return bks_error_setmsg(
		    err, EIO, "%s: reading the %s: %zd of %llu bytes", s->path,
		    what, n, (unsigned long long)want);
	memset((char *)buf + n, 0, len - (size_t)n);
	return 0;
}

static int alloc_aligned(struct q2 *s, unsigned char **p, size_t len,
			 struct bks_error *err)
{
	if (posix_memalign((void **)p, 4096, len ? len : 4096) != 0) {
		*p = NULL;
		return bks_error_set(err, ENOMEM, "%s: %zu bytes", s->path,
				     len);
	}
	memset(*p, 0, len);
	return 0;
}

static int open_header(struct qcow2_state *st, struct bks_error *err)
{
	struct q2 *s = &st->s;
	uint64_t up =
	    (s->img.size + s->block_size - 1) & ~(uint64_t)(s->block_size - 1);
	size_t want = up < (2u << 20) ? (size_t)up : (2u << 20);
	size_t have = s->img.size < want ? (size_t)s->img.size : want;
	unsigned char *buf = NULL;
	int rc;

	rc = alloc_aligned(s, &buf, want, err);
	if (rc == 0)
		rc = read_at(s, buf, want, 0, "header", err);
	if (rc == 0)
		rc = bks_qcow2_header_parse(buf, have, s->img.size, &s->h, err);
	if (rc < 0 && err->code && !strstr(err->msg, s->path))
		bks_error_prepend(err, "%s: ", s->path);
	free(buf);
	return rc;
}

/*
 * Bytes of refcount table the image can come to need (every cluster it
 * has now, and every data cluster, L2 table and refcount block it can
 * get, counted, and room to move the table), at least what it has, at
 * most the format's limit: the table is allocated at that size at open,
 * so that growing it allocates nothing on the data path.
 */
static uint32_t reftable_cap(const struct q2 *s)
{
	const struct bks_qcow2_geom *g = &s->g;
	uint64_t cs = g->cluster_size;
	uint64_t data = (s->h.size + cs - 1) / cs;
	uint64_t total = (s->file_size + cs - 1) / cs + data +
			 (data + g->l2_entries - 1) / g->l2_entries +
			 ((uint64_t)s->h.l1_size * 8 + cs - 1) / cs + 64;
	uint64_t rb = (total + g->rb_entries - 1) / g->rb_entries;
	uint64_t cap = ((2 * rb + 64) * 8 + cs - 1) & ~(cs - 1);

	if (cap > BKS_QCOW2_MAX_REFTABLE_BYTES)
		cap = BKS_QCOW2_MAX_REFTABLE_BYTES & ~(cs - 1);
	if (cap < s->rt_bytes)
		cap = s->rt_bytes;
	return (uint32_t)cap;
}

static int open_tables(struct qcow2_state *st, struct bks_error *err)
{
	struct q2 *s = &st->s;
	uint32_t bs = s->block_size;
	int rc;

	s->l1_bytes = ((uint32_t)s->h.l1_size * 8 + bs - 1) & ~(bs - 1);
	if (s->l1_bytes == 0)
		s->l1_bytes = bs;
	if (s->h.l1_table_offset + (uint64_t)s->h.l1_size * 8 > s->file_size)
		return bks_error_setmsg(
		    err, EINVAL,
		    "%s: qcow2 header: L1 table at 0x%llx "
		    "is past the end of the file",
		    s->path, (unsigned long long)s->h.l1_table_offset);
	rc = alloc_aligned(s, &s->l1, s->l1_bytes, err);
	if (rc == 0)
		rc = read_at(s, s->l1, s->l1_bytes, s->h.l1_table_offset,
			     "L1 table", err);
	if (rc < 0)
		return rc;
	s->rt_bytes = s->h.refcount_table_clusters << s->h.cluster_bits;
	s->rt_entries = s->rt_bytes / 8;
	s->rt_cap = reftable_cap(s);
	rc = alloc_aligned(s, &s->rt, s->rt_cap, err);
	if (rc == 0)
		rc = read_at(s, s->rt, s->rt_bytes, s->h.refcount_table_offset,
			     "refcount table", err);
	if (rc < 0)
		return rc;
	rc = alloc_aligned(s, &s->hdr, bs, err);
	if (rc == 0)
		rc = read_at(s, s->hdr, bs, 0, "header", err);
	if (rc < 0)
		return rc;
	q2_mw_init(s, &s->hdr_mw, s->hdr, 0, bs, NULL);
	q2_mw_init(s, &s->l1_mw, s->l1, s->h.l1_table_offset, s->l1_bytes,
		   NULL);
	q2_mw_init(s, &s->rt_mw, s->rt, s->h.refcount_table_offset, s->rt_bytes,
		   NULL);
	return 0;
}

/* Clear the autoclear bits (unknown ones, and bitmaps: we do not keep
 * persistent bitmaps up to date), as the spec asks of a writer. */
static int clear_autoclear(struct qcow2_state *st, struct bks_error *err)
{
	struct q2 *s = &st->s;

	if (s->read_only || s->h.version < 3 || !s->h.autoclear_features)
		return 0;
	/* At open: a blocking write is fine here. */
	bks_put_be64(s->hdr + BKS_QCOW2_OFF_AUTOCLEAR, 0);
	if (pwrite(s->img.fd, s->hdr, s->block_size, 0) !=
	    (ssize_t)s->block_size)
		return bks_error_set(err, errno ? errno : EIO,
				     "%s: clearing the autoclear features",
				     s->path);
	s->h.autoclear_features = 0;
	return 0;
}

static int open_pools(struct qcow2_state *st, struct bks_error *err)
{
	struct q2 *s = &st->s;
	uint64_t cs = s->g.cluster_size;
	uint64_t n = (4u << 20) / cs;
	int rc;

	if (n < 4)
		n = 4;
	if (n > 64)
		n = 64;
	st->nqops = (unsigned int)n;
	st->qops = calloc(st->nqops, sizeof(*st->qops));
	if (!st->qops)
		return bks_error_set(err, ENOMEM, "%s: operations", s->path);
	rc = alloc_aligned(s, &st->qop_mem, st->nqops * cs, err);
	if (rc == 0)
		rc = alloc_aligned(s, &st->zero, cs, err);
	st->cbuf_size = 2 * cs + 2 * s->block_size;
	if (rc == 0)
		rc = alloc_aligned(s, &st->cbuf_mem, Q2_CBUFS * st->cbuf_size,
				   err);
	if (rc < 0)
		return rc;
	for (unsigned int i = st->nqops; i-- > 0;) {
		st->qops[i].st = st;
		st->qops[i].buf = st->qop_mem + i * cs;
		st->qops[i].next_free = st->free_qops;
		st->free_qops = &st->qops[i];
	}
	for (unsigned int i = Q2_QREQS; i-- > 0;) {
		st->qreqs[i].st = st;
		st->qreqs[i].next_free = st->free_qreqs;
		st->free_qreqs = &st->qreqs[i];
	}
	for (unsigned int i = Q2_CBUFS; i-- > 0;) {
		st->cbufs[i].buf = st->cbuf_mem + i * st->cbuf_size;
		st->cbufs[i].next = st->free_cbufs;
		st->free_cbufs = &st->cbufs[i];
	}
	for (unsigned int i = 0; i < Q2_CBUFS; i++) {
		struct cbuf *cb = &st->cbufs[i];

		if (inflateInit2(&cb->zs, -15) != Z_OK)
			return bks_error_setmsg(
			    err, ENOMEM, "%s: zlib inflateInit2", s->path);
		cb->zs_ok = true;
		cb->zd = ZSTD_createDCtx();
		if (!cb->zd)
			return bks_error_setmsg(err, ENOMEM,
						"%s: ZSTD_createDCtx", s->path);
	}
	return 0;
}

static void free_all(struct qcow2_state *st)
{
	struct q2 *s = &st->s;

	bks_aioq_free(s->q);
	s->q = NULL;
	bks_offload_free(s->off, Q2_CLOSE_WAIT_NS);
	s->off = NULL;
	q2_cache_free(s);
	for (unsigned int i = 0; i < Q2_CBUFS; i++) {
		struct cbuf *cb = &st->cbufs[i];

		if (cb->zs_ok)
			inflateEnd(&cb->zs);
		cb->zs_ok = false;
		ZSTD_freeDCtx(cb->zd);
		cb->zd = NULL;
	}
	free(st->qops);
	free(st->qop_mem);
	free(st->zero);
	free(st->cbuf_mem);
	free(s->l1);
	free(s->rt);
	free(s->hdr);
	s->hdr = NULL;
	free(st->parent_path);
	st->qops = NULL;
	st->qop_mem = st->zero = st->cbuf_mem = s->l1 = s->rt = NULL;
	st->parent_path = NULL;
	bks_image_close(&s->img);
}

static int qcow2_open(void *state, struct bks_layer *self,
		      const struct bks_open_args *args, struct bks_error *err)
{
	struct qcow2_state *st = state;
	struct q2 *s = &st->s;
	uint32_t off_align, mem_align;
	unsigned int flags;
	int rc;

	s->self = self;
	s->path = bks_layer_args(self);
	s->read_only = args->read_only;
	rc = bks_image_open_format(
	    &s->img, s->path, (args->read_only ? O_RDONLY : O_RDWR) | O_DIRECT,
	    err);
	if (rc < 0)
		return rc;
	s->block_size = s->img.block_size > 512 ? s->img.block_size : 512;
	bks_image_dio_align(&s->img, &off_align, &mem_align);
	if (off_align > s->block_size)
		s->block_size = off_align;
	s->mem_align =
	    mem_align && power_of_two(mem_align) ? mem_align : s->block_size;
	s->file_size = s->img.size;
	s->read_end = s->file_size & ~(uint64_t)(s->block_size - 1);
	rc = open_header(st, err);
	if (rc < 0)
		goto out;
	s->g = s->h.g;
	flags =
	    BKS_QCOW2_HAVE_ZSTD | (args->read_only ? 0 : BKS_QCOW2_OPEN_WRITE);
	rc = bks_qcow2_check_features(&s->h, flags, err);
	if (rc < 0) {
		bks_error_prepend(err, "%s: ", s->path);
		goto out;
	}
	if (s->h.size == 0 || s->h.size % s->block_size ||
	    s->g.cluster_size < s->block_size) {
		rc = bks_error_setmsg(
		    err, EINVAL,
		    "%s: qcow2 virtual size %llu is 0 or not a multiple of "
		    "the block size %u (or clusters are smaller)",
		    s->path, (unsigned long long)s->h.size, s->block_size);
		goto out;
	}
	rc = open_tables(st, err);
	if (rc == 0)
		rc = clear_autoclear(st, err);
	if (rc == 0)
		rc = q2_cache_init(s, args->meta_cache, err);
	if (rc == 0)
		rc = open_pools(st, err);
	if (rc < 0)
		goto out;
	s->alloc_end =
	    (s->file_size + s->g.cluster_size - 1) & ~(s->g.cluster_size - 1);
	rc = bks_offload_new(&s->off, args->loop, Q2_THREADS,
			     Q2_QUEUE_DEPTH + Q2_CBUFS + 8, err);
	if (rc == 0)
		rc = bks_aioq_new(&s->q, args->loop, Q2_QUEUE_DEPTH,
				  args->io_engine, s->off, err);
	if (rc < 0)
		bks_error_prepend(err, "%s: ", s->path);
out:
	if (rc < 0)
		free_all(st);
	return rc;
}

static void qcow2_close(void *state, struct bks_layer *self)
{
	struct qcow2_state *st = state;

	(void)self;
	q2_alloc_release(&st->s);
	free_all(st);
}

static int qcow2_info(void *state, struct bks_layer *self,
		      struct bks_info *info)
{
	struct qcow2_state *st = state;
	struct q2 *s = &st->s;

	/* After a reopen the framework has freed the args s->path pointed
	 * at and keeps an equal copy: point at that one. */
	s->path = bks_layer_args(self);
	info->size = s->h.size;
	info->block_size = s->block_size;
	info->max_io = 0;
	info->max_discard = BKS_FILE_MAX_RANGE;
	info->max_write_zeroes = BKS_FILE_MAX_RANGE;
	info->ops = BKS_OPF(BKS_OP_READ) | BKS_OPF(BKS_OP_WRITE) |
		    BKS_OPF(BKS_OP_FLUSH) | BKS_OPF(BKS_OP_DISCARD) |
		    BKS_OPF(BKS_OP_WRITE_ZEROES);
	info->read_only = s->read_only;
	info->can_fua = true;
	info->zero_no_hole = true;
	return 0;
}

/* ---- the backing file ---------------------------------------------------- */

/* Escape | and \ for a chain string (chain.h). */
static int put_escaped(char *buf, size_t size, size_t *pos, const char *s)
{
	for (; *s; s++) {
		if ((*s == '|' || *s == '\\') && *pos + 1 < size)
			buf[(*pos)++] = '\\';
		if (*pos + 1 >= size)
			return -ENAMETOOLONG;
		buf[(*pos)++] = *s;
	}
	buf[*pos] = 0;
	return 0;
}

/* Is the file at path a qcow2 image (its first bytes)?  At open. */
static int probe_qcow2(const char *path, bool *is_qcow2, struct bks_error *err)
{
	unsigned char magic[4];
	int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
	ssize_t n;

	if (fd < 0)
		return bks_error_set(err, errno, "backing file %s", path);
	n = pread(fd, magic, sizeof(magic), 0);
	close(fd);
	*is_qcow2 = n == 4 && bks_qcow2_probe(magic, 4);
	return 0;
}

static int qcow2_get_parent(void *state, struct bks_layer *self, char *buf,
			    size_t size, struct bks_error *err)
{
	struct qcow2_state *st = state;
	struct q2 *s = &st->s;
	const char *name = s->h.backing_file;
	const char *fmt = s->h.has_backing_format ? s->h.backing_format : NULL;
	char path[PATH_MAX];
	bool is_qcow2 = false;
	size_t pos = 0;
	int rc;

	(void)self;
	if (!s->h.has_backing)
		return BKS_NO_PARENT;
	if (name[0] == '/') {
		if (strlen(name) >= sizeof(path))
			return bks_error_setmsg(err, ENAMETOOLONG,
						"%s: backing file name too "
						"long",
						s->path);
		strcpy(path, name);
	} else {
		/* Relative to the directory of the image naming it. */
		const char *slash = strrchr(s->path, '/');
		int dl = (int)(slash - s->path);

		if (snprintf(path, sizeof(path), "%.*s/%s", dl, s->path,
			     name) >= (int)sizeof(path))
			return bks_error_setmsg(err, ENAMETOOLONG,
						"%s: backing file name too "
						"long",
						s->path);
	}
	if (fmt && strcmp(fmt, "qcow2") == 0) {
		is_qcow2 = true;
	} else if (fmt && strcmp(fmt, "raw") == 0) {
		is_qcow2 = false;
	} else if (fmt) {
		char shown[BKS_QCOW2_MAX_BACKING_FMT + 1];

		snprintf(shown, sizeof(shown), "%s", fmt);
		bks_sanitize_line(shown);
		return bks_error_setmsg(err, ENOTSUP,
					"%s: backing file %s has format '%s': "
					"only qcow2 and raw are supported",
					s->path, path, shown);
	} else {
		rc = probe_qcow2(path, &is_qcow2, err);
		if (rc < 0)
			return bks_error_prepend(err, "%s: ", s->path);
	}
	rc = put_escaped(buf, size, &pos, is_qcow2 ? "qcow2:" : "aio:");
	if (rc == 0)
		rc = put_escaped(buf, size, &pos, path);
	if (rc < 0)
		return bks_error_setmsg(err, ENAMETOOLONG,
					"%s: backing file %s: name too long",
					s->path, path);
	return 0;
}

/* ---- reopen: a change of read-only mode ---------------------------------- */

/*
 * The chain is drained for all of this (driver.h): blocking calls are
 * allowed, nothing is in flight in the layer.
 *
 * read-only -> read-write, in prepare: the header is read again and
 * checked as for a writable open (dirty and corrupt bits, unknown
 * features, ...; snapshots are only refused if the format code refuses
 * them for writing), it must describe the same image as the one served
 * (else the file changed under us: -ESTALE), an O_RDWR descriptor of the
 * same file (same device and inode, else -ESTALE: the file was replaced)
 * is opened, and the autoclear bits are cleared through it (what a
 * writable open does; harmless if the reopen is aborted).  The allocator
 * starts from the end of the file as at open: a read-only layer never
 * reserved anything.  commit only puts the new descriptor in place of the
 * old one (dup2: the aioq and every path keep the same fd number) and
 * flips the mode.
 *
 * read-write -> read-only, in prepare: fdatasync (every write completed
 * before the drain is on disk: metadata is written through), the
 * reservation given back (refcounts of unused reserved clusters set to 0
 * and synced, the file truncated back: q2_alloc_release), the cache
 * dropped (the release wrote refcount blocks behind it), and an O_RDONLY
 * descriptor of the same file opened.  A failure leaves the layer
 * writable with no reservation: the next allocation reserves again.
 * blkstack never sets the qcow2 dirty bit (no lazy refcounts for
 * writing), so there is none to clear.
 */

static int reopen_fd_check(struct q2 *s, int fd, struct bks_error *err)
{
	struct stat a, b;

	if (fstat(s->img.fd, &a) < 0 || fstat(fd, &b) < 0)
		return bks_error_set(err, errno, "%s: reopen: fstat", s->path);
	if (a.st_dev != b.st_dev || a.st_ino != b.st_ino)
		return bks_error_setmsg(
		    err, ESTALE, "%s: reopen: the file was replaced", s->path);
	return 0;
}

static int reopen_to_rw(struct qcow2_state *st, struct bks_error *err)
{
	struct q2 *s = &st->s;
	struct bks_qcow2_header *h = NULL;
	struct bks_qcow2_header *saved = NULL;
	int rc;

	h = malloc(sizeof(*h));
	saved = malloc(sizeof(*saved));
	if (!h || !saved) {
		rc = bks_error_set(err, ENOMEM, "%s: reopen", s->path);
		goto out;
	}
	/* The header as it is on disk now (open_header parses into s->h:
	 * keep the served one aside and put it back). */
	*saved = s->h;
	rc = open_header(st, err);
	*h = s->h;
	s->h = *saved;
	if (rc < 0)
		goto out;
	rc = bks_qcow2_check_features(
	    h, BKS_QCOW2_HAVE_ZSTD | BKS_QCOW2_OPEN_WRITE, err);
	if (rc < 0) {
		bks_error_prepend(err, "%s: reopen read-write: ", s->path);
		goto out;
	}
	if (h->size != s->h.size || h->cluster_bits != s->h.cluster_bits ||
	    h->l1_table_offset != s->h.l1_table_offset ||
	    h->l1_size != s->h.l1_size ||
	    h->refcount_table_offset != s->h.refcount_table_offset ||
	    h->refcount_table_clusters != s->h.refcount_table_clusters) {
		rc = bks_error_setmsg(err, ESTALE,
				      "%s: reopen read-write: the image was "
				      "changed by someone else while open",
				      s->path);
		goto out;
	}
	st->reopen_fd =
	    open(s->path, O_RDWR | O_DIRECT | O_CLOEXEC | O_NONBLOCK);
	if (st->reopen_fd < 0) {
		rc =
		    bks_error_set(err, errno, "%s: reopen read-write", s->path);
		goto out;
	}
	rc = reopen_fd_check(s, st->reopen_fd, err);
	if (rc == 0 && s->h.version >= 3 && s->h.autoclear_features) {
		bks_put_be64(s->hdr + BKS_QCOW2_OFF_AUTOCLEAR, 0);
		if (pwrite(st->reopen_fd, s->hdr, s->block_size, 0) !=
			(ssize_t)s->block_size ||
		    fdatasync(st->reopen_fd) < 0)
			rc = bks_error_set(err, errno ? errno : EIO,
					   "%s: clearing the autoclear "
					   "features",
					   s->path);
		else
			s->h.autoclear_features = 0;
	}
	if (rc < 0) {
		close(st->reopen_fd);
		st->reopen_fd = -1;
	}
out:
	free(h);
	free(saved);
	return rc;
}

static int reopen_to_ro(struct qcow2_state *st, struct bks_error *err)
{
	struct q2 *s = &st->s;
	int rc;

	if (fdatasync(s->img.fd) < 0)
		return bks_error_set(
		    err, errno, "%s: reopen read-only: fdatasync", s->path);
	q2_alloc_release(s);
	q2_cache_drop_all(s);
	s->res_next = s->res_end = 0;
	s->alloc_end =
	    (s->file_size + s->g.cluster_size - 1) & ~(s->g.cluster_size - 1);
	st->reopen_fd =
	    open(s->path, O_RDONLY | O_DIRECT | O_CLOEXEC | O_NONBLOCK);
	if (st->reopen_fd < 0)
		return bks_error_set(err, errno, "%s: reopen read-only",
				     s->path);
	rc = reopen_fd_check(s, st->reopen_fd, err);
	if (rc < 0) {
		close(st->reopen_fd);
		st->reopen_fd = -1;
	}
	return rc;
}

static int qcow2_reopen_prepare(void *state, struct bks_layer *self,
				const struct bks_open_args *args,
				struct bks_error *err)
{
	struct qcow2_state *st = state;
	struct q2 *s = &st->s;
	int rc;

	st->reopen_pending = false;
	st->reopen_fd = -1;
	s->path = bks_layer_args(self);
	if (!args->args || strcmp(args->args, s->path) != 0)
		return bks_error_setmsg(err, EOPNOTSUPP,
					"qcow2: reopen: only the read-only "
					"mode can change");
	if (args->read_only == s->read_only)
		return 0;
	rc = args->read_only ? reopen_to_ro(st, err) : reopen_to_rw(st, err);
	if (rc < 0)
		return rc;
	st->reopen_pending = true;
	st->reopen_ro = args->read_only;
	return 0;
}

static void qcow2_reopen_commit(void *state, struct bks_layer *self)
{
	struct qcow2_state *st = state;
	struct q2 *s = &st->s;

	(void)self;
	if (!st->reopen_pending)
		return;
	/* The same fd number, now the new open file description: the
	 * aioq and every later call use it.  dup2 of two open fds does not
	 * fail but for EINTR/EBUSY (a racing open in another thread). */
	while (dup2(st->reopen_fd, s->img.fd) < 0 &&
	       (errno == EINTR || errno == EBUSY))
		;
	close(st->reopen_fd);
	st->reopen_fd = -1;
	st->reopen_pending = false;
	s->read_only = st->reopen_ro;
}

static void qcow2_reopen_abort(void *state, struct bks_layer *self)
{
	struct qcow2_state *st = state;

	(void)self;
	if (st->reopen_pending && st->reopen_fd >= 0)
		close(st->reopen_fd);
	st->reopen_fd = -1;
	st->reopen_pending = false;
}

/* ---- set_backing --------------------------------------------------------- */

/* The bytes of the header area the new layout writes at most: one 4 KiB
 * block (see qcow2_set_backing). */
#define Q2_HEADER_AREA 4096u

/*
 * Build the header area anew in buf (area bytes, read from the file):
 * the header fields as they are (backing offset and size replaced), the
 * extensions as they are except the backing format one (replaced by
 * fmt's, or dropped), the end extension, then the name.  Returns the
 * bytes used, or -ENAMETOOLONG if they do not fit in area bytes.
 */
static int build_header_area(const struct q2 *s, unsigned char *buf,
			     uint32_t area, const char *name, const char *fmt,
			     bool drop_table)
{
	unsigned char *tmp = malloc(area);
	uint32_t hlen = s->h.version >= 3 ? s->h.header_length : 72;
	uint32_t in = hlen, out = hlen;
	size_t nlen = name ? strlen(name) : 0;
	size_t flen = fmt ? strlen(fmt) : 0;
	bool found_end = false;

	if (!tmp)
		return -ENOMEM;
	memcpy(tmp, buf, area);
	/* The extensions after the header fields, copied but the backing
	 * format (and, if asked, the feature name table: informational). */
	/* As qemu reads them: up to the END extension, or to the old
	 * backing name (an image without extensions has the name right
	 * after the header). */
	uint64_t ext_end = s->h.has_backing && s->h.backing_file_offset &&
				   s->h.backing_file_offset < area
			       ? s->h.backing_file_offset
			       : area;

	while (in + 8 <= area) {
		if (in >= ext_end) {
			found_end = true;
			break;
		}
		uint32_t type = bks_get_be32(tmp + in);
		uint32_t len = bks_get_be32(tmp + in + 4);
		uint32_t padded = (len + 7) & ~7u;

		if (type == BKS_QCOW2_EXT_END) {
			found_end = true;
			break;
		}
		if (in + 8 + padded > area)
			break;
		if (type != BKS_QCOW2_EXT_BACKING_FORMAT &&
		    !(drop_table && type == BKS_QCOW2_EXT_FEATURE_TABLE)) {
			if (out + 8 + padded > area)
				goto toolong;
			memmove(buf + out, tmp + in, 8 + padded);
			out += 8 + padded;
		}
		in += 8 + padded;
	}
	/* Extensions past the area would be lost: refuse. */
	if (!found_end)
		goto toolong;
	if (fmt) {
		uint32_t padded = ((uint32_t)flen + 7) & ~7u;

		if (out + 8 + padded > area)
			goto toolong;
		bks_put_be32(buf + out, BKS_QCOW2_EXT_BACKING_FORMAT);
		bks_put_be32(buf + out + 4, (uint32_t)flen);
		memset(buf + out + 8, 0, padded);
		memcpy(buf + out + 8, fmt, flen);
		out += 8 + padded;
	}
	if (out + 8 + nlen > area)
		goto toolong;
	memset(buf + out, 0, 8); /* the end extension */
	out += 8;
	bks_put_be64(buf + BKS_QCOW2_OFF_BACKING_OFFSET, nlen ? out : 0);
	bks_put_be32(buf + BKS_QCOW2_OFF_BACKING_SIZE, (uint32_t)nlen);
	memcpy(buf + out, name ? name : "", nlen);
	out += (uint32_t)nlen;
	/* What the old layout had beyond is left as it was: nothing points
	 * at it any more (the name and the extensions end before). */
	free(tmp);
	return (int)out;
toolong:
	free(tmp);
	return -ENAMETOOLONG;
}

/*
 * Crash order: the whole header area (header fields, extensions, the
 * backing name) is rewritten in ONE aligned write of the file's first
 * 4 KiB (all of it within the first cluster, which holds nothing else),
 * followed by fdatasync.  One write is enough: a process crash (SIGKILL)
 * cannot tear a write the kernel has taken (it either happened or it did
 * not), and on power loss a 4 KiB aligned write is one block of the file
 * system and one page, which 4 KiB-sector devices write atomically; on
 * 512-byte-sector devices a torn write at power loss is possible in
 * principle (as for qemu-img rebase's header rewrite).  The old and the
 * new layouts each name a parent; there is no moment with neither.
 */
static int qcow2_set_backing(void *state, struct bks_layer *self,
			     const char *backing, struct bks_error *err)
{
	struct qcow2_state *st = state;
	struct q2 *s = &st->s;
	struct bks_chain_spec spec = {0};
	const char *name = NULL, *fmt = NULL;
	uint32_t area = Q2_HEADER_AREA;
	unsigned char *buf = NULL;
	int fd = -1, rc, used;

	(void)self;
	if (area > s->g.cluster_size)
		area = (uint32_t)s->g.cluster_size;
	if (area < s->block_size)
		area = s->block_size;
	if (backing) {
		rc = bks_chain_parse(backing, strlen(backing), &spec, err);
		if (rc < 0)
			goto prepend;
		if (spec.n != 1 || spec.layers[0].desc->kind != BKS_SINK ||
		    !spec.layers[0].desc->args_path ||
		    spec.layers[0].args[0] != '/') {
			rc = bks_error_setmsg(err, EINVAL,
					      "backing %s: not one image sink "
					      "with an absolute path",
					      backing);
			goto prepend;
		}
		if (strcmp(spec.layers[0].desc->name, "vhd") == 0) {
			rc = bks_error_setmsg(err, EINVAL,
					      "backing %s: a qcow2 image's "
					      "backing file is qcow2 or raw",
					      backing);
			goto prepend;
		}
		name = spec.layers[0].args;
		fmt = strcmp(spec.layers[0].desc->name, "qcow2") == 0 ? "qcow2"
								      : "raw";
		if (strlen(name) > BKS_QCOW2_MAX_BACKING_NAME) {
			rc = bks_error_setmsg(err, ENAMETOOLONG,
					      "backing file name longer than "
					      "%u bytes",
					      BKS_QCOW2_MAX_BACKING_NAME);
			goto prepend;
		}
	}
	if (posix_memalign((void **)&buf, 4096, area) != 0) {
		buf = NULL;
		rc = bks_error_set(err, ENOMEM, "header area");
		goto prepend;
	}
	/* Its own descriptor, for writing even when the layer is
	 * read-only; O_DIRECT like the layer's, so that no cached page of
	 * the file is older than what we write. */
	fd = open(s->path, O_RDWR | O_DIRECT | O_CLOEXEC | O_NONBLOCK);
	if (fd < 0) {
		rc = bks_error_set(err, errno, "open for writing");
		goto prepend;
	}
	rc = reopen_fd_check(s, fd, err);
	if (rc < 0)
		goto out;
	if (pread(fd, buf, area, 0) != (ssize_t)area) {
		rc = bks_error_set(err, errno ? errno : EIO,
				   "reading the header area");
		goto prepend;
	}
	used = build_header_area(s, buf, area, name, fmt, false);
	if (used == -ENAMETOOLONG) {
		if (pread(fd, buf, area, 0) != (ssize_t)area) {
			rc = bks_error_set(err, errno ? errno : EIO,
					   "reading the header area");
			goto prepend;
		}
		used = build_header_area(s, buf, area, name, fmt, true);
	}
	if (used < 0) {
		rc = bks_error_setmsg(err, -used,
				      "the new backing name and extensions do "
				      "not fit in the first %u bytes",
				      area);
		goto prepend;
	}
	if (pwrite(fd, buf, area, 0) != (ssize_t)area || fdatasync(fd) < 0) {
		rc = bks_error_set(err, errno ? errno : EIO,
				   "writing the header");
		goto prepend;
	}
	/* What is served from now on (get_parent, the cursors). */
	memcpy(s->hdr, buf, s->block_size);
	s->h.has_backing = name != NULL;
	s->h.backing_file_offset =
	    bks_get_be64(buf + BKS_QCOW2_OFF_BACKING_OFFSET);
	s->h.backing_file_size = (uint32_t)(name ? strlen(name) : 0);
	snprintf(s->h.backing_file, sizeof(s->h.backing_file), "%s",
		 name ? name : "");
	s->h.has_backing_format = fmt != NULL;
	snprintf(s->h.backing_format, sizeof(s->h.backing_format), "%s",
		 fmt ? fmt : "");
	rc = 0;
	goto out;
prepend:
	bks_error_prepend(err, "%s: set backing file: ", s->path);
out:
	if (fd >= 0)
		close(fd);
	free(buf);
	bks_chain_spec_free(&spec);
	return rc;
}

/* ---- stats --------------------------------------------------------------- */

static void qcow2_stats(void *state, struct bks_layer *self,
			struct bks_stats_out *out)
{
	struct qcow2_state *st = state;
	struct q2 *s = &st->s;
	const struct q2_stats *c = &s->st;

	(void)self;
	bks_stats_u64(out, "version", s->h.version);
	bks_stats_u64(out, "cluster_size", s->g.cluster_size);
	bks_stats_u64(out, "cache_slots", s->nslots);
	bks_stats_u64(out, "cache_hits", c->cache_hits);
	bks_stats_u64(out, "cache_misses", c->cache_misses);
	bks_stats_u64(out, "cache_evictions", c->cache_evictions);
	bks_stats_u64(out, "cache_waits", c->cache_waits);
	bks_stats_u64(out, "meta_writes", c->meta_writes);
	bks_stats_u64(out, "clusters_allocated", c->clusters_allocated);
	bks_stats_u64(out, "clusters_reserved", c->clusters_reserved);
	bks_stats_u64(out, "reservations", c->reservations);
	bks_stats_u64(out, "l2_allocated", c->l2_allocated);
	bks_stats_u64(out, "refblocks_allocated", c->refblocks_allocated);
	bks_stats_u64(out, "reftable_grown", c->reftable_grown);
	bks_stats_u64(out, "clusters_freed", c->clusters_freed);
	bks_stats_u64(out, "unref_errors", c->unref_errors);
	bks_stats_u64(out, "zero_clusters", c->zero_clusters);
	bks_stats_u64(out, "cow_bytes", c->cow_bytes);
	bks_stats_u64(out, "compressed_reads", c->compressed_reads);
	bks_stats_u64(out, "inflate_errors", st->inflate_errors);
	bks_stats_u64(out, "bad_entries", st->bad_entries);
	bks_stats_str(out, "last_error", st->last_error);
	bks_stats_u64(out, "alloc_waits", c->alloc_waits);
	bks_stats_u64(out, "subreq_waits", c->sub_waits);
}

#define QCOW2_DESC                                                             \
	{                                                                      \
		.name = "qcow2", .kind = BKS_SINK, .args_path = true,          \
		.usage = QCOW2_USAGE                                           \
	}

const struct bks_driver_desc bks_desc_qcow2 = QCOW2_DESC;

const struct bks_driver bks_driver_qcow2 = {
    .desc = QCOW2_DESC,
    .state_size = sizeof(struct qcow2_state),
    .subreq_max = Q2_SUBREQS,
    .subreq_data_size = sizeof(struct q2_sub),
    .open = qcow2_open,
    .close = qcow2_close,
    .info = qcow2_info,
    .read = qcow2_submit,
    .write = qcow2_submit,
    .flush = qcow2_submit,
    .discard = qcow2_submit,
    .write_zeroes = qcow2_submit,
    .block_status = qcow2_submit,
    .get_parent = qcow2_get_parent,
    .reopen_prepare = qcow2_reopen_prepare,
    .reopen_commit = qcow2_reopen_commit,
    .reopen_abort = qcow2_reopen_abort,
    .set_backing = qcow2_set_backing,
    .stats = qcow2_stats,
};
