/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The driver interface: how a layer of a chain is written.
 *
 * A chain (see chain.h) is a stack of layers, e.g. "log:|aio:/img".  Each
 * layer is an instance of a driver: a const struct bks_driver declared
 * with designated initialisers, one driver per file in
 * libblkstack/drivers/.  A request enters at the top layer and travels
 * down; the bottom layer, the sink, holds the data.  Layers above the sink
 * are filters.
 *
 * Rules every driver follows:
 *   - Its per-layer state is a struct of state_size bytes that the
 *     framework allocates (zeroed) before open and frees after close.
 *     Drivers keep no globals.
 *   - Every op gets `self`, the layer it runs for.  A layer reaches what
 *     is below it only through its children, found by role with
 *     bks_layer_child(self, role): a filter's BKS_CHILD_FILE (the layer
 *     below it), a sink's BKS_CHILD_BACKING (its parent image, linked by
 *     the framework: get_parent).  It passes requests to a child with
 *     bks_next_*().
 *   - Its own I/O (metadata reads and writes, the pieces of a request it
 *     splits) uses sub-requests from the layer's pool (subreq_max, sized
 *     at open: bks_subreq_get()), joined under the parent request with a
 *     struct bks_join.  Background work is registered with
 *     bks_layer_busy_get/put().  A drain (chain.h) waits for all of it.
 *   - Every function returns 0 (or a non-negative value) or -errno.
 *     Request ops return 0 when they have taken the request, which they
 *     then complete exactly once with bks_req_complete(req, 0 or -errno);
 *     or they return -errno without taking it, and the framework completes
 *     it with that error.  A completion may happen before the op returns.
 *   - The framework (bks_next_submit and the chain entry point) checks
 *     every request against the layer's bks_info before the op sees it:
 *     supported op, read-only, bounds, alignment, data length, flags;
 *     and it splits discard and write_zeroes above the layer's limits.
 *     Drivers do not repeat those checks.
 *   - Nothing blocks on the data path except in drivers whose documented
 *     purpose is to be synchronous (sync:).  Nothing allocates on it.
 */
#ifndef BLKSTACK_DRIVER_H
#define BLKSTACK_DRIVER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>

#include "blkstack/error.h"
#include "blkstack/io-engine.h"
#include "blkstack/loop.h"

/* Most layers in one chain, parents included. */
#define BKS_CHAIN_MAX_LAYERS 16

/* ---- requests --------------------------------------------------------------
 */

enum bks_op {
	BKS_OP_READ,
	BKS_OP_WRITE,
	BKS_OP_FLUSH,
	BKS_OP_DISCARD,
	BKS_OP_WRITE_ZEROES,
	/*
	 * Where the data is (NBD block status): fill req->extents.  Not a
	 * data op: it is not in BKS_OP_COUNT (the data ops, which have
	 * counters in bks_layer_stats.op[] and which error: can fail), it
	 * needs no bit in bks_info.ops (every layer answers it), and its
	 * counters are bks_layer_stats.block_status.
	 */
	BKS_OP_BLOCK_STATUS,
};

/* Number of data ops (BKS_OP_READ .. BKS_OP_WRITE_ZEROES). */
#define BKS_OP_COUNT BKS_OP_BLOCK_STATUS

/* Bit for op in bks_info.ops. */
#define BKS_OPF(op) (1u << (op))

/* Request flags. */
enum {
	/* write, write_zeroes: durable before completion (Force Unit Access) */
	BKS_REQ_FUA = 1u << 0,
	/* write_zeroes: the range must stay allocated (no hole punching) */
	BKS_REQ_NO_HOLE = 1u << 1,
};

struct bks_req;
struct bks_chain;
struct bks_layer;
struct bks_extent;

/*
 * The submitter's completion: called exactly once per submission, with 0
 * or -errno.  It may resubmit or reuse req.
 */
typedef void bks_req_done_fn(struct bks_req *req, int result);

