/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Unit tests: the qcow2: driver on a loop, on images made by the real
 * qemu-img and qemu-io: block status through a backing chain of three
 * images (which image holds each range: the extents' depth), and reads
 * and writes through the chain checked against qemu-io's view.
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
#include "unit-util.h"

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

/* Submit q and run the loop until it completes (10 s at most). */
static int run(struct bks_chain *chain, struct bks_loop *loop, struct rq *q)
{
	uint64_t deadline = bks_now_ns() + 10000000000ull;

	q->done = false;
	q->req.done = rq_done;
	q->req.opaque = q;
	assert_int_equal(bks_chain_submit(chain, &q->req), 0);
	while (!q->done && bks_now_ns() < deadline)
		assert_true(bks_loop_run_once(loop, 1000) >= 0);
	assert_true(q->done);
	return q->result;
}

static char dir[256];

/* A shell command (unit-util.h) that must succeed. */
#define sh(...) assert_int_equal(unit_sh(__VA_ARGS__), 0)

static int setup(void **state)
{
	const char *base = getenv("BKS_TEST_TMPDIR");

	(void)state;
	if (system("qemu-img --version >/dev/null 2>&1") != 0 ||
	    system("qemu-io --version >/dev/null 2>&1") != 0)
		return 0; /* each test skips */
	snprintf(dir, sizeof(dir), "%s/blkstack-q2-XXXXXX",
		 base && *base ? base : "/var/tmp");
	assert_non_null(mkdtemp(dir));
	/* base: data at 0..1M; mid: 2M..3M; top: 4M..5M, zeroes 6M..7M. */
	sh("cd %s && qemu-img create -q -f qcow2 base.qcow2 8M && "
	   "qemu-io -f qcow2 -c 'write -P 1 0 1M' base.qcow2 >/dev/null && "
	   "qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 mid.qcow2 8M && "
	   "qemu-io -f qcow2 -c 'write -P 2 2M 1M' mid.qcow2 >/dev/null && "
	   "qemu-img create -q -f qcow2 -b mid.qcow2 -F qcow2 top.qcow2 8M && "
	   "qemu-io -f qcow2 -c 'write -P 3 4M 1M' -c 'write -z 6M 1M' "
	   "top.qcow2 >/dev/null",
	   dir);
	return 0;
}

static int teardown(void **state)
{
	(void)state;
	if (dir[0])
		sh("rm -rf '%s'", dir);
	return 0;
}

static void open_top(struct bks_loop **loop, struct bks_chain **chain,
		     bool read_only)
{
	struct bks_error err = {0};
	char spec[512];

	if (!dir[0])
		skip();
	snprintf(spec, sizeof(spec), "qcow2:%s/top.qcow2", dir);
	assert_int_equal(bks_loop_new(loop, &err), 0);
	if (bks_chain_open(chain, spec, *loop, read_only, &err) < 0)
		fail_msg("open: %s", err.msg);
	/* top, mid, base */
	assert_int_equal(bks_chain_layers(*chain), 3);
}

static void close_all(struct bks_loop *loop, struct bks_chain *chain)
{
	bks_chain_close(chain);
	bks_loop_free(loop);
}

static void test_depth(void **state)
{
	static const struct {
		uint64_t off, len;
		uint32_t flags, depth;
	} want[] = {
	    {0, 1 << 20, 0, 3},
	    {1 << 20, 1 << 20, BKS_EXTENT_HOLE | BKS_EXTENT_ZERO, 0},
	    {2 << 20, 1 << 20, 0, 2},
	    {3 << 20, 1 << 20, BKS_EXTENT_HOLE | BKS_EXTENT_ZERO, 0},
	    {4 << 20, 1 << 20, 0, 1},
	    {5 << 20, 1 << 20, BKS_EXTENT_HOLE | BKS_EXTENT_ZERO, 0},
	    {6 << 20, 1 << 20, BKS_EXTENT_ZERO, 1},
	    {7 << 20, 1 << 20, BKS_EXTENT_HOLE | BKS_EXTENT_ZERO, 0},
	};
	struct bks_extent got[64], ext[16];
	struct bks_loop *loop;
	struct bks_chain *chain;
	size_t ngot = 0;
	uint64_t pos = 0;

	(void)state;
	open_top(&loop, &chain, true);
	/* Ask from where each answer ended; merge what touches. */
	while (pos < (8u << 20)) {
		struct rq q = {0};

		q.req.op = BKS_OP_BLOCK_STATUS;
		q.req.offset = pos;
		q.req.len = (8u << 20) - pos;
		q.req.extents = ext;
		q.req.extents_max = 16;
		assert_int_equal(run(chain, loop, &q), 0);
		assert_true(q.req.nextents > 0);
		for (uint32_t i = 0; i < q.req.nextents; i++) {
			struct bks_extent *e = &ext[i];

			assert_int_equal(e->offset, pos);
			if (ngot && got[ngot - 1].flags == e->flags &&
			    got[ngot - 1].depth == e->depth)
				got[ngot - 1].length += e->length;
			else
				got[ngot++] = *e;
			assert_true(ngot < 64);
			pos += e->length;
		}
	}
	assert_int_equal(ngot, sizeof(want) / sizeof(want[0]));
	for (size_t i = 0; i < ngot; i++) {
		assert_int_equal(got[i].offset, want[i].off);
		assert_int_equal(got[i].length, want[i].len);
		assert_int_equal(got[i].flags, want[i].flags);
		assert_int_equal(got[i].depth, want[i].depth);
	}
	close_all(loop, chain);
}

/* Reads through the chain, and a write: what qemu-io then reads. */
static void test_read_write(void **state)
{
	struct bks_loop *loop;
	struct bks_chain *chain;
	unsigned char *buf = NULL;
	struct rq q = {0};

	(void)state;
	open_top(&loop, &chain, false);
	assert_int_equal(posix_memalign((void **)&buf, 4096, 8u << 20), 0);
	q.iov.iov_base = buf;
	q.iov.iov_len = 8u << 20;
	q.req.op = BKS_OP_READ;
	q.req.len = 8u << 20;
	q.req.iov = &q.iov;
	q.req.iovcnt = 1;
	assert_int_equal(run(chain, loop, &q), 0);
	for (uint64_t i = 0; i < (8u << 20); i += 4096) {
		int want = i < (1u << 20)		       ? 1
			   : i >= (2u << 20) && i < (3u << 20) ? 2
			   : i >= (4u << 20) && i < (5u << 20) ? 3
							       : 0;

		if (buf[i] != want || buf[i + 4095] != want)
			fail_msg("offset %llu: %d, not %d",
				 (unsigned long long)i, buf[i], want);
	}
	/* 8 KiB across a cluster of mid's data and base's: copy on write. */
	memset(buf, 9, 8192);
	q.iov.iov_len = 8192;
	q.req.op = BKS_OP_WRITE;
	q.req.offset = (1u << 20) - 4096;
	q.req.len = 8192;
	assert_int_equal(run(chain, loop, &q), 0);
	q.req.op = BKS_OP_FLUSH;
	q.req.offset = 0;
	q.req.len = 0;
	q.req.iov = NULL;
	q.req.iovcnt = 0;
	assert_int_equal(run(chain, loop, &q), 0);
	close_all(loop, chain);
	free(buf);
	sh("cd %s && qemu-io -f qcow2 -c 'read -P 9 1020k 8k' "
	   "-c 'read -P 1 960k 60k' -c 'read -P 0 1028k 60k' top.qcow2 | "
	   "grep -q 'Pattern verification failed' && exit 1; "
	   "qemu-img check -q top.qcow2",
	   dir);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_depth),
	    cmocka_unit_test(test_read_write),
	};

	return cmocka_run_group_tests(tests, setup, teardown);
}
