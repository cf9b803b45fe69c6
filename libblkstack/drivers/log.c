/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * log:[block=SIZE] -- a filter that records which blocks were changed.
 * See include/blkstack/log.h for what it promises.
 *
 * The bitmap is sized at open from the layer below and never reallocated:
 * marking a block on the data path is a few word operations and never
 * allocates.
 *
 * With a state path (bks_open_args.state_path: a worker's DIR/NAME/
 * layerN.state) the bitmap lives in that file, mapped MAP_SHARED: a
 * block's bit is set in the mapping before its write goes down, so every
 * acknowledged write has its bit in the page cache, which a SIGKILL of
 * the process does not lose, and a restarted worker maps the same bits.
 * The file: a header page (struct log_file, and the mark word at
 * LOG_FILE_MARK), then the bitmap words, then as many words of the frozen
 * set, in host byte order (the file never leaves the host: it lives on
 * tmpfs, /run, which a host reboot empties -- and with it the log).  A
 * file of another geometry (size, block, position) or another version is
 * refused, never merged.
 *
 * The mark (log.h): two bitmaps, `bits` (written since the mark; every
 * dirty block when there is none) and `frozen` (the frozen set); dirty is
 * their union, and ndirty counts the union.  bks_log_mark() ORs bits into
 * frozen, then sets the mark word, then clears bits; clear_frozen drops
 * the mark word, then clears frozen.  At every step of either the union
 * holds every dirty block, so a process killed half-way loses none: an
 * open that finds frozen bits without the mark word (a mark or a clear
 * cut short) merges them back into bits -- dirty, conservatively.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "blkstack/driver.h"
#include "blkstack/log.h"

#define LOG_USAGE "log:[block=SIZE] (SIZE a power of two from 4K to 64M)"

struct log_state {
	uint64_t size;	    /* bytes, of the layer below */
	uint64_t block;	    /* bytes, a power of two */
	unsigned int shift; /* log2(block) */
	uint64_t nblocks;   /* the last may be partial */
	uint64_t words;	    /* of each bitmap */
	uint64_t ndirty;    /* blocks set in bits | frozen */
	uint64_t nfrozen;   /* blocks set in frozen */
	uint64_t *bits;	    /* written since the mark: calloc'd, or in map */
	uint64_t *frozen;   /* the frozen set: words more after bits */
	uint64_t *marked;   /* 1 with a mark: in map, or &mem_marked */
	uint64_t mem_marked;
	void *map; /* the state file, mapped; NULL: in memory */
	size_t map_len;
};

/* ---- the state file ------------------------------------------------------ */

#define LOG_FILE_MAGIC "BKSLOG\0\0" /* 8 bytes */
/* 2: the frozen set and the mark word (bks_log_mark()). */
#define LOG_FILE_VERSION 2u
/* The bitmap starts a page in: the header has a page of its own. */
#define LOG_FILE_HEADER 4096u
/* The mark word's offset in the header page (after struct log_file). */
#define LOG_FILE_MARK 2048u

/* The header, at offset 0, host byte order.  magic is written last. */
struct log_file {
	char magic[8];
	uint32_t version;
	uint32_t header_size; /* LOG_FILE_HEADER */
	uint64_t size;	      /* of the layer below, bytes */
	uint64_t block;	      /* bytes */
	uint64_t nblocks;
	uint64_t words;	   /* of the bitmap, 64 bits each */
	uint32_t position; /* the layer's position in the chain, 0 = top */
	char driver[12];   /* "log" */
};

_Static_assert(sizeof(struct log_file) <= LOG_FILE_MARK, "header page");

/* The header this layer's file must have. */
static void file_header(const struct log_state *s, unsigned int position,
			uint64_t words, struct log_file *h)
{
	memset(h, 0, sizeof(*h));
	memcpy(h->magic, LOG_FILE_MAGIC, sizeof(h->magic));
	h->version = LOG_FILE_VERSION;
	h->header_size = LOG_FILE_HEADER;
	h->size = s->size;
	h->block = s->block;
	h->nblocks = s->nblocks;
	h->words = words;
	h->position = position;
	strcpy(h->driver, "log");
}

/*
 * A file that is ours but was never finished (the process died while
 * creating it, before serving anything): no magic yet.
 */
static bool file_unfinished(const struct log_file *h)
{
	static const char zero[sizeof(h->magic)];

	return memcmp(h->magic, zero, sizeof(zero)) == 0;
}

