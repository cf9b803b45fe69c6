/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * What aio: and sync: share: opening an image file or block device
 * (bks_image_open), and its extents from SEEK_DATA/SEEK_HOLE.
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "blkstack/driver.h"

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
	(*n)++;
}

int bks_fd_extents(int fd, bool is_blk, uint64_t offset, uint64_t len,
		   struct bks_extent *out, size_t max, size_t *n)
{
	const uint32_t hole = BKS_EXTENT_HOLE | BKS_EXTENT_ZERO;
	uint64_t pos = offset, end = offset + len;

	*n = 0;
	if (is_blk) {
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

int bks_image_open(struct bks_image *img, const char *path, int flags,
		   struct bks_error *err)
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
	rc = bks_image_check_size(path, img->size, img->block_size, err);
out:
	if (pfd >= 0)
		close(pfd);
	if (rc < 0 && img->fd >= 0) {
		close(img->fd);
		img->fd = -1;
	}
	return rc;
}
