/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The hotplug helper's dom0 block device: attach one to a worker's NBD
 * Unix socket (add, localattach) and detach it again (remove,
 * localdetach), possibly from another process, from a one-line record.
 *
 * Three mechanisms:
 *   nbd   the kernel NBD client: the handshake here, then the socket is
 *         handed to the kernel with netlink NBD_CMD_CONNECT.  Run on real
 *         Xen 4.17 (make check-xen); "auto" picks it where the module is.
 *   fuse  the worker serves the disk itself as the file STATE_DIR/fuse/disk
 *         (blkstack-worker --fuse, started so by prepare when this is the
 *         mechanism) and a loop device (direct I/O) is put on that file:
 *         one process fewer than loop, no NBD hop.  "auto" picks it where
 *         there is no kernel NBD, if the worker is supervised and the
 *         kernel can resend FUSE requests (Linux 6.9+), which is what lets
 *         the file outlive a worker's crash.
 *   loop  blkstack-fuse exposes the export as a file STATE_DIR/fuse-XXXXXX/nbd
 *         and a loop device (direct I/O) is put on that file.  What auto
 *         picks elsewhere.
 *
 * Staging (loop only): starting blkstack-fuse is the slow part of a loop attach
 * (a fork, an exec, a FUSE mount, tens of milliseconds), so prepare starts
 * it ahead (hp_dev_stage) and add only puts the loop device on its file
 * (hp_dev_attach_staged), which is one ioctl.  The stage is a record of
 * its own: a staged device's detach frees the loop device and leaves
 * blkstack-fuse to the stage's detach (unprepare).
 *
 * The fuse mechanism's file belongs to the worker: its stage only names
 * it, and each of its devices is a staged one (its detach frees the loop
 * device; the file goes with the worker).
 */
#ifndef BLKSTACK_HP_DEV_H
#define BLKSTACK_HP_DEV_H

#include <limits.h>
#include <stdbool.h>
#include <stddef.h>

#include "blkstack/error.h"
#include "nbd-kernel.h"

enum hp_dev_mech {
	HP_DEV_AUTO,
	HP_DEV_NBD,
	HP_DEV_LOOP,
	HP_DEV_FUSE
};

/*
 * The kernel NBD backend identifier (/sys/block/nbdN/backend) of a device
 * blkstack made: this prefix and the worker's NBD socket path.
 */
#define HP_DEV_NBD_BACKEND_PREFIX NBD_KERNEL_BACKEND_PREFIX

/* Longest line hp_dev_format() writes, including the NUL. */
#define HP_DEV_LINE_MAX (PATH_MAX + 160)

/* What an attach made, enough to undo it later from another process. */
struct hp_dev {
	enum hp_dev_mech mech; /* the one used */
	char path[64];	       /* /dev/loopN or /dev/nbdN, "" if none yet */
	unsigned int major, minor;
	/* loop and fuse: */
	bool staged;  /* the file belongs to a stage (or the worker), not us */
	int fuse_pid; /* blkstack-fuse process, 0 if none (always for fuse) */
	/* blkstack-fuse's or the worker's mountpoint (in state_dir), or "" */
	char fuse_dir[PATH_MAX];
	/*
	 * The worker the device was made for, "PID:STARTTIME" (its start in
	 * clock ticks, /proc/PID/stat field 22), or "" if not known.  Set by
	 * the caller; hp-dev only keeps it in the record.  A device made for
	 * an earlier worker of the disk is dead even if it still exists.
	 */
	char worker[48];
};

/*
 * Mechanism from $BLKSTACK_DEVICE, else the "device = auto|nbd|fuse|loop"
 * line of /etc/blkstack.conf ($BLKSTACK_CONF names another file; a
 * missing file means auto), else auto.  Auto resolves to a concrete
 * mechanism: nbd when the module is there or `modprobe nbd` loads it;
 * else fuse when workers are supervised (the configuration's
 * `supervise`) and the kernel is Linux 6.9 or later; else loop.  Unknown
 * values are errors.
 */
int hp_dev_choose(enum hp_dev_mech *out, struct bks_error *err);

/*
 * The pure part of auto: fuse's conditions, the kernel's release (uname
 * -r, "6.9.0-..." or later) and whether workers are supervised.
 */
bool hp_dev_fuse_resilient(const char *release, bool supervised);

/*
 * Pure parts of hp_dev_choose(), for tests.  hp_dev_mech_parse: "auto",
 * "nbd", "fuse" or "loop" (exactly).  hp_dev_conf_parse: find the
 * "device" key in the text of a configuration file (name is used in messages);
 * *found tells whether there was one.  Lines are "key = value", blank, or
 * comments starting with '#'; other keys are ignored (other parts of
 * blkstack own them).  A repeated "device" key is an error.
 */
int hp_dev_mech_parse(const char *s, enum hp_dev_mech *out);
int hp_dev_conf_parse(const char *text, const char *name, enum hp_dev_mech *out,
		      bool *found, struct bks_error *err);

/* "auto", "nbd", "fuse", "loop". */
const char *hp_dev_mech_name(enum hp_dev_mech mech);

