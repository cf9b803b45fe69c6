/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Unit tests: the file queue (libblkstack/aioq.c and its engines), directly
 * and through the aio: driver (libblkstack/drivers/aio.c) in a chain.  The
 * whole suite runs once per engine (libaio, io_uring: the group's initial
 * state says which); a few tests exist for one engine only.
 *
 * Linked with --wrap=malloc/calloc/realloc/free (see the Makefile) so that
 * the data path can be shown not to allocate.  Image files live in
 * $BKS_TEST_TMPDIR or /var/tmp (O_DIRECT needs a disk file system).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <libaio.h>
#include <liburing.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include "blkstack/aioq.h"
#include "blkstack/chain.h"
#include "blkstack/driver.h"
#include "blkstack/loop.h"
#include "unit-util.h"

/* The driver's own struct, to check the registry hands out the same one. */
extern const struct bks_driver bks_driver_aio;

/* ---- counting allocations ---------------------------------------------- */

void *__real_malloc(size_t size);
void *__real_calloc(size_t n, size_t size);
void *__real_realloc(void *p, size_t size);
void __real_free(void *p);
void *__wrap_malloc(size_t size);
void *__wrap_calloc(size_t n, size_t size);
void *__wrap_realloc(void *p, size_t size);
void __wrap_free(void *p);

/* The one global: the wrappers have no other way to reach it. */
static struct {
	bool on;
	unsigned long calls; /* malloc + calloc + realloc while on */
} allocs;

void *__wrap_malloc(size_t size)
{
	if (allocs.on)
		allocs.calls++;
	return __real_malloc(size);
}

void *__wrap_calloc(size_t n, size_t size)
{
	if (allocs.on)
		allocs.calls++;
	return __real_calloc(n, size);
}

void *__wrap_realloc(void *p, size_t size)
{
	if (allocs.on)
		allocs.calls++;
	return __real_realloc(p, size);
}

void __wrap_free(void *p)
{
	__real_free(p);
}

/* ---- injecting io_submit() results -----------------------------------------
 */

/*
 * The test defines io_submit() itself, so that aioq.o binds to it, and
 * passes calls on to libaio's.  It can make the kernel look busy (-EAGAIN),
 * take fewer iocbs than offered, or lack aio fdsync (-EINVAL).
 */
static struct {
	int (*real)(io_context_t, long, struct iocb **);
	unsigned int eagain; /* fail this many calls with -EAGAIN */
	long max_take;	     /* take at most this many per call (0: all) */
	bool no_fdsync;	     /* refuse IO_CMD_FDSYNC with -EINVAL */
	unsigned long calls;
	int (*uring_real)(struct io_uring *);
	unsigned int uring_fail; /* fail this many io_uring_submit() calls */
	int uring_errno;	 /* with this (-EAGAIN, -EBUSY) */
	unsigned long uring_calls;
} sub;

int io_submit(io_context_t ctx, long nr, struct iocb *ios[])
{
	sub.calls++;
	if (sub.eagain) {
		sub.eagain--;
		return -EAGAIN;
	}
	if (sub.no_fdsync && ios[0]->aio_lio_opcode == IO_CMD_FDSYNC)
		return -EINVAL;
	if (sub.max_take && nr > sub.max_take)
		nr = sub.max_take;
	return sub.real(ctx, nr, ios);
}

/* The same for io_uring: aioq-uring.o binds to this io_uring_submit(). */
int io_uring_submit(struct io_uring *ring)
{
	sub.uring_calls++;
	if (sub.uring_fail) {
		sub.uring_fail--;
		return sub.uring_errno;
	}
	return sub.uring_real(ring);
}

/* ---- fixture ---------------------------------------------------------------
 */

#define KiB	   1024u
#define MiB	   (1024u * 1024u)
#define BLK	   (4 * KiB)
#define IMAGE_SIZE (8 * MiB)
#define SEED	   0x5eedull

struct fx {
	struct bks_loop *loop;
	char path[256];
	char chain_str[300];
	int fd;	   /* O_RDWR | O_DIRECT on path */
	int plain; /* O_RDWR on path, for checking through the page cache */
	struct bks_aioq *q;
	struct bks_offload *off; /* the queue's, for the fdsync fallback */
	struct bks_chain *chain;
	unsigned int outstanding;
	enum bks_io_engine engine; /* the group's: what queues use */
};

static int setup(void **state)
{
	struct bks_error err = {0};
	const enum bks_io_engine *engine = *state;
	struct fx *fx = calloc(1, sizeof(*fx));

	assert_non_null(fx);
	fx->engine = *engine;
	fx->fd = fx->plain = -1;
	assert_int_equal(bks_loop_new(&fx->loop, &err), 0);
	assert_int_equal(unit_tmpfile(fx->path, sizeof(fx->path), IMAGE_SIZE),
			 0);
	snprintf(fx->chain_str, sizeof(fx->chain_str), "aio:%s", fx->path);
	fx->fd = open(fx->path, O_RDWR | O_DIRECT | O_CLOEXEC);
	assert_true(fx->fd >= 0);
	fx->plain = open(fx->path, O_RDWR | O_CLOEXEC);
	assert_true(fx->plain >= 0);
	*state = fx;
	return 0;
}

static int teardown(void **state)
{
	sub.eagain = 0;
	sub.max_take = 0;
	sub.no_fdsync = false;
	sub.uring_fail = 0;

	struct fx *fx = *state;

	if (fx->chain)
		bks_chain_close(fx->chain);
	bks_aioq_free(fx->q);
	assert_int_equal(bks_offload_free(fx->off, 0), 0);
	close(fx->fd);
	close(fx->plain);
	unlink(fx->path);
	bks_loop_free(fx->loop);
	free(fx);
	return 0;
}

static void new_queue(struct fx *fx, unsigned int depth)
{
	struct bks_error err = {0};

	assert_int_equal(bks_offload_new(&fx->off, fx->loop, 1, depth, &err),
			 0);
	assert_int_equal(
	    bks_aioq_new(&fx->q, fx->loop, depth, fx->engine, fx->off, &err),
	    0);
	assert_int_equal(bks_aioq_engine(fx->q), fx->engine);
}

static void open_chain(struct fx *fx, bool read_only)
{
	struct bks_error err = {0};
	struct bks_chain_config cfg = {
	    .loop = fx->loop,
	    .read_only = read_only,
	    .io_engine = fx->engine,
	};
	int rc = bks_chain_open_config(&fx->chain, fx->chain_str, &cfg, &err);

	if (rc < 0)
		print_error("bks_chain_open: %s\n", err.msg);
	assert_int_equal(rc, 0);
}

/* Run the loop until every request of the test has completed. */
static void run_until_idle(struct fx *fx)
{
	uint64_t deadline = bks_now_ns() + 20ull * 1000 * 1000 * 1000;

	while (fx->outstanding && bks_now_ns() < deadline)
		assert_true(bks_loop_run_once(fx->loop, 1000) >= 0);
	assert_int_equal(fx->outstanding, 0);
}

static struct bks_aioq_stats qstats(const struct fx *fx)
{
	struct bks_aioq_stats st;

	bks_aioq_get_stats(fx->q, &st);
	return st;
}

/* ---- test requests ---------------------------------------------------------
 */

struct treq {
	struct bks_req req;
	struct iovec iov;
	struct fx *fx;
	int result;
	bool done;
};

static void treq_done(struct bks_req *req, int result)
{
	struct treq *t = req->opaque;

	assert_false(t->done); /* exactly once */
	t->result = result;
	t->done = true;
	t->fx->outstanding--;
}

