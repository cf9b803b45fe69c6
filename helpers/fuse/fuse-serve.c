/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * blkstack-fuse's FUSE side (fuse-serve.h).  Each FUSE request that needs
 * the disk becomes a struct fq holding one NBD request per part (one for
 * read, write and flush; one per GiB for fallocate) and, for read and
 * write, the data; the reply goes out when every part is done.
 */
#define FUSE_USE_VERSION 35

#include <errno.h>
#include <fcntl.h>
#include <fuse_lowlevel.h>
#include <linux/falloc.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <syslog.h>
#include <unistd.h>

#include "blkstack/nbd-proto.h"
#include "fuse-serve.h"

#define INO_ROOT  1
#define INO_FILE  2
#define FILE_NAME "nbd"
/* Largest read and write the kernel sends (FUSE_MAX_PAGES: 256 pages). */
#define IO_MAX (1u << 20)
/* fallocate parts: at most this much per NBD request. */
#define ZERO_PART (1u << 30)
/* The file's attributes never change while mounted. */
#define ATTR_TIMEOUT 3600.0
/* Writes from this size on keep libfuse's buffer instead of a copy. */
#define STEAL_MIN (64u << 10)
/* /dev/fuse reads per loop callback, so that NBD replies get their turn. */
#define FUSE_BATCH 64
/*
 * Request blocks kept for reuse (fq_new, fq_free), by data capacity:
 * class i holds 4 KiB << i, up to POOL_KEEP of each; bigger ones are
 * allocated and freed each time.  Without it, the blocks freed at the
 * heap's top made malloc give memory back (brk) and fault it in again
 * for the next requests: about a fifth of blkstack-fuse's CPU at 4 KiB.
 */
#define POOL_CLASSES 6
#define POOL_MIN     4096u
#define POOL_KEEP    64u

struct fq;

struct bf_fuse {
	struct fuse_session *se;
	struct bks_loop *loop;
	struct bf_nbd *nbd;
	struct bf_log *log;
	struct bks_watch w;
	bool watching, mounted, detached, ended;
	struct fuse_buf fbuf;
	struct fq *pool[POOL_CLASSES]; /* free blocks, linked by ->next */
	unsigned int pooled[POOL_CLASSES];
	char *mnt;
	uint64_t size;
	bool ro, can_flush, can_zero;
};

enum {
	K_READ,
	K_WRITE,
	K_OTHER
};

struct fq {
	struct bf_fuse *f;
	struct fq *next; /* in the pool */
	int cls;	 /* pool class, or -1 */
	char *mem;	 /* the block: data capacity bytes, then this */
	fuse_req_t req;
	int kind;
	int rc;
	unsigned int pending;
	uint32_t len; /* read and write: the bytes */
	char *data;
	void *owned; /* a write's libfuse receive buffer, taken over */
	struct bf_req parts[];
};

/* The pool class for datalen bytes (one part), or -1 for none. */
static int fq_class(size_t datalen)
{
	for (int i = 0; i < POOL_CLASSES; i++)
		if (datalen <= (size_t)POOL_MIN << i)
			return i;
	return -1;
}

static void fq_free(struct fq *q)
{
	struct bf_fuse *f = q->f;

	free(q->owned);
	if (q->cls >= 0 && f->pooled[q->cls] < POOL_KEEP) {
		q->next = f->pool[q->cls];
		f->pool[q->cls] = q;
		f->pooled[q->cls]++;
		return;
	}
	free(q->mem);
}

static void fq_done(struct bf_req *part, int rc)
{
	struct fq *q = part->opaque;

	if (rc < 0 && !q->rc)
		q->rc = rc;
	if (--q->pending)
		return;
	if (q->rc)
		fuse_reply_err(q->req, -q->rc);
	else if (q->kind == K_READ)
		fuse_reply_buf(q->req, q->data, q->len);
	else if (q->kind == K_WRITE)
		fuse_reply_write(q->req, q->len);
	else
		fuse_reply_err(q->req, 0);
	fq_free(q);
}

/*
 * A request of nparts parts and datalen bytes of data, or NULL.  The
 * data comes first in its block, page-aligned, so that a 4 KiB read's
 * reply is one page for the kernel to pin and copy, not two.
 */
