/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Shared only inside libblkstack/export/blkif/: the ring export's state
 * and what its files offer each other.  bks-blkif.h says what the export
 * does; docs/ring-backend.txt why.
 *
 * The files, one concern each:
 *
 *   bks-blkif.h     the public interface (config, grant ops, features)
 *   bks-blkif-xen.h the real grant ops' (grant-xen.c) public interface
 *
 *   abi.c       the two ring layouts (x86_64-abi, x86_32-abi): request
 *               entries decoded from our private copy, responses encoded,
 *               indirect pages' segments decoded.  Pure; calls nothing.
 *   ring.c      the shared ring: its indices read once and checked,
 *               barriers, copying an entry out, writing responses,
 *               pushing them with the notify check, the final check.
 *               Calls abi.c.
 *   check.c     what the core advertises (bks_blkif_features()) and the
 *               checks of a decoded request against it.  Pure; calls
 *               nothing.
 *   grant.c     moving bytes with the grant ops: a batch of copies, or
 *               the map fallback.  Calls nothing of the folder.
 *   io.c        slots and buffers; a valid request becomes one bks_req
 *               (or a short sequence on one: flush, write, flush);
 *               completion, the copy out, the response.  Calls check.c,
 *               grant.c, ring.c and abi.c.
 *   blkif.c     the public functions and the export ops: the intake
 *               loop, the deferred push and notify, shutdown, stats.
 *               Calls io.c, ring.c, abi.c and check.c (the features);
 *               never grant.c (io.c moves the data).
 *   grant-xen.c the real grant ops over libxengnttab and libxenevtchn;
 *               built outside libblkstack.a (it needs those libraries),
 *               uses only the two public headers; nothing of the folder
 *               calls it (the worker hands its ops in).
 *
 * Calls go one way: blkif.c -> io.c -> {check.c, grant.c, ring.c} ->
 * abi.c (blkif.c also reaches ring.c, abi.c and check.c directly).
 * Nothing calls blkif.c back; a completion only schedules the ring's
 * deferred call (rg->defer).
 */
#ifndef BLKSTACK_EXPORT_BLKIF_INTERNAL_H
#define BLKSTACK_EXPORT_BLKIF_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>

#include "bks-blkif.h"
#include "blkstack/chain.h"
#include "blkstack/export.h"

/* The shared ring's header: four indices, then padding to 64 bytes. */
#define RING_REQ_PROD  0
#define RING_REQ_EVENT 4
#define RING_RSP_PROD  8
#define RING_RSP_EVENT 12
#define RING_HDR_SIZE  64
/* Longest entry of either layout (a request). */
#define RING_ENTRY_MAX 112

/* ---- abi.c --------------------------------------------------------------- */

/* Where the fields are in one layout (docs/ring-backend.txt, "Layouts"). */
struct blkif_layout {
	const char *name;
	size_t entry; /* a ring entry: the larger of request, response */
	size_t rw_id; /* read, write, flush, barrier */
	size_t rw_sector;
	size_t rw_seg;
	size_t d_id; /* discard */
	size_t d_sector;
	size_t d_nr;
	size_t i_nseg; /* indirect */
	size_t i_id;
	size_t i_sector;
	size_t i_grefs;
	size_t r_id, r_op, r_status; /* response */
};

const struct blkif_layout *abi_layout(enum bks_blkif_abi abi);

struct blkif_seg {
	uint32_t gref;
	uint8_t first, last; /* sectors of the page, inclusive */
};

/* A request, decoded from our copy of the entry. */
struct blkif_msg {
	uint8_t op;	   /* operation, as sent */
	uint8_t rsp_op;	   /* the response's: indirect_op for indirect */
	uint8_t flag;	   /* discard's */
	uint16_t nseg;	   /* nr_segments (direct: 0..255; indirect: u16) */
	uint64_t id;	   /* echoed in the response */
	uint64_t sector;   /* sector_number */
	uint64_t nsectors; /* discard's nr_sectors */
	struct blkif_seg seg[BKS_BLKIF_MAX_SEGS];     /* direct, first nseg */
	uint32_t igref[BKS_BLKIF_MAX_INDIRECT_PAGES]; /* indirect pages */
};

/*
 * Decode the entry at e (our private copy, lay->entry bytes).  Direct
 * segments beyond BKS_BLKIF_MAX_SEGS are not decoded (check.c refuses
 * such a count).
 */
void abi_decode(const struct blkif_layout *lay, const unsigned char *e,
		struct blkif_msg *m);

/* Encode a response into the entry at e (in the shared page). */
void abi_encode_rsp(const struct blkif_layout *lay, unsigned char *e,
		    uint64_t id, uint8_t op, int16_t status);

/* Decode n 8-byte segments from raw (our copy of indirect pages). */
void abi_decode_segs(const unsigned char *raw, unsigned int n,
		     struct blkif_seg *out);

/* ---- the state ------------------------------------------------------------
 */

/* A buffer for indirect requests: data, their copied segments. */
struct blkif_big {
	unsigned char *data; /* 4096-aligned */
	unsigned char *raw;  /* the indirect pages, copied */
	struct blkif_seg *segs;
	struct blkif_big *next;
};

/* The chain steps of one request (at most: flush, write, flush). */
#define SLOT_MAX_STEPS 3