/* Why the file's header h is not want's, for the message. */
static int file_refuse(const char *path, const struct log_file *h,
		       const struct log_file *want, off_t len,
		       struct bks_error *err)
{
	if (memcmp(h->magic, want->magic, sizeof(h->magic)) == 0 &&
	    memcmp(h->driver, want->driver, sizeof(h->driver)) == 0 &&
	    h->version != want->version)
		return bks_error_setmsg(
		    err, EEXIST,
		    "state file %s is a log: dirty bitmap of version %u; this "
		    "log: reads only version %u: not used (remove it: "
		    "blkstack-ctl destroy of the dead worker)",
		    path, h->version, want->version);
	if (memcmp(h->magic, want->magic, sizeof(h->magic)) != 0 ||
	    h->header_size != want->header_size ||
	    memcmp(h->driver, want->driver, sizeof(h->driver)) != 0)
		return bks_error_setmsg(
		    err, EEXIST,
		    "state file %s is not a log: dirty bitmap of version %u: "
		    "not used (remove it: blkstack-ctl destroy of the dead "
		    "worker)",
		    path, LOG_FILE_VERSION);
	if (h->size != want->size || h->block != want->block ||
	    h->position != want->position || h->words != want->words ||
	    h->nblocks != want->nblocks)
		return bks_error_setmsg(
		    err, EEXIST,
		    "state file %s is the dirty log of another chain (layer "
		    "%u, %llu bytes in blocks of %llu; this is layer %u, %llu "
		    "bytes in blocks of %llu): not merged (remove it to start "
		    "a new log: blkstack-ctl destroy of the dead worker)",
		    path, h->position, (unsigned long long)h->size,
		    (unsigned long long)h->block, want->position,
		    (unsigned long long)want->size,
		    (unsigned long long)want->block);
	return bks_error_setmsg(
	    err, EEXIST,
	    "state file %s: %lld bytes, not %llu: not written by log:", path,
	    (long long)len,
	    (unsigned long long)(LOG_FILE_HEADER + want->words * 16));
}

/* Count the bits of the two sets again. */
static void count_sets(struct log_state *s)
{
	s->ndirty = s->nfrozen = 0;
	for (uint64_t i = 0; i < s->words; i++) {
		s->ndirty +=
		    (uint64_t)__builtin_popcountll(s->bits[i] | s->frozen[i]);
		s->nfrozen += (uint64_t)__builtin_popcountll(s->frozen[i]);
	}
}

/*
 * Map the bitmaps of words words each from path: the file is created (or
 * an unfinished one initialised) clean, or one with this layer's header
 * taken with its bits and its mark.  Returns 0 or -errno with err set.
 */
static int file_map(struct log_state *s, const char *path,
		    unsigned int position, uint64_t words,
		    struct bks_error *err)
{
	struct log_file want, have = {0};
	size_t len = LOG_FILE_HEADER + 2 * (size_t)words * sizeof(uint64_t);
	struct stat st;
	void *map = MAP_FAILED;
	bool fresh = false;
	ssize_t n;
	int fd, rc;

