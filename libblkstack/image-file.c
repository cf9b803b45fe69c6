/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * What aio: and sync: share about the image under them: opening and
 * probing it, the range ioctls, fallocate modes and datasync, and its
 * extents.  See include/blkstack/image-file.h.
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/falloc.h>
#include <linux/fs.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "blkstack/image-file.h"

/* ---- extents ------------------------------------------------------------- */

/* Append [off, off + len) with flags, merging with a like predecessor. */
static void add(struct bks_extent *out, size_t *n, uint64_t off, uint64_t len,
		uint32_t flags)
{
	if (*n && out[*n - 1].flags == flags &&
	    out[*n - 1].offset + out[*n - 1].length == off) {
		out[*n - 1].length += len;
		return;
	}
	out[*n].offset = off;
	out[*n].length = len;
	out[*n].flags = flags;
	out[*n].depth = 1; /* a raw image's holes are its own */
	(*n)++;
}

int bks_image_extents(const struct bks_image *img, uint64_t offset,
		      uint64_t len, struct bks_extent *out, size_t max,
		      size_t *n)
{
	const uint32_t hole = BKS_EXTENT_HOLE | BKS_EXTENT_ZERO;
	uint64_t pos = offset, end = offset + len;
	int fd = img->fd;

	*n = 0;
	if (img->is_blk) {
		add(out, n, offset, len, 0);
		return 0;
	}
	while (pos < end && *n < max) {
		off_t data = lseek(fd, (off_t)pos, SEEK_DATA), next;

		if (data < 0 && errno != ENXIO)
			goto all_data; /* no SEEK_DATA here: say data */
		if (data < 0 || (uint64_t)data >= end) {
			add(out, n, pos, end - pos, hole); /* hole to the end */
			break;
		}
		if ((uint64_t)data > pos) {
			add(out, n, pos, (uint64_t)data - pos, hole);
			pos = (uint64_t)data;
			if (*n == max)
				break;
		}
		next = lseek(fd, (off_t)pos, SEEK_HOLE);
		if (next < 0)
			goto all_data;
		if ((uint64_t)next > end)
			next = (off_t)end;
		add(out, n, pos, (uint64_t)next - pos, 0);
		pos = (uint64_t)next;
	}
	return 0;
all_data:
	if (pos < end && *n < max)
		add(out, n, pos, end - pos, 0);
	return 0;
}

int bks_image_block_status(const struct bks_image *img, struct bks_req *req)
{
	size_t n = 0;
	int r = bks_image_extents(img, req->offset, req->len, req->extents,
				  req->extents_max, &n);

	req->nextents = (uint32_t)n;
	return r;
}

/* ---- the blocking calls -------------------------------------------------- */

/* The no_* flags: see image-file.h. */
static bool refused(const bool *no)
{
	return __atomic_load_n(no, __ATOMIC_RELAXED);
}

static void set_refused(bool *no)
{
	__atomic_store_n(no, true, __ATOMIC_RELAXED);
}

static int range_ioctl(const struct bks_image *img, unsigned long cmd,
		       uint64_t offset, uint64_t len)
{
	uint64_t range[2] = {offset, len};

	return ioctl(img->fd, cmd, range) < 0 ? -errno : 0;
}

/* fallocate(mode) on the range; remember EOPNOTSUPP in *no. */
static int falloc(const struct bks_image *img, int mode, uint64_t offset,
		  uint64_t len, bool *no)
{
	int rc;

	if (refused(no))
		return -EOPNOTSUPP;
	do /* interrupted by a signal: again (the range is idempotent) */
		rc = fallocate(img->fd, mode, (off_t)offset, (off_t)len);
	while (rc < 0 && errno == EINTR);
	if (rc == 0)
		return 0;
	if (errno == EOPNOTSUPP)
		set_refused(no);
	return -errno;
}

int bks_image_datasync(const struct bks_image *img)
{
	return fdatasync(img->fd) < 0 ? -errno : 0;
}

int bks_image_discard(struct bks_image *img, uint64_t offset, uint64_t len)
{
	int r;

	if (img->is_blk)
		r = range_ioctl(img, BLKDISCARD, offset, len);
	else
		r = falloc(img, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
			   offset, len, &img->no_punch);
	/* A hint: not doing it is doing it (see image-file.h). */
	return r == -EOPNOTSUPP ? 0 : r;
}

