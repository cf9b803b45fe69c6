/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The hotplug-error node the toolstack reads: where it goes, writing it
 * for a failed action (blkstack-hotplug.c) and clearing the one an
 * earlier failed attempt left (every successful action).  See
 * hp-error.h.
 */
#include "hp-error.h"
#include "hp-xs.h"

/*
 * The directories that get our hotplug-error node: HOTPLUG_PATH (v2),
 * also BACKEND_PATH where the action has it (libxl reads the node there),
 * and XENBUS_PATH in v1.  Fills dirs and returns how many.
 */
static int error_dirs(const struct hp *hp, const char *dirs[2])
{
	int n = 0;

	if (hp->env.iface == HP_IFACE_V2) {
		dirs[n++] = hp->env.hotplug_path;
		if (hp->env.backend_path && !hp->backend_foreign)
			dirs[n++] = hp->env.backend_path;
	} else if (!hp->backend_foreign) {
		dirs[n++] = hp->env.xenbus_path;
	}
	return n;
}

int hp_clear_stale_error(struct hp *hp, xs_transaction_t t)
{
	char path[HP_PATH_BUF];
	const char *dirs[2];
	int n = error_dirs(hp, dirs), rc;

	for (int i = 0; i < n; i++) {
		rc = hp_child_path(path, sizeof(path), dirs[i], "hotplug-error",
				   &hp->err);
		if (rc < 0)
			return rc;
		rc = hp_xs_rm(hp->xs, t, path, &hp->err);
		if (rc < 0)
			return rc;
	}
	return 0;
}

struct error_note {
	struct hp *hp;
	const char *msg;
};

static int error_txn(struct xs_handle *xs, xs_transaction_t t, void *arg,
		     struct bks_error *err)
{
	struct error_note *note = arg;
	char path[HP_PATH_BUF];
	const char *dirs[2];
	int n = error_dirs(note->hp, dirs), rc;

	for (int i = 0; i < n; i++) {
		/* Never create a directory the toolstack did not make. */
		rc = hp_xs_exists(xs, t, dirs[i], err);
		if (rc <= 0)
			continue;
		rc = hp_child_path(path, sizeof(path), dirs[i], "hotplug-error",
				   err);
		if (rc == 0)
			rc = hp_xs_write(xs, t, path, note->msg, err);
		if (rc < 0)
			return rc;
		if (note->hp->env.iface != HP_IFACE_V1)
			continue;
		/* v1: as Xen's own scripts do, for udev-style waiters. */
		rc = hp_child_path(path, sizeof(path), dirs[i],
				   "hotplug-status", err);
		if (rc == 0)
			rc = hp_xs_write(xs, t, path, "error", err);
		if (rc < 0)
			return rc;
	}
	return 0;
}

int hp_error_record(struct hp *hp, const char *msg, struct bks_error *err)
{
	struct error_note note = {.hp = hp, .msg = msg};

	return hp_xs_transaction(hp->xs, error_txn, &note, err);
}
