/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Loop devices: see dev-loop.h.
 *
 * Attach: LOOP_CTL_GET_FREE + LOOP_CONFIGURE with LO_FLAGS_DIRECT_IO: one
 * atomic ioctl, retried on EBUSY when another process configured the same
 * free index first.  No LO_FLAGS_AUTOCLEAR: the device must outlive this
 * process (the helper exits after add) and be detached only by an
 * explicit, idempotent remove.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/fs.h>
#include <linux/loop.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/pidfd.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <unistd.h>

#include "child.h"
#include "conf.h"
#include "dev-loop.h"
#include "dev-record.h"

/* LOOP_CONFIGURE attempts lost to other processes before giving up. */
#define LOOP_RETRIES 64

int hp_loop_backed_by(const char *path, const char *file, struct bks_error *err)
{
	char sys[128], *text = NULL;
	size_t len;
	int ret;

	snprintf(sys, sizeof(sys), "/sys/block/%s/loop/backing_file",
		 hp_dev_node_name(path));
	ret = conf_read_file(sys, &text, PATH_MAX + 32, err);
	if (ret == -ENOENT) {
		/* No loop/ directory: the device is not configured. */
		bks_error_clear(err);
		return 0;
	}
	if (ret < 0)
		return ret;
	len = strlen(text);
	if (len && text[len - 1] == '\n')
		text[--len] = '\0';
	ret = strcmp(text, file) == 0;
	free(text);
	return ret;
}

int hp_loop_attach(const char *file, bool ro, struct hp_dev *dev,
		   struct bks_error *err)
{
	int ctl = -1, backing = -1, lfd = -1, ret;
	struct loop_config cfg;
	struct stat st;
	int i;

	ctl = open("/dev/loop-control", O_RDWR | O_CLOEXEC);
	if (ctl < 0) {
		ret = bks_error_set(err, errno, "open /dev/loop-control");
		goto out;
	}
	backing = open(file, (ro ? O_RDONLY : O_RDWR) | O_CLOEXEC);
	if (backing < 0) {
		ret = bks_error_set(err, errno, "open %s", file);
		goto out;
	}
	memset(&cfg, 0, sizeof(cfg));
	cfg.fd = (unsigned int)backing;
	cfg.info.lo_flags = LO_FLAGS_DIRECT_IO | (ro ? LO_FLAGS_READ_ONLY : 0);
	/* Informational only (64 bytes, may be cut): sysfs has the path. */
	memcpy(cfg.info.lo_file_name, file,
	       strnlen(file, sizeof(cfg.info.lo_file_name) - 1));

	for (i = 0; i < LOOP_RETRIES; i++) {
		int idx = ioctl(ctl, LOOP_CTL_GET_FREE);

		if (idx < 0) {
			ret = bks_error_set(err, errno,
					    "LOOP_CTL_GET_FREE on "
					    "/dev/loop-control");
			goto out;
		}
		snprintf(dev->path, sizeof(dev->path), "/dev/loop%d", idx);
		lfd = open(dev->path, (ro ? O_RDONLY : O_RDWR) | O_CLOEXEC);
		if (lfd < 0) {
			ret = bks_error_set(err, errno, "open %s", dev->path);
			dev->path[0] = '\0';
			goto out;
		}
		if (ioctl(lfd, LOOP_CONFIGURE, &cfg) == 0)
			break;
		ret = -errno;
		close(lfd);
		lfd = -1;
		/* EBUSY: another process configured it between the calls. */
		if (ret != -EBUSY) {
			bks_error_set(err, -ret, "LOOP_CONFIGURE %s on %s",
				      dev->path, file);
			dev->path[0] = '\0';
			goto out;
		}
	}
	if (lfd < 0) {
		ret = bks_error_setmsg(err, EBUSY,
				       "no free loop device after %d tries",
				       LOOP_RETRIES);
		dev->path[0] = '\0';
		goto out;
	}
	if (fstat(lfd, &st) < 0) {
		ret = bks_error_set(err, errno, "stat %s", dev->path);
		/* Leave no device behind: the caller has no number for it. */
		ioctl(lfd, LOOP_CLR_FD, 0);
		dev->path[0] = '\0';
		goto out;
	}
	dev->major = major(st.st_rdev);
	dev->minor = minor(st.st_rdev);
	ret = 0;
out:
	if (lfd >= 0)
		close(lfd);
	if (backing >= 0)
		close(backing);
	if (ctl >= 0)
		close(ctl);
	return ret;
}

