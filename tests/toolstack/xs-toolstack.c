/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * xs-toolstack: a toolstack driver for the tests.  It creates the xenstore
 * areas of one guest disk and runs a hotplug script exactly as libxl does,
 * in v1 (libxl 4.17) or v2 (the proposed hotplug interface) fashion,
 * against whatever xenstored XENSTORED_PATH points at.
 *
 *   xs-toolstack [options] COMMAND [ACTION]      (see usage() below)
 *
 * Exit status: 0 success, 1 failure, 2 usage error; a *-run command exits
 * with the script's status (128 + signal if a signal killed it), 124 if
 * it was killed at the deadline, 126/127 if it could not be executed or
 * does not exist and 125 if the driver itself failed.
 */
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <limits.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "xs-toolstack.h"

#define EXIT_USAGE 2

/* DOMID_FIRST_RESERVED: domain ids from here on are not domains. */
#define DOMID_LIMIT 0x7FF0U
/* libxl's devid is an int. */
#define DEVID_MAX 0x7FFFFFFFU
/* The deadline in milliseconds must fit an int. */
#define TIMEOUT_MAX 2000000U

/* Long enough for every path built from bounded numbers. */
#define PATH_LEN 128
/* "NAME=" in front of a path. */
#define ENV_LEN (PATH_LEN + 32)

struct ts {
	/* Options. */
	const char *script;
	const char *target;
	unsigned int domid;
	unsigned int devid;
	unsigned int bdom;
	unsigned int timeout;
	const char *vm; /* --vm: the guest's /local/domain/N/vm, or NULL */
	bool quiet;
	bool keep_on_failure;
	/* Command line, after the options. */
	const char *action;
	/* Derived. */
	char hotplug_path[PATH_LEN];
	char backend_path[PATH_LEN];
	char frontend_path[PATH_LEN];
	char xenbus_path[PATH_LEN]; /* relative, as libxl passes it */
	char dev[32];
	struct xs_handle *xs;
	int status; /* exit status of a *-run command */
};

enum {
	NEED_SCRIPT = 1 << 0,
	NEED_TARGET = 1 << 1,
	NEED_ACTION = 1 << 2,
	NEED_XS = 1 << 3,
	IS_RUN = 1 << 4, /* exit with the script's status */
};

struct command {
	const char *name;
	int (*fn)(struct ts *ts);
	unsigned int flags;
};

static void usage(FILE *f)
{
	fprintf(f,
		"usage: " TS_NAME " [options] COMMAND [ACTION]\n"
		"\n"
		"Commands:\n"
		"  paths         print HOTPLUG_PATH, BACKEND_PATH, "
		"FRONTEND_PATH, XENBUS_PATH\n"
		"  v2-create     create HOTPLUG_PATH with params and script\n"
		"  v2-backend    create backend and frontend, backend "
		"state 2\n"
		"  v2-run ACTION run the script, v2 environment\n"
		"  v2-attach     v2-create, version, prepare, v2-backend, add\n"
		"  v2-detach     remove, unprepare, delete all three areas\n"
		"  v1-create     create backend (params, script) and frontend\n"
		"  v1-run ACTION run the script (add or remove), v1 "
		"environment\n"
		"  v1-attach     v1-create, add\n"
		"  v1-detach     remove, delete backend and frontend\n"
		"\n"
		"Options:\n"
		"  --script PATH         the hotplug script\n"
		"  --target LINE         the diskspec target (params)\n"
		"  --domid N             guest domain (default 1)\n"
		"  --devid N             device id (default 51712, xvda)\n"
		"  --backend-domid N     backend domain (default 0)\n"
		"  --vm PATH             write the guest's /local/domain/N/vm "
		"(v2-backend, v1-create)\n"
		"  --timeout SEC         deadline per script run (default "
		"40)\n"
		"  --quiet               no progress lines\n"
		"  --keep-on-failure     v1-attach: no remove after a failed "
		"add\n");
}

void ts_err(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	fputs(TS_NAME ": ", stderr);
	vfprintf(stderr, fmt, ap);
	fputc('\n', stderr);
	va_end(ap);
}