/*
 * Attach a block device to the NBD server on nbd_sock, read-only if ro.
 * state_dir is a private directory (exists, 0700) for the fallback's
 * mountpoint (the worker's directory, where fuse finds the worker's
 * file); its path must not contain whitespace.  mech must be HP_DEV_NBD,
 * HP_DEV_FUSE or HP_DEV_LOOP (HP_DEV_AUTO is resolved as hp_dev_choose()
 * does).  For HP_DEV_FUSE the worker must serve its file
 * (-ENOENT otherwise).  Fills *dev.  On failure, undoes what it did (and *dev
 * then describes nothing left behind).
 */
int hp_dev_attach(const char *nbd_sock, const char *state_dir, bool ro,
		  enum hp_dev_mech mech, struct hp_dev *dev,
		  struct bks_error *err);

/*
 * Start the slow part of an attach ahead of time (prepare).  For
 * HP_DEV_LOOP: blkstack-fuse on a new STATE_DIR/fuse-XXXXXX, writable (a
 * read-only disk gets a read-only loop device at attach); *stage gets
 * mech=loop, no path, the blkstack-fuse fields.  For HP_DEV_NBD nothing is
 * staged (the kernel attach is already quick): *stage gets mech=nbd and
 * nothing else, and hp_dev_staged_ok() is false for it.  For HP_DEV_FUSE:
 * the worker's file, which must be served (-ENOENT otherwise: the worker
 * was started without --fuse); *stage gets mech=fuse and fuse_dir.  mech
 * must not be HP_DEV_AUTO.  On failure nothing is left behind.  A stage is
 * undone with hp_dev_detach().
 */
int hp_dev_stage(const char *nbd_sock, const char *state_dir,
		 enum hp_dev_mech mech, struct hp_dev *stage,
		 struct bks_error *err);

/*
 * Can attach use this stage: a loop stage whose blkstack-fuse is still running,
 * still ours and still serving its file, or a fuse stage whose file the
 * worker still serves?  Never fails: no means no.
 */
bool hp_dev_staged_ok(const struct hp_dev *stage);

/*
 * add's half of a staged attach: a loop device (read-only if ro) on the
 * stage's file (loop or fuse).  *dev gets the stage's fields, the device and
 * staged=true.  On failure *dev describes nothing and the stage is
 * untouched.
 */
int hp_dev_attach_staged(const struct hp_dev *stage, bool ro,
			 struct hp_dev *dev, struct bks_error *err);

/*
 * Flush (fsync and BLKFLSBUF on the device) and detach.  Idempotent: a
 * device or blkstack-fuse already gone is success, and so is a recorded device
 * that now belongs to somebody else (it is left alone).  A staged device
 * (dev->staged) loses only its loop device: blkstack-fuse stays with the stage.
 * Works from a partially-filled hp_dev (after a failed or killed attach).
 * A failed flush is reported (-EIO) only when blkstack-fuse was still alive to
 * take it, but the teardown goes on regardless.  On the worker's file
 * (fuse) the flush is bounded: after HP_WFUSE_FLUSH_MS the file system's
 * connection is aborted, as for a hung worker (dev-wfuse.h), and the
 * failed flush is then reported.
 */
int hp_dev_detach(const struct hp_dev *dev, struct bks_error *err);

/*
 * Is the recorded device still the one that was made: the node is a block
 * device of the record's major:minor, and it is still bound to what it was
 * made on (a loop device: backed by fuse_dir/nbd, whose blkstack-fuse is ours
 * and running, or by the worker's fuse_dir/disk, still served; kernel
 * NBD: connected, with blkstack's backend identifier for nbd_sock)?  Never
 * fails: no means no.
 */
bool hp_dev_bound(const struct hp_dev *dev, const char *nbd_sock);

/*
 * Free what a killed action of this disk left without a record: every
 * fuse-* mountpoint in state_dir (with the loop device on its file and the
 * blkstack-fuse serving it, each found by what the kernel says: backing_file,
 * /proc/PID/cmdline), every other loop device on a file there (the
 * worker's fuse/disk included; the file itself is the worker's), and every
 * kernel NBD device serving nbd_sock (its backend identifier), that none
 * of the n records in keep names (NULL entries are skipped).  Each is torn
 * down as hp_dev_detach() would.  With no records, this frees everything
 * of the disk (unprepare).  *found counts them.  Returns the first
 * failure, after trying them all.
 */
int hp_dev_sweep_unrecorded(const char *state_dir, const char *nbd_sock,
			    const struct hp_dev *const *keep, size_t n,
			    unsigned int *found, struct bks_error *err);

/*
 * One line, "mech=loop path=/dev/loop3 major=7 minor=3 staged=0
 * fuse_pid=123 fuse_dir=/run/... worker=PID:START", with every key, in
 * that order (empty values for what is not there yet; no worker key when
 * it is not known).  Returns the length, or -ENAMETOOLONG if
 * it does not fit, or -EINVAL if dev cannot be represented.
 */
int hp_dev_format(const struct hp_dev *dev, char *buf, size_t size);

/*
 * Parse a line from hp_dev_format().  Strict, since the line comes back
 * from xenstore: keys in order, path /dev/loopN or /dev/nbdN matching the
 * mechanism (loop and fuse: loop), fuse_dir one plain component directly
 * under state_dir (fuse: exactly STATE_DIR/fuse, no fuse_pid), numbers
 * decimal and in range, staged 0 or 1 (1 only with a loop device and, for
 * loop, a blkstack-fuse).  Returns 0 or -EINVAL.
 */
int hp_dev_parse(const char *line, const char *state_dir, struct hp_dev *dev,
		 struct bks_error *err);

#endif /* BLKSTACK_HP_DEV_H */
