/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The hotplug-error node(s) of an action (hp-error.c): HOTPLUG_PATH in
 * v2, also BACKEND_PATH where the action has it (libxl reads the node
 * there), XENBUS_PATH in v1; never in a backend directory that is not
 * this disk's (hp->backend_foreign).
 */
#ifndef BLKSTACK_HP_ERROR_H
#define BLKSTACK_HP_ERROR_H

#include "blkstack/error.h"
#include "hp.h"

/*
 * Transaction body run by a successful action: remove a hotplug-error
 * left by an earlier failed attempt, so that a retried action leaves the
 * same state as a first successful one.  Returns 0 or -errno with hp->err
 * set.
 */
int hp_clear_stale_error(struct hp *hp, xs_transaction_t t);

/*
 * Write msg as the hotplug-error of the current action (in v1 also
 * hotplug-status = error), in its own transaction, into the directories
 * that exist (never creating one the toolstack did not make).  Returns 0
 * or -errno with err set.
 */
int hp_error_record(struct hp *hp, const char *msg, struct bks_error *err);

#endif /* BLKSTACK_HP_ERROR_H */