static void __attribute__((format(printf, 2, 3)))
note(const struct ts *ts, const char *fmt, ...)
{
	va_list ap;

	if (ts->quiet)
		return;
	va_start(ap, fmt);
	fputs(TS_NAME ": ", stdout);
	vprintf(fmt, ap);
	fputc('\n', stdout);
	fflush(stdout);
	va_end(ap);
}

/* Strict unsigned decimal in [min, max]: no sign, space, or trailer. */
static int parse_uint(const char *opt, const char *s, unsigned long min,
		      unsigned long max, unsigned int *out)
{
	unsigned long v;
	char *end = NULL;
	int ret = 0;

	if (!isdigit((unsigned char)s[0])) {
		ret = -EINVAL;
		ts_err("%s '%s': not a decimal number", opt, s);
		goto out;
	}
	errno = 0;
	v = strtoul(s, &end, 10);
	if (errno == ERANGE) {
		ret = -ERANGE;
		ts_err("%s %s: out of range %lu..%lu", opt, s, min, max);
		goto out;
	}
	if (errno || *end) {
		ret = errno ? -errno : -EINVAL;
		ts_err("%s '%s': not a decimal number", opt, s);
		goto out;
	}
	if (v < min || v > max) {
		ret = -ERANGE;
		ts_err("%s %lu: out of range %lu..%lu", opt, v, min, max);
		goto out;
	}
	*out = (unsigned int)v;
out:
	return ret;
}

/* Disk letters as libxl's encode_disk_name(): a..z, aa..zz, aaa... */
static void disk_letters(char *p, size_t len, unsigned int n)
{
	char rev[8];
	size_t i = 0;

	for (;;) {
		rev[i++] = (char)('a' + n % 26);
		if (n < 26 || i == sizeof(rev))
			break;
		n = n / 26 - 1;
	}
	while (i > 0 && len > 1) {
		*p++ = rev[--i];
		len--;
	}
	*p = '\0';
}

/*
 * The "dev" node: the vdev name libxl would have been given for DEVID
 * (xvd, hd and sd encodings), "xvda" if DEVID is none of these.
 */
static void dev_name(unsigned int devid, char *buf, size_t len)
{
	const char *prefix = NULL;
	unsigned int major = devid >> 8, disk = 0, part = 0;
	char letters[8];

	if (devid & (1U << 28)) {
		prefix = "xvd";
		disk = (devid >> 8) & 0xfffff;
		part = devid & 0xff;
	} else if (major == 202) {
		prefix = "xvd";
		disk = (devid >> 4) & 0xf;
		part = devid & 0xf;
	} else if (major == 3 || major == 22) {
		prefix = "hd";
		disk = (major == 22 ? 2 : 0) + ((devid >> 6) & 1);
		part = devid & 0x3f;
	} else if (major == 8) {
		prefix = "sd";
		disk = (devid >> 4) & 0xf;
		part = devid & 0xf;
	}
	if (!prefix) {
		snprintf(buf, len, "xvda");
		return;
	}
	disk_letters(letters, sizeof(letters), disk);
	if (part)
		snprintf(buf, len, "%s%s%u", prefix, letters, part);
	else
		snprintf(buf, len, "%s%s", prefix, letters);
}

static int set_paths(struct ts *ts)
{
	int n[4];
	int ret = 0;

	n[0] = snprintf(ts->hotplug_path, sizeof(ts->hotplug_path),
			"/local/domain/%u/libxl/hotplug/%u/vbd/%u", ts->bdom,
			ts->domid, ts->devid);
	n[1] = snprintf(ts->backend_path, sizeof(ts->backend_path),
			"/local/domain/%u/backend/vbd/%u/%u", ts->bdom,
			ts->domid, ts->devid);
	n[2] = snprintf(ts->frontend_path, sizeof(ts->frontend_path),
			"/local/domain/%u/device/vbd/%u", ts->domid, ts->devid);
	n[3] = snprintf(ts->xenbus_path, sizeof(ts->xenbus_path),
			"backend/vbd/%u/%u", ts->domid, ts->devid);
	for (int i = 0; i < 4; i++) {
		if (n[i] < 0 || n[i] >= PATH_LEN) {
			ret = -ENAMETOOLONG;
			ts_err("xenstore paths: %s", strerror(-ret));
			goto out;
		}
	}
	dev_name(ts->devid, ts->dev, sizeof(ts->dev));
out:
	return ret;
}

