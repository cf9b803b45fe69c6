/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The FUSE export: serves one chain as the one regular file MOUNT/disk of
 * a FUSE file system that the export mounts itself, so that a loop device
 * on that file is a dom0 block device of the disk with no second process
 * and no NBD hop between the loop device and the chain (the loop
 * fallback's hop through blkstack-fuse, measured in bench/README.md).
 * The code is in libblkstack/export/fuse/ (its internal.h).
 *
 * It speaks the kernel's FUSE protocol (linux/fuse.h) on /dev/fuse
 * directly, without libfuse: the descriptor is non-blocking and watched
 * by the loop, every request is answered from its chain completion, so
 * many are in flight at once, and nothing blocks.  Requests, as the
 * kernel sends them for a loop device with direct I/O:
 *
 *   READ        BKS_OP_READ, clamped to the disk's size
 *   WRITE       BKS_OP_WRITE (FUA for O_DSYNC/O_SYNC writes); beyond the
 *               end: ENOSPC
 *   FSYNC       BKS_OP_FLUSH where the chain takes flushes (FLUSH, the
 *               close of a descriptor, also flushes: a detach's data is
 *               on stable storage when the loop device lets go)
 *   FALLOCATE   PUNCH_HOLE|KEEP_SIZE: BKS_OP_WRITE_ZEROES (holes allowed:
 *               a punched range must read back as zeroes); ZERO_RANGE:
 *               the same with BKS_REQ_NO_HOLE; mode 0 inside the file:
 *               nothing to do; else EOPNOTSUPP
 *   OPEN        direct I/O (no page cache: each loop request is one chain
 *               request); opening a read-only disk for writing: EROFS
 *   the rest    what a one-file read-only directory needs (LOOKUP,
 *               GETATTR, READDIR, STATFS, ...); ENOSYS for anything else
 *
 * The kernel is trusted no more than a client: every length and offset
 * of a request is checked before use.
 *
 * An export behind export.h: start mounts and begins serving; a hold is
 * the chain's drain (requests keep being read, the chain parks them);
 * shutdown stops reading, waits for the requests in the chain, unmounts
 * (lazily: a loop device still on the file keeps the file system until
 * it lets go) and closes /dev/fuse, after which the kernel fails what is
 * still pending with ENOTCONN.  Mounting needs CAP_SYS_ADMIN.
 */
#ifndef BLKSTACK_FUSE_SERVER_H
#define BLKSTACK_FUSE_SERVER_H

#include <stdbool.h>

#include "blkstack/chain.h"
#include "blkstack/error.h"
#include "blkstack/export.h"
#include "blkstack/loop.h"

/* The file's name in the mount. */
#define BKS_FUSE_FILE_NAME "disk"
/* Largest READ and WRITE the kernel sends (max_pages 256). */
#define BKS_FUSE_MAX_IO (1u << 20)
/* Requests the kernel sends before waiting for answers (max_background). */
#define BKS_FUSE_MAX_BACKGROUND 64u

/*
 * Surviving a restart of the serving process.  The kernel keeps a FUSE
 * connection while any descriptor of its /dev/fuse file is open: a
 * process that holds a duplicate (the worker's supervisor) keeps the
 * file system alive across the server's death, the loop device above
 * only waits.  The next server is given that descriptor (dev_fd) and
 * adopts the session: no mount, no INIT (it was done), and it asks the
 * kernel to send again every request the dead server had read and not
 * answered (FUSE_NOTIFY_RESEND; reads and writes of a block device are
 * idempotent).  The kernel says at INIT whether it can (FUSE_HAS_RESEND,
 * Linux 6.9 and later): only then is the descriptor worth handing over.
 */
/*
 * How requests travel between the kernel and the export.
 *
 *   readv     read() one request from /dev/fuse, writev() its answer:
 *             two system calls per request.
 *   io_uring  FUSE over io_uring (Linux 6.14+, the fuse module's
 *             enable_uring parameter set): ring entries registered on
 *             every CPU's queue get requests and carry answers, an
 *             answer and the next fetch in one SQE, many per
 *             io_uring_enter().  /dev/fuse is still read for what the
 *             kernel sends there (INIT, interrupts, resent requests).
 *             A dead server's ring entries are not resent (see
 *             internal.h), so a session on io_uring does not outlive
 *             its server: can_resend is false.
 *   auto      resolved by bks_fuse_transport_resolve().
 *
 * If the kernel does not offer io_uring at INIT, io_uring serves with
 * readv; bks_fuse_export_transport() says what is in effect.
 */
enum bks_fuse_transport {
	BKS_FUSE_TRANSPORT_AUTO,
	BKS_FUSE_TRANSPORT_READV,
	BKS_FUSE_TRANSPORT_URING,
};

/* "auto", "readv", "io_uring". */
const char *bks_fuse_transport_name(enum bks_fuse_transport t);
/* Parse a name; -EINVAL with err listing the names. */
int bks_fuse_transport_parse(const char *name, enum bks_fuse_transport *out,
			     struct bks_error *err);
/*
 * Whether the running kernel serves FUSE over io_uring now: 1 (its
 * module parameter enable_uring is Y), 0 (N, or a kernel without it:
 * the parameter is missing), never an error.
 */
int bks_fuse_uring_enabled(void);
/*
 * auto: readv where a crash must not end the session (survive: the
 * caller's supervisor keeps it, above); else io_uring where
 * bks_fuse_uring_enabled() and it measured faster (bench/README.md,
 * "Means tried"), else readv.  Any other t is returned as is.
 */
enum bks_fuse_transport bks_fuse_transport_resolve(enum bks_fuse_transport t,
						   bool survive);

/* What the export's INIT did, for bks_fuse_config.inited. */
struct bks_fuse_init_info {
	/* A duplicate of dev_fd keeps the session across a crash. */
	bool can_resend;
	/* What serves requests from now on. */
	enum bks_fuse_transport transport;
	/* io_uring was asked for and is not used: why (else ""). */
	char why_not[160];
};

struct bks_fuse_config {
	/* Required: an existing empty directory, an absolute path. */
	const char *mountpoint;
	/* Serve the file read-only (also if the chain is). */
	bool read_only;
	/*
	 * false: mount.  true: adopt dev_fd, a /dev/fuse descriptor of the
	 * session mounted on mountpoint (see above); the export takes it
	 * over (closes it when freed, or at once if its constructor fails).
	 */
	bool adopt;
	int dev_fd;
	/* readv or io_uring (auto: readv; resolve it first). */
	enum bks_fuse_transport transport;
	/*
	 * Optional.  Called once the kernel's INIT is answered (not when
	 * adopting), with the /dev/fuse descriptor (the export's; dup it
	 * to keep it) and what INIT did: whether the kernel can resend
	 * requests (so that the caller can hand a duplicate to whoever
	 * will restart it) and the transport.
	 */
	void (*inited)(void *arg, int dev_fd,
		       const struct bks_fuse_init_info *info);
	void *arg;
};

/*
 * Make the FUSE export of chain on loop, mounting at cfg->mountpoint when
 * started (bks_export_start(): -ENOTDIR, -ENOENT, -ENOTEMPTY, -EPERM, ...
 * with err naming the directory), or adopting cfg->dev_fd (-EINVAL if
 * mountpoint is not a FUSE mount, or the kernel refuses to resend).  Its
 * counters are struct bks_export_stats (connections: 1 while mounted).  Returns
 * 0 or -errno with err set.
 */
int bks_fuse_export_new(struct bks_export **out, struct bks_loop *loop,
			struct bks_chain *chain,
			const struct bks_fuse_config *cfg,
			struct bks_error *err);

/*
 * Whether /proc/self/mountinfo shows a file system of this export
 * ("fuse.blkstack") as the topmost mount on path, an absolute path as
 * given to the export.  Read from the kernel's table, never by a stat or
 * statfs of path: on a session no process serves (its server died, a
 * duplicate of /dev/fuse keeps it), those would be FUSE requests that
 * wait for ever.  For a caller deciding whether to adopt (above).
 */
bool bks_fuse_mounted(const char *path);

/* The transport in effect on exp, a FUSE export (readv until INIT). */
enum bks_fuse_transport bks_fuse_export_transport(const struct bks_export *exp);

#endif /* BLKSTACK_FUSE_SERVER_H */
