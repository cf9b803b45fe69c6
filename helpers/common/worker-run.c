/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* Starting and stopping workers (worker-run.h). */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/pidfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "blkstack/chain.h"
#include "child.h"
#include "conf.h"
#include "ctl-client.h"
#include "deadline.h"
#include "lockfile.h"
#include "ready-fd.h"
#include "rundir.h"
#include "worker-live.h"
#include "worker-name.h"
#include "worker-run.h"

extern char **environ;

/*
 * The files of DIR/NAME: the worker's (with the state a restart needs),
 * then its supervisor's (state that must survive a worker's restart too),
 * the locks last, the supervisor's after the worker's.
 */
static const char *const worker_files[] = {
    WORKER_FILE_PID,
    WORKER_FILE_NBD,
    WORKER_FILE_CTL,
    WORKER_FILES_STATE,
    "chain",
    "chain.tmp",
    SUPERVISOR_FILE_PID,
    SUPERVISOR_FILE_STATE,
    WORKER_FILE_LOCK,
    SUPERVISOR_FILE_LOCK,
};

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

/* Take DIR/NAME/file, a lock, without waiting: -EBUSY if it is held. */
static int try_lock(const char *rundir, const char *name, const char *file,
		    int *fd, struct bks_error *err)
{
	char path[PATH_MAX];
	int rc = wpath(path, sizeof(path), rundir, name, file, err);

	if (rc < 0)
		return rc;
	rc = lockfile_take(path, LOCKFILE_NONBLOCK, fd, err);
	if (rc == -EWOULDBLOCK)
		return bks_error_setmsg(err, EBUSY, "a running %s holds %s",
					strcmp(file, WORKER_FILE_LOCK) == 0
					    ? "worker"
					    : "supervisor",
					path);
	/* No lock file: nothing can hold the rest. */
	if (rc == -ENOENT) {
		bks_error_clear(err);
		return 0;
	}
	return rc;
}

/* worker_remove_files(); sup_held: the caller holds supervisor.lock. */
static int remove_files(const char *rundir, const char *name, bool sup_held,
			struct bks_error *err)
{
	char path[PATH_MAX];
	int rc = 0, lock_fd = -1, sup_fd = -1;

	if (!sup_held)
		rc = try_lock(rundir, name, SUPERVISOR_FILE_LOCK, &sup_fd, err);
	if (rc == 0)
		rc = try_lock(rundir, name, WORKER_FILE_LOCK, &lock_fd, err);
	if (rc < 0)
		goto out;
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
	/*
	 * The FUSE export's mount point (--fuse): a crash leaves it mounted,
	 * and dead once nobody holds its /dev/fuse.  Detached by name, never
	 * looked at first: a stat of a session nobody serves would wait.
	 * EINVAL: not a mount point (any more).
	 */
	rc = wpath(path, sizeof(path), rundir, name, WORKER_FILE_FUSE, err);
	if (rc < 0)
		goto out;
	if (umount2(path, MNT_DETACH | UMOUNT_NOFOLLOW) < 0 &&
	    errno != EINVAL && errno != ENOENT) {
		rc = bks_error_set(err, errno, "unmount %s", path);
		goto out;
	}
	if (rmdir(path) < 0 && errno != ENOENT) {
		rc = bks_error_set(err, errno, "remove %s", path);
		goto out;
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
	if (sup_fd >= 0)
		close(sup_fd);
	return rc;
}

int worker_remove_files(const char *rundir, const char *name,
			struct bks_error *err)
{
	return remove_files(rundir, name, false, err);
}

int worker_remove_files_supervised(const char *rundir, const char *name,
				   struct bks_error *err)
{
	return remove_files(rundir, name, true, err);
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

/* After a stop saw worker pid exit: its leftovers go, *out says so. */
static int stopped(const char *rundir, const char *name, pid_t pid,
		   struct worker_stopped *out, struct bks_error *err)
{
	int rc = cleanup_after(rundir, name, err);

