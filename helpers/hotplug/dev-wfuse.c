/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The worker's own FUSE file, for the fuse mechanism: see dev-wfuse.h.
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/loop.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include "blkstack/fuse-server.h"
#include "dev-wfuse.h"
#include "rundir.h"

/* Where the kernel's FUSE control file system is (normally) mounted. */
#define FUSECTL_DIR "/sys/fs/fuse/connections"

int hp_wfuse_paths(const char *state_dir, char *dir, size_t dsize, char *file,
		   size_t fsize, struct bks_error *err)
{
	int n;

	if (dir) {
		n = snprintf(dir, dsize, "%s/" WORKER_FILE_FUSE, state_dir);
		if (n < 0 || (size_t)n >= dsize)
			goto long_;
	}
	if (file) {
		n = snprintf(file, fsize, "%s/" WORKER_FILE_FUSE "/%s",
			     state_dir, BKS_FUSE_FILE_NAME);
		if (n < 0 || (size_t)n >= fsize)
			goto long_;
	}
	return 0;
long_:
	return bks_error_setmsg(err, ENAMETOOLONG,
				"%s/" WORKER_FILE_FUSE ": too long", state_dir);
}

bool hp_wfuse_served(const char *dir)
{
	return bks_fuse_mounted(dir);
}

/* Open FUSECTL_DIR/conn/abort for writing, mounting fusectl if need be. */
static int open_abort(unsigned int conn)
{
	char path[96];
	int fd;

	snprintf(path, sizeof(path), FUSECTL_DIR "/%u/abort", conn);
	fd = open(path, O_WRONLY | O_CLOEXEC);
	if (fd >= 0 || errno != ENOENT)
		return fd;
	/* Systemd mounts it at boot; a bare host may not have. */
	if (mount("fusectl", FUSECTL_DIR, "fusectl",
		  MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL) < 0 &&
	    errno != EBUSY)
		return -1;
	return open(path, O_WRONLY | O_CLOEXEC);
}

void hp_wfuse_abort(int fd, void *arg)
{
	struct loop_info64 info;
	unsigned int conn;
	int afd;

	(void)arg;
	/* The loop driver's copy: no request to the file system. */
	if (ioctl(fd, LOOP_GET_STATUS64, &info) < 0) {
		fprintf(stderr, "blkstack: LOOP_GET_STATUS64: %m\n");
		return;
	}
	/* A FUSE super block has an anonymous device: major 0. */
	if (major((dev_t)info.lo_device) != 0) {
		fprintf(stderr,
			"blkstack: the loop device's file is not on a FUSE "
			"file system (device %u:%u): nothing to abort\n",
			major((dev_t)info.lo_device),
			minor((dev_t)info.lo_device));
		return;
	}
	conn = minor((dev_t)info.lo_device);
	afd = open_abort(conn);
	if (afd < 0) {
		fprintf(stderr,
			"blkstack: " FUSECTL_DIR "/%u/abort: %m: the flush "
			"is abandoned instead\n",
			conn);
		return;
	}
	if (write(afd, "1", 1) != 1)
		fprintf(stderr, "blkstack: " FUSECTL_DIR "/%u/abort: %m\n",
			conn);
	else
		fprintf(stderr,
			"blkstack: aborted FUSE connection %u: the worker did "
			"not answer\n",
			conn);
	close(afd);
}
