/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Shared only inside libblkstack/export/fuse/: the FUSE export's state
 * and what its files offer each other.  See include/blkstack/fuse-server.h
 * for what the export does, and the kernel's include/uapi/linux/fuse.h
 * (here /usr/include/linux/fuse.h) for the wire format.
 *
 * The files:
 *
 *   buf.c       the request pool and the aligned data buffers (by size
 *               class, kept for reuse), and sending a reply on
 *               /dev/fuse.  Calls no other file of the folder.
 *   io.c        READ, WRITE, FSYNC, FLUSH and FALLOCATE: checks, their
 *               bks_req to the chain, the reply from the completion.
 *   session.c   mounting and unmounting, receiving requests, INIT and
 *               the file system's metadata (LOOKUP, GETATTR, READDIR,
 *               ...), the export's ops (start, shutdown, stats, free).
 *   uring.c     the io_uring transport (FUSE over io_uring): the ring,
 *               its entries on every CPU's queue, answers as commits;
 *               naming and resolving the transport.  uring-abi.h: the
 *               kernel's definitions it needs.
 *
 * Calls go one way: session.c uses io.c, buf.c and uring.c; io.c uses
 * buf.c; buf.c uses uring.c (an answer to a request that came from a
 * ring entry goes back through it).  uring.c hands what it receives to
 * session.c through the function it is started with.
 *
 * Receiving.  One readv() of /dev/fuse returns one whole request.  Its
 * first FX_HDR_SIZE bytes land in the session's header area and the rest
 * in a data buffer of BKS_FUSE_MAX_IO bytes: a WRITE's header (struct
 * fuse_in_header + struct fuse_write_in) is exactly FX_HDR_SIZE, so its
 * payload lands at the start of an aligned buffer, which the request
 * takes over (a fresh one receives the next request) -- no copy, and
 * aligned for O_DIRECT.  Other requests are small; they are parsed from
 * the two pieces put together in a scratch buffer.
 *
 * Over io_uring (uring.c), each ring entry has its own header area and a
 * payload buffer of BKS_FUSE_MAX_IO bytes, page-aligned: a WRITE's data
 * arrives at its start and is written from there, a READ is read into
 * it, and the answer is committed from it -- no copy on our side.  The
 * entry is the request's until the answer is committed.
 *
 * Why io_uring does not outlive a crash (Linux 6.14 to 6.18, fs/fuse/):
 * a request the kernel gave a ring entry sits on that ring queue's own
 * processing list (dev_uring.c, fuse_uring_add_to_pq: queue->fpq).
 * FUSE_NOTIFY_RESEND (dev.c, fuse_resend) requeues only what is on the
 * processing lists of the /dev/fuse devices (fc->devices, fud->pq), and
 * when the server's ring goes away, fuse_uring_cancel ends only entries
 * that wait for a request (FRRS_AVAILABLE), not those holding one.  A
 * new process can register new entries on the connection, but the dead
 * one's requests are neither resent nor failed: they would wait until
 * the connection is aborted.  So a session on io_uring is never handed
 * over (can_resend is false), and its end is the server's: the kernel
 * fails what is pending once the last descriptor closes.
 */
#ifndef BLKSTACK_EXPORT_FUSE_INTERNAL_H
#define BLKSTACK_EXPORT_FUSE_INTERNAL_H

#include <linux/fuse.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>

#include "blkstack/chain.h"
#include "blkstack/driver.h"
#include "blkstack/export.h"
#include "blkstack/fuse-server.h"
#include "blkstack/loop.h"
#include "uring-abi.h"

/* The two inodes: the root directory and the file. */
#define FX_INO_ROOT 1u
#define FX_INO_FILE 2u
/* Bytes of a request before a WRITE's payload. */
#define FX_HDR_SIZE                                                            \
	(sizeof(struct fuse_in_header) + sizeof(struct fuse_write_in))
/* Longest request other than WRITE that is parsed (names are <= 255). */
#define FX_SMALL_MAX 4096u
/* Attributes and names never change while mounted: cache them long. */
#define FX_ATTR_VALID_S 3600u
/* Requests read per readable event, so that completions get their turn. */
#define FX_READS_PER_EVENT 64
/* Data buffers: aligned for O_DIRECT, classes of 4 KiB << i up to 1 MiB. */
#define FX_BUF_ALIGN   4096u
#define FX_BUF_CLASSES 9
/* Free buffers kept per class; more are given back. */
#define FX_BUF_KEEP 64u
/* A write at least this long takes the receive buffer over; else a copy. */
#define FX_STEAL_MIN (64u << 10)

struct fx;
struct fx_ring;

/*
 * A ring entry (uring.c): its header area and payload buffer, registered
 * with the kernel on queue qid.
 */
struct fx_ent {
	struct fx *fx;
	struct fxu_req_header *hdr;
	char *payload; /* BKS_FUSE_MAX_IO bytes, page-aligned */
	struct iovec iov[2];
	uint64_t unique; /* the request held (state FXE_HELD) */
	uint16_t qid;
	uint8_t state; /* enum fx_ent_state (uring.c) */
	bool owned;    /* a struct fx_req answers for it */
};

/* One FUSE request on its way through the chain. */
struct fx_req {
	struct bks_req r;
	struct iovec iov;
	struct fx *fx;
	struct fx_req *next; /* the free list */
	uint64_t unique;     /* the kernel's id of the request */
	uint32_t opcode;
	uint32_t len;	    /* READ: the bytes to send; WRITE: written */
	char *buf;	    /* the data buffer (aligned), or NULL */
	int buf_class;	    /* its class, or -1 */
	size_t buf_skew;    /* where the data starts in buf */
	struct fx_ent *ent; /* the ring entry it came in, or NULL */
	bool buf_borrowed;  /* buf is ent's payload, not the pool's */
};