/* ---- xenstore areas ----------------------------------------------------- */

struct node {
	const char *name;
	const char *value;
};

static int write_nodes(struct xs_handle *xs, xs_transaction_t t,
		       const char *dir, const struct node *nodes, size_t n)
{
	size_t i;
	int ret = 0;

	for (i = 0; i < n; i++) {
		ret = xst_write(xs, t, dir, nodes[i].name, nodes[i].value);
		if (ret)
			goto out;
	}
out:
	return ret;
}

static int hotplug_txn(struct xs_handle *xs, xs_transaction_t t,
		       const void *arg)
{
	const struct ts *ts = arg;
	struct xs_permissions perms[] = {
	    {.id = ts->bdom, .perms = XS_PERM_NONE},
	};
	const struct node nodes[] = {
	    {"params", ts->target},
	    {"script", ts->script},
	};
	int ret = 0;

	ret = xst_mkdir(xs, t, ts->hotplug_path, perms, 1);
	if (ret)
		goto out;
	ret = write_nodes(xs, t, ts->hotplug_path, nodes,
			  sizeof(nodes) / sizeof(nodes[0]));
out:
	return ret;
}

/*
 * Backend and frontend as libxl__device_generic_add() and
 * libxl__device_disk_add() make them; V1 adds params and script to the
 * backend, where v1 keeps them.
 */
static int device_txn(struct xs_handle *xs, xs_transaction_t t,
		      const struct ts *ts, bool v1)
{
	struct xs_permissions be_perms[] = {
	    {.id = ts->bdom, .perms = XS_PERM_NONE},
	    {.id = ts->domid, .perms = XS_PERM_READ},
	};
	struct xs_permissions fe_perms[] = {
	    {.id = ts->domid, .perms = XS_PERM_NONE},
	    {.id = ts->bdom, .perms = XS_PERM_READ},
	};
	char domid[16], bdom[16], devid[16], dom[32];
	const struct node be_nodes[] = {
	    {"frontend", ts->frontend_path},
	    {"frontend-id", domid},
	    {"online", "1"},
	    {"removable", "0"},
	    {"bootable", "1"},
	    {"state", "1"},
	    {"dev", ts->dev},
	    {"type", "phy"},
	    {"mode", "w"},
	    {"device-type", "disk"},
	    /* v1 only, from here on. */
	    {"params", ts->target},
	    {"script", ts->script},
	};
	const struct node fe_nodes[] = {
	    {"backend", ts->backend_path},
	    {"backend-id", bdom},
	    {"state", "1"},
	    {"virtual-device", devid},
	    {"device-type", "disk"},
	};
	size_t n_be = sizeof(be_nodes) / sizeof(be_nodes[0]);
	int ret = 0;

	snprintf(domid, sizeof(domid), "%u", ts->domid);
	snprintf(bdom, sizeof(bdom), "%u", ts->bdom);
	snprintf(devid, sizeof(devid), "%u", ts->devid);
	if (!v1)
		n_be -= 2;

	ret = xst_mkdir(xs, t, ts->frontend_path, fe_perms, 2);
	if (ret)
		goto out;
	ret = write_nodes(xs, t, ts->frontend_path, fe_nodes,
			  sizeof(fe_nodes) / sizeof(fe_nodes[0]));
	if (ret)
		goto out;
	ret = xst_mkdir(xs, t, ts->backend_path, be_perms, 2);
	if (ret)
		goto out;
	ret = write_nodes(xs, t, ts->backend_path, be_nodes, n_be);
	if (ret || !ts->vm)
		goto out;
	/* libxl writes it when it makes the domain: one VM, one path. */
	snprintf(dom, sizeof(dom), "/local/domain/%u", ts->domid);
	ret = xst_write(xs, t, dom, "vm", ts->vm);
out:
	return ret;
}

