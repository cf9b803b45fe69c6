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
 *   - It reaches the layer below only through the `next` handle passed to
 *     each op, with bks_next_*().  A sink's next is NULL, except when the
 *     framework has linked the sink's parent image below it (get_parent).
 *   - Every function returns 0 (or a non-negative value) or -errno.
 *     Request ops return 0 when they have taken the request, which they
 *     then complete exactly once with bks_req_complete(req, 0 or -errno);
 *     or they return -errno without taking it, and the framework completes
 *     it with that error.  A completion may happen before the op returns.
 *   - The framework (bks_next_submit and the chain entry point) checks
 *     every request against the layer's bks_info before the op sees it:
 *     supported op, read-only, bounds, alignment, data length, flags.
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
	BKS_OP_COUNT,
};

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
	uint32_t max_io;     /* largest request in bytes, 0 for no limit */
	uint32_t ops;	     /* BKS_OPF() of each supported op */
	bool read_only;	     /* write, discard, write_zeroes refused */
	bool can_fua;	     /* BKS_REQ_FUA honoured (else refused) */
	bool zero_no_hole;   /* write_zeroes honours BKS_REQ_NO_HOLE */
};

/* A byte range, with BKS_EXTENT_* flags where it describes allocation. */
struct bks_extent {
	uint64_t offset;
	uint64_t length;
	uint32_t flags;
};

enum {
	BKS_EXTENT_HOLE = 1u << 0, /* not allocated (NBD_STATE_HOLE) */
	BKS_EXTENT_ZERO = 1u << 1, /* reads as zeroes (NBD_STATE_ZERO) */
};

/* ---- the driver ---------------------------------------------------------- */

/* Handle on a layer: what a driver gets as `next`, and what it is. */
struct bks_layer;

enum bks_driver_kind {
	BKS_SINK,   /* holds the data; only parents can be below it */
	BKS_FILTER, /* needs a layer below; passes requests down */
};

/* Opening a layer. */
struct bks_open_args {
	const char *args; /* the text after "name:", unescaped; may be "" */
	struct bks_loop *loop; /* the worker's loop, for fds and timers */
	bool read_only;	       /* open for reading only (parents always are) */
};

/*
 * Named result of get_parent: this image has no parent.  (Not -EINVAL,
 * not -ENOENT: an error is an error.)
 */
#define BKS_NO_PARENT 1

/* Longest parent description get_parent may return, NUL included. */
#define BKS_PARENT_MAX 4096

struct bks_driver {
	/* Required.  The name in chain strings: [a-z0-9-]+. */
	const char *name;
	/* Required.  Sink or filter. */
	enum bks_driver_kind kind;
	/* Required.  One line: the syntax of the args, for error messages. */
	const char *usage;
	/* Bytes of per-layer state; the framework allocates it, zeroed. */
	size_t state_size;
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
	 * Required.  Called once by the chain open path, bottom layer
	 * first, so that next (NULL for a sink) is already open.  Parses
	 * args (untrusted text: validate it), opens what the layer needs.
	 * Returns 0, or -errno with err saying what failed and on what
	 * object.  On failure close is not called: open cleans up itself.
	 */
	int (*open)(void *state, struct bks_layer *next,
		    const struct bks_open_args *args, struct bks_error *err);

	/*
	 * Optional.  Called once by the chain close path, top layer first,
	 * when no request is in flight in this layer.  Releases everything
	 * open took.
	 */
	void (*close)(void *state);

	/*
	 * Required for sinks, optional for filters.  Called once after
	 * open.  For a filter, *info arrives filled with the info of the
	 * layer below; the filter narrows it (e.g. clears ops it refuses).
	 * For a sink it arrives zeroed.  Returns 0 or -errno.
	 */
	int (*info)(void *state, struct bks_layer *next, struct bks_info *info);

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
	 * A filter without an op passes that op down unchanged.
	 */
	int (*read)(void *state, struct bks_layer *next, struct bks_req *req);
	int (*write)(void *state, struct bks_layer *next, struct bks_req *req);
	int (*flush)(void *state, struct bks_layer *next, struct bks_req *req);
	int (*discard)(void *state, struct bks_layer *next,
		       struct bks_req *req);
	int (*write_zeroes)(void *state, struct bks_layer *next,
			    struct bks_req *req);

	/*
	 * Optional.  Where the data is: fill out with up to max extents
	 * covering [offset, offset + len) from offset on, in order, each
	 * with BKS_EXTENT_* flags, and set *n.  It may cover less than len
	 * (at least one extent).  Synchronous and cheap (SEEK_DATA/HOLE,
	 * a bitmap): it is called on the data path, by NBD BLOCK_STATUS.
	 * A filter without it passes it down; a sink without it has only
	 * data.  Returns 0 or -errno.  Called via bks_next_extents().
	 */
	int (*extents)(void *state, struct bks_layer *next, uint64_t offset,
		       uint64_t len, struct bks_extent *out, size_t max,
		       size_t *n);

	/*
	 * Optional, for image formats with backing files (sinks only).
	 * Called by the chain open path after open.  Returns BKS_NO_PARENT,
	 * or 0 with buf holding the parent as a one-layer chain string
	 * ("vhd:/images/base.vhd", escaped as in chain.h), or -errno with
	 * err set.  The string is parsed like any chain: a path must be
	 * absolute, so a backing file named relative to its image is
	 * resolved against the image's directory here.  The framework opens
	 * the parent read-only and links it as this layer's next.
	 */
	int (*get_parent)(void *state, char *buf, size_t size,
			  struct bks_error *err);
};

/* ---- extents ---------------------------------------------------------------
 */

/*
 * The extents of layer next (see the extents op; bounds checked against
 * its info: -EINVAL outside).  A layer without the op, down to the sink,
 * reports one data extent for the whole range.
 */
int bks_next_extents(struct bks_layer *next, uint64_t offset, uint64_t len,
		     struct bks_extent *out, size_t max, size_t *n);

/* True if some layer from next down implements extents. */
bool bks_next_has_extents(const struct bks_layer *next);

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

/* Per-layer counters, kept by the framework for every op. */
struct bks_op_stats {
	uint64_t ops;	 /* completed */
	uint64_t bytes;	 /* of completed requests */
	uint64_t errors; /* completed with an error */
};

struct bks_layer_stats {
	struct bks_op_stats op[BKS_OP_COUNT];
	uint64_t in_flight;
};

void bks_layer_get_stats(const struct bks_layer *layer,
			 struct bks_layer_stats *out);

/* ---- the driver registry ------------------------------------------------- */

/* The driver called name (len bytes, not NUL-terminated), or NULL. */
const struct bks_driver *bks_driver_lookup(const char *name, size_t len);

/* The built-in drivers, NULL-terminated, for listings. */
extern const struct bks_driver *const bks_drivers[];

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