static struct fq *fq_new(struct bf_fuse *f, fuse_req_t req, int kind,
			 unsigned int nparts, size_t datalen)
{
	size_t hdr = sizeof(struct fq) + nparts * sizeof(struct bf_req);
	int cls = nparts == 1 ? fq_class(datalen) : -1;
	size_t cap = cls >= 0
			 ? (size_t)POOL_MIN << cls
			 : (datalen + POOL_MIN - 1) & ~(size_t)(POOL_MIN - 1);
	struct fq *q;
	void *mem;

	if (cls >= 0 && f->pool[cls]) {
		q = f->pool[cls];
		f->pool[cls] = q->next;
		f->pooled[cls]--;
		mem = q->mem;
	} else {
		if (posix_memalign(&mem, POOL_MIN, cap + hdr) != 0)
			return NULL;
		q = (struct fq *)((char *)mem + cap);
	}
	memset(q, 0, hdr);
	q->mem = mem;
	q->cls = cls;
	q->f = f;
	q->req = req;
	q->kind = kind;
	q->data = datalen ? mem : NULL;
	return q;
}

static void fq_part(struct fq *q, unsigned int i, uint16_t cmd, uint16_t flags,
		    uint64_t off, uint32_t len, char *buf)
{
	struct bf_req *r = &q->parts[i];

	r->cmd = cmd;
	r->flags = flags;
	r->off = off;
	r->len = len;
	r->buf = buf;
	r->done = fq_done;
	r->opaque = q;
}

static void fq_submit(struct fq *q, unsigned int nparts)
{
	/* One extra count so that a part done at once cannot reply early. */
	q->pending = nparts + 1;
	for (unsigned int i = 0; i < nparts; i++)
		bf_nbd_submit(q->f->nbd, &q->parts[i]);
	fq_done(&(struct bf_req){.opaque = q}, 0);
}

/* ---- attributes and names ------------------------------------------------ */

static void fill_attr(const struct bf_fuse *f, fuse_ino_t ino, struct stat *st)
{
	memset(st, 0, sizeof(*st));
	st->st_ino = ino;
	st->st_uid = getuid();
	st->st_gid = getgid();
	st->st_blksize = 4096;
	if (ino == INO_ROOT) {
		st->st_mode = S_IFDIR | 0755;
		st->st_nlink = 2;
	} else {
		st->st_mode = S_IFREG | (f->ro ? 0400 : 0600);
		st->st_nlink = 1;
		st->st_size = (off_t)f->size;
		st->st_blocks = (blkcnt_t)((f->size + 511) / 512);
	}
}

static void op_init(void *userdata, struct fuse_conn_info *conn)
{
	(void)userdata;
	conn->max_write = IO_MAX;
	conn->max_read = IO_MAX; /* must match the max_read mount option */
	conn->max_readahead = IO_MAX;
	conn->max_background = 64;
	conn->congestion_threshold = 48;
	if (conn->capable & FUSE_CAP_ASYNC_DIO)
		conn->want |= FUSE_CAP_ASYNC_DIO;
	conn->want &= ~(unsigned)(FUSE_CAP_SPLICE_READ | FUSE_CAP_SPLICE_WRITE |
				  FUSE_CAP_SPLICE_MOVE);
}

static void op_lookup(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	struct bf_fuse *f = fuse_req_userdata(req);
	struct fuse_entry_param e = {.ino = INO_FILE,
				     .attr_timeout = ATTR_TIMEOUT,
				     .entry_timeout = ATTR_TIMEOUT};

	if (parent != INO_ROOT || strcmp(name, FILE_NAME) != 0) {
		fuse_reply_err(req, ENOENT);
		return;
	}
	fill_attr(f, INO_FILE, &e.attr);
	fuse_reply_entry(req, &e);
}

static void op_getattr(fuse_req_t req, fuse_ino_t ino,
		       struct fuse_file_info *fi)
{
	struct bf_fuse *f = fuse_req_userdata(req);
	struct stat st;

	(void)fi;
	if (ino != INO_ROOT && ino != INO_FILE) {
		fuse_reply_err(req, ENOENT);
		return;
	}
	fill_attr(f, ino, &st);
	fuse_reply_attr(req, &st, ATTR_TIMEOUT);
}