	if (rc < 0) {
		bks_error_prepend(err, "worker %s: ", name);
		return rc;
	}
	out->how = WORKER_STOPPED;
	out->pid = pid;
	return 0;
}

/* ---- start --------------------------------------------------------------- */

int worker_fd_above_stdio(int fd)
{
	int nfd;

	if (fd > 2)
		return fd;
	nfd = fcntl(fd, F_DUPFD_CLOEXEC, 3);
	close(fd);
	return nfd < 0 ? -errno : nfd;
}

int worker_spawn(const char *exe, const char *const *argv, const int *keep,
		 size_t nkeep, pid_t *pid, struct bks_error *err)
{
	posix_spawn_file_actions_t fa;
	posix_spawnattr_t attr;
	sigset_t none;
	int rc;

	/* Said here, whether posix_spawn would say it or the child's exit. */
	if (access(exe, X_OK) < 0)
		return bks_error_set(err, errno, "start %s", exe);
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
	/* dup2 onto itself clears O_CLOEXEC: only these stay open. */
	for (size_t i = 0; i < nkeep; i++)
		posix_spawn_file_actions_adddup2(&fa, keep[i], keep[i]);
	rc = posix_spawn(pid, exe, &fa, &attr, (char *const *)argv, environ);
	posix_spawn_file_actions_destroy(&fa);
	posix_spawnattr_destroy(&attr);
	if (rc != 0)
		return bks_error_set(err, rc, "start %s", exe);
	return 0;
}

/*
 * Start the worker, or its supervisor (sup_exe not NULL), with the write
 * end of the readiness pipe as --ready-fd.  Returns 0 with *pid, or
 * -errno with err set.
 */
static int spawn_worker(const struct worker_spec *s, const char *sup_exe,
			int ready_fd, pid_t *pid, struct bks_error *err)
{
	char fdstr[16];
	const char *argv[16];
	int argc = 0;

	snprintf(fdstr, sizeof(fdstr), "%d", ready_fd);
	argc = worker_args(argv, sup_exe ? sup_exe : s->exe, s, fdstr);
	if (sup_exe) {
		argv[argc++] = "--worker";
		argv[argc++] = s->exe;
		if (s->xs_error_path) {
			argv[argc++] = "--xs-error-path";
			argv[argc++] = s->xs_error_path;
		}
	}
	argv[argc] = NULL;
	return worker_spawn(argv[0], argv, &ready_fd, 1, pid, err);
}

int worker_args(const char **argv, const char *exe, const struct worker_spec *s,
		const char *ready_fd)
{
	int argc = 0;

	argv[argc++] = exe;
	argv[argc++] = "--name";
	argv[argc++] = s->name;
	argv[argc++] = "--chain";
	argv[argc++] = s->chain;
	argv[argc++] = "--rundir";
	argv[argc++] = s->rundir;
	argv[argc++] = "--ready-fd";
	argv[argc++] = ready_fd;
	if (s->read_only)
		argv[argc++] = "--read-only";
	if (s->fuse)
		argv[argc++] = "--fuse";
	return argc;
}

int worker_args_take(int c, const char *arg, struct worker_spec *s,
		     int *ready_fd, const char *prog)
{
	switch (c) {
	case 'n':
		s->name = arg;
		return 1;
	case 'c':
		s->chain = arg;
		return 1;
	case 'r':
		s->rundir = arg;
		return 1;
	case 'R':
		s->read_only = true;
		return 1;
	case 'u':
		s->fuse = true;
		return 1;
	case 'F':
		if (ready_fd_parse(arg, 0, ready_fd) < 0) {
			fprintf(stderr, "%s: bad --ready-fd '%s'\n", prog, arg);
			return -EINVAL;
		}
		return 1;
	default:
		return 0;
	}
}

int worker_args_finish(struct worker_spec *s, const char *prog)
{
	if (!worker_name_valid(s->name)) {
		fprintf(stderr,
			"%s: bad --name: use 1 to %d of [A-Za-z0-9_.-], not "
			"'.' or '..'\n",
			prog, WORKER_NAME_MAX);
		return -EINVAL;
	}
	if (!s->rundir) {
		s->rundir = getenv("BLKSTACK_RUNDIR");
		if (!s->rundir || !*s->rundir)
			s->rundir = DEFAULT_RUNDIR;
	}
	return 0;
}

int worker_read_ready(int fd, int timeout_ms, char *buf, size_t size)
{
	uint64_t deadline = deadline_in(timeout_ms);
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

int worker_conf_supervise(bool *yes, struct bks_error *err)
{
	static const char *const words[] = {"yes", "no", NULL};
	unsigned int which = 0;
	const char *name;
	char *text = NULL;
	int rc;

	*yes = true;
	rc = conf_read(&text, &name, err);
	if (rc == 0)
		rc = conf_word(text, name, "supervise", words, &which, err);
	if (rc == 0)
		*yes = which == 0;
	free(text);
	return rc;
}

/* blkstack-supervisor beside the worker's exe, into buf. */
static int supervisor_exe(const char *exe, char *buf, size_t size,
			  struct bks_error *err)
{
	const char *slash = strrchr(exe, '/');
	int dlen = slash ? (int)(slash - exe) : 1;
	int n = snprintf(buf, size, "%.*s/" SUPERVISOR_EXE, dlen,
			 slash ? exe : ".");

	if (n < 0 || (size_t)n >= size)
		return bks_error_setmsg(err, ENAMETOOLONG, "%s: path too long",
					exe);
	return 0;
}

int worker_start(const struct worker_spec *s, pid_t *pidp,
		 struct bks_error *err)
{
	char sup[PATH_MAX];
	bool supervise = false;
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
	if (supervisor_live(wdir, &live, &ignore) == 0)
		return bks_error_setmsg(err, EBUSY,
					"worker %s: already running "
					"(supervisor pid %d)",
					s->name, (int)live.pid);
	rc = worker_conf_supervise(&supervise, err);
	if (rc == 0 && supervise)
		rc = supervisor_exe(s->exe, sup, sizeof(sup), err);
	if (rc < 0)
		return bks_error_prepend(err, "worker %s: ", s->name);
	if (pipe2(fds, O_CLOEXEC) < 0)
		return bks_error_set(err, errno, "worker %s: pipe", s->name);
	fds[0] = worker_fd_above_stdio(fds[0]);
	fds[1] = worker_fd_above_stdio(fds[1]);
	if (fds[0] < 0 || fds[1] < 0) {
		rc = bks_error_set(err, -(fds[0] < 0 ? fds[0] : fds[1]),
				   "worker %s: pipe", s->name);
		goto out;
	}
	rc = spawn_worker(s, supervise ? sup : NULL, fds[1], &pid, err);
	close(fds[1]);
	fds[1] = -1;
	if (rc < 0) {
		bks_error_prepend(err, "worker %s: ", s->name);
		goto out;
	}
	/* The supervisor waits as long for its worker, and a little more. */
	n = worker_read_ready(fds[0],
			      WORKER_READY_TIMEOUT_MS +
				  (supervise ? WORKER_READY_SLACK_MS : 0),
			      line, sizeof(line));
	if (n > 0 && strncmp(line, "ok\n", 3) == 0) {
		/* It serves; it is no longer ours to wait for. */
		*pidp = pid;
		/* The worker's pid, not its supervisor's, if we can tell. */
		if (supervise && worker_live(wdir, &live, &ignore) == 0)
			*pidp = live.pid;
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
	if (out->note[0])
		; /* stop_starting() said what it killed */
	else if (p->file_pid > 0)
		snprintf(out->note, sizeof(out->note),
			 "worker %s: stale (pid %d is dead); removed its files",
			 name, (int)p->file_pid);
	else
		snprintf(out->note, sizeof(out->note),
			 "worker %s: stale (%s); removed its files", name, why);
	return 0;
}

/* Send sig to the process of pidfd fd, or to pid without pidfds. */
static void send_sig(int fd, pid_t pid, int sig)
{
	if (fd >= 0)
		pidfd_send_signal(fd, sig, NULL, 0);
	else if (pid > 0)
		kill(pid, sig);
}

/* Wait for the process of fd (or pid, not our child) to be gone. */
static int wait_gone(int fd, pid_t pid, int timeout_ms)
{
	uint64_t deadline = deadline_in(timeout_ms);

	if (fd >= 0)
		return pidfd_wait(fd, timeout_ms);
	while (kill(pid, 0) == 0) {
		if (ms_left(deadline) == 0)
			return -ETIMEDOUT;
		poll(NULL, 0, 10);
	}
	return 0;
}

/*
 * Does /proc/PID/cmdline name a blkstack-worker of rundir and name (as
 * worker_args() and the supervisor start one: "--name NAME", "--rundir
 * DIR")?  1 yes, 0 no (or gone).
 */
static int starting_worker_of(pid_t pid, const char *rundir, const char *name)
{
	char path[64], buf[8192];
	const char *arg, *end, *base, *prev = NULL;
	bool name_ok = false, dir_ok = false;
	ssize_t n;
	int fd;

	snprintf(path, sizeof(path), "/proc/%d/cmdline", (int)pid);
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return 0;
	n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	if (n <= 0)
		return 0;
	buf[n] = '\0';
	end = buf + n;
	base = strrchr(buf, '/');
	base = base ? base + 1 : buf;
	if (strcmp(base, "blkstack-worker") != 0)
		return 0;
	for (arg = buf; arg < end; arg += strlen(arg) + 1) {
		if (prev && strcmp(prev, "--name") == 0 &&
		    strcmp(arg, name) == 0)
			name_ok = true;
		if (prev && strcmp(prev, "--rundir") == 0 &&
		    strcmp(arg, rundir) == 0)
			dir_ok = true;
		prev = arg;
	}
	return name_ok && dir_ok;
}

/*
 * Before a dead worker's files go: a worker of this name that is still
 * starting (it runs, but has not taken DIR/NAME/lock yet, so it counts as
 * dead) would take the lock once they are gone and serve with no record
 * and no claim: the one a supervisor SIGKILLed right after a restart
 * leaves behind.  Such a process is SIGKILLed and waited for (it serves
 * nobody yet: it has no socket).  Returns 0 (none, or killed: *killed
 * its pid), 1 if one holds the lock now (the caller looks again: it is a
 * live worker), or -errno.
 */
static int stop_starting(const char *rundir, const char *name, const char *wdir,
			 pid_t *killed, struct bks_error *err)
{
	struct worker_proc wp = {0};
	struct bks_error ignore;
	struct dirent *de;
	DIR *d = opendir("/proc");
	int rc = 0;

	*killed = 0;
	if (!d)
		return bks_error_set(err, errno, "worker %s: opendir /proc",
				     name);
	while (rc == 0 && (de = readdir(d))) {
		char *e;
		long v = strtol(de->d_name, &e, 10);
		pid_t pid = (pid_t)v;
		int fd;

		if (*e || v <= 0 || pid == getpid() ||
		    !starting_worker_of(pid, rundir, name))
			continue;
		fd = pidfd_open(pid, 0);
		if (fd < 0 && errno != ENOSYS)
			continue; /* gone meanwhile */
		/* The pidfd pins it: check that it is still the one. */
		if (!starting_worker_of(pid, rundir, name)) {
			if (fd >= 0)
				close(fd);
			continue;
		}
		if (worker_live(wdir, &wp, &ignore) == 0 && wp.pid == pid) {
			rc = 1;
		} else {
			send_sig(fd, pid, SIGKILL);
			if (wait_gone(fd, pid, WORKER_DYING_WAIT_MS) < 0)
				rc = bks_error_setmsg(
				    err, ETIMEDOUT,
				    "worker %s: pid %d, still starting, did "
				    "not die of SIGKILL within %d s",
				    name, (int)pid,
				    WORKER_DYING_WAIT_MS / 1000);
			else
				*killed = pid;
		}
		if (fd >= 0)
			close(fd);
	}
	closedir(d);
	return rc;
}

/*
 * The worker of wdir has a live supervisor sp: SIGTERM it (it stops the
 * worker, SIGKILLing one that does not finish, and removes the files) and
 * wait up to timeout_ms; if it does not exit, SIGKILL it and the worker.
 * Returns 0, 1 if the supervisor was gone already (the caller goes on as
 * without one), or -errno.
 */
static int stop_supervised(const char *rundir, const char *name,
			   const char *wdir, const struct worker_proc *sp,
			   int timeout_ms, struct worker_stopped *out,
			   struct bks_error *err)
{
	struct worker_proc wp = {0};
	struct bks_error ignore;
	int spfd, wpfd = -1, rc;

	spfd = worker_pidfd(sp);
	if (spfd == -ESRCH)
		return 1;
	if (spfd < 0 && spfd != -ENOSYS)
		return bks_error_set(err, -spfd,
				     "worker %s: pidfd_open supervisor %d",
				     name, (int)sp->pid);
	if (worker_live(wdir, &wp, &ignore) == 0)
		wpfd = worker_pidfd(&wp);
	send_sig(spfd, sp->pid, SIGTERM);
	rc = wait_gone(spfd, sp->pid, timeout_ms);
	if (rc == -ETIMEDOUT) {
		/* remove must never hang: both go, whatever they do. */
		send_sig(spfd, sp->pid, SIGKILL);
		wait_gone(spfd, sp->pid, WORKER_DYING_WAIT_MS);
		if (worker_live(wdir, &wp, &ignore) == 0) {
			if (wpfd >= 0)
				close(wpfd);
			wpfd = worker_pidfd(&wp);
		}
		send_sig(wpfd, wp.pid, SIGKILL);
		wait_gone(wpfd, wp.pid, WORKER_DYING_WAIT_MS);
		snprintf(out->note, sizeof(out->note),
			 "worker %s: supervisor pid %d did not exit within "
			 "%d s; killed it and the worker",
			 name, (int)sp->pid, timeout_ms / 1000);
	} else if (rc < 0) {
		rc = bks_error_set(err, -rc,
				   "worker %s: wait for supervisor pid %d",
				   name, (int)sp->pid);
		goto out;
	}
	rc = stopped(rundir, name, wp.pid, out, err);
out:
	if (spfd >= 0)
		close(spfd);
	if (wpfd >= 0)
		close(wpfd);
	return rc;
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
	if (supervisor_live(wdir, &p, &lerr) == 0) {
		rc = stop_supervised(rundir, name, wdir, &p, timeout_ms, out,
				     err);
		if (rc <= 0)
			return rc;
	}
	for (int tries = 0;; tries++) {
		pid_t killed = 0;
		int src;

		bks_error_clear(&lerr);
		rc = worker_live(wdir, &p, &lerr);
		/* A pid file that holds no pid: dead too (the lock decides). */
		if ((rc != -ESRCH && rc != -EINVAL) || tries == 3)
			break;
		src = stop_starting(rundir, name, wdir, &killed, err);
		if (src < 0)
			return src;
		if (src == 1)
			continue; /* it took the lock: a live worker now */
		if (killed)
			snprintf(out->note, sizeof(out->note),
				 "worker %s: pid %d was still starting (it "
				 "held no lock yet); killed it and removed "
				 "its files",
				 name, (int)killed);
		return stop_stale(rundir, name, &p,
				  rc == -ESRCH ? p.why : lerr.msg, out, err);
	}
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
	rc = stopped(rundir, name, p.pid, out, err);
out:
	ctl_client_close(&cl);
	if (pidfd >= 0)
		close(pidfd);
	return rc;
}
