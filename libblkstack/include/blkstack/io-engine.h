/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Which kernel interface the file queue (aioq.h) uses for its reads,
 * writes and flushes: io_uring or libaio (Linux native aio).
 *
 * BKS_IO_ENGINE_AUTO takes io_uring when a ring can be set up (it cannot
 * with the io_uring_disabled sysctl, under a seccomp filter or on an old
 * kernel: any io_uring_queue_init() failure), else libaio.  A forced
 * engine that cannot be set up fails the open instead.
 */
#ifndef BLKSTACK_IO_ENGINE_H
#define BLKSTACK_IO_ENGINE_H

#include "blkstack/error.h"

enum bks_io_engine {
	BKS_IO_ENGINE_AUTO = 0, /* io_uring if it works here, else libaio */
	BKS_IO_ENGINE_LIBAIO,
	BKS_IO_ENGINE_URING,
};

/*
 * "auto", "libaio" or "io_uring" (the spelling of the worker's
 * --io-engine option and conf key), "?" for a value outside the enum.
 * Optional; anyone may call it.
 */
const char *bks_io_engine_name(enum bks_io_engine e);

/*
 * Parse name (one of the spellings above) into *out.  Returns 0, or
 * -EINVAL with err set naming the value.  Optional; the worker calls it
 * for --io-engine and the conf key io-engine.
 */
int bks_io_engine_parse(const char *name, enum bks_io_engine *out,
			struct bks_error *err);

/*
 * What e means on this machine now: AUTO becomes BKS_IO_ENGINE_URING when
 * a ring of the drivers' queue depth (128) can be set up (probed, then
 * torn down), else
 * BKS_IO_ENGINE_LIBAIO; a forced engine is returned as it is (its own
 * setup reports whether it works).  Never fails, never returns AUTO.
 * Optional; the worker calls it once at start so that what it reports
 * ("io_engine" in info) is what its chains' queues use.
 */
enum bks_io_engine bks_io_engine_resolve(enum bks_io_engine e);

#endif /* BLKSTACK_IO_ENGINE_H */
