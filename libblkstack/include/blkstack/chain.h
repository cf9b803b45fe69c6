/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Chains: parsing a chain string, opening it, and submitting requests.
 *
 * Grammar (the one parser is libblkstack/chain-parse.c):
 *
 *   chain   = layer *( "|" layer )       at most BKS_CHAIN_MAX_LAYERS
 *   layer   = driver ":" args
 *   driver  = 1*( "a"-"z" / "0"-"9" / "-" )     at most 32 characters
 *   args    = *( plain / "\|" / "\\" )
 *   plain   = any byte but "|", "\", NUL and control characters
 *             (0x00-0x1f, 0x7f)
 *
 * Args run to the next unescaped "|" and are handed to the driver with
 * the escapes removed.  A literal "|" in a path is written "\|", a
 * literal "\" is written "\\"; any other backslash sequence is an error.
 * The whole string is at most BKS_CHAIN_STR_MAX bytes, and a NUL byte
 * anywhere in it is refused.  The rightmost layer is the sink; every layer
 * above it must be a filter.  The parser checks each layer's args: an
 * args_path driver's path must be there and be absolute, and a driver's
 * check op must accept them (docs/chains.txt has the rules).
 *
 * Example: "log:|aio:/images/vm.img" -- requests enter log: (a filter),
 * which passes them to aio: (the sink, the file /images/vm.img).
 */
#ifndef BLKSTACK_CHAIN_H
#define BLKSTACK_CHAIN_H

#include <stddef.h>

#include "blkstack/driver.h"
#include "blkstack/error.h"
#include "blkstack/loop.h"

/* Longest chain string, in bytes, without the NUL. */
#define BKS_CHAIN_STR_MAX 4096
/* Longest driver name. */
#define BKS_DRIVER_NAME_MAX 32

/* A parsed chain: layers top (0) to sink (n - 1). */
struct bks_chain_spec {
	unsigned int n;
	struct bks_layer_spec {
		/* The driver's parse-time facts (the parse-only table). */
		const struct bks_driver_desc *desc;
		char *args;    /* unescaped, malloc'd */
		size_t offset; /* of the layer in the string */
	} layers[BKS_CHAIN_MAX_LAYERS];
};

/*
 * Parse len bytes of s (which need not be NUL-terminated).  A NUL byte
 * anywhere in them is refused before anything else ("chain: NUL byte at
 * offset N"), never taken for the end.  Returns 0, or -EINVAL
 * (-ENAMETOOLONG for an over-long string) with err naming the byte
 * offset, the layer and the reason.  On success free the spec with
 * bks_chain_spec_free().  A caller holding a length (a xenstore read)
 * passes that length, never strlen().
 */
int bks_chain_parse(const char *s, size_t len, struct bks_chain_spec *spec,
		    struct bks_error *err);

/*
 * Like bks_chain_parse(), looking drivers up in extra (NULL-terminated;
 * may be NULL) before the built-in registry.  For tests and tools that
 * bring drivers of their own without shipping them in the registry.
 */
int bks_chain_parse_with(const char *s, size_t len,
			 const struct bks_driver *const *extra,
			 struct bks_chain_spec *spec, struct bks_error *err);

/* Free what bks_chain_parse() allocated; harmless on a zeroed spec. */
void bks_chain_spec_free(struct bks_chain_spec *spec);

/*
 * Write spec back as a chain string (escaping args).  Returns the length,
 * or -ENAMETOOLONG if it does not fit in size bytes.
 */
int bks_chain_format(const struct bks_chain_spec *spec, char *buf, size_t size);

/* ---- open chains -----------------------------------------------------------
 */

struct bks_chain;

/*
 * Retrying transient errors.  When a request submitted with
 * bks_chain_submit() completes with an error for which transient()
 * says yes, the chain resubmits it after delay_ns -- with a timer on the
 * loop, never by sleeping -- up to max_attempts submissions in all.  The
 * submitter sees only the final result.
 */
struct bks_retry_policy {
	unsigned int max_attempts; /* 1 = no retry */
	uint64_t delay_ns;
	bool (*transient)(int err, void *arg); /* NULL: -EIO, -EAGAIN,
						  -ETIMEDOUT, -ENOMEM */
	void *arg;
};

