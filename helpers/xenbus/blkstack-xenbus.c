/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * blkstack-xenbus [--backend-dir PATH] [--rundir DIR]
 *                 [--max-ring-page-order N] [--verbose]
 *
 * The xenstore side of blkstack's vbd3 backend (libxl's backendtype=tap,
 * docs/libxl-hotplug-interface.txt section 11; docs/ring-backend.txt):
 * one process per backend domain, started before the first guest, that
 * watches PATH (default /local/domain/0/backend/vbd3) and drives each
 * device's backend state through the xenbus state model (xb-state.h).
 * libxl runs a vbd3 disk's hotplug script only once the backend is in
 * InitWait, so something must take it there first; this does, writing
 * max-ring-page-order (N, default 4) with it.  It answers the frontend's
 * Closing and Closed, its disappearance, its reconnection (Closed goes
 * back to InitWait only when the frontend is Initialising again) and the
 * toolstack's online=0.
 *
 * A ready frontend's ring is handed to the disk's worker (blkif-connect)
 * once the hotplug script's add has finished, and watched while it is
 * served (blkif-watch, xb-dev.c): a ring the guest broke, or a worker
 * that died, takes the backend to Closing with the reason in its error
 * node (docs/ring-backend.txt, section 8).
 *
 * One instance per DIR (default $BLKSTACK_RUNDIR, else /run/blkstack):
 * it holds DIR/xenbus.lock, and removes it when it exits.  Prints
 * "blkstack-xenbus: watching PATH" on standard output once its watch is set.
 * SIGTERM or SIGINT: exit 0, leaving every backend as it is.  Exit 1 on an
 * error, 2 on bad usage.
 */
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xenstore.h>

#include "blkstack/loop.h"
#include "dec.h"
#include "lockfile.h"
#include "rundir.h"
#include "version.h"
#include "xb-dev.h"

#define PROG		"blkstack-xenbus"
#define XB_BASE_DEFAULT "/local/domain/0/backend/vbd3"
#define XB_TOKEN_BASE	"vbd3"
#define XB_LOCK		"xenbus.lock"
/* blkif's rings: 2^order pages; Linux's blkback allows up to 4. */
#define XB_ORDER_MAX 4u

struct xb_daemon {
	struct xs_handle *xs;
	struct bks_loop *loop;
	struct bks_watch xs_w;
	struct bks_watch sig_w;
	char base[XB_PATH_MAX];
	struct xb_conf conf;
	bool verbose;
	bool failed;	   /* the loop stopped on an error */
	unsigned int scan; /* rescan()'s count, to refresh each device once */
	struct xb_dev *devs;
};

