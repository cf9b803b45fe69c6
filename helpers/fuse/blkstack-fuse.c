/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * blkstack-fuse --socket DIR/NAME/nbd.sock --mount MOUNTDIR [--read-only]
 *               [--ready-fd FD] [--reconnect-timeout SECONDS] [--foreground]
 *
 * The loop fallback's FUSE server: serves the worker's NBD export as the
 * one regular file MOUNTDIR/nbd (fuse-serve.h), over an NBD connection
 * that survives the worker's restart (fuse-nbd.h): when the worker
 * dies, requests are held and re-sent to the restarted worker on the same
 * socket, so the loop device above sees latency, not errors.  A request
 * held longer than the reconnect timeout fails with EIO; nothing waits
 * without end.
 *
 *   --socket PATH           the worker's NBD socket (required)
 *   --mount DIR             an existing empty directory (required)
 *   --read-only             serve the file read-only (also if the export is)
 *   --ready-fd FD           write "ok\n" once mounted and serving, or
 *                           "error: <why>\n" and "errno: <NAME>\n", then
 *                           close FD (docs/control-protocol.txt, Readiness)
 *   --reconnect-timeout S   how long a request waits for the worker to come
 *                           back (default: reconnect-timeout in
 *                           /etc/blkstack.conf, else 60; 0: fail at once)
 *   --foreground            log to stderr instead of syslog
 *
 * SIGUSR1: a detach is coming (the hotplug helper's remove flushes the
 * loop device first): from now on no request waits more than 5 s for the
 * worker, connected or not (bf_nbd_hurry in fuse-nbd.h), so that the
 * flush cannot hang on a dead or hung worker; the next open of the file
 * ends it.
 *
 * It never forks (its starter keeps its pid).  Exit: the file system was
 * unmounted (umount, fusermount3 -u: the process exits once the last user
 * of the file let go), or SIGTERM/SIGINT: lazy unmount, then up to
 * STOP_MS for the last user to let go, then held requests fail and the
 * connection closes.  Exit status 0, or 1 if start-up failed.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <syslog.h>
#include <unistd.h>

#include "blkstack/error.h"
#include "blkstack/loop.h"
#include "blkstack/nbd-proto.h"
#include "blkstack/syslog-client.h"
#include "conf.h"
#include "fuse-log.h"
#include "fuse-nbd.h"
#include "fuse-serve.h"
#include "ready-fd.h"
#include "version.h"

#define PROG "blkstack-fuse"
/* The first connection's deadline. */
#define CONNECT_MS 10000
/* After SIGTERM: how long the last user of the file gets. */
#define STOP_MS 5000
/* SIGUSR1 (a detach is coming): how long a request may still wait. */
#define HURRY_MS 5000
/* Default and largest reconnect timeout, in seconds. */
#define RECONNECT_DEFAULT 60u
#define RECONNECT_MAX	  86400u

struct opts {
	const char *socket;
	const char *mount;
	bool ro, foreground;
	int ready_fd;
	long timeout; /* -1: from the configuration */
};

struct fuse_main {
	struct bks_loop *loop;
	struct bf_nbd *nbd;
	struct bf_fuse *fuse;
	struct bf_log log;
	struct stop_signals sig;
	struct bks_timer stop_t;
	bool stopping, quit;
};

static void usage(FILE *f)
{
	fprintf(f,
		"usage: " PROG " --socket NBD_SOCK --mount DIR [--read-only] "
		"[--ready-fd FD]\n"
		"  [--reconnect-timeout SECONDS] [--foreground]\n"
		"       " PROG " --version | --help\n");
}

/* A decimal count 0..max.  Returns 0 or -EINVAL. */
static int parse_count(const char *s, size_t len, unsigned long max,
		       unsigned long *out)
{
	unsigned long v = 0;

	if (!len || len > 10)
		return -EINVAL;
	for (size_t i = 0; i < len; i++) {
		if (s[i] < '0' || s[i] > '9')
			return -EINVAL;
		v = v * 10 + (unsigned long)(s[i] - '0');
	}
	if (v > max)
		return -EINVAL;
	*out = v;
	return 0;
}