/*
 * A completion hook pushed by a layer with bks_next_submit_hook().  Runs
 * when the layers below have completed req, before the layers above see
 * it.  Returns the result to pass up (0 or -errno, possibly changed), or
 * BKS_REQ_HELD when the hook has kept the request (it resubmitted it, or
 * will complete it later with bks_req_complete()).
 */
typedef int bks_req_hook_fn(struct bks_req *req, int result, void *arg);

/* Named special result of a hook: the request is not finished. */
#define BKS_REQ_HELD 1

/* Hooks and accounting frames a request can carry at once. */
#define BKS_REQ_MAX_FRAMES (3 * BKS_CHAIN_MAX_LAYERS)

struct bks_req_frame {
	bks_req_hook_fn *fn;
	void *arg;
};

struct bks_req {
	/* Set by the submitter; constant while the request is in flight. */
	enum bks_op op;
	uint32_t flags;		 /* BKS_REQ_* */
	uint64_t offset;	 /* bytes; 0 for flush */
	uint64_t len;		 /* bytes; 0 for flush */
	const struct iovec *iov; /* read/write: iovcnt buffers of len bytes */
	int iovcnt;
	bks_req_done_fn *done;
	void *opaque; /* the submitter's */
	/*
	 * Block status: the submitter's array of extents_max entries; the
	 * layer that answers fills the first *nextents (at least one, the
	 * first at offset, in order, covering at most len bytes).
	 */
	struct bks_extent *extents;
	uint32_t extents_max;
	uint32_t nextents;

	/*
	 * Free for the layer that has taken the request (between its op
	 * being called and its bks_req_complete()), e.g. to keep it on a
	 * queue.  No other layer touches them meanwhile.
	 */
	struct bks_req *owner_next;
	uint64_t owner_data;

	/* Private to the framework. */
	unsigned int nframes;
	struct bks_req_frame frames[BKS_REQ_MAX_FRAMES];
	unsigned int attempts; /* submissions by the chain so far */
	struct bks_timer retry_timer;
	struct bks_chain *chain;   /* the chain it was submitted to */
	struct bks_req *pool_next; /* free list of a struct bks_req_pool */
	struct bks_req *park_next; /* parked by a drain; a sub-request pool */
	struct bks_req *wait_next; /* waiting for a sub-request */
	void (*wait_fn)(struct bks_layer *self, struct bks_req *req);
	void *subreq_data;		/* a sub-request's driver data */
	struct bks_layer *subreq_layer; /* a sub-request's pool */
	int split_state, split_result;	/* a piece of a split request's */
	struct bks_req *split_parent;	/* a piece of a split request */
	uint64_t split_pos, split_end;	/* a split request's progress */
	/* Private to the chain's padding (chain-pad.c). */
	struct bks_req *pad_prev, *pad_next; /* its active or wait list */
	uint64_t pad_a, pad_b;		     /* the blocks it touches */
	uint32_t pad_flags;
	/* Private to the chain's in-flight age list (chain-submit.c). */
	struct bks_req *age_prev, *age_next; /* submission order */
	uint64_t submit_ns;		     /* bks_now_ns() at the top */
	bool age_listed;		     /* on its chain's age list */
};

/* Complete req with 0 or -errno.  Called by the layer that took it. */
void bks_req_complete(struct bks_req *req, int result);

/* Name of an op ("read", "write", ...), for messages and stats. */
const char *bks_op_name(enum bks_op op);

/* ---- what a layer offers ------------------------------------------------- */

struct bks_info {
	uint64_t size;	     /* bytes; a multiple of block_size */
	uint32_t block_size; /* logical block: offsets and lengths are
				multiples of it (power of two, 512..65536) */
	uint32_t max_io;     /* largest read or write in bytes, 0 for no
				limit (larger ones are refused, -EINVAL) */
	/*
	 * Largest discard and write_zeroes in bytes, 0 for no limit.  The
	 * framework splits a larger request into pieces of at most this
	 * (rounded down to block_size) and completes it when they are all
	 * done, in order, with the first error: the op never sees more.
	 * A filter inherits them from the layer below.
	 */
	uint64_t max_discard;
	uint64_t max_write_zeroes;
	uint32_t ops;	   /* BKS_OPF() of each supported op */
	bool read_only;	   /* write, discard, write_zeroes refused */
	bool can_fua;	   /* BKS_REQ_FUA honoured (else refused) */
	bool zero_no_hole; /* write_zeroes honours BKS_REQ_NO_HOLE */
};

