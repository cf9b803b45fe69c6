/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Unit tests: the chain's padding (libblkstack/chain-pad.c): requests at
 * any byte submitted straight to bks_chain_submit(), checked against a
 * model of the disk.  On ram: everything completes at once; on aio: (a
 * real file with O_DIRECT) requests are in flight together, which is
 * where read-modify-writes could lose each other's bytes, overlapping
 * writes could pass each other, and the bounce slots run out.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "blkstack/chain.h"
#include "unit-util.h"

/* Most requests one test has in flight at once. */
#define MAX_REQS 256
/* Bytes of the disk the tests use. */
#define SPAN (256u << 10)

struct rq {
	struct rig *rig;
	struct bks_req req;
	struct iovec iov[4];
	unsigned char *buf; /* aligned; the data starts skew bytes in */
	int result, calls;
	int order; /* completion order, from 1 */
};

struct rig {
	struct bks_loop *loop;
	struct bks_chain *chain;
	unsigned char *model;
	struct rq rq[MAX_REQS];
	int completed;
};

static void rq_done(struct bks_req *req, int result)
{
	struct rq *q = req->opaque;

	q->result = result;
	q->calls++;
	q->order = ++q->rig->completed;
}

/* Open chain; aio: chains on a temporary file (false: no O_DIRECT here). */
static bool rig_open(struct rig *r, const char *chain, bool aio)
{
	struct bks_error err = {0};
	char spec[512], img[256];
	int fd;

	memset(r, 0, sizeof(*r));
	assert_int_equal(bks_loop_new(&r->loop, &err), 0);
	r->model = calloc(1, SPAN);
	assert_non_null(r->model);
	if (aio) {
		assert_int_equal(unit_tmpfile(img, sizeof(img), SPAN), 0);
		fd = open(img, O_RDWR | O_DIRECT);
		if (fd < 0) {
			unlink(img);
			return false;
		}
		close(fd);
		snprintf(spec, sizeof(spec), "%saio:%s", chain, img);
		chain = spec;
	}
	if (bks_chain_open(&r->chain, chain, r->loop, false, &err) < 0)
		fail_msg("%s: %s", chain, err.msg);
	if (aio)
		unlink(img);
	for (int i = 0; i < MAX_REQS; i++) {
		r->rq[i].rig = r;
		r->rq[i].buf = unit_alloc_aligned(SPAN + 8192);
		assert_non_null(r->rq[i].buf);
	}
	return true;
}

static void rig_close(struct rig *r)
{
	assert_int_equal(bks_chain_in_flight(r->chain), 0);
	bks_chain_close(r->chain);
	bks_loop_free(r->loop);
	for (int i = 0; i < MAX_REQS; i++)
		free(r->rq[i].buf);
	free(r->model);
}

/* Where q's data is: skew bytes into its aligned buffer. */
static unsigned char *rq_data(struct rig *r, struct rq *q)
{
	return q->buf + bks_chain_buf_skew(r->chain, q->req.offset);
}

/*
 * Submit request i without waiting.  Writes take their data from the
 * model (which the caller has updated), in niov iovecs.
 */
static void start(struct rig *r, int i, enum bks_op op, uint32_t flags,
		  uint64_t offset, uint64_t len, int niov)
{
	struct rq *q = &r->rq[i];
	unsigned char *d;
	uint64_t done = 0;

	memset(&q->req, 0, sizeof(q->req));
	q->calls = q->result = q->order = 0;
	q->req.op = op;
	q->req.flags = flags;
	q->req.offset = offset;
	q->req.len = len;
	q->req.done = rq_done;
	q->req.opaque = q;
	d = rq_data(r, q);
	/* (Out of range, the model ends at SPAN: the chain refuses those.) */
	if (op == BKS_OP_WRITE)
		memcpy(d, r->model + offset,
		       offset + len <= SPAN ? len : SPAN - offset);
	if (op == BKS_OP_READ)
		memset(d, 0xee, len);
	if (op == BKS_OP_READ || op == BKS_OP_WRITE) {
		/* Cut at block boundaries of the disk, as the memory rule asks.
		 */
		for (int k = 0; k < niov; k++) {
			uint64_t end =
			    k == niov - 1
				? len
				: ((offset + len * (k + 1) / niov) & ~511ull) -
				      offset;

			if (end < done || end > len)
				end = done;
			q->iov[k].iov_base = d + done;
			q->iov[k].iov_len = end - done;
			done = end;
		}
		q->req.iov = q->iov;
		q->req.iovcnt = niov;
	}
	assert_int_equal(bks_chain_submit(r->chain, &q->req), 0);
}

