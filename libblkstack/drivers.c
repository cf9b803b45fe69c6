/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The built-in drivers (drivers.def), data path included, in the order of
 * the parse-only table (drivers-parse.c); the modules' descs come after
 * them there, and have no entry here (driver-module.c loads them).
 */
#include <string.h>

#include "blkstack/driver.h"

#define BKS_MODULE(n)
#define BKS_DRIVER(n) extern const struct bks_driver bks_driver_##n;
#include "drivers.def"
#undef BKS_DRIVER

const struct bks_driver *const bks_drivers[] = {
#define BKS_DRIVER(n) &bks_driver_##n,
#include "drivers.def"
#undef BKS_DRIVER
    NULL,
};
#undef BKS_MODULE

const struct bks_driver *bks_driver_lookup(const char *name, size_t len)
{
	for (size_t i = 0; bks_drivers[i]; i++) {
		const struct bks_driver *d = bks_drivers[i];

		if (strlen(d->name) == len && memcmp(d->name, name, len) == 0)
			return d;
	}
	return NULL;
}

const struct bks_driver *bks_driver_of(const struct bks_driver_desc *desc)
{
	/* The modules' descs are after every built-in one (drivers.def). */
	for (size_t i = 0; bks_drivers[i] && bks_driver_descs[i]; i++) {
		if (bks_driver_descs[i] == desc)
			return bks_drivers[i];
	}
	return NULL;
}
