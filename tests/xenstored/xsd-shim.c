/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * xsd-shim: run Debian's real C xenstored on a machine without Xen.
 *
 * Loaded with LD_PRELOAD into /usr/lib/xen-4.17/bin/xenstored, it replaces
 * exactly the calls the daemon makes into the hypervisor (libxenctrl,
 * libxengnttab, libxenevtchn) and the two /proc/xen files it opens.
 * Everything else -- the store, transactions, permissions, watches, the
 * socket protocol -- is the unmodified daemon.
 *
 * All state lives in the daemon's private directory, $XENSTORED_RUNDIR:
 *
 *   xsd_kva     4096-byte file mmapped as dom0's xenbus ring (never used:
 *               dom0 talks over the Unix socket here).
 *   evtchn      FIFO standing in for /dev/xen/evtchn.  Writing a decimal
 *               port number followed by a newline to it raises that port.
 *   virq-port   the port bound to VIRQ_DOM_EXC, written at start-up.
 *               `echo "$(cat virq-port)" > evtchn` makes the daemon rescan
 *               the domain list (as when a domain dies).
 *   domains     optional domain list read by xc_domain_getinfo(): one line
 *               per domain, "<domid> [running|shutdown|crashed|dying]".
 *               Without the file every domid below DOMID_FIRST_RESERVED
 *               exists and runs.
 *
 * This is test infrastructure, not part of blkstack.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <xenctrl.h>
#include <xenevtchn.h>
#include <xengnttab.h>

#define SHIM "xsd-shim"
#define PAGE 4096

/* Opaque handle types of the real libraries; ours carry what we need. */
struct xenevtchn_handle {
	int fd;			 /* the FIFO, read end and write end */
	evtchn_port_t next_port; /* next local port to hand out */
};

struct xengnttab_handle {
	int unused;
};

struct xc_interface_core {
	int unused;
};

static void shim_log(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	fputs(SHIM ": ", stderr);
	vfprintf(stderr, fmt, ap);
	fputc('\n', stderr);
	va_end(ap);
}

/* Build DIR/name; returns 0 or -errno. */
static int rundir_path(char *buf, size_t len, const char *name)
{
	const char *dir = getenv("XENSTORED_RUNDIR");
	int n;

	if (!dir || !*dir) {
		shim_log("XENSTORED_RUNDIR is not set; refusing to guess a "
			 "directory");
		return -EINVAL;
	}
	n = snprintf(buf, len, "%s/%s", dir, name);
	if (n < 0 || (size_t)n >= len)
		return -ENAMETOOLONG;
	return 0;
}

/* ---- /proc/xen/xsd_port and /proc/xen/xsd_kva ------------------------ */

static int fake_xsd_port(int flags)
{
	static const char port[] = "1\n";
	int fd;

	fd = memfd_create("xsd_port", (flags & O_CLOEXEC) ? MFD_CLOEXEC : 0);
	if (fd < 0)
		return -1;
	if (write(fd, port, sizeof(port) - 1) != sizeof(port) - 1 ||
	    lseek(fd, 0, SEEK_SET) != 0) {
		int saved = errno;

		close(fd);
		errno = saved;
		return -1;
	}
	return fd;
}

static int fake_xsd_kva(int (*real_open)(const char *, int, ...), int flags)
{
	char path[PATH_MAX];
	int fd, rc;

	rc = rundir_path(path, sizeof(path), "xsd_kva");
	if (rc < 0) {
		errno = -rc;
		return -1;
	}
	fd = real_open(path, O_RDWR | O_CREAT | (flags & O_CLOEXEC), 0600);
	if (fd < 0) {
		shim_log("open %s: %m", path);
		return -1;
	}
	if (ftruncate(fd, PAGE) < 0) {
		int saved = errno;

		shim_log("ftruncate %s: %m", path);
		close(fd);
		errno = saved;
		return -1;
	}
	return fd;
}

static int shim_open(const char *name, int flags, mode_t mode)
{
	static int (*real_open)(const char *, int, ...);

	if (!real_open)
		real_open =
		    (int (*)(const char *, int, ...))dlsym(RTLD_NEXT, "open");
	if (!real_open) {
		errno = ENOSYS;
		return -1;
	}
	if (name && strcmp(name, "/proc/xen/xsd_port") == 0)
		return fake_xsd_port(flags);
	if (name && strcmp(name, "/proc/xen/xsd_kva") == 0)
		return fake_xsd_kva(real_open, flags);
	return real_open(name, flags, mode);
}