/*
 * Parse and open a chain string on loop.  Opens the sink, then its
 * parents (get_parent), then the filters from the bottom up; on failure
 * closes what it opened and returns -errno with err saying which layer
 * failed and why ("layer 2 (aio): open /images/vm.img: No such file or
 * directory").  read_only opens every layer read-only.  s is a C string;
 * one that came with a length should go through bks_chain_parse() with
 * that length first.
 */
int bks_chain_open(struct bks_chain **out, const char *s, struct bks_loop *loop,
		   bool read_only, struct bks_error *err);

/*
 * Like bks_chain_open(), with drivers looked up in extra first (see
 * bks_chain_parse_with()): how unit tests open their test drivers.
 */
int bks_chain_open_with(struct bks_chain **out, const char *s,
			const struct bks_driver *const *extra,
			struct bks_loop *loop, bool read_only,
			struct bks_error *err);

/* How to open a chain (bks_chain_open_config()). */
struct bks_chain_config {
	struct bks_loop *loop; /* required: the loop the chain runs on */
	bool read_only;	       /* open every layer read-only */
	/* Drivers looked up before the registry (NULL-terminated), or NULL. */
	const struct bks_driver *const *extra;
	/*
	 * A directory for state that must survive a restart of the
	 * process, or NULL (state in memory only).  Each layer of the
	 * string gets STATE_DIR/layerN.state (bks_open_args.state_path;
	 * today only log: uses it, for its dirty bitmap).  The caller owns
	 * the directory: it exists, nobody else writes in it, and the
	 * caller removes the files when the disk's life ends (the worker:
	 * DIR/NAME, docs/control-protocol.txt "State kept across a
	 * restart").  At most BKS_STATE_DIR_MAX bytes.
	 */
	const char *state_dir;
	/*
	 * Bytes of metadata cache each format sink (qcow2:) and each of
	 * its parents may allocate at open, or 0 for the driver's default
	 * (bks_open_args.meta_cache; the worker's conf key meta-cache).
	 */
	uint64_t meta_cache;
	/*
	 * The engine of the file drivers' queues (bks_open_args.io_engine;
	 * the worker's --io-engine and conf key io-engine); 0 is
	 * BKS_IO_ENGINE_AUTO.
	 */
	enum bks_io_engine io_engine;
	/*
	 * Open the sink without its parents (no get_parent): for a new
	 * overlay that is about to be put above an open image with
	 * bks_chain_insert_overlay().  Only for a one-layer string (else
	 * the open fails, -EINVAL).
	 */
	bool no_backing;
};

#define BKS_STATE_DIR_MAX 4000
/* The state file name of layer position n (0 = top), for owners. */
#define BKS_LAYER_STATE_FMT "layer%u.state"

/*
 * Open the chain string s as cfg says: what bks_chain_open_with() does,
 * with a state directory.  Returns 0 or -errno with err set (a state
 * file a layer refuses fails the open, naming the file).
 */
int bks_chain_open_config(struct bks_chain **out, const char *s,
			  const struct bks_chain_config *cfg,
			  struct bks_error *err);

/*
 * Close every layer, top first, and free the chain.  Nothing may be in
 * flight (drain first: bks_chain_in_flight() == 0), and no request parked
 * by a drain (they would never complete).
 */
void bks_chain_close(struct bks_chain *chain);

/*
 * The chain's info: that of its top layer.  It can change when the chain
 * is reopened or a child replaced (while drained): read it again after.
 */
const struct bks_info *bks_chain_info(const struct bks_chain *chain);

/*
 * Iterating the layers: the top layer, then depth first through each
 * layer's children (file, then backing): filters, the sink, its
 * parents.  Layers are not an array: i is a position in that walk.
 * bks_chain_layers() counts them; bks_chain_layer(chain, i) is the
 * i-th (0 = top), or NULL past the end.
 */
unsigned int bks_chain_layers(const struct bks_chain *chain);
struct bks_layer *bks_chain_layer(struct bks_chain *chain, unsigned int i);
struct bks_layer *bks_chain_top(struct bks_chain *chain);
/* The layer after layer in that walk, or NULL. */
struct bks_layer *bks_chain_next_layer(struct bks_layer *layer);

/*
 * The sink of the chain's string (the top image): the last of the chain's
 * own layers.  Never NULL for an open chain.
 */