static void treq_prep(struct fx *fx, struct treq *t, enum bks_op op,
		      uint32_t flags, uint64_t offset, uint64_t len, void *buf)
{
	memset(t, 0, sizeof(*t));
	t->fx = fx;
	t->iov.iov_base = buf;
	t->iov.iov_len = len;
	t->req.op = op;
	t->req.flags = flags;
	t->req.offset = offset;
	t->req.len = len;
	if (buf) {
		t->req.iov = &t->iov;
		t->req.iovcnt = 1;
	}
	t->req.done = treq_done;
	t->req.opaque = t;
	t->result = 1; /* not a valid result: shows "never completed" */
}

/* Queue t on the queue (fd) and count it outstanding. */
static void tq(struct fx *fx, int fd, struct treq *t)
{
	fx->outstanding++;
	assert_int_equal(bks_aioq_queue(fx->q, fd, &t->req), 0);
}

/* One request through the chain, waited for.  Returns its result. */
static int chain_do(struct fx *fx, enum bks_op op, uint32_t flags,
		    uint64_t offset, uint64_t len, void *buf)
{
	struct treq t;

	treq_prep(fx, &t, op, flags, offset, len, buf);
	fx->outstanding++;
	assert_int_equal(bks_chain_submit(fx->chain, &t.req), 0);
	run_until_idle(fx);
	assert_true(t.done);
	return t.result;
}

static void check_plain(struct fx *fx, uint64_t offset, size_t len,
			uint64_t seed)
{
	unsigned char *buf = malloc(len);

	assert_non_null(buf);
	assert_int_equal(pread(fx->plain, buf, len, (off_t)offset),
			 (ssize_t)len);
	assert_int_equal(unit_check(buf, len, offset, seed), -1);
	free(buf);
}

static void fill_plain(struct fx *fx, uint64_t offset, size_t len,
		       uint64_t seed)
{
	unsigned char *buf = malloc(len);

	assert_non_null(buf);
	unit_fill(buf, len, offset, seed);
	assert_int_equal(pwrite(fx->plain, buf, len, (off_t)offset),
			 (ssize_t)len);
	assert_int_equal(fdatasync(fx->plain), 0);
	free(buf);
}

/* ---- the queue, directly ---------------------------------------------------
 */

/* 64 contiguous 4 KiB writes queued in one iteration become one iocb. */
static void test_merge_contiguous(void **state)
{
	struct fx *fx = *state;
	enum {
		N = 64
	};
	struct treq t[N];
	unsigned char *buf = unit_alloc_aligned(N * BLK);
	unsigned char *rbuf = unit_alloc_aligned(N * BLK);
	struct bks_aioq_stats st;

	assert_non_null(buf);
	assert_non_null(rbuf);
	new_queue(fx, 128);
	unit_fill(buf, N * BLK, 0, SEED);
	for (int i = 0; i < N; i++) {
		treq_prep(fx, &t[i], BKS_OP_WRITE, 0, (uint64_t)i * BLK, BLK,
			  buf + i * BLK);
		tq(fx, fx->fd, &t[i]);
	}
	run_until_idle(fx);
	for (int i = 0; i < N; i++)
		assert_int_equal(t[i].result, 0);
	st = qstats(fx);
	assert_int_equal(st.requests, N);
	assert_true(st.merged > 0);
	assert_true(st.submitted < N);
	assert_int_equal(st.merged, N - 1); /* 256 KiB, 64 buffers: one */
	assert_int_equal(st.submitted, 1);
	assert_int_equal(st.completed, N);
	assert_int_equal(st.errors, 0);
	assert_int_equal(st.in_flight, 0);
	check_plain(fx, 0, N * BLK, SEED);

	/* And back, in reverse order of buffers: split must be right. */
	memset(rbuf, 0, N * BLK);
	for (int i = 0; i < N; i++) {
		treq_prep(fx, &t[i], BKS_OP_READ, 0, (uint64_t)i * BLK, BLK,
			  rbuf + (N - 1 - i) * BLK);
		tq(fx, fx->fd, &t[i]);
	}
	run_until_idle(fx);
	for (int i = 0; i < N; i++) {
		assert_int_equal(t[i].result, 0);
		assert_int_equal(unit_check(rbuf + (N - 1 - i) * BLK, BLK,
					    (uint64_t)i * BLK, SEED),
				 -1);
	}
	st = qstats(fx);
	assert_int_equal(st.submitted, 2);
	assert_int_equal(st.merged, 2 * (N - 1));
	free(buf);
	free(rbuf);
}

/* What must not merge: the limits, and different op, flags, fd, gaps. */
static void test_merge_rules(void **state)
{
	struct fx *fx = *state;
	enum {
		N = 300
	};
	struct treq *t = calloc(N, sizeof(*t));
	unsigned char *buf = unit_alloc_aligned(6 * MiB);
	struct bks_aioq_stats st;
	int fd2;

	assert_non_null(t);
	assert_non_null(buf);
	new_queue(fx, 128);
	unit_fill(buf, 6 * MiB, 0, SEED);

	/* 300 contiguous one-buffer requests: 256 buffers per iocb. */
	for (int i = 0; i < N; i++) {
		treq_prep(fx, &t[i], BKS_OP_WRITE, 0, (uint64_t)i * BLK, BLK,
			  buf + i * BLK);
		tq(fx, fx->fd, &t[i]);
	}
	run_until_idle(fx);
	st = qstats(fx);
	assert_int_equal(st.submitted, 2);
	assert_int_equal(st.merged, N - 2);
	check_plain(fx, 0, N * BLK, SEED);

	/* 3 x 2 MiB: two fit in BKS_AIOQ_MAX_MERGE (4 MiB), not three. */
	for (int i = 0; i < 3; i++) {
		treq_prep(fx, &t[i], BKS_OP_WRITE, 0, (uint64_t)i * 2 * MiB,
			  2 * MiB, buf + i * 2 * MiB);
		tq(fx, fx->fd, &t[i]);
	}
	run_until_idle(fx);
	st = qstats(fx);
	assert_int_equal(st.submitted, 2 + 2);
	assert_int_equal(st.merged, N - 2 + 1);
	check_plain(fx, 0, 6 * MiB, SEED);

	/*
	 * Adjacent but different: write / FUA write / read / other fd,
	 * then a gap.  Nothing merges: five iocbs.
	 */
	fd2 = open(fx->path, O_RDWR | O_DIRECT | O_CLOEXEC);
	assert_true(fd2 >= 0);
	treq_prep(fx, &t[0], BKS_OP_WRITE, 0, 0, BLK, buf);
	treq_prep(fx, &t[1], BKS_OP_WRITE, BKS_REQ_FUA, BLK, BLK, buf + BLK);
	treq_prep(fx, &t[2], BKS_OP_READ, 0, 2 * BLK, BLK, buf + 2 * BLK);
	treq_prep(fx, &t[3], BKS_OP_READ, 0, 3 * BLK, BLK, buf + 3 * BLK);
	treq_prep(fx, &t[4], BKS_OP_READ, 0, 5 * BLK, BLK, buf + 5 * BLK);
	tq(fx, fx->fd, &t[0]);
	tq(fx, fx->fd, &t[1]);
	tq(fx, fx->fd, &t[2]);
	tq(fx, fd2, &t[3]);
	tq(fx, fd2, &t[4]);
	run_until_idle(fx);
	for (int i = 0; i < 5; i++)
		assert_int_equal(t[i].result, 0);
	st = qstats(fx);
	assert_int_equal(st.submitted, 4 + 5);
	assert_int_equal(st.merged, N - 2 + 1);
	close(fd2);
	free(buf);
	free(t);
}