/*
 * The discard and write_zeroes limit the file sinks (aio:, sync:)
 * declare: one fallocate or range ioctl covers at most this.
 */
#define BKS_FILE_MAX_RANGE (1ull << 30)

/* A byte range, with BKS_EXTENT_* flags where it describes allocation. */
struct bks_extent {
	uint64_t offset;
	uint64_t length;
	uint32_t flags;
	/*
	 * Block status: which image of the sink's backing chain holds the
	 * range (what qemu calls the allocation depth): 1 the sink itself,
	 * 2 its parent, 3 the parent's parent, ...; 0 none of them (the
	 * range reads as zeroes, from no image).  A sink without parents
	 * says 1 everywhere (a raw file's holes are its own); a format sink
	 * says 0 where neither it nor any parent has the range allocated.
	 */
	uint32_t depth;
};

enum {
	BKS_EXTENT_HOLE = 1u << 0, /* not allocated (NBD_STATE_HOLE) */
	BKS_EXTENT_ZERO = 1u << 1, /* reads as zeroes (NBD_STATE_ZERO) */
};

/* ---- the driver ---------------------------------------------------------- */

/* Handle on a layer: what a driver gets as `self` and finds as a child. */
struct bks_layer;

/* The roles of a layer's children. */
enum bks_child_role {
	BKS_CHILD_FILE,	   /* a filter's layer below */
	BKS_CHILD_BACKING, /* a sink's parent image (get_parent) */
	BKS_CHILD_COUNT,
};

/*
 * The child of self in role, or NULL.  Valid from open on (a filter's
 * file child is open before the filter; a sink's backing child is linked
 * after the sink's open and before anything is submitted), and it can
 * change while the chain is drained (bks_chain_replace_child()).
 */
struct bks_layer *bks_layer_child(struct bks_layer *self,
				  enum bks_child_role role);

enum bks_driver_kind {
	BKS_SINK,   /* holds the data; only parents can be below it */
	BKS_FILTER, /* needs a layer below; passes requests down */
};

/* Opening a layer. */
struct bks_open_args {
	const char *args; /* the text after "name:", unescaped; may be "" */
	struct bks_loop *loop; /* the worker's loop, for fds and timers */
	bool read_only;	       /* open for reading only (parents always are) */
	/*
	 * Optional, may be NULL: a file this layer may keep state in that
	 * must survive the process (a worker restarted after a crash opens
	 * the same chain with the same path).  The framework gives it only
	 * when the chain was opened with a state directory
	 * (bks_chain_config.state_dir), and only to the layers of the chain
	 * string (not to parents): STATE_DIR/layerN.state, N the layer's
	 * position in the string (0 = top, as bks_layer_index()).  The file
	 * may not exist yet; the layer creates it (mode 0600), checks that
	 * one it finds is its own (a header: what it is, for which
	 * geometry) and refuses one that is not, never merging it.  It
	 * never removes it (close included): the owner of the directory
	 * does, when the disk's life ends.  Layers without such state
	 * ignore it; with it NULL, they keep their state in memory.
	 */
	const char *state_path;
	/*
	 * Bytes of metadata cache (L2 tables, refcount blocks, ...) a
	 * format sink may allocate at open, or 0 for its default
	 * (bks_chain_config.meta_cache).  Layers without such a cache
	 * ignore it; one may round it up to its minimum (say so in its
	 * docs).
	 */
	uint64_t meta_cache;
	/*
	 * The engine of the layer's file queue (aioq.h; the aio:, qcow2:
	 * and vhd: drivers), from bks_chain_config.io_engine; AUTO (0):
	 * io_uring if a ring can be set up, else libaio.  Layers without a
	 * file queue ignore it.
	 */
	enum bks_io_engine io_engine;
};

