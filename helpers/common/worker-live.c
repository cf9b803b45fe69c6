/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* Is a worker alive: the holder of its lock file (worker-live.h). */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/pidfd.h>
#include <sys/stat.h>
#include <unistd.h>

#include "child.h"
#include "deadline.h"
#include "rundir.h"
#include "small-file.h"
#include "worker-live.h"

/*
 * /proc/PID/stat: its state letter into *state and field 22 (the start
 * time) into *start.  Returns 0, or -ESRCH if the process is gone.
 */
static int proc_stat(pid_t pid, char *state, unsigned long long *start)
{
	char path[64], buf[1024], *p;

	snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
	if (small_file_read(path, buf, sizeof(buf)) < 0)
		return -ESRCH;
	/* "PID (COMM) S ...": COMM may hold ')', so the last one. */
	p = strrchr(buf, ')');
	if (!p || p[1] != ' ' || !p[2])
		return -ESRCH;
	*state = p[2];
	p += 2;
	for (int field = 3; field < 22; field++) {
		p = strchr(p, ' ');
		if (!p)
			return -ESRCH;
		p++;
	}
	return sscanf(p, "%llu", start) == 1 ? 0 : -ESRCH;
}

/*
 * Does pid have (dev, ino) open?  1 yes, 0 no, -EACCES if its
 * descriptors may not be read.
 */
static int holds(pid_t pid, dev_t dev, ino_t ino)
{
	char dir[64], p[384];
	struct dirent *de;
	int found = 0;
	DIR *d;

	snprintf(dir, sizeof(dir), "/proc/%d/fd", (int)pid);
	d = opendir(dir);
	if (!d)
		return errno == EACCES || errno == EPERM ? -EACCES : 0;
	while (!found && (de = readdir(d))) {
		struct stat st;

		if (de->d_name[0] == '.')
			continue;
		snprintf(p, sizeof(p), "%s/%s", dir, de->d_name);
		found =
		    stat(p, &st) == 0 && st.st_dev == dev && st.st_ino == ino;
	}
	closedir(d);
	return found;
}

/* Threads of pid still listed in /proc/PID/task, the zombie leader too. */
static int task_count(pid_t pid)
{
	char path[64];
	struct dirent *de;
	int n = 0;
	DIR *d;

	snprintf(path, sizeof(path), "/proc/%d/task", (int)pid);
	d = opendir(path);
	if (!d)
		return 0;
	while ((de = readdir(d)))
		n += de->d_name[0] != '.';
	closedir(d);
	return n;
}

/*
 * Wait (WORKER_DYING_WAIT_MS at most) for the thread group of pid, whose
 * leader is a zombie, to be empty: on a pidfd, which turns readable then;
 * without pidfds (valgrind), by looking at /proc/PID/task every 10 ms.
 */
static void wait_group_gone(pid_t pid)
{
	uint64_t deadline = deadline_in(WORKER_DYING_WAIT_MS);
	int fd = pidfd_open(pid, 0);

	if (fd >= 0) {
		pidfd_wait(fd, WORKER_DYING_WAIT_MS);
		close(fd);
		return;
	}
	while (task_count(pid) > 1 && ms_left(deadline) > 0)
		poll(NULL, 0, 10);
}

/* Dead: p->why gets the reason, err "no worker in WDIR (REASON)". */
static int __attribute__((format(printf, 4, 5)))
dead(struct worker_proc *p, const char *wdir, struct bks_error *err,
     const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(p->why, sizeof(p->why), fmt, ap);
	va_end(ap);
	return bks_error_setmsg(err, ESRCH, "no worker in %s (%s)", wdir,
				p->why);
}

/* The liveness rule for the pid file and lock file of wdir. */
static int proc_live(const char *wdir, const char *pid_file,
		     const char *lock_file, struct worker_proc *p,
		     struct bks_error *err)
{
	char path[PATH_MAX + 16], buf[32], *end, state = '?';
	unsigned long long start = 0;
	struct stat lk;
	long v;
	int n;

	p->pid = 0;
	p->start = 0;
	p->file_pid = 0;
	p->why[0] = '\0';
	if (snprintf(path, sizeof(path), "%s/%s", wdir, pid_file) >=
	    (int)sizeof(path))
		return bks_error_setmsg(err, ENAMETOOLONG, "%s/%s: too long",
					wdir, pid_file);
	n = small_file_read(path, buf, sizeof(buf));
	if (n == -ENOENT)
		return dead(p, wdir, err, "no pid file");
	if (n < 0)
		return bks_error_set(err, -n, "read %s", path);
	buf[strcspn(buf, "\n")] = '\0';
	errno = 0;
	v = strtol(buf, &end, 10);
	if (errno || end == buf || *end || v <= 0 || v > INT_MAX)
		return bks_error_setmsg(err, EINVAL, "%s: not a pid", path);
	p->file_pid = (pid_t)v;
	snprintf(path, sizeof(path), "%s/%s", wdir, lock_file);
	if (stat(path, &lk) < 0)
		return dead(p, wdir, err, "no lock");
	if (proc_stat((pid_t)v, &state, &start) < 0)
		return dead(p, wdir, err, "pid %ld is gone", v);
	if (state == 'Z' || state == 'X') {
		/*
		 * Dead, but its other threads may still be exiting, and they
		 * hold the lock until the last one is gone: a worker started
		 * now would find it taken.  The pidfd of a zombie leader
		 * turns readable once its thread group is empty.
		 */
		wait_group_gone((pid_t)v);
		return dead(p, wdir, err, "pid %ld is gone", v);
	}
	/* The pid may have been recycled: the worker is who holds its lock. */
	n = holds((pid_t)v, lk.st_dev, lk.st_ino);
	if (n == 0)
		return dead(p, wdir, err, "pid %ld does not hold its lock", v);
	/* n < 0: another user's process, alive; it may well be the worker. */
	p->pid = (pid_t)v;
	p->start = start;
	return 0;
}

int worker_live(const char *wdir, struct worker_proc *p, struct bks_error *err)
{
	return proc_live(wdir, WORKER_FILE_PID, WORKER_FILE_LOCK, p, err);
}

int supervisor_live(const char *wdir, struct worker_proc *p,
		    struct bks_error *err)
{
	return proc_live(wdir, SUPERVISOR_FILE_PID, SUPERVISOR_FILE_LOCK, p,
			 err);
}

int worker_pidfd(const struct worker_proc *p)
{
	unsigned long long start = 0;
	char state = '?';
	int fd = pidfd_open(p->pid, 0);

	if (fd < 0)
		return -errno;
	if (proc_stat(p->pid, &state, &start) < 0 || start != p->start ||
	    state == 'Z' || state == 'X') {
		close(fd);
		return -ESRCH;
	}
	return fd;
}

int worker_identity(const char *wdir, char *tok, size_t size,
		    struct bks_error *err)
{
	struct worker_proc w, s;
	struct bks_error ignore;
	int rc = worker_live(wdir, &w, err);

	if (rc < 0)
		return rc;
	if (supervisor_live(wdir, &s, &ignore) == 0)
		w = s;
	snprintf(tok, size, "%d:%llu", (int)w.pid, w.start);
	return 0;
}