struct fx {
	struct bks_export exp; /* first: the handle */
	struct bks_loop *loop;
	struct bks_chain *chain;
	char *mnt;
	bool ro;
	int fd;	      /* /dev/fuse, or -1 */
	int adopt_fd; /* bks_fuse_config.dev_fd until started, else -1 */
	void (*inited_fn)(void *arg, int dev_fd,
			  const struct bks_fuse_init_info *info);
	enum bks_fuse_transport want;	   /* asked for: readv or io_uring */
	enum bks_fuse_transport transport; /* in effect */
	struct fx_ring *ring;		   /* io_uring in use, else NULL */
	struct fx_ent *cur_ent; /* the ring entry being dispatched, or NULL */
	void *inited_arg;
	bool mounted, inited, stopping, ended;
	struct bks_watch w;
	bool watching;
	struct bks_defer defer; /* shutdown's progress, from the loop */
	void (*down)(void *arg);
	void *down_arg;
	/* Receiving: the header area, the data buffer, the scratch. */
	unsigned char hdr[FX_HDR_SIZE];
	char *rbuf; /* BKS_FUSE_MAX_IO bytes, class FX_BUF_CLASSES - 1 */
	unsigned char small[FX_HDR_SIZE + FX_SMALL_MAX];
	/* Pools. */
	struct fx_req *free_reqs;
	char *bufs[FX_BUF_CLASSES][FX_BUF_KEEP];
	unsigned int nbufs[FX_BUF_CLASSES];
	uint64_t in_flight;
	struct bks_export_stats st;
};

/* ---- buf.c -------------------------------------------------------------- */

/* A request for unique (opcode), or NULL (ENOMEM). */
struct fx_req *fx_req_get(struct fx *fx, uint64_t unique, uint32_t opcode);
/* Back to the pool, with its data buffer. */
void fx_req_put(struct fx_req *q);
/*
 * An aligned data buffer of at least size bytes (<= BKS_FUSE_MAX_IO) and
 * its class in *cls, or NULL (ENOMEM).
 */
char *fx_buf_get(struct fx *fx, size_t size, int *cls);
/* Give buf (of class cls) back. */
void fx_buf_put(struct fx *fx, char *buf, int cls);
/* Free every pooled buffer and request. */
void fx_pool_free(struct fx *fx);

/*
 * Answer request unique: error 0 or a positive errno (sent negated), and
 * for 0 the n pieces of iov (n may be 0).  A request the kernel gave up on
 * (interrupted, or the connection aborted) is answered into nothing.
 * Returns 0, or -errno when /dev/fuse refused the answer (-ENODEV: the
 * file system is gone).
 */
int fx_reply(struct fx *fx, uint64_t unique, int error, const struct iovec *iov,
	     int n);

/* Answer with error only (0: success with no data). */
int fx_reply_err(struct fx *fx, uint64_t unique, int error);

/* The chain's size; whether writes, flushes, write_zeroes are served. */
uint64_t fx_size(const struct fx *fx);
bool fx_read_only(const struct fx *fx);
bool fx_can(const struct fx *fx, enum bks_op op);

/*
 * Answer request q (from whichever transport brought it): like
 * fx_reply() for q->unique.
 */
int fx_req_reply(struct fx_req *q, int error, const struct iovec *iov, int n);

/* ---- uring.c ------------------------------------------------------------ */

/*
 * Hands over one request that came in ring entry fx->cur_ent: in (its
 * header, in->len checked against what follows), op (the op's struct,
 * op_len bytes), payload (payload_len bytes, the entry's: a WRITE may
 * keep it until it answers).
 */
typedef void fx_ring_request_fn(struct fx *fx, const struct fuse_in_header *in,
				const void *op, size_t op_len,
				const char *payload, size_t payload_len);

/*
 * Start the io_uring transport on fx->fd, right after INIT is answered:
 * set up the ring, register its entries on every CPU's queue and watch
 * it.  Returns 0 (fx->ring set; fx->transport io_uring) or -errno with
 * err saying why (nothing is left: requests keep coming on /dev/fuse).
 */
int fx_uring_start(struct fx *fx, fx_ring_request_fn *fn,
		   struct bks_error *err);
/*
 * Answer the request entry e holds (error 0 or a positive errno; the n
 * pieces of iov for 0) and fetch the next one.  Returns 0 or -errno.
 */
int fx_uring_reply(struct fx_ent *e, int error, const struct iovec *iov, int n);
/* Submit what is queued and take the ring down (fx->ring NULL). */
void fx_uring_stop(struct fx *fx);

/* ---- io.c --------------------------------------------------------------- */

/*
 * The data requests.  in is the request's header and its op's struct
 * (len bytes, checked by the caller to be at least the op's size); for
 * WRITE, the payload is at data: fx->rbuf, which fx_write may take over,
 * or a ring entry's payload (fx->cur_ent), which it may keep until it
 * answers.  Each answers now or from the chain's completion.
 */
void fx_read(struct fx *fx, const struct fuse_in_header *in,
	     const struct fuse_read_in *arg);
void fx_write(struct fx *fx, const struct fuse_in_header *in,
	      const struct fuse_write_in *arg, const char *data);
void fx_flush(struct fx *fx, const struct fuse_in_header *in);
void fx_fallocate(struct fx *fx, const struct fuse_in_header *in,
		  const struct fuse_fallocate_in *arg);

#endif /* BLKSTACK_EXPORT_FUSE_INTERNAL_H */