/* Run the loop until requests [0, n) have completed, each once. */
static void wait_all(struct rig *r, int n)
{
	for (int round = 0; round < 5000; round++) {
		int left = 0;

		for (int i = 0; i < n; i++)
			left += r->rq[i].calls == 0;
		if (!left)
			break;
		assert_true(bks_loop_run_once(r->loop, 10) >= 0);
	}
	for (int i = 0; i < n; i++)
		assert_int_equal(r->rq[i].calls, 1);
}

/* One request, waited for; returns its result. */
static int run1(struct rig *r, enum bks_op op, uint32_t flags, uint64_t offset,
		uint64_t len, int niov)
{
	start(r, 0, op, flags, offset, len, niov);
	wait_all(r, 1);
	return r->rq[0].result;
}

/* The disk from offset for len bytes (read in niov iovecs) is the model. */
static void check_disk_iov(struct rig *r, uint64_t offset, uint64_t len,
			   int niov)
{
	assert_int_equal(run1(r, BKS_OP_READ, 0, offset, len, niov), 0);
	if (memcmp(rq_data(r, &r->rq[0]), r->model + offset, len) != 0) {
		for (uint64_t k = 0; k < len; k++)
			if (rq_data(r, &r->rq[0])[k] != r->model[offset + k])
				fail_msg("byte %llu: %#x, model %#x",
					 (unsigned long long)(offset + k),
					 rq_data(r, &r->rq[0])[k],
					 r->model[offset + k]);
	}
}

static void check_disk(struct rig *r, uint64_t offset, uint64_t len)
{
	check_disk_iov(r, offset, len, 1);
}

static uint64_t rnd(uint64_t *seed)
{
	*seed = *seed * 6364136223846793005ull + 1442695040888963407ull;
	return *seed >> 17;
}

/* Fill model[off, off + len) with a pattern of tag. */
static void model_write(struct rig *r, uint64_t off, uint64_t len, int tag)
{
	for (uint64_t k = 0; k < len; k++)
		r->model[off + k] = (unsigned char)(tag * 31 + k % 251 + 1);
}

/* ---- tests --------------------------------------------------------------- */

/* Reads at any byte, in one or several iovecs, and edge cases. */
static void test_unaligned_reads(void **state)
{
	static const struct {
		uint64_t off, len;
	} cases[] = {
	    {0, 1},
	    {1, 1},
	    {511, 1},
	    {511, 2},
	    {100, 300},
	    {100, 412},
	    {100, 924},
	    {0, 513},
	    {512, 1023},
	    {1000, 100000},
	    {3, 65536},
	    {SPAN - 1, 1},
	    {SPAN - 700, 700},
	};
	struct rig r;
	struct bks_pad_stats st;
	(void)state;

	for (int aio = 0; aio < 2; aio++) {
		if (!rig_open(&r, aio ? "" : "ram:256K", aio))
			skip();
		model_write(&r, 0, SPAN, 7);
		assert_int_equal(run1(&r, BKS_OP_WRITE, 0, 0, SPAN, 1), 0);
		for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
			for (int niov = 1; niov <= 3; niov++)
				check_disk_iov(&r, cases[i].off, cases[i].len,
					       niov);
		/* Several iovecs of whole blocks in the middle. */
		start(&r, 0, BKS_OP_READ, 0, 100, 5000, 3);
		wait_all(&r, 1);
		assert_int_equal(r.rq[0].result, 0);
		assert_memory_equal(rq_data(&r, &r.rq[0]), r.model + 100, 5000);
		/* Out of range: EINVAL for a read, ENOSPC for a write. */
		assert_int_equal(run1(&r, BKS_OP_READ, 0, SPAN - 10, 11, 1),
				 -EINVAL);
		assert_int_equal(run1(&r, BKS_OP_WRITE, 0, SPAN - 10, 11, 1),
				 -ENOSPC);
		bks_chain_pad_stats(r.chain, &st);
		assert_true(st.padded > 0);
		assert_int_equal(st.waiting, 0);
		rig_close(&r);
	}
}