static int device_v1_txn(struct xs_handle *xs, xs_transaction_t t,
			 const void *arg)
{
	return device_txn(xs, t, arg, true);
}

static int device_v2_txn(struct xs_handle *xs, xs_transaction_t t,
			 const void *arg)
{
	return device_txn(xs, t, arg, false);
}

static int remove_txn(struct xs_handle *xs, xs_transaction_t t, const void *arg)
{
	const char *const *paths = arg;
	int ret = 0;

	for (; *paths; paths++) {
		ret = xst_rm(xs, t, *paths);
		if (ret)
			goto out;
	}
out:
	return ret;
}

/* The device areas, then backend state 2 as blkback would write it. */
static int create_device(struct ts *ts, bool v1)
{
	const char *what = v1 ? "v1-create" : "v2-backend";
	int ret = 0;

	ret =
	    xst_transact(ts->xs, what, v1 ? device_v1_txn : device_v2_txn, ts);
	if (ret)
		goto out;
	/* Separately: blkback, absent here, would move to InitWait. */
	ret = xst_write(ts->xs, XBT_NULL, ts->backend_path, "state", "2");
	if (ret)
		goto out;
	note(ts, "%s: %s and %s created, backend state 2", what,
	     ts->backend_path, ts->frontend_path);
out:
	return ret;
}

static int remove_areas(struct ts *ts, const char *what, bool hotplug)
{
	const char *paths[] = {ts->backend_path, ts->frontend_path,
			       hotplug ? ts->hotplug_path : NULL, NULL};
	int ret = 0;

	ret = xst_transact(ts->xs, what, remove_txn, paths);
	if (ret)
		goto out;
	if (hotplug)
		note(ts, "%s: %s, %s and %s removed", what, ts->backend_path,
		     ts->frontend_path, ts->hotplug_path);
	else
		note(ts, "%s: %s and %s removed", what, ts->backend_path,
		     ts->frontend_path);
out:
	return ret;
}

/* ---- running the script ------------------------------------------------- */

/* Run the script v2-style; see xst_run() for the result. */
static int run_v2(const struct ts *ts, const char *action, int *status)
{
	char hp[ENV_LEN], bp[ENV_LEN];
	const char *set[3] = {hp, NULL, NULL};
	struct xst_run r = {
	    .mode = "v2",
	    .script = ts->script,
	    .action = action,
	    .set = set,
	    .timeout = ts->timeout,
	    .quiet = ts->quiet,
	};

	snprintf(hp, sizeof(hp), "HOTPLUG_PATH=%s", ts->hotplug_path);
	/* The v2 spec: BACKEND_PATH is valid for add and remove only. */
	if (!strcmp(action, "add") || !strcmp(action, "remove")) {
		snprintf(bp, sizeof(bp), "BACKEND_PATH=%s", ts->backend_path);
		set[1] = bp;
	}
	return xst_run(&r, status);
}

/* Run the script v1-style, as libxl 4.17's get_hotplug_env(). */
static int run_v1(const struct ts *ts, const char *action, int *status)
{
	char script[ENV_LEN + PATH_MAX], xp[ENV_LEN];
	const char *set[] = {script, "XENBUS_TYPE=vbd", xp,
			     "XENBUS_BASE_PATH=backend", NULL};
	struct xst_run r = {
	    .mode = "v1",
	    .script = ts->script,
	    .action = action,
	    .set = set,
	    .timeout = ts->timeout,
	    .quiet = ts->quiet,
	};
	int ret = 0;
	int n;

	*status = TS_EXIT_INTERNAL;
	n = snprintf(script, sizeof(script), "script=%s", ts->script);
	if (n < 0 || (size_t)n >= sizeof(script)) {
		ret = -ENAMETOOLONG;
		ts_err("script path %s: %s", ts->script, strerror(-ret));
		goto out;
	}
	snprintf(xp, sizeof(xp), "XENBUS_PATH=%s", ts->xenbus_path);
	ret = xst_run(&r, status);
out:
	return ret;
}