/* Depth 4, 32 scattered requests: 28 wait for a slot, all complete. */
static void test_defer_when_full(void **state)
{
	struct fx *fx = *state;
	enum {
		N = 32,
		DEPTH = 4
	};
	struct treq t[N];
	unsigned char *buf = unit_alloc_aligned(2 * N * BLK);
	struct bks_aioq_stats st;

	assert_non_null(buf);
	new_queue(fx, DEPTH);
	unit_fill(buf, 2 * N * BLK, 0, SEED);
	/* Every other block: nothing is contiguous, nothing merges. */
	for (int i = 0; i < N; i++) {
		uint64_t off = (uint64_t)i * 2 * BLK;

		treq_prep(fx, &t[i], BKS_OP_WRITE, 0, off, BLK, buf + off);
		tq(fx, fx->fd, &t[i]);
	}
	run_until_idle(fx);
	for (int i = 0; i < N; i++)
		assert_int_equal(t[i].result, 0);
	st = qstats(fx);
	assert_true(st.deferred > 0);
	assert_int_equal(st.deferred, N - DEPTH);
	assert_int_equal(st.merged, 0);
	assert_int_equal(st.submitted, N);
	assert_int_equal(st.completed, N);
	assert_int_equal(st.errors, 0);
	assert_int_equal(st.in_flight, 0);
	for (int i = 0; i < N; i++)
		check_plain(fx, (uint64_t)i * 2 * BLK, BLK, SEED);
	free(buf);
}

/*
 * A read across the end of a file shrunk behind the queue's back: the
 * kernel transfers a prefix.  Requests inside it succeed, the rest -EIO.
 */
static void test_partial_is_eio(void **state)
{
	struct fx *fx = *state;
	struct treq t[4];
	unsigned char *buf = unit_alloc_aligned(64 * KiB);
	struct bks_aioq_stats st;

	assert_non_null(buf);
	new_queue(fx, 16);
	fill_plain(fx, 0, 64 * KiB, SEED);
	assert_int_equal(ftruncate(fx->plain, 40 * KiB), 0);
	memset(buf, 0, 64 * KiB);

	/* Merged: 24K..48K in one iocb; only 24K..40K exists. */
	treq_prep(fx, &t[0], BKS_OP_READ, 0, 24 * KiB, 8 * KiB, buf);
	treq_prep(fx, &t[1], BKS_OP_READ, 0, 32 * KiB, 8 * KiB, buf + 8 * KiB);
	treq_prep(fx, &t[2], BKS_OP_READ, 0, 40 * KiB, 8 * KiB, buf + 16 * KiB);
	for (int i = 0; i < 3; i++)
		tq(fx, fx->fd, &t[i]);
	run_until_idle(fx);
	assert_int_equal(t[0].result, 0);
	assert_int_equal(t[1].result, 0);
	assert_int_equal(t[2].result, -EIO);
	assert_int_equal(unit_check(buf, 16 * KiB, 24 * KiB, SEED), -1);
	st = qstats(fx);
	assert_int_equal(st.submitted, 1);
	assert_int_equal(st.partial, 1);
	assert_int_equal(st.errors, 1);

	/* Alone, straddling the end: short, so -EIO. */
	treq_prep(fx, &t[3], BKS_OP_READ, 0, 32 * KiB, 16 * KiB,
		  buf + 32 * KiB);
	tq(fx, fx->fd, &t[3]);
	run_until_idle(fx);
	assert_int_equal(t[3].result, -EIO);
	st = qstats(fx);
	assert_int_equal(st.partial, 2);
	assert_int_equal(st.errors, 2);
	free(buf);
}

/*
 * io_submit() refuses one iocb (a write on a read-only fd: -EBADF): that
 * iocb's requests fail with its error, the others go through.
 */
static void test_submit_error_fails_its_requests(void **state)
{
	struct fx *fx = *state;
	struct treq t[5];
	unsigned char *buf = unit_alloc_aligned(16 * BLK);
	int ro;

	assert_non_null(buf);
	new_queue(fx, 16);
	ro = open(fx->path, O_RDONLY | O_DIRECT | O_CLOEXEC);
	assert_true(ro >= 0);
	unit_fill(buf, 16 * BLK, 0, SEED);
	treq_prep(fx, &t[0], BKS_OP_WRITE, 0, 0, BLK, buf);
	/* Two merged requests on the bad fd: both fail. */
	treq_prep(fx, &t[1], BKS_OP_WRITE, 0, 4 * BLK, BLK, buf + 4 * BLK);
	treq_prep(fx, &t[2], BKS_OP_WRITE, 0, 5 * BLK, BLK, buf + 5 * BLK);
	treq_prep(fx, &t[3], BKS_OP_WRITE, 0, 8 * BLK, BLK, buf + 8 * BLK);
	treq_prep(fx, &t[4], BKS_OP_WRITE, 0, 12 * BLK, BLK, buf + 12 * BLK);
	tq(fx, fx->fd, &t[0]);
	tq(fx, ro, &t[1]);
	tq(fx, ro, &t[2]);
	tq(fx, fx->fd, &t[3]);
	tq(fx, ro, &t[4]);
	run_until_idle(fx);
	assert_int_equal(t[0].result, 0);
	assert_int_equal(t[1].result, -EBADF);
	assert_int_equal(t[2].result, -EBADF);
	assert_int_equal(t[3].result, 0);
	assert_int_equal(t[4].result, -EBADF);
	assert_int_equal(qstats(fx).errors, 3);
	/* libaio refuses a bad iocb at io_submit(); io_uring takes every
	 * SQE and fails the bad ones in their CQEs. */
	assert_int_equal(qstats(fx).submitted,
			 fx->engine == BKS_IO_ENGINE_URING ? 4 : 2);
	assert_int_equal(qstats(fx).in_flight, 0);
	check_plain(fx, 0, BLK, SEED);
	check_plain(fx, 8 * BLK, BLK, SEED);
	close(ro);
	free(buf);
}

/* Completion callbacks queue the next request from inside the queue. */
struct walker {
	struct treq t;
	unsigned int left;
	bool failed;
};

static void walker_done(struct bks_req *req, int result)
{
	struct walker *w = req->opaque;
	struct fx *fx = w->t.fx;

	if (result != 0 ||
	    unit_check(w->t.iov.iov_base, BLK, req->offset, SEED) != -1)
		w->failed = true;
	if (w->left-- == 0) {
		fx->outstanding--;
		return;
	}
	/* Reuse req at once: the queue is done with it. */
	req->offset += BLK;
	if (bks_aioq_queue(fx->q, fx->fd, req) != 0)
		w->failed = true;
}

static void test_reentrant_queue(void **state)
{
	struct fx *fx = *state;
	enum {
		W = 6,
		STEPS = 40
	};
	struct walker w[W];
	unsigned char *buf = unit_alloc_aligned(W * BLK);

	assert_non_null(buf);
	new_queue(fx, 4); /* fewer slots than walkers: deferral too */
	fill_plain(fx, 0, W * (STEPS + 1) * BLK, SEED);
	for (int i = 0; i < W; i++) {
		treq_prep(fx, &w[i].t, BKS_OP_READ, 0,
			  (uint64_t)i * (STEPS + 1) * BLK, BLK, buf + i * BLK);
		w[i].t.req.done = walker_done;
		w[i].t.req.opaque = &w[i];
		w[i].left = STEPS;
		w[i].failed = false;
		tq(fx, fx->fd, &w[i].t);
	}
	run_until_idle(fx);
	for (int i = 0; i < W; i++)
		assert_false(w[i].failed);
	assert_int_equal(qstats(fx).completed, W * (STEPS + 1));
	assert_int_equal(qstats(fx).requests, W * (STEPS + 1));
	assert_int_equal(qstats(fx).errors, 0);
	free(buf);
}