/*
 * Named result of get_parent: this image has no parent.  (Not -EINVAL,
 * not -ENOENT: an error is an error.)
 */
#define BKS_NO_PARENT 1

/* Longest parent description get_parent may return, NUL included. */
#define BKS_PARENT_MAX 4096

/*
 * Where a driver emits its own counters (the stats op): named values,
 * nested objects.  The framework puts them in an object named after the
 * driver, under the layer (the control socket's "stats" reply).  Keys are
 * [a-z0-9_]+ and stay stable: tools read them.
 */
struct bks_stats_out {
	void (*u64)(struct bks_stats_out *out, const char *key, uint64_t v);
	void (*str)(struct bks_stats_out *out, const char *key, const char *v);
	void (*begin)(struct bks_stats_out *out, const char *key);
	void (*end)(struct bks_stats_out *out);
	void *arg; /* the consumer's */
};

void bks_stats_u64(struct bks_stats_out *out, const char *key, uint64_t v);
void bks_stats_str(struct bks_stats_out *out, const char *key, const char *v);
/* An object named key; bks_stats_end() closes it. */
void bks_stats_begin(struct bks_stats_out *out, const char *key);
void bks_stats_end(struct bks_stats_out *out);

/*
 * What parsing a chain needs to know of a driver: the first fields of
 * struct bks_driver (its member desc), and on their own the parse-only
 * table bks_driver_descs[], which programs that only parse chains
 * (blkstack-ctl, blkstack-hotplug) link without any data path.  A driver
 * file defines both from one macro, and its registry line (drivers.def)
 * names both:
 *
 *   #define RAM_DESC {.name = "ram", .kind = BKS_SINK, ...}
 *   const struct bks_driver_desc bks_desc_ram = RAM_DESC;
 *   const struct bks_driver bks_driver_ram = {.desc = RAM_DESC, ...};
 */
struct bks_driver_desc {
	/* Required.  The name in chain strings: [a-z0-9-]+. */
	const char *name;
	/* Required.  Sink or filter. */
	enum bks_driver_kind kind;
	/* Required.  One line: the syntax of the args, for error messages. */
	const char *usage;
	/*
	 * True if the args are the path of the image the layer serves (a
	 * file or a block device): tools use it to see which images a chain
	 * uses, e.g. to refuse sharing one between guests.  The parser
	 * refuses an empty or a relative path for such a layer (a relative
	 * one would be resolved against whichever directory the opening
	 * process happens to run in); open it with bks_image_open()
	 * (image-file.h).
	 */
	bool args_path;

	/*
	 * Optional.  Checks args (untrusted text) without opening anything,
	 * with the same rules and messages as open: bks_chain_parse() calls
	 * it, so that a bad chain is refused where it is parsed (e.g. by
	 * the hotplug helper, before any worker starts).  Returns 0 or
	 * -EINVAL with err saying what is wrong.
	 */
	int (*check)(const char *args, struct bks_error *err);

	/*
	 * True if the data path is a loadable module, not in the library:
	 * a sink whose client library is large (nbd: links libnbd and
	 * GnuTLS, rbd: librbd, librados and Ceph's C++ runtime, about 5
	 * and 19 MiB of resident memory in every process that links them).
	 * Only a process that opens a layer of it loads it, the first time
	 * (bks_driver_module_load(), driver-module.h).  Parsing and check
	 * need nothing of the module.
	 */
	bool module;
};

struct bks_driver {
	/* The parse-time facts, by name (drv->name) or whole (&drv->desc). */
	union {
		struct bks_driver_desc desc;
		struct {
			const char *name;
			enum bks_driver_kind kind;
			const char *usage;
			bool args_path;
			int (*check)(const char *args, struct bks_error *err);
			bool module;
		};
	};

	/* Bytes of per-layer state; the framework allocates it, zeroed. */
	size_t state_size;

	/*
	 * Sub-requests the framework allocates for this layer at open
	 * (bks_subreq_get()), each with subreq_data_size bytes of driver
	 * data (bks_subreq_data()).  0: the layer issues none of its own.
	 */
	unsigned int subreq_max;
	size_t subreq_data_size;

