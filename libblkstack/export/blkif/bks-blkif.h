/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The blkif ring export's protocol core: serves one chain to a Xen guest's
 * blkfront over its shared ring (xen/include/public/io/blkif.h), as
 * xen-blkback does in the kernel.  An export behind export.h: started,
 * held, shut down and freed with the bks_export_*() functions.  Design,
 * rules and what is not done yet: docs/ring-backend.txt.  The worker
 * serves it (helpers/worker/worker-blkif.c).
 *
 * The core never touches the hypervisor itself: it is given the shared
 * ring already mapped (cfg->sring) and a const struct of grant ops
 * (below) to move data between the guest's granted pages and its own
 * buffers and to notify the guest.  grant-xen.c implements them over
 * libxengnttab and libxenevtchn; the unit tests over plain memory.
 *
 * Everything runs on the chain's loop and nothing sleeps: the worker
 * calls bks_blkif_kick() from its event-channel callback.  The guest is
 * untrusted: every request is copied out of the shared page before it is
 * checked, a bad request gets an error response with its id, and bad ring
 * indices stop this ring alone (bks_blkif_broken()).
 */
#ifndef BLKSTACK_EXPORT_BLKIF_BKS_BLKIF_H
#define BLKSTACK_EXPORT_BLKIF_BKS_BLKIF_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "blkstack/chain.h"
#include "blkstack/error.h"
#include "blkstack/export.h"
#include "blkstack/loop.h"

/* The ABI's constants (values of xen/io/blkif.h and grant_table.h). */
#define BKS_BLKIF_PAGE_SIZE 4096u /* a granted page (XEN_PAGE_SIZE) */
#define BKS_BLKIF_SECTOR    512u  /* sector_number and first/last_sect */
#define BKS_BLKIF_PAGE_SECTORS                                                 \
	(BKS_BLKIF_PAGE_SIZE / BKS_BLKIF_SECTOR) /* last_sect <= 7 */
#define BKS_BLKIF_MAX_SEGS	     11u  /* BLKIF_MAX_SEGMENTS_PER_REQUEST */
#define BKS_BLKIF_MAX_INDIRECT_PAGES 8u	  /* ..._INDIRECT_PAGES_PER_REQUEST */
#define BKS_BLKIF_SEGS_PER_PAGE	     512u /* 8-byte segments in one page */
/* Most indirect segments the ABI can carry (8 pages of 512). */
#define BKS_BLKIF_INDIRECT_LIMIT                                               \
	(BKS_BLKIF_MAX_INDIRECT_PAGES * BKS_BLKIF_SEGS_PER_PAGE)

enum {
	BKS_BLKIF_OP_READ = 0,
	BKS_BLKIF_OP_WRITE = 1,
	BKS_BLKIF_OP_WRITE_BARRIER = 2,
	BKS_BLKIF_OP_FLUSH_DISKCACHE = 3,
	BKS_BLKIF_OP_DISCARD = 5,
	BKS_BLKIF_OP_INDIRECT = 6,
};

enum {
	BKS_BLKIF_RSP_OKAY = 0,
	BKS_BLKIF_RSP_ERROR = -1,
	BKS_BLKIF_RSP_EOPNOTSUPP = -2,
};

/* Grant copy statuses (GNTST_*): okay, and the one the tests use. */
#define BKS_GNTST_OKAY	     0
#define BKS_GNTST_BAD_GNTREF (-3)

/* What this core advertises at most (docs/ring-backend.txt). */
#define BKS_BLKIF_MAX_RING_ORDER   4u	/* max-ring-page-order: 16 pages */
#define BKS_BLKIF_DEFAULT_INDIRECT 256u /* feature-max-indirect-segments */
#define BKS_BLKIF_DEFAULT_BIG_BUFS 8u	/* indirect requests at once */

/* The two ring layouts a backend must serve (the frontend's protocol). */
enum bks_blkif_abi {
	BKS_BLKIF_ABI_X86_64, /* "x86_64-abi", the native one here */
	BKS_BLKIF_ABI_X86_32, /* "x86_32-abi": a 32-bit guest */
};

/*
 * The ABI of the frontend's "protocol" node: len bytes of protocol (not
 * NUL-terminated; a xenstore read).  Absent (NULL or len 0) is the
 * native one.  Returns 0, or -EPROTONOSUPPORT with err naming the value.
 */
int bks_blkif_abi_parse(const char *protocol, size_t len,
			enum bks_blkif_abi *out, struct bks_error *err);

/* ---- the grant interface -------------------------------------------------
 */

/*
 * One grant copy: len bytes at offset in the guest's granted page gref
 * to or from buf (our memory).  offset + len <= BKS_BLKIF_PAGE_SIZE.
 * status is the op's answer for this segment: BKS_GNTST_OKAY, or a
 * GNTST_* error (negative).
 */
struct bks_blkif_copy {
	uint32_t gref;
	uint16_t offset, len;
	void *buf;
	int16_t status;
};

/*
 * How the core reaches the guest.  All ops are called by the core, from
 * the loop (the worker's thread); none may sleep.  state is
 * cfg->ops_state.
 */
struct bks_blkif_grant_ops {
	/* Required.  The implementation's name ("xengnttab"), for messages. */
	const char *name;

	/*
	 * Optional (copy, or map and unmap, or both).  Copy the n segments
	 * in one batch: into the guest's pages (to_guest, a read's data) or
	 * out of them.  Returns 0 when the batch was issued (then each
	 * segment's status says whether it was copied), or -errno when
	 * nothing could be (-ENOSYS or -EOPNOTSUPP: this host cannot copy
	 * grants; the core falls back to map and unmap for good).
	 */
	int (*copy)(void *state, struct bks_blkif_copy *segs, unsigned int n,
		    bool to_guest);