/* The last completion frees the queue from inside its own callback. */
static void free_in_done(struct bks_req *req, int result)
{
	struct treq *t = req->opaque;

	t->result = result;
	t->done = true;
	t->fx->outstanding--;
	bks_aioq_free(t->fx->q);
	t->fx->q = NULL;
}

static void test_free_from_completion(void **state)
{
	struct fx *fx = *state;
	struct treq t;
	unsigned char *buf = unit_alloc_aligned(BLK);

	assert_non_null(buf);
	new_queue(fx, 4);
	treq_prep(fx, &t, BKS_OP_READ, 0, 0, BLK, buf);
	t.req.done = free_in_done;
	tq(fx, fx->fd, &t);
	run_until_idle(fx);
	assert_int_equal(t.result, 0);
	assert_null(fx->q);
	/* The loop has no trace of the queue left. */
	assert_true(bks_loop_run_once(fx->loop, 0) >= 0);
	free(buf);
}

/* Flush goes through the kernel queue (aio fdsync). */
static void test_flush_via_queue(void **state)
{
	struct fx *fx = *state;
	struct treq t[2];
	unsigned char *buf = unit_alloc_aligned(BLK);

	assert_non_null(buf);
	new_queue(fx, 4);
	unit_fill(buf, BLK, 0, SEED);
	treq_prep(fx, &t[0], BKS_OP_WRITE, 0, 0, BLK, buf);
	treq_prep(fx, &t[1], BKS_OP_FLUSH, 0, 0, 0, NULL);
	tq(fx, fx->fd, &t[0]);
	run_until_idle(fx);
	tq(fx, fx->fd, &t[1]);
	run_until_idle(fx);
	assert_int_equal(t[0].result, 0);
	assert_int_equal(t[1].result, 0);
	/* Either way the flush was done; on a kernel with aio fdsync (4.18
	 * on) it was an iocb. */
	assert_int_equal(qstats(fx).completed, 2);
	assert_true(qstats(fx).submitted >= 1);
	print_message("flush: %llu iocbs for write + flush (2: aio fdsync)\n",
		      (unsigned long long)qstats(fx).submitted);
	free(buf);
}

/* io_submit() taking fewer iocbs than offered: the rest follow. */
static void test_submit_short_take(void **state)
{
	struct fx *fx = *state;
	enum {
		N = 8
	};
	struct treq t[N];
	unsigned char *buf = unit_alloc_aligned(2 * N * BLK);
	unsigned long calls0 = sub.calls;

	assert_non_null(buf);
	new_queue(fx, 16);
	unit_fill(buf, 2 * N * BLK, 0, SEED);
	sub.max_take = 3;
	for (int i = 0; i < N; i++) {
		uint64_t off = (uint64_t)i * 2 * BLK;

		treq_prep(fx, &t[i], BKS_OP_WRITE, 0, off, BLK, buf + off);
		tq(fx, fx->fd, &t[i]);
	}
	run_until_idle(fx);
	for (int i = 0; i < N; i++)
		assert_int_equal(t[i].result, 0);
	assert_int_equal(qstats(fx).submitted, N);
	assert_int_equal(sub.calls - calls0, 3); /* 3 + 3 + 2 */
	for (int i = 0; i < N; i++)
		check_plain(fx, (uint64_t)i * 2 * BLK, BLK, SEED);
	free(buf);
}

/*
 * -EAGAIN: the batch waits.  With nothing in flight a timer retries;
 * with requests in flight, their completion does.
 */
static void test_submit_eagain(void **state)
{
	struct fx *fx = *state;
	enum {
		N = 4
	};
	struct treq a[N], b[N];
	unsigned char *buf = unit_alloc_aligned(4 * N * BLK);
	struct bks_aioq_stats st;

	assert_non_null(buf);
	new_queue(fx, 16);
	unit_fill(buf, 4 * N * BLK, 0, SEED);

	/* Nothing in flight: retried by the timer.  (libaio: the requests
	 * wait, deferred; io_uring: the SQEs wait in the ring, taken.) */
	sub.eagain = 2;
	sub.uring_fail = 2;
	sub.uring_errno = -EAGAIN;
	for (int i = 0; i < N; i++) {
		uint64_t off = (uint64_t)i * 2 * BLK;

		treq_prep(fx, &a[i], BKS_OP_WRITE, 0, off, BLK, buf + off);
		tq(fx, fx->fd, &a[i]);
	}
	run_until_idle(fx);
	for (int i = 0; i < N; i++)
		assert_int_equal(a[i].result, 0);
	st = qstats(fx);
	if (fx->engine == BKS_IO_ENGINE_URING) {
		assert_int_equal(sub.uring_fail, 0);
		assert_int_equal(st.deferred, 0);
	} else {
		assert_int_equal(sub.eagain, 0);
		assert_int_equal(st.deferred, N); /* each counted once */
	}
	assert_int_equal(st.submitted, N);
	assert_int_equal(st.errors, 0);

	/* Batch a in flight, batch b refused once: a's completion frees b. */
	for (int i = 0; i < N; i++) {
		uint64_t off = (uint64_t)i * 2 * BLK;

		treq_prep(fx, &a[i], BKS_OP_READ, 0, off, BLK, buf + off);
		tq(fx, fx->fd, &a[i]);
	}
	assert_true(bks_loop_run_once(fx->loop, 0) >= 0); /* a submitted */
	assert_true(qstats(fx).in_flight > 0 || fx->outstanding < N);
	sub.eagain = 1;
	sub.uring_fail = 1;
	sub.uring_errno = -EBUSY; /* what a CQ overflow says */
	for (int i = 0; i < N; i++) {
		uint64_t off = (uint64_t)(2 * N + i * 2) * BLK;

		treq_prep(fx, &b[i], BKS_OP_WRITE, 0, off, BLK, buf + off);
		tq(fx, fx->fd, &b[i]);
	}
	run_until_idle(fx);
	for (int i = 0; i < N; i++) {
		assert_int_equal(a[i].result, 0);
		assert_int_equal(b[i].result, 0);
	}
	st = qstats(fx);
	assert_int_equal(st.submitted, 3 * N);
	assert_int_equal(st.errors, 0);
	assert_int_equal(st.in_flight, 0);
	for (int i = 0; i < N; i++)
		check_plain(fx, (uint64_t)(2 * N + i * 2) * BLK, BLK, SEED);
	free(buf);
}

/* A kernel without aio fdsync: flush falls back to fdatasync() for good. */
static void test_flush_fallback(void **state)
{
	struct fx *fx = *state;
	struct treq t[2];

	new_queue(fx, 4);
	sub.no_fdsync = true;
	treq_prep(fx, &t[0], BKS_OP_FLUSH, 0, 0, 0, NULL);
	tq(fx, fx->fd, &t[0]);
	run_until_idle(fx);
	assert_int_equal(t[0].result, 0);
	assert_int_equal(qstats(fx).submitted, 0);
	/* The next one does not try the kernel queue again, and does not
	 * block the loop either: it completes from the loop, later. */
	sub.no_fdsync = false;
	treq_prep(fx, &t[1], BKS_OP_FLUSH, 0, 0, 0, NULL);
	tq(fx, fx->fd, &t[1]);
	assert_false(t[1].done);
	run_until_idle(fx);
	assert_int_equal(t[1].result, 0);
	assert_int_equal(qstats(fx).submitted, 0);
	assert_int_equal(qstats(fx).completed, 2);
	assert_int_equal(qstats(fx).errors, 0);
}

