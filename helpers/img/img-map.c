/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* blkstack-img map (img-map.h). */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "blkstack/chain.h"
#include "blkstack/loop.h"
#include "img-map.h"

/* Extents asked for per block status request. */
#define MAP_EXTENTS 256

/* One merged range, as printed. */
struct map_ent {
	uint64_t start, length;
	unsigned int depth; /* qemu-img's: 0 the image, 1 its backing, ... */
	bool present, zero, data;
};

struct map_run {
	struct bks_chain *chain;
	struct bks_loop *loop;
	enum img_map_output output;
	FILE *out;
	unsigned int images; /* in the chain: the image and its backings */
	unsigned int printed;
	struct map_ent cur; /* pending, length 0 when none */
};

struct map_bs {
	struct bks_req req;
	bool done;
	int result;
};

static void map_bs_done(struct bks_req *req, int result)
{
	struct map_bs *b = req->opaque;

	b->done = true;
	b->result = result;
}

/*
 * The chain string "DRIVER:PATH" for the image, its path escaped as the
 * chain grammar wants (chain.h).  Returns 0 or -ENAMETOOLONG.
 */
static int map_chain_string(char *buf, size_t size, const char *fmt,
			    const char *path)
{
	const char *drv = strcmp(fmt, "raw") == 0 ? "aio" : fmt;
	size_t n = 0;
	int w = snprintf(buf, size, "%s:", drv);

	if (w < 0 || (size_t)w >= size)
		return -ENAMETOOLONG;
	n = (size_t)w;
	for (const char *p = path; *p; p++) {
		if (n + 3 > size)
			return -ENAMETOOLONG;
		if (*p == '|' || *p == '\\')
			buf[n++] = '\\';
		buf[n++] = *p;
	}
	buf[n] = '\0';
	return 0;
}

/* The file of the image at qemu depth d (the chain's layer d). */
static const char *map_file(struct map_run *m, unsigned int d)
{
	struct bks_layer *l = bks_chain_layer(m->chain, d);
	const char *a = l ? bks_layer_args(l) : NULL;

	return a ? a : "?";
}

static int map_emit(struct map_run *m, const struct map_ent *e)
{
	int w = 0;

	if (m->output == IMG_MAP_JSON) {
		w = fprintf(m->out,
			    "%s{ \"start\": %" PRIu64 ", \"length\": %" PRIu64
			    ", \"depth\": %u, \"present\": %s, \"zero\": %s, "
			    "\"data\": %s}",
			    m->printed ? ",\n" : "[", e->start, e->length,
			    e->depth, e->present ? "true" : "false",
			    e->zero ? "true" : "false",
			    e->data ? "true" : "false");
	} else if (e->data) {
		if (m->printed == 0)
			w = fprintf(m->out, "%-16s%-16s%s\n", "Offset",
				    "Length", "File");
		if (w >= 0)
			w = fprintf(m->out,
				    "%-#16" PRIx64 "%-#16" PRIx64 "%s\n",
				    e->start, e->length, map_file(m, e->depth));
	} else {
		return 0;
	}
	m->printed++;
	return w < 0 ? -EIO : 0;
}

/* Add one extent of the chain's answer, merging equal neighbours. */
static int map_add(struct map_run *m, const struct bks_extent *x)
{
	struct map_ent e = {
	    .start = x->offset,
	    .length = x->length,
	    .present = x->depth != 0,
	    .zero = (x->flags & BKS_EXTENT_ZERO) != 0,
	    /*
	     * qemu-img's data: stored data.  A range that reads as zeroes
	     * is not, allocated or not (a qcow2 zero cluster says zero
	     * without hole: it hides the backing file).
	     */
	    .data = !(x->flags & (BKS_EXTENT_HOLE | BKS_EXTENT_ZERO)),
	};
	int r;

	/* Not in any image: qemu-img says the depth of the last one. */
	e.depth = x->depth ? x->depth - 1 : m->images - 1;
	if (m->cur.length && m->cur.start + m->cur.length == e.start &&
	    m->cur.depth == e.depth && m->cur.present == e.present &&
	    m->cur.zero == e.zero && m->cur.data == e.data) {
		m->cur.length += e.length;
		return 0;
	}
	if (m->cur.length) {
		r = map_emit(m, &m->cur);
		if (r < 0)
			return r;
	}
	m->cur = e;
	return 0;
}

