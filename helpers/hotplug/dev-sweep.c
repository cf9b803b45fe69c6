/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The sweep: find what a killed action of a disk left without a record
 * (blkstack-fuse mountpoints in its state directory, loop devices on their
 * files or on the worker's FUSE file, kernel NBD devices on its socket),
 * each by what the kernel says,
 * and tear it down as hp_dev_detach() would.  See
 * hp_dev_sweep_unrecorded() in hp-dev.h.
 */
#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include "conf.h"
#include "dev-fuse.h"
#include "dev-loop.h"
#include "dev-record.h"
#include "dev-wfuse.h"
#include "hp-dev.h"

/* The loop device backed by file, if any: fills dev's path and numbers. */
static void sweep_find_loop(const char *file, struct hp_dev *dev)
{
	struct dirent *de;
	DIR *d = opendir("/sys/block");

	if (!d)
		return;
	while ((de = readdir(d))) {
		char path[sizeof(dev->path)];
		struct bks_error ignore;
		struct stat st;

		if (strncmp(de->d_name, "loop", 4) != 0 ||
		    snprintf(path, sizeof(path), "/dev/%s", de->d_name) >=
			(int)sizeof(path) ||
		    hp_loop_backed_by(path, file, &ignore) != 1 ||
		    stat(path, &st) < 0 || !S_ISBLK(st.st_mode))
			continue;
		strcpy(dev->path, path);
		dev->major = major(st.st_rdev);
		dev->minor = minor(st.st_rdev);
		break;
	}
	closedir(d);
}

/* The blkstack-fuse serving mountpoint dir, if any (hp_fuse_check() confirms).
 */
static void sweep_find_fuse(struct hp_dev *dev)
{
	struct dirent *de;
	DIR *d = opendir("/proc");

	if (!d)
		return;
	while ((de = readdir(d))) {
		char *end;
		long pid = strtol(de->d_name, &end, 10);
		bool ours = false;
		int pidfd;

		if (*end || pid <= 0 || pid > HP_DEV_PID_MAX)
			continue;
		dev->fuse_pid = (int)pid;
		if (hp_fuse_check(dev, &pidfd, &ours) == 0 && ours) {
			close(pidfd);
			break;
		}
		dev->fuse_pid = 0;
	}
	closedir(d);
}

/* Does any record in keep name this fuse_dir / this device node? */
static bool kept_dir(const char *dir, const struct hp_dev *const *keep,
		     size_t n)
{
	for (size_t i = 0; i < n; i++) {
		if (keep[i] && !strcmp(keep[i]->fuse_dir, dir))
			return true;
	}
	return false;
}

static bool kept_dev(const char *path, const struct hp_dev *const *keep,
		     size_t n)
{
	for (size_t i = 0; i < n; i++) {
		if (keep[i] && keep[i]->path[0] && !strcmp(keep[i]->path, path))
			return true;
	}
	return false;
}

/* Keep the first failure in *ret / *err. */
static void sweep_one(const struct hp_dev *dev, int *ret, struct bks_error *err,
		      unsigned int *found)
{
	struct bks_error one;
	int rc = hp_dev_detach(dev, &one);

	if (rc < 0 && *ret == 0) {
		*ret = rc;
		*err = one;
	}
	(*found)++;
}

/* fuse-* mountpoints (and logs) in state_dir that no record names. */
static int sweep_fuse_dirs(const char *state_dir,
			   const struct hp_dev *const *keep, size_t n,
			   unsigned int *found, struct bks_error *err)
{
	struct dirent *de;
	DIR *d;
	int ret = 0;

	d = opendir(state_dir);
	if (!d) {
		if (errno == ENOENT)
			return 0;
		return bks_error_set(err, errno, "open %s", state_dir);
	}
	while ((de = readdir(d))) {
		char file[PATH_MAX + 8];
		struct hp_dev dev;
		struct stat st;

		memset(&dev, 0, sizeof(dev));
		dev.mech = HP_DEV_LOOP;
		if (strncmp(de->d_name, "fuse-", 5) != 0 ||
		    !hp_dev_component_ok(de->d_name,
					 de->d_name + strlen(de->d_name)) ||
		    snprintf(dev.fuse_dir, sizeof(dev.fuse_dir), "%s/%s",
			     state_dir,
			     de->d_name) >= (int)sizeof(dev.fuse_dir))
			continue;
		/*
		 * A directory (mounted or not), or a log without one.
		 * ENOTCONN: still mounted, but its blkstack-fuse died.
		 */
		if (lstat(dev.fuse_dir, &st) < 0) {
			if (errno != ENOTCONN)
				continue;
		} else if (!S_ISDIR(st.st_mode)) {
			size_t len = strlen(dev.fuse_dir);

			if (S_ISREG(st.st_mode) && len > 4 &&
			    strcmp(dev.fuse_dir + len - 4, ".log") == 0) {
				dev.fuse_dir[len - 4] = '\0';
				if (lstat(dev.fuse_dir, &st) < 0 &&
				    errno == ENOENT) {
					dev.fuse_dir[len - 4] = '.';
					unlink(dev.fuse_dir);
				}
			}
			continue;
		}
		if (kept_dir(dev.fuse_dir, keep, n))
			continue;
		snprintf(file, sizeof(file), "%s/nbd", dev.fuse_dir);
		sweep_find_loop(file, &dev);
		sweep_find_fuse(&dev);
		sweep_one(&dev, &ret, err, found);
	}
	closedir(d);
	return ret;
}

/*
 * Is text, a loop device's backing file, one of this disk's?  Fills dev's
 * mechanism, staged and fuse_dir if so: STATE_DIR/fuse-XXXXXX/nbd
 * (blkstack-fuse's) or STATE_DIR/fuse/disk (the worker's, wfuse_file).
 */
static bool sweep_loop_file(const char *text, const char *state_dir,
			    const char *wfuse_file, struct hp_dev *dev)
{
	size_t slen = strlen(state_dir), len = strlen(text);
	const char *slash;

	if (wfuse_file[0] && strcmp(text, wfuse_file) == 0) {
		dev->mech = HP_DEV_FUSE;
		dev->staged = true;
		return hp_wfuse_paths(state_dir, dev->fuse_dir,
				      sizeof(dev->fuse_dir), NULL, 0,
				      NULL) == 0;
	}
	if (len <= slen || strncmp(text, state_dir, slen) ||
	    text[slen] != '/' || strncmp(text + slen + 1, "fuse-", 5))
		return false;
	slash = strchr(text + slen + 1, '/');
	if (!slash || strcmp(slash, "/nbd") ||
	    (size_t)(slash - text) >= sizeof(dev->fuse_dir))
		return false;
	dev->mech = HP_DEV_LOOP;
	dev->staged = true;
	memcpy(dev->fuse_dir, text, (size_t)(slash - text));
	return true;
}

/*
 * Loop devices on a state_dir/fuse-*\/nbd file or the worker's
 * state_dir/fuse/disk, and kernel NBD devices serving nbd_sock, that no
 * record names.  A loop device is freed alone (as a staged one: its
 * blkstack-fuse, if any, is a record's; the worker's file is the worker's).
 */
static int sweep_devices(const char *state_dir, const char *nbd_sock,
			 const struct hp_dev *const *keep, size_t n,
			 unsigned int *found, struct bks_error *err)
{
	char wfuse_file[PATH_MAX + 16];
	struct dirent *de;
	int ret = 0;
	DIR *d = opendir("/sys/block");

	if (!d)
		return 0;
	if (hp_wfuse_paths(state_dir, NULL, 0, wfuse_file, sizeof(wfuse_file),
			   NULL) < 0)
		wfuse_file[0] = '\0';
	while ((de = readdir(d))) {
		char sys[128], *text = NULL;
		struct bks_error ignore;
		struct hp_dev dev;
		struct stat st;
		bool loop = !strncmp(de->d_name, "loop", 4);
		bool nbd = !strncmp(de->d_name, "nbd", 3);
		size_t len;

		if ((!loop && !nbd) || strlen(de->d_name) > 32)
			continue;
		memset(&dev, 0, sizeof(dev));
		snprintf(dev.path, sizeof(dev.path), "/dev/%s", de->d_name);
		if (kept_dev(dev.path, keep, n))
			continue;
		snprintf(sys, sizeof(sys), "/sys/block/%s/%s", de->d_name,
			 loop ? "loop/backing_file" : "backend");
		if (conf_read_file(sys, &text, PATH_MAX + 32, &ignore) < 0)
			continue; /* not configured, or not ours to know */
		len = strlen(text);
		if (len && text[len - 1] == '\n')
			text[--len] = '\0';
		if (loop) {
			if (!sweep_loop_file(text, state_dir, wfuse_file,
					     &dev)) {
				free(text);
				continue;
			}
		} else {
			if (strncmp(text, HP_DEV_NBD_BACKEND_PREFIX,
				    strlen(HP_DEV_NBD_BACKEND_PREFIX)) ||
			    strcmp(text + strlen(HP_DEV_NBD_BACKEND_PREFIX),
				   nbd_sock)) {
				free(text);
				continue;
			}
			dev.mech = HP_DEV_NBD;
		}
		free(text);
		if (stat(dev.path, &st) < 0 || !S_ISBLK(st.st_mode))
			continue;
		dev.major = major(st.st_rdev);
		dev.minor = minor(st.st_rdev);
		sweep_one(&dev, &ret, err, found);
	}
	closedir(d);
	return ret;
}

int hp_dev_sweep_unrecorded(const char *state_dir, const char *nbd_sock,
			    const struct hp_dev *const *keep, size_t n,
			    unsigned int *found, struct bks_error *err)
{
	struct bks_error second;
	int ret, rc;

	*found = 0;
	ret = sweep_fuse_dirs(state_dir, keep, n, found, err);
	rc = sweep_devices(state_dir, nbd_sock, keep, n, found,
			   ret < 0 ? &second : err);
	return ret < 0 ? ret : rc;
}