/* Writes and write_zeroes at any byte against the model, one at a time. */
static void test_unaligned_writes(void **state)
{
	uint64_t seed = 5;
	struct rig r;
	(void)state;

	for (int aio = 0; aio < 2; aio++) {
		if (!rig_open(&r, aio ? "log:|" : "ram:256K", aio))
			skip();
		for (int i = 0; i < 150; i++) {
			uint64_t off = rnd(&seed) % (SPAN - 1);
			uint64_t len =
			    1 + rnd(&seed) %
				    (SPAN - off < 9000 ? SPAN - off : 9000);
			bool zero = i % 4 == 3;

			if (zero)
				memset(r.model + off, 0, len);
			else
				model_write(&r, off, len, i);
			assert_int_equal(
			    run1(&r, zero ? BKS_OP_WRITE_ZEROES : BKS_OP_WRITE,
				 i % 5 == 0 ? BKS_REQ_FUA : 0, off, len,
				 1 + i % 3),
			    0);
			if (i % 10 == 0)
				check_disk(&r, 0, SPAN);
		}
		check_disk(&r, 0, SPAN);
		rig_close(&r);
	}
}

/* write_zeroes with partial blocks: head, tail, both, one block. */
static void test_write_zeroes_partial(void **state)
{
	static const struct {
		uint64_t off, len;
	} cases[] = {
	    {100, 412},	   /* head only, to a block end */
	    {1024, 100},   /* tail only */
	    {2100, 10},	   /* inside one block */
	    {3000, 5000},  /* head, whole blocks, tail */
	    {10000, 1000}, /* head and tail, nothing between */
	    {20480, 4096}, /* aligned */
	};
	struct rig r;
	struct bks_pad_stats st;
	(void)state;

	for (int aio = 0; aio < 2; aio++) {
		if (!rig_open(&r, aio ? "" : "ram:256K", aio))
			skip();
		model_write(&r, 0, SPAN, 3);
		assert_int_equal(run1(&r, BKS_OP_WRITE, 0, 0, SPAN, 1), 0);
		for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
			memset(r.model + cases[i].off, 0, cases[i].len);
			assert_int_equal(run1(&r, BKS_OP_WRITE_ZEROES,
					      aio ? 0 : BKS_REQ_NO_HOLE,
					      cases[i].off, cases[i].len, 1),
					 0);
			check_disk(&r, 0, 32768);
		}
		bks_chain_pad_stats(r.chain, &st);
		assert_int_equal(st.rmw, 5);
		rig_close(&r);
	}
}