	/*
	 * Required.  Called once by the chain open path, bottom layer
	 * first, so that a filter's file child is already open (a sink's
	 * backing child is linked after its open).  Parses
	 * args (untrusted text: validate it), opens what the layer needs.
	 * Returns 0, or -errno with err saying what failed and on what
	 * object.  On failure close is not called: open cleans up itself.
	 */
	int (*open)(void *state, struct bks_layer *self,
		    const struct bks_open_args *args, struct bks_error *err);

	/*
	 * Optional.  Called once by the chain close path, top layer first,
	 * when nothing is in flight in this layer (no request, sub-request
	 * or busy reference).  Releases everything open took.
	 */
	void (*close)(void *state, struct bks_layer *self);

	/*
	 * Required for sinks, optional for filters.  Called by the
	 * framework after open, and again after a reopen commit or a
	 * replaced child (the chain is drained then).  For a filter, *info
	 * arrives filled with the info of its file child; the filter
	 * narrows it (e.g. clears ops it refuses).  For a sink it arrives
	 * zeroed.  Returns 0 or -errno.
	 */
	int (*info)(void *state, struct bks_layer *self, struct bks_info *info);

	/*
	 * Request ops, called by the framework after its checks.  Each
	 * returns 0 if it took req (and completes it with
	 * bks_req_complete()), or -errno if it refused it.
	 *
	 * read: required for sinks.  Fill req->iov with len bytes.
	 * write: optional (absent: read-only).  Honour BKS_REQ_FUA when the
	 *   layer's info says can_fua.
	 * flush: optional.  Everything completed before is durable.
	 * discard: optional.  The range may read back as anything after.
	 * write_zeroes: optional.  The range reads back as zeroes; honour
	 *   BKS_REQ_NO_HOLE and BKS_REQ_FUA.
	 * block_status: optional.  Where the data is: fill req->extents
	 *   with up to req->extents_max extents covering [offset, offset +
	 *   len) from offset on, in order, each with BKS_EXTENT_* flags, and
	 *   set req->nextents (at least 1; it may cover less than len).  It
	 *   may complete later (a format reads its metadata first).  Offset
	 *   and len need not be block-aligned; the framework checks bounds
	 *   and, on completion, the shape of the answer (-EIO if wrong).
	 *   A sink without it has only data (the framework answers).
	 * A filter without an op passes that op down unchanged.
	 * discard and write_zeroes never exceed info's max_discard and
	 * max_write_zeroes: the framework splits larger ones.
	 */
	int (*read)(void *state, struct bks_layer *self, struct bks_req *req);
	int (*write)(void *state, struct bks_layer *self, struct bks_req *req);
	int (*flush)(void *state, struct bks_layer *self, struct bks_req *req);
	int (*discard)(void *state, struct bks_layer *self,
		       struct bks_req *req);
	int (*write_zeroes)(void *state, struct bks_layer *self,
			    struct bks_req *req);
	int (*block_status)(void *state, struct bks_layer *self,
			    struct bks_req *req);

	/*
	 * Optional, for image formats with backing files (sinks only).
	 * Called by the chain open path after open.  Returns BKS_NO_PARENT,
	 * or 0 with buf holding the parent as a one-layer chain string
	 * ("vhd:/images/base.vhd", escaped as in chain.h), or -errno with
	 * err set.  The string is parsed like any chain: a path must be
	 * absolute, so a backing file named relative to its image is
	 * resolved against the image's directory here.  The framework opens
	 * the parent read-only and links it as this layer's
	 * BKS_CHILD_BACKING.
	 */
	int (*get_parent)(void *state, struct bks_layer *self, char *buf,
			  size_t size, struct bks_error *err);

	/*
	 * Optional.  Called by bks_chain_drain_begin() on every layer, top
	 * first, when a drain starts (not for a nested one): stop starting
	 * background work (a timer, a cache flush); work already running
	 * holds a busy reference, which the drain waits for.  Returns
	 * nothing: it cannot fail.
	 */
	void (*drain_begin)(void *state, struct bks_layer *self);
	/*
	 * Optional.  Called by bks_chain_drain_end() on every layer, bottom
	 * first, when the last drain ends, before the parked requests are
	 * resubmitted: restart background work.  Returns nothing.
	 */
	void (*drain_end)(void *state, struct bks_layer *self);

