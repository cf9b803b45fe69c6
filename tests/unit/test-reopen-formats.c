/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Unit tests: the qcow2: and vhd: sinks' reopen ops (a change of
 * read-only mode: read-only -> read-write -> read-only round trips with
 * writes, a parent made writable and back, other args refused, a replaced
 * file refused) and their set_backing op (a new parent, none: a qcow2
 * without backing, a VHD differencing disk turned dynamic), on real
 * files, checked with qemu-img / qemu-io (qcow2, dynamic VHD) and
 * blkstack-img check and blkstack's own open (differencing VHDs, which
 * qemu cannot open).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "blkstack/chain.h"
#include "blkstack/image-create.h"
#include "unit-util.h"

#define IMG "build/bin/blkstack-img"

static char dir[256];

static int sh(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static int sh(const char *fmt, ...)
{
	char cmd[4096];
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(cmd, sizeof(cmd), fmt, ap);
	va_end(ap);
	assert_true(n > 0 && (size_t)n < sizeof(cmd));
	return system(cmd);
}

#define MUST(what, ...)                                                        \
	do {                                                                   \
		if (sh(__VA_ARGS__) != 0)                                      \
			fail_msg("failed: %s", what);                          \
	} while (0)

static int setup(void **state)
{
	const char *base = getenv("BKS_TEST_TMPDIR");

	(void)state;
	if (system("qemu-img --version >/dev/null 2>&1") != 0 ||
	    system("qemu-io --version >/dev/null 2>&1") != 0)
		return -1;
	if (access(IMG, X_OK) != 0)
		return -1;
	snprintf(dir, sizeof(dir), "%s/blkstack-rf-XXXXXX",
		 base && *base ? base : "/var/tmp");
	if (!mkdtemp(dir))
		return -1;
	return 0;
}

static int teardown(void **state)
{
	(void)state;
	if (dir[0])
		sh("rm -rf '%s'", dir);
	return 0;
}

/* ---- a chain on a loop ----------------------------------------------------
 */

struct t {
	struct bks_loop *loop;
	struct bks_chain *chain;
	char spec[600];
};

struct rq {
	struct bks_req req;
	struct iovec iov;
	bool done;
	int result;
};

static void rq_done(struct bks_req *req, int result)
{
	struct rq *q = req->opaque;

	q->done = true;
	q->result = result;
}

static void t_open(struct t *t, bool read_only, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void t_open(struct t *t, bool read_only, const char *fmt, ...)
{
	struct bks_error err = {0};
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(t->spec, sizeof(t->spec), fmt, ap);
	va_end(ap);
	assert_int_equal(bks_loop_new(&t->loop, &err), 0);
	if (bks_chain_open(&t->chain, t->spec, t->loop, read_only, &err) < 0)
		fail_msg("open %s: %s", t->spec, err.msg);
}

static void t_close(struct t *t)
{
	bks_chain_close(t->chain);
	bks_loop_free(t->loop);
}

/* Write or read len bytes at off with pattern seed; the result. */
static int t_io(struct t *t, enum bks_op op, uint64_t off, size_t len,
		uint64_t seed)
{
	uint64_t deadline = bks_now_ns() + 10000000000ull;
	void *buf = unit_alloc_aligned(len);
	struct rq q = {0};

	assert_non_null(buf);
	if (op == BKS_OP_WRITE)
		unit_fill(buf, len, off, seed);
	q.iov.iov_base = buf;
	q.iov.iov_len = len;
	q.req.op = op;
	q.req.offset = off;
	q.req.len = len;
	q.req.iov = &q.iov;
	q.req.iovcnt = 1;
	q.req.done = rq_done;
	q.req.opaque = &q;
	assert_int_equal(bks_chain_submit(t->chain, &q.req), 0);
	while (!q.done && bks_now_ns() < deadline)
		assert_true(bks_loop_run_once(t->loop, 1000) >= 0);
	assert_true(q.done);
	if (q.result == 0 && op == BKS_OP_READ &&
	    unit_check(buf, len, off, seed) >= 0)
		q.result = -EILSEQ;
	free(buf);
	return q.result;
}

static void drained(void *arg)
{
	*(bool *)arg = true;
}

static void t_drain(struct t *t)
{
	uint64_t deadline = bks_now_ns() + 10000000000ull;
	bool done = false;

	assert_int_equal(bks_chain_drain_begin(t->chain, drained, &done), 0);
	while (!done && bks_now_ns() < deadline)
		assert_true(bks_loop_run_once(t->loop, 1000) >= 0);
	assert_true(done);
}

/* Reopen the chain's own layers with another read-only mode. */
static int t_reopen(struct t *t, bool read_only, struct bks_error *err)
{
	int rc;

	t_drain(t);
	rc = bks_chain_reopen(t->chain, t->spec, read_only, err);
	bks_chain_drain_end(t->chain);
	return rc;
}

/* The driver ops of layer i called directly (a parent: the chain's
 * reopen covers only the string's layers). */
static int layer_reopen(struct t *t, unsigned int i, bool read_only,
			struct bks_error *err)
{
	struct bks_layer *l = bks_chain_layer(t->chain, i);
	const struct bks_driver *d = bks_layer_driver(l);
	struct bks_open_args a = {
	    .args = bks_layer_args(l), .loop = t->loop, .read_only = read_only};
	int rc;

	assert_non_null(d->reopen_prepare);
	t_drain(t);
	rc = d->reopen_prepare(bks_layer_state(l), l, &a, err);
	if (rc == 0)
		d->reopen_commit(bks_layer_state(l), l);
	bks_chain_drain_end(t->chain);
	return rc;
}

static int set_backing(struct t *t, unsigned int i, const char *backing,
		       struct bks_error *err)
{
	struct bks_layer *l = bks_chain_layer(t->chain, i);
	const struct bks_driver *d = bks_layer_driver(l);
	int rc;

	assert_non_null(d->set_backing);
	t_drain(t);
	rc = d->set_backing(bks_layer_state(l), l, backing, err);
	bks_chain_drain_end(t->chain);
	return rc;
}

/* ---- reopen ----------------------------------------------------------------
 */

/* ro -> rw -> ro -> rw with writes at each writable step; the image
 * checks clean (no leak: the reservation was given back at the switch to
 * read-only) while open read-only, and at the end. */
static void check_image(const char *fmt, const char *path, const char *what)
{
	if (strcmp(fmt, "qcow2") == 0)
		MUST(what, "qemu-img check -q -U '%s'", path);
	else
		MUST(what, IMG " check '%s' >/dev/null", path);
}

static void round_trip(const char *fmt, const char *path)
{
	struct bks_error err = {0};
	struct t t;

	t_open(&t, true, "%s:%s", fmt, path);
	assert_int_equal(t_io(&t, BKS_OP_WRITE, 0, 65536, 1), -EROFS);
	if (t_reopen(&t, false, &err) < 0)
		fail_msg("reopen rw: %s", err.msg);
	assert_int_equal(t_io(&t, BKS_OP_WRITE, 0, 65536, 1), 0);
	assert_int_equal(t_io(&t, BKS_OP_WRITE, 3 << 20, 131072, 2), 0);
	if (t_reopen(&t, true, &err) < 0)
		fail_msg("reopen ro: %s", err.msg);
	assert_int_equal(t_io(&t, BKS_OP_WRITE, 0, 65536, 9), -EROFS);
	assert_int_equal(t_io(&t, BKS_OP_READ, 0, 65536, 1), 0);
	check_image(fmt, path, "check while open read-only");
	/* The same mode again: nothing to do. */
	assert_int_equal(t_reopen(&t, true, &err), 0);
	if (t_reopen(&t, false, &err) < 0)
		fail_msg("reopen rw again: %s", err.msg);
	assert_int_equal(t_io(&t, BKS_OP_WRITE, 5 << 20, 65536, 3), 0);
	assert_int_equal(t_io(&t, BKS_OP_READ, 3 << 20, 131072, 2), 0);
	t_close(&t);
	check_image(fmt, path, "check at the end");
	/* Everything written is there, opened anew. */
	t_open(&t, true, "%s:%s", fmt, path);
	assert_int_equal(t_io(&t, BKS_OP_READ, 0, 65536, 1), 0);
	assert_int_equal(t_io(&t, BKS_OP_READ, 3 << 20, 131072, 2), 0);
	assert_int_equal(t_io(&t, BKS_OP_READ, 5 << 20, 65536, 3), 0);
	t_close(&t);
}

static void test_qcow2_round_trip(void **state)
{
	char p[512];

	(void)state;
	snprintf(p, sizeof(p), "%s/rt.qcow2", dir);
	MUST("create", "qemu-img create -q -f qcow2 '%s' 8M", p);
	round_trip("qcow2", p);
	unlink(p);
}

static void test_vhd_round_trip(void **state)
{
	char p[512];

	(void)state;
	snprintf(p, sizeof(p), "%s/rt.vhd", dir);
	MUST("create", "qemu-img create -q -f vpc -o subformat=dynamic '%s' 8M",
	     p);
	round_trip("vhd", p);
	MUST("qemu reads it", "qemu-img compare -q -f vpc -F vpc '%s' '%s'", p,
	     p);
	unlink(p);
}

/* A parent (opened read-only by the chain) made writable and back; its
 * file is opened for writing meanwhile (qemu-io -U cannot tell: check
 * the image is still clean and the chain still reads through). */
static void parent_rw(const char *fmt, const char *top, const char *base)
{
	struct bks_error err = {0};
	struct t t;

	t_open(&t, false, "%s:%s", fmt, top);
	assert_int_equal(bks_chain_layers(t.chain), 2);
	if (layer_reopen(&t, 1, false, &err) < 0)
		fail_msg("parent rw: %s", err.msg);
	assert_int_equal(t_io(&t, BKS_OP_READ, 0, 65536, 4), 0);
	if (layer_reopen(&t, 1, true, &err) < 0)
		fail_msg("parent ro: %s", err.msg);
	assert_int_equal(t_io(&t, BKS_OP_READ, 0, 65536, 4), 0);
	t_close(&t);
	check_image(fmt, base, "check the parent");
}

static void test_parent_rw(void **state)
{
	struct bks_error err = {0};
	char base[512], top[512], b[600];
	struct t t;

	(void)state;
	snprintf(base, sizeof(base), "%s/pb.qcow2", dir);
	snprintf(top, sizeof(top), "%s/pt.qcow2", dir);
	MUST("create", "qemu-img create -q -f qcow2 '%s' 4M", base);
	t_open(&t, false, "qcow2:%s", base);
	assert_int_equal(t_io(&t, BKS_OP_WRITE, 0, 65536, 4), 0);
	t_close(&t);
	snprintf(b, sizeof(b), "qcow2:%s", base);
	if (bks_image_create(top, "qcow2", b, 0, &err) < 0)
		fail_msg("create: %s", err.msg);
	parent_rw("qcow2", top, base);

	snprintf(base, sizeof(base), "%s/pb.vhd", dir);
	snprintf(top, sizeof(top), "%s/pt.vhd", dir);
	if (bks_image_create(base, "vhd", NULL, 4 << 20, &err) < 0)
		fail_msg("create: %s", err.msg);
	t_open(&t, false, "vhd:%s", base);
	assert_int_equal(t_io(&t, BKS_OP_WRITE, 0, 65536, 4), 0);
	t_close(&t);
	snprintf(b, sizeof(b), "vhd:%s", base);
	if (bks_image_create(top, "vhd", b, 0, &err) < 0)
		fail_msg("create: %s", err.msg);
	parent_rw("vhd", top, base);
}

/* Other args: -EOPNOTSUPP, and the layer serves as before.  A file
 * replaced under the open image: -ESTALE. */
static void refused(const char *fmt, const char *path, const char *other)
{
	struct bks_error err = {0};
	char spec[600], moved[600];
	struct t t;

	t_open(&t, true, "%s:%s", fmt, path);
	snprintf(spec, sizeof(spec), "%s:%s", fmt, other);
	t_drain(&t);
	assert_int_equal(bks_chain_reopen(t.chain, spec, false, &err),
			 -EOPNOTSUPP);
	assert_non_null(strstr(err.msg, "only the read-only mode can change"));
	bks_chain_drain_end(t.chain);
	assert_int_equal(t_io(&t, BKS_OP_READ, 0, 4096, 0),
			 -EILSEQ); /* zeroes */
	assert_int_equal(t_io(&t, BKS_OP_WRITE, 0, 4096, 0), -EROFS);
	/* Replace the file: copy it aside and rename the copy over it. */
	snprintf(moved, sizeof(moved), "%s.copy", path);
	MUST("replace", "cp '%s' '%s' && mv '%s' '%s'", path, moved, moved,
	     path);
	assert_int_equal(t_reopen(&t, false, &err), -ESTALE);
	assert_non_null(strstr(err.msg, "replaced"));
	assert_int_equal(t_io(&t, BKS_OP_WRITE, 0, 4096, 0), -EROFS);
	t_close(&t);
}

static void test_refused(void **state)
{
	char p[512], o[512];

	(void)state;
	snprintf(p, sizeof(p), "%s/rf.qcow2", dir);
	snprintf(o, sizeof(o), "%s/other.qcow2", dir);
	MUST("create",
	     "qemu-img create -q -f qcow2 '%s' 1M && "
	     "qemu-img create -q -f qcow2 '%s' 1M",
	     p, o);
	refused("qcow2", p, o);
	snprintf(p, sizeof(p), "%s/rf.vhd", dir);
	snprintf(o, sizeof(o), "%s/other.vhd", dir);
	MUST("create",
	     "qemu-img create -q -f vpc '%s' 1M && "
	     "qemu-img create -q -f vpc '%s' 1M",
	     p, o);
	refused("vhd", p, o);
}

/* ---- set_backing -----------------------------------------------------------
 */

/* base <- mid <- top, each with its own data: top names base instead of
 * mid (what a commit of mid into base ends with, after copying mid's
 * data into base: done here with qemu-img commit). */
static void test_qcow2_set_backing(void **state)
{
	struct bks_error err = {0};
	char base[512], mid[512], top[512], raw[512], b[600];
	struct t t;

	(void)state;
	snprintf(base, sizeof(base), "%s/sb-base.qcow2", dir);
	snprintf(mid, sizeof(mid), "%s/sb-mid.qcow2", dir);
	snprintf(top, sizeof(top), "%s/sb-top.qcow2", dir);
	snprintf(raw, sizeof(raw), "%s/sb-base.raw", dir);
	MUST("images",
	     "cd '%s' && qemu-img create -q -f qcow2 sb-base.qcow2 8M && "
	     "qemu-img create -q -f qcow2 -b sb-base.qcow2 -F qcow2 "
	     "sb-mid.qcow2 && "
	     "qemu-img create -q -f qcow2 -b sb-mid.qcow2 -F qcow2 "
	     "sb-top.qcow2",
	     dir);
	t_open(&t, false, "qcow2:%s", base);
	assert_int_equal(t_io(&t, BKS_OP_WRITE, 0, 65536, 1), 0);
	t_close(&t);
	t_open(&t, false, "qcow2:%s", mid);
	assert_int_equal(t_io(&t, BKS_OP_WRITE, 1 << 20, 65536, 2), 0);
	t_close(&t);
	t_open(&t, false, "qcow2:%s", top);
	assert_int_equal(bks_chain_layers(t.chain), 3);
	assert_int_equal(t_io(&t, BKS_OP_WRITE, 2 << 20, 65536, 3), 0);
	MUST("commit mid", "qemu-img commit -q '%s'", mid);
	snprintf(b, sizeof(b), "qcow2:%s", base);
	if (set_backing(&t, 0, b, &err) < 0)
		fail_msg("set_backing: %s", err.msg);
	t_close(&t);
	MUST("check top", "qemu-img check -q '%s'", top);
	MUST("names base",
	     "qemu-img info --output=json '%s' | grep -q "
	     "'\"backing-filename\": \"%s\"' && "
	     "qemu-img info --output=json '%s' | grep -q "
	     "'\"backing-filename-format\": \"qcow2\"'",
	     top, base, top);
	t_open(&t, true, "qcow2:%s", top);
	assert_int_equal(bks_chain_layers(t.chain), 2);
	assert_int_equal(t_io(&t, BKS_OP_READ, 0, 65536, 1), 0);
	assert_int_equal(t_io(&t, BKS_OP_READ, 1 << 20, 65536, 2), 0);
	assert_int_equal(t_io(&t, BKS_OP_READ, 2 << 20, 65536, 3), 0);
	/* On a read-only layer too: a raw parent with base's data. */
	MUST("raw", "qemu-img convert -q -O raw '%s' '%s'", base, raw);
	snprintf(b, sizeof(b), "aio:%s", raw);
	if (set_backing(&t, 0, b, &err) < 0)
		fail_msg("set_backing raw: %s", err.msg);
	t_close(&t);
	MUST("names raw",
	     "qemu-img info --output=json '%s' | grep -q "
	     "'\"backing-filename-format\": \"raw\"'",
	     top);
	MUST("check top", "qemu-img check -q '%s'", top);
	/* None, at a stream's end: the parent's data copied into top first
	 * (here by writes through the chain), then no backing. */
	t_open(&t, false, "qcow2:%s", top);
	assert_int_equal(bks_chain_layers(t.chain), 2);
	assert_int_equal(t_io(&t, BKS_OP_WRITE, 0, 65536, 1), 0);
	assert_int_equal(t_io(&t, BKS_OP_WRITE, 1 << 20, 65536, 2), 0);
	if (set_backing(&t, 0, NULL, &err) < 0)
		fail_msg("set_backing NULL: %s", err.msg);
	t_close(&t);
	MUST("no backing",
	     "! qemu-img info --output=json '%s' | grep -q backing-filename",
	     top);
	MUST("check", "qemu-img check -q '%s'", top);
	t_open(&t, true, "qcow2:%s", top);
	assert_int_equal(bks_chain_layers(t.chain), 1);
	assert_int_equal(t_io(&t, BKS_OP_READ, 0, 65536, 1), 0);
	assert_int_equal(t_io(&t, BKS_OP_READ, 1 << 20, 65536, 2), 0);
	assert_int_equal(t_io(&t, BKS_OP_READ, 2 << 20, 65536, 3), 0);
	/* Refused: a VHD parent, a relative path. */
	assert_int_equal(set_backing(&t, 0, "vhd:/x.vhd", &err), -EINVAL);
	assert_int_equal(set_backing(&t, 0, "qcow2:rel", &err), -EINVAL);
	t_close(&t);
	MUST("unchanged", "qemu-img check -q '%s'", top);
}

/* A version 2 image (no header_length; qemu-img writes the backing
 * format extension there too): a new parent, a long name. */
static void test_qcow2_v2_set_backing(void **state)
{
	struct bks_error err = {0};
	char a[512], c[512], top[512], b[1200];
	struct t t;

	(void)state;
	snprintf(a, sizeof(a), "%s/v2-a.qcow2", dir);
	snprintf(c, sizeof(c), "%s/v2-%0200d.qcow2", dir, 7);
	snprintf(top, sizeof(top), "%s/v2-top.qcow2", dir);
	MUST("images",
	     "qemu-img create -q -f qcow2 -o compat=0.10 '%s' 2M && "
	     "cp '%s' '%s' && "
	     "qemu-img create -q -f qcow2 -o compat=0.10 -b '%s' -F qcow2 "
	     "'%s'",
	     a, a, c, a, top);
	t_open(&t, true, "qcow2:%s", top);
	snprintf(b, sizeof(b), "qcow2:%s", c);
	if (set_backing(&t, 0, b, &err) < 0)
		fail_msg("set_backing: %s", err.msg);
	t_close(&t);
	MUST("check", "qemu-img check -q '%s'", top);
	MUST("names c",
	     "qemu-img info --output=json '%s' | grep -q "
	     "'\"backing-filename\": \"%s\"' && "
	     "qemu-img info --output=json '%s' | grep -q "
	     "'\"backing-filename-format\": \"qcow2\"'",
	     top, c, top);
	t_open(&t, true, "qcow2:%s", top);
	assert_int_equal(bks_chain_layers(t.chain), 2);
	t_close(&t);
}

/* VHD: base <- mid <- top (bks_image_create), top's parent set to base,
 * then to mid again (the spare locator), then none: dynamic. */
static void test_vhd_set_backing(void **state)
{
	struct bks_error err = {0};
	char base[512], mid[512], top[512], b[600];
	struct t t;

	(void)state;
	snprintf(base, sizeof(base), "%s/sb-base.vhd", dir);
	snprintf(mid, sizeof(mid), "%s/sb-mid.vhd", dir);
	snprintf(top, sizeof(top), "%s/sb-top.vhd", dir);
	if (bks_image_create(base, "vhd", NULL, 8 << 20, &err) < 0)
		fail_msg("create: %s", err.msg);
	snprintf(b, sizeof(b), "vhd:%s", base);
	if (bks_image_create(mid, "vhd", b, 0, &err) < 0)
		fail_msg("create: %s", err.msg);
	snprintf(b, sizeof(b), "vhd:%s", mid);
	if (bks_image_create(top, "vhd", b, 0, &err) < 0)
		fail_msg("create: %s", err.msg);
	t_open(&t, false, "vhd:%s", base);
	assert_int_equal(t_io(&t, BKS_OP_WRITE, 0, 65536, 1), 0);
	t_close(&t);
	t_open(&t, false, "vhd:%s", top);
	assert_int_equal(bks_chain_layers(t.chain), 3);
	assert_int_equal(t_io(&t, BKS_OP_WRITE, 2 << 20, 65536, 3), 0);
	snprintf(b, sizeof(b), "vhd:%s", base);
	if (set_backing(&t, 0, b, &err) < 0)
		fail_msg("set_backing base: %s", err.msg);
	t_close(&t);
	MUST("check", IMG " check '%s' >/dev/null", top);
	t_open(&t, true, "vhd:%s", top);
	assert_int_equal(bks_chain_layers(t.chain), 2);
	assert_int_equal(t_io(&t, BKS_OP_READ, 0, 65536, 1), 0);
	assert_int_equal(t_io(&t, BKS_OP_READ, 2 << 20, 65536, 3), 0);
	/* Again (read-only layer), back to mid: the spare locator. */
	snprintf(b, sizeof(b), "vhd:%s", mid);
	if (set_backing(&t, 0, b, &err) < 0)
		fail_msg("set_backing mid: %s", err.msg);
	snprintf(b, sizeof(b), "vhd:%s", base);
	if (set_backing(&t, 0, b, &err) < 0)
		fail_msg("set_backing base again: %s", err.msg);
	assert_int_equal(set_backing(&t, 0, "qcow2:/x.qcow2", &err), -EINVAL);
	t_close(&t);
	MUST("check", IMG " check '%s' >/dev/null", top);
	t_open(&t, false, "vhd:%s", top);
	assert_int_equal(bks_chain_layers(t.chain), 2);
	/* A stream's copy (the base's data into top), then no parent. */
	assert_int_equal(t_io(&t, BKS_OP_WRITE, 0, 65536, 1), 0);
	if (set_backing(&t, 0, NULL, &err) < 0)
		fail_msg("set_backing NULL: %s", err.msg);
	/* Writes go on: a new block of a now dynamic disk. */
	assert_int_equal(t_io(&t, BKS_OP_WRITE, 6 << 20, 65536, 6), 0);
	t_close(&t);
	MUST("check", IMG " check '%s' >/dev/null", top);
	MUST("dynamic", IMG " info '%s' | grep -q 'subformat: dynamic'", top);
	t_open(&t, true, "vhd:%s", top);
	assert_int_equal(bks_chain_layers(t.chain), 1);
	assert_int_equal(t_io(&t, BKS_OP_READ, 0, 65536, 1), 0);
	assert_int_equal(t_io(&t, BKS_OP_READ, 2 << 20, 65536, 3), 0);
	assert_int_equal(t_io(&t, BKS_OP_READ, 6 << 20, 65536, 6), 0);
	/* A dynamic disk: NULL again is nothing, a parent is refused. */
	assert_int_equal(set_backing(&t, 0, NULL, &err), 0);
	snprintf(b, sizeof(b), "vhd:%s", base);
	assert_int_equal(set_backing(&t, 0, b, &err), -EOPNOTSUPP);
	t_close(&t);
	/* qemu reads the dynamic disk the same. */
	MUST("qemu reads it",
	     "qemu-io -f vpc -c 'read -v 0 16' '%s' >/dev/null && "
	     "qemu-img info -f vpc '%s' >/dev/null",
	     top, top);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_qcow2_round_trip),
	    cmocka_unit_test(test_vhd_round_trip),
	    cmocka_unit_test(test_parent_rw),
	    cmocka_unit_test(test_refused),
	    cmocka_unit_test(test_qcow2_set_backing),
	    cmocka_unit_test(test_qcow2_v2_set_backing),
	    cmocka_unit_test(test_vhd_set_backing),
	};

	return cmocka_run_group_tests(tests, setup, teardown);
}
