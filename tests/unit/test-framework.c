/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Unit tests: the chain framework's drain, sub-requests and joins, block
 * status as a request, reopen and replace-child, per-op limits and
 * splitting, and the drivers' stats op.  The test drivers (fmt:, hold:,
 * rec:) are in fw-drivers.h.
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
#include "fw-drivers.h"
#include "unit-util.h"

#define NREQ 8

struct rig {
	struct bks_loop *loop;
	struct bks_chain *chain;
	struct bks_req reqs[NREQ];
	int results[NREQ];  /* 1: not completed yet */
	unsigned int dones; /* completions, all requests */
	unsigned int order[NREQ * 4];
	struct iovec iov[NREQ];
	unsigned int drained;
};

static void rig_open(struct rig *r, const char *s)
{
	struct bks_error err = {0};

	memset(r, 0, sizeof(*r));
	assert_int_equal(bks_loop_new(&r->loop, &err), 0);
	if (bks_chain_open_with(&r->chain, s, fw_test_drivers, r->loop, false,
				&err))
		fail_msg("%s: %s", s, err.msg);
}

static void rig_close(struct rig *r)
{
	assert_int_equal(bks_chain_in_flight(r->chain), 0);
	bks_chain_close(r->chain);
	bks_loop_free(r->loop);
}

static void req_done(struct bks_req *req, int result)
{
	struct rig *r = req->opaque;
	unsigned int i = (unsigned int)(req - r->reqs);

	assert_int_equal(r->results[i], 1); /* exactly once */
	r->results[i] = result;
	r->order[r->dones++] = i;
}

/* Fill request i (not submitted). */
static struct bks_req *req_set(struct rig *r, unsigned int i, enum bks_op op,
			       uint64_t offset, void *buf, uint64_t len)
{
	struct bks_req *req = &r->reqs[i];

	memset(req, 0, sizeof(*req));
	req->op = op;
	req->offset = offset;
	req->len = len;
	if (buf) {
		r->iov[i].iov_base = buf;
		r->iov[i].iov_len = len;
		req->iov = &r->iov[i];
		req->iovcnt = 1;
	}
	req->done = req_done;
	req->opaque = r;
	r->results[i] = 1;
	return req;
}

static void submit(struct rig *r, unsigned int i, enum bks_op op,
		   uint64_t offset, void *buf, uint64_t len)
{
	assert_int_equal(
	    bks_chain_submit(r->chain, req_set(r, i, op, offset, buf, len)), 0);
}

/* Submit and expect completion before the call returns. */
static int run(struct rig *r, enum bks_op op, uint64_t offset, void *buf,
	       uint64_t len)
{
	submit(r, NREQ - 1, op, offset, buf, len);
	assert_int_not_equal(r->results[NREQ - 1], 1);
	return r->results[NREQ - 1];
}

/* Submit and run the loop until it completes (aio: answers later). */
static int run_wait(struct rig *r, enum bks_op op, uint64_t offset, void *buf,
		    uint64_t len)
{
	uint64_t deadline = bks_now_ns() + 20000000000ull;

	submit(r, NREQ - 1, op, offset, buf, len);
	while (r->results[NREQ - 1] == 1 && bks_now_ns() < deadline)
		assert_true(bks_loop_run_once(r->loop, 1000) >= 0);
	assert_int_not_equal(r->results[NREQ - 1], 1);
	return r->results[NREQ - 1];
}

static void on_drained(void *arg)
{
	((struct rig *)arg)->drained++;
}

static void spin(struct rig *r)
{
	for (int i = 0; i < 3; i++)
		bks_loop_run_once(r->loop, 0);
}

static struct bks_layer *layer(struct rig *r, const char *name)
{
	struct bks_layer *l = bks_chain_find(r->chain, name);

	assert_non_null(l);
	return l;
}

/* ---- drain --------------------------------------------------------------- */

/* Parked in order, drained only when the request in flight is done. */
static void test_drain_parks_in_order(void **state)
{
	static char buf[4][512];
	struct bks_chain_stats cs;
	struct bks_layer *hold;
	struct rig r;
	(void)state;

	rig_open(&r, "hold:|ram:1M");
	hold = layer(&r, "hold");
	submit(&r, 0, BKS_OP_WRITE, 0, buf[0], 512);
	assert_int_equal(hold_count(hold), 1);
	assert_int_equal(bks_chain_drain_begin(r.chain, on_drained, &r), 0);
	assert_int_equal(
	    ((struct hold_state *)bks_layer_state(hold))->drain_begins, 1);
	submit(&r, 1, BKS_OP_WRITE, 512, buf[1], 512);
	submit(&r, 2, BKS_OP_READ, 1024, buf[2], 512);
	submit(&r, 3, BKS_OP_FLUSH, 0, NULL, 0);
	/* Parked: not passed down. */
	assert_int_equal(hold_count(hold), 1);
	bks_chain_get_stats(r.chain, &cs);
	assert_int_equal(cs.parked, 3);
	assert_int_equal(cs.parked_total, 3);
	assert_int_equal(cs.draining, 1);
	spin(&r);
	assert_int_equal(r.drained, 0);
	assert_false(bks_chain_is_drained(r.chain));
	hold_release(hold, 1);
	assert_int_equal(r.results[0], 0);
	/* Never called from inside the completion: from the loop. */
	assert_int_equal(r.drained, 0);
	spin(&r);
	assert_int_equal(r.drained, 1);
	assert_true(bks_chain_is_drained(r.chain));
	spin(&r);
	assert_int_equal(r.drained, 1); /* once */
	bks_chain_drain_end(r.chain);
	assert_int_equal(
	    ((struct hold_state *)bks_layer_state(hold))->drain_ends, 1);
	/* Resubmitted in arrival order. */
	assert_int_equal(hold_count(hold), 3);
	assert_ptr_equal(hold_peek(hold, 0), &r.reqs[1]);
	assert_ptr_equal(hold_peek(hold, 1), &r.reqs[2]);
	assert_ptr_equal(hold_peek(hold, 2), &r.reqs[3]);
	hold_release(hold, 3);
	for (unsigned int i = 0; i < 4; i++) {
		assert_int_equal(r.results[i], 0);
		assert_int_equal(r.order[i], i);
	}
	bks_chain_get_stats(r.chain, &cs);
	assert_int_equal(cs.parked, 0);
	assert_int_equal(cs.draining, 0);
	rig_close(&r);
}

