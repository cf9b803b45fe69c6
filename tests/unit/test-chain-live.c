/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Unit tests: changing a running chain for snapshot, swap, commit and
 * stream (chain-live.c): bks_layer_submit() while drained and its drain
 * accounting, bks_layer_reopen_mode(), bks_chain_insert_overlay(),
 * bks_chain_drop_images(), bks_chain_swap(), bks_chain_string(); range
 * locks and write watches (chain-lock.c); the log: mark and its state
 * file.
 *
 * The images are tim: layers, a test driver of this file: a sink held in
 * memory, whose image (a record in the rig, named by the args) says its
 * parent (get_parent), counts its opens, closes and reopens, can refuse a
 * reopen, and can hold its requests until the test lets them go (the
 * completion of a disk that answers later).  Reads of blocks it does not
 * have go to its BKS_CHILD_BACKING through the framework, so that every
 * relink the tests make is what serves the data.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "blkstack/chain.h"
#include "blkstack/iov.h"
#include "blkstack/log.h"
#include "fw-drivers.h"
#include "unit-util.h"

#define K	 1024u
#define TIM_BS	 512u
#define TIM_MAX	 (64u * K)
#define TIM_NBLK (TIM_MAX / TIM_BS)
#define TIM_IMGS 20
#define TIM_HOLD 8

/* ---- tim: the test image ------------------------------------------------- */

struct tim_img {
	char name[16];
	char parent[16]; /* "" for none */
	uint64_t size;
	unsigned char data[TIM_MAX];
	bool alloc[TIM_NBLK];
	bool fail_reopen, hold;
	unsigned int opens, closes, open_now, reopens;
	struct bks_req *held[TIM_HOLD];
	struct bks_layer *held_layer[TIM_HOLD];
	unsigned int nheld;
};

/* The images, by name: what tim: layers open (the tests' one static). */
static struct tim_img tim_imgs[TIM_IMGS];

static struct tim_img *tim_new(const char *name, const char *parent,
			       uint64_t size)
{
	for (unsigned int i = 0; i < TIM_IMGS; i++) {
		struct tim_img *m = &tim_imgs[i];

		if (m->name[0])
			continue;
		memset(m, 0, sizeof(*m));
		snprintf(m->name, sizeof(m->name), "%s", name);
		snprintf(m->parent, sizeof(m->parent), "%s",
			 parent ? parent : "");
		m->size = size ? size : TIM_MAX;
		return m;
	}
	fail_msg("too many tim images");
	return NULL;
}

static struct tim_img *tim_find(const char *name)
{
	for (unsigned int i = 0; i < TIM_IMGS; i++) {
		if (tim_imgs[i].name[0] && strcmp(tim_imgs[i].name, name) == 0)
			return &tim_imgs[i];
	}
	return NULL;
}

struct tim_state {
	struct tim_img *img;
	bool ro, new_ro;
};

static const struct bks_driver tim_driver;

static int tim_open(void *state, struct bks_layer *self,
		    const struct bks_open_args *args, struct bks_error *err)
{
	struct tim_state *s = state;

	(void)self;
	s->img = tim_find(args->args);
	if (!s->img)
		return bks_error_setmsg(err, ENOENT, "tim: no image '%s'",
					args->args);
	s->ro = args->read_only;
	s->img->opens++;
	s->img->open_now++;
	return 0;
}

static void tim_close(void *state, struct bks_layer *self)
{
	struct tim_state *s = state;

	(void)self;
	s->img->closes++;
	s->img->open_now--;
}

static int tim_info(void *state, struct bks_layer *self, struct bks_info *info)
{
	struct tim_state *s = state;

	(void)self;
	info->size = s->img->size;
	info->block_size = TIM_BS;
	info->ops = BKS_OPF(BKS_OP_READ) | BKS_OPF(BKS_OP_WRITE) |
		    BKS_OPF(BKS_OP_FLUSH) | BKS_OPF(BKS_OP_DISCARD) |
		    BKS_OPF(BKS_OP_WRITE_ZEROES);
	info->read_only = s->ro;
	return 0;
}

static int tim_parent(void *state, struct bks_layer *self, char *buf,
		      size_t size, struct bks_error *err)
{
	struct tim_state *s = state;

	(void)self;
	(void)err;
	if (!s->img->parent[0])
		return BKS_NO_PARENT;
	snprintf(buf, size, "tim:%s", s->img->parent);
	return 0;
}

/* Copy the blocks img has over what the backing read (or zeroes). */
static void tim_copy_own(struct tim_img *m, struct bks_req *req, bool all)
{
	for (uint64_t off = 0; off < req->len; off += TIM_BS) {
		uint64_t b = (req->offset + off) / TIM_BS;

		if (m->alloc[b])
			bks_iov_from_buf(req, off, m->data + b * TIM_BS,
					 TIM_BS);
		else if (all)
			bks_iov_zero(req, off, TIM_BS);
	}
}

static int tim_backing_read(struct bks_req *req, int result, void *arg)
{
	if (result == 0)
		tim_copy_own(arg, req, false);
	return result;
}

/* Do the request now. */
static void tim_do(struct bks_layer *self, struct bks_req *req)
{
	struct tim_state *s = bks_layer_state(self);
	struct tim_img *m = s->img;
	struct bks_layer *backing = bks_layer_child(self, BKS_CHILD_BACKING);
	uint64_t b0 = req->offset / TIM_BS, nb = req->len / TIM_BS;
	bool all = true;

	switch (req->op) {
	case BKS_OP_READ:
		for (uint64_t b = b0; b < b0 + nb; b++)
			all = all && m->alloc[b];
		if (all || !backing) {
			tim_copy_own(m, req, true);
			bks_req_complete(req, 0);
			return;
		}
		if (bks_next_submit_hook(backing, req, tim_backing_read, m) < 0)
			bks_req_complete(req, -ENOSPC);
		return;
	case BKS_OP_WRITE:
		bks_iov_to_buf(req, 0, m->data + req->offset, req->len);
		break;
	case BKS_OP_DISCARD:
	case BKS_OP_WRITE_ZEROES:
		memset(m->data + req->offset, 0, req->len);
		break;
	default:
		bks_req_complete(req, 0);
		return;
	}
	for (uint64_t b = b0; b < b0 + nb; b++)
		m->alloc[b] = true;
	bks_req_complete(req, 0);
}

static int tim_op(void *state, struct bks_layer *self, struct bks_req *req)
{
	struct tim_state *s = state;
	struct tim_img *m = s->img;

	if (m->hold) {
		assert_true(m->nheld < TIM_HOLD);
		m->held_layer[m->nheld] = self;
		m->held[m->nheld++] = req;
		return 0;
	}
	tim_do(self, req);
	return 0;
}

/* Let the held requests of m go, oldest first. */
static void tim_release(struct tim_img *m)
{
	unsigned int n = m->nheld;

	m->hold = false;
	m->nheld = 0;
	for (unsigned int i = 0; i < n; i++)
		tim_do(m->held_layer[i], m->held[i]);
}

/* The allocation depth of block b at layer l: 1 its own, 0 nobody's. */
static uint32_t tim_depth(struct bks_layer *l, uint64_t b)
{
	for (uint32_t d = 1; l;
	     d++, l = bks_layer_child(l, BKS_CHILD_BACKING)) {
		struct tim_state *s = bks_layer_state(l);

		if (bks_layer_driver(l) != &tim_driver)
			return d; /* another sink: all data */
		if (s->img->alloc[b])
			return d;
	}
	return 0;
}

static int tim_status(void *state, struct bks_layer *self, struct bks_req *req)
{
	uint64_t b = req->offset / TIM_BS;
	uint64_t end = req->offset + req->len;
	uint32_t n = 0;

	(void)state;
	while (b * TIM_BS < end && n < req->extents_max) {
		uint32_t d = tim_depth(self, b);
		uint64_t e = b + 1;
		struct bks_extent *x = &req->extents[n++];

		while (e * TIM_BS < end && tim_depth(self, e) == d)
			e++;
		x->offset = n == 1 ? req->offset : b * TIM_BS;
		x->length = (e * TIM_BS < end ? e * TIM_BS : end) - x->offset;
		x->flags = d ? 0 : BKS_EXTENT_HOLE | BKS_EXTENT_ZERO;
		x->depth = d;
		b = e;
	}
	req->nextents = n;
	bks_req_complete(req, 0);
	return 0;
}