static void say(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void say(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	fprintf(stderr, PROG ": ");
	vfprintf(stderr, fmt, ap);
	fputc('\n', stderr);
	va_end(ap);
}

static struct xb_dev **find(struct xb_daemon *xd, unsigned int domid,
			    unsigned int devid)
{
	struct xb_dev **pp = &xd->devs;

	while (*pp && !((*pp)->domid == domid && (*pp)->devid == devid))
		pp = &(*pp)->next;
	return pp;
}

/* Bring device domid/devid up to date, making or forgetting it. */
static void handle(struct xb_daemon *xd, unsigned int domid, unsigned int devid)
{
	struct bks_error err = {0};
	struct xb_dev **pp = find(xd, domid, devid);
	enum xb_state from, to;
	int rc;

	if (!*pp) {
		rc = xb_dev_new(xd->xs, xd->base, domid, devid, pp, &err);
		if (rc == XB_DEV_GONE)
			return;
		if (rc < 0) {
			say("%s/%u/%u: not served: %s", xd->base, domid, devid,
			    err.msg);
			return;
		}
	}
	rc = xb_dev_refresh(xd->xs, *pp, &xd->conf, &from, &to, &err);
	if (rc == XB_DEV_GONE) {
		struct xb_dev *d = *pp;

		*pp = d->next;
		if (xd->verbose)
			say("%s: gone", d->be);
		/* Its ring, if the toolstack removed it still Connected. */
		xb_dev_disconnect(d, &xd->conf);
		xb_dev_free(xd->xs, d);
		return;
	}
	if (rc == XB_DEV_UNSERVED)
		say("%s: the frontend is ready; waiting for the hotplug "
		    "script's add (hotplug-status connected)",
		    (*pp)->be);
	else if (rc < 0)
		say("%s", err.msg);
	if (from != to && xd->verbose)
		say("%s: %s -> %s", (*pp)->be, xb_state_name(from),
		    xb_state_name(to));
}

/* Every device directory under base, and every device known. */
static void rescan(struct xb_daemon *xd)
{
	char path[XB_PATH_MAX];
	unsigned int nd = 0, nv, domid, devid;
	char **doms = NULL, **devs;

	xd->scan++;
	doms = xs_directory(xd->xs, XBT_NULL, xd->base, &nd);
	for (unsigned int i = 0; doms && i < nd; i++) {
		if (dec_parse_u32(doms[i], UINT16_MAX, &domid) < 0)
			continue;
		if ((size_t)snprintf(path, sizeof(path), "%s/%u", xd->base,
				     domid) >= sizeof(path))
			continue;
		nv = 0;
		devs = xs_directory(xd->xs, XBT_NULL, path, &nv);
		for (unsigned int j = 0; devs && j < nv; j++) {
			struct xb_dev *d;

			if (dec_parse_u32(devs[j], UINT32_MAX / 2, &devid) < 0)
				continue;
			handle(xd, domid, devid);
			d = *find(xd, domid, devid);
			if (d)
				d->scan = xd->scan;
		}
		free(devs);
	}
	free(doms);
	/* Those whose directory went while nobody looked (once each). */
	for (struct xb_dev *d = xd->devs, *next; d; d = next) {
		next = d->next;
		if (d->scan != xd->scan)
			handle(xd, d->domid, d->devid);
	}
}

/* A watch event on base's tree: the device it names, else everything. */
static void base_event(struct xb_daemon *xd, const char *path)
{
	size_t n = strlen(xd->base);
	unsigned int domid, devid;
	char dom[16], dev[16];
	const char *p = path + n, *q;

	if (strncmp(path, xd->base, n) != 0 || p[0] != '/')
		goto all;
	p++;
	q = strchr(p, '/');
	if (!q || (size_t)(q - p) >= sizeof(dom))
		goto all;
	snprintf(dom, sizeof(dom), "%.*s", (int)(q - p), p);
	p = q + 1;
	q = strchr(p, '/');
	if (!q)
		q = p + strlen(p);
	if ((size_t)(q - p) >= sizeof(dev))
		goto all;
	snprintf(dev, sizeof(dev), "%.*s", (int)(q - p), p);
	if (dec_parse_u32(dom, UINT16_MAX, &domid) < 0 ||
	    dec_parse_u32(dev, UINT32_MAX / 2, &devid) < 0)
		return; /* not a device directory: nothing of ours */
	handle(xd, domid, devid);
	return;
all:
	rescan(xd);
}

static void xs_ready(struct bks_watch *w, uint32_t events)
{
	struct xb_daemon *xd = w->opaque;
	char **vec;

	(void)events;
	while ((vec = xs_check_watch(xd->xs))) {
		const char *path = vec[XS_WATCH_PATH];
		const char *token = vec[XS_WATCH_TOKEN];

		if (strcmp(token, XB_TOKEN_BASE) == 0) {
			base_event(xd, path);
		} else {
			/* A frontend's state: the token is its backend. */
			for (struct xb_dev *d = xd->devs; d; d = d->next)
				if (strcmp(d->be, token) == 0) {
					handle(xd, d->domid, d->devid);
					break;
				}
		}
		free(vec);
	}
	if (errno != EAGAIN) {
		say("xenstore watch: %s", strerror(errno));
		xd->failed = true;
		bks_loop_stop(xd->loop);
	}
}

static void sig_ready(struct bks_watch *w, uint32_t events)
{
	struct xb_daemon *xd = w->opaque;
	struct signalfd_siginfo si;

	(void)events;
	if (read(w->fd, &si, sizeof(si)) == (ssize_t)sizeof(si))
		bks_loop_stop(xd->loop);
}

static void usage(FILE *f)
{
	fprintf(f, "usage: " PROG " [--backend-dir PATH] [--rundir DIR]\n"
		   "       [--max-ring-page-order N] [--verbose]\n"
		   "       " PROG " --help | --version\n");
}

int main(int argc, char **argv)
{
	static const struct option longopts[] = {
	    {"backend-dir", required_argument, NULL, 'b'},
	    {"rundir", required_argument, NULL, 'r'},
	    {"max-ring-page-order", required_argument, NULL, 'o'},
	    {"verbose", no_argument, NULL, 'v'},
	    {"help", no_argument, NULL, 'h'},
	    {"version", no_argument, NULL, 'V'},
	    {0},
	};
	struct xb_daemon xd = {.conf = {.max_ring_page_order = XB_ORDER_MAX}};
	struct bks_error err = {0};
	const char *rundir = NULL; /* --rundir */
	char rundir_buf[RUNDIR_MAX + 1];
	const char *base = XB_BASE_DEFAULT;
	char lock[XB_PATH_MAX];
	int lockfd = -1, sigfd = -1, rc = 1, c;
	sigset_t mask;

	while ((c = getopt_long(argc, argv, "+", longopts, NULL)) != -1) {
		switch (c) {
		case 'b':
			base = optarg;
			break;
		case 'r':
			rundir = optarg;
			break;
		case 'o':
			if (dec_parse_u32(optarg, XB_ORDER_MAX,
					  &xd.conf.max_ring_page_order) < 0) {
				say("--max-ring-page-order: '%s' is not 0-%u",
				    optarg, XB_ORDER_MAX);
				return 2;
			}
			break;
		case 'v':
			xd.verbose = true;
			break;
		case 'h':
			usage(stdout);
			return 0;
		case 'V':
			return bks_version_print(stdout, PROG) < 0 ? 1 : 0;
		default:
			usage(stderr);
			return 2;
		}
	}
	if (optind != argc) {
		usage(stderr);
		return 2;
	}
	if (base[0] != '/' || strlen(base) >= sizeof(xd.base) - 64 ||
	    base[strlen(base) - 1] == '/' || strstr(base, "//")) {
		say("--backend-dir: '%.64s' is not an absolute xenstore path",
		    base);
		return 2;
	}
	snprintf(xd.base, sizeof(xd.base), "%s", base);
	if (rundir_choose(rundir, rundir_buf, sizeof(rundir_buf), &err) < 0) {
		say("%s", err.msg);
		return 2;
	}
	rundir = rundir_buf;
	xd.conf.rundir = rundir;

	if (mkdir(rundir, 0755) < 0 && errno != EEXIST) {
		say("mkdir %s: %s", rundir, strerror(errno));
		goto out;
	}
	if ((size_t)snprintf(lock, sizeof(lock), "%s/" XB_LOCK, rundir) >=
	    sizeof(lock)) {
		say("--rundir: too long");
		goto out;
	}
	if (lockfile_take(lock, LOCKFILE_CREATE | LOCKFILE_NONBLOCK, &lockfd,
			  &err) < 0) {
		if (err.code == EWOULDBLOCK)
			say("another " PROG " runs (it holds %s)", lock);
		else
			say("%s", err.msg);
		goto out;
	}

	sigemptyset(&mask);
	sigaddset(&mask, SIGTERM);
	sigaddset(&mask, SIGINT);
	if (sigprocmask(SIG_BLOCK, &mask, NULL) < 0 ||
	    (sigfd = signalfd(-1, &mask, SFD_CLOEXEC | SFD_NONBLOCK)) < 0) {
		say("signalfd: %s", strerror(errno));
		goto out;
	}
	xd.xs = xs_open(0);
	if (!xd.xs) {
		say("xs_open: %s", strerror(errno));
		goto out;
	}
	if (bks_loop_new(&xd.loop, &err) < 0) {
		say("%s", err.msg);
		goto out;
	}
	xd.conf.loop = xd.loop;
	if (bks_watch_add(xd.loop, &xd.xs_w, xs_fileno(xd.xs), EPOLLIN,
			  xs_ready, &xd) < 0 ||
	    bks_watch_add(xd.loop, &xd.sig_w, sigfd, EPOLLIN, sig_ready, &xd) <
		0) {
		say("event loop: %s", strerror(errno));
		goto out;
	}
	/* The watch fires once at once: that first event scans the tree. */
	if (!xs_watch(xd.xs, xd.base, XB_TOKEN_BASE)) {
		say("xenstore watch %s: %s", xd.base, strerror(errno));
		goto out;
	}
	printf(PROG ": watching %s\n", xd.base);
	fflush(stdout);
	rc = bks_loop_run(xd.loop) < 0 || xd.failed ? 1 : 0;
out:
	while (xd.devs) {
		struct xb_dev *d = xd.devs;

		xd.devs = d->next;
		xb_dev_free(xd.xs, d);
	}
	if (xd.loop) {
		bks_watch_del(&xd.xs_w);
		bks_watch_del(&xd.sig_w);
		bks_loop_free(xd.loop);
	}
	if (xd.xs)
		xs_close(xd.xs);
	if (sigfd >= 0)
		close(sigfd);
	if (lockfd >= 0) {
		/* Removed while held (lockfile.h). */
		unlink(lock);
		close(lockfd);
	}
	return rc;
}
