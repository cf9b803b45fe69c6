/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The one export interface: what every export's handle does the same way
 * (starting once, holds as chain drains, shutdown after the holds), so
 * that an export implements only its ops.  See include/blkstack/export.h.
 */
#include <errno.h>
#include <string.h>

#include "blkstack/export.h"

void bks_export_init(struct bks_export *exp, const struct bks_export_ops *ops,
		     void *state, struct bks_chain *chain)
{
	memset(exp, 0, sizeof(*exp));
	exp->ops = ops;
	exp->state = state;
	exp->chain = chain;
}

int bks_export_start(struct bks_export *exp, struct bks_error *err)
{
	int rc;

	if (exp->started)
		return bks_error_setmsg(err, EALREADY, "%s: already started",
					exp->ops->name);
	rc = exp->ops->start(exp->state, err);
	if (rc == 0)
		exp->started = true;
	return rc;
}

int bks_export_hold(struct bks_export *exp, void (*drained)(void *arg),
		    void *arg)
{
	int rc;

	if (exp->stopping)
		return -ESHUTDOWN;
	rc = bks_chain_drain_begin(exp->chain, drained, arg);
	if (rc < 0)
		return rc;
	if (exp->holds++ == 0 && exp->ops->hold)
		exp->ops->hold(exp->state);
	return 0;
}

void bks_export_resume(struct bks_export *exp)
{
	if (exp->holds == 0)
		return;
	if (--exp->holds == 0 && exp->ops->resume)
		exp->ops->resume(exp->state);
	bks_chain_drain_end(exp->chain);
}

unsigned int bks_export_holds(const struct bks_export *exp)
{
	return exp->holds;
}

void bks_export_shutdown(struct bks_export *exp, void (*done)(void *arg),
			 void *arg)
{
	exp->stopping = true;
	while (exp->holds)
		bks_export_resume(exp);
	exp->ops->shutdown(exp->state, done, arg);
}

void bks_export_get_stats(const struct bks_export *exp,
			  struct bks_export_stats *out)
{
	memset(out, 0, sizeof(*out));
	if (exp->ops->stats)
		exp->ops->stats(exp->state, out);
}

const char *bks_export_name(const struct bks_export *exp)
{
	return exp->ops->name;
}

void bks_export_free(struct bks_export *exp)
{
	if (exp)
		exp->ops->free(exp->state);
}