/*
 * One step of an attach or detach: the script must run and exit 0.  A
 * non-zero exit is reported here (xst_run() reports the rest).
 */
static int step(const struct ts *ts, bool v1, const char *action)
{
	int status = 0;
	int ret = 0;

	ret = v1 ? run_v1(ts, action, &status) : run_v2(ts, action, &status);
	if (ret)
		goto out;
	if (status) {
		ret = -ECANCELED;
		ts_err("%s %s: %s failed with status %d", v1 ? "v1" : "v2",
		       action, ts->script, status);
		goto out;
	}
out:
	return ret;
}

/* ---- commands ----------------------------------------------------------- */

static int cmd_paths(struct ts *ts)
{
	printf("HOTPLUG_PATH=%s\n", ts->hotplug_path);
	printf("BACKEND_PATH=%s\n", ts->backend_path);
	printf("FRONTEND_PATH=%s\n", ts->frontend_path);
	printf("XENBUS_PATH=%s\n", ts->xenbus_path);
	return 0;
}

static int cmd_v2_create(struct ts *ts)
{
	int ret = 0;

	ret = xst_transact(ts->xs, "v2-create", hotplug_txn, ts);
	if (ret)
		goto out;
	note(ts, "v2-create: %s created (params, script)", ts->hotplug_path);
out:
	return ret;
}

static int cmd_v2_backend(struct ts *ts)
{
	return create_device(ts, false);
}

static int cmd_v2_run(struct ts *ts)
{
	return run_v2(ts, ts->action, &ts->status);
}

static int cmd_v2_attach(struct ts *ts)
{
	char path[PATH_LEN + 16];
	char *version = NULL;
	int status = 0;
	int ret = 0;

	ret = cmd_v2_create(ts);
	if (ret)
		goto out;
	ret = run_v2(ts, "version", &status);
	if (ret)
		goto out;
	if (status) {
		ret = -EPROTONOSUPPORT;
		ts_err("v2 version: %s failed with status %d: script does not "
		       "speak v2",
		       ts->script, status);
		goto out;
	}
	snprintf(path, sizeof(path), "%s/version", ts->hotplug_path);
	ret = xst_read(ts->xs, path, &version);
	if (ret == -ENOENT) {
		ret = -EPROTONOSUPPORT;
		ts_err("v2 version: no %s: script does not speak v2", path);
		goto out;
	}
	if (ret)
		goto out;
	if (strcmp(version, "2")) {
		ret = -EPROTONOSUPPORT;
		ts_err("v2 version: %s is '%.64s', not '2': script does not "
		       "speak v2",
		       path, version);
		goto out;
	}
	ret = step(ts, false, "prepare");
	if (ret)
		goto out;
	ret = cmd_v2_backend(ts);
	if (ret)
		goto out;
	ret = step(ts, false, "add");
	if (ret) {
		/* As libxl: a failed add is followed by remove. */
		step(ts, false, "remove");
		goto out;
	}
out:
	free(version);
	return ret;
}

static int cmd_v2_detach(struct ts *ts)
{
	int ret = 0, r;

	ret = step(ts, false, "remove");
	/* unprepare runs even after a failed remove. */
	r = step(ts, false, "unprepare");
	if (!ret)
		ret = r;
	r = remove_areas(ts, "v2-detach", true);
	if (!ret)
		ret = r;
	return ret;
}

static int cmd_v1_create(struct ts *ts)
{
	return create_device(ts, true);
}

static int cmd_v1_run(struct ts *ts)
{
	return run_v1(ts, ts->action, &ts->status);
}

static int cmd_v1_attach(struct ts *ts)
{
	int ret = 0;

	ret = cmd_v1_create(ts);
	if (ret)
		goto out;
	ret = step(ts, true, "add");
	if (ret) {
		/* xl create tears down (remove); xl block-attach does not. */
		if (!ts->keep_on_failure)
			step(ts, true, "remove");
		goto out;
	}
out:
	return ret;
}

