/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The nbdfuse supervisor: see dev-nbdfuse.h.
 *
 * Start:
 *   1. mkdtemp STATE_DIR/fuse-XXXXXX (the mountpoint).
 *   2. fork + execv nbdfuse (absolute path from a fixed list, never PATH)
 *      in its own session, stdin/stdout on /dev/null, stderr into
 *      MOUNTPOINT.log so that a failure can be explained.
 *   3. Wait for MOUNTPOINT/nbd.  nbdfuse has no readiness fd, so we poll
 *      /proc/self/mountinfo for POLLPRI (the mount table changed) and a
 *      pidfd of nbdfuse (it died), with a deadline; no sleep loop.
 *      nbdfuse connects (and learns the export size) before it mounts,
 *      so once the file is there it has the export's size.
 *
 * Stop never touches what the record does not prove to be ours: the
 * process fuse_pid must still be nbdfuse serving MOUNTPOINT.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/pidfd.h>
#include <sys/stat.h>
#include <unistd.h>

#include "child.h"
#include "conf.h"
#include "deadline.h"
#include "dev-nbdfuse.h"
#include "dev-record.h"

/* Where nbdfuse may live; PATH is never searched (we run as root). */
static const char *const nbdfuse_paths[] = {"/usr/bin/nbdfuse",
					    "/usr/local/bin/nbdfuse"};

/* How long nbdfuse gets to connect and mount. */
#define FUSE_READY_MS 10000
/* How long nbdfuse gets to exit after the unmount, then after SIGTERM. */
#define FUSE_EXIT_MS 5000

static const char *nbdfuse_path(void)
{
	for (size_t i = 0; i < sizeof(nbdfuse_paths) / sizeof(*nbdfuse_paths);
	     i++) {
		if (access(nbdfuse_paths[i], X_OK) == 0)
			return nbdfuse_paths[i];
	}
	return NULL;
}

