/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* Range locks and write watches (chain.h): stubs, being written. */
#include <errno.h>

#include "chain-internal.h"

int bks_chain_lock_range(struct bks_chain *chain, struct bks_range_lock *lk)
{
	(void)chain;
	(void)lk;
	return -ENOSYS;
}

void bks_chain_unlock_range(struct bks_chain *chain, struct bks_range_lock *lk)
{
	(void)chain;
	(void)lk;
}

void bks_chain_watch_writes(struct bks_chain *chain, struct bks_write_watch *w)
{
	(void)chain;
	(void)w;
}

void bks_chain_unwatch_writes(struct bks_chain *chain,
			      struct bks_write_watch *w)
{
	(void)chain;
	(void)w;
}