static int cmd_v1_detach(struct ts *ts)
{
	int ret = 0, r;

	ret = step(ts, true, "remove");
	/* libxl removes the device even when remove failed. */
	r = remove_areas(ts, "v1-detach", false);
	if (!ret)
		ret = r;
	return ret;
}

static const struct command commands[] = {
    {"paths", cmd_paths, 0},
    {"v2-create", cmd_v2_create, NEED_SCRIPT | NEED_TARGET | NEED_XS},
    {"v2-backend", cmd_v2_backend, NEED_XS},
    {"v2-run", cmd_v2_run, NEED_SCRIPT | NEED_ACTION | IS_RUN},
    {"v2-attach", cmd_v2_attach, NEED_SCRIPT | NEED_TARGET | NEED_XS},
    {"v2-detach", cmd_v2_detach, NEED_SCRIPT | NEED_XS},
    {"v1-create", cmd_v1_create, NEED_SCRIPT | NEED_TARGET | NEED_XS},
    {"v1-run", cmd_v1_run, NEED_SCRIPT | NEED_ACTION | IS_RUN},
    {"v1-attach", cmd_v1_attach, NEED_SCRIPT | NEED_TARGET | NEED_XS},
    {"v1-detach", cmd_v1_detach, NEED_SCRIPT | NEED_XS},
};

enum {
	OPT_SCRIPT = 256,
	OPT_TARGET,
	OPT_DOMID,
	OPT_DEVID,
	OPT_BDOM,
	OPT_TIMEOUT,
	OPT_VM,
	OPT_QUIET,
	OPT_KEEP,
	OPT_HELP,
};

static const struct option options[] = {
    {"script", required_argument, NULL, OPT_SCRIPT},
    {"target", required_argument, NULL, OPT_TARGET},
    {"domid", required_argument, NULL, OPT_DOMID},
    {"devid", required_argument, NULL, OPT_DEVID},
    {"backend-domid", required_argument, NULL, OPT_BDOM},
    {"timeout", required_argument, NULL, OPT_TIMEOUT},
    {"vm", required_argument, NULL, OPT_VM},
    {"quiet", no_argument, NULL, OPT_QUIET},
    {"keep-on-failure", no_argument, NULL, OPT_KEEP},
    {"help", no_argument, NULL, OPT_HELP},
    {NULL, 0, NULL, 0},
};

/*
 * Parse the command line into TS and *CMD.  Returns 0, 1 for --help (done),
 * or -errno for a usage error (printed).
 */
