/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Find a sibling program: the blkstack program that stands beside the
 * running one (a build tree, or an installation's sbin), never one found
 * through PATH.
 */
#ifndef BLKSTACK_SIBLING_H
#define BLKSTACK_SIBLING_H

#include <stddef.h>

#include "blkstack/error.h"

/*
 * DIR/prog into buf, where DIR is the directory of /proc/self/exe; if
 * that is not an executable file and fallback_dir is not NULL,
 * fallback_dir/prog.  Returns 0, or -errno with err set (naming the last
 * path tried).
 */
int sibling_path(char *buf, size_t size, const char *prog,
		 const char *fallback_dir, struct bks_error *err);

#endif /* BLKSTACK_SIBLING_H */