struct bks_layer *bks_chain_sink(struct bks_chain *chain);

/* The topmost layer of driver name, or NULL. */
struct bks_layer *bks_chain_find(struct bks_chain *chain, const char *name);

/* Set the retry policy (copied); NULL restores "no retry". */
void bks_chain_set_retry(struct bks_chain *chain,
			 const struct bks_retry_policy *policy);

/*
 * Submit req at the top of the chain.  Its done callback runs exactly
 * once (possibly before this returns) with 0 or -errno.  While the chain
 * is drained (bks_chain_drain_begin()) req is parked instead, in arrival
 * order, and passed down at bks_chain_drain_end().  Block status
 * (BKS_OP_BLOCK_STATUS with req->extents) is submitted like any other
 * request.
 *
 * Read, write, write_zeroes and discard may start and end at any byte:
 * the chain pads them to whole blocks (see "padding" below), and its
 * layers see only whole blocks.  Returns 0.
 */
int bks_chain_submit(struct bks_chain *chain, struct bks_req *req);

/*
 * Block status without a request of one's own, for callers that cannot
 * wait for a completion: only for chains whose layers answer block
 * status before their op returns (ram:, sync:, aio: on a block device;
 * aio: on a file answers later, from its helper threads).  It bypasses
 * a drain's parking.  Returns 0 with out and *n filled, -errno,
 * or -EWOULDBLOCK if a layer answers later (the answer is then dropped;
 * a further call until it arrives is -EBUSY).  New code submits
 * BKS_OP_BLOCK_STATUS with bks_chain_submit() instead.
 */
int bks_chain_extents(struct bks_chain *chain, uint64_t offset, uint64_t len,
		      struct bks_extent *out, size_t max, size_t *n);

/* True if some layer knows holes (else every range is data). */
bool bks_chain_has_extents(const struct bks_chain *chain);

/*
 * What is in flight: requests submitted at the top and not completed
 * (parked ones not), sub-requests and busy references; 0 when nothing is
 * in flight in any layer.
 */
uint64_t bks_chain_in_flight(const struct bks_chain *chain);

/*
 * The bks_now_ns() time at which the oldest request now in flight was
 * submitted at the top of the chain, or 0 if none is.  Counted are the
 * requests bks_chain_in_flight() counts as top requests: submitted and
 * not completed (waiting for a retry, a padding slot or an overlapping
 * write included); not those parked by a drain (their time starts when
 * the drain ends and they go down), not sub-requests, split pieces or
 * busy references (they belong to a top request or to none).  O(1): the
 * chain keeps its top requests in submission order.  Optional to use;
 * the worker calls it for its stats reply and its heartbeat, to report
 * a request that is stuck (hang-timeout).
 */
uint64_t bks_chain_oldest_ns(const struct bks_chain *chain);

/* Retries done so far (see bks_retry_policy). */
uint64_t bks_chain_retries(const struct bks_chain *chain);

/* Framework counters of a chain. */
struct bks_chain_stats {
	uint64_t in_flight;    /* top requests submitted, not completed */
	uint64_t retries;      /* see bks_retry_policy */
	uint64_t subreqs;      /* sub-requests in use, every layer */
	uint64_t busy;	       /* busy references, every layer */
	uint64_t parked;       /* requests parked by a drain now */
	uint64_t parked_total; /* requests ever parked */
	uint64_t drains;       /* drains begun (nested ones too) */
	unsigned int draining; /* drain depth now (0: not drained) */
};

void bks_chain_get_stats(const struct bks_chain *chain,
			 struct bks_chain_stats *out);

/* ---- drain ---------------------------------------------------------------
 */

/*
 * Pause the chain.  From this call on, requests submitted with
 * bks_chain_submit() are parked in arrival order.  drained(arg) is called
 * once, always from the loop (never inside this call), as soon as nothing
 * is in flight in any layer: no top request (retries included), no
 * sub-request, no busy reference (driver.h).  The first drain calls the
 * drivers' drain_begin ops, top first.  Drains nest: each
 * bks_chain_drain_begin() gets its own drained call and needs its own
 * bks_chain_drain_end().  drained may be NULL.  Returns 0, or -EBUSY if
 * BKS_DRAIN_WAITERS drains are already waiting for their drained call
 * (then nothing changed).
 */