int open(const char *name, int flags, ...)
{
	mode_t mode = 0;

	if (flags & (O_CREAT | O_TMPFILE)) {
		va_list ap;

		va_start(ap, flags);
		mode = va_arg(ap, mode_t);
		va_end(ap);
	}
	return shim_open(name, flags, mode);
}

int open64(const char *name, int flags, ...)
{
	mode_t mode = 0;

	if (flags & (O_CREAT | O_TMPFILE)) {
		va_list ap;

		va_start(ap, flags);
		mode = va_arg(ap, mode_t);
		va_end(ap);
	}
	return shim_open(name, flags, mode);
}

/* ---- libxenctrl -------------------------------------------------------- */

xc_interface *xc_interface_open(xentoollog_logger *logger,
				xentoollog_logger *dombuild_logger,
				unsigned open_flags)
{
	(void)logger;
	(void)dombuild_logger;
	(void)open_flags;
	return calloc(1, sizeof(struct xc_interface_core));
}

int xc_interface_close(xc_interface *xch)
{
	free(xch);
	return 0;
}

/*
 * Parse one line of the domains file.  Returns 1 and fills *info for a
 * well-formed line, 0 for a blank or malformed one.
 */
static int parse_domain_line(const char *line, xc_dominfo_t *info)
{
	char state[16] = "running";
	unsigned long domid;
	char *end;

	errno = 0;
	domid = strtoul(line, &end, 10);
	if (end == line || errno || domid >= DOMID_FIRST_RESERVED)
		return 0;
	if (sscanf(end, "%15s", state) < 1)
		strcpy(state, "running");
	memset(info, 0, sizeof(*info));
	info->domid = (uint32_t)domid;
	info->running = strcmp(state, "running") == 0;
	info->shutdown = strcmp(state, "shutdown") == 0;
	info->crashed = strcmp(state, "crashed") == 0;
	info->dying = strcmp(state, "dying") == 0;
	info->nr_online_vcpus = 1;
	info->max_vcpu_id = 0;
	return 1;
}

/*
 * Like the real call: fill up to max_doms entries for the domains with
 * domid >= first_domid, in domid order, and return how many.
 */
int xc_domain_getinfo(xc_interface *xch, uint32_t first_domid,
		      unsigned int max_doms, xc_dominfo_t *info)
{
	char path[PATH_MAX], line[128];
	unsigned int n = 0;
	FILE *f;

	(void)xch;
	if (max_doms == 0)
		return 0;
	if (rundir_path(path, sizeof(path), "domains") < 0)
		return -1;
	f = fopen(path, "re");
	if (!f) {
		if (errno != ENOENT)
			return -1;
		/* No list: every domid exists and runs. */
		for (uint32_t d = first_domid;
		     d < DOMID_FIRST_RESERVED && n < max_doms; d++, n++) {
			memset(&info[n], 0, sizeof(info[n]));
			info[n].domid = d;
			info[n].running = 1;
			info[n].nr_online_vcpus = 1;
		}
		return (int)n;
	}
	/* Collect the matching domains, then order them by domid. */
	while (fgets(line, sizeof(line), f) && n < max_doms) {
		xc_dominfo_t d;

		if (!parse_domain_line(line, &d) || d.domid < first_domid)
			continue;
		info[n++] = d;
	}
	fclose(f);
	for (unsigned int i = 1; i < n; i++) {
		for (unsigned int j = i;
		     j > 0 && info[j - 1].domid > info[j].domid; j--) {
			xc_dominfo_t t = info[j];

			info[j] = info[j - 1];
			info[j - 1] = t;
		}
	}
	return (int)n;
}

/* ---- libxengnttab ------------------------------------------------------ */

xengnttab_handle *xengnttab_open(struct xentoollog_logger *logger,
				 unsigned open_flags)
{
	(void)logger;
	(void)open_flags;
	return calloc(1, sizeof(struct xengnttab_handle));
}

int xengnttab_close(xengnttab_handle *xgt)
{
	free(xgt);
	return 0;
}

int xengnttab_set_max_grants(xengnttab_handle *xgt, uint32_t nr_grants)
{
	(void)xgt;
	(void)nr_grants;
	return 0;
}

/*
 * An introduced domain's xenstore ring.  No guest exists to fill it, so a
 * zeroed private page is an idle ring: the daemon sees no requests.
 */
