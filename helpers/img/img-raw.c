/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* blkstack-img: raw images (img.h): a file of the disk's bytes. */
#include <errno.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "img.h"

/* Anything is raw: the frame tries it last. */
static bool raw_probe(const unsigned char *head, size_t n, uint64_t file_size)
{
	(void)head;
	(void)n;
	(void)file_size;
	return true;
}

static int raw_create(const struct img_create_opts *o, struct bks_error *err)
{
	int fd = -1, r = 0;

	if (o->backing)
		return bks_error_setmsg(err, EINVAL,
					"%s: raw images have no backing file",
					o->path);
	if (o->options && o->options[0])
		return bks_error_setmsg(err, EINVAL,
					"%s: raw takes no -o options (got "
					"\"%s\")",
					o->path, o->options);
	fd = open(o->path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
	if (fd < 0)
		return bks_error_set(err, errno, "create %s", o->path);
	if (ftruncate(fd, (off_t)o->size) < 0) {
		r = bks_error_set(err, errno, "truncate %s to %llu bytes",
				  o->path, (unsigned long long)o->size);
		goto out;
	}
	if (fsync(fd) < 0)
		r = bks_error_set(err, errno, "fsync %s", o->path);
out:
	if (fd >= 0 && close(fd) < 0 && r == 0)
		r = bks_error_set(err, errno, "close %s", o->path);
	if (r < 0)
		unlink(o->path);
	return r;
}

static int raw_info(int fd, const char *path, struct img_info *out,
		    struct json_writer *extra, struct bks_error *err)
{
	struct stat st;
	uint64_t size;

	(void)extra;
	if (fstat(fd, &st) < 0)
		return bks_error_set(err, errno, "stat %s", path);
	if (S_ISBLK(st.st_mode)) {
		if (ioctl(fd, BLKGETSIZE64, &size) < 0)
			return bks_error_set(err, errno, "BLKGETSIZE64 %s",
					     path);
	} else if (S_ISREG(st.st_mode)) {
		size = (uint64_t)st.st_size;
	} else {
		return bks_error_setmsg(err, EINVAL,
					"%s: not a regular file or block "
					"device",
					path);
	}
	memset(out, 0, sizeof(*out));
	snprintf(out->format, sizeof(out->format), "raw");
	out->virtual_size = size;
	return 0;
}

const struct img_format img_format_raw = {
    .name = "raw", .probe = raw_probe, .create = raw_create, .info = raw_info,
    /* No check: a raw file has no metadata to be inconsistent. */
};