static int tim_reopen_prepare(void *state, struct bks_layer *self,
			      const struct bks_open_args *args,
			      struct bks_error *err)
{
	struct tim_state *s = state;

	if (strcmp(args->args, bks_layer_args(self)) != 0)
		return bks_error_setmsg(err, EOPNOTSUPP,
					"tim: reopen: only the read-only mode "
					"can change");
	if (s->img->fail_reopen)
		return bks_error_setmsg(err, EIO, "tim: reopen refused");
	s->new_ro = args->read_only;
	return 0;
}

static void tim_reopen_commit(void *state, struct bks_layer *self)
{
	struct tim_state *s = state;

	(void)self;
	s->ro = s->new_ro;
	s->img->reopens++;
}

static void tim_reopen_abort(void *state, struct bks_layer *self)
{
	(void)state;
	(void)self;
}

static const struct bks_driver tim_driver = {
    .name = "tim",
    .kind = BKS_SINK,
    .usage = "tim:NAME",
    .state_size = sizeof(struct tim_state),
    .open = tim_open,
    .close = tim_close,
    .info = tim_info,
    .read = tim_op,
    .write = tim_op,
    .flush = tim_op,
    .discard = tim_op,
    .write_zeroes = tim_op,
    .block_status = tim_status,
    .get_parent = tim_parent,
    .reopen_prepare = tim_reopen_prepare,
    .reopen_commit = tim_reopen_commit,
    .reopen_abort = tim_reopen_abort,
};

static const struct bks_driver *const live_drivers[] = {
    &tim_driver, &fw_driver_hold, &fw_driver_fmt, &fw_driver_rec, NULL,
};

/* ---- the rig ------------------------------------------------------------- */

#define NREQ 8

struct rig {
	struct bks_loop *loop;
	struct bks_chain *chain;
	struct bks_req reqs[NREQ];
	struct iovec iov[NREQ];
	int results[NREQ]; /* 1: not completed yet */
	unsigned int order[NREQ * 4], dones;
	unsigned char buf[NREQ][4 * K];
	unsigned int drained;
	char dir[256];
};

static int rig_setup(void **state)
{
	struct rig *r = calloc(1, sizeof(*r));
	struct bks_error err = {0};

	assert_non_null(r);
	memset(tim_imgs, 0, sizeof(tim_imgs));
	assert_int_equal(bks_loop_new(&r->loop, &err), 0);
	*state = r;
	return 0;
}

static int rig_teardown(void **state)
{
	struct rig *r = *state;

	if (r->chain) {
		assert_int_equal(bks_chain_in_flight(r->chain), 0);
		bks_chain_close(r->chain);
	}
	for (unsigned int i = 0; i < TIM_IMGS; i++)
		assert_int_equal(tim_imgs[i].open_now, 0);
	if (r->dir[0]) {
		DIR *d = opendir(r->dir);
		struct dirent *e;
		char path[600];

		while (d && (e = readdir(d))) {
			if (e->d_name[0] == '.')
				continue;
			snprintf(path, sizeof(path), "%s/%s", r->dir,
				 e->d_name);
			unlink(path);
		}
		if (d)
			closedir(d);
		rmdir(r->dir);
	}
	bks_loop_free(r->loop);
	free(r);
	return 0;
}

/* A state directory for the rig (removed at teardown). */
static const char *rig_dir(struct rig *r)
{
	const char *base = getenv("BKS_TEST_TMPDIR");

	if (!base || !*base)
		base = "/var/tmp";
	snprintf(r->dir, sizeof(r->dir), "%s/blkstack-live-XXXXXX", base);
	assert_non_null(mkdtemp(r->dir));
	return r->dir;
}

static struct bks_chain *open_cfg(struct rig *r, const char *s, bool no_backing,
				  const char *state_dir)
{
	struct bks_chain_config cfg = {
	    .loop = r->loop,
	    .extra = live_drivers,
	    .state_dir = state_dir,
	    .no_backing = no_backing,
	};
	struct bks_error err = {0};
	struct bks_chain *c = NULL;

	if (bks_chain_open_config(&c, s, &cfg, &err))
		fail_msg("%s: %s", s, err.msg);
	return c;
}

static void rig_open(struct rig *r, const char *s)
{
	r->chain = open_cfg(r, s, false, NULL);
}

static void req_done(struct bks_req *req, int result)
{
	struct rig *r = req->opaque;
	unsigned int i = (unsigned int)(req - r->reqs);

	assert_int_equal(r->results[i], 1); /* exactly once */
	r->results[i] = result;
	r->order[r->dones++] = i;
}

/* Request i: op at offset, len bytes in the rig's buffer i. */
static struct bks_req *req_set(struct rig *r, unsigned int i, enum bks_op op,
			       uint64_t offset, uint64_t len)
{
	struct bks_req *req = &r->reqs[i];

	assert_true(len <= sizeof(r->buf[i]));
	memset(req, 0, sizeof(*req));
	req->op = op;
	req->offset = offset;
	req->len = len;
	if (op == BKS_OP_READ || op == BKS_OP_WRITE) {
		r->iov[i].iov_base = r->buf[i];
		r->iov[i].iov_len = len;
		req->iov = &r->iov[i];
		req->iovcnt = 1;
	}
	req->done = req_done;
	req->opaque = r;
	r->results[i] = 1;
	return req;
}

static void spin(struct rig *r)
{
	for (int i = 0; i < 4; i++)
		bks_loop_run_once(r->loop, 0);
}

/* Submit request i at the top. */
static void submit(struct rig *r, unsigned int i, enum bks_op op,
		   uint64_t offset, uint64_t len)
{
	assert_int_equal(
	    bks_chain_submit(r->chain, req_set(r, i, op, offset, len)), 0);
}

/* Submit at the top, let the loop run, return the result. */
static int io(struct rig *r, enum bks_op op, uint64_t offset, uint64_t len)
{
	submit(r, NREQ - 1, op, offset, len);
	spin(r);
	assert_int_not_equal(r->results[NREQ - 1], 1);
	return r->results[NREQ - 1];
}

/* Write len bytes of byte c at offset through the chain. */
static void put(struct rig *r, uint64_t offset, uint64_t len, int c)
{
	memset(r->buf[NREQ - 1], c, len);
	assert_int_equal(io(r, BKS_OP_WRITE, offset, len), 0);
}

/* Read len bytes at offset through the chain: all byte c? */
static void expect(struct rig *r, uint64_t offset, uint64_t len, int c)
{
	memset(r->buf[NREQ - 1], 0xee, len);
	assert_int_equal(io(r, BKS_OP_READ, offset, len), 0);
	for (uint64_t i = 0; i < len; i++) {
		if (r->buf[NREQ - 1][i] != c)
			fail_msg("byte %llu: 0x%02x, not 0x%02x",
				 (unsigned long long)(offset + i),
				 r->buf[NREQ - 1][i], c);
	}
}

static void on_drained(void *arg)
{
	((struct rig *)arg)->drained++;
}

static void drain(struct rig *r)
{
	unsigned int before = r->drained;

	assert_int_equal(bks_chain_drain_begin(r->chain, on_drained, r), 0);
	spin(r);
	assert_int_equal(r->drained, before + 1);
	assert_true(bks_chain_is_drained(r->chain));
}

/* The layer walk as "name:args" words, top first. */
static void expect_layers(struct bks_chain *c, const char *want)
{
	char got[512] = "";
	size_t n = 0;

	for (struct bks_layer *l = bks_chain_top(c); l;
	     l = bks_chain_next_layer(l)) {
		n += (size_t)snprintf(got + n, sizeof(got) - n, "%s%s:%s",
				      n ? " " : "", bks_layer_driver(l)->name,
				      bks_layer_args(l));
	}
	assert_string_equal(got, want);
	/* Numbered in walk order, counted. */
	n = 0;
	for (struct bks_layer *l = bks_chain_top(c); l;
	     l = bks_chain_next_layer(l))
		assert_int_equal(bks_layer_index(l), n++);
	assert_int_equal(bks_chain_layers(c), n);
}