/* An idle chain drains at once, but still from the loop. */
static void test_drain_idle_and_nested(void **state)
{
	static char buf[512];
	struct rig r;
	(void)state;

	rig_open(&r, "ram:1M");
	assert_int_equal(bks_chain_drain_begin(r.chain, on_drained, &r), 0);
	assert_int_equal(r.drained, 0);
	spin(&r);
	assert_int_equal(r.drained, 1);
	/* A nested drain gets its own call. */
	assert_int_equal(bks_chain_drain_begin(r.chain, on_drained, &r), 0);
	assert_int_equal(r.drained, 1);
	spin(&r);
	assert_int_equal(r.drained, 2);
	submit(&r, 0, BKS_OP_WRITE, 0, buf, 512);
	bks_chain_drain_end(r.chain);
	/* One drain is still on: parked. */
	assert_int_equal(r.results[0], 1);
	bks_chain_drain_end(r.chain);
	assert_int_equal(r.results[0], 0);
	/* Ending a drain that is not on is harmless. */
	bks_chain_drain_end(r.chain);
	rig_close(&r);
}

/* A busy reference (background work) holds the drain off. */
static void test_drain_waits_for_busy(void **state)
{
	struct rig r;
	(void)state;

	rig_open(&r, "log:|ram:1M");
	bks_layer_busy_get(layer(&r, "ram"));
	assert_int_equal(bks_chain_in_flight(r.chain), 1);
	assert_int_equal(bks_chain_drain_begin(r.chain, on_drained, &r), 0);
	spin(&r);
	assert_int_equal(r.drained, 0);
	bks_layer_busy_put(layer(&r, "ram"));
	assert_int_equal(r.drained, 0);
	spin(&r);
	assert_int_equal(r.drained, 1);
	bks_chain_drain_end(r.chain);
	rig_close(&r);
}

/* A request waiting for its retry is in flight: the drain waits for it. */
static void test_drain_waits_for_retry(void **state)
{
	static char buf[512];
	struct bks_retry_policy p = {.max_attempts = 2, .delay_ns = 20000000};
	struct rig r;
	(void)state;

	rig_open(&r, "error:ops=write,count=1|ram:1M");
	bks_chain_set_retry(r.chain, &p);
	submit(&r, 0, BKS_OP_WRITE, 0, buf, 512);
	assert_int_equal(r.results[0], 1);
	assert_int_equal(bks_chain_retries(r.chain), 1);
	assert_int_equal(bks_chain_drain_begin(r.chain, on_drained, &r), 0);
	spin(&r);
	assert_int_equal(r.drained, 0);
	for (int i = 0; i < 100 && r.results[0] == 1; i++)
		bks_loop_run_once(r.loop, 10);
	assert_int_equal(r.results[0], 0);
	spin(&r);
	assert_int_equal(r.drained, 1);
	bks_chain_drain_end(r.chain);
	rig_close(&r);
}

/* Drains waiting for their call are counted; more are refused. */
static void test_drain_waiters_limit(void **state)
{
	struct rig r;
	(void)state;

	rig_open(&r, "ram:1M");
	for (unsigned int i = 0; i < BKS_DRAIN_WAITERS; i++)
		assert_int_equal(bks_chain_drain_begin(r.chain, on_drained, &r),
				 0);
	assert_int_equal(bks_chain_drain_begin(r.chain, on_drained, &r),
			 -EBUSY);
	spin(&r);
	assert_int_equal(r.drained, BKS_DRAIN_WAITERS);
	/* Told: room again. */
	assert_int_equal(bks_chain_drain_begin(r.chain, on_drained, &r), 0);
	for (unsigned int i = 0; i <= BKS_DRAIN_WAITERS; i++)
		bks_chain_drain_end(r.chain);
	assert_false(bks_chain_is_drained(r.chain));
	rig_close(&r);
}

