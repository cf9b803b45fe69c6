/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The end-to-end model test: "log:|aio:FILE" on a 64 MiB file, driven
 * with thousands of random reads and writes (4 KiB to 1 MiB, 4 KiB
 * aligned, some split over several buffers, some FUA, with the odd flush
 * and write_zeroes) with up to 32 requests in flight, against an
 * in-memory model of the image.
 *
 *   - every read is checked byte for byte against the model.  To keep
 *     the model well defined, a read never overlaps a write in flight, and
 *     a write never overlaps any request in flight;
 *   - at the end the whole image is read back and compared;
 *   - the log: bitmap must equal the set of blocks the test wrote.
 *
 * Environment: BKS_VERIFY_OPS (requests, default 4000; make check uses
 * fewer under valgrind), BKS_VERIFY_SEED (default fixed; printed),
 * BKS_VERIFY_SINK (the sink driver, default aio; "sync" runs the same
 * test on sync:), BKS_TEST_TMPDIR (where the file goes, default /var/tmp:
 * O_DIRECT needs a disk file system).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "blkstack/chain.h"
#include "blkstack/log.h"
#include "unit-util.h"

#define IMG_SIZE     (64ull << 20)
#define PAGE	     4096u
#define MAX_LEN	     (1u << 20)
#define DEPTH	     32u
#define MAX_IOV	     4
#define DEFAULT_OPS  4000u
#define DEFAULT_SEED 0xb10c57acull
/* Give up when nothing completes for this long. */
#define STALL_NS (30ull * 1000000000)

struct verify;

struct slot {
	struct verify *v;
	bool busy;
	enum bks_op op;
	uint64_t offset, len;
	unsigned char *buf; /* MAX_LEN bytes, page aligned */
	struct iovec iov[MAX_IOV];
};

/* The next request of the sequence, drawn but not started. */
struct next_req {
	bool ready;
	enum bks_op op;
	uint32_t flags;
	uint64_t offset, len;
};

struct verify {
	struct bks_loop *loop;
	struct bks_chain *chain;
	struct bks_req_pool pool;
	struct slot slots[DEPTH];
	unsigned int in_flight, max_in_flight;
	unsigned char *model;
	bool *written; /* per log block: touched by a write */
	bool *allowed; /* per log block: writes may go there */
	uint64_t log_block, nblocks;
	uint64_t rng;
	uint64_t last_end; /* of the last write: to make neighbours */
	struct next_req next;
	uint64_t completed; /* requests */
	uint64_t verified;  /* bytes read and checked */
	uint64_t counts[BKS_OP_COUNT];
	uint64_t failures;
	char first_failure[256];
};

static uint64_t rnd(uint64_t *s)
{
	*s ^= *s >> 12;
	*s ^= *s << 25;
	*s ^= *s >> 27;
	return *s * 0x2545f4914f6cdd1dull;
}

static uint64_t rnd_range(uint64_t *s, uint64_t lo, uint64_t hi)
{
	return lo + rnd(s) % (hi - lo + 1);
}

static uint64_t env_u64(const char *name, uint64_t def)
{
	const char *s = getenv(name);
	char *end;
	unsigned long long v;

	if (!s || !*s)
		return def;
	errno = 0;
	v = strtoull(s, &end, 0);
	if (errno || *end)
		fail_msg("%s='%s' is not a number", name, s);
	return v;
}