static void test_bad_op(void **state)
{
	struct fx *fx = *state;
	struct treq t;

	new_queue(fx, 4);
	treq_prep(fx, &t, BKS_OP_DISCARD, 0, 0, BLK, NULL);
	assert_int_equal(bks_aioq_queue(fx->q, fx->fd, &t.req), -EINVAL);
	assert_int_equal(qstats(fx).requests, 0);
}

static void test_new_errors(void **state)
{
	struct fx *fx = *state;
	struct bks_error err = {0};
	int dummy;
	struct bks_aioq *q = (struct bks_aioq *)&dummy; /* must be reset */

	assert_int_equal(
	    bks_aioq_new(&q, fx->loop, 0, fx->engine, fx->off, &err), -EINVAL);
	assert_null(q);
	assert_non_null(strstr(err.msg, "depth"));
	q = (struct bks_aioq *)&dummy;
	assert_int_equal(bks_aioq_new(&q, fx->loop, 4, fx->engine, NULL, &err),
			 -EINVAL);
	assert_null(q);
	assert_non_null(strstr(err.msg, "offload"));
	q = (struct bks_aioq *)&dummy;
	assert_int_equal(bks_offload_new(&fx->off, fx->loop, 1, 4, &err), 0);
	assert_int_equal(
	    bks_aioq_new(&q, fx->loop, 4, (enum bks_io_engine)7, fx->off, &err),
	    -EINVAL);
	assert_null(q);
	assert_non_null(strstr(err.msg, "engine"));
}

/* ---- the aio: driver in a chain --------------------------------------------
 */

static void test_chain_rw(void **state)
{
	struct fx *fx = *state;
	unsigned char *buf = unit_alloc_aligned(256 * KiB + BLK);
	const struct bks_info *info;
	struct bks_layer_stats ls;

	assert_non_null(buf);
	assert_string_equal(bks_driver_aio.name, "aio");
	open_chain(fx, false);
	info = bks_chain_info(fx->chain);
	assert_int_equal(info->size, IMAGE_SIZE);
	assert_true(info->block_size >= 512);
	assert_int_equal(info->block_size & (info->block_size - 1), 0);
	assert_true(info->can_fua);
	assert_true(info->zero_no_hole);
	assert_false(info->read_only);

	unit_fill(buf, 256 * KiB, MiB, SEED);
	assert_int_equal(chain_do(fx, BKS_OP_WRITE, 0, MiB, 256 * KiB, buf), 0);
	check_plain(fx, MiB, 256 * KiB, SEED);
	memset(buf, 0, 256 * KiB);
	assert_int_equal(chain_do(fx, BKS_OP_READ, 0, MiB, 256 * KiB, buf), 0);
	assert_int_equal(unit_check(buf, 256 * KiB, MiB, SEED), -1);

	/* O_DIRECT: a misaligned buffer is refused, not half-done. */
	assert_int_equal(chain_do(fx, BKS_OP_READ, 0, 0, 4 * KiB, buf + 1),
			 -EINVAL);
	/* The framework's bounds check. */
	assert_int_equal(chain_do(fx, BKS_OP_READ, 0, IMAGE_SIZE, 4 * KiB, buf),
			 -EINVAL);

	bks_layer_get_stats(bks_chain_layer(fx->chain, 0), &ls);
	assert_int_equal(ls.op[BKS_OP_WRITE].ops, 1);
	assert_int_equal(ls.op[BKS_OP_READ].ops, 3);
	assert_int_equal(ls.op[BKS_OP_READ].errors, 2);
	assert_int_equal(ls.in_flight, 0);
	free(buf);
}

static void test_chain_read_only(void **state)
{
	struct fx *fx = *state;
	unsigned char *buf = unit_alloc_aligned(BLK);

	assert_non_null(buf);
	open_chain(fx, true);
	assert_true(bks_chain_info(fx->chain)->read_only);
	assert_int_equal(chain_do(fx, BKS_OP_READ, 0, 0, BLK, buf), 0);
	assert_int_equal(chain_do(fx, BKS_OP_WRITE, 0, 0, BLK, buf), -EROFS);
	assert_int_equal(chain_do(fx, BKS_OP_FLUSH, 0, 0, 0, NULL), 0);
	free(buf);
}

static blkcnt_t blocks_of(const char *path)
{
	struct stat st;

	assert_int_equal(stat(path, &st), 0);
	return st.st_blocks;
}

/* FUA write, flush, discard, write_zeroes with and without NO_HOLE. */
static void test_chain_fua_flush_discard_zeroes(void **state)
{
	struct fx *fx = *state;
	const uint64_t part = 256 * KiB;
	unsigned char *buf = unit_alloc_aligned(MiB);
	blkcnt_t full, after_discard, after_punch, after_zero;

	assert_non_null(buf);
	open_chain(fx, false);

	/* FUA writes of the first MiB: durable when they complete. */
	unit_fill(buf, MiB, 0, SEED);
	for (uint64_t off = 0; off < MiB; off += 64 * KiB)
		assert_int_equal(chain_do(fx, BKS_OP_WRITE, BKS_REQ_FUA, off,
					  64 * KiB, buf + off),
				 0);
	assert_int_equal(chain_do(fx, BKS_OP_FLUSH, 0, 0, 0, NULL), 0);
	check_plain(fx, 0, MiB, SEED);
	full = blocks_of(fx->path);
	assert_true(full >= (blkcnt_t)(MiB / 512));

	/* Discard 256K..512K: a hole, which reads as zeroes. */
	assert_int_equal(chain_do(fx, BKS_OP_DISCARD, 0, part, part, NULL), 0);
	after_discard = blocks_of(fx->path);
	assert_int_equal(after_discard, full - (blkcnt_t)(part / 512));
	assert_int_equal(lseek(fx->plain, (off_t)part, SEEK_HOLE), (off_t)part);

	/* write_zeroes 512K..768K, holes allowed: punched. */
	assert_int_equal(
	    chain_do(fx, BKS_OP_WRITE_ZEROES, 0, 2 * part, part, NULL), 0);
	after_punch = blocks_of(fx->path);
	assert_int_equal(after_punch, after_discard - (blkcnt_t)(part / 512));

	/* write_zeroes 768K..1M, NO_HOLE + FUA: zeroed, still allocated. */
	assert_int_equal(chain_do(fx, BKS_OP_WRITE_ZEROES,
				  BKS_REQ_NO_HOLE | BKS_REQ_FUA, 3 * part, part,
				  NULL),
			 0);
	after_zero = blocks_of(fx->path);
	assert_int_equal(after_zero, after_punch);

	memset(buf, 0xa5, MiB);
	assert_int_equal(chain_do(fx, BKS_OP_READ, 0, 0, MiB, buf), 0);
	assert_int_equal(unit_check(buf, part, 0, SEED), -1);
	assert_true(unit_is_zero(buf + part, 3 * part));
	free(buf);
}

/* The aio: layer's stats op, captured: the value of key, or ~0. */
struct stats_find {
	struct bks_stats_out out;
	const char *key;
	uint64_t v;
};

static void find_u64(struct bks_stats_out *out, const char *key, uint64_t v)
{
	struct stats_find *f = (struct stats_find *)out;

	if (strcmp(key, f->key) == 0)
		f->v = v;
}

static void find_str(struct bks_stats_out *out, const char *key, const char *v)
{
	(void)out;
	(void)key;
	(void)v;
}

static void find_begin(struct bks_stats_out *out, const char *key)
{
	(void)out;
	(void)key;
}

static void find_end(struct bks_stats_out *out)
{
	(void)out;
}

static uint64_t aio_stat(struct fx *fx, const char *key)
{
	struct stats_find f = {.out = {.u64 = find_u64,
				       .str = find_str,
				       .begin = find_begin,
				       .end = find_end},
			       .key = key,
			       .v = ~0ull};

	bks_layer_emit_stats(bks_chain_find(fx->chain, "aio"), &f.out);
	return f.v;
}