static int parse_args(int argc, char **argv, struct ts *ts,
		      const struct command **cmd)
{
	const char *name;
	size_t i;
	int c;
	int ret = 0;

	*cmd = NULL;
	opterr = 0;
	while ((c = getopt_long(argc, argv, ":h", options, NULL)) != -1) {
		switch (c) {
		case OPT_SCRIPT:
			ts->script = optarg;
			break;
		case OPT_TARGET:
			ts->target = optarg;
			break;
		case OPT_DOMID:
			ret = parse_uint("--domid", optarg, 0, DOMID_LIMIT - 1,
					 &ts->domid);
			break;
		case OPT_DEVID:
			ret = parse_uint("--devid", optarg, 0, DEVID_MAX,
					 &ts->devid);
			break;
		case OPT_BDOM:
			ret = parse_uint("--backend-domid", optarg, 0,
					 DOMID_LIMIT - 1, &ts->bdom);
			break;
		case OPT_TIMEOUT:
			ret = parse_uint("--timeout", optarg, 1, TIMEOUT_MAX,
					 &ts->timeout);
			break;
		case OPT_VM:
			if (optarg[0] != '/') {
				ret = -EINVAL;
				ts_err("--vm %s: must be a path (/vm/UUID)",
				       optarg);
			}
			ts->vm = optarg;
			break;
		case OPT_QUIET:
			ts->quiet = true;
			break;
		case OPT_KEEP:
			ts->keep_on_failure = true;
			break;
		case 'h':
		case OPT_HELP:
			usage(stdout);
			ret = 1;
			goto out;
		case ':':
			ret = -EINVAL;
			ts_err("option %s needs an argument", argv[optind - 1]);
			goto out;
		default:
			ret = -EINVAL;
			ts_err("unknown option %s (see --help)",
			       argv[optind - 1]);
			goto out;
		}
		if (ret)
			goto out;
	}
	if (optind >= argc) {
		ret = -EINVAL;
		ts_err("no command (see --help)");
		goto out;
	}
	name = argv[optind++];
	for (i = 0; i < sizeof(commands) / sizeof(commands[0]); i++) {
		if (!strcmp(name, commands[i].name))
			*cmd = &commands[i];
	}
	if (!*cmd) {
		ret = -EINVAL;
		ts_err("unknown command '%s' (see --help)", name);
		goto out;
	}
	if ((*cmd)->flags & NEED_ACTION) {
		if (optind >= argc || !argv[optind][0]) {
			ret = -EINVAL;
			ts_err("%s: no ACTION", name);
			goto out;
		}
		ts->action = argv[optind++];
	}
	if (optind < argc) {
		ret = -EINVAL;
		ts_err("%s: unexpected argument '%s'", name, argv[optind]);
		goto out;
	}
	if ((*cmd)->fn == cmd_v1_run && strcmp(ts->action, "add") &&
	    strcmp(ts->action, "remove")) {
		ret = -EINVAL;
		ts_err("v1-run: action '%s': v1 knows only add and remove",
		       ts->action);
		goto out;
	}
	if (((*cmd)->flags & NEED_SCRIPT) && !ts->script) {
		ret = -EINVAL;
		ts_err("%s: --script is required", name);
		goto out;
	}
	if (((*cmd)->flags & NEED_TARGET) && !ts->target) {
		ret = -EINVAL;
		ts_err("%s: --target is required", name);
		goto out;
	}
out:
	return ret;
}

/* Descriptors 0-2 open, so that ours never land there; SIGCHLD default. */
static int sane_process(void)
{
	int fd;
	int ret = 0;

	/* An inherited SIG_IGN would reap the script before we can. */
	signal(SIGCHLD, SIG_DFL);
	for (fd = 0; fd <= 2; fd++) {
		if (fcntl(fd, F_GETFD) >= 0 || errno != EBADF)
			continue;
		if (open("/dev/null", fd == 0 ? O_RDONLY : O_WRONLY) != fd) {
			ret = -EBADF;
			ts_err("open /dev/null as descriptor %d: %s", fd,
			       strerror(-ret));
			goto out;
		}
	}
out:
	return ret;
}

int main(int argc, char **argv)
{
	struct ts ts = {
	    .domid = 1,
	    .devid = 51712,
	    .bdom = 0,
	    .timeout = 40,
	    .status = TS_EXIT_INTERNAL,
	};
	const struct command *cmd = NULL;
	int ret = 0;
	int code = EXIT_FAILURE;

	ret = sane_process();
	if (ret)
		goto out;
	ret = parse_args(argc, argv, &ts, &cmd);
	if (ret == 1) {
		code = EXIT_SUCCESS;
		goto out;
	}
	if (ret) {
		code = EXIT_USAGE;
		goto out;
	}
	/* From here on a *-run command fails as the driver (125). */
	if (cmd->flags & IS_RUN)
		code = TS_EXIT_INTERNAL;
	ret = set_paths(&ts);
	if (ret)
		goto out;
	if (cmd->flags & NEED_XS) {
		ret = xst_open(&ts.xs);
		if (ret)
			goto out;
	}
	ret = cmd->fn(&ts);
	if (cmd->flags & IS_RUN)
		code = ts.status;
	else
		code = ret ? EXIT_FAILURE : EXIT_SUCCESS;
out:
	if (ts.xs)
		xs_close(ts.xs);
	if (fflush(stdout) && code == EXIT_SUCCESS) {
		ts_err("write to stdout: %s", strerror(errno));
		code = EXIT_FAILURE;
	}
	return code;
}
