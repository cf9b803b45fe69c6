/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * blkstack-img map: where the data of an image's chain is, as the
 * worker's drivers see it (block status through libblkstack).
 */
#ifndef BLKSTACK_IMG_MAP_H
#define BLKSTACK_IMG_MAP_H

#include <stdbool.h>
#include <stdio.h>

#include "blkstack/error.h"

/* How map prints. */
enum img_map_output {
	IMG_MAP_HUMAN, /* qemu-img map's default: the data ranges, a file each
			*/
	IMG_MAP_JSON,  /* qemu-img map --output=json's list of extents */
};

/*
 * Open the chain of the image at path (an absolute path) of format fmt
 * ("raw", "qcow2", "vhd": the sink aio:, qcow2:, vhd:) read-only with
 * its backing files, as the worker would, ask block status over the
 * whole disk and print it on out.  Extents are merged where neighbours
 * say the same; depth, present, zero and data mean what they mean to
 * qemu-img map (0 the image itself, 1 its backing file, ...; a range no
 * image holds is not present, at the depth of the last image).
 * Returns 0, or -errno with err set (opening the chain, a block status
 * that failed or did not answer within IMG_MAP_TIMEOUT_NS, writing out).
 */
int img_map(const char *path, const char *fmt, enum img_map_output output,
	    FILE *out, struct bks_error *err);

/* Longest wait for one block status answer. */
#define IMG_MAP_TIMEOUT_NS (60ull * 1000000000ull)

#endif /* BLKSTACK_IMG_MAP_H */
