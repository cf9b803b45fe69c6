/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* Starting and stopping workers (worker-run.h). */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "blkstack/chain.h"
#include "child.h"
#include "ctl-client.h"
#include "deadline.h"
#include "lockfile.h"
#include "rundir.h"
#include "worker-live.h"
#include "worker-run.h"

extern char **environ;

/* The files a worker keeps in DIR/NAME, the lock last. */
static const char *const worker_files[] = {WORKER_FILE_PID, WORKER_FILE_NBD,
					   WORKER_FILE_CTL, WORKER_FILES_STATE,
					   WORKER_FILE_LOCK};

/* DIR/NAME[/FILE] into buf.  Returns 0 or -ENAMETOOLONG with err set. */
static int wpath(char *buf, size_t size, const char *rundir, const char *name,
		 const char *file, struct bks_error *err)
{
	int n = file ? snprintf(buf, size, "%s/%s/%s", rundir, name, file)
		     : snprintf(buf, size, "%s/%s", rundir, name);

	if (n < 0 || (size_t)n >= size)
		return bks_error_setmsg(err, ENAMETOOLONG,
					"path %s/%s is too long", rundir, name);
	return 0;
}

int worker_remove_files(const char *rundir, const char *name,
			struct bks_error *err)
{
	char path[PATH_MAX];
	int rc, lock_fd = -1;

	rc = wpath(path, sizeof(path), rundir, name, WORKER_FILE_LOCK, err);
	if (rc < 0)
		goto out;
	rc = lockfile_take(path, LOCKFILE_NONBLOCK, &lock_fd, err);
	if (rc == -EWOULDBLOCK) {
		rc = bks_error_setmsg(err, EBUSY, "a running worker holds %s",
				      path);
		goto out;
	}
	/* No lock file: nothing can hold the rest. */
	if (rc < 0 && rc != -ENOENT)
		goto out;
	bks_error_clear(err);
	for (size_t i = 0; i < sizeof(worker_files) / sizeof(*worker_files);
	     i++) {
		rc = wpath(path, sizeof(path), rundir, name, worker_files[i],
			   err);
		if (rc < 0)
			goto out;
		if (unlink(path) < 0 && errno != ENOENT) {
			rc = bks_error_set(err, errno, "remove %s", path);
			goto out;
		}
	}
	rc = wpath(path, sizeof(path), rundir, name, NULL, err);
	if (rc < 0)
		goto out;
	rc = 0;
	if (rmdir(path) < 0 && errno != ENOENT)
		rc = bks_error_set(err, errno, "remove %s", path);
out:
	if (lock_fd >= 0)
		close(lock_fd);
	return rc;
}

/* After worker pid exited: its leftovers go, unless a new one holds them. */
static int cleanup_after(const char *rundir, const char *name,
			 struct bks_error *err)
{
	int rc = worker_remove_files(rundir, name, err);

	if (rc == -EBUSY) {
		bks_error_clear(err);
		return 0;
	}
	return rc;
}

/* ---- start --------------------------------------------------------------- */

/* fd moved to 3 or above (close-on-exec), so stdio never clobbers it. */
static int above_stdio(int fd)
{
	int nfd;

	if (fd > 2)
		return fd;
	nfd = fcntl(fd, F_DUPFD_CLOEXEC, 3);
	close(fd);
	return nfd < 0 ? -errno : nfd;
}

/*
 * Start the worker in its own session, stdio on /dev/null, with the
 * write end of the readiness pipe as --ready-fd.  Returns 0 with *pid,
 * or -errno with err set.
 */
static int spawn_worker(const struct worker_spec *s, int ready_fd, pid_t *pid,
			struct bks_error *err)
{
	posix_spawn_file_actions_t fa;
	posix_spawnattr_t attr;
	sigset_t none;
	char fdstr[16];
	const char *argv[12];
	int argc = 0, rc;