int bks_image_zero(struct bks_image *img, uint64_t offset, uint64_t len,
		   uint32_t flags)
{
	const int keep = FALLOC_FL_KEEP_SIZE;
	int r = -EOPNOTSUPP;

	if (img->is_blk)
		return range_ioctl(img, BLKZEROOUT, offset, len);
	/* A hole reads as zeroes and is the cheapest way there. */
	if (!(flags & BKS_REQ_NO_HOLE))
		r = falloc(img, FALLOC_FL_PUNCH_HOLE | keep, offset, len,
			   &img->no_punch);
	/* Zeroed and allocated: what NO_HOLE asks for. */
	if (r == -EOPNOTSUPP)
		r = falloc(img, FALLOC_FL_ZERO_RANGE | keep, offset, len,
			   &img->no_zero_range);
	return r;
}

int bks_image_zero_realloc(struct bks_image *img, uint64_t offset, uint64_t len)
{
	const int keep = FALLOC_FL_KEEP_SIZE;
	int r;

	/* Known not to work: do not punch a hole that stays one. */
	if (refused(&img->no_punch) || refused(&img->no_alloc))
		return -EOPNOTSUPP;
	r = falloc(img, FALLOC_FL_PUNCH_HOLE | keep, offset, len,
		   &img->no_punch);
	if (r == 0)
		r = falloc(img, keep, offset, len, &img->no_alloc);
	return r;
}

/* ---- probing ------------------------------------------------------------- */

void bks_image_info(const struct bks_image *img, uint32_t block_size,
		    bool read_only, struct bks_info *info)
{
	info->size = img->size;
	info->block_size = block_size;
	info->max_io = 0;
	info->max_discard = BKS_FILE_MAX_RANGE;
	info->max_write_zeroes = BKS_FILE_MAX_RANGE;
	info->read_only = read_only;
	info->ops = BKS_OPF(BKS_OP_READ) | BKS_OPF(BKS_OP_WRITE) |
		    BKS_OPF(BKS_OP_FLUSH) | BKS_OPF(BKS_OP_DISCARD) |
		    BKS_OPF(BKS_OP_WRITE_ZEROES);
	info->can_fua = true;
	info->zero_no_hole = true;
}

void bks_image_dio_align(const struct bks_image *img, uint32_t *offset_align,
			 uint32_t *mem_align)
{
#ifdef STATX_DIOALIGN
	struct statx stx;

	if (statx(img->fd, "", AT_EMPTY_PATH, STATX_DIOALIGN, &stx) == 0 &&
	    (stx.stx_mask & STATX_DIOALIGN)) {
		*offset_align = stx.stx_dio_offset_align;
		*mem_align = stx.stx_dio_mem_align;
		return;
	}
#else
	(void)img;
#endif
	*offset_align = 0;
	*mem_align = 0;
}

/* ---- opening images ------------------------------------------------------ */

/* What a file of this type is, for "X is a FIFO, not ...". */
static const char *type_name(mode_t mode)
{
	switch (mode & S_IFMT) {
	case S_IFDIR:
		return "a directory";
	case S_IFCHR:
		return "a character device";
	case S_IFIFO:
		return "a FIFO";
	case S_IFSOCK:
		return "a socket";
	case S_IFLNK:
		return "a symbolic link";
	default:
		return "a file of unknown type";
	}
}

int bks_image_check_size(const char *path, uint64_t size, uint32_t block,
			 struct bks_error *err)
{
	uint64_t up;

	if (size == 0)
		return bks_error_setmsg(err, EINVAL, "%s is empty (0 bytes)",
					path);
	if (size % block == 0)
		return 0;
	up = size - size % block + block;
	return bks_error_setmsg(err, EINVAL,
				"%s: size %llu bytes is not a multiple of %u "
				"bytes, the block size; resize the image (e.g. "
				"truncate -s %llu)",
				path, (unsigned long long)size, block,
				(unsigned long long)up);
}

