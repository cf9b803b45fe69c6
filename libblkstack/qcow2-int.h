/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Private to the qcow2: driver (drivers/qcow2.c) and its parts:
 *   qcow2-cache.c  sub-requests for the layer's own I/O, the metadata
 *                  writer (ordered write-through of a table's changed
 *                  sectors) and the metadata cache (L2 tables, refcount
 *                  blocks);
 *   qcow2-alloc.c  host cluster allocation: reserving runs of clusters at
 *                  the end of the file (refcounts raised and synced before
 *                  any is used), growing the refcount table, and lowering
 *                  a refcount;
 *   qcow2-map.c    where a guest cluster is (L1, L2 via the cache);
 *   qcow2-op.c     operations on one guest cluster (allocating writes,
 *                  zeroing, compressed reads);
 *   qcow2-req.c    guest requests: the cursors, pieces and joins.
 * Who calls whom, never back: drivers/qcow2.c (open, close, info, backing
 * file, stats) -> qcow2-req.c -> qcow2-op.c -> qcow2-map.c ->
 * qcow2-cache.c, and qcow2-op.c -> qcow2-alloc.c -> qcow2-cache.c.
 * Completions go back up through callbacks (struct q2_wait, joins).
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
/*
 * Forget every cached table (nothing pinned, nothing loading or being
 * written: the chain is drained), so that the next lookups read them from
 * disk again: after a blocking update of refcount blocks behind the
 * cache's back (q2_alloc_release() in a reopen to read-only).
 */
void q2_cache_drop_all(struct q2 *s);
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
	/* The layer's args (outlives the layer's state; a reopen replaces
	 * it with an equal copy: the info op and reopen_prepare refresh
	 * it). */
	const char *path;
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

/* ---- the driver's parts: requests, operations, mapping ------------------- */

/* Request contexts, compressed read buffers (drivers/qcow2.c opens them). */
#define Q2_QREQS 256u
#define Q2_CBUFS 4u

/* A guest request's context. */
struct qreq {
	struct q2_wait w; /* the cursor, resumed */
	struct qcow2_state *st;
	struct bks_req *req;
	uint64_t pos, end;
	struct bks_join join;
	bool fua_flush; /* the flush after a FUA write */
	struct qreq *next_free;
};

enum qop_kind {
	QOP_ALLOC,
	QOP_ZERO,
	QOP_CREAD
};

enum qop_fill {
	FILL_NONE, /* a fresh cluster: only the guest's bytes */
	FILL_ZERO, /* the rest from the zero buffer */
	FILL_BUF,  /* the rest from buf (backing, old, inflated) */
};

enum qop_step {
	S_HOST,
	S_FILL,
	S_FILL_WAIT,
	S_INFLATED,
	S_WRITE,
	S_L2,
	S_L2_NEW,
	S_L2_TABLE,
	S_L2_LINK,
	S_L2_WRITTEN,
	S_UNREF,
	S_FINISH,
};

/* A compressed read's buffer, with its own inflate contexts: inflating
 * runs on a helper thread (a 64 KiB cluster takes 0.1-0.2 ms of CPU, too
 * long to hold the loop). */
struct cbuf {
	unsigned char *buf;
	struct cbuf *next;
	z_stream zs;
	bool zs_ok;
	ZSTD_DCtx *zd;
	struct bks_offload_job job;
	const unsigned char *in; /* the job's input, n bytes, and output */
	size_t n, cs;
	unsigned char *out;
	bool zstd;
	struct qop *op;
};

/* One operation on one guest cluster. */
struct qop {
	struct q2_wait w;
	struct qcow2_state *st;
	struct qreq *qr;
	enum qop_kind kind;
	enum qop_step step;
	bool active;
	uint64_t gc;		 /* guest cluster index */
	uint32_t a, b;		 /* the guest's bytes in the cluster */
	uint64_t skip;		 /* their place in the request's buffers */
	bool zero_src;		 /* the guest's bytes are zeroes */
	struct bks_qcow2_l2 old; /* the entry before */
	uint64_t new_entry;
	bool creating;	       /* making the L2 table of L1 entry l1i */
	bool free_old;	       /* lower the old cluster's refcount after */
	uint64_t free1, free2; /* those clusters (0: none) */
	uint64_t host;	       /* the cluster written */
	enum qop_fill fill;
	unsigned int pending; /* reads in flight for the fill, +1 issuing */
	unsigned int issued;  /* parts of the fill issued (bits) */
	bool fill_started;
	uint64_t l2_host; /* a new L2 table's cluster */
	int result;
	unsigned char *buf; /* one cluster */
	struct cbuf *cb;
	struct q2_slot *slot; /* a new L2 table */
	uint64_t l1i;
	struct q2_unref unref;
	struct q2_wlist lock_waiters;
	struct qop *next_free;
};

