/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The hotplug helper's kernel NBD devices: see dev-nbd-kernel.h.  The
 * netlink and the handshake are helpers/common/nbd-kernel.c's and
 * nbd-client.c's; what is here is the record (hp_dev) and detach's
 * flush rules.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <linux/fs.h>
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
#include "dev-nbd-kernel.h"
#include "dev-record.h"
#include "nbd-client.h"
#include "nbd-kernel.h"
#include "worker-live.h"

/* How long detach's flush may take (libxl kills the script after 40 s). */
#define NBD_FLUSH_TIMEOUT_S 15

/* "blkstack:" + a socket path. */
#define BACKEND_MAX (PATH_MAX + 32)

int hp_nbd_attach(const char *nbd_sock, bool ro, struct hp_dev *dev,
		  struct bks_error *err)
{
	struct nbd_kernel_conf conf;
	unsigned int index;
	struct stat st;
	int ret;

	ret = nbd_kernel_conf_read(&conf, err);
	if (ret < 0)
		return ret;
	ret = nbd_kernel_connect(nbd_sock, ro, &conf, &index, err);
	if (ret < 0)
		return ret;
	snprintf(dev->path, sizeof(dev->path), "/dev/nbd%u", index);
	if (stat(dev->path, &st) < 0) {
		ret = bks_error_set(err, errno, "stat %s", dev->path);
		goto out;
	}
	if (!S_ISBLK(st.st_mode)) {
		ret = bks_error_setmsg(err, ENOTBLK, "%s: not a block device",
				       dev->path);
		goto out;
	}
	dev->major = major(st.st_rdev);
	dev->minor = minor(st.st_rdev);
	ret = 0;
out:
	if (ret < 0) {
		struct bks_error undo_err;

		/* Connected but unusable: disconnect what the kernel made. */
		nbd_kernel_disconnect(index, &undo_err);
		dev->path[0] = '\0';
	}
	return ret;
}

/*
 * fsync + BLKFLSBUF of fd in a child, waited for at most
 * NBD_FLUSH_TIMEOUT_S: a flush stuck behind a dead connection sleeps
 * uninterruptibly, and the helper must still get to the disconnect that
 * ends it.  Returns the flush's result, or -ETIMEDOUT with *child set
 * (the caller reaps it after the disconnect).
 */
static int flush_bounded(int fd, pid_t *child)
{
	int pidfd, status, ret;
	pid_t pid;

	*child = 0;
	pid = fork();
	if (pid < 0)
		return -errno;
	if (pid == 0) {
		if (fsync(fd) < 0 || ioctl(fd, BLKFLSBUF, 0) < 0)
			_exit(errno & 0xff ? errno & 0xff : EIO);
		_exit(0);
	}
	pidfd = pidfd_open(pid, 0);
	if (pidfd >= 0) {
		bool done = pidfd_wait(pidfd, NBD_FLUSH_TIMEOUT_S * 1000) == 0;

		close(pidfd);
		if (!done) {
			*child = pid;
			return -ETIMEDOUT;
		}
	}
	ret = child_wait(pid, &status);
	if (ret < 0)
		return ret;
	if (WIFEXITED(status))
		return -WEXITSTATUS(status);
	return -EIO;
}

/*
 * Is the worker serving sock (DIR/NAME/nbd.sock) still the one the device
 * was made for (dev->worker, "PID:START", worker_identity)?  Then its
 * connection is alive: the device's first, or, under a supervisor, the one
 * the supervisor reconnected after a restart.  No means a worker was
 * started by hand since (or nothing is known): the connection may be dead.
 */
static bool same_worker(const struct hp_dev *dev, const char *sock)
{
	char wdir[PATH_MAX], tok[sizeof(dev->worker)];
	const char *slash = strrchr(sock, '/');
	struct bks_error ignore;

	if (!dev->worker[0] || !slash || (size_t)(slash - sock) >= sizeof(wdir))
		return false;
	memcpy(wdir, sock, (size_t)(slash - sock));
	wdir[slash - sock] = '\0';
	if (worker_identity(wdir, tok, sizeof(tok), &ignore) < 0)
		return false;
	return strcmp(tok, dev->worker) == 0;
}