/* A drain waits for sub-requests that outlive their parent (lazy fmt). */
static void test_drain_waits_for_subrequests(void **state)
{
	static char buf[512];
	struct bks_layer_stats ls;
	struct bks_layer *hold;
	struct rig r;
	(void)state;

	rig_open(&r, "fmt:lazy|hold:|ram:1M");
	hold = layer(&r, "hold");
	memset(buf, 0x5a, sizeof(buf));
	submit(&r, 0, BKS_OP_WRITE, 0, buf, 512);
	/* The table read, a sub-request. */
	assert_int_equal(hold_count(hold), 1);
	assert_ptr_not_equal(hold_peek(hold, 0), &r.reqs[0]);
	hold_release(hold, 1);
	/* The data write (the request) and the table write. */
	assert_int_equal(hold_count(hold), 2);
	assert_ptr_equal(hold_peek(hold, 0), &r.reqs[0]);
	hold_release(hold, 1);
	assert_int_equal(r.results[0], 0);
	bks_layer_get_stats(layer(&r, "fmt"), &ls);
	assert_int_equal(ls.subreqs, 1);
	assert_int_equal(bks_chain_in_flight(r.chain), 1);
	assert_int_equal(bks_chain_drain_begin(r.chain, on_drained, &r), 0);
	spin(&r);
	assert_int_equal(r.drained, 0);
	hold_release(hold, 1);
	spin(&r);
	assert_int_equal(r.drained, 1);
	bks_chain_drain_end(r.chain);
	rig_close(&r);
}

/* ---- sub-requests and joins ---------------------------------------------- */

/* The format's write: table read, then data and table, joined. */
static void test_fmt_write_read(void **state)
{
	static char buf[4096], back[4096];
	uint64_t table[FMT_TABLE / 8];
	struct bks_layer_stats ls;
	struct rig r;
	(void)state;

	rig_open(&r, "fmt:|ram:1M");
	assert_int_equal(bks_chain_info(r.chain)->size, (1 << 20) - 4096);
	unit_fill(buf, sizeof(buf), 8192, 7);
	assert_int_equal(run(&r, BKS_OP_WRITE, 8192, buf, 4096), 0);
	assert_int_equal(run(&r, BKS_OP_WRITE, 0, buf, 512), 0);
	assert_int_equal(run(&r, BKS_OP_READ, 8192, back, 4096), 0);
	assert_memory_equal(buf, back, sizeof(buf));
	/* The table below counts two writes: read it from the ram: layer. */
	req_set(&r, 0, BKS_OP_READ, 0, table, sizeof(table));
	assert_int_equal(bks_next_submit(layer(&r, "ram"), &r.reqs[0]), 0);
	assert_int_equal(r.results[0], 0);
	assert_int_equal(table[0], 2);
	/* The data is after the metadata area. */
	req_set(&r, 0, BKS_OP_READ, 8192 + FMT_DATA_OFF, back, 4096);
	assert_int_equal(bks_next_submit(layer(&r, "ram"), &r.reqs[0]), 0);
	assert_memory_equal(buf, back, sizeof(buf));
	bks_layer_get_stats(layer(&r, "ram"), &ls);
	/* 2 table reads + 1 data read + the 2 above; 2 table + 2 data
	 * writes. */
	assert_int_equal(ls.op[BKS_OP_READ].ops, 5);
	assert_int_equal(ls.op[BKS_OP_WRITE].ops, 4);
	bks_layer_get_stats(layer(&r, "fmt"), &ls);
	assert_int_equal(ls.op[BKS_OP_WRITE].ops, 2);
	assert_int_equal(ls.subreqs, 0);
	rig_close(&r);
}

/* Exhausted: a write waits for a free sub-request, in order. */
static void test_subreq_pool_exhaustion(void **state)
{
	static char buf[NREQ][512];
	struct fmt_state *fs;
	struct bks_layer *hold;
	struct rig r;
	(void)state;

	rig_open(&r, "fmt:|hold:|ram:1M");
	hold = layer(&r, "hold");
	fs = bks_layer_state(layer(&r, "fmt"));
	for (unsigned int i = 0; i < 4; i++)
		submit(&r, i, BKS_OP_WRITE, 512 * i, buf[i], 512);
	/* Two table reads (the pool holds FMT_SUBREQS), two waiting. */
	assert_int_equal(FMT_SUBREQS, 2);
	assert_int_equal(hold_count(hold), 2);
	assert_int_equal(fs->waits, 2);
	assert_int_equal(bks_chain_in_flight(r.chain), 4 + 2);
	/* Release everything the hold gets until all are done. */
	for (int guard = 0; hold_count(hold) && guard < 100; guard++)
		hold_release(hold, 1);
	for (unsigned int i = 0; i < 4; i++)
		assert_int_equal(r.results[i], 0);
	/* The waiting ones went in the order they waited. */
	for (unsigned int i = 0; i < 4; i++)
		assert_int_equal(r.order[i], i);
	assert_int_equal(bks_chain_in_flight(r.chain), 0);
	rig_close(&r);
}

/* A failing piece reaches the parent once, with the first error. */
static void test_join_error_once(void **state)
{
	static char buf[512];
	struct rig r;
	(void)state;

	/* Both the data write and the table write fail. */
	rig_open(&r, "fmt:|error:ops=write,errno=ENOSPC|ram:1M");
	assert_int_equal(run(&r, BKS_OP_WRITE, 0, buf, 512), -ENOSPC);
	assert_int_equal(r.dones, 1);
	rig_close(&r);
	/* Only the first (the data write) fails. */
	rig_open(&r, "fmt:|error:ops=write,count=1,errno=EROFS|ram:1M");
	assert_int_equal(run(&r, BKS_OP_WRITE, 0, buf, 512), -EROFS);
	assert_int_equal(r.dones, 1);
	assert_int_equal(run(&r, BKS_OP_WRITE, 0, buf, 512), 0);
	rig_close(&r);
	/* The table read fails: no data is written. */
	rig_open(&r, "fmt:|error:ops=read,errno=EIO|ram:1M");
	assert_int_equal(run(&r, BKS_OP_WRITE, 0, buf, 512), -EIO);
	assert_int_equal(r.dones, 1);
	rig_close(&r);
}