/* The layer of c holding image name. */
static struct bks_layer *img_layer(struct bks_chain *c, const char *name)
{
	for (struct bks_layer *l = bks_chain_top(c); l;
	     l = bks_chain_next_layer(l)) {
		if (strcmp(bks_layer_driver(l)->name, "tim") == 0 &&
		    strcmp(bks_layer_args(l), name) == 0)
			return l;
	}
	fail_msg("no image %s in the chain", name);
	return NULL;
}

/* ---- bks_chain_sink, bks_chain_string, no_backing ------------------------ */

static void test_sink_string(void **state)
{
	struct rig *r = *state;
	char buf[256];
	struct bks_chain *c;
	struct bks_error err = {0};
	struct bks_chain_config cfg = {.loop = r->loop, .extra = live_drivers};

	tim_new("p|q", "b", 0);
	tim_new("b", NULL, 0);
	rig_open(r, "log:|rec:|tim:p\\|q");
	expect_layers(r->chain, "log: rec: tim:p|q tim:b");
	assert_ptr_equal(bks_chain_sink(r->chain), img_layer(r->chain, "p|q"));
	assert_int_equal(bks_chain_string(r->chain, NULL, buf, sizeof(buf)),
			 strlen("log:|rec:|tim:p\\|q"));
	assert_string_equal(buf, "log:|rec:|tim:p\\|q");
	/* What a commit of the sink into b leaves. */
	assert_int_equal(bks_chain_string(r->chain, img_layer(r->chain, "b"),
					  buf, sizeof(buf)),
			 strlen("log:|rec:|tim:b"));
	assert_string_equal(buf, "log:|rec:|tim:b");
	/* Too small (NUL included), not an image. */
	assert_int_equal(bks_chain_string(r->chain, NULL, buf, 18),
			 -ENAMETOOLONG);
	assert_int_equal(bks_chain_string(r->chain, NULL, buf, 19), 18);
	assert_int_equal(bks_chain_string(r->chain, bks_chain_top(r->chain),
					  buf, sizeof(buf)),
			 -EINVAL);

	/* no_backing: the sink alone; refused for more than one layer. */
	c = open_cfg(r, "tim:p\\|q", true, NULL);
	expect_layers(c, "tim:p|q");
	assert_ptr_equal(bks_chain_sink(c), bks_chain_top(c));
	bks_chain_close(c);
	cfg.no_backing = true;
	assert_int_equal(bks_chain_open_config(&c, "log:|tim:b", &cfg, &err),
			 -EINVAL);
	assert_non_null(strstr(err.msg, "one-layer"));
	assert_null(c);
}

/* ---- bks_layer_submit ---------------------------------------------------- */

static void test_layer_submit_drained(void **state)
{
	struct rig *r = *state;
	struct bks_chain_stats st;
	struct bks_layer *hold;

	tim_new("a", "b", 0);
	tim_new("b", NULL, 0)->alloc[2] = true;
	tim_find("b")->data[2 * TIM_BS] = 0x5b;
	rig_open(r, "hold:|tim:a");
	hold = bks_chain_top(r->chain);
	drain(r);
	assert_true(bks_chain_draining(r->chain));

	/* Not parked: the hold: layer has it, and the chain is busy. */
	memset(r->buf[0], 0x11, TIM_BS);
	assert_int_equal(
	    bks_layer_submit(hold, req_set(r, 0, BKS_OP_WRITE, 0, TIM_BS)), 0);
	assert_int_equal(hold_count(hold), 1);
	bks_chain_get_stats(r->chain, &st);
	assert_int_equal(st.busy, 1);
	assert_int_equal(st.parked, 0);
	assert_false(bks_chain_is_drained(r->chain));
	/* A second drain waits for it. */
	assert_int_equal(bks_chain_drain_begin(r->chain, on_drained, r), 0);
	spin(r);
	assert_int_equal(r->drained, 1);
	hold_release(hold, 1);
	assert_int_equal(r->results[0], 0);
	assert_int_equal(r->dones, 1);
	spin(r);
	assert_int_equal(r->drained, 2);
	bks_chain_get_stats(r->chain, &st);
	assert_int_equal(st.busy, 0);
	assert_int_equal(tim_find("a")->data[0], 0x11);

	/* A parent, directly: read-only, checked like any submission. */
	assert_int_equal(
	    bks_layer_submit(img_layer(r->chain, "b"),
			     req_set(r, 1, BKS_OP_WRITE, 0, TIM_BS)),
	    0);
	assert_int_equal(r->results[1], -EROFS);
	assert_int_equal(
	    bks_layer_submit(img_layer(r->chain, "b"),
			     req_set(r, 2, BKS_OP_READ, 2 * TIM_BS, TIM_BS)),
	    0);
	assert_int_equal(r->results[2], 0);
	assert_int_equal(r->buf[2][0], 0x5b);
	/* Not padded: a partial block is refused. */
	assert_int_equal(bks_layer_submit(img_layer(r->chain, "a"),
					  req_set(r, 3, BKS_OP_READ, 100, 512)),
			 0);
	assert_int_equal(r->results[3], -EINVAL);
	/* Block status at a layer, depth counted from it. */
	{
		struct bks_extent ext[4];
		struct bks_req *q =
		    req_set(r, 4, BKS_OP_BLOCK_STATUS, 0, 4 * TIM_BS);

		q->extents = ext;
		q->extents_max = 4;
		assert_int_equal(bks_layer_submit(img_layer(r->chain, "a"), q),
				 0);
		assert_int_equal(r->results[4], 0);
		assert_int_equal(q->nextents, 4);
		assert_int_equal(ext[0].depth, 1); /* block 0: written */
		assert_int_equal(ext[1].depth, 0);
		assert_int_equal(ext[2].depth, 2); /* block 2: b's */
		assert_int_equal(ext[3].depth, 0);
		assert_int_equal(ext[3].offset + ext[3].length, 4 * TIM_BS);
	}
	bks_chain_get_stats(r->chain, &st);
	assert_int_equal(st.busy, 0);
	assert_true(bks_chain_is_drained(r->chain));
	assert_int_equal(bks_layer_submit(NULL, &r->reqs[0]), -EINVAL);
	bks_chain_drain_end(r->chain);
	assert_true(bks_chain_draining(r->chain));
	bks_chain_drain_end(r->chain);
	assert_false(bks_chain_draining(r->chain));
}

/* ---- bks_layer_reopen_mode ----------------------------------------------- */