static int parse_opts(int argc, char **argv, struct opts *o)
{
	static const struct option lo[] = {
	    {"socket", required_argument, NULL, 's'},
	    {"mount", required_argument, NULL, 'm'},
	    {"read-only", no_argument, NULL, 'r'},
	    {"ready-fd", required_argument, NULL, 'F'},
	    {"reconnect-timeout", required_argument, NULL, 't'},
	    {"foreground", no_argument, NULL, 'f'},
	    {"help", no_argument, NULL, 'h'},
	    {"version", no_argument, NULL, 'V'},
	    {NULL, 0, NULL, 0}};
	unsigned long v;
	int c;

	while ((c = getopt_long(argc, argv, "", lo, NULL)) != -1) {
		switch (c) {
		case 's':
			o->socket = optarg;
			break;
		case 'm':
			o->mount = optarg;
			break;
		case 'r':
			o->ro = true;
			break;
		case 'f':
			o->foreground = true;
			break;
		case 'F':
			if (ready_fd_parse(optarg, 0, &o->ready_fd) < 0) {
				fprintf(stderr, PROG ": bad --ready-fd '%s'\n",
					optarg);
				return -EINVAL;
			}
			break;
		case 't':
			if (parse_count(optarg, strlen(optarg), RECONNECT_MAX,
					&v) < 0) {
				fprintf(stderr,
					PROG ": bad --reconnect-timeout '%s' "
					     "(0 to %u seconds)\n",
					optarg, RECONNECT_MAX);
				return -EINVAL;
			}
			o->timeout = (long)v;
			break;
		case 'h':
			usage(stdout);
			exit(0);
		case 'V':
			exit(bks_version_print(stdout, PROG) < 0 ? 1 : 0);
		default:
			usage(stderr);
			return -EINVAL;
		}
	}
	if (optind != argc || !o->socket || !o->mount || o->socket[0] != '/' ||
	    o->mount[0] != '/') {
		usage(stderr);
		fprintf(stderr, PROG ": --socket and --mount take absolute "
				     "paths\n");
		return -EINVAL;
	}
	return 0;
}

/* reconnect-timeout from the configuration file (default if absent). */
static int conf_timeout(unsigned int *out, struct bks_error *err)
{
	const char *name, *v;
	char *text = NULL;
	unsigned int line;
	unsigned long n;
	size_t len;
	bool found;
	int ret;

	*out = RECONNECT_DEFAULT;
	ret = conf_read(&text, &name, err);
	if (ret < 0)
		return ret;
	ret = conf_find(text, name, "reconnect-timeout", &v, &len, &line,
			&found, err);
	if (ret == 0 && found) {
		if (parse_count(v, len, RECONNECT_MAX, &n) < 0)
			ret = bks_error_setmsg(
			    err, EINVAL,
			    "%s:%u: reconnect-timeout: not a number of "
			    "seconds from 0 to %u",
			    name, line, RECONNECT_MAX);
		else
			*out = (unsigned int)n;
	}
	free(text);
	return ret;
}

static void on_stop_timer(struct bks_timer *t)
{
	struct fuse_main *m = t->opaque;

	bf_log(&m->log, LOG_WARNING,
	       "the file is still in use %d ms after SIGTERM: stopping anyway",
	       STOP_MS);
	m->quit = true;
}

static void on_signal(void *opaque, unsigned int signo)
{
	struct fuse_main *m = opaque;
	struct bks_error err = {0};

	if (signo == SIGUSR1) {
		bf_nbd_hurry(m->nbd, HURRY_MS);
		return;
	}
	if (m->stopping)
		return;
	m->stopping = true;
	bf_log(&m->log, LOG_INFO, "signal %u: unmounting", signo);
	if (bf_fuse_detach(m->fuse, &err) < 0) {
		bf_log(&m->log, LOG_ERR, "%s", err.msg);
		m->quit = true;
		return;
	}
	bks_timer_arm(&m->stop_t, (uint64_t)STOP_MS * 1000000u);
}