struct blkif_slot {
	struct bks_blkif *rg;
	struct blkif_slot *next; /* free list */
	uint64_t id;
	uint8_t rsp_op;
	bool to_guest; /* a read: copy out at the end */
	const struct blkif_seg *segs;
	unsigned int nseg;
	uint64_t offset, len; /* bytes on the disk */
	unsigned char *data;  /* direct buffer, or big->data */
	size_t skew;	      /* the data starts this far into it */
	struct blkif_big *big;
	enum bks_op steps[SLOT_MAX_STEPS];
	uint32_t step_flags[SLOT_MAX_STEPS];
	unsigned int nsteps, step;
	struct iovec iov;
	struct bks_req req;
	struct blkif_seg dseg[BKS_BLKIF_MAX_SEGS];
};

struct bks_blkif {
	struct bks_chain *chain;
	const struct bks_blkif_grant_ops *ops;
	void *ops_state;
	void (*broken_fn)(void *arg, const struct bks_error *why);
	void *arg;

	/* The ring (ring.c). */
	unsigned char *sring;
	const struct blkif_layout *lay;
	unsigned int order, nr_ents; /* nr_ents: a power of two */
	uint32_t req_cons, rsp_prod_pvt;
	uint32_t rsp_pushed; /* the rsp_prod we last wrote */

	struct bks_blkif_features feat;
	uint32_t block_size; /* the chain's, at creation */

	/* Slots (io.c): one per ring entry, so never short of one. */
	struct blkif_slot *slots, *free_slots;
	unsigned char *direct_bufs;
	size_t direct_size; /* bytes per slot buffer */
	struct blkif_big *bigs, *free_bigs;
	unsigned int nbigs;
	size_t big_size;
	/* Scratch for one batch of grant ops (grant.c). */
	struct bks_blkif_copy *copies;
	uint32_t *grefs;
	unsigned int ncopies;
	bool no_copy; /* copy unsupported: map from now on */

	struct bks_defer defer; /* push, notify, resume intake, done */
	bool started, stopping, stalled, in_intake, more, done_sent;
	bool broken;
	struct bks_error why;  /* why the ring broke */
	struct bks_error last; /* why the last request failed */
	void (*done)(void *arg);
	void *done_arg;
	unsigned int in_flight;

	struct bks_export_stats stats;
	struct bks_export exp;
};

/* ---- check.c ------------------------------------------------------------- */

/*
 * A decoded request's header against what we advertise: the operation,
 * the segment count, the disk's range for discard, read-only.  Returns
 * BKS_BLKIF_RSP_OKAY or the status to answer with (err says why).
 */
int check_request(const struct bks_blkif *rg, const struct blkif_msg *m,
		  struct bks_error *err);

/*
 * Segments (direct or copied from indirect pages) of a read or write at
 * sector: each first <= last <= 7, and the whole inside the disk.
 * *len gets the bytes.  Returns BKS_BLKIF_RSP_OKAY or _ERROR (err
 * says why).
 */
int check_segs(const struct bks_blkif *rg, const struct blkif_seg *segs,
	       unsigned int n, uint64_t sector, uint64_t *len,
	       struct bks_error *err);

/* ---- grant.c ------------------------------------------------------------- */

/*
 * Move the n descriptors of rg->copies: into the guest (to_guest) or
 * out of it, with the copy op, or map and unmap where copy is absent or
 * unsupported.  Returns 0, or -EIO (a segment's grant failed) or the
 * op's -errno with err saying which.
 */
int grant_move(struct bks_blkif *rg, unsigned int n, bool to_guest,
	       struct bks_error *err);

/* ---- ring.c -------------------------------------------------------------- */

/* Set the ring up over cfg->sring, from its rsp_prod on. */
void ring_attach(struct bks_blkif *rg);

/*
 * Read req_prod once and check it (at most nr_ents requests past our
 * responses), then a read barrier.  Returns 0 with *prod, or -EPROTO
 * with err saying what the index was.
 */
int ring_prod(struct bks_blkif *rg, uint32_t *prod, struct bks_error *err);

/* Copy the entry at req_cons into e (RING_ENTRY_MAX bytes); no advance. */
void ring_peek(const struct bks_blkif *rg, unsigned char *e);

/*
 * Ask for an event at the next request and check again (the final
 * check).  True if requests came meanwhile.
 */
bool ring_final_check(struct bks_blkif *rg);

/* Write a response at rsp_prod_pvt (not pushed yet). */
void ring_respond(struct bks_blkif *rg, uint64_t id, uint8_t op,
		  int16_t status);

/* Publish the responses written; true if the guest wants an event. */
bool ring_push(struct bks_blkif *rg);

/* ---- io.c ---------------------------------------------------------------- */

/* Allocate the slots and buffers.  Returns 0 or -ENOMEM with err. */
int io_init(struct bks_blkif *rg, unsigned int big_bufs, struct bks_error *err);
void io_free(struct bks_blkif *rg);

/* An indirect request could get a buffer now. */
bool io_big_available(const struct bks_blkif *rg);

/*
 * Serve one request taken off the ring: answer it at once if it is bad,
 * else start it in the chain.  Never fails: every outcome is a response
 * (or, on a broken ring, nothing).
 */
void io_request(struct bks_blkif *rg, const struct blkif_msg *m);

#endif /* BLKSTACK_EXPORT_BLKIF_INTERNAL_H */