static void op_setattr(fuse_req_t req, fuse_ino_t ino, struct stat *attr,
		       int to_set, struct fuse_file_info *fi)
{
	struct bf_fuse *f = fuse_req_userdata(req);

	/* The size is the disk's; times and modes are not kept. */
	if (ino == INO_FILE && (to_set & FUSE_SET_ATTR_SIZE) &&
	    (uint64_t)attr->st_size != f->size) {
		fuse_reply_err(req, EPERM);
		return;
	}
	op_getattr(req, ino, fi);
}

static void op_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct bf_fuse *f = fuse_req_userdata(req);

	if (ino == INO_ROOT) {
		fuse_reply_err(req, EISDIR);
		return;
	}
	if (ino != INO_FILE) {
		fuse_reply_err(req, ENOENT);
		return;
	}
	if (f->ro && (fi->flags & O_ACCMODE) != O_RDONLY) {
		fuse_reply_err(req, EROFS);
		return;
	}
	fi->direct_io = 1;
	fi->keep_cache = 0;
	/* A new user (a loop device being attached): no hurry any more. */
	bf_nbd_hurry(f->nbd, 0);
	fuse_reply_open(req, fi);
}

static void op_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
		       struct fuse_file_info *fi)
{
	static const char *const names[] = {".", "..", FILE_NAME};
	static const fuse_ino_t inos[] = {INO_ROOT, INO_ROOT, INO_FILE};
	char buf[512];
	size_t used = 0;

	(void)fi;
	if (ino != INO_ROOT) {
		fuse_reply_err(req, ENOTDIR);
		return;
	}
	for (off_t i = off < 0 ? 0 : off; i < 3; i++) {
		struct stat st = {.st_ino = inos[i],
				  .st_mode = i < 2 ? S_IFDIR : S_IFREG};
		size_t want =
		    fuse_add_direntry(req, NULL, 0, names[i], NULL, 0);

		if (used + want > size || used + want > sizeof(buf))
			break;
		fuse_add_direntry(req, buf + used, sizeof(buf) - used, names[i],
				  &st, i + 1);
		used += want;
	}
	fuse_reply_buf(req, buf, used);
}

/* ---- the data path ------------------------------------------------------- */

static void op_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
		    struct fuse_file_info *fi)
{
	struct bf_fuse *f = fuse_req_userdata(req);
	uint64_t o = (uint64_t)off;
	struct fq *q;

	(void)fi;
	if (ino != INO_FILE || off < 0) {
		fuse_reply_err(req, EINVAL);
		return;
	}
	if (o >= f->size || size == 0) {
		fuse_reply_buf(req, NULL, 0);
		return;
	}
	if (size > IO_MAX)
		size = IO_MAX;
	if (size > f->size - o)
		size = (size_t)(f->size - o);
	q = fq_new(f, req, K_READ, 1, size);
	if (!q) {
		fuse_reply_err(req, ENOMEM);
		return;
	}
	q->len = (uint32_t)size;
	fq_part(q, 0, NBD_CMD_READ, 0, o, (uint32_t)size, q->data);
	fq_submit(q, 1);
}

static void op_write(fuse_req_t req, fuse_ino_t ino, const char *buf,
		     size_t size, off_t off, struct fuse_file_info *fi)
{
	struct bf_fuse *f = fuse_req_userdata(req);
	uint64_t o = (uint64_t)off;
	struct fq *q;
	bool steal;

	(void)fi;
	if (ino != INO_FILE || off < 0) {
		fuse_reply_err(req, EINVAL);
		return;
	}
	if (f->ro) {
		fuse_reply_err(req, EROFS);
		return;
	}
	if (o >= f->size) {
		fuse_reply_err(req, size ? ENOSPC : 0);
		return;
	}
	if (size > IO_MAX)
		size = IO_MAX;
	if (size > f->size - o)
		size = (size_t)(f->size - o);
	steal = size >= STEAL_MIN && f->fbuf.mem &&
		buf >= (const char *)f->fbuf.mem &&
		buf + size <= (const char *)f->fbuf.mem + f->fbuf.size;
	q = fq_new(f, req, K_WRITE, 1, steal ? 0 : size);
	if (!q) {
		fuse_reply_err(req, ENOMEM);
		return;
	}
	/*
	 * buf is in libfuse's receive buffer, which the next receive reuses:
	 * take a big write's buffer over (libfuse allocates a new one when
	 * it finds none), so that its payload is not copied; a small one is
	 * copied into the request's block.  It stays until the request is
	 * done, and is what a reconnect re-sends.
	 */
	if (steal) {
		q->owned = f->fbuf.mem;
		f->fbuf.mem = NULL;
		q->data = (char *)buf;
	} else {
		memcpy(q->data, buf, size);
	}
	q->len = (uint32_t)size;
	fq_part(q, 0, NBD_CMD_WRITE, 0, o, (uint32_t)size, q->data);
	fq_submit(q, 1);
}