/*
 * Discard and write_zeroes run on the layer's helper threads: they
 * complete from the loop, after the submission returned.  40 at once
 * are more than the layer's jobs: the rest wait their turn.
 */
static void test_chain_offloaded(void **state)
{
	struct fx *fx = *state;
	enum {
		N = 40
	};
	struct treq t[N];
	unsigned char *buf = unit_alloc_aligned(N * 2 * BLK);

	assert_non_null(buf);
	fill_plain(fx, 0, N * 2 * BLK, SEED);
	open_chain(fx, false);
	/* Offloading allocates nothing either: jobs are in the state. */
	allocs.calls = 0;
	allocs.on = true;
	for (int i = 0; i < N; i++) {
		uint64_t off = (uint64_t)i * 2 * BLK;

		treq_prep(fx, &t[i],
			  i % 2 ? BKS_OP_WRITE_ZEROES : BKS_OP_DISCARD,
			  i % 4 == 1 ? BKS_REQ_NO_HOLE | BKS_REQ_FUA : 0, off,
			  BLK, NULL);
		fx->outstanding++;
		assert_int_equal(bks_chain_submit(fx->chain, &t[i].req), 0);
		assert_false(t[i].done);
	}
	/* 16 jobs: the other 24 wait their turn. */
	assert_int_equal(aio_stat(fx, "offload_waiting"), N - 16);
	run_until_idle(fx);
	allocs.on = false;
	assert_int_equal(allocs.calls, 0);
	assert_int_equal(aio_stat(fx, "offloaded"), N);
	assert_int_equal(aio_stat(fx, "offload_waited"), N - 16);
	assert_int_equal(aio_stat(fx, "offload_waiting"), 0);
	assert_int_equal(chain_do(fx, BKS_OP_READ, 0, 0, N * 2 * BLK, buf), 0);
	for (int i = 0; i < N; i++) {
		uint64_t off = (uint64_t)i * 2 * BLK;

		assert_int_equal(t[i].result, 0);
		/* The range is zeroes, the block after it untouched. */
		assert_true(unit_is_zero(buf + off, BLK));
		assert_int_equal(
		    unit_check(buf + off + BLK, BLK, off + BLK, SEED), -1);
	}
	free(buf);
}

/* Block status on a file (lseek) runs on a helper thread too. */
static void test_chain_block_status_offloaded(void **state)
{
	struct fx *fx = *state;
	struct bks_extent ext[8];
	struct treq t;

	open_chain(fx, false);
	/* The image is all holes but for [1 MiB, 1 MiB + 64 KiB). */
	fill_plain(fx, MiB, 64 * KiB, SEED);
	treq_prep(fx, &t, BKS_OP_BLOCK_STATUS, 0, 0, 2 * MiB, NULL);
	t.req.extents = ext;
	t.req.extents_max = 8;
	fx->outstanding++;
	assert_int_equal(bks_chain_submit(fx->chain, &t.req), 0);
	assert_false(t.done);
	run_until_idle(fx);
	assert_int_equal(t.result, 0);
	assert_int_equal(t.req.nextents, 3);
	assert_int_equal(ext[0].length, MiB);
	assert_int_equal(ext[0].flags, BKS_EXTENT_HOLE | BKS_EXTENT_ZERO);
	assert_int_equal(ext[1].offset, MiB);
	assert_int_equal(ext[1].length, 64 * KiB);
	assert_int_equal(ext[1].flags, 0);
}

static void test_open_errors(void **state)
{
	struct fx *fx = *state;
	struct bks_error err = {0};
	struct bks_chain *c = NULL;
	char s[300];

	/* Missing file: the message names it. */
	snprintf(s, sizeof(s), "aio:%s.missing", fx->path);
	assert_int_equal(bks_chain_open(&c, s, fx->loop, false, &err), -ENOENT);
	assert_null(c);
	assert_non_null(strstr(err.msg, fx->path));
	assert_non_null(strstr(err.msg, ".missing"));

	/* A size O_DIRECT cannot reach the end of. */
	assert_int_equal(truncate(fx->path, 1000), 0);
	bks_error_clear(&err);
	assert_int_equal(
	    bks_chain_open(&c, fx->chain_str, fx->loop, false, &err), -EINVAL);
	assert_non_null(strstr(err.msg, fx->path));
	assert_non_null(strstr(err.msg, "multiple"));

	/* No path. */
	bks_error_clear(&err);
	assert_int_equal(bks_chain_open(&c, "aio:", fx->loop, false, &err),
			 -EINVAL);
	assert_non_null(strstr(err.msg, "usage"));

	/* Not a file or a device. */
	snprintf(s, sizeof(s), "aio:%s", "/dev/null");
	bks_error_clear(&err);
	assert_int_equal(bks_chain_open(&c, s, fx->loop, true, &err), -EINVAL);
	assert_non_null(strstr(err.msg, "/dev/null"));
}

/* ---- no allocation on the data path ----------------------------------------
 */

#define STRESS_POOL    64
#define STRESS_MAX_LEN (64 * KiB)

struct stress {
	struct fx *fx;
	struct bks_req_pool pool;
	unsigned char *bufs[STRESS_POOL];
	struct iovec iovs[STRESS_POOL][2];
	uint64_t rng;
	/* A contiguous run in progress: next offset, requests left, op. */
	uint64_t run_off;
	unsigned int run_left;
	enum bks_op run_op;
	unsigned long completed, errors, bad_data, bytes;
};

static uint64_t rnd(struct stress *s)
{
	/* xorshift64: deterministic, no libc state. */
	s->rng ^= s->rng << 13;
	s->rng ^= s->rng >> 7;
	s->rng ^= s->rng << 17;
	return s->rng;
}

static void stress_done(struct bks_req *req, int result)
{
	struct stress *s = req->opaque;
	unsigned int i = (unsigned int)(req - s->pool.reqs);

	/* Every write writes the image's pattern, so any read, however it
	 * races with writes, must see the pattern of its own offset. */
	if (result != 0)
		s->errors++;
	else if (req->op == BKS_OP_READ &&
		 unit_check(s->bufs[i], req->len, req->offset, SEED) != -1)
		s->bad_data++;
	s->completed++;
	s->bytes += req->len;
	s->fx->outstanding--;
	bks_req_put(&s->pool, req);
}

static void stress_submit_one(struct stress *s)
{
	struct bks_req *req = bks_req_get(&s->pool);
	unsigned int i = (unsigned int)(req - s->pool.reqs);
	uint64_t len = (1 + rnd(s) % (STRESS_MAX_LEN / BLK)) * BLK;
	uint64_t off;
	enum bks_op op;

	if (s->run_left == 0 && rnd(s) % 8 == 0) {
		s->run_left = 2 + (unsigned int)(rnd(s) % 15);
		s->run_off = (rnd(s) % (IMAGE_SIZE / BLK)) * BLK;
		s->run_op = rnd(s) % 2 ? BKS_OP_READ : BKS_OP_WRITE;
	}
	if (s->run_left && s->run_off + len <= IMAGE_SIZE) {
		off = s->run_off;
		op = s->run_op;
		s->run_off += len;
		s->run_left--;
	} else {
		s->run_left = 0;
		off = (rnd(s) % ((IMAGE_SIZE - len) / BLK + 1)) * BLK;
		op = rnd(s) % 2 ? BKS_OP_READ : BKS_OP_WRITE;
	}

	req->op = op;
	req->offset = off;
	req->len = len;
	req->done = stress_done;
	req->opaque = s;
	/* Sometimes two buffers, to exercise vectors. */
	s->iovs[i][0].iov_base = s->bufs[i];
	if (len > BLK && rnd(s) % 2) {
		s->iovs[i][0].iov_len = BLK;
		s->iovs[i][1].iov_base = s->bufs[i] + BLK;
		s->iovs[i][1].iov_len = len - BLK;
		req->iovcnt = 2;
	} else {
		s->iovs[i][0].iov_len = len;
		req->iovcnt = 1;
	}
	req->iov = s->iovs[i];
	if (op == BKS_OP_WRITE)
		unit_fill(s->bufs[i], len, off, SEED);
	s->fx->outstanding++;
	assert_int_equal(bks_chain_submit(s->fx->chain, req), 0);
}