	/*
	 * Optional: the three together, or none (a layer without them
	 * refuses new args with -EOPNOTSUPP).  Called by bks_chain_reopen()
	 * on a drained chain, for each layer whose args or read-only mode
	 * change.  prepare checks args->args (untrusted text) and gets
	 * ready (opens what the new args need) without changing what the
	 * layer serves; it returns 0, or -errno with err set.  Then either
	 * commit (every prepare succeeded: switch to the new args, drop the
	 * old) or abort (one failed: drop what prepare made, keep serving
	 * as before) is called once on every layer whose prepare returned
	 * 0.  Neither may fail.  info is called again after a commit.
	 *
	 * The same ops serve bks_layer_reopen_mode() (chain.h): the same
	 * args with another args->read_only (a parent made writable for a
	 * commit into it, an old top made read-only by a snapshot).  The
	 * chain is drained then, so these ops (and set_backing below) may
	 * make blocking calls (pread, pwrite, fdatasync, open) on the
	 * image: nothing of the data path runs meanwhile.  A format that
	 * goes from read-write to read-only flushes its metadata durably
	 * in prepare (fallible), and commit only switches.
	 */
	int (*reopen_prepare)(void *state, struct bks_layer *self,
			      const struct bks_open_args *args,
			      struct bks_error *err);
	void (*reopen_commit)(void *state, struct bks_layer *self);
	void (*reopen_abort)(void *state, struct bks_layer *self);

	/*
	 * Optional (format sinks).  Rewrite the image's backing-file
	 * reference on disk, durably: backing is the new parent as a
	 * one-layer chain string ("qcow2:/abs/base.qcow2",
	 * "vhd:/abs/base.vhd", "aio:/abs/base.raw" for a raw file), or NULL
	 * for none.  Called by commit (the image above a committed middle
	 * image now names the base) and stream (the sink keeps no backing),
	 * on a drained chain (blocking calls allowed, as for reopen), on a
	 * read-only layer too (the driver opens its file for writing for
	 * the update if it must).  Crash-safe: after a crash the image
	 * names either the old or the new parent, never neither.  Returns
	 * 0 or -errno with err (-EINVAL: a backing string the format cannot
	 * name; -ENAMETOOLONG: it does not fit the image's header).  The
	 * framework's BKS_CHILD_BACKING link is changed separately
	 * (bks_chain_drop_images()); the layer's get_parent answers the new
	 * parent from then on.
	 */
	int (*set_backing)(void *state, struct bks_layer *self,
			   const char *backing, struct bks_error *err);

	/*
	 * Optional.  Emit the driver's own counters into out (see struct
	 * bks_stats_out); called by bks_layer_emit_stats() (the control
	 * socket's stats).  The framework's per-op counters are not
	 * repeated here.
	 */
	void (*stats)(void *state, struct bks_layer *self,
		      struct bks_stats_out *out);
};

/* ---- block status -------------------------------------------------------- */

/*
 * True if some layer from layer down implements block_status (else
 * every range is data).
 */
bool bks_next_has_extents(const struct bks_layer *layer);

/* ---- what a layer can do with the layer below ---------------------------- */

/*
 * Pass req to the layer next (checked like any submission).  The
 * completion goes to whoever submitted req to us.  Returns 0; a request
 * the layer below refuses is completed with the error, never returned.
 */
int bks_next_submit(struct bks_layer *next, struct bks_req *req);

/*
 * Like bks_next_submit(), and hook(req, result, arg) runs when the layers
 * below have completed req.  Returns 0, or -ENOSPC if req carries too many
 * frames already (then nothing was submitted).
 */
int bks_next_submit_hook(struct bks_layer *next, struct bks_req *req,
			 bks_req_hook_fn *hook, void *arg);