static void do_flush(fuse_req_t req)
{
	struct bf_fuse *f = fuse_req_userdata(req);
	struct fq *q;

	if (f->ro || !f->can_flush) {
		fuse_reply_err(req, 0);
		return;
	}
	q = fq_new(f, req, K_OTHER, 1, 0);
	if (!q) {
		fuse_reply_err(req, ENOMEM);
		return;
	}
	fq_part(q, 0, NBD_CMD_FLUSH, 0, 0, 0, NULL);
	fq_submit(q, 1);
}

static void op_fsync(fuse_req_t req, fuse_ino_t ino, int datasync,
		     struct fuse_file_info *fi)
{
	(void)ino;
	(void)datasync;
	(void)fi;
	do_flush(req);
}

static void op_flush(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	(void)ino;
	(void)fi;
	do_flush(req);
}

static void op_fallocate(fuse_req_t req, fuse_ino_t ino, int mode, off_t off,
			 off_t length, struct fuse_file_info *fi)
{
	struct bf_fuse *f = fuse_req_userdata(req);
	uint64_t o = (uint64_t)off, len = (uint64_t)length;
	unsigned int n, i;
	uint16_t flags;
	struct fq *q;

	(void)fi;
	if (ino != INO_FILE || off < 0 || length <= 0) {
		fuse_reply_err(req, EINVAL);
		return;
	}
	if (f->ro) {
		fuse_reply_err(req, EROFS);
		return;
	}
	if (mode == 0) {
		/* Allocation inside the disk: it is all there already. */
		fuse_reply_err(req, o + len <= f->size ? 0 : EOPNOTSUPP);
		return;
	}
	if (mode == (FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE))
		flags = 0;
	else if (mode == FALLOC_FL_ZERO_RANGE ||
		 mode == (FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE))
		flags = NBD_CMD_FLAG_NO_HOLE;
	else {
		fuse_reply_err(req, EOPNOTSUPP);
		return;
	}
	if (!f->can_zero) {
		fuse_reply_err(req, EOPNOTSUPP);
		return;
	}
	if (o >= f->size) {
		fuse_reply_err(req, 0);
		return;
	}
	if (len > f->size - o)
		len = f->size - o;
	n = (unsigned int)((len + ZERO_PART - 1) / ZERO_PART);
	q = fq_new(f, req, K_OTHER, n, 0);
	if (!q) {
		fuse_reply_err(req, ENOMEM);
		return;
	}
	for (i = 0; i < n; i++) {
		uint64_t l = len - (uint64_t)i * ZERO_PART;

		fq_part(q, i, NBD_CMD_WRITE_ZEROES, flags,
			o + (uint64_t)i * ZERO_PART,
			(uint32_t)(l > ZERO_PART ? ZERO_PART : l), NULL);
	}
	fq_submit(q, n);
}

static const struct fuse_lowlevel_ops ops = {
    .init = op_init,
    .lookup = op_lookup,
    .getattr = op_getattr,
    .setattr = op_setattr,
    .open = op_open,
    .readdir = op_readdir,
    .read = op_read,
    .write = op_write,
    .flush = op_flush,
    .fsync = op_fsync,
    .fallocate = op_fallocate,
};

/* ---- the session on the loop ------------------------------------------- */