#define BKS_DRAIN_WAITERS 8
int bks_chain_drain_begin(struct bks_chain *chain, void (*drained)(void *arg),
			  void *arg);

/*
 * End one drain.  A drained call still pending for a drain is dropped
 * only when the last drain ends.  When the last ends: the drivers'
 * drain_end ops run, bottom first, then the parked requests are
 * resubmitted in arrival order (if one's completion begins a new drain,
 * the rest stay parked, in order).
 */
void bks_chain_drain_end(struct bks_chain *chain);

/* True while drained: at least one drain begun and nothing in flight. */
bool bks_chain_is_drained(const struct bks_chain *chain);

/* ---- changing a running chain (only while drained) ------------------------
 */

/*
 * Reopen the chain with new args: s is a chain string with the same
 * drivers in the same order as the chain's own layers (parents not
 * included).  For every layer whose args or read_only change, the
 * driver's reopen_prepare runs (top first); if all succeed, reopen_commit
 * runs on each and the infos are computed again, bottom first; if one
 * fails, reopen_abort runs on those prepared and the chain serves as
 * before.  (An info op that fails after the commits is returned too; the
 * layers then serve the new args, and the caller should close the
 * chain.)  Returns 0, -EBUSY if the chain is not drained, -EINVAL if s
 * does not match, -EOPNOTSUPP for a layer that cannot reopen, or the
 * prepare's -errno; err says which layer and why.
 */
int bks_chain_reopen(struct bks_chain *chain, const char *s, bool read_only,
		     struct bks_error *err);

/*
 * Put the top of chain *new_child (opened on the same loop) in role
 * below layer, in place of the child there (which may be none).  The
 * layers of *new_child join layer's chain and *new_child is freed (set
 * to NULL).  The old child and everything below it leave the chain: if
 * old is not NULL they become a chain of their own in *old (the caller
 * closes it, or hangs it below a layer of the new child with another
 * call, e.g. as the backing of a snapshot overlay); if old is NULL they
 * are closed.  The infos of layer and every layer above are computed
 * again; if one fails, nothing changes.  Both chains must be drained
 * (*new_child may also be just opened).  Returns 0, -EBUSY, -EINVAL (a
 * role the layer's kind has no use for: a filter's file child, a sink's
 * backing child), -ELOOP (too many layers), or an info's -errno; err
 * says why.
 */
int bks_chain_replace_child(struct bks_layer *layer, enum bks_child_role role,
			    struct bks_chain **new_child,
			    struct bks_chain **old, struct bks_error *err);

/*
 * Submit req to layer l of chain, from outside the driver stack (a job:
 * commit, stream).  Checked like any submission to l (bks_next_submit():
 * ops, read-only, bounds, alignment); l's own children serve it as for
 * any request.  While it is in flight it counts as a busy reference of
 * l, so a drain waits for it.  It is NOT parked by a drain: a job may
 * submit while the chain is drained (the final copy of a commit).  Not
 * padded: offset/len must be block-aligned (of l's block size).  It
 * passes no range lock and no write watch sees it (they are for top
 * requests).  The done callback runs exactly once (possibly before this
 * returns) with 0 or -errno.  Returns 0 (-EINVAL, with nothing submitted
 * and done not called, for a NULL layer, request or done callback).
 */
int bks_layer_submit(struct bks_layer *l, struct bks_req *req);

/*
 * Reopen one image (the sink or a parent: any layer) with its own args
 * and another read-only mode, through its driver's reopen_prepare/commit
 * (a parent made writable for a commit, an old top made read-only by a
 * snapshot).  The chain must be drained.  The infos of the layer and
 * every layer above are computed again.  The same mode as now: 0, and
 * nothing is called.  Returns 0, -EBUSY (not drained), -EOPNOTSUPP (the
 * driver has no reopen ops), or the prepare's -errno; err says which
 * layer and why.  On failure the layer serves as before.  (An info op
 * failing after the commit is returned too, as by bks_chain_reopen().)
 */
int bks_layer_reopen_mode(struct bks_layer *l, bool read_only,
			  struct bks_error *err);

