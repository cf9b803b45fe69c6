/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Who uses which image on this host: the hotplug helper's sharing rule.
 *
 * The images of a disk are what its worker actually holds open, read from
 * /proc/PID/fd of the worker (never from params, which may have changed
 * since the worker opened them).  While a disk is added, RUNDIR/NAME.attached
 * records its usage; add claims that record under one host-wide lock
 * (RUNDIR/sharing.lock), so that checking the other disks' records and
 * writing one's own is atomic across every disk of the host.
 *
 * The rule (docs/libxl-hotplug-interface.txt, section 8): an image used
 * for writing by one disk may be used by another only if both disks belong
 * to the same domain, or both domains belong to the same VM (the same
 * /local/domain/N/vm path, which libxl gives the outgoing and the incoming
 * domain of a migration).  Images both use read-only (backing files, say)
 * may be shared by anyone.  And a backend directory is served by one disk
 * only.
 *
 * This rule sees this host's disks.  Across hosts, for rbd: images, the
 * worker's rbd: layer claims its image in the cluster for the VM the
 * hotplug helper gives it (vm=; drivers/rbd.c, "Claims"; docs/ceph.txt).
 */
#ifndef BLKSTACK_HP_SHARE_H
#define BLKSTACK_HP_SHARE_H

#include <stdbool.h>
#include <sys/types.h>

#include "blkstack/error.h"

/* Most images one worker may hold open. */
#define HP_SHARE_MAX_IMAGES 32
/* Longest vm path kept ("/vm/" and a UUID is 40). */
#define HP_SHARE_VM_MAX 128
/* Longest backend path kept (XENSTORE_ABS_PATH_MAX). */
#define HP_SHARE_BACKEND_MAX 3072

/* One image: a regular file (dev, ino) or a block device (0, rdev). */
struct hp_image {
	unsigned long long dev, ino;
	bool rw; /* the disk may write it */
	bool blk;
	int fd;		/* the worker's descriptor on it (/proc/PID/fd/FD) */
	char path[256]; /* as the kernel names the open file, for messages */
};

/* One disk's usage, as add records it. */
struct hp_usage {
	long domid;		      /* the guest, -1 if unknown */
	char vm[HP_SHARE_VM_MAX + 1]; /* its /local/domain/N/vm, "" if none */
	char backend[HP_SHARE_BACKEND_MAX + 1]; /* the backend it serves */
	unsigned int n;
	struct hp_image img[HP_SHARE_MAX_IMAGES];
};

/*
 * The images worker pid (of wdir) holds open: every regular file and block
 * device among its descriptors, except its own files in wdir.  An image
 * is rw when the worker opened it for writing and disk_rw.  Fills
 * u->img and u->n (the rest of *u is left alone).  Returns 0 or -errno.
 */
int hp_worker_images(pid_t pid, const char *wdir, bool disk_rw,
		     struct hp_usage *u, struct bks_error *err);

/*
 * Under RUNDIR/sharing.lock: refuse if another added disk of this host,
 * whose worker is alive, serves the same backend (-EEXIST) or uses one of
 * mine's images against the rule above (-EBUSY), err saying whose; else
 * write RUNDIR/NAME.attached.  A malformed record of a live disk is refused
 * too (-EINVAL): the check fails closed.  Returns 0 or -errno.
 */
int hp_share_claim(const char *rundir, const char *name,
		   const struct hp_usage *mine, struct bks_error *err);

/* Remove RUNDIR/NAME.attached and any temporary a killed claim left. */
void hp_share_release(const char *rundir, const char *name);

/*
 * Record syntax, for tests: format u into buf (returns the length or
 * -ENAMETOOLONG), and parse one back strictly (0 or -EINVAL).
 */
int hp_usage_format(const struct hp_usage *u, char *buf, size_t size);
int hp_usage_parse(const char *text, struct hp_usage *u);

#endif /* BLKSTACK_HP_SHARE_H */