static void test_reopen_mode(void **state)
{
	struct rig *r = *state;
	struct bks_error err = {0};
	struct bks_layer *b;
	struct bks_chain *ram;

	tim_new("a", "b", 0);
	tim_new("b", NULL, 0);
	rig_open(r, "log:|tim:a");
	b = img_layer(r->chain, "b");
	assert_true(bks_next_info(b)->read_only);
	assert_int_equal(bks_layer_reopen_mode(b, false, &err), -EBUSY);
	assert_non_null(strstr(err.msg, "not drained"));
	bks_error_clear(&err);

	drain(r);
	assert_int_equal(bks_layer_reopen_mode(b, false, &err), 0);
	assert_false(bks_next_info(b)->read_only);
	assert_int_equal(tim_find("b")->reopens, 1);
	/* The same mode: nothing to do. */
	assert_int_equal(bks_layer_reopen_mode(b, false, &err), 0);
	assert_int_equal(tim_find("b")->reopens, 1);
	bks_chain_drain_end(r->chain);

	memset(r->buf[0], 0x22, TIM_BS);
	assert_int_equal(
	    bks_layer_submit(b, req_set(r, 0, BKS_OP_WRITE, TIM_BS, TIM_BS)),
	    0);
	assert_int_equal(r->results[0], 0);
	assert_true(tim_find("b")->alloc[1]);
	/* Seen through the chain, below a's hole. */
	expect(r, TIM_BS, TIM_BS, 0x22);

	/* Refused: the layer serves as before, the message says which. */
	drain(r);
	tim_find("b")->fail_reopen = true;
	assert_int_equal(bks_layer_reopen_mode(b, true, &err), -EIO);
	assert_non_null(strstr(err.msg, "layer 3 (tim): reopen read-only: "));
	assert_non_null(strstr(err.msg, "tim: reopen refused"));
	bks_error_clear(&err);
	assert_false(bks_next_info(b)->read_only);
	tim_find("b")->fail_reopen = false;
	/* The sink read-only: the chain's info says so at the top. */
	assert_int_equal(
	    bks_layer_reopen_mode(img_layer(r->chain, "a"), true, &err), 0);
	assert_true(bks_chain_info(r->chain)->read_only);
	assert_int_equal(
	    bks_layer_reopen_mode(img_layer(r->chain, "a"), false, &err), 0);
	assert_false(bks_chain_info(r->chain)->read_only);
	assert_int_equal(bks_layer_reopen_mode(b, true, &err), 0);
	assert_true(bks_next_info(b)->read_only);
	bks_chain_drain_end(r->chain);
	assert_int_equal(
	    bks_layer_submit(b, req_set(r, 1, BKS_OP_WRITE, 0, TIM_BS)), 0);
	assert_int_equal(r->results[1], -EROFS);

	/* A driver without reopen ops. */
	ram = open_cfg(r, "ram:64K", false, NULL);
	assert_int_equal(bks_chain_drain_begin(ram, NULL, NULL), 0);
	assert_int_equal(bks_layer_reopen_mode(bks_chain_top(ram), true, &err),
			 -EOPNOTSUPP);
	assert_non_null(strstr(err.msg, "layer 1 (ram): cannot be reopened"));
	bks_chain_drain_end(ram);
	bks_chain_close(ram);
}

/* ---- bks_chain_insert_overlay -------------------------------------------- */

/* Snapshot: the overlay under log:, the dirty log going on. */
static void test_insert_overlay(void **state)
{
	struct rig *r = *state;
	struct bks_error err = {0};
	struct bks_chain *ov, *two;
	struct bks_extent ext[4];
	size_t n;

	tim_new("a", NULL, 0);
	tim_new("o", "a", 0);
	tim_new("small", NULL, 32 * K);
	rig_open(r, "log:block=4K|tim:a");
	put(r, 0, 4 * K, 0xaa);

	ov = open_cfg(r, "tim:o", true, NULL);
	assert_int_equal(bks_chain_layers(ov), 1);
	assert_int_equal(bks_chain_insert_overlay(r->chain, &ov, &err), -EBUSY);
	bks_error_clear(&err);
	drain(r);
	assert_int_equal(
	    bks_layer_reopen_mode(bks_chain_sink(r->chain), true, &err), 0);
	assert_int_equal(bks_chain_insert_overlay(r->chain, &ov, &err), 0);
	assert_null(ov);
	expect_layers(r->chain, "log:block=4K tim:o tim:a");
	assert_ptr_equal(bks_chain_sink(r->chain), img_layer(r->chain, "o"));
	assert_false(bks_chain_info(r->chain)->read_only);
	bks_chain_drain_end(r->chain);

	/* Reads come through the old top; writes land in the overlay. */
	expect(r, 0, 4 * K, 0xaa);
	put(r, 8 * K, 4 * K, 0x0b);
	assert_true(tim_find("o")->alloc[16]);
	assert_false(tim_find("a")->alloc[16]);
	assert_int_equal(io(r, BKS_OP_WRITE, 0, 512), 0); /* a is ro now */
	assert_int_equal(tim_find("a")->data[0], 0xaa);
	assert_int_equal(
	    bks_log_dirty(bks_chain_find(r->chain, "log"), 0, ext, 4, &n), 0);
	assert_int_equal(n, 2);
	assert_int_equal(ext[0].offset, 0);
	assert_int_equal(ext[1].offset, 8 * K);

	/* Refusals, nothing changed. */
	drain(r);
	ov = open_cfg(r, "tim:small", true, NULL);
	assert_int_equal(bks_chain_insert_overlay(r->chain, &ov, &err),
			 -EINVAL);
	assert_string_equal(err.msg, "overlay: size 32768, the chain's 65536");
	bks_error_clear(&err);
	assert_non_null(ov);
	bks_chain_close(ov);
	two = open_cfg(r, "log:|tim:small", false, NULL);
	assert_int_equal(bks_chain_insert_overlay(r->chain, &two, &err),
			 -EINVAL);
	assert_non_null(strstr(err.msg, "not one sink"));
	bks_error_clear(&err);
	assert_non_null(two);
	bks_chain_close(two);
	assert_int_equal(bks_chain_insert_overlay(r->chain, NULL, &err),
			 -EINVAL);
	bks_error_clear(&err);
	expect_layers(r->chain, "log:block=4K tim:o tim:a");
	bks_chain_drain_end(r->chain);
}

/* No filter: the overlay becomes the top; too many layers: -ELOOP. */
static void test_insert_overlay_top_and_loop(void **state)
{
	struct rig *r = *state;
	struct bks_error err = {0};
	struct bks_chain *ov;
	char name[8], parent[8];

	for (int i = 0; i < 16; i++) {
		snprintf(name, sizeof(name), "i%d", i);
		snprintf(parent, sizeof(parent), "i%d", i + 1);
		tim_new(name, i < 15 ? parent : NULL, 0);
	}
	tim_new("top", "i0", 0);
	rig_open(r, "tim:i1");
	assert_int_equal(bks_chain_layers(r->chain), 15);
	drain(r);
	ov = open_cfg(r, "tim:i0", true, NULL);
	assert_int_equal(bks_chain_insert_overlay(r->chain, &ov, &err), 0);
	assert_ptr_equal(bks_chain_top(r->chain), bks_chain_sink(r->chain));
	assert_string_equal(bks_layer_args(bks_chain_top(r->chain)), "i0");
	assert_int_equal(bks_chain_layers(r->chain), 16);
	ov = open_cfg(r, "tim:top", true, NULL);
	assert_int_equal(bks_chain_insert_overlay(r->chain, &ov, &err), -ELOOP);
	assert_non_null(strstr(err.msg, "more than 16 layers"));
	bks_chain_close(ov);
	bks_chain_drain_end(r->chain);
	assert_int_equal(tim_find("i0")->open_now, 1);
}

/* ---- bks_chain_drop_images ----------------------------------------------- */

/* Block blk of image m holds c. */
static void img_put(struct tim_img *m, unsigned int blk, int c)
{
	m->alloc[blk] = true;
	memset(m->data + blk * TIM_BS, c, TIM_BS);
}

/*
 * t on m on b; log: above.  t has block 0 (0x10), m block 1 (0x20), b
 * blocks 1 and 2 (0x30): the chain reads 0x10 0x20 0x30.
 */
static void three(struct rig *r)
{
	img_put(tim_new("t", "m", 0), 0, 0x10);
	img_put(tim_new("m", "b", 0), 1, 0x20);
	img_put(tim_new("b", NULL, 0), 1, 0x30);
	img_put(tim_find("b"), 2, 0x30);
	rig_open(r, "log:|tim:t");
	expect_layers(r->chain, "log: tim:t tim:m tim:b");
}

static void expect_byte(struct rig *r, uint64_t block, int c)
{
	memset(r->buf[NREQ - 1], 0xee, TIM_BS);
	assert_int_equal(io(r, BKS_OP_READ, block * TIM_BS, TIM_BS), 0);
	assert_int_equal(r->buf[NREQ - 1][0], c);
}

/* Commit of a middle image: m leaves, t's backing is b. */
static void test_drop_middle(void **state)
{
	struct rig *r = *state;
	struct bks_error err = {0};

	three(r);
	expect_byte(r, 0, 0x10);
	expect_byte(r, 1, 0x20);
	expect_byte(r, 2, 0x30);
	assert_int_equal(bks_chain_drop_images(r->chain,
					       img_layer(r->chain, "m"),
					       img_layer(r->chain, "b"), &err),
			 -EBUSY);
	bks_error_clear(&err);
	drain(r);
	assert_int_equal(bks_chain_drop_images(r->chain,
					       img_layer(r->chain, "m"),
					       img_layer(r->chain, "b"), &err),
			 0);
	expect_layers(r->chain, "log: tim:t tim:b");
	assert_int_equal(tim_find("m")->open_now, 0);
	assert_int_equal(tim_find("m")->closes, 1);
	bks_chain_drain_end(r->chain);
	expect_byte(r, 0, 0x10);
	expect_byte(r, 1, 0x30); /* b's now: m is gone */
	expect_byte(r, 2, 0x30);
}