static void on_fuse(struct bks_watch *w, uint32_t events)
{
	struct bf_fuse *f = w->opaque;

	(void)events;
	for (int i = 0; i < FUSE_BATCH && !f->ended; i++) {
		int rc = fuse_session_receive_buf(f->se, &f->fbuf);

		if (rc == -EAGAIN || rc == -EINTR)
			return;
		/* -ENOENT: the request was interrupted before we read it. */
		if (rc == -ENOENT)
			continue;
		if (rc <= 0 || fuse_session_exited(f->se)) {
			if (rc < 0)
				bf_log(f->log, LOG_ERR, "read /dev/fuse: %s",
				       strerror(-rc));
			else
				bf_log(f->log, LOG_INFO, "unmounted");
			f->ended = true;
			bks_watch_del(&f->w);
			f->watching = false;
			return;
		}
		fuse_session_process_buf(f->se, &f->fbuf);
	}
}

bool bf_fuse_ended(const struct bf_fuse *f)
{
	return f->ended;
}

int bf_fuse_detach(struct bf_fuse *f, struct bks_error *err)
{
	if (!f->mounted || f->detached)
		return 0;
	if (umount2(f->mnt, MNT_DETACH | UMOUNT_NOFOLLOW) < 0 &&
	    errno != EINVAL && errno != ENOENT)
		return bks_error_set(err, errno, "unmount %s", f->mnt);
	f->detached = true;
	return 0;
}

int bf_fuse_mount(struct bf_fuse **out, struct bks_loop *loop,
		  struct bf_nbd *nbd, const struct bf_nbd_export *ex,
		  const char *mnt, bool ro, struct bf_log *log,
		  struct bks_error *err)
{
	char opts[256];
	char *argv[] = {"blkstack-fuse", "-o", opts, NULL};
	struct fuse_args args = FUSE_ARGS_INIT(3, argv);
	struct bf_fuse *f;
	int fd, fl, ret;

	*out = NULL;
	f = calloc(1, sizeof(*f));
	if (!f)
		return bks_error_set(err, ENOMEM, "FUSE state for %s", mnt);
	f->mnt = strdup(mnt);
	if (!f->mnt) {
		ret = bks_error_set(err, ENOMEM, "FUSE state for %s", mnt);
		goto out;
	}
	f->loop = loop;
	f->nbd = nbd;
	f->log = log;
	f->size = ex->size;
	f->ro = ro || (ex->flags & NBD_FLAG_READ_ONLY);
	f->can_flush = ex->flags & NBD_FLAG_SEND_FLUSH;
	f->can_zero = ex->flags & NBD_FLAG_SEND_WRITE_ZEROES;
	snprintf(opts, sizeof(opts),
		 "fsname=blkstack-fuse,subtype=blkstack,default_permissions,"
		 "max_read=%u%s",
		 IO_MAX, f->ro ? ",ro" : "");
	f->se = fuse_session_new(&args, &ops, sizeof(ops), f);
	fuse_opt_free_args(&args);
	if (!f->se) {
		ret = bks_error_setmsg(err, EINVAL,
				       "fuse_session_new for %s failed", mnt);
		goto out;
	}
	if (fuse_session_mount(f->se, mnt) != 0) {
		ret =
		    bks_error_setmsg(err, EIO, "mount FUSE on %s failed", mnt);
		goto out;
	}
	f->mounted = true;
	fd = fuse_session_fd(f->se);
	fl = fcntl(fd, F_GETFL);
	if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0) {
		ret = bks_error_set(err, errno, "make /dev/fuse non-blocking");
		goto out;
	}
	ret = bks_watch_add(loop, &f->w, fd, EPOLLIN, on_fuse, f);
	if (ret < 0) {
		bks_error_set(err, -ret, "watch /dev/fuse");
		goto out;
	}
	f->watching = true;
	*out = f;
	return 0;
out:
	bf_fuse_free(f);
	return ret;
}

void bf_fuse_free(struct bf_fuse *f)
{
	if (!f)
		return;
	if (f->watching)
		bks_watch_del(&f->w);
	if (f->se) {
		/*
		 * Ended (ENODEV): libfuse sees it and unmounts nothing.
		 * Detached and still in use: no second umount; destroy
		 * closes /dev/fuse, and the kernel fails what is pending.
		 */
		if (f->mounted && (!f->detached || f->ended))
			fuse_session_unmount(f->se);
		fuse_session_destroy(f->se);
	}
	for (int i = 0; i < POOL_CLASSES; i++) {
		while (f->pool[i]) {
			struct fq *q = f->pool[i];

			f->pool[i] = q->next;
			free(q->mem);
		}
	}
	free(f->fbuf.mem);
	free(f->mnt);
	free(f);
}