/* A discard is shrunk to the whole blocks inside; less than one: done. */
static void test_discard_shrinks(void **state)
{
	struct rig r;
	(void)state;

	rig_open(&r, "ram:256K", false);
	model_write(&r, 0, SPAN, 9);
	assert_int_equal(run1(&r, BKS_OP_WRITE, 0, 0, SPAN, 1), 0);
	/* Less than a block: nothing happens, successfully. */
	assert_int_equal(run1(&r, BKS_OP_DISCARD, 0, 100, 800, 0), 0);
	check_disk(&r, 0, 4096);
	/* [1000, 5000): the blocks [1024, 4608) go (ram: reads zeroes). */
	assert_int_equal(run1(&r, BKS_OP_DISCARD, 0, 1000, 4000, 0), 0);
	memset(r.model + 1024, 0, 4608 - 1024);
	check_disk(&r, 0, 8192);
	rig_close(&r);
}

/*
 * Many overlapping unaligned writes (and write_zeroes) in flight at once:
 * every pair that overlaps is a read-modify-write pair, so they must be
 * applied in arrival order, and none may lose another's bytes.
 */
static void test_rmw_concurrent(void **state)
{
	enum {
		N = 120,
		AREA = 20000
	};
	uint64_t seed = 11;
	struct bks_pad_stats st;
	struct rig r;
	(void)state;

	if (!rig_open(&r, "", true))
		skip();
	assert_int_equal(run1(&r, BKS_OP_WRITE, 0, 0, SPAN, 1), 0);
	for (int round = 0; round < 3; round++) {
		for (int i = 0; i < N; i++) {
			uint64_t off = rnd(&seed) % (AREA - 1);
			uint64_t len = 1 + rnd(&seed) % 3000;
			bool zero = i % 7 == 6;

			if (off % 512 == 0)
				off++; /* every one a read-modify-write */
			if (zero)
				memset(r.model + off, 0, len);
			else
				model_write(&r, off, len, i + round * N);
			start(&r, i, zero ? BKS_OP_WRITE_ZEROES : BKS_OP_WRITE,
			      0, off, len, 1 + i % 2);
		}
		wait_all(&r, N);
		for (int i = 0; i < N; i++)
			assert_int_equal(r.rq[i].result, 0);
		check_disk(&r, 0, AREA + 4096);
	}
	bks_chain_pad_stats(r.chain, &st);
	assert_true(st.overlap_waits > 0);
	assert_true(st.bounce_waits > 0);
	assert_int_equal(st.waiting, 0);
	rig_close(&r);
}

/*
 * Ordering: an aligned write in flight, then a read-modify-write over it
 * (waits for it), then an aligned write over that (waits behind it), and
 * a write elsewhere (waits for nothing).  They land in arrival order.
 */
static void test_overlap_order(void **state)
{
	struct bks_pad_stats st;
	struct rig r;
	(void)state;

	if (!rig_open(&r, "", true))
		skip();
	model_write(&r, 0, 65536, 1);
	start(&r, 0, BKS_OP_WRITE, 0, 0, 65536, 1);
	model_write(&r, 1000, 3000, 2);
	start(&r, 1, BKS_OP_WRITE, 0, 1000, 3000, 1);
	model_write(&r, 1024, 2048, 3);
	start(&r, 2, BKS_OP_WRITE, 0, 1024, 2048, 1);
	model_write(&r, 131072, 4096, 4);
	start(&r, 3, BKS_OP_WRITE, 0, 131072, 4096, 1);
	bks_chain_pad_stats(r.chain, &st);
	assert_int_equal(st.overlap_waits, 2);
	assert_int_equal(st.waiting, 2);
	/* Nothing waiting has started: only two are in the chain. */
	wait_all(&r, 4);
	for (int i = 0; i < 4; i++)
		assert_int_equal(r.rq[i].result, 0);
	assert_true(r.rq[0].order < r.rq[1].order);
	assert_true(r.rq[1].order < r.rq[2].order);
	check_disk(&r, 0, 65536);
	check_disk(&r, 131072, 4096);
	/* Aligned writes over each other never wait for one another. */
	start(&r, 0, BKS_OP_WRITE, 0, 0, 4096, 1);
	start(&r, 1, BKS_OP_WRITE, 0, 0, 4096, 1);
	bks_chain_pad_stats(r.chain, &st);
	assert_int_equal(st.overlap_waits, 2);
	wait_all(&r, 2);
	rig_close(&r);
}