/* fsync and BLKFLSBUF on fd: 0 or -errno. */
static int loop_flush(int fd)
{
	return fsync(fd) < 0 || ioctl(fd, BLKFLSBUF, 0) < 0 ? -errno : 0;
}

/*
 * loop_flush() in a child, so that a flush that hangs (the FUSE server
 * behind the loop device stopped answering) cannot hang us: see struct
 * hp_loop_bound.  Returns the flush's result, -ETIMEDOUT if it was
 * abandoned, or -errno if it could not be started.
 */
static int bounded_flush(int fd, const struct hp_loop_bound *b)
{
	int pidfd, status = 0, ret;
	pid_t pid = fork();

	if (pid < 0)
		return -errno;
	if (pid == 0) {
		ret = loop_flush(fd);
		_exit(ret < 0 && -ret < 255 ? -ret : ret < 0 ? 254 : 0);
	}
	pidfd = pidfd_open(pid, 0);
	if (pidfd < 0) {
		/* No pidfds: a plain bounded wait, nothing failed early. */
		if (child_reap(pid, 2 * b->ms, &status) < 0)
			return -ECHILD;
		return WIFEXITED(status) ? -WEXITSTATUS(status) : -ETIMEDOUT;
	}
	ret = pidfd_wait(pidfd, b->ms);
	if (ret == -ETIMEDOUT) {
		fprintf(stderr,
			"blkstack: the flush of the loop device has not ended "
			"after %d ms: failing it\n",
			b->ms);
		b->stuck(fd, b->arg);
		ret = pidfd_wait(pidfd, b->ms);
	}
	close(pidfd);
	/* Killed if still there; reaped either way. */
	if (child_reap(pid, ret == 0 ? b->ms : 0, &status) < 0)
		return -ECHILD;
	if (ret < 0)
		return ret;
	if (!WIFEXITED(status))
		return -EINTR;
	return -WEXITSTATUS(status);
}

/*
 * Flush and free the loop device, if it is still the one backed by file.
 * *flush_rc gets the flush's result (0 or -errno, err untouched: the
 * caller decides whether it matters).
 */
int hp_loop_detach(const struct hp_dev *dev, const char *file,
		   const struct hp_loop_bound *bound, int *flush_rc,
		   struct bks_error *err)
{
	struct stat st;
	int fd, ret;

	*flush_rc = 0;
	if (!dev->path[0])
		return 0;
	fd = open(dev->path, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		if (errno == ENOENT || errno == ENXIO)
			return 0;
		return bks_error_set(err, errno, "open %s", dev->path);
	}
	/* Not the node the record names, or backed by another file: stale. */
	if (fstat(fd, &st) < 0) {
		ret = bks_error_set(err, errno, "stat %s", dev->path);
		goto out;
	}
	if (!S_ISBLK(st.st_mode) ||
	    st.st_rdev != makedev(dev->major, dev->minor)) {
		ret = 0;
		goto out;
	}
	ret = hp_loop_backed_by(dev->path, file, err);
	if (ret <= 0)
		goto out;
	*flush_rc = bound ? bounded_flush(fd, bound) : loop_flush(fd);
	/*
	 * Cleared when our fd closes; if someone else (udev's probe) has it
	 * open, the kernel defers the clear to their close instead.
	 */
	if (ioctl(fd, LOOP_CLR_FD, 0) < 0 && errno != ENXIO) {
		ret = bks_error_set(err, errno, "LOOP_CLR_FD %s", dev->path);
		goto out;
	}
	ret = 0;
out:
	close(fd);
	return ret;
}