/* The info of the layer next (valid once it is open). */
const struct bks_info *bks_next_info(const struct bks_layer *next);

/* ---- layers -------------------------------------------------------------- */

/* The driver of a layer, its state, and its position (0 = top). */
const struct bks_driver *bks_layer_driver(const struct bks_layer *layer);
void *bks_layer_state(struct bks_layer *layer);
unsigned int bks_layer_index(const struct bks_layer *layer);
/* The args the layer was opened (or last reopened) with. */
const char *bks_layer_args(const struct bks_layer *layer);

/*
 * Background work: a layer that starts work of its own that is not a
 * sub-request (a timer, a thread's job) takes a busy reference for it,
 * and drops it when the work is done.  A drain waits for every
 * reference.  Never fails.
 */
void bks_layer_busy_get(struct bks_layer *self);
void bks_layer_busy_put(struct bks_layer *self);

/* ---- sub-requests and joins ---------------------------------------------- */

/*
 * A zeroed request from self's pool (subreq_max of them, allocated at
 * open), or NULL when all are in use.  The driver fills it (op, offset,
 * len, iov, done, opaque) and submits it to a child with
 * bks_next_submit(); in its done callback (or whenever it is finished
 * with it) it gives it back with bks_subreq_put().  It counts as in
 * flight for a drain from get to put.  bks_subreq_data(sub) is the
 * driver's subreq_data_size bytes that go with it (kept across uses,
 * not zeroed).
 */
struct bks_req *bks_subreq_get(struct bks_layer *self);
void bks_subreq_put(struct bks_layer *self, struct bks_req *sub);
void *bks_subreq_data(struct bks_req *sub);

/*
 * Pool exhausted: queue req (a request self has taken) until a
 * sub-request is put back, then call fn(self, req), from inside that
 * bks_subreq_put(), in the order of the waits; fn calls
 * bks_subreq_get() again (it succeeds for the first waiter).  Uses
 * req's framework fields only: owner_next/owner_data stay the driver's.
 */
void bks_subreq_wait(struct bks_layer *self, struct bks_req *req,
		     void (*fn)(struct bks_layer *self, struct bks_req *req));

/*
 * A join: completes one thing (usually a parent request) when all its
 * pieces are done, with the first error.  Init takes a reference for
 * the builder; add one per piece before submitting it; put one per
 * piece completion and one when the builder has issued every piece.
 * done(join, result) runs once, at the last put, with 0 or the first
 * -errno put.
 */
struct bks_join {
	unsigned int pending;
	int result;
	void (*done)(struct bks_join *join, int result);
	void *arg; /* the user's */
};

void bks_join_init(struct bks_join *join,
		   void (*done)(struct bks_join *join, int result), void *arg);
void bks_join_add(struct bks_join *join);
void bks_join_put(struct bks_join *join, int result);

/* Per-layer counters, kept by the framework for every op. */
struct bks_op_stats {
	uint64_t ops;	 /* completed */
	uint64_t bytes;	 /* of completed requests */
	uint64_t errors; /* completed with an error */
};

struct bks_layer_stats {
	struct bks_op_stats op[BKS_OP_COUNT];
	struct bks_op_stats block_status;
	uint64_t in_flight;
	uint64_t subreqs; /* sub-requests of this layer's pool in use */
	uint64_t split;	  /* requests the framework split at this layer */
};

void bks_layer_get_stats(const struct bks_layer *layer,
			 struct bks_layer_stats *out);

/*
 * The driver's own counters (its stats op), as an object named after the
 * driver, into out; nothing for a driver without the op.
 */
void bks_layer_emit_stats(struct bks_layer *layer, struct bks_stats_out *out);

/* ---- the driver registry ------------------------------------------------- */

/*
 * The registry is libblkstack/drivers.def, one line per driver; it makes
 * two tables in the same order: bks_driver_descs[] (drivers-parse.c, the
 * parse-only table: no data path) and bks_drivers[] (drivers.c).  Its
 * BKS_MODULE() lines, last, are in bks_driver_descs[] alone (desc.module
 * set): their drivers are loaded (driver-module.h).
 */

