/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * dom0 block devices for the hotplug helper, the front: each operation of
 * hp-dev.h done by the mechanism the record names.  The pieces:
 *
 *   dev-choose.c      which mechanism (BLKSTACK_DEVICE, blkstack.conf, auto)
 *   dev-record.c      the one-line record an attach leaves in xenstore
 *   dev-nbd-client.c  the NBD client handshake, the socket probe
 *   dev-nbd-kernel.c  kernel NBD: /dev/nbdN by netlink
 *   dev-fuse.c        loop: starts and stops blkstack-fuse
 *   dev-loop.c        loop and fuse: the loop device on the file
 *   dev-wfuse.c       fuse: the worker's own FUSE file
 *   dev-sweep.c       what a killed action left without a record
 *   dev-proc.c        waiting for the processes they start
 *
 * The loop mechanism is blkstack-fuse exposing the export as a file plus a loop
 * device on that file.  Its detach undoes the attach in reverse, each
 * step tolerating "already gone", and never touches what the record does
 * not prove to be ours: the loop device must still be backed by
 * FUSE_DIR/nbd, and the process fuse_pid must still be blkstack-fuse serving
 * FUSE_DIR.
 *
 * The fuse mechanism is the loop device alone, on the worker's own file
 * STATE_DIR/fuse/disk: attach and detach only make and free loop devices
 * (the worker mounts and unmounts the file), and the detach's flush is
 * bounded (a hung worker's connection is aborted).
 */
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include "blkstack/fuse-server.h"
#include "dev-fuse.h"
#include "dev-loop.h"
#include "dev-nbd-kernel.h"
#include "dev-wfuse.h"
#include "hp-dev.h"
#include "worker-live.h"

/*
 * The file a loop or fuse record's loop device is on: blkstack-fuse's
 * FUSE_DIR/nbd, or the worker's FUSE_DIR/disk.
 */
static void dev_file(const struct hp_dev *dev, char *buf, size_t size)
{
	snprintf(buf, size, "%s/%s", dev->fuse_dir,
		 dev->mech == HP_DEV_FUSE ? BKS_FUSE_FILE_NAME : "nbd");
}

/* The loop mechanism's detach (see the top of the file). */
static int loop_mech_detach(const struct hp_dev *dev, struct bks_error *err)
{
	char file[PATH_MAX + 8];
	int pidfd = -1, flush_rc = 0, check_rc, ret = 0;
	bool ours;

	if (!dev->fuse_dir[0]) {
		/* Nothing was made: fuse_dir is the first thing attach sets. */
		return 0;
	}
	dev_file(dev, file, sizeof(file));

	/*
	 * Look at blkstack-fuse before the teardown stops it.  If we cannot (no
	 * pidfd_open: old kernel, valgrind), go on: the unmount in
	 * hp_fuse_stop makes blkstack-fuse exit by itself; only the wait and
	 * the kill are lost.
	 */
	check_rc = hp_fuse_check(dev, &pidfd, &ours);
	if (check_rc < 0)
		check_rc =
		    bks_error_set(err, -check_rc, "pidfd_open blkstack-fuse %d",
				  dev->fuse_pid);
	/* The flush below must not wait long on a dead or hung worker. */
	if (ours)
		hp_fuse_hurry(pidfd);

	ret = hp_loop_detach(dev, file, NULL, &flush_rc, err);
	if (ret < 0)
		goto out;
	/* A staged device's blkstack-fuse is the stage's: it stays. */
	if (!dev->staged) {
		ret = hp_fuse_stop(dev, pidfd, ours, err);
		if (ret < 0)
			goto out;
	}
	/*
	 * A dead blkstack-fuse cannot take a flush; that is the "gone" case
	 * (for a staged device, its death only excuses the flush).
	 */
	if (flush_rc < 0 && ours)
		ret = bks_error_set(err, -flush_rc, "flush %s", dev->path);
	else
		ret = check_rc;
out:
	if (pidfd >= 0)
		close(pidfd);
	return ret;
}

/*
 * The fuse mechanism's detach: the loop device only, its flush bounded.
 * A flush that failed is reported when the disk's worker (or its
 * supervisor) was alive to take it; with neither, the file's session is
 * dead for good (the supervisor gave up): the "gone" case.
 */
static int fuse_mech_detach(const struct hp_dev *dev, struct bks_error *err)
{
	static const struct hp_loop_bound bound = {.ms = HP_WFUSE_FLUSH_MS,
						   .stuck = hp_wfuse_abort};
	char file[PATH_MAX + 8], wdir[PATH_MAX], tok[48], *slash;
	struct bks_error ignore;
	int flush_rc = 0, ret;
	bool alive;

	if (!dev->fuse_dir[0])
		return 0;
	dev_file(dev, file, sizeof(file));
	/* The worker's directory holds the mount point. */
	snprintf(wdir, sizeof(wdir), "%s", dev->fuse_dir);
	slash = strrchr(wdir, '/');
	if (slash)
		*slash = '\0';
	alive = worker_identity(wdir, tok, sizeof(tok), &ignore) == 0;
	ret = hp_loop_detach(dev, file, &bound, &flush_rc, err);
	if (ret == 0 && flush_rc < 0 && alive)
		ret = bks_error_set(err, -flush_rc, "flush %s", dev->path);
	return ret;
}

int hp_dev_detach(const struct hp_dev *dev, struct bks_error *err)
{
	if (dev->mech == HP_DEV_NBD)
		return hp_nbd_detach(dev, err);
	if (dev->mech == HP_DEV_FUSE)
		return fuse_mech_detach(dev, err);
	if (dev->mech != HP_DEV_LOOP)
		return bks_error_setmsg(err, EINVAL,
					"detach: no mechanism in the record");
	return loop_mech_detach(dev, err);
}

static int loop_attach_all(const char *nbd_sock, const char *state_dir, bool ro,
			   struct hp_dev *dev, struct bks_error *err)
{
	char file[PATH_MAX + 8];
	struct bks_error undo_err;
	int ret;

	ret = hp_fuse_setup(nbd_sock, state_dir, ro, dev, file, sizeof(file),
			    err);
	if (ret < 0)
		return ret;
	ret = hp_loop_attach(file, ro, dev, err);
	if (ret < 0) {
		/* Undo; the first error is the one worth reporting. */
		hp_dev_detach(dev, &undo_err);
		memset(dev, 0, sizeof(*dev));
		dev->mech = HP_DEV_LOOP;
	}
	return ret;
}

/*
 * The fuse mechanism's stage: the worker's file, which it must serve.
 * Fills stage's fuse_dir (mech set by the caller).
 */
static int fuse_stage(const char *state_dir, struct hp_dev *stage,
		      struct bks_error *err)
{
	int ret = hp_wfuse_paths(state_dir, stage->fuse_dir,
				 sizeof(stage->fuse_dir), NULL, 0, err);

	if (ret < 0)
		return ret;
	if (!hp_wfuse_served(stage->fuse_dir)) {
		ret = bks_error_setmsg(err, ENOENT,
				       "the worker serves no FUSE file on %s "
				       "(not started with --fuse?)",
				       stage->fuse_dir);
		stage->fuse_dir[0] = '\0';
	}
	return ret;
}

int hp_dev_stage(const char *nbd_sock, const char *state_dir,
		 enum hp_dev_mech mech, struct hp_dev *stage,
		 struct bks_error *err)
{
	char file[PATH_MAX + 8];

	memset(stage, 0, sizeof(*stage));
	stage->mech = mech;
	switch (mech) {
	case HP_DEV_NBD:
		return 0;
	case HP_DEV_LOOP:
		return hp_fuse_setup(nbd_sock, state_dir, false, stage, file,
				     sizeof(file), err);
	case HP_DEV_FUSE:
		return fuse_stage(state_dir, stage, err);
	case HP_DEV_AUTO:
		break;
	}
	return bks_error_setmsg(err, EINVAL, "stage: unknown mechanism %d",
				(int)mech);
}

bool hp_dev_staged_ok(const struct hp_dev *stage)
{
	char file[PATH_MAX + 8];
	struct stat st;
	int pidfd;
	bool ours;

	if (stage->mech == HP_DEV_FUSE)
		return !stage->staged && !stage->path[0] &&
		       stage->fuse_dir[0] && hp_wfuse_served(stage->fuse_dir);
	if (stage->mech != HP_DEV_LOOP || stage->staged || stage->path[0] ||
	    hp_fuse_check(stage, &pidfd, &ours) < 0 || !ours)
		return false;
	close(pidfd);
	dev_file(stage, file, sizeof(file));
	return stat(file, &st) == 0 && S_ISREG(st.st_mode);
}

int hp_dev_attach_staged(const struct hp_dev *stage, bool ro,
			 struct hp_dev *dev, struct bks_error *err)
{
	char file[PATH_MAX + 8];
	int ret;

	*dev = *stage;
	dev->staged = true;
	dev_file(stage, file, sizeof(file));
	ret = hp_loop_attach(file, ro, dev, err);
	if (ret < 0) {
		/* hp_loop_attach leaves no device behind on failure. */
		memset(dev, 0, sizeof(*dev));
		dev->mech = stage->mech;
	}
	return ret;
}

bool hp_dev_bound(const struct hp_dev *dev, const char *nbd_sock)
{
	char file[PATH_MAX + 8];
	struct bks_error ignore;
	struct stat st;
	bool ok = false;
	int pidfd;

	if (!dev->path[0] || stat(dev->path, &st) < 0 || !S_ISBLK(st.st_mode) ||
	    major(st.st_rdev) != dev->major || minor(st.st_rdev) != dev->minor)
		return false;
	if (dev->mech == HP_DEV_NBD)
		return hp_nbd_bound(dev, nbd_sock);
	/* loop and fuse: a loop device on the record's file, still served. */
	dev_file(dev, file, sizeof(file));
	if (!dev->fuse_dir[0] ||
	    hp_loop_backed_by(dev->path, file, &ignore) != 1)
		return false;
	if (dev->mech == HP_DEV_FUSE)
		return hp_wfuse_served(dev->fuse_dir);
	if (dev->mech != HP_DEV_LOOP || hp_fuse_check(dev, &pidfd, &ok) < 0 ||
	    !ok)
		return false;
	close(pidfd);
	return true;
}

int hp_dev_attach(const char *nbd_sock, const char *state_dir, bool ro,
		  enum hp_dev_mech mech, struct hp_dev *dev,
		  struct bks_error *err)
{
	int ret;

	memset(dev, 0, sizeof(*dev));
	if (mech == HP_DEV_AUTO) {
		ret = hp_dev_choose(&mech, err);
		if (ret < 0)
			return ret;
	}
	dev->mech = mech;
	switch (mech) {
	case HP_DEV_LOOP:
		return loop_attach_all(nbd_sock, state_dir, ro, dev, err);
	case HP_DEV_FUSE: {
		/* The worker's file: every device on it is a staged one. */
		struct hp_dev stage = {.mech = HP_DEV_FUSE};

		ret = fuse_stage(state_dir, &stage, err);
		return ret < 0 ? ret
			       : hp_dev_attach_staged(&stage, ro, dev, err);
	}
	case HP_DEV_NBD:
		ret = hp_nbd_attach(nbd_sock, ro, dev, err);
		if (ret < 0) {
			memset(dev, 0, sizeof(*dev));
			dev->mech = HP_DEV_NBD;
		}
		return ret;
	case HP_DEV_AUTO:
		break;
	}
	return bks_error_setmsg(err, EINVAL, "attach: unknown mechanism %d",
				(int)mech);
}
