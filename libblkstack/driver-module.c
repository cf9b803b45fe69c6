/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Loading driver modules (driver-module.h): finding NAME.so, dlopen, and
 * the checks of what it exports.  The dynamic loader is the only table of
 * what is loaded: this file keeps no state.
 */
#include <dlfcn.h>
#include <errno.h>
#include <libgen.h>
#include <limits.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "blkstack/driver-module.h"

#ifndef BKS_MODULEDIR
#define BKS_MODULEDIR "/usr/local/lib/blkstack/modules"
#endif

/* "DIR/NAME.so" into buf; -ENAMETOOLONG if it does not fit. */
static int module_file(char *buf, size_t size, const char *dir,
		       const char *name)
{
	int n = snprintf(buf, size, "%s/%s.so", dir, name);

	return n < 0 || (size_t)n >= size ? -ENAMETOOLONG : 0;
}

/* The running program's directory + "/../lib/blkstack/modules" into buf. */
static int beside_exe(char *buf, size_t size)
{
	char exe[PATH_MAX];
	ssize_t n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
	int len;

	if (n <= 0 || (size_t)n >= sizeof(exe) - 1)
		return -ENOENT;
	exe[n] = '\0';
	len = snprintf(buf, size, "%s/../lib/blkstack/modules", dirname(exe));
	return len < 0 || (size_t)len >= size ? -ENAMETOOLONG : 0;
}

int bks_driver_module_path(const struct bks_driver_desc *desc, char *buf,
			   size_t size)
{
	const char *env = secure_getenv("BLKSTACK_MODULE_DIR");
	char dir[BKS_MODULE_PATH_MAX];
	int rc;

	if (env && env[0]) {
		rc = module_file(buf, size, env, desc->name);
		if (rc < 0)
			return rc;
		return access(buf, F_OK) == 0 ? 0 : -ENOENT;
	}
	if (beside_exe(dir, sizeof(dir)) == 0 &&
	    module_file(buf, size, dir, desc->name) == 0 &&
	    access(buf, F_OK) == 0)
		return 0;
	rc = module_file(buf, size, BKS_MODULEDIR, desc->name);
	if (rc < 0)
		return rc;
	return access(buf, F_OK) == 0 ? 0 : -ENOENT;
}

/* The module's driver against the library's desc of it. */
static int module_check(const struct bks_driver_desc *desc,
			const struct bks_module *m, const char *path,
			struct bks_error *err)
{
	const struct bks_driver *d = m->driver;

	if (m->abi != BKS_MODULE_ABI || m->driver_size != sizeof(*d))
		return bks_error_setmsg(
		    err, EPROTO,
		    "driver %s: module %s: built for module ABI %u (driver "
		    "size %zu), this program has %u (%zu): a module of "
		    "another build",
		    desc->name, path, m->abi, m->driver_size, BKS_MODULE_ABI,
		    sizeof(*d));
	if (!d || !d->name || strcmp(d->name, desc->name) != 0 ||
	    d->kind != desc->kind || d->check != desc->check || !d->module ||
	    !d->open)
		return bks_error_setmsg(err, EPROTO,
					"driver %s: module %s: its driver is "
					"not the %s the library knows",
					desc->name, path, desc->name);
	return 0;
}

int bks_driver_module_load(const struct bks_driver_desc *desc,
			   const struct bks_driver **out, struct bks_error *err)
{
	char path[BKS_MODULE_PATH_MAX];
	char sym[64];
	const struct bks_module *m;
	void *h = NULL;
	int rc;

	*out = NULL;
	if (!desc->module)
		return bks_error_setmsg(err, EINVAL, "driver %s: not a module",
					desc->name);
	rc = bks_driver_module_path(desc, path, sizeof(path));
	if (rc == -ENAMETOOLONG)
		return bks_error_set(err, ENAMETOOLONG,
				     "driver %s: module path", desc->name);
	if (rc < 0)
		return bks_error_setmsg(
		    err, ENOENT,
		    "driver %s: no module %s (set BLKSTACK_MODULE_DIR, or "
		    "install blkstack's modules)",
		    desc->name, path);
	h = dlopen(path, RTLD_NOW | RTLD_LOCAL | RTLD_NODELETE);
	if (!h) {
		const char *why = dlerror();

		return bks_error_setmsg(err, ELIBBAD,
					"driver %s: dlopen %s: %s", desc->name,
					path, why ? why : "failed");
	}
	snprintf(sym, sizeof(sym), "bks_module_%s", desc->name);
	m = dlsym(h, sym);
	if (!m) {
		rc = bks_error_setmsg(err, ELIBBAD,
				      "driver %s: module %s has no %s",
				      desc->name, path, sym);
		goto out;
	}
	rc = module_check(desc, m, path, err);
	if (rc < 0)
		goto out;
	*out = m->driver;
out:
	/* A module stays loaded (RTLD_NODELETE): this only drops the count. */
	dlclose(h);
	return rc;
}
