/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The supervisor's word to the toolstack: when it gives up on a
 * hotplug-managed disk's worker, it writes the reason to the xenstore
 * node the hotplug helper passed (--xs-error-path, the backend's
 * hotplug-error; see helpers/hotplug/hp-error.c), through libxenstore.
 */
#ifndef BLKSTACK_SUP_XS_H
#define BLKSTACK_SUP_XS_H

#include "blkstack/error.h"

/*
 * Write msg to path (a xenstore path; a relative one, as v1's XENBUS_PATH
 * is, resolves in this domain as the hotplug helper's does), creating only
 * the node:
 * its parent must exist (a backend the toolstack removed meanwhile is
 * left alone: -ENOENT).  Returns 0 or -errno with err set.
 */
int sup_xs_write_error(const char *path, const char *msg,
		       struct bks_error *err);

#endif /* BLKSTACK_SUP_XS_H */
