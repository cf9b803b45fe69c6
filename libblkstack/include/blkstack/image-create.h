/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Creating a new image file (qcow2 or VHD), for snapshots (the overlay)
 * and for blkstack-img create.
 */
#ifndef BLKSTACK_IMAGE_CREATE_H
#define BLKSTACK_IMAGE_CREATE_H

#include <stdint.h>

#include "blkstack/error.h"

/*
 * Create a new image at path (O_CREAT | O_EXCL: it never overwrites;
 * mode 0644, as blkstack-img create) of format "qcow2" or "vhd" (a VHD is
 * differencing when backed, else dynamic), with backing (a one-layer
 * chain string: "qcow2:/abs/b.qcow2", "vhd:/abs/b.vhd", "aio:/abs/b.raw"
 * or another path sink for a raw file; its driver gives the backing
 * format; its path must be absolute and is stored as given) or NULL, and
 * size bytes (0 with a backing: the backing's virtual size, read from its
 * header, or its length for a raw file; 0 without one is -EINVAL).  A
 * VHD's backing must be a VHD (-EINVAL otherwise) of the same size.
 * Written and fsynced (the file and its directory) before it returns.
 * On any failure (ENOSPC, ...) the partial file is removed; err names the
 * path.  Blocking: callers run it outside the data path (the worker runs
 * it before draining).  Returns 0 or -errno (-EEXIST: path exists).
 */
int bks_image_create(const char *path, const char *format, const char *backing,
		     uint64_t size, struct bks_error *err);

#endif /* BLKSTACK_IMAGE_CREATE_H */