/* Commit of the sink: b under log:, the chain string says so. */
static void test_drop_sink(void **state)
{
	struct rig *r = *state;
	struct bks_error err = {0};
	char s[64];

	three(r);
	drain(r);
	assert_int_equal(
	    bks_layer_reopen_mode(img_layer(r->chain, "b"), false, &err), 0);
	assert_int_equal(
	    bks_chain_string(r->chain, img_layer(r->chain, "b"), s, sizeof(s)),
	    10);
	assert_string_equal(s, "log:|tim:b");
	assert_int_equal(bks_chain_drop_images(r->chain,
					       img_layer(r->chain, "t"),
					       img_layer(r->chain, "b"), &err),
			 0);
	expect_layers(r->chain, "log: tim:b");
	assert_int_equal(bks_chain_string(r->chain, NULL, s, sizeof(s)), 10);
	assert_string_equal(s, "log:|tim:b");
	assert_int_equal(tim_find("t")->open_now, 0);
	assert_int_equal(tim_find("m")->open_now, 0);
	assert_false(bks_chain_info(r->chain)->read_only);
	bks_chain_drain_end(r->chain);
	/* b's own data: block 0 was t's alone (a real commit copied it). */
	expect_byte(r, 0, 0);
	expect_byte(r, 1, 0x30);
	put(r, 0, TIM_BS, 0x44);
	assert_int_equal(tim_find("b")->data[0], 0x44);
}

/* Stream: the sink keeps no backing. */
static void test_drop_stream(void **state)
{
	struct rig *r = *state;
	struct bks_error err = {0};

	three(r);
	drain(r);
	assert_int_equal(bks_chain_drop_images(
			     r->chain, img_layer(r->chain, "m"), NULL, &err),
			 0);
	expect_layers(r->chain, "log: tim:t");
	assert_int_equal(tim_find("m")->open_now, 0);
	assert_int_equal(tim_find("b")->open_now, 0);
	bks_chain_drain_end(r->chain);
	expect_byte(r, 0, 0x10);
	expect_byte(r, 1, 0); /* nobody's now */
}

static void test_drop_refused(void **state)
{
	struct rig *r = *state;
	struct bks_error err = {0};
	struct bks_layer *t, *m, *b;

	three(r);
	tim_new("big", NULL, 32 * K);
	t = img_layer(r->chain, "t");
	m = img_layer(r->chain, "m");
	b = img_layer(r->chain, "b");
	drain(r);
	/* keep above image; image == keep; a filter; the sink, keep NULL. */
	assert_int_equal(bks_chain_drop_images(r->chain, m, t, &err), -EINVAL);
	assert_non_null(strstr(err.msg, "is not below"));
	bks_error_clear(&err);
	assert_int_equal(bks_chain_drop_images(r->chain, m, m, &err), -EINVAL);
	bks_error_clear(&err);
	assert_int_equal(
	    bks_chain_drop_images(r->chain, bks_chain_top(r->chain), b, &err),
	    -EINVAL);
	assert_non_null(strstr(err.msg, "not an image"));
	bks_error_clear(&err);
	assert_int_equal(bks_chain_drop_images(r->chain, t, NULL, &err),
			 -EINVAL);
	assert_non_null(strstr(err.msg, "the sink cannot be dropped"));
	bks_error_clear(&err);
	/* A job's request in flight: not drained. */
	tim_find("m")->hold = true;
	assert_int_equal(
	    bks_layer_submit(m, req_set(r, 0, BKS_OP_READ, 0, TIM_BS)), 0);
	assert_int_equal(r->results[0], 1);
	assert_int_equal(bks_chain_drop_images(r->chain, m, b, &err), -EBUSY);
	assert_non_null(strstr(err.msg, "not drained"));
	bks_error_clear(&err);
	tim_release(tim_find("m"));
	assert_int_equal(r->results[0], 0);
	spin(r);
	expect_layers(r->chain, "log: tim:t tim:m tim:b");
	bks_chain_drain_end(r->chain);
	bks_chain_close(r->chain);
	r->chain = NULL;

	/* keep would be the sink with another size. */
	snprintf(tim_find("t")->parent, sizeof(tim_find("t")->parent), "big");
	rig_open(r, "tim:t");
	drain(r);
	assert_int_equal(
	    bks_chain_drop_images(r->chain, img_layer(r->chain, "t"),
				  img_layer(r->chain, "big"), &err),
	    -EINVAL);
	assert_non_null(strstr(err.msg, "would be the sink with 32768"));
	bks_error_clear(&err);
	expect_layers(r->chain, "tim:t tim:big");
	bks_chain_drain_end(r->chain);
}

/* ---- bks_chain_swap ------------------------------------------------------ */

static void test_swap(void **state)
{
	struct rig *r = *state;
	struct bks_error err = {0};
	struct bks_chain *nc, *bad;
	struct bks_extent ext[4];
	struct bks_layer *hold;
	struct hold_state *hs;
	size_t n;
	const char *dir = rig_dir(r);

	tim_new("a", NULL, 0);
	tim_new("c", NULL, 0);
	tim_new("small", NULL, 32 * K);
	memset(tim_find("c")->data, 0xcc, TIM_MAX);
	memset(tim_find("c")->alloc, 1, TIM_NBLK);
	r->chain = open_cfg(r, "log:block=4K|tim:a", false, dir);
	put(r, 0, 4 * K, 0xaa);

	/* The new chain's log: opens the same state file. */
	nc = open_cfg(r, "log:block=4K|hold:|tim:c", false, dir);
	assert_int_equal(bks_chain_swap(r->chain, nc, &err), -EBUSY);
	bks_error_clear(&err);
	drain(r);
	/* Parked before the swap, served by the new layers after it. */
	submit(r, 0, BKS_OP_READ, 8 * K, 512);
	bad = open_cfg(r, "tim:small", false, NULL);
	assert_int_equal(bks_chain_swap(r->chain, bad, &err), -EINVAL);
	assert_string_equal(err.msg,
			    "new chain: size 32768, the running chain's 65536");
	bks_error_clear(&err);
	bks_chain_close(bad);
	assert_int_equal(bks_chain_swap(r->chain, nc, &err), 0);
	expect_layers(r->chain, "log:block=4K hold: tim:c");
	expect_layers(nc, "log:block=4K tim:a");
	bks_chain_close(nc);
	assert_int_equal(tim_find("a")->open_now, 0);
	/* The bits kept: log: is the new chain's, from the same file. */
	assert_int_equal(
	    bks_log_dirty(bks_chain_find(r->chain, "log"), 0, ext, 4, &n), 0);
	assert_int_equal(n, 1);
	assert_int_equal(ext[0].offset, 0);
	assert_int_equal(ext[0].length, 4 * K);
	hold = bks_chain_find(r->chain, "hold");
	hs = bks_layer_state(hold);
	assert_int_equal(hs->drain_begins, 1);
	bks_chain_drain_end(r->chain);
	assert_int_equal(hs->drain_ends, 1);
	assert_int_equal(hold_count(hold), 1);
	hold_release(hold, 1);
	assert_int_equal(r->results[0], 0);
	assert_int_equal(r->buf[0][0], 0xcc);
	/* Writes go to the new image and into the same log. */
	submit(r, 1, BKS_OP_WRITE, 16 * K, 512);
	hold_release(hold, 1);
	assert_int_equal(r->results[1], 0);
	assert_int_equal(
	    bks_log_dirty(bks_chain_find(r->chain, "log"), 0, ext, 4, &n), 0);
	assert_int_equal(n, 2);
	assert_int_equal(ext[1].offset, 16 * K);
}

