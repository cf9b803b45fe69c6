/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Naming, parsing and resolving the file queue's engine: see
 * include/blkstack/io-engine.h.
 */
#include <errno.h>
#include <liburing.h>
#include <string.h>

#include "blkstack/io-engine.h"

const char *bks_io_engine_name(enum bks_io_engine e)
{
	switch (e) {
	case BKS_IO_ENGINE_AUTO:
		return "auto";
	case BKS_IO_ENGINE_LIBAIO:
		return "libaio";
	case BKS_IO_ENGINE_URING:
		return "io_uring";
	}
	return "?";
}

int bks_io_engine_parse(const char *name, enum bks_io_engine *out,
			struct bks_error *err)
{
	static const enum bks_io_engine all[] = {
	    BKS_IO_ENGINE_AUTO, BKS_IO_ENGINE_LIBAIO, BKS_IO_ENGINE_URING};

	for (size_t i = 0; i < sizeof(all) / sizeof(all[0]); i++) {
		if (strcmp(name, bks_io_engine_name(all[i])) == 0) {
			*out = all[i];
			return 0;
		}
	}
	return bks_error_setmsg(err, EINVAL,
				"io engine '%s': must be auto, io_uring or "
				"libaio",
				name);
}

/* The probe's ring: as large as the drivers' queues (128), so that a
 * limit on ring memory shows here, not at open. */
#define PROBE_ENTRIES 128u

enum bks_io_engine bks_io_engine_resolve(enum bks_io_engine e)
{
	struct io_uring ring;

	if (e != BKS_IO_ENGINE_AUTO)
		return e;
	if (io_uring_queue_init(PROBE_ENTRIES, &ring, 0) < 0)
		return BKS_IO_ENGINE_LIBAIO;
	io_uring_queue_exit(&ring);
	return BKS_IO_ENGINE_URING;
}