/*
 * Bounce exhaustion: more padded requests than slots, none overlapping:
 * the rest wait for slots, then all complete, right.
 */
static void test_bounce_exhaustion(void **state)
{
	enum {
		N = 4 * BKS_PAD_SLOTS
	};
	struct bks_pad_stats st;
	struct rig r;
	(void)state;

	if (!rig_open(&r, "", true))
		skip();
	model_write(&r, 0, SPAN, 5);
	assert_int_equal(run1(&r, BKS_OP_WRITE, 0, 0, SPAN, 1), 0);
	for (int i = 0; i < N; i++) {
		uint64_t off = (uint64_t)i * 2048 + 7;

		if (i % 2) {
			model_write(&r, off, 1000, 100 + i);
			start(&r, i, BKS_OP_WRITE, 0, off, 1000, 1);
		} else {
			start(&r, i, BKS_OP_READ, 0, off, 1000, 1);
		}
	}
	bks_chain_pad_stats(r.chain, &st);
	assert_true(st.bounce_waits >= N - BKS_PAD_SLOTS);
	assert_true(st.waiting >= N - BKS_PAD_SLOTS);
	assert_true(bks_chain_in_flight(r.chain) >= N);
	wait_all(&r, N);
	for (int i = 0; i < N; i++) {
		assert_int_equal(r.rq[i].result, 0);
		if (i % 2 == 0)
			assert_memory_equal(rq_data(&r, &r.rq[i]),
					    r.model + (uint64_t)i * 2048 + 7,
					    1000);
	}
	check_disk(&r, 0, (uint64_t)N * 2048);
	bks_chain_pad_stats(r.chain, &st);
	assert_int_equal(st.waiting, 0);
	rig_close(&r);
}

/* Errors of a piece reach the request; the slot comes back. */
static void test_errors(void **state)
{
	struct rig r;
	(void)state;

	rig_open(&r, "error:ops=read,errno=EIO|ram:256K", false);
	/* The read of the partial block fails: the write fails. */
	for (int i = 0; i < 2 * BKS_PAD_SLOTS; i++)
		assert_int_equal(run1(&r, BKS_OP_WRITE, 0, 100, 10, 1), -EIO);
	/* Aligned writes do not read: fine. */
	assert_int_equal(run1(&r, BKS_OP_WRITE, 0, 512, 512, 1), 0);
	rig_close(&r);
	/* A read-only chain refuses before padding. */
	{
		struct bks_error err = {0};

		memset(&r, 0, sizeof(r));
		assert_int_equal(bks_loop_new(&r.loop, &err), 0);
		assert_int_equal(
		    bks_chain_open(&r.chain, "ram:64K", r.loop, true, &err), 0);
		r.model = calloc(1, SPAN);
		for (int i = 0; i < MAX_REQS; i++) {
			r.rq[i].rig = &r;
			r.rq[i].buf = unit_alloc_aligned(SPAN + 8192);
		}
		assert_int_equal(run1(&r, BKS_OP_WRITE, 0, 100, 10, 1), -EROFS);
		assert_int_equal(run1(&r, BKS_OP_WRITE_ZEROES, 0, 100, 10, 0),
				 -EROFS);
		assert_int_equal(run1(&r, BKS_OP_READ, 0, 100, 10, 1), 0);
		rig_close(&r);
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_unaligned_reads),
	    cmocka_unit_test(test_unaligned_writes),
	    cmocka_unit_test(test_write_zeroes_partial),
	    cmocka_unit_test(test_discard_shrinks),
	    cmocka_unit_test(test_rmw_concurrent),
	    cmocka_unit_test(test_overlap_order),
	    cmocka_unit_test(test_bounce_exhaustion),
	    cmocka_unit_test(test_errors),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