static void join_done(struct bks_join *join, int result)
{
	int *out = join->arg;

	assert_int_equal(*out, 1);
	*out = result;
}

static void test_join_counts(void **state)
{
	struct bks_join j;
	int result = 1;
	(void)state;

	bks_join_init(&j, join_done, &result);
	bks_join_add(&j);
	bks_join_add(&j);
	bks_join_put(&j, 0);
	bks_join_put(&j, -EIO);
	assert_int_equal(result, 1);
	bks_join_put(&j, -ENOSPC); /* the builder's */
	assert_int_equal(result, -EIO);
}

/* ---- block status -------------------------------------------------------- */

static void test_block_status_async(void **state)
{
	static char buf[512];
	struct bks_extent ext[4];
	struct bks_req *req;
	struct bks_layer *hold;
	struct bks_layer_stats ls;
	size_t n = 0;
	struct rig r;
	(void)state;

	rig_open(&r, "fmt:|hold:|ram:1M");
	hold = layer(&r, "hold");
	assert_true(bks_chain_has_extents(r.chain));
	req = req_set(&r, 0, BKS_OP_BLOCK_STATUS, 100, NULL, 1000);
	req->extents = ext;
	req->extents_max = 4;
	assert_int_equal(bks_chain_submit(r.chain, req), 0);
	/* The format reads its table first: the answer comes later. */
	assert_int_equal(r.results[0], 1);
	assert_int_equal(hold_count(hold), 1);
	/* The synchronous wrapper cannot wait for it. */
	assert_int_equal(bks_chain_extents(r.chain, 0, 512, ext, 4, &n),
			 -EWOULDBLOCK);
	assert_int_equal(bks_chain_extents(r.chain, 0, 512, ext, 4, &n),
			 -EBUSY);
	hold_release(hold, 2);
	assert_int_equal(r.results[0], 0);
	assert_int_equal(req->nextents, 1);
	assert_int_equal(ext[0].offset, 100);
	assert_int_equal(ext[0].length, 1000);
	assert_int_equal(ext[0].flags, BKS_EXTENT_HOLE | BKS_EXTENT_ZERO);
	/* After a write, data; and its counters are apart from the ops'. */
	submit(&r, 1, BKS_OP_WRITE, 0, buf, 512);
	for (int guard = 0; hold_count(hold) && guard < 10; guard++)
		hold_release(hold, 1);
	assert_int_equal(r.results[1], 0);
	req = req_set(&r, 2, BKS_OP_BLOCK_STATUS, 0, NULL, 512);
	req->extents = ext;
	req->extents_max = 4;
	assert_int_equal(bks_chain_submit(r.chain, req), 0);
	hold_release(hold, 1);
	assert_int_equal(r.results[2], 0);
	assert_int_equal(ext[0].flags, 0);
	bks_layer_get_stats(layer(&r, "fmt"), &ls);
	assert_int_equal(ls.block_status.ops, 3);
	assert_int_equal(ls.block_status.errors, 0);
	/* Bounds are checked; no room is refused. */
	req = req_set(&r, 3, BKS_OP_BLOCK_STATUS, 0, NULL, 2 << 20);
	req->extents = ext;
	req->extents_max = 4;
	assert_int_equal(bks_chain_submit(r.chain, req), 0);
	assert_int_equal(r.results[3], -EINVAL);
	req = req_set(&r, 4, BKS_OP_BLOCK_STATUS, 0, NULL, 512);
	assert_int_equal(bks_chain_submit(r.chain, req), 0);
	assert_int_equal(r.results[4], -EINVAL);
	rig_close(&r);
}

/* A sink without the op is all data; the wrapper answers at once. */
static void test_block_status_default(void **state)
{
	struct bks_extent ext[2];
	size_t n = 0;
	struct rig r;
	(void)state;

	rig_open(&r, "log:|ram:1M");
	assert_false(bks_chain_has_extents(r.chain));
	assert_int_equal(bks_chain_extents(r.chain, 512, 1024, ext, 2, &n), 0);
	assert_int_equal(n, 1);
	assert_int_equal(ext[0].offset, 512);
	assert_int_equal(ext[0].length, 1024);
	assert_int_equal(ext[0].flags, 0);
	assert_int_equal(bks_chain_extents(r.chain, 1 << 20, 512, ext, 2, &n),
			 -EINVAL);
	rig_close(&r);
}

/* ---- reopen and replace-child -------------------------------------------- */

static void drain_now(struct rig *r)
{
	unsigned int before = r->drained;

	assert_int_equal(bks_chain_drain_begin(r->chain, on_drained, r), 0);
	spin(r);
	assert_int_equal(r->drained, before + 1);
}

