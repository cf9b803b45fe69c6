/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The parse-only table of built-in drivers (drivers.def): names, kinds,
 * usage lines, args rules and check ops (the modules' too), and nothing of
 * the data path, so
 * that a program that only parses chains links none of it (no libaio).
 * See struct bks_driver_desc in driver.h.
 */
#include <string.h>

#include "blkstack/driver.h"

#define BKS_DRIVER(n) extern const struct bks_driver_desc bks_desc_##n;
#define BKS_MODULE(n) BKS_DRIVER(n)
#include "drivers.def"
#undef BKS_DRIVER

const struct bks_driver_desc *const bks_driver_descs[] = {
#define BKS_DRIVER(n) &bks_desc_##n,
#include "drivers.def"
#undef BKS_DRIVER
#undef BKS_MODULE
    NULL,
};

const struct bks_driver_desc *bks_driver_desc_lookup(const char *name,
						     size_t len)
{
	for (size_t i = 0; bks_driver_descs[i]; i++) {
		const struct bks_driver_desc *d = bks_driver_descs[i];

		if (strlen(d->name) == len && memcmp(d->name, name, len) == 0)
			return d;
	}
	return NULL;
}