void *xengnttab_map_grant_ref(xengnttab_handle *xgt, uint32_t domid,
			      uint32_t ref, int prot)
{
	void *p;

	(void)xgt;
	(void)domid;
	(void)ref;
	p = mmap(NULL, PAGE, prot, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	return p == MAP_FAILED ? NULL : p;
}

int xengnttab_unmap(xengnttab_handle *xgt, void *start_address, uint32_t count)
{
	(void)xgt;
	return munmap(start_address, (size_t)count * PAGE);
}

/* ---- libxenevtchn ------------------------------------------------------ */

static xenevtchn_handle *evtchn_new(int fd)
{
	xenevtchn_handle *xce = calloc(1, sizeof(*xce));

	if (!xce)
		return NULL;
	xce->fd = fd;
	xce->next_port = 1;
	return xce;
}

xenevtchn_handle *xenevtchn_open(struct xentoollog_logger *logger,
				 unsigned open_flags)
{
	char path[PATH_MAX];
	xenevtchn_handle *xce;
	int fd, rc, flags = O_RDWR | O_NONBLOCK;

	(void)logger;
	rc = rundir_path(path, sizeof(path), "evtchn");
	if (rc < 0) {
		errno = -rc;
		return NULL;
	}
	if (mkfifo(path, 0600) < 0 && errno != EEXIST) {
		shim_log("mkfifo %s: %m", path);
		return NULL;
	}
	if (!(open_flags & XENEVTCHN_NO_CLOEXEC))
		flags |= O_CLOEXEC;
	/* O_RDWR: the FIFO never reports EOF when a writer goes away. */
	fd = shim_open(path, flags, 0);
	if (fd < 0) {
		shim_log("open %s: %m", path);
		return NULL;
	}
	xce = evtchn_new(fd);
	if (!xce)
		close(fd);
	return xce;
}

xenevtchn_handle *xenevtchn_fdopen(struct xentoollog_logger *logger, int fd,
				   unsigned open_flags)
{
	(void)logger;
	(void)open_flags;
	return evtchn_new(fd);
}

int xenevtchn_close(xenevtchn_handle *xce)
{
	if (!xce)
		return 0;
	close(xce->fd);
	free(xce);
	return 0;
}

int xenevtchn_fd(xenevtchn_handle *xce)
{
	return xce->fd;
}

int xenevtchn_notify(xenevtchn_handle *xce, evtchn_port_t port)
{
	(void)xce;
	(void)port;
	return 0;
}

xenevtchn_port_or_error_t xenevtchn_bind_interdomain(xenevtchn_handle *xce,
						     uint32_t domid,
						     evtchn_port_t remote_port)
{
	(void)domid;
	(void)remote_port;
	return (xenevtchn_port_or_error_t)xce->next_port++;
}

xenevtchn_port_or_error_t xenevtchn_bind_virq(xenevtchn_handle *xce,
					      unsigned int virq)
{
	char path[PATH_MAX];
	evtchn_port_t port = xce->next_port++;
	FILE *f;

	(void)virq;
	if (rundir_path(path, sizeof(path), "virq-port") == 0) {
		f = fopen(path, "we");
		if (f) {
			fprintf(f, "%u\n", port);
			fclose(f);
		} else {
			shim_log("open %s: %m", path);
		}
	}
	return (xenevtchn_port_or_error_t)port;
}

int xenevtchn_unbind(xenevtchn_handle *xce, evtchn_port_t port)
{
	(void)xce;
	(void)port;
	return 0;
}

/*
 * Called when the FIFO polls readable: take one "<port>\n" record.  A
 * malformed record, or none at all, is reported as port 0, which matches
 * nothing the daemon bound: it unmasks it and goes back to its loop.
 * Returning -1 would make the daemon exit.
 */
xenevtchn_port_or_error_t xenevtchn_pending(xenevtchn_handle *xce)
{
	unsigned long port = 0;
	int digits = 0, bad = 0;
	char c;

	for (;;) {
		ssize_t n = read(xce->fd, &c, 1);

		if (n != 1 || c == '\n')
			break;
		if (c >= '0' && c <= '9' && port < 0x10000000UL) {
			port = port * 10 + (unsigned long)(c - '0');
			digits++;
		} else if (c != ' ' && c != '\r') {
			bad = 1;
		}
	}
	if (!digits || bad)
		return 0;
	return (xenevtchn_port_or_error_t)port;
}

int xenevtchn_unmask(xenevtchn_handle *xce, evtchn_port_t port)
{
	(void)xce;
	(void)port;
	return 0;
}