/* Swapped there and back in one drain: each layer's drain ops once. */
static void test_swap_back(void **state)
{
	struct rig *r = *state;
	struct bks_error err = {0};
	struct bks_chain *nc;
	struct hold_state *old_hs, *new_hs;

	tim_new("a", NULL, 0);
	tim_new("c", NULL, 0);
	rig_open(r, "hold:|tim:a");
	nc = open_cfg(r, "hold:|tim:c", false, NULL);
	old_hs = bks_layer_state(bks_chain_top(r->chain));
	new_hs = bks_layer_state(bks_chain_top(nc));
	drain(r);
	assert_int_equal(old_hs->drain_begins, 1);
	assert_int_equal(bks_chain_swap(r->chain, nc, &err), 0);
	assert_int_equal(new_hs->drain_begins, 1);
	/* Back again (a caller undoing the swap). */
	assert_int_equal(bks_chain_swap(r->chain, nc, &err), 0);
	assert_int_equal(old_hs->drain_begins, 1);
	assert_int_equal(new_hs->drain_begins, 1);
	expect_layers(r->chain, "hold: tim:a");
	expect_layers(nc, "hold: tim:c");
	bks_chain_drain_end(r->chain);
	assert_int_equal(old_hs->drain_ends, 1);
	assert_int_equal(new_hs->drain_ends, 0);
	/* The other chain's own drain ends what began for its layers. */
	assert_int_equal(bks_chain_drain_begin(nc, NULL, NULL), 0);
	assert_int_equal(new_hs->drain_begins, 1);
	bks_chain_drain_end(nc);
	assert_int_equal(new_hs->drain_ends, 1);
	bks_chain_close(nc);
	/* A drain of the chain afterwards: one more of each, as usual. */
	drain(r);
	bks_chain_drain_end(r->chain);
	assert_int_equal(old_hs->drain_begins, 2);
	assert_int_equal(old_hs->drain_ends, 2);
}

/* ---- range locks --------------------------------------------------------- */

struct lock_rig {
	struct bks_range_lock lk;
	unsigned int granted;
	struct rig *r;
	unsigned int dones_at_grant;
};

static void on_granted(struct bks_range_lock *lk)
{
	struct lock_rig *l = lk->arg;

	l->granted++;
	l->dones_at_grant = l->r->dones;
}

static void lock_init(struct lock_rig *l, struct rig *r, uint64_t offset,
		      uint64_t len)
{
	memset(l, 0, sizeof(*l));
	l->r = r;
	l->lk.offset = offset;
	l->lk.len = len;
	l->lk.granted = on_granted;
	l->lk.arg = l;
}

/* Writes held while locked, released in order; reads never held. */
static void test_lock_holds_writes(void **state)
{
	struct rig *r = *state;
	struct lock_rig l;
	struct bks_chain_stats st;

	tim_new("a", NULL, 0);
	rig_open(r, "tim:a");
	lock_init(&l, r, 1000, 3000); /* blocks 1..7 */
	assert_int_equal(bks_chain_lock_range(r->chain, &l.lk), 0);
	assert_int_equal(l.granted, 0); /* never inside the call */
	spin(r);
	assert_int_equal(l.granted, 1);

	memset(r->buf[0], 0x01, 4 * K);
	submit(r, 0, BKS_OP_WRITE, 512, 1024); /* overlaps */
	memset(r->buf[1], 0x02, 4 * K);
	submit(r, 1, BKS_OP_WRITE, 8 * K, 512); /* does not */
	submit(r, 2, BKS_OP_READ, 0, 4 * K);	/* a read: never held */
	memset(r->buf[3], 0x03, 4 * K);
	submit(r, 3, BKS_OP_WRITE, 3000, 100); /* padded, overlaps */
	submit(r, 4, BKS_OP_WRITE_ZEROES, 3 * K, 512);
	spin(r);
	assert_int_equal(r->results[0], 1);
	assert_int_equal(r->results[1], 0);
	assert_int_equal(r->results[2], 0);
	assert_int_equal(r->results[3], 1);
	assert_int_equal(r->results[4], 1);
	assert_false(tim_find("a")->alloc[1]);
	/* They count as in flight: a drain waits for them. */
	bks_chain_get_stats(r->chain, &st);
	assert_int_equal(st.in_flight, 3);
	assert_int_equal(bks_chain_drain_begin(r->chain, on_drained, r), 0);
	spin(r);
	assert_int_equal(r->drained, 0);

	bks_chain_unlock_range(r->chain, &l.lk);
	spin(r);
	assert_int_equal(r->results[0], 0);
	assert_int_equal(r->results[3], 0);
	assert_int_equal(r->results[4], 0);
	/* In arrival order: 1, 2 went at once; then 0, 3, 4. */
	assert_int_equal(r->order[2], 0);
	assert_int_equal(r->order[3], 3);
	assert_int_equal(r->order[4], 4);
	assert_int_equal(r->drained, 1);
	bks_chain_drain_end(r->chain);
	assert_int_equal(tim_find("a")->data[512], 0x01);
	assert_int_equal(tim_find("a")->data[3000], 0x03);
	assert_int_equal(tim_find("a")->data[3 * K], 0);
	assert_int_equal(l.granted, 1);
}

/* A lock waits for an overlapping write in flight; later writes wait. */
static void test_lock_waits_for_write(void **state)
{
	struct rig *r = *state;
	struct lock_rig l, l2;
	struct bks_layer *hold;

	tim_new("a", NULL, 0);
	rig_open(r, "hold:|tim:a");
	hold = bks_chain_top(r->chain);
	memset(r->buf[0], 0x01, 4 * K);
	submit(r, 0, BKS_OP_WRITE, 0, 1024);
	assert_int_equal(hold_count(hold), 1);

	lock_init(&l, r, 512, 512);
	assert_int_equal(bks_chain_lock_range(r->chain, &l.lk), 0);
	/* Another lock on another range goes at once. */
	lock_init(&l2, r, 32 * K, 4 * K);
	assert_int_equal(bks_chain_lock_range(r->chain, &l2.lk), 0);
	/* After the lock, overlapping it: waits for it (arrival order). */
	memset(r->buf[1], 0x02, 4 * K);
	submit(r, 1, BKS_OP_WRITE, 512, 512);
	/* After the lock, not overlapping it: goes down. */
	memset(r->buf[2], 0x03, 4 * K);
	submit(r, 2, BKS_OP_WRITE, 0, 512);
	spin(r);
	assert_int_equal(l.granted, 0);
	assert_int_equal(l2.granted, 1);
	assert_int_equal(hold_count(hold), 2);
	assert_int_equal(hold_peek(hold, 1), &r->reqs[2]);

	/* The write it waited for completes: granted, from the loop. */
	hold_release(hold, 2);
	assert_int_equal(r->results[0], 0);
	assert_int_equal(r->results[2], 0);
	assert_int_equal(l.granted, 0);
	spin(r);
	assert_int_equal(l.granted, 1);
	assert_int_equal(l.dones_at_grant, 2);
	/* Write 1 is still held back, by the lock now. */
	assert_int_equal(hold_count(hold), 0);
	assert_int_equal(r->results[1], 1);
	bks_chain_unlock_range(r->chain, &l.lk);
	spin(r);
	assert_int_equal(hold_count(hold), 1);
	hold_release(hold, 1);
	assert_int_equal(r->results[1], 0);
	bks_chain_unlock_range(r->chain, &l2.lk);
	assert_int_equal(tim_find("a")->data[0], 0x03);
	assert_int_equal(tim_find("a")->data[512], 0x02);
}