/* Block status of [off, end): add its extents; *next where it stopped. */
static int map_step(struct map_run *m, uint64_t off, uint64_t end,
		    struct bks_extent *ext, uint64_t *next,
		    struct bks_error *err)
{
	struct map_bs b;
	uint64_t deadline = bks_now_ns() + IMG_MAP_TIMEOUT_NS, pos = off;
	int r;

	memset(&b, 0, sizeof(b));
	b.req.op = BKS_OP_BLOCK_STATUS;
	b.req.offset = off;
	b.req.len = end - off;
	b.req.extents = ext;
	b.req.extents_max = MAP_EXTENTS;
	b.req.done = map_bs_done;
	b.req.opaque = &b;
	bks_chain_submit(m->chain, &b.req);
	while (!b.done) {
		if (bks_now_ns() >= deadline)
			/* Still in flight: the chain cannot be closed. */
			return bks_error_setmsg(
			    err, ETIMEDOUT,
			    "block status at %" PRIu64 ": no answer in %llu s",
			    off, IMG_MAP_TIMEOUT_NS / 1000000000ull);
		r = bks_loop_run_once(m->loop, 1000);
		if (r < 0)
			return bks_error_set(err, -r, "event loop");
	}
	if (b.result < 0)
		return bks_error_set(err, -b.result, "block status at %" PRIu64,
				     off);
	if (b.req.nextents == 0 || b.req.nextents > MAP_EXTENTS)
		return bks_error_setmsg(
		    err, EIO, "block status at %" PRIu64 ": %u extents", off,
		    b.req.nextents);
	for (uint32_t i = 0; i < b.req.nextents; i++) {
		struct bks_extent x = ext[i];

		/* The chain promises them in order from off: check it. */
		if (x.offset != pos || x.length == 0 || x.length > end - pos)
			return bks_error_setmsg(
			    err, EIO,
			    "block status at %" PRIu64 ": extent %u at %" PRIu64
			    " (%" PRIu64 " bytes) does not follow %" PRIu64,
			    off, i, x.offset, x.length, pos);
		r = map_add(m, &x);
		if (r < 0)
			return bks_error_set(err, -r, "write the map");
		pos += x.length;
	}
	*next = pos;
	return 0;
}

int img_map(const char *path, const char *fmt, enum img_map_output output,
	    FILE *out, struct bks_error *err)
{
	struct map_run m = {.output = output, .out = out};
	struct bks_extent *ext = NULL;
	struct bks_chain_config cfg = {0};
	char chain[BKS_CHAIN_STR_MAX + 1];
	uint64_t off = 0, size;
	int r;

	r = map_chain_string(chain, sizeof(chain), fmt, path);
	if (r < 0) {
		bks_error_setmsg(err, -r, "%s: path too long for a chain",
				 path);
		goto out;
	}
	ext = calloc(MAP_EXTENTS, sizeof(*ext));
	if (!ext) {
		r = bks_error_set(err, ENOMEM, "map %s", path);
		goto out;
	}
	r = bks_loop_new(&m.loop, err);
	if (r < 0)
		goto out;
	cfg.loop = m.loop;
	cfg.read_only = true;
	r = bks_chain_open_config(&m.chain, chain, &cfg, err);
	if (r < 0) {
		bks_error_prepend(err, "open %s: ", path);
		goto out;
	}
	m.images = bks_chain_layers(m.chain);
	size = bks_chain_info(m.chain)->size;
	while (off < size) {
		r = map_step(&m, off, size, ext, &off, err);
		if (r < 0) {
			bks_error_prepend(err, "map %s: ", path);
			goto out;
		}
	}
	if (m.cur.length) {
		r = map_emit(&m, &m.cur);
		if (r < 0) {
			bks_error_set(err, -r, "write the map of %s", path);
			goto out;
		}
	}
	if (output == IMG_MAP_JSON &&
	    fprintf(out, "%s\n", m.printed ? "]" : "[]") < 0) {
		r = bks_error_set(err, EIO, "write the map of %s", path);
		goto out;
	}
	r = 0;
out:
	/*
	 * A request still in flight (a timeout) pins the chain and its
	 * loop: leave both to the process's exit.
	 */
	if (m.chain && bks_chain_in_flight(m.chain) != 0) {
		m.chain = NULL;
		m.loop = NULL;
	}
	if (m.chain)
		bks_chain_close(m.chain);
	if (m.loop)
		bks_loop_free(m.loop);
	free(ext);
	return r;
}
