/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * blkstack-supervisor --name NAME --chain CHAIN [--rundir DIR] [--read-only]
 *                     [--fuse] [--ready-fd FD] [--worker EXE]
 *                     [--xs-error-path XSPATH]
 *                     [-- WORKER-ARGS...]
 *
 * The supervisor of one worker (docs/control-protocol.txt, "Supervision"),
 * what worker_start() (helpers/common/worker-run.h) spawns unless the
 * configuration says `supervise = no`.  It takes DIR/NAME/supervisor.lock
 * (one supervisor per name), writes DIR/NAME/supervisor.pid, reads
 * restart-limit, restart-window, hang-timeout and hang-action from
 * /etc/blkstack.conf ($BLKSTACK_CONF) once, and spawns EXE (default:
 * blkstack-worker beside this program) with the same --name, --chain,
 * --rundir and --read-only, a readiness pipe, --supervisor-fd (the
 * channel of helpers/worker/worker-super.h) and WORKER-ARGS.
 *
 * Readiness: the worker's first readiness report is forwarded to FD as it
 * came ("ok", or "error: ..." and "errno: ..."), "ok" only once
 * supervisor.state is written (a state that cannot be written fails the
 * start): a starter that returned on "ok" finds the supervisor in `list`.
 * If the first start fails, the supervisor removes its files and exits
 * with the worker's status (1 if it was killed), leaving nothing behind.
 *
 * Then: when the worker dies without having said "stopping", the death is
 * recorded (supervisor.state, syslog) and the worker restarted after a
 * back-off (0, then 100 ms doubling to 5 s; reset after a run of
 * restart-window seconds).  The restart-limit-th crash within
 * restart-window seconds gives up: supervisor.state says gave-up and why,
 * so does syslog (LOG_ERR) and, with --xs-error-path, that xenstore node
 * (the hotplug helper passes the backend's hotplug-error); the supervisor
 * exits 1, leaving supervisor.state for `blkstack-ctl list` until the
 * disk is removed.  A worker that sends nothing for hang-timeout seconds,
 * or whose oldest request is older, is reported hung (and with
 * hang-action = restart, SIGKILLed and restarted: a crash).
 *
 * SIGTERM (or SIGINT): stop restarting, SIGTERM the worker (a hung or
 * stopped one is SIGKILLed at once, one that takes over 20 s or goes
 * silent for 3 s while stopping too), reap it, remove the worker's and
 * the supervisor's files, exit 0.  A worker that stops by itself (ctl
 * `shutdown`) is not restarted: the supervisor exits with it.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <syslog.h>
#include <unistd.h>

#include "child.h"
#include "ready-fd.h"
#include "rundir-files.h"
#include "rundir.h"
#include "sibling.h"
#include "sup.h"
#include "version.h"
#include "worker-name.h"
#include "worker-run.h"

#define PROG "blkstack-supervisor"

/* What main holds; closed in one place. */
struct res {
	int lock_fd, ready_fd;
	struct stop_signals sig;
	bool pid_file;
	char exe[PATH_MAX];
};

void sup_log(struct sup *s, int prio, const char *fmt, ...)
{
	char msg[1024], line[1200];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	bks_sanitize_line(msg);
	snprintf(line, sizeof(line), "worker %s: %s", s->name, msg);
	if (s->syslog)
		bks_syslog_send(s->syslog, prio, line);
	else
		fprintf(stderr, PROG ": %s\n", line);
}

void sup_save(struct sup *s)
{
	struct bks_error err = {0};

	if (sup_state_write(s->wdir, &s->st, &err) < 0)
		sup_log(s, LOG_ERR, "%s", err.msg);
}

/* ---- start-up ------------------------------------------------------------ */

/* DIR/NAME/supervisor.lock, as the worker takes its lock. */
static int take_lock(struct sup *s, struct res *r, struct bks_error *err)
{
	char pid[32];
	int rc;

	rc = rundir_ensure_dir(s->rundir, 0755, err);
	if (rc == 0)
		rc = rundir_take_lock(s->wdir, SUPERVISOR_FILE_LOCK,
				      SUPERVISOR_FILE_PID, &r->lock_fd, pid,
				      sizeof(pid), err);
	if (rc != -EWOULDBLOCK)
		return rc;
	return bks_error_setmsg(err, EBUSY,
				"already running (supervisor pid %s)", pid);
}

static int write_pid(struct sup *s, struct res *r, struct bks_error *err)
{
	int rc = rundir_write_pid(s->wdir, SUPERVISOR_FILE_PID, err);

	if (rc == 0)
		r->pid_file = true;
	return rc;
}

static void on_signal(void *opaque, unsigned int signo)
{
	struct sup *s = opaque;

	sup_log(s, LOG_INFO, "signal %u: stopping", signo);
	sup_stop(s);
}

