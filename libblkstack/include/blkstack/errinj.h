/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The error: filter -- fault injection, for testing what sits above it.
 *
 *   error:[ops=OPS][,errno=E][,rate=R][,after=N][,count=N][,seed=N]
 *
 *   ops    which requests may fail: "all" (the default) or op names joined
 *          with "+": read, write, flush, discard, write-zeroes.
 *   errno  the error they fail with: a name (EIO, ENOSPC, ...) or a
 *          number; default EIO.
 *   rate   the probability that an eligible request fails: 0.25, 25% or
 *          1:4; default 1 (every one).
 *   after  let the first N eligible requests through first; default 0.
 *   count  fail at most N requests, then let everything through; default
 *          no limit.
 *   seed   seed of the layer's own pseudo-random generator, so that a run
 *          is reproducible; default 0.
 *
 * e.g. "error:ops=write,errno=ENOSPC,after=100,count=1|ram:1G" fails the
 * 101st write with ENOSPC and nothing else.  A failed request never
 * reaches the layer below.  Decisions depend only on the sequence of
 * eligible requests, never on time.
 */
#ifndef BLKSTACK_ERRINJ_H
#define BLKSTACK_ERRINJ_H

#include <stdint.h>

#include "blkstack/driver.h"

struct bks_errinj_stats {
	uint64_t seen;	   /* eligible requests (of the selected ops) */
	uint64_t injected; /* of which failed by the layer */
};

/*
 * The counters of an error: layer (bks_chain_find(chain, "error")).
 * Returns 0, or -EINVAL if layer is not an error: layer.
 */
int bks_errinj_get_stats(struct bks_layer *layer, struct bks_errinj_stats *out);

#endif /* BLKSTACK_ERRINJ_H */