static void test_reopen_commit(void **state)
{
	static char buf[512];
	struct bks_error err = {0};
	struct fmt_state *fs;
	struct rig r;
	(void)state;

	rig_open(&r, "fmt:|ram:1M");
	fs = bks_layer_state(layer(&r, "fmt"));
	/* Not drained: refused. */
	assert_int_equal(
	    bks_chain_reopen(r.chain, "fmt:lazy|ram:1M", false, &err), -EBUSY);
	drain_now(&r);
	if (bks_chain_reopen(r.chain, "fmt:lazy|ram:1M", false, &err))
		fail_msg("%s", err.msg);
	assert_true(fs->lazy);
	assert_int_equal(fs->commits, 1);
	assert_string_equal(bks_layer_args(layer(&r, "fmt")), "lazy");
	/* The same args again: nothing to do. */
	assert_int_equal(
	    bks_chain_reopen(r.chain, "fmt:lazy|ram:1M", false, &err), 0);
	assert_int_equal(fs->commits, 1);
	/* Not the same chain. */
	assert_int_equal(bks_chain_reopen(r.chain, "ram:1M", false, &err),
			 -EINVAL);
	assert_non_null(strstr(err.msg, "1 layers, the chain has 2"));
	assert_int_equal(bks_chain_reopen(r.chain, "log:|ram:1M", false, &err),
			 -EINVAL);
	assert_non_null(strstr(err.msg, "layer 1 is 'fmt', not 'log'"));
	/* ram: cannot change its args. */
	assert_int_equal(
	    bks_chain_reopen(r.chain, "fmt:lazy|ram:2M", false, &err),
	    -EOPNOTSUPP);
	assert_non_null(strstr(err.msg, "layer 2 (ram): cannot be reopened"));
	assert_int_equal(fs->aborts, 0);
	/* Nor with fmt: changing: its prepare is aborted. */
	assert_int_equal(bks_chain_reopen(r.chain, "fmt:|ram:2M", false, &err),
			 -EOPNOTSUPP);
	assert_int_equal(fs->aborts, 1);
	assert_int_equal(fs->commits, 1);
	assert_true(fs->lazy);
	assert_string_equal(bks_layer_args(layer(&r, "fmt")), "lazy");
	bks_chain_drain_end(r.chain);
	assert_int_equal(run(&r, BKS_OP_WRITE, 0, buf, 512), 0);
	spin(&r);
	rig_close(&r);
}

static void test_reopen_abort(void **state)
{
	static char buf[512], back[512];
	struct bks_error err = {0};
	struct fmt_state *top, *low;
	struct rig r;
	(void)state;

	rig_open(&r, "fmt:|fmt:|ram:1M");
	top = bks_layer_state(bks_chain_layer(r.chain, 0));
	low = bks_layer_state(bks_chain_layer(r.chain, 1));
	unit_fill(buf, sizeof(buf), 0, 3);
	assert_int_equal(run(&r, BKS_OP_WRITE, 0, buf, 512), 0);
	drain_now(&r);
	assert_int_equal(
	    bks_chain_reopen(r.chain, "fmt:lazy|fmt:fail|ram:1M", false, &err),
	    -EIO);
	assert_non_null(strstr(err.msg, "layer 2 (fmt): reopen: fmt: refused"));
	/* The first was prepared and aborted; nothing committed. */
	assert_int_equal(top->aborts, 1);
	assert_int_equal(top->commits, 0);
	assert_int_equal(low->aborts, 0);
	assert_false(top->lazy);
	assert_string_equal(bks_layer_args(bks_chain_layer(r.chain, 0)), "");
	/* The old chain keeps serving. */
	bks_chain_drain_end(r.chain);
	assert_int_equal(run(&r, BKS_OP_READ, 0, back, 512), 0);
	assert_memory_equal(buf, back, sizeof(buf));
	assert_int_equal(run(&r, BKS_OP_WRITE, 512, buf, 512), 0);
	rig_close(&r);
}

/* Swap the image below a filter, and back. */
static void test_replace_child(void **state)
{
	static char buf[512], back[512];
	struct bks_error err = {0};
	struct bks_chain *fresh = NULL, *old = NULL, *older = NULL;
	struct rig r;
	(void)state;

	rig_open(&r, "log:|ram:1M");
	unit_fill(buf, sizeof(buf), 0, 9);
	assert_int_equal(run(&r, BKS_OP_WRITE, 0, buf, 512), 0);
	assert_int_equal(bks_chain_open_with(&fresh, "fmt:|ram:2M",
					     fw_test_drivers, r.loop, false,
					     &err),
			 0);
	/* Not drained. */
	assert_int_equal(bks_chain_replace_child(bks_chain_top(r.chain),
						 BKS_CHILD_FILE, &fresh, &old,
						 &err),
			 -EBUSY);
	drain_now(&r);
	/* A filter has no backing child. */
	assert_int_equal(bks_chain_replace_child(bks_chain_top(r.chain),
						 BKS_CHILD_BACKING, &fresh,
						 &old, &err),
			 -EINVAL);
	if (bks_chain_replace_child(bks_chain_top(r.chain), BKS_CHILD_FILE,
				    &fresh, &old, &err))
		fail_msg("%s", err.msg);
	assert_null(fresh);
	assert_non_null(old);
	assert_int_equal(bks_chain_layers(r.chain), 3);
	assert_string_equal(bks_layer_driver(bks_chain_layer(r.chain, 1))->name,
			    "fmt");
	assert_int_equal(bks_layer_index(bks_chain_layer(r.chain, 2)), 2);
	/* The infos above were computed again. */
	assert_int_equal(bks_chain_info(r.chain)->size, (2 << 20) - 4096);
	assert_int_equal(bks_chain_layers(old), 1);
	assert_int_equal(bks_chain_info(old)->size, 1 << 20);
	bks_chain_drain_end(r.chain);
	/* The new image: zeroes. */
	assert_int_equal(run(&r, BKS_OP_READ, 0, back, 512), 0);
	for (size_t i = 0; i < sizeof(back); i++)
		assert_int_equal(back[i], 0);
	/* And back: the old image, with its data. */
	drain_now(&r);
	assert_int_equal(bks_chain_replace_child(bks_chain_top(r.chain),
						 BKS_CHILD_FILE, &old, &older,
						 &err),
			 0);
	assert_int_equal(bks_chain_layers(r.chain), 2);
	assert_int_equal(bks_chain_layers(older), 2);
	bks_chain_drain_end(r.chain);
	assert_int_equal(run(&r, BKS_OP_READ, 0, back, 512), 0);
	assert_memory_equal(buf, back, sizeof(buf));
	bks_chain_close(older);
	rig_close(&r);
}