static int setup_signals(struct sup *s, struct res *r, struct bks_error *err)
{
	static const int sigs[] = {SIGTERM, SIGINT, 0};

	signal(SIGHUP, SIG_IGN);
	return stop_signals_start(&r->sig, s->loop, sigs, on_signal, s, err);
}

/* Write a readiness report to the starter (if any) and close it. */
static void report(struct res *r, const char *text, size_t len)
{
	ready_forward(r->ready_fd, text, len);
	r->ready_fd = -1;
}

static void report_error(struct res *r, const struct bks_error *err)
{
	ready_report(r->ready_fd, err);
	r->ready_fd = -1;
}

/*
 * The first start: spawn, wait for the report, write supervisor.state,
 * forward the report.  Returns 0 when the worker serves; else the exit
 * code, the worker reaped and the report (or one of ours) forwarded.
 */
static int first_start(struct sup *s, struct res *r)
{
	char line[2 * BKS_ERROR_MSG_MAX + 64], how[128];
	struct bks_error err = {0};
	int n, status = 0;

	if (sup_spawn(s, &err) < 0) {
		report_error(r, &err);
		return 1;
	}
	n = worker_read_ready(s->ready_fd, WORKER_READY_TIMEOUT_MS, line,
			      sizeof(line));
	if (n > 0 && strncmp(line, "ok\n", 3) == 0) {
		/*
		 * supervisor.state before "ok": the starter returns on it, and
		 * `list` right after must find the supervisor.  A state that
		 * cannot be written fails the start.
		 */
		if (sup_watch(s, true, &err) < 0 ||
		    sup_state_write(s->wdir, &s->st, &err) < 0) {
			report_error(r, &err);
			kill(s->pid, SIGKILL);
			child_wait(s->pid, NULL);
			sup_forget_worker(s);
			return 1;
		}
		report(r, "ok\n", 3);
		return 0;
	}
	if (n <= 0 || strncmp(line, "error: ", 7) != 0)
		kill(s->pid, SIGKILL);
	child_reap(s->pid, WORKER_EXIT_TIMEOUT_MS, &status);
	if (n > 0 && strncmp(line, "error: ", 7) == 0) {
		report(r, line, (size_t)n);
	} else {
		child_describe(status, how, sizeof(how));
		if (n == -ETIMEDOUT)
			bks_error_setmsg(&err, ETIMEDOUT,
					 "not ready within %d s; killed it",
					 WORKER_READY_TIMEOUT_MS / 1000);
		else if (n == 0)
			bks_error_setmsg(&err, EIO, "%s before it was ready",
					 how);
		else
			bks_error_setmsg(&err, EPROTO,
					 "unexpected readiness report; killed "
					 "it");
		report_error(r, &err);
	}
	sup_forget_worker(s);
	return WIFEXITED(status) && WEXITSTATUS(status) ? WEXITSTATUS(status)
							: 1;
}

/* ---- options ------------------------------------------------------------- */

static void usage(FILE *f)
{
	fprintf(f, "usage: " PROG
		   " --name NAME --chain CHAIN [--rundir DIR] [--read-only]\n"
		   "  [--fuse] [--ready-fd FD] [--worker EXE] "
		   "[--xs-error-path XSPATH]\n"
		   "  [-- WORKER-ARGS...]\n"
		   "       " PROG " --version | --help\n"
		   "  DIR defaults to $BLKSTACK_RUNDIR, else " DEFAULT_RUNDIR
		   "\n");
}

/* Returns 0, or 2 for a usage error (message printed). */
static int parse_opts(int argc, char **argv, struct sup *s, struct res *r)
{
	static const struct option longopts[] = {
	    WORKER_ARGS_OPTIONS,
	    {"worker", required_argument, NULL, 'w'},
	    {"xs-error-path", required_argument, NULL, 'x'},
	    {"help", no_argument, NULL, 'h'},
	    {"version", no_argument, NULL, 'V'},
	    {NULL, 0, NULL, 0},
	};
	struct worker_spec ws = {0};
	int c, taken;

	while ((c = getopt_long(argc, argv, "+", longopts, NULL)) != -1) {
		taken = worker_args_take(c, optarg, &ws, &r->ready_fd, PROG);
		if (taken < 0)
			return 2;
		if (taken)
			continue;
		switch (c) {
		case 'w':
			s->worker_exe = optarg;
			break;
		case 'x':
			/* Relative: v1's XENBUS_PATH (sup-xs.h). */
			if (!strchr(optarg, '/') || strlen(optarg) > 1024) {
				fprintf(stderr, PROG
					": bad --xs-error-path: a xenstore "
					"path NODE/hotplug-error\n");
				return 2;
			}
			s->xs_error_path = optarg;
			break;
		case 'h':
			usage(stdout);
			exit(0);
		case 'V':
			exit(bks_version_print(stdout, PROG) < 0 ? 1 : 0);
		default:
			usage(stderr);
			return 2;
		}
	}
	s->extra = argv + optind;
	s->nextra = argc - optind;
	if (!ws.name || !ws.chain) {
		usage(stderr);
		return 2;
	}
	if (worker_args_finish(&ws, PROG) < 0)
		return 2;
	s->name = ws.name;
	s->chain = ws.chain;
	s->rundir = ws.rundir;
	s->read_only = ws.read_only;
	s->fuse = ws.fuse;
	return 0;
}

