/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Private to the qcow2: driver (drivers/qcow2.c) and its parts:
 *   qcow2-cache.c  sub-requests for the layer's own I/O, the metadata
 *                  writer (ordered write-through of a table's changed
 *                  sectors) and the metadata cache (L2 tables, refcount
 *                  blocks);
 *   qcow2-alloc.c  host cluster allocation: reserving runs of clusters at
 *                  the end of the file (refcounts raised and synced before
 *                  any is used), and lowering a refcount.
 * drivers/qcow2.c uses both; qcow2-alloc.c uses qcow2-cache.c; the cache
 * uses neither (it calls back through struct q2_wait).
 *
 * Everything runs on the loop thread; nothing blocks, nothing allocates
 * after open.  Waiting is a struct q2_wait queued on a list and called
 * back (fn) when what it waits for is there, with 0 or -errno.
 */
#ifndef BLKSTACK_QCOW2_INT_H
#define BLKSTACK_QCOW2_INT_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/uio.h>
#include <zlib.h>
#include <zstd.h>

#include "blkstack/aioq.h"
#include "blkstack/driver.h"
#include "blkstack/image-file.h"
#include "blkstack/offload.h"
#include "blkstack/qcow2-format.h"

struct q2;

/* Something that waits: called back once, with 0 or -errno. */
struct q2_wait {
	void (*fn)(struct q2_wait *w, int result);
	struct q2_wait *next;
};

struct q2_wlist {
	struct q2_wait *head, *tail;
};

void q2_wlist_add(struct q2_wlist *l, struct q2_wait *w);
/* Call every waiter of l (taken off first) with result. */
void q2_wlist_wake(struct q2_wlist *l, int result);

/* ---- sub-requests (qcow2-cache.c) ---------------------------------------- */

/* iovecs per sub-request, extents per block status sub-request. */
#define Q2_SUB_IOV 64
#define Q2_SUB_EXT 64

/* The driver data of each sub-request (bks_subreq_data()). */
struct q2_sub {
	struct iovec iov[Q2_SUB_IOV];
	struct bks_extent ext[Q2_SUB_EXT];
	void *owner;
	uint64_t a, b; /* the owner's */
};

/*
 * A sub-request of the layer, or NULL with w queued (called back when
 * one is free: call q2_sub_get() again).  Used by everything the layer
 * issues (guest data, metadata, backing reads, flushes).
 */
struct bks_req *q2_sub_get(struct q2 *s, struct q2_wait *w);
/* Give sub back; wakes one waiter. */
void q2_sub_put(struct q2 *s, struct bks_req *sub);

/* ---- the metadata writer (qcow2-cache.c) --------------------------------- */

/*
 * The on-disk copy of an in-memory table (an L2 table or refcount block
 * in a cache slot, the L1 table, the refcount table), written through:
 * q2_mw_write() marks bytes changed and queues a waiter, which is called
 * when a write issued after the change has completed.  One write per
 * table is in flight at a time (two writes of one sector in flight could
 * land in either order, the older last); changes made meanwhile go in
 * the next write, which covers every block changed since the last.
 */
struct q2_mw {
	unsigned char *buf;   /* the table in memory (aligned) */
	uint64_t disk_off;    /* where it is in the file */
	uint32_t len;	      /* bytes (a multiple of the block size) */
	struct q2_slot *slot; /* pinned while writing, or NULL */
	uint32_t lo, hi; /* changed bytes not yet written, lo >= hi: none */
	bool writing;
	struct q2_wlist cur;  /* waiting for the write in flight */
	struct q2_wlist next; /* waiting for the next write */
	struct q2_wait subw;  /* waiting for a sub-request */
	struct q2 *s;
};

void q2_mw_init(struct q2 *s, struct q2_mw *mw, unsigned char *buf,
		uint64_t disk_off, uint32_t len, struct q2_slot *slot);
/* Bytes [off, off + len) of mw->buf changed; w is called once they are on
 * disk (written by a completed write issued after this call). */
void q2_mw_write(struct q2_mw *mw, uint32_t off, uint32_t len,
		 struct q2_wait *w);

/* ---- the metadata cache (qcow2-cache.c) ---------------------------------- */

enum q2_slot_state {
	Q2_SLOT_FREE,
	Q2_SLOT_LOADING,  /* being read */
	Q2_SLOT_CREATING, /* a new table: written, not yet linked */
	Q2_SLOT_VALID,
};

struct q2_slot {
	enum q2_slot_state state;
	uint64_t off; /* host offset of the cluster it holds */
	unsigned int pins;
	uint64_t lru; /* last use */
	unsigned char *buf;
	struct q2_wlist waiters; /* for LOADING or CREATING to end */
	struct q2_mw mw;
	struct q2_wait subw; /* a load waiting for a sub-request */
	int32_t hnext;	     /* hash chain, -1 at the end */
	struct q2 *s;
};

/* Default and smallest cache; see docs/chains.txt "qcow2:". */
#define Q2_CACHE_DEFAULT   (1u << 20)
#define Q2_CACHE_MIN_SLOTS 8u

int q2_cache_init(struct q2 *s, uint64_t bytes, struct bks_error *err);
void q2_cache_free(struct q2 *s);

