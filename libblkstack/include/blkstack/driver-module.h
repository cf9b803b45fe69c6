/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Driver modules: a driver whose data path is a shared object of its own
 * (struct bks_driver_desc's module flag), loaded by the process that opens
 * a layer of it, so that the others never map its client library.
 *
 * The ABI.  A module is one file of libblkstack/drivers/, built as
 * MODULE_DIR/NAME.so; it defines
 *
 *   const struct bks_module bks_module_NAME = {
 *       .abi = BKS_MODULE_ABI,
 *       .driver_size = sizeof(struct bks_driver),
 *       .driver = &bks_driver_NAME,
 *   };
 *
 * and takes every libblkstack function it calls from the program that
 * loads it: the programs that load modules (blkstack-worker, blkstack-img)
 * link those functions and export them (the Makefile's module import
 * list).  A module is built from the same tree as the program that loads
 * it; BKS_MODULE_ABI and driver_size catch a module left from another
 * build.  Bump BKS_MODULE_ABI whenever struct bks_driver, the structures
 * its ops receive, or a function a module calls changes.
 *
 * Where modules are found, first match wins:
 *   1. $BLKSTACK_MODULE_DIR (read with secure_getenv()), if set: only there;
 *   2. DIR/../lib/blkstack/modules, DIR being the running program's own
 *      directory (/proc/self/exe), if NAME.so is there: the build tree
 *      (build/bin/ -> build/lib/blkstack/modules/), and an installed
 *      SBINDIR beside its MODULEDIR (/usr/sbin -> /usr/lib/...);
 *   3. BKS_MODULEDIR, the install path compiled in.
 */
#ifndef BLKSTACK_DRIVER_MODULE_H
#define BLKSTACK_DRIVER_MODULE_H

#include <stddef.h>

#include "blkstack/driver.h"
#include "blkstack/error.h"

#define BKS_MODULE_ABI 1

/* What a module exports, as bks_module_NAME (above). */
struct bks_module {
	unsigned int abi;   /* BKS_MODULE_ABI of the tree it was built from */
	size_t driver_size; /* sizeof(struct bks_driver) there */
	const struct bks_driver *driver;
};

/* Longest path of a module, NUL included. */
#define BKS_MODULE_PATH_MAX 4096

/*
 * Required before a module's driver is used; called by the chain's open
 * path (chain-open.c) for a desc with the module flag.  Finds NAME.so
 * (above), loads it (dlopen, RTLD_NOW: every symbol resolved at once, and
 * RTLD_NODELETE: never unloaded, as client libraries with threads and
 * static destructors need), and checks its bks_module_NAME: the ABI, the
 * size, and a driver of the same name, kind and check as desc.  Loading
 * a module already loaded finds the same one (the dynamic loader keeps
 * the count; the library keeps no table).
 * Returns 0 with *out set, or -errno with err naming the driver, the file
 * and what failed: -ENOENT (no NAME.so where modules are looked for),
 * -ELIBBAD (dlopen or dlsym failed: dlerror()'s text in err), -EPROTO
 * (the ABI, size or desc does not match).
 */
int bks_driver_module_load(const struct bks_driver_desc *desc,
			   const struct bks_driver **out,
			   struct bks_error *err);

/*
 * Optional, for messages and tests: the path bks_driver_module_load()
 * would load for desc into buf (size bytes).  Returns 0, or -ENOENT
 * (nowhere: buf names the compiled-in place looked at last) or
 * -ENAMETOOLONG.
 */
int bks_driver_module_path(const struct bks_driver_desc *desc, char *buf,
			   size_t size);

#endif