/* ---- limits and splitting ------------------------------------------------ */

static void test_split_discard(void **state)
{
	static char buf[4096], back[4096];
	struct bks_layer_stats ls;
	struct rec_state *rs;
	struct rig r;
	uint64_t pos;
	(void)state;

	rig_open(&r, "rec:max=64K|ram:4M");
	rs = bks_layer_state(layer(&r, "rec"));
	memset(buf, 0xee, sizeof(buf));
	assert_int_equal(run(&r, BKS_OP_WRITE, 1 << 20, buf, 4096), 0);
	/* 1M + 4K from 4K: 16 pieces of 64K and one of 4K, in order. */
	assert_int_equal(
	    run(&r, BKS_OP_WRITE_ZEROES, 4096, NULL, (1 << 20) + 4096), 0);
	assert_int_equal(rs->n, 17);
	pos = 4096;
	for (unsigned int i = 0; i < rs->n; i++) {
		assert_int_equal(rs->pieces[i].op, BKS_OP_WRITE_ZEROES);
		assert_int_equal(rs->pieces[i].offset, pos);
		assert_true(rs->pieces[i].len <= 64 * 1024);
		pos += rs->pieces[i].len;
	}
	assert_int_equal(pos, 4096 + (1 << 20) + 4096);
	assert_int_equal(run(&r, BKS_OP_READ, 1 << 20, back, 4096), 0);
	for (size_t i = 0; i < sizeof(back); i++)
		assert_int_equal(back[i], 0);
	bks_layer_get_stats(layer(&r, "rec"), &ls);
	assert_int_equal(ls.split, 1);
	/* The parent is counted once, with its whole length. */
	assert_int_equal(ls.op[BKS_OP_WRITE_ZEROES].ops, 1);
	assert_int_equal(ls.op[BKS_OP_WRITE_ZEROES].bytes, (1 << 20) + 4096);
	bks_layer_get_stats(layer(&r, "ram"), &ls);
	assert_int_equal(ls.op[BKS_OP_WRITE_ZEROES].ops, 17);
	/* Within the limit: whole. */
	rs->n = 0;
	assert_int_equal(run(&r, BKS_OP_DISCARD, 0, NULL, 65536), 0);
	assert_int_equal(rs->n, 1);
	rig_close(&r);
}

/* A failing piece ends the split: the parent gets the error once. */
static void test_split_error(void **state)
{
	struct rec_state *rs;
	struct rig r;
	(void)state;

	rig_open(&r, "rec:max=64K|error:ops=discard,after=2,count=1|ram:1M");
	rs = bks_layer_state(layer(&r, "rec"));
	assert_int_equal(run(&r, BKS_OP_DISCARD, 0, NULL, 512 * 1024), -EIO);
	assert_int_equal(r.dones, 1);
	assert_int_equal(rs->n, 3);
	rig_close(&r);
}

/*
 * Many pieces that complete before their op returns: a loop, not a
 * recursion per piece (which would overflow the stack here).
 */
static void test_split_many_sync(void **state)
{
	struct rec_state *rs;
	struct rig r;
	(void)state;

	rig_open(&r, "rec:max=512,absorb|ram:64M");
	rs = bks_layer_state(layer(&r, "rec"));
	assert_int_equal(run(&r, BKS_OP_DISCARD, 0, NULL, 64 << 20), 0);
	assert_int_equal(rs->n, (64 << 20) / 512);
	/* Every piece's op ran at (about) the same depth. */
	assert_true(rs->stack_hi - rs->stack_lo < 4096);
	assert_int_equal(rs->pieces[REC_MAX - 1].offset, 512 * (REC_MAX - 1));
	assert_int_equal(r.dones, 1);
	rig_close(&r);
}