	/* Said here, whether posix_spawn would say it or the child's exit. */
	if (access(s->exe, X_OK) < 0)
		return bks_error_set(err, errno, "start %s", s->exe);
	snprintf(fdstr, sizeof(fdstr), "%d", ready_fd);
	argv[argc++] = s->exe;
	argv[argc++] = "--name";
	argv[argc++] = s->name;
	argv[argc++] = "--chain";
	argv[argc++] = s->chain;
	argv[argc++] = "--rundir";
	argv[argc++] = s->rundir;
	argv[argc++] = "--ready-fd";
	argv[argc++] = fdstr;
	if (s->read_only)
		argv[argc++] = "--read-only";
	argv[argc] = NULL;

	posix_spawn_file_actions_init(&fa);
	posix_spawnattr_init(&attr);
	sigemptyset(&none);
	/*
	 * A session of its own: no controlling terminal, no SIGHUP or
	 * SIGINT from ours.  Signals as a fresh program expects them.
	 */
	posix_spawnattr_setflags(&attr,
				 POSIX_SPAWN_SETSID | POSIX_SPAWN_SETSIGMASK);
	posix_spawnattr_setsigmask(&attr, &none);
	posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
	posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
	posix_spawn_file_actions_adddup2(&fa, 1, 2);
	/* dup2 onto itself clears O_CLOEXEC: only the worker's end stays. */
	posix_spawn_file_actions_adddup2(&fa, ready_fd, ready_fd);
	rc = posix_spawn(pid, s->exe, &fa, &attr, (char *const *)argv, environ);
	posix_spawn_file_actions_destroy(&fa);
	posix_spawnattr_destroy(&attr);
	if (rc != 0)
		return bks_error_set(err, rc, "start %s", s->exe);
	return 0;
}

/*
 * Read the worker's readiness report into buf: "ok\n", or "error: MSG\n"
 * and maybe "errno: NAME\n" after it, up to EOF.  Returns the length (0 at
 * EOF without anything), or -ETIMEDOUT / -errno.
 */
