/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Counters: a chain's framework counters, and the drivers' own (the stats
 * op) emitted through a struct bks_stats_out.  See chain.h and driver.h.
 */
#include "chain-internal.h"

void bks_stats_u64(struct bks_stats_out *out, const char *key, uint64_t v)
{
	out->u64(out, key, v);
}

void bks_stats_str(struct bks_stats_out *out, const char *key, const char *v)
{
	out->str(out, key, v);
}

void bks_stats_begin(struct bks_stats_out *out, const char *key)
{
	out->begin(out, key);
}

void bks_stats_end(struct bks_stats_out *out)
{
	out->end(out);
}

void bks_layer_emit_stats(struct bks_layer *layer, struct bks_stats_out *out)
{
	if (!layer->drv->stats)
		return;
	out->begin(out, layer->drv->name);
	layer->drv->stats(layer->state, layer, out);
	out->end(out);
}

uint64_t bks_chain_in_flight(const struct bks_chain *chain)
{
	return chain->in_flight + chain->subreqs + chain->busy;
}

uint64_t bks_chain_oldest_ns(const struct bks_chain *chain)
{
	return chain->age_head ? chain->age_head->submit_ns : 0;
}

uint64_t bks_chain_retries(const struct bks_chain *chain)
{
	return chain->retries;
}

void bks_chain_get_stats(const struct bks_chain *chain,
			 struct bks_chain_stats *out)
{
	out->in_flight = chain->in_flight;
	out->retries = chain->retries;
	out->subreqs = chain->subreqs;
	out->busy = chain->busy;
	out->parked = chain->parked;
	out->parked_total = chain->parked_total;
	out->drains = chain->drains;
	out->draining = chain->drain_depth;
}