/* Everything before the first start.  Returns 0 or -errno with err set. */
static int start(struct sup *s, struct res *r, struct bks_error *err)
{
	int rc;

	if (!s->worker_exe) {
		rc = sibling_path(r->exe, sizeof(r->exe), "blkstack-worker",
				  NULL, err);
		if (rc < 0)
			return rc;
		s->worker_exe = r->exe;
	}
	rc = sup_policy_read(&s->pol, err);
	if (rc < 0)
		return rc;
	if (snprintf(s->wdir, sizeof(s->wdir), "%s/%s", s->rundir, s->name) >=
		(int)sizeof(s->wdir) ||
	    snprintf(s->nbd_sock, sizeof(s->nbd_sock), "%s/" WORKER_FILE_NBD,
		     s->wdir) >= (int)sizeof(s->nbd_sock))
		return bks_error_setmsg(err, ENAMETOOLONG, "%s/%s: too long",
					s->rundir, s->name);
	umask(077);
	rc = take_lock(s, r, err);
	if (rc < 0)
		return rc;
	rc = write_pid(s, r, err);
	if (rc < 0)
		return rc;
	rc = bks_loop_new(&s->loop, err);
	if (rc < 0)
		return rc;
	sup_timers_init(s);
	return setup_signals(s, r, err);
}

/* Close everything; remove our files unless gave_up (state stays). */
static void cleanup(struct sup *s, struct res *r, bool remove_all)
{
	char path[PATH_MAX + 32];
	struct bks_error err = {0};

	sup_forget_worker(s);
	stop_signals_stop(&r->sig);
	if (s->loop)
		bks_loop_free(s->loop);
	if (r->lock_fd >= 0 && remove_all) {
		if (worker_remove_files_supervised(s->rundir, s->name, &err) <
		    0)
			sup_log(s, LOG_ERR, "remove files: %s", err.msg);
	} else if (r->pid_file) {
		/* Gave up: the state stays for list and stale clean-up. */
		snprintf(path, sizeof(path), "%s/" SUPERVISOR_FILE_PID,
			 s->wdir);
		unlink(path);
	}
	if (r->lock_fd >= 0)
		close(r->lock_fd);
	if (s->fuse_fd >= 0)
		close(s->fuse_fd);
}

int main(int argc, char **argv)
{
	struct sup s = {
	    .pidfd = -1, .chan_fd = -1, .ready_fd = -1, .fuse_fd = -1};
	struct res r = {
	    .lock_fd = -1, .sig = STOP_SIGNALS_INIT, .ready_fd = -1};
	struct bks_error err = {0};
	int rc;

	rc = parse_opts(argc, argv, &s, &r);
	if (rc)
		return rc;
	if (r.ready_fd >= 0 && fcntl(r.ready_fd, F_SETFD, FD_CLOEXEC) < 0) {
		fprintf(stderr, PROG ": --ready-fd %d: %m\n", r.ready_fd);
		return 2;
	}
	/* Long-lived: keep none of the starter's descriptors but FD. */
	close_inherited(&r.ready_fd, 1);
	if (bks_syslog_open(&s.syslog, PROG, LOG_DAEMON, NULL, &err) < 0)
		bks_error_clear(&err);
	s.st.pid = getpid();
	s.st.state = "running";
	s.phase = SUP_RUNNING;
	rc = start(&s, &r, &err);
	if (rc < 0) {
		sup_log(&s, LOG_ERR, "%s", err.msg);
		report_error(&r, &err);
		/* Only what we made: another supervisor's files stay. */
		cleanup(&s, &r, r.lock_fd >= 0);
		bks_syslog_close(s.syslog);
		return 1;
	}
	rc = first_start(&s, &r);
	if (rc) {
		cleanup(&s, &r, true);
		bks_syslog_close(s.syslog);
		return rc;
	}
	sup_log(&s, LOG_INFO,
		"supervising pid %d (restart-limit %u in %u s, "
		"hang-timeout %u s, hang-action %s)",
		(int)s.pid, s.pol.restart_limit, s.pol.restart_window,
		s.pol.hang_timeout, s.pol.hang_restart ? "restart" : "report");
	rc = bks_loop_run(s.loop);
	if (rc < 0) {
		sup_log(&s, LOG_ERR, "event loop: %s", strerror(-rc));
		s.exit_code = 1;
		/* Leaving: the worker goes too. */
		if (s.pid > 0) {
			kill(s.pid, SIGKILL);
			child_wait(s.pid, NULL);
		}
	}
	cleanup(&s, &r, s.phase != SUP_GAVE_UP);
	bks_syslog_close(s.syslog);
	return s.exit_code;
}