/* Keep the pool busy until n requests have been submitted. */
static void stress_run(struct stress *s, unsigned long n)
{
	unsigned long submitted = 0;

	while (submitted < n) {
		while (submitted < n && s->pool.free) {
			stress_submit_one(s);
			submitted++;
		}
		assert_true(bks_loop_run_once(s->fx->loop, 1000) >= 0);
	}
	run_until_idle(s->fx);
}

static void test_no_alloc_data_path(void **state)
{
	struct fx *fx = *state;
	struct stress *s = calloc(1, sizeof(*s));
	struct bks_layer_stats ls;
	enum {
		N = 10000
	};
	uint64_t t0, ns;

	assert_non_null(s);
	s->fx = fx;
	s->rng = 0x2545f4914f6cdd1dull;
	fill_plain(fx, 0, IMAGE_SIZE, SEED);
	assert_int_equal(bks_req_pool_init(&s->pool, STRESS_POOL), 0);
	for (int i = 0; i < STRESS_POOL; i++) {
		s->bufs[i] = unit_alloc_aligned(STRESS_MAX_LEN);
		assert_non_null(s->bufs[i]);
	}
	open_chain(fx, false);

	stress_run(s, 500); /* warm-up */
	s->completed = s->errors = s->bad_data = s->bytes = 0;

	allocs.calls = 0;
	allocs.on = true;
	t0 = bks_now_ns();
	stress_run(s, N);
	ns = bks_now_ns() - t0;
	allocs.on = false;

	assert_int_equal(allocs.calls, 0);
	assert_int_equal(s->completed, N);
	assert_int_equal(s->errors, 0);
	assert_int_equal(s->bad_data, 0);
	bks_layer_get_stats(bks_chain_layer(fx->chain, 0), &ls);
	assert_int_equal(ls.op[BKS_OP_READ].ops + ls.op[BKS_OP_WRITE].ops,
			 N + 500);
	print_message("%d requests (%lu MiB) in %.3f s: %.0f req/s, "
		      "no allocation\n",
		      N, s->bytes / MiB, (double)ns / 1e9,
		      N / ((double)ns / 1e9));

	bks_chain_close(fx->chain);
	fx->chain = NULL;
	for (int i = 0; i < STRESS_POOL; i++)
		free(s->bufs[i]);
	bks_req_pool_free(&s->pool);
	free(s);
}

/* The same mix on the queue alone, for its merge and deferral counters. */
static void test_no_alloc_queue_direct(void **state)
{
	struct fx *fx = *state;
	enum {
		N = 10000,
		DEPTH = 16
	};
	struct treq *t = calloc(STRESS_POOL, sizeof(*t));
	unsigned char *buf = unit_alloc_aligned(STRESS_POOL * STRESS_MAX_LEN);
	struct bks_aioq_stats st;
	uint64_t rng = 88172645463325252ull;
	unsigned long done = 0, submitted = 0;
	int free_idx[STRESS_POOL], nfree = STRESS_POOL;
	uint64_t next_off = 0;

	assert_non_null(t);
	assert_non_null(buf);
	new_queue(fx, DEPTH);
	memset(buf, 0x5a, STRESS_POOL * STRESS_MAX_LEN);
	for (int i = 0; i < STRESS_POOL; i++)
		free_idx[i] = i;

	allocs.calls = 0;
	allocs.on = true;
	while (submitted < N || fx->outstanding) {
		/* A burst of writes; runs of contiguous ones merge. */
		while (submitted < N && nfree) {
			int i = free_idx[--nfree];
			uint64_t len;

			rng ^= rng << 13;
			rng ^= rng >> 7;
			rng ^= rng << 17;
			len = (1 + rng % 16) * BLK;
			if (rng % 4 == 0 || next_off + len > IMAGE_SIZE)
				next_off =
				    (rng >> 8) % (IMAGE_SIZE / 2 / BLK) * BLK;
			treq_prep(fx, &t[i],
				  (rng >> 5) % 2 ? BKS_OP_READ : BKS_OP_WRITE,
				  0, next_off, len,
				  buf + (size_t)i * STRESS_MAX_LEN);
			next_off += len;
			tq(fx, fx->fd, &t[i]);
			submitted++;
		}
		assert_true(bks_loop_run_once(fx->loop, 1000) >= 0);
		for (int i = 0; i < STRESS_POOL; i++) {
			if (t[i].done) {
				assert_int_equal(t[i].result, 0);
				t[i].done = false;
				t[i].result = 1;
				free_idx[nfree++] = i;
				done++;
			}
		}
	}
	allocs.on = false;
	assert_int_equal(allocs.calls, 0);
	assert_int_equal(done, N);
	st = qstats(fx);
	assert_int_equal(st.completed, N);
	assert_int_equal(st.errors, 0);
	assert_true(st.merged > 0);
	assert_true(st.deferred > 0);
	print_message(
	    "queue: %llu requests, %llu iocbs, %llu merged, "
	    "%llu deferred\n",
	    (unsigned long long)st.requests, (unsigned long long)st.submitted,
	    (unsigned long long)st.merged, (unsigned long long)st.deferred);
	free(buf);
	free(t);
}

/* A closed fd: the requests on it fail with -EBADF, on either engine. */
static void test_closed_fd(void **state)
{
	struct fx *fx = *state;
	struct treq t[3];
	unsigned char *buf = unit_alloc_aligned(4 * BLK);
	int bad;

	assert_non_null(buf);
	new_queue(fx, 4); /* its fds first: they would reuse the number */
	bad = dup(fx->fd);
	assert_true(bad >= 0);
	assert_int_equal(close(bad), 0); /* nothing reopens it meanwhile */
	unit_fill(buf, 4 * BLK, 0, SEED);
	treq_prep(fx, &t[0], BKS_OP_READ, 0, 0, BLK, buf);
	treq_prep(fx, &t[1], BKS_OP_WRITE, BKS_REQ_FUA, 0, BLK, buf);
	treq_prep(fx, &t[2], BKS_OP_FLUSH, 0, 0, 0, NULL);
	for (int i = 0; i < 3; i++)
		tq(fx, bad, &t[i]);
	run_until_idle(fx);
	for (int i = 0; i < 3; i++)
		assert_int_equal(t[i].result, -EBADF);
	assert_int_equal(qstats(fx).errors, 3);
	assert_int_equal(qstats(fx).in_flight, 0);
	free(buf);
}

/* FUA writes (RWF_DSYNC), merged, then a flush: data there, all 0. */
static void test_fua_merge_flush(void **state)
{
	struct fx *fx = *state;
	enum {
		N = 8
	};
	struct treq t[N + 1];
	unsigned char *buf = unit_alloc_aligned(N * BLK);

	assert_non_null(buf);
	new_queue(fx, 4);
	unit_fill(buf, N * BLK, 0, SEED);
	for (int i = 0; i < N; i++) {
		treq_prep(fx, &t[i], BKS_OP_WRITE, BKS_REQ_FUA,
			  (uint64_t)i * BLK, BLK, buf + i * BLK);
		tq(fx, fx->fd, &t[i]);
	}
	treq_prep(fx, &t[N], BKS_OP_FLUSH, 0, 0, 0, NULL);
	tq(fx, fx->fd, &t[N]);
	run_until_idle(fx);
	for (int i = 0; i <= N; i++)
		assert_int_equal(t[i].result, 0);
	assert_int_equal(qstats(fx).merged, N - 1);
	assert_int_equal(qstats(fx).submitted, 2);
	check_plain(fx, 0, N * BLK, SEED);
	free(buf);
}

