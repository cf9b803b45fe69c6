/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* Action table and environment validation: see hp-env.h. */
#include <errno.h>
#include <stddef.h>
#include <string.h>

#include "hp-env.h"

static const struct hp_action_desc actions[] = {
    {.name = "version", .id = HP_VERSION},
    {.name = "prepare", .id = HP_PREPARE},
    {.name = "add", .id = HP_ADD, .in_v1 = true, .backend_valid = true},
    {.name = "remove", .id = HP_REMOVE, .in_v1 = true, .backend_valid = true},
    {.name = "localattach", .id = HP_LOCALATTACH},
    {.name = "localdetach", .id = HP_LOCALDETACH},
    {.name = "unprepare", .id = HP_UNPREPARE},
};

const struct hp_action_desc *hp_action_lookup(const char *name)
{
	if (!name)
		return NULL;
	for (size_t i = 0; i < sizeof(actions) / sizeof(actions[0]); i++) {
		if (strcmp(actions[i].name, name) == 0)
			return &actions[i];
	}
	return NULL;
}

static bool xs_path_char(char c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
	       (c >= '0' && c <= '9') || c == '-' || c == '_' || c == '@' ||
	       c == '/';
}

int hp_xs_path_check(const char *path, enum hp_path_kind kind, const char *what,
		     struct bks_error *err)
{
	size_t len, max;

	if (!path || !*path)
		return bks_error_setmsg(err, EINVAL, "%s is empty", what);
	len = strlen(path);
	max = path[0] == '/' ? HP_XS_ABS_PATH_MAX : HP_XS_REL_PATH_MAX;
	if (len > max)
		return bks_error_setmsg(err, EINVAL,
					"%s is %zu characters long; xenstore "
					"allows at most %zu",
					what, len, max);
	if (kind == HP_PATH_ABSOLUTE && path[0] != '/')
		return bks_error_setmsg(
		    err, EINVAL, "%s is not an absolute xenstore path", what);
	for (size_t i = 0; i < len; i++) {
		if (!xs_path_char(path[i]))
			return bks_error_setmsg(err, EINVAL,
						"%s has a character xenstore "
						"does not allow at offset %zu",
						what, i);
	}
	/* Walk the components: none empty, none starting with '@'. */
	for (const char *p = path[0] == '/' ? path + 1 : path;;) {
		const char *slash = strchr(p, '/');
		size_t clen = slash ? (size_t)(slash - p) : strlen(p);

		if (clen == 0)
			return bks_error_setmsg(err, EINVAL,
						"%s has an empty component at "
						"offset %zu",
						what, (size_t)(p - path));
		if (p[0] == '@')
			return bks_error_setmsg(err, EINVAL,
						"%s names a special node "
						"(component starting with '@')",
						what);
		if (!slash)
			break;
		p = slash + 1;
	}
	return 0;
}

/* The variable's value, with an empty value counted as unset. */
static const char *lookup(hp_getenv_fn *get, void *opaque, const char *name)
{
	const char *v = get(name, opaque);

	return v && *v ? v : NULL;
}

int hp_env_load(struct hp_env *env, const struct hp_action_desc *action,
		hp_getenv_fn *get, void *opaque, struct bks_error *err)
{
	const char *hotplug = lookup(get, opaque, "HOTPLUG_PATH");
	const char *xenbus = lookup(get, opaque, "XENBUS_PATH");
	int rc;

	memset(env, 0, sizeof(*env));
	if (hotplug) {
		env->iface = HP_IFACE_V2;
		env->hotplug_path = hotplug;
		rc = hp_xs_path_check(hotplug, HP_PATH_ABSOLUTE, "HOTPLUG_PATH",
				      err);
		if (rc < 0)
			return rc;
		if (!action->backend_valid)
			return 0;
		env->backend_path = lookup(get, opaque, "BACKEND_PATH");
		if (!env->backend_path)
			return bks_error_setmsg(err, EINVAL,
						"BACKEND_PATH is not set; "
						"'%s' needs it",
						action->name);
		return hp_xs_path_check(env->backend_path, HP_PATH_ABSOLUTE,
					"BACKEND_PATH", err);
	}
	if (xenbus) {
		env->iface = HP_IFACE_V1;
		env->xenbus_path = xenbus;
		rc = hp_xs_path_check(xenbus, HP_PATH_ANY, "XENBUS_PATH", err);
		if (rc < 0)
			return rc;
		if (!action->in_v1)
			return bks_error_setmsg(
			    err, EINVAL,
			    "'%s' is a v2 action, but "
			    "HOTPLUG_PATH is not set "
			    "(XENBUS_PATH selects v1, "
			    "which has only add and remove)",
			    action->name);
		return 0;
	}
	return bks_error_setmsg(err, EINVAL,
				"neither HOTPLUG_PATH (v2) nor XENBUS_PATH "
				"(v1) is set: not called by a toolstack?");
}
