/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * blkstack-hotplug ACTION
 *
 * The compiled side of the block-stack hotplug script.  libxl (through
 * hotplug/block-stack) runs it with one action and the xenstore paths in
 * the environment; docs/libxl-hotplug-interface.txt is the contract.
 *
 * Every failure is reported three ways: one line on stderr (libxl copies
 * it into its log), syslog, and the hotplug-error node(s) the toolstack
 * reads.  The exit code says what kind of failure it was (enum hp_exit).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <syslog.h>
#include <unistd.h>

#include "blkstack/error.h"
#include "hp-error.h"
#include "hp.h"
#include "version.h"

#define PROG "blkstack-hotplug"

/* ---- version ----------------------------------------------------------- */

static int version_txn(struct xs_handle *xs, xs_transaction_t t, void *arg,
		       struct bks_error *err)
{
	struct hp *hp = arg;
	char path[HP_PATH_BUF];
	int rc;

	rc = hp_xs_exists(xs, t, hp->env.hotplug_path, err);
	if (rc < 0)
		return rc;
	if (rc == 0)
		return bks_error_setmsg(err, ENOENT,
					"HOTPLUG_PATH %s does not exist in "
					"xenstore (the toolstack creates it "
					"before calling the script)",
					hp->env.hotplug_path);
	rc = hp_child_path(path, sizeof(path), hp->env.hotplug_path, "version",
			   err);
	if (rc < 0)
		return rc;
	rc = hp_xs_write(xs, t, path, "2", err);
	if (rc < 0)
		return rc;
	return hp_clear_stale_error(hp, t);
}

/*
 * version: HOTPLUG_PATH/version = 2.  Idempotent: it only ever writes 2.
 * Names blkstack's version on stderr (libxl's log), the one --version of
 * the other programs prints.
 */
static int act_version(struct hp *hp)
{
	int rc = hp_xs_transaction(hp->xs, version_txn, hp, &hp->err);

	if (rc == 0)
		fprintf(stderr, PROG ": blkstack %s, hotplug interface 2\n",
			bks_version());
	return rc;
}

/* The v2 actions; v1 add and remove are composed from them (hp-actions.c). */
static hp_action_fn *const handlers[] = {
    [HP_VERSION] = act_version,
    [HP_PREPARE] = hp_act_prepare,
    [HP_ADD] = hp_act_add,
    [HP_REMOVE] = hp_act_remove,
    [HP_LOCALATTACH] = hp_act_localattach,
    [HP_LOCALDETACH] = hp_act_localdetach,
    [HP_UNPREPARE] = hp_act_unprepare,
};

/* ---- failure reporting ------------------------------------------------- */

/* Print one line to stderr and syslog. */
static void say(int prio, const char *msg)
{
	fprintf(stderr, PROG ": %s\n", msg);
	syslog(prio, "%s", msg);
}

/*
 * Report hp->err for the current action: stderr, syslog, and (when
 * connected) the hotplug-error nodes.  Returns the exit code.
 */
static int fail(struct hp *hp, enum hp_exit code)
{
	char msg[BKS_ERROR_MSG_MAX + 32];
	struct bks_error werr = {0};

	snprintf(msg, sizeof(msg), "%s: %s", hp->action->name, hp->err.msg);
	say(LOG_ERR, msg);
	if (hp->xs) {
		if (hp_error_record(hp, msg, &werr) < 0) {
			bks_error_prepend(&werr,
					  "%s: could not record "
					  "hotplug-error: ",
					  hp->action->name);
			say(LOG_ERR, werr.msg);
		}
	}
	return code;
}

static void usage(FILE *f)
{
	fprintf(f, "usage: " PROG " ACTION\n"
		   "  ACTION: version prepare add remove localattach "
		   "localdetach unprepare\n"
		   "  v2: HOTPLUG_PATH (and BACKEND_PATH for add/remove)\n"
		   "  v1: XENBUS_PATH (add/remove only)\n"
		   "See docs/libxl-hotplug-interface.txt.\n");
}

static const char *env_lookup(const char *name, void *opaque)
{
	(void)opaque;
	return getenv(name);
}

int main(int argc, char **argv)
{
	struct hp hp = {.lock_fd = -1};
	hp_action_fn *run;
	int rc, code = HP_EXIT_OK;

	openlog(PROG, LOG_PID, LOG_DAEMON);
	if (argc == 2 && strcmp(argv[1], "--help") == 0) {
		usage(stdout);
		goto out;
	}
	if (argc == 2 && strcmp(argv[1], "--version") == 0) {
		if (bks_version_print(stdout, PROG) < 0)
			code = HP_EXIT_FAILED;
		goto out;
	}
	if (argc != 2) {
		usage(stderr);
		code = HP_EXIT_USAGE;
		goto out;
	}
	hp.action = hp_action_lookup(argv[1]);
	if (!hp.action) {
		char name[64];

		snprintf(name, sizeof(name), "%s", argv[1]);
		bks_sanitize_line(name);
		bks_error_setmsg(&hp.err, EINVAL, "unknown action '%s'", name);
		say(LOG_ERR, hp.err.msg);
		code = HP_EXIT_USAGE;
		goto out;
	}
	rc = hp_env_load(&hp.env, hp.action, env_lookup, NULL, &hp.err);
	if (rc < 0) {
		code = fail(&hp, HP_EXIT_USAGE);
		goto out;
	}
	hp.xs = hp_xs_open(&hp.err);
	if (!hp.xs) {
		code = fail(&hp, HP_EXIT_FAILED);
		goto out;
	}
	run = handlers[hp.action->id];
	if (!run) {
		bks_error_setmsg(&hp.err, ENOSYS,
				 "not implemented in this version of blkstack");
		code = fail(&hp, HP_EXIT_FAILED);
		goto out;
	}
	rc = run(&hp);
	if (rc < 0)
		code = fail(&hp, HP_EXIT_FAILED);
out:
	if (hp.lock_fd >= 0)
		close(hp.lock_fd); /* releases the per-device lock */
	if (hp.xs)
		xs_close(hp.xs);
	closelog();
	return code;
}