	fd = open(path, O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0600);
	if (fd < 0)
		return bks_error_set(err, errno, "state file %s", path);
	if (fstat(fd, &st) < 0) {
		rc = bks_error_set(err, errno, "state file %s", path);
		goto out;
	}
	if (!S_ISREG(st.st_mode)) {
		rc = bks_error_setmsg(
		    err, EINVAL, "state file %s is not a regular file", path);
		goto out;
	}
	file_header(s, position, words, &want);
	n = pread(fd, &have, sizeof(have), 0);
	if (n < 0) {
		rc = bks_error_set(err, errno, "state file %s: read", path);
		goto out;
	}
	if (file_unfinished(&have)) {
		/* New, or never finished: start clean (all zero). */
		fresh = true;
		if (ftruncate(fd, 0) < 0 || ftruncate(fd, (off_t)len) < 0) {
			rc = bks_error_set(
			    err, errno, "state file %s: size %zu", path, len);
			goto out;
		}
	} else if (memcmp(&have, &want, sizeof(want)) != 0 ||
		   st.st_size != (off_t)len) {
		rc = file_refuse(path, &have, &want, st.st_size, err);
		goto out;
	}
	/*
	 * Every page allocated now: a full tmpfs fails the open, where a
	 * store into a page it could not allocate would be a SIGBUS later.
	 */
	do /* a signal (the worker's SIGCHLD, say) interrupts it: again */
		rc = posix_fallocate(fd, 0, (off_t)len);
	while (rc == EINTR);
	if (rc != 0) {
		rc = bks_error_set(err, rc, "state file %s: allocate %zu bytes",
				   path, len);
		goto out;
	}
	/* Populated now: no page fault on the data path. */
	map = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE,
		   fd, 0);
	if (map == MAP_FAILED) {
		rc = bks_error_set(err, errno, "state file %s: map", path);
		goto out;
	}
	s->bits = (uint64_t *)((char *)map + LOG_FILE_HEADER);
	s->frozen = s->bits + words;
	s->marked = (uint64_t *)((char *)map + LOG_FILE_MARK);
	if (fresh) {
		struct log_file *h = map;

		/* Everything but the magic, then the magic: finished. */
		memcpy((char *)h + sizeof(h->magic),
		       (char *)&want + sizeof(want.magic),
		       sizeof(want) - sizeof(want.magic));
		__atomic_thread_fence(__ATOMIC_RELEASE);
		memcpy(h->magic, want.magic, sizeof(h->magic));
	}
	/* Bits past the last block would be counted: not ours. */
	if ((s->bits[words - 1] >> (s->nblocks % 64)) != 0 ||
	    (s->frozen[words - 1] >> (s->nblocks % 64)) != 0 ||
	    *s->marked > 1) {
		rc = bks_error_setmsg(err, EINVAL,
				      "state file %s: bits past the last "
				      "block or a mark word other than 0 or "
				      "1: not written by log:",
				      path);
		goto out;
	}
	if (!*s->marked) {
		/* A mark or a clear cut short: the frozen bits are dirty. */
		for (uint64_t i = 0; i < words; i++) {
			s->bits[i] |= s->frozen[i];
			s->frozen[i] = 0;
		}
	}
	count_sets(s);
	s->map = map;
	s->map_len = len;
	map = MAP_FAILED;
	rc = 0;
out:
	if (map != MAP_FAILED) {
		munmap(map, len);
		s->bits = s->frozen = s->marked = NULL;
	}
	close(fd);
	return rc;
}

static const char *const log_keys[] = {"block", NULL};

static int parse_args(struct log_state *s, const char *args,
		      struct bks_error *err)
{
	struct bks_args a;
	int r;

	s->block = BKS_LOG_BLOCK_DEFAULT;
	bks_args_init(&a, args, log_keys, LOG_USAGE);
	while ((r = bks_args_next(&a, err)) > 0) {
		uint64_t v;

		/* The one key: block. */
		r = bks_args_size(&a, &v, err);
		if (r < 0)
			return r;
		if (v & (v - 1))
			return bks_args_bad_value(&a, err,
						  "is not a power of two");
		if (v < BKS_LOG_BLOCK_MIN)
			return bks_args_bad_value(&a, err, "is less than 4K");
		if (v > BKS_LOG_BLOCK_MAX)
			return bks_args_bad_value(&a, err, "is more than 64M");
		s->block = v;
	}
	return r;
}

static int log_check(const char *args, struct bks_error *err)
{
	struct log_state s;

	return parse_args(&s, args, err);
}

static int log_open(void *state, struct bks_layer *self,
		    const struct bks_open_args *args, struct bks_error *err)
{
	struct log_state *s = state;
	uint64_t words;
	int r;

	r = parse_args(s, args->args ? args->args : "", err);
	if (r < 0)
		return r;
	s->shift = (unsigned int)__builtin_ctzll(s->block);
	s->size = bks_next_info(bks_layer_child(self, BKS_CHILD_FILE))->size;
	s->nblocks = (s->size >> s->shift) + !!(s->size & (s->block - 1));
	/* At least one word, so that an empty layer needs no special case. */
	words = s->nblocks / 64 + 1;
	s->words = words;
	if (args->state_path)
		return file_map(s, args->state_path, bks_layer_index(self),
				words, err);
	/* The two sets in one allocation: bits, then frozen. */
	s->bits = calloc(2 * words, sizeof(*s->bits));
	if (!s->bits)
		return bks_error_set(err, ENOMEM, "dirty bitmap of %llu blocks",
				     (unsigned long long)s->nblocks);
	s->frozen = s->bits + words;
	s->marked = &s->mem_marked;
	return 0;
}

static void log_close(void *state, struct bks_layer *self)
{
	struct log_state *s = state;

	(void)self;
	if (s->map)
		munmap(s->map, s->map_len); /* the file stays: see the top */
	else
		free(s->bits);
}

/* Mask of n bits (1..64) starting at bit. */
static uint64_t word_mask(unsigned int bit, uint64_t n)
{
	return (n >= 64 ? ~0ull : (1ull << n) - 1) << bit;
}

