/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The FUSE server of the loop mechanism: see dev-fuse.h.
 *
 * Start:
 *   1. mkdtemp STATE_DIR/fuse-XXXXXX (the mountpoint).
 *   2. fork + execv blkstack-fuse (the one beside this program, else in
 *      BKS_SBINDIR; never PATH) in its own session, stdin/stdout on
 *      /dev/null, stderr into MOUNTPOINT.log so that a failure can be
 *      explained, and a readiness pipe on fd 3 (--ready-fd 3).
 *   3. Read the pipe to EOF, with a deadline and a pidfd of the child:
 *      "ok" once it has connected (so it knows the export's size) and
 *      mounted, or "error: <why>" (docs/control-protocol.txt,
 *      "Readiness").  No polling for the file.
 *
 * Stop never touches what the record does not prove to be ours: the
 * process fuse_pid must still be our blkstack-fuse serving MOUNTPOINT.
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
#include "deadline.h"
#include "dev-fuse.h"
#include "dev-record.h"
#include "sibling.h"
#include "small-file.h"

#ifndef BKS_SBINDIR
#define BKS_SBINDIR "/usr/local/sbin"
#endif
#define FUSE_EXE "blkstack-fuse"

/* How long blkstack-fuse gets to connect and mount (its own limit: 10 s). */
#define FUSE_READY_MS 15000
/* How long it gets to exit after the unmount, then after SIGTERM. */
#define FUSE_EXIT_MS 5000

/* Append up to 200 bytes of blkstack-fuse's log (its last words) to err. */
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
	snprintf(err->msg + len, sizeof(err->msg) - len, " (%s)", buf);
}

/*
 * Read the readiness pipe rfd to EOF (or deadline): blkstack-fuse closes
 * it after its line, and so does its exit.  Returns 0 on "ok", else
 * -errno with err set.
 */
static int fuse_wait_ready(int rfd, const char *nbd_sock, struct bks_error *err)
{
	char line[BKS_ERROR_MSG_MAX + 64];
	uint64_t deadline = deadline_in(FUSE_READY_MS);
	size_t got = 0;
	char *nl;

	for (;;) {
		struct pollfd pfd = {.fd = rfd, .events = POLLIN};
		int left = ms_left(deadline), n;
		ssize_t r;

		if (left == 0)
			return bks_error_setmsg(err, ETIMEDOUT,
						FUSE_EXE " on %s: not ready "
							 "after %d ms",
						nbd_sock, FUSE_READY_MS);
		n = poll(&pfd, 1, left);
		if (n < 0 && errno != EINTR)
			return bks_error_set(err, errno, "poll for " FUSE_EXE);
		if (n <= 0)
			continue;
		r = read(rfd, line + got, sizeof(line) - 1 - got);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0)
			return bks_error_set(err, errno,
					     "read " FUSE_EXE "'s readiness");
		if (r == 0 || got + (size_t)r == sizeof(line) - 1)
			break;
		got += (size_t)r;
	}
	line[got] = '\0';
	if (strcmp(line, "ok\n") == 0)
		return 0;
	nl = strchr(line, '\n');
	if (strncmp(line, "error: ", 7) == 0 && nl) {
		*nl = '\0';
		bks_sanitize_line(line);
		return bks_error_setmsg(err, EIO, FUSE_EXE " on %s: %s",
					nbd_sock, line + 7);
	}
	return bks_error_setmsg(
	    err, EIO, FUSE_EXE " on %s exited before serving", nbd_sock);
}

/*
 * Start blkstack-fuse on dev->fuse_dir and wait for its readiness.  Sets
 * dev->fuse_pid as soon as there is a process, so that the caller's undo
 * (hp_fuse_check, hp_fuse_stop) finds it.
 */
static int fuse_start(const char *nbd_sock, bool ro, struct hp_dev *dev,
		      const char *log, struct bks_error *err)
{
	int nullfd = -1, logfd = -1, pfd[2] = {-1, -1}, pidfd = -1, ret;
	char exe[PATH_MAX];
	char *argv[10];
	int argc = 0;
	pid_t pid;

	ret = sibling_path(exe, sizeof(exe), FUSE_EXE, BKS_SBINDIR, err);
	if (ret < 0)
		return ret;
	argv[argc++] = exe;
	argv[argc++] = "--socket";
	argv[argc++] = (char *)nbd_sock;
	argv[argc++] = "--mount";
	argv[argc++] = dev->fuse_dir;
	argv[argc++] = "--ready-fd";
	argv[argc++] = "3";
	if (ro)
		argv[argc++] = "--read-only";
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
	if (pipe2(pfd, O_CLOEXEC) < 0) {
		ret = bks_error_set(err, errno, "pipe for " FUSE_EXE);
		goto out;
	}

	pid = fork();
	if (pid < 0) {
		ret = bks_error_set(err, errno, "fork for " FUSE_EXE);
		goto out;
	}
	if (pid == 0) {
		sigset_t all;

		/*
		 * Its own session: it outlives us, and must not get the
		 * toolstack's signals or hold its terminal.  Only fds 0-3
		 * survive: an inherited pipe of the toolstack's kept open by
		 * it would make the toolstack wait for us forever.
		 */
		sigemptyset(&all);
		sigprocmask(SIG_SETMASK, &all, NULL);
		setsid();
		if (dup2(nullfd, 0) < 0 || dup2(nullfd, 1) < 0 ||
		    dup2(logfd, 2) < 0 || dup2(pfd[1], 3) < 0)
			_exit(127);
		close_range(4, ~0u, 0);
		execv(exe, argv);
		_exit(127);
	}
	dev->fuse_pid = pid;
	close(pfd[1]);
	pfd[1] = -1;

	pidfd = pidfd_open(pid, 0);
	if (pidfd < 0) {
		ret = bks_error_set(err, errno, "pidfd_open " FUSE_EXE " %d",
				    pid);
		goto out;
	}
	ret = fuse_wait_ready(pfd[0], nbd_sock, err);
	if (ret < 0) {
		add_fuse_log(err, log);
		/* Exited (or will be stopped by the undo). */
		if (pidfd_wait(pidfd, 0) == 0) {
			child_try_reap(pid, NULL);
			dev->fuse_pid = 0;
		}
	}
out:
	if (pidfd >= 0)
		close(pidfd);
	if (pfd[0] >= 0)
		close(pfd[0]);
	if (pfd[1] >= 0)
		close(pfd[1]);
	if (logfd >= 0)
		close(logfd);
	if (nullfd >= 0)
		close(nullfd);
	return ret;
}

