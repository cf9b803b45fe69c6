/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Modules that the loader must refuse (test-driver-module.c), one per
 * BAD_KIND_* the Makefile builds this file with, each as nbd.so in a
 * directory of its own (build/tests/modules/KIND/):
 *   abi    bks_module_nbd of another module ABI;
 *   desc   a driver called nbd that is not the library's nbd (a filter);
 *   nosym  no bks_module_nbd at all.
 */
#include <errno.h>

#include "blkstack/driver-module.h"
#include "blkstack/nbd-target.h"

static int bad_open(void *state, struct bks_layer *self,
		    const struct bks_open_args *args, struct bks_error *err)
{
	(void)state;
	(void)self;
	(void)args;
	return bks_error_setmsg(err, ENOTSUP, "a test module opens nothing");
}

#ifdef BAD_KIND_desc
#define BAD_DESC                                                               \
	{                                                                      \
		.name = "nbd", .kind = BKS_FILTER,                             \
		.usage = "nbd:", .module = true                                \
	}
#else
#define BAD_DESC BKS_NBD_DESC
#endif

static const struct bks_driver bad_driver = {
    .desc = BAD_DESC,
    .open = bad_open,
};

#ifndef BAD_KIND_nosym
const struct bks_module bks_module_nbd = {
#ifdef BAD_KIND_abi
    .abi = BKS_MODULE_ABI + 1,
#else
    .abi = BKS_MODULE_ABI,
#endif
    .driver_size = sizeof(struct bks_driver),
    .driver = &bad_driver,
};
#else
/* Something to export, so that the object is not empty. */
const struct bks_driver *const bks_module_other = &bad_driver;
#endif