/*
 * Snapshot: *overlay is a just-opened one-layer chain (a writable sink
 * opened with no_backing, whose image names the chain's sink as its
 * backing file).  It takes the sink's place (under the lowest filter, or
 * as the top); the old sink and its parents become the overlay's
 * BKS_CHILD_BACKING.  The caller makes the old sink read-only first
 * (bks_layer_reopen_mode).  The chain must be drained.  On success
 * *overlay is NULL (its layer now belongs to chain); on failure nothing
 * changed.  Returns 0, -EBUSY, -EINVAL (not one sink, another size or
 * block size: "overlay: size N, the chain's M"), -ELOOP (more than
 * BKS_CHAIN_MAX_LAYERS), or an info's -errno.
 */
int bks_chain_insert_overlay(struct bks_chain *chain,
			     struct bks_chain **overlay, struct bks_error *err);

/*
 * Drop images from the chain: the images from `image` down to (not
 * including) `keep` leave the tree and are closed; keep takes image's
 * place (under the layer above image: a filter, the image above, or as
 * the top).  keep must be below image in image's backing line, or NULL:
 * drop image's whole backing line from image down, only allowed when
 * image is not the sink.  Two uses:
 *   commit: image = the merged top (or middle) image, keep = the base.
 *   stream: image = the sink's backing child, keep = NULL (the sink
 *           keeps no backing).
 * When image is the sink, keep becomes the sink and must have its size
 * and block size.  The chain must be drained: nothing in flight in any
 * layer, bks_layer_submit() requests included (-EBUSY).  The infos are
 * computed again.  Returns 0, -EBUSY, -EINVAL (keep not below image;
 * image not an image of chain; dropping the sink with keep NULL; another
 * size), or an info's -errno (then nothing changed).
 */
int bks_chain_drop_images(struct bks_chain *chain, struct bks_layer *image,
			  struct bks_layer *keep, struct bks_error *err);

/*
 * Image swap: other is a just-opened chain (same loop).  Its size and
 * block size must equal the chain's (-EINVAL: "new chain: size N, the
 * running chain's M").  The two exchange their layer trees: chain (whose
 * struct the exports and parked requests keep) now serves the new layers,
 * and other holds the old ones, for the caller to close
 * (bks_chain_close(other)).  Both must be drained (other may be just
 * opened).  The new layers get their drain_begin ops now (those that
 * have not had them), so that the chain's drain_end reaches them
 * balanced; the old ones, in other, have had theirs, and get their
 * drain_end when other's last drain ends (none, if other is closed: a
 * close needs none).  Returns 0, -EBUSY, -EINVAL;
 * on failure nothing changed.
 */
int bks_chain_swap(struct bks_chain *chain, struct bks_chain *other,
		   struct bks_error *err);

/*
 * The chain string of the chain's own layers (escaped as
 * bks_chain_format()) into buf, with the sink written as sink's
 * "name:args" when sink is not NULL (the string a commit of the sink into
 * base leaves: bks_chain_string(chain, base, ...)); sink must then be an
 * image of chain.  Returns the length, -ENAMETOOLONG (does not fit in
 * size bytes, NUL included) or -EINVAL (sink not an image of chain).
 */
int bks_chain_string(struct bks_chain *chain, struct bks_layer *sink, char *buf,
		     size_t size);

/* True while a drain is begun (depth > 0), drained yet or not. */
bool bks_chain_draining(const struct bks_chain *chain);

/* ---- range locks and write watches (libblkstack/chain-lock.c) -------------
 */

/*
 * A range lock holds back the top writes (write, write_zeroes, discard
 * submitted with bks_chain_submit()) that overlap [offset, offset+len):
 * stream copies a range into the sink under a lock, so that no guest
 * write to it is overwritten by older data.  The lock queues like a
 * write, in arrival order: it waits for the overlapping top writes in
 * flight (or waiting) before it, and top writes overlapping it that
 * arrive after bks_chain_lock_range() wait for it.  granted(lk) runs
 * once, from the loop (never inside bks_chain_lock_range()), when no
 * overlapping earlier top write is in flight any more; from then until
 * bks_chain_unlock_range() overlapping writes wait, in arrival order (they
 * count as in flight: a drain waits for them, so the holder must unlock
 * without waiting for a drain).  Overlapping locks are granted one after
 * the other, in order.  Reads are never held, nor requests submitted
 * with bks_layer_submit().  The owner keeps the struct (and may not touch
 * its private part) until unlock; unlocking a lock not granted yet
 * withdraws it (granted is then never called).  Ranges are widened to
 * whole blocks.  Returns 0, -EINVAL (len 0, out of bounds, granted NULL).
 */
