/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* The registry of built-in drivers: one line per file in drivers/. */
#include <string.h>

#include "blkstack/driver.h"

extern const struct bks_driver bks_driver_aio;
extern const struct bks_driver bks_driver_sync;
extern const struct bks_driver bks_driver_ram;
extern const struct bks_driver bks_driver_log;
extern const struct bks_driver bks_driver_error;

const struct bks_driver *const bks_drivers[] = {
    &bks_driver_aio, &bks_driver_sync,	&bks_driver_ram,
    &bks_driver_log, &bks_driver_error, NULL,
};

const struct bks_driver *bks_driver_lookup(const char *name, size_t len)
{
	for (size_t i = 0; i < sizeof(bks_drivers) / sizeof(bks_drivers[0]);
	     i++) {
		const struct bks_driver *d = bks_drivers[i];

		if (d && strlen(d->name) == len &&
		    memcmp(d->name, name, len) == 0)
			return d;
	}
	return NULL;
}