/* Record a failure seen in a completion (cmocka cannot fail there). */
static void failure(struct verify *v, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void failure(struct verify *v, const char *fmt, ...)
{
	va_list ap;

	if (v->failures++)
		return;
	va_start(ap, fmt);
	vsnprintf(v->first_failure, sizeof(v->first_failure), fmt, ap);
	va_end(ap);
}

static bool overlaps(uint64_t a, uint64_t alen, uint64_t b, uint64_t blen)
{
	return a < b + blen && b < a + alen;
}

/* May a request of op on [offset, offset + len) start now? */
static bool may_start(const struct verify *v, enum bks_op op, uint64_t offset,
		      uint64_t len)
{
	bool writing = op != BKS_OP_READ;

	for (unsigned int i = 0; i < DEPTH; i++) {
		const struct slot *s = &v->slots[i];

		if (!s->busy || s->op == BKS_OP_FLUSH)
			continue;
		if ((writing || s->op != BKS_OP_READ) &&
		    overlaps(offset, len, s->offset, s->len))
			return false;
	}
	return true;
}

static void slot_done(struct bks_req *req, int result)
{
	struct slot *s = req->opaque;
	struct verify *v = s->v;

	if (result != 0) {
		failure(v, "%s %" PRIu64 "+%" PRIu64 ": %s", bks_op_name(s->op),
			s->offset, s->len, strerror(-result));
	} else if (s->op == BKS_OP_WRITE) {
		memcpy(v->model + s->offset, s->buf, s->len);
	} else if (s->op == BKS_OP_WRITE_ZEROES) {
		memset(v->model + s->offset, 0, s->len);
	} else if (s->op == BKS_OP_READ) {
		const unsigned char *want = v->model + s->offset;

		if (memcmp(s->buf, want, s->len) != 0) {
			uint64_t i = 0;

			while (s->buf[i] == want[i])
				i++;
			failure(v,
				"read %" PRIu64 "+%" PRIu64 ": byte %" PRIu64
				" is 0x%02x, model 0x%02x",
				s->offset, s->len, s->offset + i, s->buf[i],
				want[i]);
		}
		v->verified += s->len;
	}
	v->completed++;
	s->busy = false;
	v->in_flight--;
	bks_req_put(&v->pool, req);
}

/* Start op on [offset, offset + len) in a free slot. */
static void start(struct verify *v, enum bks_op op, uint32_t flags,
		  uint64_t offset, uint64_t len, uint64_t tag)
{
	struct slot *s = NULL;
	struct bks_req *req;

	for (unsigned int i = 0; i < DEPTH && !s; i++)
		if (!v->slots[i].busy)
			s = &v->slots[i];
	assert_non_null(s);
	req = bks_req_get(&v->pool);
	assert_non_null(req);
	s->busy = true;
	s->op = op;
	s->offset = offset;
	s->len = len;
	req->op = op;
	req->flags = flags;
	req->offset = offset;
	req->len = len;
	req->done = slot_done;
	req->opaque = s;
	if (op == BKS_OP_READ || op == BKS_OP_WRITE) {
		/* Split at page boundaries into up to MAX_IOV buffers. */
		uint64_t pages = len / PAGE, at = 0;
		int n = (int)rnd_range(&v->rng, 1,
				       pages < MAX_IOV ? pages : MAX_IOV);

		for (int i = 0; i < n; i++) {
			uint64_t take =
			    i == n - 1
				? len - at
				: PAGE * rnd_range(&v->rng, 1,
						   (len - at) / PAGE -
						       (uint64_t)(n - 1 - i));

			s->iov[i].iov_base = s->buf + at;
			s->iov[i].iov_len = take;
			at += take;
		}
		req->iov = s->iov;
		req->iovcnt = n;
	}
	if (op == BKS_OP_WRITE)
		unit_fill(s->buf, len, offset, tag);
	else if (op == BKS_OP_READ)
		memset(s->buf, 0xee, len); /* stale data must not pass */
	if (op == BKS_OP_WRITE || op == BKS_OP_WRITE_ZEROES)
		for (uint64_t b = offset / v->log_block;
		     b <= (offset + len - 1) / v->log_block; b++)
			v->written[b] = true;
	v->counts[op]++;
	if (++v->in_flight > v->max_in_flight)
		v->max_in_flight = v->in_flight;
	assert_int_equal(bks_chain_submit(v->chain, req), 0);
}

/* A random length: 4 KiB to 1 MiB, small ones as likely as large ones. */
static uint64_t random_len(struct verify *v)
{
	unsigned int e = (unsigned int)rnd_range(&v->rng, 0, 8);
	uint64_t lo = 1ull << e, hi = (2ull << e) - 1;

	if (hi > MAX_LEN / PAGE)
		hi = MAX_LEN / PAGE;
	return PAGE * rnd_range(&v->rng, lo, hi);
}

/*
 * Writes stay inside runs of allowed blocks, so that the log has clean
 * blocks to get wrong, next to dirty ones.  Shortens *len to the run.
 */
static bool fit_write(const struct verify *v, uint64_t offset, uint64_t *len)
{
	uint64_t b = offset / v->log_block, e = b;

	while (e < v->nblocks && v->allowed[e])
		e++;
	if (e == b)
		return false;
	if (offset + *len > e * v->log_block)
		*len = e * v->log_block - offset;
	return true;
}

/* Alternate runs of 1-32 allowed blocks and 1-8 forbidden ones. */
static void make_allowed(struct verify *v)
{
	uint64_t b = 0;

	while (b < v->nblocks) {
		uint64_t on = rnd_range(&v->rng, 1, 32);
		uint64_t off = rnd_range(&v->rng, 1, 8);

		for (; on && b < v->nblocks; on--)
			v->allowed[b++] = true;
		b += off;
	}
}

/*
 * The next request of the sequence, drawn from the seed alone: it waits
 * for the requests it conflicts with rather than being redrawn, so the
 * sequence does not depend on completion timing and a seed reproduces
 * it exactly.
 */
static void draw_next(struct verify *v, bool can_fua)
{
	struct next_req *x = &v->next;

	for (;;) {
		unsigned int pick = (unsigned int)rnd_range(&v->rng, 0, 99);

		x->len = random_len(v);
		x->flags = 0;
		if (pick < 2) {
			x->op = BKS_OP_FLUSH;
			x->offset = x->len = 0;
			break;
		}
		x->op = pick < 50   ? BKS_OP_READ
			: pick < 53 ? BKS_OP_WRITE_ZEROES
				    : BKS_OP_WRITE;
		if (x->op == BKS_OP_WRITE && can_fua && pick >= 92)
			x->flags = BKS_REQ_FUA;
		if (x->op == BKS_OP_WRITE_ZEROES && (pick & 1))
			x->flags = BKS_REQ_NO_HOLE;
		/* Some writes follow the last one: adjacent requests in
		 * one batch are what the queue merges. */
		if (x->op == BKS_OP_WRITE && pick % 4 == 0 &&
		    v->last_end + x->len <= IMG_SIZE)
			x->offset = v->last_end;
		else
			x->offset =
			    PAGE *
			    rnd_range(&v->rng, 0, (IMG_SIZE - x->len) / PAGE);
		if (x->op == BKS_OP_READ || fit_write(v, x->offset, &x->len))
			break;
	}
	if (x->op == BKS_OP_WRITE)
		v->last_end = x->offset + x->len;
	x->ready = true;
}

/* Start request number n of the sequence; false if it must wait. */
static bool start_next(struct verify *v, uint64_t n, bool can_fua)
{
	struct next_req *x = &v->next;

	if (!x->ready)
		draw_next(v, can_fua);
	if (!may_start(v, x->op, x->offset, x->len))
		return false;
	x->ready = false;
	start(v, x->op, x->flags, x->offset, x->len, n);
	return true;
}

/* Run the loop once; fail if nothing has completed for too long. */
static void run_loop(struct verify *v, uint64_t *progress_ns,
		     uint64_t *last_completed)
{
	int rc = bks_loop_run_once(v->loop, 1000);

	if (rc < 0)
		fail_msg("bks_loop_run_once: %s", strerror(-rc));
	if (v->completed != *last_completed) {
		*last_completed = v->completed;
		*progress_ns = bks_now_ns();
	} else if (bks_now_ns() - *progress_ns > STALL_NS) {
		fail_msg("no completion for 30 s (%u in flight)", v->in_flight);
	}
}

static void check_log(struct verify *v)
{
	struct bks_layer *log = bks_chain_find(v->chain, "log");
	bool *seen = calloc(v->nblocks, sizeof(*seen));
	struct bks_extent ext[64];
	uint64_t start = 0, want = 0;
	size_t n;

	assert_non_null(log);
	assert_non_null(seen);
	assert_int_equal(bks_log_block_size(log), v->log_block);
	do {
		assert_int_equal(bks_log_dirty(log, start, ext, 64, &n), 0);
		for (size_t i = 0; i < n; i++) {
			/* Whole blocks: the image is a multiple of them. */
			assert_int_equal(ext[i].offset % v->log_block, 0);
			assert_int_equal(ext[i].length % v->log_block, 0);
			for (uint64_t b = ext[i].offset / v->log_block;
			     b < (ext[i].offset + ext[i].length) / v->log_block;
			     b++)
				seen[b] = true;
			start = ext[i].offset + ext[i].length;
		}
	} while (n == 64);
	for (uint64_t b = 0; b < v->nblocks; b++) {
		if (seen[b] != v->written[b])
			fail_msg("log: block %" PRIu64 " (offset %" PRIu64
				 ") is %s, but the test %s it",
				 b, b * v->log_block,
				 seen[b] ? "dirty" : "clean",
				 v->written[b] ? "wrote" : "never wrote");
		want += v->written[b];
	}
	assert_int_equal(bks_log_dirty_bytes(log), want * v->log_block);
	print_message("# log: %" PRIu64 " of %" PRIu64 " blocks dirty\n", want,
		      v->nblocks);
	free(seen);
}

static void test_verify(void **state)
{
	const char *sink = getenv("BKS_VERIFY_SINK");
	uint64_t nops = env_u64("BKS_VERIFY_OPS", DEFAULT_OPS);
	uint64_t seed = env_u64("BKS_VERIFY_SEED", DEFAULT_SEED);
	uint64_t progress_ns, last_completed = 0;
	struct bks_error err = {0};
	char path[256], spec[300];
	struct verify *v;
	bool can_fua;
	uint64_t n;
	int fd, rc;
	(void)state;

	if (!sink || !*sink)
		sink = "aio";
	if (!bks_driver_lookup(sink, strlen(sink)))
		fail_msg("driver %s: is not built", sink);
	rc = unit_tmpfile(path, sizeof(path), IMG_SIZE);
	if (rc < 0)
		fail_msg("temporary file: %s", strerror(-rc));
	/* O_DIRECT (aio:) needs a file system that has it. */
	fd = open(path, O_RDWR | O_DIRECT);
	if (fd < 0 && errno == EINVAL && strcmp(sink, "aio") == 0) {
		print_message("# %s: no O_DIRECT here; set BKS_TEST_TMPDIR to "
			      "a disk file system\n",
			      path);
		unlink(path);
		skip();
	}
	if (fd >= 0)
		close(fd);

	v = calloc(1, sizeof(*v));
	assert_non_null(v);
	v->rng = seed ? seed : 1;
	v->model = calloc(1, IMG_SIZE);
	assert_non_null(v->model);
	for (unsigned int i = 0; i < DEPTH; i++) {
		v->slots[i].v = v;
		v->slots[i].buf = unit_alloc_aligned(MAX_LEN);
		assert_non_null(v->slots[i].buf);
	}
	snprintf(spec, sizeof(spec), "log:|%s:%s", sink, path);
	print_message("# chain %s, seed 0x%" PRIx64 ", %" PRIu64
		      " requests (BKS_VERIFY_SEED, BKS_VERIFY_OPS)\n",
		      spec, seed, nops);
	assert_int_equal(bks_loop_new(&v->loop, &err), 0);
	rc = bks_chain_open(&v->chain, spec, v->loop, false, &err);
	if (rc < 0)
		fail_msg("open %s: %s", spec, err.msg);
	assert_int_equal(bks_chain_info(v->chain)->size, IMG_SIZE);
	assert_true(bks_chain_info(v->chain)->block_size <= PAGE);
	can_fua = bks_chain_info(v->chain)->can_fua;
	assert_int_equal(bks_req_pool_init(&v->pool, DEPTH), 0);
	v->log_block =
	    (uint64_t)bks_log_block_size(bks_chain_find(v->chain, "log"));
	v->nblocks = IMG_SIZE / v->log_block;
	v->written = calloc(v->nblocks, sizeof(*v->written));
	v->allowed = calloc(v->nblocks, sizeof(*v->allowed));
	assert_non_null(v->written);
	assert_non_null(v->allowed);
	make_allowed(v);

	/* The random requests. */
	progress_ns = bks_now_ns();
	for (n = 0; n < nops || v->in_flight;) {
		while (n < nops && v->in_flight < DEPTH &&
		       start_next(v, n + 1, can_fua))
			n++;
		if (v->in_flight)
			run_loop(v, &progress_ns, &last_completed);
	}
	if (v->failures)
		fail_msg("%" PRIu64 " failures; the first: %s", v->failures,
			 v->first_failure);
	assert_int_equal(v->completed, nops);
	print_message("# %" PRIu64 " reads, %" PRIu64 " writes, %" PRIu64
		      " write_zeroes, %" PRIu64 " flushes; %" PRIu64
		      " MiB verified; up to %u in flight\n",
		      v->counts[BKS_OP_READ], v->counts[BKS_OP_WRITE],
		      v->counts[BKS_OP_WRITE_ZEROES], v->counts[BKS_OP_FLUSH],
		      v->verified >> 20, v->max_in_flight);

	/* The whole image, read back against the model, DEPTH at a time. */
	v->verified = 0;
	for (uint64_t off = 0; off < IMG_SIZE || v->in_flight;) {
		while (off < IMG_SIZE && v->in_flight < DEPTH) {
			start(v, BKS_OP_READ, 0, off, MAX_LEN, 0);
			off += MAX_LEN;
		}
		if (v->in_flight)
			run_loop(v, &progress_ns, &last_completed);
	}
	if (v->failures)
		fail_msg("final read-back: %" PRIu64 " failures; the first: %s",
			 v->failures, v->first_failure);
	assert_int_equal(v->verified, IMG_SIZE);

	check_log(v);

	assert_int_equal(bks_chain_in_flight(v->chain), 0);
	bks_chain_close(v->chain);
	bks_req_pool_free(&v->pool);
	bks_loop_free(v->loop);
	/* And the file itself holds the model. */
	fd = open(path, O_RDONLY);
	assert_true(fd >= 0);
	for (uint64_t off = 0; off < IMG_SIZE; off += MAX_LEN) {
		assert_int_equal(
		    pread(fd, v->slots[0].buf, MAX_LEN, (off_t)off), MAX_LEN);
		if (memcmp(v->slots[0].buf, v->model + off, MAX_LEN) != 0)
			fail_msg(
			    "the file differs from the model near %" PRIu64,
			    off);
	}
	close(fd);
	unlink(path);
	for (unsigned int i = 0; i < DEPTH; i++)
		free(v->slots[i].buf);
	free(v->written);
	free(v->allowed);
	free(v->model);
	free(v);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_verify),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