static int read_ready(int fd, char *buf, size_t size)
{
	uint64_t deadline = deadline_in(WORKER_READY_TIMEOUT_MS);
	size_t len = 0;

	for (;;) {
		struct pollfd p = {.fd = fd, .events = POLLIN};
		ssize_t n;
		int pn;

		buf[len] = '\0';
		/* "ok" is all there is: the worker keeps serving. */
		if (strncmp(buf, "ok\n", 3) == 0 || len == size - 1)
			return (int)len;
		pn = poll(&p, 1, ms_left(deadline));
		if (pn < 0 && errno == EINTR)
			continue;
		if (pn < 0)
			return -errno;
		if (pn == 0)
			return -ETIMEDOUT;
		n = read(fd, buf + len, size - 1 - len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return -errno;
		if (n == 0)
			return (int)len;
		len += (size_t)n;
	}
}

/*
 * A readiness report of a failure: err gets "worker NAME: MSG" and the
 * errno named on the "errno:" line (EIO without one).  Returns -errno, or
 * 1 if the report is not an error report.
 */
static int ready_error(const char *name, char *buf, struct bks_error *err)
{
	char *nl = strchr(buf, '\n'), *eline;
	int e = 0;

	if (strncmp(buf, "error: ", 7) != 0)
		return 1;
	if (nl) {
		*nl = '\0';
		eline = nl + 1;
		if (strncmp(eline, "errno: ", 7) == 0) {
			eline[7 + strcspn(eline + 7, " \n")] = '\0';
			e = ctl_errno_from_name(eline + 7);
		}
	}
	bks_sanitize_line(buf);
	return bks_error_setmsg(err, e ? e : EIO, "worker %s: %s", name,
				buf + 7);
}

int worker_start(const struct worker_spec *s, pid_t *pidp,
		 struct bks_error *err)
{
	char wdir[PATH_MAX], line[2 * BKS_ERROR_MSG_MAX + 64], how[64];
	struct worker_proc live;
	struct bks_error ignore;
	int fds[2] = {-1, -1}, status = 0, rc, n;
	pid_t pid = -1;

	*pidp = 0;
	if (strlen(s->chain) > BKS_CHAIN_STR_MAX)
		return bks_error_setmsg(err, E2BIG,
					"worker %s: the chain is longer than "
					"%d bytes",
					s->name, BKS_CHAIN_STR_MAX);
	rc = wpath(wdir, sizeof(wdir), s->rundir, s->name, NULL, err);
	if (rc < 0)
		return bks_error_prepend(err, "worker %s: ", s->name);
	/* The worker's lock decides; this only words the common case. */
	if (worker_live(wdir, &live, &ignore) == 0)
		return bks_error_setmsg(err, EBUSY,
					"worker %s: already running (pid %d)",
					s->name, (int)live.pid);
	if (pipe2(fds, O_CLOEXEC) < 0)
		return bks_error_set(err, errno, "worker %s: pipe", s->name);
	fds[0] = above_stdio(fds[0]);
	fds[1] = above_stdio(fds[1]);
	if (fds[0] < 0 || fds[1] < 0) {
		rc = bks_error_set(err, -(fds[0] < 0 ? fds[0] : fds[1]),
				   "worker %s: pipe", s->name);
		goto out;
	}
	rc = spawn_worker(s, fds[1], &pid, err);
	close(fds[1]);
	fds[1] = -1;
	if (rc < 0) {
		bks_error_prepend(err, "worker %s: ", s->name);
		goto out;
	}
	n = read_ready(fds[0], line, sizeof(line));
	if (n > 0 && strncmp(line, "ok\n", 3) == 0) {
		/* It serves; it is no longer ours to wait for. */
		*pidp = pid;
		rc = 0;
		goto out;
	}
	if (n > 0 && (rc = ready_error(s->name, line, err)) < 0) {
		/*
		 * It cleans up and exits: wait, so that it is gone when we
		 * return, then remove the lock and directory it leaves (not
		 * if another worker holds them: "already running").
		 */
		child_reap(pid, WORKER_EXIT_TIMEOUT_MS, &status);
		cleanup_after(s->rundir, s->name, &ignore);
		goto out;
	}
	if (n == -ETIMEDOUT) {
		rc = bks_error_setmsg(err, ETIMEDOUT,
				      "worker %s: not ready within %d s; "
				      "killed it",
				      s->name, WORKER_READY_TIMEOUT_MS / 1000);
		kill(pid, SIGKILL);
	} else if (n < 0) {
		rc = bks_error_set(err, -n,
				   "worker %s: read its readiness; killed it",
				   s->name);
		kill(pid, SIGKILL);
	} else if (n > 0) {
		line[strcspn(line, "\n")] = '\0';
		bks_sanitize_line(line);
		rc = bks_error_setmsg(err, EPROTO,
				      "worker %s: unexpected readiness line "
				      "'%.64s'; killed it",
				      s->name, line);
		kill(pid, SIGKILL);
	}
	child_reap(pid, WORKER_EXIT_TIMEOUT_MS, &status);
	if (n == 0) {
		child_describe(status, how, sizeof(how));
		rc = bks_error_setmsg(err, EIO,
				      "worker %s: %s before it was ready",
				      s->name, how);
	}
	/* It died without cleaning up: its files are stale now. */
	cleanup_after(s->rundir, s->name, &ignore);
out:
	if (fds[0] >= 0)
		close(fds[0]);
	if (fds[1] >= 0)
		close(fds[1]);
	return rc;
}

/* ---- stop ---------------------------------------------------------------- */

/*
 * Wait, up to timeout_ms, for the peer of socket fd to close it (what it
 * still sends is dropped).  Returns 0, -ETIMEDOUT or -errno.
 */
static int wait_eof(int fd, int timeout_ms)
{
	uint64_t deadline = deadline_in(timeout_ms);
	char buf[4096];

	for (;;) {
		struct pollfd p = {.fd = fd, .events = POLLIN};
		int n = poll(&p, 1, ms_left(deadline));
		ssize_t r;

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return -errno;
		if (n == 0)
			return -ETIMEDOUT;
		r = recv(fd, buf, sizeof(buf), MSG_DONTWAIT);
		if (r == 0 || (r < 0 && errno == ECONNRESET))
			return 0;
		if (r < 0 && errno != EINTR && errno != EAGAIN)
			return -errno;
	}
}

/* A dead worker's leftovers: remove them, and say so in out->note. */
static int stop_stale(const char *rundir, const char *name,
		      const struct worker_proc *p, const char *why,
		      struct worker_stopped *out, struct bks_error *err)
{
	int rc = worker_remove_files(rundir, name, err);

	if (rc < 0)
		return bks_error_prepend(err,
					 "worker %s: not running (%s), not "
					 "removed: ",
					 name, why);
	out->how = WORKER_WAS_STALE;
	out->pid = p->file_pid;
	if (p->file_pid > 0)
		snprintf(out->note, sizeof(out->note),
			 "worker %s: stale (pid %d is dead); removed its files",
			 name, (int)p->file_pid);
	else
		snprintf(out->note, sizeof(out->note),
			 "worker %s: stale (%s); removed its files", name, why);
	return 0;
}

int worker_stop(const char *rundir, const char *name, int timeout_ms,
		struct worker_stopped *out, struct bks_error *err)
{
	char wdir[PATH_MAX];
	struct ctl_client cl = {.fd = -1};
	struct worker_proc p;
	struct bks_error lerr = {0};
	struct stat st;
	int rc, pidfd = -1;

	memset(out, 0, sizeof(*out));
	rc = wpath(wdir, sizeof(wdir), rundir, name, NULL, err);
	if (rc < 0)
		return bks_error_prepend(err, "worker %s: ", name);
	if (lstat(wdir, &st) < 0 && errno == ENOENT) {
		/* hotplug remove may run twice: nothing to do is success. */
		out->how = WORKER_ABSENT;
		snprintf(out->note, sizeof(out->note), "no worker %s", name);
		return 0;
	}
	rc = worker_live(wdir, &p, &lerr);
	if (rc == -ESRCH)
		return stop_stale(rundir, name, &p, p.why, out, err);
	/* A pid file that holds no pid: dead too (the lock decides). */
	if (rc == -EINVAL)
		return stop_stale(rundir, name, &p, lerr.msg, out, err);
	if (rc < 0)
		return bks_error_setmsg(err, lerr.code, "worker %s: %s", name,
					lerr.msg);
	/* Before shutdown: the pidfd pins this process, not a reused pid. */
	pidfd = worker_pidfd(&p);
	if (pidfd == -ESRCH) {
		p.file_pid = p.pid;
		return stop_stale(rundir, name, &p, "it exited just now", out,
				  err);
	}
	if (pidfd < 0 && pidfd != -ENOSYS) {
		rc = bks_error_set(err, -pidfd, "worker %s: pidfd_open %d",
				   name, (int)p.pid);
		goto out;
	}
	rc = ctl_client_open(&cl, rundir, name, CTL_CALL_TIMEOUT_MS, &lerr);
	if (rc < 0) {
		rc = bks_error_setmsg(err, lerr.code,
				      "worker %s: unreachable (pid %d is "
				      "running, but %s); not touching it",
				      name, (int)p.pid, lerr.msg);
		goto out;
	}
	rc = ctl_client_call(&cl, "shutdown", &lerr);
	/* ECONNRESET: it stopped before its reply was read; fine. */
	if (rc < 0 && rc != -ECONNRESET) {
		rc = bks_error_setmsg(err, lerr.code, "worker %s: %s", name,
				      lerr.msg);
		goto out;
	}
	/*
	 * Without pidfds (old kernels, valgrind), the end of the control
	 * connection says the worker is (all but) gone: it closes only
	 * when the worker frees its ctl, just before exiting.
	 */
	if (pidfd >= 0) {
		ctl_client_close(&cl);
		rc = pidfd_wait(pidfd, timeout_ms);
	} else {
		rc = wait_eof(cl.fd, timeout_ms);
	}
	if (rc == -ETIMEDOUT) {
		rc = bks_error_setmsg(err, ETIMEDOUT,
				      "worker %s: pid %d did not exit within "
				      "%d s",
				      name, (int)p.pid, timeout_ms / 1000);
		goto out;
	}
	if (rc < 0) {
		rc = bks_error_set(err, -rc, "worker %s: wait for pid %d", name,
				   (int)p.pid);
		goto out;
	}
	rc = cleanup_after(rundir, name, err);
	if (rc < 0) {
		bks_error_prepend(err, "worker %s: ", name);
		goto out;
	}
	out->how = WORKER_STOPPED;
	out->pid = p.pid;
out:
	ctl_client_close(&cl);
	if (pidfd >= 0)
		close(pidfd);
	return rc;
}