/* Pieces that complete later: still one at a time, in order. */
static void test_split_async(void **state)
{
	struct bks_layer *hold;
	struct rig r;
	(void)state;

	rig_open(&r, "rec:max=64K|hold:|ram:1M");
	hold = layer(&r, "hold");
	submit(&r, 0, BKS_OP_DISCARD, 0, NULL, 256 * 1024);
	for (unsigned int i = 0; i < 4; i++) {
		assert_int_equal(hold_count(hold), 1);
		/* The parent and its piece (a sub-request). */
		assert_int_equal(bks_chain_in_flight(r.chain), 2);
		assert_int_equal(hold_peek(hold, 0)->offset, 65536 * i);
		assert_int_equal(r.results[0], 1);
		hold_release(hold, 1);
	}
	assert_int_equal(r.results[0], 0);
	rig_close(&r);
}

/* The file sinks declare 1 GiB: a 4 GiB request arrives in 4 pieces. */
static void test_file_sink_limits(void **state)
{
	static const char *const sinks[] = {"sync", "aio"};
	char path[256], chain[300];
	struct rec_state *rs;
	struct rig r;
	(void)state;

	for (unsigned int k = 0; k < 2; k++) {
		assert_int_equal(unit_tmpfile(path, sizeof(path), 5ull << 30),
				 0);
		snprintf(chain, sizeof(chain), "rec:|%s:%s", sinks[k], path);
		rig_open(&r, chain);
		assert_int_equal(bks_chain_info(r.chain)->max_discard,
				 1ull << 30);
		rs = bks_layer_state(layer(&r, "rec"));
		/* aio: runs them on its helper threads: wait for them. */
		assert_int_equal(
		    run_wait(&r, BKS_OP_WRITE_ZEROES, 0, NULL, 4ull << 30), 0);
		assert_int_equal(rs->n, 4);
		for (unsigned int i = 0; i < 4; i++)
			assert_int_equal(rs->pieces[i].len, 1ull << 30);
		assert_int_equal(
		    run_wait(&r, BKS_OP_DISCARD, 0, NULL, 4ull << 30), 0);
		assert_int_equal(rs->n, 8);
		rig_close(&r);
		unlink(path);
	}
}

/* ---- the stats op -------------------------------------------------------- */

struct text_out {
	struct bks_stats_out out;
	char buf[512];
	size_t len;
};

static void put(struct text_out *t, const char *s)
{
	size_t n = strlen(s);

	assert_true(t->len + n < sizeof(t->buf));
	memcpy(t->buf + t->len, s, n + 1);
	t->len += n;
}

static void t_u64(struct bks_stats_out *o, const char *key, uint64_t v)
{
	char b[64];

	snprintf(b, sizeof(b), "%s=%llu ", key, (unsigned long long)v);
	put((struct text_out *)o, b);
}

static void t_str(struct bks_stats_out *o, const char *key, const char *v)
{
	put((struct text_out *)o, key);
	put((struct text_out *)o, "=");
	put((struct text_out *)o, v);
	put((struct text_out *)o, " ");
}

static void t_begin(struct bks_stats_out *o, const char *key)
{
	put((struct text_out *)o, key);
	put((struct text_out *)o, "{ ");
}

static void t_end(struct bks_stats_out *o)
{
	put((struct text_out *)o, "} ");
}

static void test_stats_op(void **state)
{
	static char buf[512];
	struct text_out t = {
	    .out = {.u64 = t_u64, .str = t_str, .begin = t_begin, .end = t_end},
	};
	struct rig r;
	(void)state;

	rig_open(&r, "error:ops=read,count=1|log:block=4K|ram:1M");
	assert_int_equal(run(&r, BKS_OP_WRITE, 0, buf, 512), 0);
	assert_int_equal(run(&r, BKS_OP_READ, 0, buf, 512), -EIO);
	for (struct bks_layer *l = bks_chain_top(r.chain); l;
	     l = bks_chain_next_layer(l))
		bks_layer_emit_stats(l, &t.out);
	bks_stats_str(&t.out, "end", "yes");
	assert_string_equal(
	    t.buf, "error{ seen=1 injected=1 } "
		   "log{ dirty_bytes=4096 block_size=4096 persisted=0 } "
		   "end=yes ");
	rig_close(&r);
}

/* ---- the oldest request in flight ---------------------------------------- */

/* Pass the i-th request the hold: layer keeps down, out of order. */
static void hold_release_nth(struct bks_layer *hold, unsigned int i)
{
	struct hold_state *s = bks_layer_state(hold);
	struct bks_req **pp = &s->head, *prev = NULL, *req;

	while (*pp && i--) {
		prev = *pp;
		pp = &(*pp)->owner_next;
	}
	req = *pp;
	assert_non_null(req);
	*pp = req->owner_next;
	if (s->tail == req)
		s->tail = prev;
	s->n--;
	bks_next_submit(bks_layer_child(hold, BKS_CHILD_FILE), req);
}

/* A clock step between two submissions, so that their times differ. */
static void tick(void)
{
	uint64_t t = bks_now_ns();

	while (bks_now_ns() == t)
		;
}

/*
 * The oldest top request's submit time: in submission order, whatever
 * the completion order; parked requests not counted until they go down;
 * a padded request counted once (its steps not); split pieces not.
 */
