/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The hotplug helper's inside, shared by blkstack-hotplug.c (entry,
 * version, failure reporting), hp-actions.c (the actions that run a
 * worker and a dom0 device) and hp-error.c (the hotplug-error node).
 */
#ifndef BLKSTACK_HP_H
#define BLKSTACK_HP_H

#include "blkstack/error.h"
#include "hp-env.h"
#include "hp-xs.h"

/* Longest path we build: a validated base plus a short child name. */
#define HP_PATH_BUF (HP_XS_ABS_PATH_MAX + 64)

/* One invocation. */
struct hp {
	const struct hp_action_desc *action;
	struct hp_env env;
	struct xs_handle *xs; /* NULL until connected */
	struct bks_error err;
	int lock_fd; /* per-device lock, -1 until taken */
	/*
	 * The backend directory turned out not to be this disk's (another
	 * disk's, or inconsistent): failure reports stay out of it.
	 */
	bool backend_foreign;
};

/*
 * An action handler.  Called once, after the environment was validated
 * and xenstored connected.  Returns 0 on success or -errno with hp->err
 * set; it must leave xenstore and the host as it found them, or in a
 * state that a rerun of the same action (or the matching undo action)
 * completes.
 */
typedef int hp_action_fn(struct hp *hp);

/* hp-actions.c */
hp_action_fn hp_act_prepare;
hp_action_fn hp_act_add;
hp_action_fn hp_act_remove;
hp_action_fn hp_act_localattach;
hp_action_fn hp_act_localdetach;
hp_action_fn hp_act_unprepare;

#endif /* BLKSTACK_HP_H */