/* AUTO takes io_uring here; the names and the parser. */
static void test_auto_is_uring(void **state)
{
	struct fx *fx = *state;
	struct bks_error err = {0};
	enum bks_io_engine e = BKS_IO_ENGINE_AUTO;

	assert_int_equal(bks_offload_new(&fx->off, fx->loop, 1, 4, &err), 0);
	assert_int_equal(bks_aioq_new(&fx->q, fx->loop, 4, BKS_IO_ENGINE_AUTO,
				      fx->off, &err),
			 0);
	assert_int_equal(bks_aioq_engine(fx->q), BKS_IO_ENGINE_URING);
	assert_int_equal(bks_io_engine_resolve(BKS_IO_ENGINE_AUTO),
			 BKS_IO_ENGINE_URING);
	assert_int_equal(bks_io_engine_resolve(BKS_IO_ENGINE_LIBAIO),
			 BKS_IO_ENGINE_LIBAIO);
	assert_string_equal(bks_io_engine_name(BKS_IO_ENGINE_URING),
			    "io_uring");
	assert_string_equal(bks_io_engine_name(BKS_IO_ENGINE_LIBAIO), "libaio");
	assert_int_equal(bks_io_engine_parse("libaio", &e, &err), 0);
	assert_int_equal(e, BKS_IO_ENGINE_LIBAIO);
	assert_int_equal(bks_io_engine_parse("io_uring", &e, &err), 0);
	assert_int_equal(e, BKS_IO_ENGINE_URING);
	assert_int_equal(bks_io_engine_parse("uring", &e, &err), -EINVAL);
	assert_non_null(strstr(err.msg, "'uring'"));
}

/*
 * A ring that cannot be set up (more entries than io_uring allows, 32768):
 * forced io_uring fails naming it; AUTO falls back to libaio (which may
 * be out of aio contexts for such a depth: then it says so).
 */
static void test_uring_setup_fails(void **state)
{
	struct fx *fx = *state;
	struct bks_error err = {0};
	struct bks_aioq *q;
	int rc;

	assert_int_equal(bks_offload_new(&fx->off, fx->loop, 1, 4, &err), 0);
	assert_int_equal(bks_aioq_new(&q, fx->loop, 40000, BKS_IO_ENGINE_URING,
				      fx->off, &err),
			 -EINVAL);
	assert_null(q);
	print_message("forced io_uring: %s\n", err.msg);
	assert_non_null(strstr(err.msg, "io_uring"));
	rc = bks_aioq_new(&q, fx->loop, 40000, BKS_IO_ENGINE_AUTO, fx->off,
			  &err);
	if (rc == 0) {
		assert_int_equal(bks_aioq_engine(q), BKS_IO_ENGINE_LIBAIO);
		bks_aioq_free(q);
	} else {
		print_message("auto: %s\n", err.msg);
		assert_non_null(strstr(err.msg, "libaio"));
	}
}

/* The tests run on both engines. */
#define BOTH(st)                                                               \
	cmocka_unit_test_prestate_setup_teardown(test_merge_contiguous, setup, \
						 teardown, st),                \
	    cmocka_unit_test_prestate_setup_teardown(test_merge_rules, setup,  \
						     teardown, st),            \
	    cmocka_unit_test_prestate_setup_teardown(test_defer_when_full,     \
						     setup, teardown, st),     \
	    cmocka_unit_test_prestate_setup_teardown(test_partial_is_eio,      \
						     setup, teardown, st),     \
	    cmocka_unit_test_prestate_setup_teardown(                          \
		test_submit_error_fails_its_requests, setup, teardown, st),    \
	    cmocka_unit_test_prestate_setup_teardown(test_closed_fd, setup,    \
						     teardown, st),            \
	    cmocka_unit_test_prestate_setup_teardown(test_fua_merge_flush,     \
						     setup, teardown, st),     \
	    cmocka_unit_test_prestate_setup_teardown(test_reentrant_queue,     \
						     setup, teardown, st),     \
	    cmocka_unit_test_prestate_setup_teardown(                          \
		test_free_from_completion, setup, teardown, st),               \
	    cmocka_unit_test_prestate_setup_teardown(test_flush_via_queue,     \
						     setup, teardown, st),     \
	    cmocka_unit_test_prestate_setup_teardown(test_submit_eagain,       \
						     setup, teardown, st),     \
	    cmocka_unit_test_prestate_setup_teardown(test_bad_op, setup,       \
						     teardown, st),            \
	    cmocka_unit_test_prestate_setup_teardown(test_new_errors, setup,   \
						     teardown, st),            \
	    cmocka_unit_test_prestate_setup_teardown(test_chain_rw, setup,     \
						     teardown, st),            \
	    cmocka_unit_test_prestate_setup_teardown(test_chain_read_only,     \
						     setup, teardown, st),     \
	    cmocka_unit_test_prestate_setup_teardown(                          \
		test_chain_fua_flush_discard_zeroes, setup, teardown, st),     \
	    cmocka_unit_test_prestate_setup_teardown(test_chain_offloaded,     \
						     setup, teardown, st),     \
	    cmocka_unit_test_prestate_setup_teardown(                          \
		test_chain_block_status_offloaded, setup, teardown, st),       \
	    cmocka_unit_test_prestate_setup_teardown(test_open_errors, setup,  \
						     teardown, st),            \
	    cmocka_unit_test_prestate_setup_teardown(test_no_alloc_data_path,  \
						     setup, teardown, st),     \
	    cmocka_unit_test_prestate_setup_teardown(                          \
		test_no_alloc_queue_direct, setup, teardown, st)

int main(void)
{
	static enum bks_io_engine libaio = BKS_IO_ENGINE_LIBAIO;
	static enum bks_io_engine uring = BKS_IO_ENGINE_URING;
	int failed = 0;

	sub.real = (int (*)(io_context_t, long, struct iocb **))dlsym(
	    RTLD_NEXT, "io_submit");
	sub.uring_real =
	    (int (*)(struct io_uring *))dlsym(RTLD_NEXT, "io_uring_submit");
	if (!sub.real || !sub.uring_real) {
		fprintf(stderr, "dlsym io_submit, io_uring_submit: %s\n",
			dlerror());
		return 1;
	}

	const struct CMUnitTest libaio_tests[] = {
	    BOTH(&libaio),
	    /* io_submit() semantics that io_uring does not have. */
	    cmocka_unit_test_prestate_setup_teardown(test_submit_short_take,
						     setup, teardown, &libaio),
	    cmocka_unit_test_prestate_setup_teardown(test_flush_fallback, setup,
						     teardown, &libaio),
	};
	const struct CMUnitTest uring_tests[] = {
	    BOTH(&uring),
	    cmocka_unit_test_prestate_setup_teardown(test_auto_is_uring, setup,
						     teardown, &uring),
	    cmocka_unit_test_prestate_setup_teardown(test_uring_setup_fails,
						     setup, teardown, &uring),
	};

	failed += cmocka_run_group_tests_name("aioq-libaio", libaio_tests, NULL,
					      NULL);
	failed += cmocka_run_group_tests_name("aioq-io_uring", uring_tests,
					      NULL, NULL);
	return failed;
}