/* The built-in driver called name (len bytes, not NUL-terminated), or NULL
 * (a module's too: bks_driver_module_load() opens those). */
const struct bks_driver *bks_driver_lookup(const char *name, size_t len);
/* The same in the parse-only table. */
const struct bks_driver_desc *bks_driver_desc_lookup(const char *name,
						     size_t len);
/* The built-in driver of a desc from bks_driver_descs[], or NULL (a
 * module's desc among them). */
const struct bks_driver *bks_driver_of(const struct bks_driver_desc *desc);

/* The built-in drivers, NULL-terminated, for listings. */
extern const struct bks_driver *const bks_drivers[];
extern const struct bks_driver_desc *const bks_driver_descs[];

/* ---- helpers for drivers ------------------------------------------------- */

/* Longest key and value of one option, NUL included; most keys per driver. */
#define BKS_ARGS_KEY_MAX   32
#define BKS_ARGS_VALUE_MAX 64
#define BKS_ARGS_MAX_KEYS  16

/*
 * Reading "key=value,key=value" args, checked as a whole: every option has
 * a key the driver knows, a '=' and a non-empty value, and is given at
 * most once; there is no empty option (a leading or trailing ',', ",,").
 * Every refusal is -EINVAL with a message naming the option and ending in
 * "; usage: " and the driver's usage, e.g.
 *
 *   option 'block' is given twice: 'block=4K', then 'block=8K'; usage: ...
 *
 *   struct bks_args a;
 *   bks_args_init(&a, args->args, keys, USAGE);
 *   while ((r = bks_args_next(&a, err)) > 0)
 *           switch (a.index) { ... a.value ... }
 *   if (r < 0) return r;
 */
struct bks_args {
	/* The current option, after bks_args_next() returned 1. */
	unsigned int index;		/* of its key in keys */
	char key[BKS_ARGS_KEY_MAX];	/* NUL-terminated */
	char value[BKS_ARGS_VALUE_MAX]; /* NUL-terminated, never "" */

	/* Private. */
	const char *text;
	const char *const *keys;
	const char *usage;
	const char *pos; /* the next option; NULL at the end */
	unsigned int n;	 /* options read so far */
	const char *seen[BKS_ARGS_MAX_KEYS]; /* each key's option, if given */
};

/*
 * Start reading text (NULL or "" has no options).  keys: the keys the
 * driver knows, NULL-terminated, at most BKS_ARGS_MAX_KEYS; usage: the
 * driver's usage line.  Both must outlive a.
 */
void bks_args_init(struct bks_args *a, const char *text,
		   const char *const *keys, const char *usage);

/*
 * The next option into a->index, a->key and a->value.  Returns 1 with an
 * option, 0 at the end, -EINVAL (err says what is wrong) on a bad one.
 */
int bks_args_next(struct bks_args *a, struct bks_error *err);

/*
 * Refuse the value of the current option: "option 'KEY': 'VALUE' " + the
 * formatted reason + "; usage: ...".  Returns -EINVAL.
 */
int bks_args_bad_value(const struct bks_args *a, struct bks_error *err,
		       const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/*
 * The current option's value as a size (bks_parse_size()), or -EINVAL
 * with err saying whether it is not a size or too large.
 */
int bks_args_size(const struct bks_args *a, uint64_t *out,
		  struct bks_error *err);

/* Opening an image file or a block device, and the blocking calls on
 * it (range ioctls, fallocate, datasync, extents): see image-file.h. */

/*
 * Parse a size: decimal bytes with an optional K, M, G or T suffix (powers
 * of 1024).  Returns 0, -EINVAL (not a size: a sign, a space, another
 * suffix, trailing bytes) or -ERANGE (more than 2^64 - 1 bytes).
 */
int bks_parse_size(const char *s, uint64_t *out);

/*
 * Parse an errno name ("EIO", "ENOSPC", ...) or a positive number into a
 * positive errno.  Returns 0 or -EINVAL.
 */
int bks_parse_errno(const char *s, int *out);

#endif /* BLKSTACK_DRIVER_H */