static void test_oldest(void **state)
{
	static char buf[4][512];
	struct bks_layer *hold;
	uint64_t t0, o0, o1, o2;
	struct rig r;
	(void)state;

	rig_open(&r, "hold:|ram:1M");
	hold = layer(&r, "hold");
	assert_int_equal(bks_chain_oldest_ns(r.chain), 0);
	t0 = bks_now_ns();
	submit(&r, 0, BKS_OP_WRITE, 0, buf[0], 512);
	o0 = bks_chain_oldest_ns(r.chain);
	assert_true(o0 >= t0 && o0 <= bks_now_ns());
	tick();
	submit(&r, 1, BKS_OP_WRITE, 512, buf[1], 512);
	tick();
	submit(&r, 2, BKS_OP_READ, 1024, buf[2], 512);
	assert_int_equal(bks_chain_oldest_ns(r.chain), o0);
	/* The middle one done: the oldest stays. */
	hold_release_nth(hold, 1);
	assert_int_equal(r.results[1], 0);
	assert_int_equal(bks_chain_oldest_ns(r.chain), o0);
	/* The oldest done: the next one (req 2) is the oldest now. */
	hold_release_nth(hold, 0);
	o2 = bks_chain_oldest_ns(r.chain);
	assert_true(o2 > o0);
	/* Parked by a drain: not in flight, not counted. */
	assert_int_equal(bks_chain_drain_begin(r.chain, on_drained, &r), 0);
	submit(&r, 3, BKS_OP_WRITE, 0, buf[3], 512);
	assert_int_equal(bks_chain_oldest_ns(r.chain), o2);
	hold_release(hold, 1);
	assert_int_equal(bks_chain_oldest_ns(r.chain), 0);
	spin(&r);
	assert_int_equal(r.drained, 1);
	tick();
	t0 = bks_now_ns();
	bks_chain_drain_end(r.chain);
	/* Its time starts when it goes down. */
	o1 = bks_chain_oldest_ns(r.chain);
	assert_true(o1 >= t0);
	hold_release(hold, 1);
	assert_int_equal(bks_chain_oldest_ns(r.chain), 0);
	/* A padded write (read-modify-write): one top request, its steps
	   not counted. */
	submit(&r, 0, BKS_OP_WRITE, 100, buf[0], 100);
	o0 = bks_chain_oldest_ns(r.chain);
	assert_true(o0 != 0);
	for (int i = 0; i < 4 && r.results[0] == 1; i++) {
		assert_int_equal(hold_count(hold), 1);
		assert_int_equal(bks_chain_oldest_ns(r.chain), o0);
		hold_release(hold, 1);
	}
	assert_int_equal(r.results[0], 0);
	assert_int_equal(bks_chain_oldest_ns(r.chain), 0);
	for (unsigned int i = 0; i < 4; i++)
		assert_int_equal(r.results[i], 0);
	rig_close(&r);
}

/* Split pieces and a retry keep the one request's time. */
static void test_oldest_split_retry(void **state)
{
	static char buf[512];
	struct bks_retry_policy p = {.max_attempts = 2, .delay_ns = 20000000};
	uint64_t o0;
	struct rig r;
	(void)state;

	rig_open(&r, "rec:max=64K|hold:|ram:1M");
	submit(&r, 0, BKS_OP_DISCARD, 0, NULL, 256 * 1024);
	o0 = bks_chain_oldest_ns(r.chain);
	assert_true(o0 != 0);
	for (unsigned int i = 0; i < 4; i++) {
		assert_int_equal(bks_chain_oldest_ns(r.chain), o0);
		hold_release(layer(&r, "hold"), 1);
	}
	assert_int_equal(r.results[0], 0);
	assert_int_equal(bks_chain_oldest_ns(r.chain), 0);
	rig_close(&r);

	rig_open(&r, "error:ops=write,count=1|ram:1M");
	bks_chain_set_retry(r.chain, &p);
	submit(&r, 0, BKS_OP_WRITE, 0, buf, 512);
	o0 = bks_chain_oldest_ns(r.chain);
	assert_true(o0 != 0);
	assert_int_equal(r.results[0], 1); /* waiting for its retry */
	for (int i = 0; i < 100 && r.results[0] == 1; i++) {
		assert_int_equal(bks_chain_oldest_ns(r.chain), o0);
		bks_loop_run_once(r.loop, 10);
	}
	assert_int_equal(r.results[0], 0);
	assert_int_equal(bks_chain_oldest_ns(r.chain), 0);
	rig_close(&r);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_drain_parks_in_order),
	    cmocka_unit_test(test_drain_idle_and_nested),
	    cmocka_unit_test(test_drain_waits_for_busy),
	    cmocka_unit_test(test_drain_waits_for_retry),
	    cmocka_unit_test(test_drain_waiters_limit),
	    cmocka_unit_test(test_drain_waits_for_subrequests),
	    cmocka_unit_test(test_fmt_write_read),
	    cmocka_unit_test(test_subreq_pool_exhaustion),
	    cmocka_unit_test(test_join_error_once),
	    cmocka_unit_test(test_join_counts),
	    cmocka_unit_test(test_block_status_async),
	    cmocka_unit_test(test_block_status_default),
	    cmocka_unit_test(test_reopen_commit),
	    cmocka_unit_test(test_reopen_abort),
	    cmocka_unit_test(test_replace_child),
	    cmocka_unit_test(test_split_discard),
	    cmocka_unit_test(test_split_error),
	    cmocka_unit_test(test_split_many_sync),
	    cmocka_unit_test(test_split_async),
	    cmocka_unit_test(test_file_sink_limits),
	    cmocka_unit_test(test_stats_op),
	    cmocka_unit_test(test_oldest),
	    cmocka_unit_test(test_oldest_split_retry),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