/* What readlink(/proc/PID/exe) appends when the file was replaced. */
#define EXE_DELETED " (deleted)"

int hp_fuse_check(const struct hp_dev *dev, int *pidfd, bool *ours)
{
	char proc[64], exe[PATH_MAX], want[PATH_MAX], real[PATH_MAX];
	char cmd[2 * PATH_MAX + 256], *p, *end, *base;
	bool mnt_ok = false;
	ssize_t n;
	int fd, len;

	*ours = false;
	*pidfd = -1;
	if (dev->fuse_pid <= 0 || !dev->fuse_dir[0])
		return 0;
	/* The pidfd first: whatever we then read is this process's. */
	fd = pidfd_open(dev->fuse_pid, 0);
	if (fd < 0)
		return errno == ESRCH ? 0 : -errno;
	/* Its executable must be our blkstack-fuse (symlinks resolved). */
	snprintf(proc, sizeof(proc), "/proc/%d/exe", dev->fuse_pid);
	n = readlink(proc, exe, sizeof(exe) - 1);
	if (n < 0)
		goto not_ours;
	exe[n] = '\0';
	/*
	 * A blkstack-fuse started before a package upgrade replaced its
	 * file runs on: the kernel names it "PATH (deleted)".  It is still
	 * ours (the upgrade notes in README.md; tests/bats/upgrade.bats).
	 */
	if ((size_t)n > sizeof(EXE_DELETED) - 1 &&
	    strcmp(exe + n - (sizeof(EXE_DELETED) - 1), EXE_DELETED) == 0)
		exe[n - (sizeof(EXE_DELETED) - 1)] = '\0';
	/* The name first: the sweep asks this of every process. */
	base = strrchr(exe, '/');
	if (!base || strcmp(base + 1, FUSE_EXE) != 0 ||
	    sibling_path(want, sizeof(want), FUSE_EXE, BKS_SBINDIR, NULL) < 0 ||
	    !realpath(want, real) || strcmp(exe, real) != 0)
		goto not_ours;
	snprintf(proc, sizeof(proc), "/proc/%d/cmdline", dev->fuse_pid);
	len = small_file_read(proc, cmd, sizeof(cmd));
	if (len < 0)
		goto not_ours;
	/* cmdline is NUL-separated: "--mount" then the mountpoint. */
	end = cmd + len;
	for (p = cmd; p < end; p += strlen(p) + 1) {
		if (strcmp(p, "--mount") == 0 && p + strlen(p) + 1 < end) {
			mnt_ok = strcmp(p + strlen(p) + 1, dev->fuse_dir) == 0;
			break;
		}
	}
	if (!mnt_ok)
		goto not_ours;
	/* Still the same process after we read its command line? */
	if (pidfd_wait(fd, 0) == 0)
		goto not_ours;
	*ours = true;
	*pidfd = fd;
	return 0;
not_ours:
	close(fd);
	return 0;
}

void hp_fuse_hurry(int pidfd)
{
	if (pidfd >= 0)
		pidfd_send_signal(pidfd, SIGUSR1, NULL, 0);
}

int hp_fuse_stop(const struct hp_dev *dev, int pidfd, bool ours,
		 struct bks_error *err)
{
	char log[PATH_MAX + 8];

	snprintf(log, sizeof(log), "%s.log", dev->fuse_dir);
	/*
	 * Lazy unmount: works whoever still holds the file (a deferred loop
	 * clear), and blkstack-fuse exits when the last reference goes. EINVAL:
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
	ret = fuse_start(nbd_sock, ro, dev, log, err);
	if (ret < 0) {
		/* No loop device yet: stopping blkstack-fuse undoes it all. */
		hp_fuse_check(dev, &pidfd, &ours);
		hp_fuse_stop(dev, pidfd, ours, &undo_err);
		if (pidfd >= 0)
			close(pidfd);
		dev->fuse_pid = 0;
		dev->fuse_dir[0] = '\0';
	}
	return ret;
}