/* Overlapping locks one after the other; withdrawn; invalid ones. */
static void test_lock_order_and_invalid(void **state)
{
	struct rig *r = *state;
	struct lock_rig a, b, c;

	tim_new("a", NULL, 0);
	rig_open(r, "tim:a");
	lock_init(&a, r, 0, 4 * K);
	lock_init(&b, r, 2 * K, 4 * K);
	lock_init(&c, r, 3 * K, 512);
	assert_int_equal(bks_chain_lock_range(r->chain, &a.lk), 0);
	assert_int_equal(bks_chain_lock_range(r->chain, &b.lk), 0);
	assert_int_equal(bks_chain_lock_range(r->chain, &c.lk), 0);
	spin(r);
	assert_int_equal(a.granted, 1);
	assert_int_equal(b.granted, 0);
	assert_int_equal(c.granted, 0);
	/* c withdrawn before it was granted: never granted. */
	bks_chain_unlock_range(r->chain, &c.lk);
	bks_chain_unlock_range(r->chain, &a.lk);
	spin(r);
	assert_int_equal(b.granted, 1);
	assert_int_equal(c.granted, 0);
	/* A lock granted and unlocked before the loop ran: no call. */
	bks_chain_unlock_range(r->chain, &b.lk);
	lock_init(&c, r, 60 * K, 4 * K);
	assert_int_equal(bks_chain_lock_range(r->chain, &c.lk), 0);
	bks_chain_unlock_range(r->chain, &c.lk);
	spin(r);
	assert_int_equal(c.granted, 0);
	/* Invalid. */
	lock_init(&c, r, 0, 0);
	assert_int_equal(bks_chain_lock_range(r->chain, &c.lk), -EINVAL);
	lock_init(&c, r, 60 * K, 8 * K);
	assert_int_equal(bks_chain_lock_range(r->chain, &c.lk), -EINVAL);
	lock_init(&c, r, 0, 512);
	c.lk.granted = NULL;
	assert_int_equal(bks_chain_lock_range(r->chain, &c.lk), -EINVAL);
	/* Writes pass again. */
	put(r, 0, 4 * K, 0x07);
}

/* ---- write watches ------------------------------------------------------- */

struct watch_rig {
	struct bks_write_watch w;
	struct rig *r;
	unsigned int n;
	struct {
		enum bks_op op;
		uint64_t offset, len;
		int result;
		unsigned int dones; /* the rig's completions then */
	} seen[16];
};

static void on_write(struct bks_write_watch *w, enum bks_op op, uint64_t offset,
		     uint64_t len, int result)
{
	struct watch_rig *wr = w->arg;

	assert_true(wr->n < 16);
	wr->seen[wr->n].op = op;
	wr->seen[wr->n].offset = offset;
	wr->seen[wr->n].len = len;
	wr->seen[wr->n].result = result;
	wr->seen[wr->n].dones = wr->r->dones;
	wr->n++;
}

static void watch_init(struct watch_rig *wr, struct rig *r)
{
	memset(wr, 0, sizeof(*wr));
	wr->r = r;
	wr->w.fn = on_write;
	wr->w.arg = wr;
}

static void test_watch(void **state)
{
	struct rig *r = *state;
	struct watch_rig w1, w2;
	struct bks_layer *hold;

	tim_new("a", NULL, 0);
	/* The third write the error: filter sees fails, once. */
	rig_open(r, "error:ops=write,errno=EIO,after=2,count=1|hold:|tim:a");
	hold = bks_chain_find(r->chain, "hold");
	watch_init(&w1, r);
	watch_init(&w2, r);
	/* A write in flight when the watch comes is reported too. */
	submit(r, 0, BKS_OP_WRITE, 0, 512);
	bks_chain_watch_writes(r->chain, &w1.w);
	bks_chain_watch_writes(r->chain, &w1.w); /* once */
	bks_chain_watch_writes(r->chain, &w2.w);
	submit(r, 1, BKS_OP_WRITE, 1000, 100); /* padded */
	submit(r, 2, BKS_OP_WRITE_ZEROES, 4 * K, 4 * K);
	submit(r, 3, BKS_OP_DISCARD, 16 * K, 1024);
	submit(r, 4, BKS_OP_READ, 0, 4 * K); /* not a write */
	submit(r, 5, BKS_OP_FLUSH, 0, 0);
	spin(r);
	assert_int_equal(w1.n, 0);
	/* Let everything go, the padded write's read and write too. */
	for (int i = 0; i < 8; i++) {
		hold_release(hold, hold_count(hold));
		spin(r);
	}
	for (int i = 0; i < 6; i++)
		assert_int_not_equal(r->results[i], 1);
	assert_int_equal(w1.n, 4);
	assert_int_equal(w2.n, 4);
	/* Each before its submitter heard, with its range as submitted. */
	assert_int_equal(w1.seen[0].op, BKS_OP_WRITE);
	assert_int_equal(w1.seen[0].offset, 0);
	assert_int_equal(w1.seen[0].len, 512);
	for (unsigned int i = 0; i < 4; i++) {
		unsigned int req = 0;

		while (req < 4 && !(r->reqs[req].offset == w1.seen[i].offset &&
				    r->reqs[req].op == w1.seen[i].op))
			req++;
		assert_true(req < 4);
		assert_int_equal(w1.seen[i].len, r->reqs[req].len);
		assert_int_equal(w1.seen[i].result, r->results[req]);
		/* Its own completion had not happened yet. */
		for (unsigned int d = 0; d < w1.seen[i].dones; d++)
			assert_int_not_equal(r->order[d], req);
		assert_int_equal(w2.seen[i].offset, w1.seen[i].offset);
	}
	/* A request through bks_layer_submit is not a top write. */
	assert_int_equal(
	    bks_layer_submit(hold, req_set(r, 6, BKS_OP_WRITE, 0, 512)), 0);
	hold_release(hold, 1);
	assert_int_not_equal(r->results[6], 1);
	assert_int_equal(w1.n, 4);
	/* A failing write (the error: filter's 5th write): reported. */
	submit(r, 0, BKS_OP_WRITE, 8 * K, 512);
	spin(r);
	assert_int_equal(r->results[0], -EIO);
	assert_int_equal(w1.n, 5);
	assert_int_equal(w1.seen[4].result, -EIO);
	assert_int_equal(w1.seen[4].offset, 8 * K);
	/* Unwatched: no more. */
	bks_chain_unwatch_writes(r->chain, &w1.w);
	bks_chain_unwatch_writes(r->chain, &w1.w);
	submit(r, 0, BKS_OP_WRITE, 8 * K, 512);
	hold_release(hold, 1);
	assert_int_equal(r->results[0], 0);
	assert_int_equal(w1.n, 5);
	assert_int_equal(w2.n, 6);
	bks_chain_unwatch_writes(r->chain, &w2.w);
}

/* ---- the log: mark ------------------------------------------------------- */

static void expect_set(struct bks_layer *log, bool frozen, const char *want)
{
	struct bks_extent ext[16];
	char got[256] = "";
	size_t n, len = 0;

	if (frozen)
		assert_int_equal(bks_log_frozen(log, 0, ext, 16, &n), 0);
	else
		assert_int_equal(bks_log_dirty(log, 0, ext, 16, &n), 0);
	for (size_t i = 0; i < n; i++)
		len +=
		    (size_t)snprintf(got + len, sizeof(got) - len, "%llu+%llu ",
				     (unsigned long long)(ext[i].offset / K),
				     (unsigned long long)(ext[i].length / K));
	assert_string_equal(got, want);
}