/*
 * Flush and disconnect /dev/nbdN if it is connected and ours: its
 * backend identifier is blkstack's (kernels without
 * /sys/block/nbdN/backend cannot tell, and then a connected device is
 * taken as ours), and the node is the record's major:minor.
 *
 * Every wait is bounded.  With no request timeout (nbd-kernel.h),
 * requests the kernel sent to a worker that then died stay in flight
 * until a reconnect re-sends them or the disconnect fails them; and with
 * a dead-connection timeout, new I/O (a flush too) waits up to
 * reconnect-timeout for a reconnect.  So:
 *   - the worker's socket refuses connections (dead, or its supervisor
 *     between two restarts): no flush, straight to the disconnect, which
 *     fails what was in flight or queued;
 *   - it accepts them: if the worker is not the one the device was made
 *     for (dev->worker), first reconnect the device (a restarted worker
 *     the supervisor has not reconnected yet: the flush then reaches it;
 *     a no-op if it has), then a flush waited for at most
 *     NBD_FLUSH_TIMEOUT_S, then the disconnect.  (The reconnect's
 *     handshake is bounded too, 10 s: a hung new worker costs at most
 *     that plus the flush's 15 s, inside libxl's 40 s.)
 */
int hp_nbd_detach(const struct hp_dev *dev, struct bks_error *err)
{
	char backend[BACKEND_MAX], *sock = NULL;
	unsigned long index;
	int fd = -1, flush_rc = 0, ret, rc;
	pid_t flusher = 0;
	bool dead = false;
	struct stat st;

	if (!dev->path[0])
		return 0;
	index = strtoul(dev->path + strlen("/dev/nbd"), NULL, 10);
	if (index > UINT32_MAX || !nbd_kernel_connected((unsigned int)index))
		return 0; /* no such device, or not connected */
	rc = nbd_kernel_backend((unsigned int)index, backend, sizeof(backend));
	if (rc == 0 && strncmp(backend, HP_DEV_NBD_BACKEND_PREFIX,
			       strlen(HP_DEV_NBD_BACKEND_PREFIX)) != 0)
		return 0; /* somebody else's */
	if (rc < 0 && rc != -ENOENT)
		return bks_error_set(err, -rc, "read /sys/block/nbd%lu/backend",
				     index);
	if (rc == 0)
		sock = backend + strlen(HP_DEV_NBD_BACKEND_PREFIX);

	fd = open(dev->path, O_RDONLY | O_CLOEXEC);
	if (fd >= 0 && fstat(fd, &st) == 0 &&
	    st.st_rdev != makedev(dev->major, dev->minor)) {
		ret = 0; /* the node is not the record's device */
		goto out;
	}
	if (fd >= 0 && sock) {
		rc = nbd_sock_probe(sock);
		dead = rc == -ECONNREFUSED || rc == -ENOENT;
	}
	if (fd >= 0 && sock && !dead && !same_worker(dev, sock)) {
		struct bks_error ignore;
		bool done;

		/* A failure here only means the flush may time out. */
		nbd_kernel_reconnect((unsigned int)index, sock, &done, &ignore);
	}
	if (dead)
		flush_rc = -EIO;
	else if (fd >= 0)
		flush_rc = flush_bounded(fd, &flusher);

	ret = nbd_kernel_disconnect((unsigned int)index, err);
	if (ret < 0)
		goto out;
	if (dead)
		ret = bks_error_setmsg(err, EIO,
				       "flush %s: its worker is gone (%s "
				       "refuses connections); requests in "
				       "flight failed",
				       dev->path, sock);
	else if (flush_rc == -ETIMEDOUT)
		ret =
		    bks_error_setmsg(err, EIO,
				     "flush %s: no answer in %d s; "
				     "disconnected, requests in flight failed",
				     dev->path, NBD_FLUSH_TIMEOUT_S);
	else if (flush_rc < 0)
		ret = bks_error_set(err, -flush_rc, "flush %s", dev->path);
out:
	if (fd >= 0)
		close(fd);
	if (flusher > 0) {
		/* The disconnect failed whatever it waited for: it ends. */
		child_wait(flusher, NULL);
	}
	return ret;
}

bool hp_nbd_bound(const struct hp_dev *dev, const char *nbd_sock)
{
	char backend[BACKEND_MAX];
	unsigned long index;
	int rc;

	if (strncmp(dev->path, "/dev/nbd", 8))
		return false;
	index = strtoul(dev->path + strlen("/dev/nbd"), NULL, 10);
	if (index > UINT32_MAX || !nbd_kernel_connected((unsigned int)index))
		return false;
	rc = nbd_kernel_backend((unsigned int)index, backend, sizeof(backend));
	if (rc == -ENOENT)
		return true; /* a kernel without it: connected is all we know */
	return rc == 0 && nbd_kernel_serves((unsigned int)index, nbd_sock);
}