/* Set blocks [a, b) in bits, or clear them in both sets. */
static void set_blocks(struct log_state *s, uint64_t a, uint64_t b, bool set)
{
	while (a < b) {
		unsigned int bit = (unsigned int)(a % 64);
		uint64_t n = b - a < 64 - bit ? b - a : 64 - bit;
		uint64_t mask = word_mask(bit, n);
		uint64_t *w = &s->bits[a / 64], *f = &s->frozen[a / 64];

		if (set) {
			s->ndirty +=
			    (uint64_t)__builtin_popcountll(mask & ~(*w | *f));
			*w |= mask;
		} else {
			s->ndirty -=
			    (uint64_t)__builtin_popcountll(mask & (*w | *f));
			s->nfrozen -= (uint64_t)__builtin_popcountll(mask & *f);
			*w &= ~mask;
			*f &= ~mask;
		}
		a += n;
	}
}

/* Which set a walk reads: the dirty one (the union), or the frozen one. */
enum log_set {
	SET_DIRTY,
	SET_FROZEN
};

static uint64_t set_word(const struct log_state *s, uint64_t i,
			 enum log_set which)
{
	return which == SET_FROZEN ? s->frozen[i] : s->bits[i] | s->frozen[i];
}

/* The first block at or after b whose bit in `which` is `set`, or nblocks. */
static uint64_t find_block(const struct log_state *s, uint64_t b, bool set,
			   enum log_set which)
{
	while (b < s->nblocks) {
		unsigned int bit = (unsigned int)(b % 64);
		uint64_t w = set_word(s, b / 64, which);

		if (!set)
			w = ~w;
		w &= ~0ull << bit;
		if (w) {
			b = b - bit + (uint64_t)__builtin_ctzll(w);
			break;
		}
		b += 64 - bit;
	}
	return b < s->nblocks ? b : s->nblocks;
}

/* Mark every block that [offset, offset + len) touches. */
static void mark(struct log_state *s, uint64_t offset, uint64_t len)
{
	uint64_t end;

	/* The framework bounds-checks; this keeps the bitmap safe anyway. */
	if (len == 0 || offset >= s->size)
		return;
	end = len > s->size - offset ? s->size : offset + len;
	set_blocks(s, offset >> s->shift, ((end - 1) >> s->shift) + 1, true);
}

static int log_completed(struct bks_req *req, int result, void *arg)
{
	/*
	 * Again on completion: a clear done while the request was in flight
	 * must not leave data changed after the consumer copied it clean.
	 */
	mark(arg, req->offset, req->len);
	return result;
}

/* write, write_zeroes and discard: mark first, then pass down. */
static int log_modify(void *state, struct bks_layer *self, struct bks_req *req)
{
	struct log_state *s = state;

	mark(s, req->offset, req->len);
	return bks_next_submit_hook(bks_layer_child(self, BKS_CHILD_FILE), req,
				    log_completed, s);
}

/* Bytes of the blocks in a set, the last block counting up to the size. */
static uint64_t set_bytes(const struct log_state *s, enum log_set which)
{
	uint64_t count = which == SET_FROZEN ? s->nfrozen : s->ndirty;
	uint64_t bytes = count << s->shift;
	uint64_t last = s->nblocks - 1;

	if (s->nblocks && (s->size & (s->block - 1)) &&
	    (set_word(s, last / 64, which) >> (last % 64)) & 1)
		bytes -= s->block - (s->size & (s->block - 1));
	return bytes;
}

static uint64_t dirty_bytes(const struct log_state *s)
{
	return set_bytes(s, SET_DIRTY);
}

/*
 * The control socket's "log" object: dirty_bytes, block_size, persisted
 * (tests and tools match it whole: the mark is read with bks_log_marked()
 * and bks_log_frozen_bytes(), not here).
 */
static void log_stats(void *state, struct bks_layer *self,
		      struct bks_stats_out *out)
{
	struct log_state *s = state;

	(void)self;
	bks_stats_u64(out, "dirty_bytes", dirty_bytes(s));
	bks_stats_u64(out, "block_size", s->block);
	bks_stats_u64(out, "persisted", s->map != NULL);
}

/* What parsing needs of log: (bks_driver_descs[] has it alone). */
#define LOG_DESC                                                               \
	{                                                                      \
		.name = "log", .kind = BKS_FILTER, .usage = LOG_USAGE,         \
		.check = log_check                                             \
	}

const struct bks_driver_desc bks_desc_log = LOG_DESC;