struct bks_range_lock {
	uint64_t offset, len;
	void (*granted)(struct bks_range_lock *lk);
	void *arg;
	/* private to the chain */
	struct bks_chain *chain;
	struct bks_defer defer; /* calls granted */
	struct bks_req req;	/* its place among the chain's writes */
};

int bks_chain_lock_range(struct bks_chain *chain, struct bks_range_lock *lk);
void bks_chain_unlock_range(struct bks_chain *chain, struct bks_range_lock *lk);

/*
 * A write watch: fn(w, op, offset, len, result) runs when a top write,
 * write_zeroes or discard of the chain completes (any result, retries
 * done, before its submitter's done callback), with the request's byte
 * range as submitted; requests refused before they enter the chain's
 * layers (read-only, unsupported, out of bounds) change nothing and are
 * not reported.  A write in flight when the watch is registered is
 * reported when it completes.  Commit marks the ranges the guest wrote
 * during a copy pass, to copy them again.  Several watches may be
 * registered; each once.  fn may not register or unregister watches.
 */
struct bks_write_watch {
	void (*fn)(struct bks_write_watch *w, enum bks_op op, uint64_t offset,
		   uint64_t len, int result);
	void *arg;
	/* private */
	struct bks_write_watch *next;
};

void bks_chain_watch_writes(struct bks_chain *chain, struct bks_write_watch *w);
void bks_chain_unwatch_writes(struct bks_chain *chain,
			      struct bks_write_watch *w);

/* ---- padding: requests at any byte (libblkstack/chain-pad.c) ---------------
 *
 * A read with partial blocks is widened to whole blocks (the extra bytes
 * land in bounce blocks); a write or write_zeroes with partial blocks is
 * a read-modify-write of them; a discard shrinks to the whole blocks
 * inside (none: it succeeds at once).  Overlapping writes of which one is
 * a read-modify-write are serialised in arrival order, whoever submitted
 * them.  Each padded request takes one of BKS_PAD_SLOTS slots (a
 * sub-request and two bounce blocks, allocated at open); when all are in
 * use it waits for one.
 *
 * The whole blocks of a padded read or write go to and from the caller's
 * buffers, without a copy, so they must suit the sink as an aligned
 * request's do (O_DIRECT: block-aligned memory): place the byte for disk
 * offset X at bks_chain_buf_skew(chain, X) bytes into an aligned buffer,
 * i.e. the buffer of a request at offset starts that far into it.  A
 * padded read or write may have at most BKS_PAD_IOV_MAX - 2 iovecs of
 * whole blocks (else -EINVAL).
 */
#define BKS_PAD_SLOTS	16
#define BKS_PAD_IOV_MAX 64

/* Where in an aligned buffer the byte for disk offset goes (see above). */
size_t bks_chain_buf_skew(const struct bks_chain *chain, uint64_t offset);

struct bks_pad_stats {
	uint64_t padded;	/* requests with partial blocks */
	uint64_t rmw;		/* of which read-modify-writes */
	uint64_t overlap_waits; /* writes that waited for an overlapping one */
	uint64_t bounce_waits;	/* requests that waited for a slot */
	uint64_t waiting;	/* waiting now */
};

void bks_chain_pad_stats(const struct bks_chain *chain,
			 struct bks_pad_stats *out);

/* ---- request pools: no allocation on the data path -------------------------
 */

struct bks_req_pool {
	struct bks_req *reqs;
	struct bks_req *free;
	unsigned int size, in_use;
};

/* Allocate size requests up front.  Returns 0 or -ENOMEM. */
int bks_req_pool_init(struct bks_req_pool *pool, unsigned int size);
void bks_req_pool_free(struct bks_req_pool *pool);

/* A zeroed request from the pool, or NULL if all are in use. */
struct bks_req *bks_req_get(struct bks_req_pool *pool);

/* Return a request to its pool. */
void bks_req_put(struct bks_req_pool *pool, struct bks_req *req);

#endif /* BLKSTACK_CHAIN_H */