static int setup_signals(struct fuse_main *m, struct bks_error *err)
{
	static const int sigs[] = {SIGTERM, SIGINT, SIGHUP, SIGUSR1, 0};

	return stop_signals_start(&m->sig, m->loop, sigs, on_signal, m, err);
}

static int start(struct fuse_main *m, const struct opts *o,
		 struct bks_error *err)
{
	struct bf_nbd_export ex;
	unsigned int timeout;
	struct stat st;
	int ret;

	if (o->timeout >= 0) {
		timeout = (unsigned int)o->timeout;
	} else {
		ret = conf_timeout(&timeout, err);
		if (ret < 0)
			return ret;
	}
	if (stat(o->mount, &st) < 0)
		return bks_error_set(err, errno, "mountpoint %s", o->mount);
	if (!S_ISDIR(st.st_mode))
		return bks_error_setmsg(
		    err, ENOTDIR, "mountpoint %s: not a directory", o->mount);
	ret = bks_loop_new(&m->loop, err);
	if (ret < 0)
		return ret;
	bks_timer_init(m->loop, &m->stop_t, on_stop_timer, m);
	ret = setup_signals(m, err);
	if (ret < 0)
		return ret;
	ret = bf_nbd_new(&m->nbd, m->loop, o->socket, timeout, &m->log, err);
	if (ret < 0)
		return ret;
	ret = bf_nbd_connect(m->nbd, CONNECT_MS, &ex, err);
	if (ret < 0)
		return ret;
	ret = bf_fuse_mount(&m->fuse, m->loop, m->nbd, &ex, o->mount, o->ro,
			    &m->log, err);
	if (ret < 0)
		return ret;
	bf_log(&m->log, LOG_INFO,
	       "serving %s (%llu bytes%s) as %s/nbd; reconnect timeout %u s",
	       o->socket, (unsigned long long)ex.size,
	       o->ro || (ex.flags & NBD_FLAG_READ_ONLY) ? ", read-only" : "",
	       o->mount, timeout);
	return 0;
}

int main(int argc, char **argv)
{
	struct opts o = {.ready_fd = -1, .timeout = -1};
	struct fuse_main m = {.sig = STOP_SIGNALS_INIT};
	struct bks_error err = {0};
	int status = 1;

	if (parse_opts(argc, argv, &o) < 0)
		return 2;
	if (o.ready_fd >= 0 && fcntl(o.ready_fd, F_SETFD, FD_CLOEXEC) < 0) {
		fprintf(stderr, PROG ": --ready-fd %d: %m\n", o.ready_fd);
		return 2;
	}
	close_inherited(&o.ready_fd, 1);
	m.log.tag = o.mount;
	if (!o.foreground &&
	    bks_syslog_open(&m.log.syslog, PROG, LOG_DAEMON, NULL, &err) < 0) {
		fprintf(stderr, PROG ": %s\n", err.msg);
		bks_error_clear(&err);
	}
	if (start(&m, &o, &err) < 0) {
		bf_log(&m.log, LOG_ERR, "%s", err.msg);
		/* For the starter's log too (bf_log used stderr if no syslog).
		 */
		if (m.log.syslog)
			fprintf(stderr, PROG ": %s\n", err.msg);
		ready_report(o.ready_fd, &err);
		goto out;
	}
	ready_report(o.ready_fd, NULL);
	while (!bf_fuse_ended(m.fuse) && !m.quit) {
		if (bks_loop_run_once(m.loop, -1) < 0)
			break;
	}
	status = 0;
out:
	if (m.nbd)
		bf_nbd_fail_all(m.nbd, -EIO);
	bf_fuse_free(m.fuse);
	bf_nbd_free(m.nbd);
	stop_signals_stop(&m.sig);
	if (m.loop) {
		bks_timer_cancel(&m.stop_t);
		bks_loop_free(m.loop);
	}
	bks_syslog_close(m.log.syslog);
	return status;
}
