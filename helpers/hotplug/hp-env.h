/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The hotplug helper's view of its invocation: which action, which
 * interface version, which xenstore paths.  Pure functions, no I/O, so
 * that the unit tests can drive them with any environment.
 */
#ifndef BLKSTACK_HP_ENV_H
#define BLKSTACK_HP_ENV_H

#include <stdbool.h>

#include "blkstack/error.h"

/* XENSTORE_ABS_PATH_MAX from xen/include/public/io/xs_wire.h. */
#define HP_XS_ABS_PATH_MAX 3072
/* XENSTORE_REL_PATH_MAX from the same header. */
#define HP_XS_REL_PATH_MAX 2048

/* Exit codes of blkstack-hotplug (also in docs/libxl-hotplug-interface.txt). */
enum hp_exit {
	HP_EXIT_OK = 0,	    /* the action succeeded */
	HP_EXIT_FAILED = 1, /* the action failed; hotplug-error says why */
	HP_EXIT_USAGE = 2,  /* unknown action, missing or invalid environment */
};

enum hp_action_id {
	HP_VERSION,
	HP_PREPARE,
	HP_ADD,
	HP_REMOVE,
	HP_LOCALATTACH,
	HP_LOCALDETACH,
	HP_UNPREPARE,
};

/* Which calling convention the toolstack used. */
enum hp_iface {
	HP_IFACE_V1 = 1, /* libxl today: add/remove, XENBUS_PATH */
	HP_IFACE_V2 = 2, /* HOTPLUG_PATH, BACKEND_PATH, seven actions */
};

struct hp_action_desc {
	const char *name;
	enum hp_action_id id;
	bool in_v1;	    /* libxl v1 calls it too */
	bool backend_valid; /* v2: BACKEND_PATH is valid for it */
};

/* The action called name, or NULL if there is none. */
const struct hp_action_desc *hp_action_lookup(const char *name);

/* The environment, validated.  Pointers are into the environment. */
struct hp_env {
	enum hp_iface iface;
	const char *hotplug_path; /* v2 */
	const char *backend_path; /* v2, NULL where not valid for the action */
	const char *xenbus_path;  /* v1, may be relative */
};

/* Lookup function for environment variables (getenv in production). */
typedef const char *hp_getenv_fn(const char *name, void *opaque);

/*
 * Choose the interface and validate its paths:
 *   - HOTPLUG_PATH set: v2.  BACKEND_PATH is taken only when the action
 *     declares it valid, and then it must be set.
 *   - else XENBUS_PATH set: v1, and only for actions libxl v1 calls.
 *   - else: a usage error.
 * Returns 0, or -EINVAL with err naming the variable and the reason.
 */
int hp_env_load(struct hp_env *env, const struct hp_action_desc *action,
		hp_getenv_fn *get, void *opaque, struct bks_error *err);

/* How hp_xs_path_check() treats a path. */
enum hp_path_kind {
	HP_PATH_ABSOLUTE, /* must start with '/' */
	HP_PATH_ANY,	  /* absolute, or relative to the caller's domain */
};

/*
 * Check that path is a plain xenstore node path: characters from
 * [A-Za-z0-9_@/-] (the set xenstored accepts), no empty component, no
 * trailing '/', no component starting with '@' (those name special
 * watches), and within the xenstore length limits.  what names the path
 * in the error ("HOTPLUG_PATH").  Returns 0 or -EINVAL.
 */
int hp_xs_path_check(const char *path, enum hp_path_kind kind, const char *what,
		     struct bks_error *err);

#endif /* BLKSTACK_HP_ENV_H */