struct qcow2_state {
	struct q2 s; /* first: the parts' state */
	struct bks_layer *backing;
	uint64_t backing_size;
	char *parent_path;
	bool parent_qcow2;
	bool has_backing;
	unsigned char *zero; /* one cluster of zeroes */
	struct qreq qreqs[Q2_QREQS];
	struct qreq *free_qreqs;
	struct bks_req *req_wait_head, *req_wait_tail;
	struct qop *qops;
	unsigned int nqops;
	unsigned char *qop_mem;
	struct qop *free_qops;
	struct q2_wlist qop_waiters;
	struct cbuf cbufs[Q2_CBUFS];
	unsigned char *cbuf_mem;
	size_t cbuf_size;
	struct cbuf *free_cbufs;
	struct q2_wlist cbuf_waiters;
	struct q2_wlist l1_waiters;
	uint64_t inflate_errors, bad_entries;
	char last_error[BKS_ERROR_MSG_MAX];
	/* A read-only mode change between reopen_prepare and its commit or
	 * abort: the file opened in the new mode (drivers/qcow2.c). */
	bool reopen_pending;
	bool reopen_ro;
	int reopen_fd;
};

#define CONTAINER(ptr, type, member)                                           \
	((type *)(void *)((char *)(ptr)-offsetof(type, member)))

/* Classes of a guest cluster for the cursors. */
enum cls {
	CL_DATA,       /* allocated: read at host */
	CL_ZERO,       /* reads as zeroes, from this image (zero flag) */
	CL_HOLE,       /* unallocated, no backing: zeroes */
	CL_BACKING,    /* unallocated: the backing file */
	CL_COMPRESSED, /* compressed */
};

/* qcow2-map.c.  The L2 entry of guest offset pos: 0 with *l2 (and *slot,
 * NULL when the L1 entry is empty); 1 with w queued (a table loading, an
 * L2 table being made); -EIO on a bad entry (counted, named in the stats).
 */
int q2_lookup(struct qcow2_state *st, uint64_t pos, struct q2_wait *w,
	      struct bks_qcow2_l2 *l2, struct q2_slot **slotp);
/* What a decoded entry is to the cursors. */
enum cls q2_classify(const struct qcow2_state *st,
		     const struct bks_qcow2_l2 *l2);
/* Bytes from pos (up to end, at most max clusters) of the run of clusters
 * of class c in first's L2 table (slot; NULL: none); allocated ones
 * contiguous on the host (and copied, if direct_only). */
uint64_t q2_run_bytes(struct qcow2_state *st, uint64_t pos, uint64_t end,
		      const struct bks_qcow2_l2 *first, enum cls c,
		      struct q2_slot *slot, bool direct_only, unsigned max);

/* qcow2-op.c.  The operation running on guest cluster gc, or NULL. */
struct qop *q2_op_locked(struct qcow2_state *st, uint64_t gc);
/* A free operation for qr, or NULL with qr's cursor queued (woken when
 * one is put back). */
struct qop *q2_op_get(struct qcow2_state *st, struct qreq *qr);
/* Start op (from q2_op_get()) of kind on guest cluster gc: the guest's
 * bytes [a, b) of the cluster, at skip in qr's buffers; old its entry.
 * It holds a reference on qr's join until it is done. */
void q2_op_start(struct qop *op, enum qop_kind kind, uint64_t gc, uint32_t a,
		 uint32_t b, uint64_t skip, const struct bks_qcow2_l2 *old);

/* qcow2-req.c.  Take req (any op): it completes with bks_req_complete().
 * The driver's request ops. */
void q2_req_submit(struct qcow2_state *st, struct bks_req *req);

#endif /* BLKSTACK_QCOW2_INT_H */