/* Size and logical block size of the open image img->fd (st: its stat). */
static int image_geometry(struct bks_image *img, const char *path,
			  const struct stat *st, struct bks_error *err)
{
	int ssz;

	img->block_size = 512;
	if (!S_ISBLK(st->st_mode)) {
		img->size = (uint64_t)st->st_size;
		return 0;
	}
	img->is_blk = true;
	if (ioctl(img->fd, BLKGETSIZE64, &img->size) < 0)
		return bks_error_set(err, errno, "BLKGETSIZE64 %s", path);
	if (ioctl(img->fd, BLKSSZGET, &ssz) < 0)
		return bks_error_set(err, errno, "BLKSSZGET %s", path);
	if (ssz > 512)
		img->block_size = (uint32_t)ssz;
	return 0;
}

static int image_open(struct bks_image *img, const char *path, int flags,
		      bool any_size, struct bks_error *err)
{
	struct stat first, st;
	int pfd = -1, fl, rc;

	memset(img, 0, sizeof(*img));
	img->fd = -1;
	if (!path || !*path)
		return bks_error_setmsg(err, EINVAL, "missing path");
	if (path[0] != '/')
		return bks_error_setmsg(
		    err, EINVAL, "path '%s' must be an absolute path", path);
	/*
	 * What is it?  An O_PATH descriptor opens nothing: no FIFO waits for
	 * a writer, no device driver runs, no O_DIRECT is asked for.
	 */
	pfd = open(path, O_PATH | O_CLOEXEC);
	if (pfd < 0) {
		rc = bks_error_set(err, errno, "open %s", path);
		goto out;
	}
	if (fstat(pfd, &first) < 0) {
		rc = bks_error_set(err, errno, "stat %s", path);
		goto out;
	}
	if (!S_ISREG(first.st_mode) && !S_ISBLK(first.st_mode)) {
		rc = bks_error_setmsg(err, EINVAL,
				      "%s is %s, not a regular file or block "
				      "device",
				      path, type_name(first.st_mode));
		goto out;
	}
	/* O_NONBLOCK: should it have become a FIFO since, do not wait. */
	img->fd = open(path, flags | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
	if (img->fd < 0) {
		if (errno == EINVAL && (flags & O_DIRECT))
			/* open(2): "The filesystem does not support the
			 * O_DIRECT flag." */
			rc = bks_error_setmsg(
			    err, EINVAL,
			    "open %s: %s (the file system does not support "
			    "O_DIRECT? use sync:%s)",
			    path, strerror(EINVAL), path);
		else
			rc = bks_error_set(err, errno, "open %s", path);
		goto out;
	}
	if (fstat(img->fd, &st) < 0) {
		rc = bks_error_set(err, errno, "stat %s", path);
		goto out;
	}
	if (st.st_dev != first.st_dev || st.st_ino != first.st_ino) {
		rc = bks_error_setmsg(
		    err, EAGAIN, "%s changed while it was being opened", path);
		goto out;
	}
	fl = fcntl(img->fd, F_GETFL);
	if (fl < 0 || fcntl(img->fd, F_SETFL, fl & ~O_NONBLOCK) < 0) {
		rc = bks_error_set(err, errno, "fcntl %s", path);
		goto out;
	}
	rc = image_geometry(img, path, &st, err);
	if (rc < 0)
		goto out;
	rc = any_size && img->size
		 ? 0
		 : bks_image_check_size(path, img->size, img->block_size, err);
out:
	if (pfd >= 0)
		close(pfd);
	if (rc < 0)
		bks_image_close(img);
	return rc;
}

int bks_image_open(struct bks_image *img, const char *path, int flags,
		   struct bks_error *err)
{
	return image_open(img, path, flags, false, err);
}

int bks_image_open_format(struct bks_image *img, const char *path, int flags,
			  struct bks_error *err)
{
	return image_open(img, path, flags, true, err);
}

void bks_image_close(struct bks_image *img)
{
	if (img->fd >= 0)
		close(img->fd);
	img->fd = -1;
}

int bks_image_pio(int fd, bool write, void *buf, size_t len, uint64_t off)
{
	unsigned char *p = buf;

	while (len) {
		ssize_t n = write ? pwrite(fd, p, len, (off_t)off)
				  : pread(fd, p, len, (off_t)off);

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return -errno;
		if (n == 0)
			return -EIO;
		p += n;
		len -= (size_t)n;
		off += (uint64_t)n;
	}
	return 0;
}
