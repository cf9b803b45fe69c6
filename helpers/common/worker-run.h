/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Starting and stopping workers (docs/control-protocol.txt, "Readiness"
 * and blkstack-ctl's create and destroy), for blkstack-ctl and the
 * hotplug helper alike.  Every message names the worker: "worker NAME:
 * REASON", the words blkstack-ctl prints after its own name and the
 * hotplug helper writes to hotplug-error.
 */
#ifndef BLKSTACK_WORKER_RUN_H
#define BLKSTACK_WORKER_RUN_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

#include "blkstack/error.h"

/* How long a new worker may take to open its chain and report ready. */
#define WORKER_READY_TIMEOUT_MS 30000
/* How long a worker may take to exit after `shutdown` or a failed start. */
#define WORKER_EXIT_TIMEOUT_MS 30000

/* The supervisor waits WORKER_READY_TIMEOUT_MS; its starter this longer. */
#define WORKER_READY_SLACK_MS 5000
/* The supervisor's program, found beside blkstack-worker. */
#define SUPERVISOR_EXE "blkstack-supervisor"

/* What to start. */
struct worker_spec {
	const char *exe;    /* blkstack-worker (sibling_path) */
	const char *rundir; /* absolute */
	const char *name;   /* worker_name_valid() */
	const char *chain;
	bool read_only;
	/*
	 * --fuse: also serve the disk as the file DIR/NAME/fuse/disk
	 * (WORKER_FILE_FUSE), a FUSE file system the worker mounts there;
	 * the hotplug helper's "fuse" device mechanism puts a loop device on
	 * it.  Passed on by the supervisor to every restart.
	 */
	bool fuse;
	/*
	 * Optional: the xenstore node the supervisor writes when it gives up
	 * on the worker (the hotplug helper's BACKEND/hotplug-error).
	 */
	const char *xs_error_path;
};

/*
 * `supervise` of the configuration file (conf.h): *yes is true unless it
 * says "no".  Returns 0, or -errno (-EINVAL: a value neither yes nor no)
 * with err set.  Called by worker_start(); public for the tests' sake.
 */
int worker_conf_supervise(bool *yes, struct bks_error *err);

/*
 * The arguments every start of blkstack-worker or blkstack-supervisor
 * begins with: argv[0] = exe, then --name, --chain, --rundir of s,
 * --ready-fd ready_fd, --read-only and --fuse if s says so.  argv has
 * room for at least 11.  Returns how many it wrote (the caller appends
 * its own and the NULL).  For worker_start() and blkstack-supervisor.
 */
int worker_args(const char **argv, const char *exe, const struct worker_spec *s,
		const char *ready_fd);

/*
 * The options worker_args() writes, for a receiver's getopt_long table
 * (blkstack-worker, blkstack-supervisor): their values are 'n', 'c', 'r',
 * 'R', 'u' and 'F', which the receiver leaves to worker_args_take().
 */
#define WORKER_ARGS_OPTIONS                                                    \
	{"name", required_argument, NULL, 'n'},                                \
	    {"chain", required_argument, NULL, 'c'},                           \
	    {"rundir", required_argument, NULL, 'r'},                          \
	    {"read-only", no_argument, NULL, 'R'},                             \
	    {"fuse", no_argument, NULL, 'u'},                                  \
	{                                                                      \
		"ready-fd", required_argument, NULL, 'F'                       \
	}

/*
 * Take getopt_long()'s c and its arg into s (name, chain, rundir,
 * read_only, fuse) or *ready_fd if c is one of WORKER_ARGS_OPTIONS.  Returns 1
 * if it was, 0 if not (the caller's own option), or -EINVAL for a bad
 * --ready-fd (said on stderr after prog).
 */
int worker_args_take(int c, const char *arg, struct worker_spec *s,
		     int *ready_fd, const char *prog);

/*
 * After the options, with s->name and s->chain given: check the name
 * (worker_name_valid(), said on stderr after prog) and default rundir to
 * $BLKSTACK_RUNDIR, else DEFAULT_RUNDIR.  Returns 0 or -EINVAL.
 */
int worker_args_finish(struct worker_spec *s, const char *prog);

/*
 * fd moved to 3 or above (close-on-exec; the old fd closed), so stdio
 * never clobbers it.  Returns the fd, or -errno (fd closed).  For the
 * pipes and sockets worker_spawn()'s callers pass on.
 */
int worker_fd_above_stdio(int fd);

/*
 * posix_spawn exe with argv (argv[0] first, NULL-terminated) in a session
 * of its own, stdio on /dev/null, the signal mask empty, and of our
 * descriptors only keep[0..nkeep) left open (close-on-exec cleared).
 * For worker_start() and blkstack-supervisor.  Returns 0 with *pid (our
 * child: the caller reaps it), or -errno with err set.
 */
int worker_spawn(const char *exe, const char *const *argv, const int *keep,
		 size_t nkeep, pid_t *pid, struct bks_error *err);

/*
 * Read a readiness report from fd into buf (docs/control-protocol.txt,
 * "Readiness"): "ok\n" (returned at once: the sender keeps fd open), or
 * "error: MSG\n" and maybe "errno: NAME\n", up to EOF, waiting at most
 * timeout_ms.  Returns the length (0: EOF without anything), -ETIMEDOUT
 * or -errno.  For worker_start() and blkstack-supervisor.
 */
int worker_read_ready(int fd, int timeout_ms, char *buf, size_t size);

/*
 * Start a worker and wait until it serves: spawned directly (posix_spawn,
 * no shell, no PATH) in a session of its own with stdio on /dev/null,
 * reporting on a readiness pipe.  Unless the configuration says
 * `supervise = no`, what is spawned is blkstack-supervisor (beside
 * s->exe), which starts the worker, forwards its readiness report and
 * restarts it when it dies (docs/control-protocol.txt, "Supervision");
 * the contract is the same either way.  Returns 0 with *pid (no longer ours to
 * wait for: the caller must not reap it), or -errno: -EBUSY if a worker
 * of that name is alive already, else the worker's own errno and message
 * when it reported one, else this side's ("not ready within 30 s; killed
 * it", "exited with status 1 before it was ready").  A worker that failed
 * is reaped and its leftovers removed: nothing is left behind.
 */
int worker_start(const struct worker_spec *s, pid_t *pid,
		 struct bks_error *err);

/* What worker_stop() found. */
enum worker_stop_how {
	WORKER_STOPPED,	  /* it was running: shut down, exited, removed */
	WORKER_WAS_STALE, /* it was dead: its files removed */
	WORKER_ABSENT,	  /* there was nothing */
};

struct worker_stopped {
	enum worker_stop_how how;
	pid_t pid;		      /* the worker's (the stale pid), or 0 */
	char note[BKS_ERROR_MSG_MAX]; /* not STOPPED: what to tell the user */
};

/*
 * Stop worker name and remove DIR/NAME (`blkstack-ctl destroy`): if it
 * is alive (worker-live.h), `shutdown` and wait up to timeout_ms for the
 * process to exit (on a pidfd; without pidfds, for the control connection
 * to close); if it is dead, remove what it left.  Idempotent: nothing to
 * stop is success.  Returns 0 with *out filled, or -errno: a live worker
 * that does not answer is left alone.
 */
int worker_stop(const char *rundir, const char *name, int timeout_ms,
		struct worker_stopped *out, struct bks_error *err);

/*
 * Remove what a dead worker (and its dead supervisor) left in DIR/NAME,
 * and the directory, holding their locks so that files a live one holds
 * are never removed.  Returns 0 (also when there is nothing, or when a
 * new worker's files stand there now), -EBUSY if a worker or supervisor
 * holds its lock, or -errno; err set (without the worker's name).
 */
int worker_remove_files(const char *rundir, const char *name,
			struct bks_error *err);

/* The same, called by the supervisor, which holds supervisor.lock. */
int worker_remove_files_supervised(const char *rundir, const char *name,
				   struct bks_error *err);

#endif /* BLKSTACK_WORKER_RUN_H */