/* Append up to 200 bytes of nbdfuse's log (its last words) to err. */
static void add_fuse_log(struct bks_error *err, const char *log)
{
	char buf[201];
	size_t len;
	ssize_t n;
	int fd;

	if (!err)
		return;
	fd = open(log, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return;
	n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	if (n <= 0)
		return;
	buf[n] = '\0';
	buf[strcspn(buf, "\n")] = '\0';
	bks_sanitize_line(buf);
	len = strlen(err->msg);
	snprintf(err->msg + len, sizeof(err->msg) - len, " (nbdfuse: %s)", buf);
}

/*
 * Start nbdfuse on dev->fuse_dir and wait for its file.  Sets
 * dev->fuse_pid as soon as there is a process, so that the caller's
 * undo (hp_fuse_check, hp_fuse_stop) finds it.
 */
static int fuse_start(const char *nbd_sock, bool ro, struct hp_dev *dev,
		      const char *file, const char *log, struct bks_error *err)
{
	const char *exe = nbdfuse_path();
	int nullfd = -1, logfd = -1, mfd = -1, pidfd = -1, ret;
	char *argv[6];
	int argc = 0;
	uint64_t deadline;
	pid_t pid;

	if (!exe)
		return bks_error_setmsg(err, ENOENT,
					"nbdfuse not found in /usr/bin or "
					"/usr/local/bin (Debian: libnbd-bin)");
	/* Options go before the mountpoint (fuse_check relies on it too). */
	argv[argc++] = (char *)exe;
	if (ro)
		argv[argc++] = "--readonly";
	argv[argc++] = dev->fuse_dir;
	argv[argc++] = "--unix";
	argv[argc++] = (char *)nbd_sock;
	argv[argc] = NULL;

	nullfd = open("/dev/null", O_RDWR | O_CLOEXEC);
	if (nullfd < 0) {
		ret = bks_error_set(err, errno, "open /dev/null");
		goto out;
	}
	/* New beside the new mountpoint: nothing may stand there already. */
	logfd = open(log, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW,
		     0600);
	if (logfd < 0) {
		ret = bks_error_set(err, errno, "create %s", log);
		goto out;
	}
	/* Opened before the fork so that the mount cannot slip past us. */
	mfd = open("/proc/self/mountinfo", O_RDONLY | O_CLOEXEC);
	if (mfd < 0) {
		ret = bks_error_set(err, errno, "open /proc/self/mountinfo");
		goto out;
	}

	pid = fork();
	if (pid < 0) {
		ret = bks_error_set(err, errno, "fork for nbdfuse");
		goto out;
	}
	if (pid == 0) {
		sigset_t all;

		/*
		 * Its own session: nbdfuse outlives us, and must not get the
		 * toolstack's signals or hold its terminal.  Only fds 0-2
		 * survive: an inherited pipe of the toolstack's kept open by
		 * nbdfuse would make it wait for us forever.
		 */
		sigemptyset(&all);
		sigprocmask(SIG_SETMASK, &all, NULL);
		setsid();
		if (dup2(nullfd, 0) < 0 || dup2(nullfd, 1) < 0 ||
		    dup2(logfd, 2) < 0)
			_exit(127);
		close_range(3, ~0u, 0);
		execv(exe, argv);
		_exit(127);
	}
	dev->fuse_pid = pid;

	pidfd = pidfd_open(pid, 0);
	if (pidfd < 0) {
		ret = bks_error_set(err, errno, "pidfd_open nbdfuse %d", pid);
		goto out;
	}
	deadline = deadline_in(FUSE_READY_MS);
	for (;;) {
		struct pollfd pfd[2] = {{.fd = mfd, .events = POLLPRI},
					{.fd = pidfd, .events = POLLIN}};
		struct stat st;
		int left, n;

		/*
		 * Before the mount, fuse_dir is an empty directory; after
		 * it, stat is answered by nbdfuse itself.
		 */
		if (stat(file, &st) == 0) {
			if (!S_ISREG(st.st_mode)) {
				ret = bks_error_setmsg(
				    err, EIO, "nbdfuse: %s is not a file",
				    file);
				goto out;
			}
			ret = 0;
			goto out;
		}
		if (errno != ENOENT) {
			ret = bks_error_set(err, errno, "stat %s", file);
			add_fuse_log(err, log);
			goto out;
		}
		left = ms_left(deadline);
		if (left == 0) {
			ret = bks_error_setmsg(err, ETIMEDOUT,
					       "nbdfuse on %s: no %s after %d "
					       "ms",
					       nbd_sock, file, FUSE_READY_MS);
			add_fuse_log(err, log);
			goto out;
		}
		n = poll(pfd, 2, left);
		if (n < 0 && errno != EINTR) {
			ret = bks_error_set(err, errno, "poll for nbdfuse");
			goto out;
		}
		if (n > 0 && (pfd[1].revents & POLLIN)) {
			/* Whatever it mounted, nobody serves it now. */
			ret = bks_error_setmsg(err, EIO,
					       "nbdfuse on %s exited before "
					       "serving %s",
					       nbd_sock, file);
			add_fuse_log(err, log);
			child_try_reap(pid, NULL);
			dev->fuse_pid = 0;
			goto out;
		}
	}
out:
	if (pidfd >= 0)
		close(pidfd);
	if (mfd >= 0)
		close(mfd);
	if (logfd >= 0)
		close(logfd);
	if (nullfd >= 0)
		close(nullfd);
	return ret;
}

int hp_fuse_check(const struct hp_dev *dev, int *pidfd, bool *ours)
{
	char proc[64], *cmd = NULL, *arg;
	bool exe_ok = false;
	int fd;

	*ours = false;
	*pidfd = -1;
	if (dev->fuse_pid <= 0 || !dev->fuse_dir[0])
		return 0;
	/* The pidfd first: whatever we then read is this process's. */
	fd = pidfd_open(dev->fuse_pid, 0);
	if (fd < 0)
		return errno == ESRCH ? 0 : -errno;
	snprintf(proc, sizeof(proc), "/proc/%d/cmdline", dev->fuse_pid);
	if (conf_read_file(proc, &cmd, 2 * PATH_MAX + 64, NULL) < 0)
		goto not_ours;
	/* cmdline is NUL-separated; read_small_file stopped at the end. */
	for (size_t i = 0; i < sizeof(nbdfuse_paths) / sizeof(*nbdfuse_paths);
	     i++) {
		if (strcmp(cmd, nbdfuse_paths[i]) == 0)
			exe_ok = true;
	}
	/* argv[1] is the mountpoint, or "--readonly" and then it. */
	arg = cmd + strlen(cmd) + 1;
	if (strcmp(arg, "--readonly") == 0)
		arg += strlen(arg) + 1;
	if (!exe_ok || strcmp(arg, dev->fuse_dir) != 0)
		goto not_ours;
	/* Still the same process after we read its command line? */
	if (pidfd_wait(fd, 0) == 0)
		goto not_ours;
	free(cmd);
	*ours = true;
	*pidfd = fd;
	return 0;
not_ours:
	free(cmd);
	close(fd);
	return 0;
}

int hp_fuse_stop(const struct hp_dev *dev, int pidfd, bool ours,
		 struct bks_error *err)
{
	char log[PATH_MAX + 8];

	snprintf(log, sizeof(log), "%s.log", dev->fuse_dir);
	/*
	 * Lazy unmount: works whoever still holds the file (a deferred loop
	 * clear), and nbdfuse exits when the last reference goes.  EINVAL:
	 * not mounted (any more).
	 */
	if (umount2(dev->fuse_dir, MNT_DETACH | UMOUNT_NOFOLLOW) < 0 &&
	    errno != EINVAL && errno != ENOENT)
		return bks_error_set(err, errno, "unmount %s", dev->fuse_dir);

	if (ours) {
		if (pidfd_wait(pidfd, FUSE_EXIT_MS) < 0) {
			pidfd_send_signal(pidfd, SIGTERM, NULL, 0);
			if (pidfd_wait(pidfd, FUSE_EXIT_MS) < 0) {
				pidfd_send_signal(pidfd, SIGKILL, NULL, 0);
				pidfd_wait(pidfd, FUSE_EXIT_MS);
			}
		}
		/* Not our child when detach runs in another process. */
		child_try_reap(dev->fuse_pid, NULL);
	}

	if (rmdir(dev->fuse_dir) < 0 && errno != ENOENT)
		return bks_error_set(err, errno, "rmdir %s", dev->fuse_dir);
	if (unlink(log) < 0 && errno != ENOENT)
		return bks_error_set(err, errno, "unlink %s", log);
	return 0;
}

int hp_fuse_setup(const char *nbd_sock, const char *state_dir, bool ro,
		  struct hp_dev *dev, char *file, size_t size,
		  struct bks_error *err)
{
	char log[PATH_MAX + 8];
	struct bks_error undo_err;
	bool ours;
	int pidfd, ret;

	if (!hp_dev_record_safe(state_dir) ||
	    strlen(state_dir) + sizeof("/fuse-XXXXXX") > sizeof(dev->fuse_dir))
		return bks_error_setmsg(err, EINVAL,
					"state directory %s: too long or "
					"contains whitespace",
					state_dir);
	snprintf(dev->fuse_dir, sizeof(dev->fuse_dir), "%s/fuse-XXXXXX",
		 state_dir);
	if (!mkdtemp(dev->fuse_dir)) {
		ret = bks_error_set(err, errno, "mkdtemp %s", dev->fuse_dir);
		dev->fuse_dir[0] = '\0';
		return ret;
	}
	snprintf(file, size, "%s/nbd", dev->fuse_dir);
	snprintf(log, sizeof(log), "%s.log", dev->fuse_dir);
	ret = fuse_start(nbd_sock, ro, dev, file, log, err);
	if (ret < 0) {
		/* No loop device yet: stopping nbdfuse undoes it all. */
		hp_fuse_check(dev, &pidfd, &ours);
		hp_fuse_stop(dev, pidfd, ours, &undo_err);
		if (pidfd >= 0)
			close(pidfd);
		dev->fuse_pid = 0;
		dev->fuse_dir[0] = '\0';
	}
	return ret;
}