	/*
	 * Optional, with unmap (the fallback when copy is absent or
	 * unsupported).  Map the n grants (writable if writable) as n
	 * contiguous pages; *addr is the first.  Returns 0, or -errno (a
	 * bad grant fails the whole map).
	 */
	int (*map)(void *state, const uint32_t *grefs, unsigned int n,
		   bool writable, void **addr);

	/* Required with map.  Unmap what map returned.  Returns 0 or -errno. */
	int (*unmap)(void *state, void *addr, unsigned int n);

	/*
	 * Required.  Tell the guest that responses are on the ring (the
	 * event channel).  Called only when the ring says the guest wants
	 * it (its rsp_event).  Returns 0 or -errno (the ring is then stopped:
	 * the guest would wait for ever).
	 */
	int (*notify)(void *state);
};

/* ---- what to advertise -----------------------------------------------------
 */

/*
 * The backend's xenstore nodes the core serves by (the worker's
 * blkif-connect reply carries them; blkstack-xenbus writes them).  Computed
 * from the chain's info, so that what is advertised and what is checked are one
 * thing.
 */
struct bks_blkif_features {
	uint64_t sectors;		/* "sectors": 512-byte units */
	uint32_t sector_size;		/* "sector-size": 512 */
	uint32_t physical_sector_size;	/* "physical-sector-size" */
	uint32_t info;			/* "info": VDISK_READONLY (4) or 0 */
	bool flush_cache;		/* "feature-flush-cache" */
	bool barrier;			/* "feature-barrier": never */
	bool discard;			/* "feature-discard" */
	uint32_t discard_granularity;	/* bytes */
	uint32_t discard_alignment;	/* bytes: 0 */
	uint32_t max_indirect_segments; /* "feature-max-indirect-segments" */
	uint32_t max_ring_page_order;	/* "max-ring-page-order" */
};

/*
 * Fill out for chain served read_only (or not), with at most
 * max_indirect indirect segments (0: the default; cut to what the
 * chain's max_io allows).
 */
void bks_blkif_features(const struct bks_chain *chain, bool read_only,
			unsigned int max_indirect,
			struct bks_blkif_features *out);

/* ---- the export ------------------------------------------------------------
 */

struct bks_blkif_config {
	struct bks_loop *loop;	 /* required: the chain's loop */
	struct bks_chain *chain; /* required */
	/*
	 * Required: the shared ring, mapped, BKS_BLKIF_PAGE_SIZE <<
	 * ring_order bytes (the frontend's ring-ref pages, in order).  The
	 * export never frees or unmaps it.
	 */
	void *sring;
	unsigned int ring_order;   /* the frontend's ring-page-order */
	enum bks_blkif_abi abi;	   /* from its protocol node */
	bool read_only;		   /* writes and discards refused */
	unsigned int max_indirect; /* 0: BKS_BLKIF_DEFAULT_INDIRECT */
	unsigned int big_bufs;	   /* 0: BKS_BLKIF_DEFAULT_BIG_BUFS */
	const struct bks_blkif_grant_ops *ops; /* required */
	void *ops_state;
	/*
	 * Optional: the ring broke (bad indices, a failed notify); why says
	 * how.  Called once, from the loop, inside bks_blkif_kick() or a
	 * completion: it may not free the export (shut it down instead).
	 */
	void (*broken)(void *arg, const struct bks_error *why);
	void *arg;
};

struct bks_blkif;

/*
 * Make the ring export of cfg: it allocates everything it will use (a
 * slot per ring entry, their buffers, the indirect requests' buffers),
 * so that the data path never allocates.  It takes over the ring as the
 * frontend left it (from its rsp_prod on).  Start it with
 * bks_export_start(bks_blkif_export(rg)).  Returns 0 or -errno with err
 * set (-EINVAL: a ring order above BKS_BLKIF_MAX_RING_ORDER, missing ops,
 * max_indirect above the ABI's limit).
 */
int bks_blkif_new(struct bks_blkif **out, const struct bks_blkif_config *cfg,
		  struct bks_error *err);

/* The export handle of rg (bks_export_free() on it frees rg). */
struct bks_export *bks_blkif_export(struct bks_blkif *rg);

/*
 * The guest notified us (the event channel fired), or a test put
 * requests on the ring: take what is there.  Responses go out from the
 * loop's deferred call.  Harmless before start, after shutdown and on a
 * broken ring (it does nothing).
 */
void bks_blkif_kick(struct bks_blkif *rg);

/*
 * True if the ring broke; then why (may be NULL) gets the reason.  A
 * broken ring takes no more requests and writes no more responses; what
 * was in the chain completes into nothing.
 */
bool bks_blkif_broken(const struct bks_blkif *rg, struct bks_error *why);

/*
 * Why the last refused or failed request was ("request 7: segment 0:
 * sectors 3 to 8 of a page (0 to 7)"), or "" if none was.
 */
const char *bks_blkif_last_error(const struct bks_blkif *rg);

/*
 * What rg serves by and checks against (bks_blkif_features() of its
 * chain and config, at creation): the nodes for the worker to write.
 */
void bks_blkif_get_features(const struct bks_blkif *rg,
			    struct bks_blkif_features *out);

/* The ring's size in requests (32 << ring_order). */
unsigned int bks_blkif_ring_size(const struct bks_blkif *rg);

#endif /* BLKSTACK_EXPORT_BLKIF_BKS_BLKIF_H */