/*
 * The slot holding the cluster at host offset off, loaded: returns 0 with
 * *out (valid until the caller returns to the loop, or pins it); or 1 with
 * w queued (a load started or running, or no slot free): call again when
 * woken; or -errno.
 */
int q2_cache_get(struct q2 *s, uint64_t off, struct q2_wait *w,
		 struct q2_slot **out);
/*
 * A slot for a new table at off (not on disk yet), zeroed, CREATING and
 * pinned: 0 with *out, or 1 with w queued (no slot free).
 */
int q2_cache_create(struct q2 *s, uint64_t off, struct q2_wait *w,
		    struct q2_slot **out);
/* A CREATING slot is now linked: VALID, its waiters woken, unpinned. */
void q2_cache_created(struct q2 *s, struct q2_slot *slot, int result);
void q2_slot_pin(struct q2_slot *slot);
void q2_slot_unpin(struct q2_slot *slot);

/* ---- allocation (qcow2-alloc.c) ------------------------------------------ */

/* Clusters reserved at once (at least), and bytes (at least). */
#define Q2_RESERVE_MIN	 16u
#define Q2_RESERVE_BYTES (8u << 20)

/*
 * A fresh host cluster (never used, reads as zeroes) into *host: 0; or 1
 * with w queued while a reservation runs (call again when woken); or
 * -errno (e.g. -ENOSPC: the refcount table is full).
 */
int q2_alloc_cluster(struct q2 *s, struct q2_wait *w, uint64_t *host);

/*
 * At close (nothing in flight): the clusters reserved and not used get
 * refcount 0 again (written and synced, blocking: close may), so that a
 * clean shutdown leaks nothing.
 */
void q2_alloc_release(struct q2 *s);

/* One refcount lowering, with its waits (embedded in its user). */
struct q2_unref {
	struct q2_wait w;     /* ours: slot loads, the write */
	struct q2_wait *done; /* the caller's: called once */
	uint64_t host;
	struct q2 *s;
};

/* Lower the refcount of the cluster at host by one; done->fn when the
 * refcount block is written.  Never fails the caller's op: an error is
 * counted and the cluster leaks. */
void q2_unref(struct q2 *s, struct q2_unref *u, uint64_t host,
	      struct q2_wait *done);

/* ---- the state ----------------------------------------------------------- */

struct q2_stats {
	uint64_t cache_hits, cache_misses, cache_evictions, cache_waits;
	uint64_t meta_writes;
	uint64_t clusters_allocated, clusters_reserved, reservations;
	uint64_t l2_allocated, refblocks_allocated, reftable_grown;
	uint64_t clusters_freed, unref_errors;
	uint64_t cow_bytes, compressed_reads, zero_clusters;
	uint64_t alloc_waits, sub_waits;
};

struct q2 {
	struct bks_layer *self;
	const char *path; /* the layer's args (outlives the layer's state) */
	struct bks_image img;
	bool read_only;
	uint32_t block_size, mem_align;
	struct bks_aioq *q;
	struct bks_offload *off;
	struct bks_qcow2_header h;
	struct bks_qcow2_geom g;
	uint64_t file_size; /* bytes, grown by reservations */
	/* The end of the last whole block of the file: O_DIRECT reads stop
	 * there; what lies beyond it (qemu-img may end a file with the L1
	 * table's few bytes) reads as zeroes. */
	uint64_t read_end;

	/* The L1 table, in memory (l1_bytes: a whole number of blocks). */
	unsigned char *l1;
	uint32_t l1_bytes;
	struct q2_mw l1_mw;
	/* The refcount table, in memory. */
	unsigned char *rt;
	uint32_t rt_bytes;
	uint64_t rt_entries;
	uint32_t rt_cap; /* bytes of rt: what the table may grow to */
	struct q2_mw rt_mw;
	/* The header's first block, for rewriting fields in place. */
	unsigned char *hdr;
	struct q2_mw hdr_mw;

	/* Sub-request waiters. */
	struct q2_wlist sub_waiters;

	/* The cache. */
	struct q2_slot *slots;
	unsigned int nslots;
	int32_t *hash;
	unsigned int hash_mask;
	unsigned char *slot_mem;
	uint64_t lru_clock;
	struct q2_wlist slot_waiters; /* no slot free */

	/* Allocation: reserved clusters [res_next, res_end), and the next
	 * cluster to consider at the end of the file. */
	uint64_t res_next, res_end, alloc_end;
	bool reserving;
	struct q2_wlist res_waiters;
	struct q2_wait res_w;
	int res_step;
	uint64_t res_start, res_stop, res_rb; /* the run being reserved */
	struct q2_slot *res_slot;
	struct bks_offload_job res_job;
	uint64_t res_truncate;
	int res_after; /* the step after a sync */
	uint64_t grow_start, grow_nb, grow_nt, grow_i, grow_old_off;
	uint32_t grow_old_n;
	struct q2_unref res_unref;

	struct q2_stats st;
	/* The driver's own (drivers/qcow2.c). */
	void *drv;
};

#endif /* BLKSTACK_QCOW2_INT_H */