static void test_log_mark(void **state)
{
	struct rig *r = *state;
	struct bks_extent ext[4];
	struct bks_layer *log;
	size_t n = 9;

	rig_open(r, "log:block=4K|ram:1M");
	log = bks_chain_top(r->chain);
	assert_false(bks_log_marked(log));
	assert_int_equal(bks_log_frozen(log, 0, ext, 4, &n), -ENOENT);
	assert_int_equal(bks_log_clear_frozen(log), -ENOENT);
	assert_int_equal(bks_log_frozen_bytes(log), 0);
	put(r, 0, 4 * K, 1);
	put(r, 16 * K, 4 * K, 1);
	assert_int_equal(bks_log_mark(log), 0);
	assert_true(bks_log_marked(log));
	expect_set(log, true, "0+4 16+4 ");
	expect_set(log, false, "0+4 16+4 ");
	/* Written since the mark: dirty, not frozen. */
	put(r, 0, 4 * K, 2);
	put(r, 8 * K, 4 * K, 2);
	expect_set(log, false, "0+4 8+4 16+4 ");
	expect_set(log, true, "0+4 16+4 ");
	assert_int_equal(bks_log_dirty_bytes(log), 12 * K);
	assert_int_equal(bks_log_frozen_bytes(log), 8 * K);
	/* The backup of the old top done: 0 stays (written again). */
	assert_int_equal(bks_log_clear_frozen(log), 0);
	assert_false(bks_log_marked(log));
	expect_set(log, false, "0+4 8+4 ");
	assert_int_equal(bks_log_dirty_bytes(log), 8 * K);
	assert_int_equal(bks_log_frozen(log, 0, ext, 4, &n), -ENOENT);
	/* A second mark adds the current set to the frozen one. */
	assert_int_equal(bks_log_mark(log), 0);
	put(r, 32 * K, 4 * K, 3);
	assert_int_equal(bks_log_mark(log), 0);
	expect_set(log, true, "0+4 8+4 32+4 ");
	expect_set(log, false, "0+4 8+4 32+4 ");
	/* A range clear clears both sets. */
	put(r, 8 * K, 4 * K, 4);
	assert_int_equal(bks_log_clear(log, 4 * K, 8 * K), 0);
	expect_set(log, true, "0+4 32+4 ");
	expect_set(log, false, "0+4 32+4 ");
	assert_int_equal(bks_log_dirty_bytes(log), 8 * K);
	/* Not a log: layer. */
	assert_int_equal(bks_log_mark(bks_chain_sink(r->chain)), -EINVAL);
	assert_int_equal(
	    bks_log_frozen(bks_chain_sink(r->chain), 0, ext, 4, &n), -EINVAL);
	assert_int_equal(bks_log_clear_frozen(bks_chain_sink(r->chain)),
			 -EINVAL);
	assert_false(bks_log_marked(bks_chain_sink(r->chain)));
	assert_int_equal(bks_log_frozen_bytes(NULL), -EINVAL);
}

static void reopen_log(struct rig *r, const char *dir)
{
	if (r->chain)
		bks_chain_close(r->chain);
	r->chain = open_cfg(r, "log:block=4K|ram:1M", false, dir);
}

/* The mark and both sets survive a reopen of the state file. */
static void test_log_mark_persists(void **state)
{
	struct rig *r = *state;
	const char *dir = rig_dir(r);
	struct bks_chain_config cfg = {
	    .loop = r->loop, .extra = live_drivers, .state_dir = dir};
	struct bks_error err = {0};
	struct bks_chain *c = NULL;
	char path[600];
	struct stat st;
	uint32_t version;
	uint64_t word;
	int fd;

	reopen_log(r, dir);
	put(r, 0, 4 * K, 1);
	assert_int_equal(bks_log_mark(bks_chain_top(r->chain)), 0);
	put(r, 12 * K, 4 * K, 1);
	reopen_log(r, dir);
	assert_true(bks_log_marked(bks_chain_top(r->chain)));
	expect_set(bks_chain_top(r->chain), true, "0+4 ");
	expect_set(bks_chain_top(r->chain), false, "0+4 12+4 ");
	assert_int_equal(bks_log_clear_frozen(bks_chain_top(r->chain)), 0);
	reopen_log(r, dir);
	assert_false(bks_log_marked(bks_chain_top(r->chain)));
	expect_set(bks_chain_top(r->chain), false, "12+4 ");

	/* A mark cut short (frozen bits, no mark word): dirty again. */
	assert_int_equal(bks_log_mark(bks_chain_top(r->chain)), 0);
	bks_chain_close(r->chain);
	r->chain = NULL;
	snprintf(path, sizeof(path), "%s/layer0.state", dir);
	assert_int_equal(stat(path, &st), 0);
	/* Header page, then the two sets of 256 bits (5 words each). */
	assert_int_equal(st.st_size, 4096 + 2 * 5 * 8);
	fd = open(path, O_RDWR);
	assert_true(fd >= 0);
	word = 0;
	assert_int_equal(pwrite(fd, &word, 8, 2048), 8);
	close(fd);
	reopen_log(r, dir);
	assert_false(bks_log_marked(bks_chain_top(r->chain)));
	expect_set(bks_chain_top(r->chain), false, "12+4 ");
	bks_chain_close(r->chain);
	r->chain = NULL;

	/* A file of version 1 (before the mark): refused, saying so. */
	fd = open(path, O_RDWR);
	assert_true(fd >= 0);
	version = 1;
	assert_int_equal(pwrite(fd, &version, 4, 8), 4);
	close(fd);
	assert_int_equal(
	    bks_chain_open_config(&c, "log:block=4K|ram:1M", &cfg, &err),
	    -EEXIST);
	assert_non_null(strstr(err.msg, path));
	assert_non_null(strstr(err.msg, "dirty bitmap of version 1; this "
					"log: reads only version 2"));
	assert_null(c);
}

/* Incremental backup across a snapshot: log: above the overlay. */
static void test_log_across_snapshot(void **state)
{
	struct rig *r = *state;
	struct bks_error err = {0};
	struct bks_chain *ov;
	struct bks_layer *log;

	tim_new("a", NULL, 0);
	tim_new("o", "a", 0);
	rig_open(r, "log:block=4K|tim:a");
	log = bks_chain_top(r->chain);
	put(r, 0, 4 * K, 1);
	put(r, 20 * K, 4 * K, 1);
	/* The snapshot, as the worker does it. */
	ov = open_cfg(r, "tim:o", true, NULL);
	drain(r);
	assert_int_equal(
	    bks_layer_reopen_mode(bks_chain_sink(r->chain), true, &err), 0);
	assert_int_equal(bks_log_mark(log), 0);
	assert_int_equal(bks_chain_insert_overlay(r->chain, &ov, &err), 0);
	bks_chain_drain_end(r->chain);
	put(r, 20 * K, 4 * K, 2);
	put(r, 40 * K, 4 * K, 2);
	/* What changed in the old top since the last backup: frozen. */
	expect_set(log, true, "0+4 20+4 ");
	expect_set(log, false, "0+4 20+4 40+4 ");
	/* Backup of a taken: the blocks written since stay dirty. */
	assert_int_equal(bks_log_clear_frozen(log), 0);
	expect_set(log, false, "20+4 40+4 ");
	assert_ptr_equal(bks_chain_top(r->chain), log);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test_setup_teardown(test_sink_string, rig_setup,
					    rig_teardown),
	    cmocka_unit_test_setup_teardown(test_layer_submit_drained,
					    rig_setup, rig_teardown),
	    cmocka_unit_test_setup_teardown(test_reopen_mode, rig_setup,
					    rig_teardown),
	    cmocka_unit_test_setup_teardown(test_insert_overlay, rig_setup,
					    rig_teardown),
	    cmocka_unit_test_setup_teardown(test_insert_overlay_top_and_loop,
					    rig_setup, rig_teardown),
	    cmocka_unit_test_setup_teardown(test_drop_middle, rig_setup,
					    rig_teardown),
	    cmocka_unit_test_setup_teardown(test_drop_sink, rig_setup,
					    rig_teardown),
	    cmocka_unit_test_setup_teardown(test_drop_stream, rig_setup,
					    rig_teardown),
	    cmocka_unit_test_setup_teardown(test_drop_refused, rig_setup,
					    rig_teardown),
	    cmocka_unit_test_setup_teardown(test_swap, rig_setup, rig_teardown),
	    cmocka_unit_test_setup_teardown(test_swap_back, rig_setup,
					    rig_teardown),
	    cmocka_unit_test_setup_teardown(test_lock_holds_writes, rig_setup,
					    rig_teardown),
	    cmocka_unit_test_setup_teardown(test_lock_waits_for_write,
					    rig_setup, rig_teardown),
	    cmocka_unit_test_setup_teardown(test_lock_order_and_invalid,
					    rig_setup, rig_teardown),
	    cmocka_unit_test_setup_teardown(test_watch, rig_setup,
					    rig_teardown),
	    cmocka_unit_test_setup_teardown(test_log_mark, rig_setup,
					    rig_teardown),
	    cmocka_unit_test_setup_teardown(test_log_mark_persists, rig_setup,
					    rig_teardown),
	    cmocka_unit_test_setup_teardown(test_log_across_snapshot, rig_setup,
					    rig_teardown),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
