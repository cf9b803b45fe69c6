/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * dom0's policy on what may become a guest disk, checked by prepare on the
 * images the disk's worker actually holds open (hp-share.h), so that no
 * path trick (a symlink swapped after a check, a relative path) gets
 * round it.
 *
 * Always refused:
 *   - a block device dom0 uses: mounted (it or a partition of it), held by
 *     another device (device-mapper, md, ...), swap, or otherwise claimed
 *     exclusively, i.e. one that an O_EXCL open finds busy, as Xen's own
 *     block script refuses a device in use;
 *   - a dom0 block device blkstack itself made for a disk (a loop device
 *     on a file in the run directory, a kernel NBD device whose backend is
 *     blkstack's).
 * Refused by the chain layer before (docs/chains.txt): relative paths,
 * anything but regular files and block devices.
 *
 * When /etc/blkstack.conf has "images = DIR [DIR...]" (absolute
 * directories), every image must also lie below one of them, as the
 * kernel names the open file (symlinks resolved; a block device by its
 * node, e.g. /dev/dm-3).  Without it, any absolute path of a regular file
 * or an unused block device is allowed.
 */
#ifndef BLKSTACK_HP_POLICY_H
#define BLKSTACK_HP_POLICY_H

#include <sys/types.h>

#include "blkstack/error.h"
#include "hp-share.h"

/* Most directories in "images = ...". */
#define HP_POLICY_MAX_DIRS 32

struct hp_policy {
	unsigned int n;			     /* 0: no allow-list */
	const char *dir[HP_POLICY_MAX_DIRS]; /* into text */
	char *text;			     /* owned */
};

/*
 * The policy from the configuration file (conf.h).  Each directory
 * must be absolute, without "." or ".." components, "//" or a trailing
 * "/" (but "/" itself).  Returns 0 or -EINVAL naming file:line; on
 * failure nothing needs freeing.
 */
int hp_policy_load(struct hp_policy *p, struct bks_error *err);

/* Same, from a configuration text (tests). */
int hp_policy_parse(struct hp_policy *p, const char *text, const char *name,
		    struct bks_error *err);

void hp_policy_free(struct hp_policy *p);

/*
 * Check the images u of worker pid against the policy; rundir is where
 * blkstack's own devices live.  Returns 0, or -EBUSY (in use in dom0),
 * -EPERM (outside the allow-list) with err naming the image and why.
 */
int hp_policy_check(const struct hp_policy *p, pid_t pid,
		    const struct hp_usage *u, const char *rundir,
		    struct bks_error *err);

#endif /* BLKSTACK_HP_POLICY_H */