const struct bks_driver bks_driver_log = {
    .desc = LOG_DESC,
    .state_size = sizeof(struct log_state),
    .open = log_open,
    .close = log_close,
    /* read and flush: no op, so the framework passes them down. */
    .write = log_modify,
    .discard = log_modify,
    .write_zeroes = log_modify,
    .stats = log_stats,
};

/* ---- the public API (log.h) ---------------------------------------------- */

static struct log_state *log_state_of(struct bks_layer *layer)
{
	if (!layer || bks_layer_driver(layer) != &bks_driver_log)
		return NULL;
	return bks_layer_state(layer);
}

/* The extents of a set from start (bks_log_dirty()). */
static int list_set(struct log_state *s, enum log_set which, uint64_t start,
		    struct bks_extent *out, size_t max, size_t *n)
{
	uint64_t b;

	*n = 0;
	if (start == s->size)
		return 0;
	b = start >> s->shift;
	while (*n < max) {
		uint64_t e, off, end;

		b = find_block(s, b, true, which);
		if (b >= s->nblocks)
			break;
		e = find_block(s, b, false, which);
		off = b << s->shift;
		if (off < start)
			off = start;
		end = e << s->shift;
		if (end > s->size)
			end = s->size;
		out[*n].offset = off;
		out[*n].length = end - off;
		out[*n].flags = 0;
		(*n)++;
		b = e;
	}
	return 0;
}

int bks_log_dirty(struct bks_layer *log, uint64_t start, struct bks_extent *out,
		  size_t max, size_t *n)
{
	struct log_state *s = log_state_of(log);

	if (!s || !n || (max && !out) || start > s->size)
		return -EINVAL;
	return list_set(s, SET_DIRTY, start, out, max, n);
}

int bks_log_clear(struct bks_layer *log, uint64_t offset, uint64_t len)
{
	struct log_state *s = log_state_of(log);
	uint64_t end, first, last;

	if (!s || offset > s->size)
		return -EINVAL;
	end = len > s->size - offset ? s->size : offset + len;
	/* Only whole blocks; the partial last block ends at the size. */
	first = (offset >> s->shift) + !!(offset & (s->block - 1));
	last = end == s->size ? s->nblocks : end >> s->shift;
	if (first < last)
		set_blocks(s, first, last, false);
	return 0;
}

int64_t bks_log_block_size(struct bks_layer *log)
{
	struct log_state *s = log_state_of(log);

	return s ? (int64_t)s->block : -EINVAL;
}

int64_t bks_log_dirty_bytes(struct bks_layer *log)
{
	struct log_state *s = log_state_of(log);

	return s ? (int64_t)dirty_bytes(s) : -EINVAL;
}

/* ---- the mark ------------------------------------------------------------ */

int bks_log_mark(struct bks_layer *log)
{
	struct log_state *s = log_state_of(log);

	if (!s)
		return -EINVAL;
	/* The order keeps the union whole at every step (see the top). */
	for (uint64_t i = 0; i < s->words; i++)
		s->frozen[i] |= s->bits[i];
	__atomic_thread_fence(__ATOMIC_RELEASE);
	*s->marked = 1;
	__atomic_thread_fence(__ATOMIC_RELEASE);
	memset(s->bits, 0, s->words * sizeof(*s->bits));
	count_sets(s);
	return 0;
}

int bks_log_frozen(struct bks_layer *log, uint64_t start,
		   struct bks_extent *out, size_t max, size_t *n)
{
	struct log_state *s = log_state_of(log);

	if (!s || !n || (max && !out) || start > s->size)
		return -EINVAL;
	if (!*s->marked) {
		*n = 0;
		return -ENOENT;
	}
	return list_set(s, SET_FROZEN, start, out, max, n);
}

int bks_log_clear_frozen(struct bks_layer *log)
{
	struct log_state *s = log_state_of(log);

	if (!s)
		return -EINVAL;
	if (!*s->marked)
		return -ENOENT;
	/* The mark first: cut short, the frozen bits come back dirty. */
	*s->marked = 0;
	__atomic_thread_fence(__ATOMIC_RELEASE);
	memset(s->frozen, 0, s->words * sizeof(*s->frozen));
	count_sets(s);
	return 0;
}

bool bks_log_marked(struct bks_layer *log)
{
	struct log_state *s = log_state_of(log);

	return s && *s->marked;
}

int64_t bks_log_frozen_bytes(struct bks_layer *log)
{
	struct log_state *s = log_state_of(log);

	return s ? (int64_t)set_bytes(s, SET_FROZEN) : -EINVAL;
}
