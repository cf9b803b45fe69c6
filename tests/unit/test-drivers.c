/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Unit tests: the sync:, log: and error: drivers.
 *
 *   - ram:, sync: and aio: (when built) give identical results for the
 *     same deterministic pattern of requests;
 *   - log: reports exactly the blocks written, clears, and checks its
 *     options;
 *   - error: fails what it is told to, as often as it is told to, and
 *     works with the chain's retry policy;
 *   - sync: on tmpfs (no O_DIRECT there), and on a loop device when the
 *     machine lets us make one.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/loop.h>
#include <linux/magic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <unistd.h>

#include "blkstack/chain.h"
#include "blkstack/errinj.h"
#include "blkstack/log.h"
#include "unit-util.h"

/* ---- helpers ---------------------------------------------------------------
 */

/* xorshift64*: the tests' own deterministic generator. */
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

static void *xalloc(size_t size)
{
	void *p = NULL;

	assert_int_equal(posix_memalign(&p, 4096, size ? size : 4096), 0);
	return p;
}

struct io_wait {
	bool done;
	int result;
};

static void io_done(struct bks_req *req, int result)
{
	struct io_wait *w = req->opaque;

	w->done = true;
	w->result = result;
}

/* One request through chain; runs loop until it completes. */
static int do_io(struct bks_loop *loop, struct bks_chain *chain, enum bks_op op,
		 uint32_t flags, uint64_t offset, uint64_t len, void *buf)
{
	struct iovec iov = {.iov_base = buf, .iov_len = len};
	struct io_wait w = {0};
	struct bks_req req;
	uint64_t deadline = bks_now_ns() + 30ull * 1000000000;

	memset(&req, 0, sizeof(req));
	req.op = op;
	req.flags = flags;
	req.offset = offset;
	req.len = len;
	if (op == BKS_OP_READ || op == BKS_OP_WRITE) {
		req.iov = &iov;
		req.iovcnt = 1;
	}
	req.done = io_done;
	req.opaque = &w;
	assert_int_equal(bks_chain_submit(chain, &req), 0);
	while (!w.done) {
		assert_true(bks_loop_run_once(loop, 100) >= 0);
		if (bks_now_ns() > deadline)
			fail_msg("%s at %llu+%llu did not complete",
				 bks_op_name(op), (unsigned long long)offset,
				 (unsigned long long)len);
	}
	return w.result;
}

static struct bks_chain *open_chain(struct bks_loop *loop, const char *s)
{
	struct bks_error err = {0};
	struct bks_chain *chain = NULL;
	int rc;

	rc = bks_chain_open(&chain, s, loop, false, &err);
	if (rc != 0)
		fail_msg("open '%s': %d: %s", s, rc, err.msg);
	return chain;
}

/* Open s, which must fail with rc and a message holding every word. */
static void open_fails(struct bks_loop *loop, const char *s, int rc,
		       const char *word1, const char *word2)
{
	struct bks_error err = {0};
	struct bks_chain *chain = NULL;
	int got;

	got = bks_chain_open(&chain, s, loop, false, &err);
	if (got != rc)
		fail_msg("open '%s': %d, expected %d (%s)", s, got, rc,
			 err.msg);
	assert_null(chain);
	if ((word1 && !strstr(err.msg, word1)) ||
	    (word2 && !strstr(err.msg, word2)))
		fail_msg("open '%s': message '%s' lacks '%s'/'%s'", s, err.msg,
			 word1, word2 ? word2 : "");
}

/* A zeroed file of size bytes in dir; its path in path. */
static void make_file(const char *dir, uint64_t size, char *path,
		      size_t pathsize)
{
	int fd;

	snprintf(path, pathsize, "%s/test-drivers.XXXXXX", dir);
	fd = mkstemp(path);
	if (fd < 0)
		fail_msg("mkstemp %s: %s", path, strerror(errno));
	assert_int_equal(ftruncate(fd, (off_t)size), 0);
	close(fd);
}

/* A zeroed file on a disk file system (O_DIRECT works there). */
static void disk_file(uint64_t size, char *path, size_t pathsize)
{
	int rc = unit_tmpfile(path, pathsize, size);

	if (rc < 0)
		fail_msg("temporary file: %s", strerror(-rc));
}

struct rig {
	struct bks_loop *loop;
	struct bks_chain *chain;
};

static void rig_open(struct rig *r, const char *s)
{
	struct bks_error err = {0};

	assert_int_equal(bks_loop_new(&r->loop, &err), 0);
	r->chain = open_chain(r->loop, s);
}

static void rig_close(struct rig *r)
{
	if (r->chain) {
		assert_int_equal(bks_chain_in_flight(r->chain), 0);
		bks_chain_close(r->chain);
	}
	bks_loop_free(r->loop);
	memset(r, 0, sizeof(*r));
}

static int rig_io(struct rig *r, enum bks_op op, uint32_t flags,
		  uint64_t offset, uint64_t len, void *buf)
{
	return do_io(r->loop, r->chain, op, flags, offset, len, buf);
}

/* ---- 1. identical results from ram:, sync: and aio: ------------------------
 */

#define SAME_SIZE (4u << 20)
#define SAME_MAX  (256u * 1024)
#define SAME_OPS  600
#define SAME_SEED 0x5eedf00dull

struct backend {
	char spec[256];
	char path[200]; /* "" for ram: */
	struct rig rig;
	unsigned char *buf;
};

static void add_file_backend(struct backend *b, const char *driver)
{
	disk_file(SAME_SIZE, b->path, sizeof(b->path));
	snprintf(b->spec, sizeof(b->spec), "%s:%s", driver, b->path);
}

static void test_same_results(void **state)
{
	struct backend be[3];
	unsigned int nbe = 0, i;
	unsigned char *model, *data;
	uint32_t ops = ~0u, align = 512;
	bool fua = true;
	uint64_t seed = SAME_SEED;
	unsigned int counts[BKS_OP_COUNT] = {0};
	(void)state;

	memset(be, 0, sizeof(be));
	snprintf(be[0].spec, sizeof(be[0].spec), "ram:%u", SAME_SIZE);
	add_file_backend(&be[1], "sync");
	nbe = 2;
	if (bks_driver_lookup("aio", 3))
		add_file_backend(&be[nbe++], "aio");
	else
		print_message("# aio: not built; comparing ram: and sync:\n");
	for (i = 0; i < nbe; i++) {
		const struct bks_info *info;

		rig_open(&be[i].rig, be[i].spec);
		info = bks_chain_info(be[i].rig.chain);
		assert_int_equal(info->size, SAME_SIZE);
		ops &= info->ops;
		fua = fua && info->can_fua;
		if (info->block_size > align)
			align = info->block_size;
		be[i].buf = xalloc(SAME_MAX);
	}
	/* The pattern needs these; discard is left out (undefined data). */
	assert_true(ops & BKS_OPF(BKS_OP_READ));
	assert_true(ops & BKS_OPF(BKS_OP_WRITE));
	model = calloc(1, SAME_SIZE);
	data = xalloc(SAME_MAX);
	assert_non_null(model);

	for (unsigned int n = 0; n < SAME_OPS; n++) {
		uint64_t len = rnd_range(&seed, 1, SAME_MAX / align) * align;
		uint64_t off =
		    rnd_range(&seed, 0, (SAME_SIZE - len) / align) * align;
		unsigned int pick = (unsigned int)rnd_range(&seed, 0, 99);
		enum bks_op op = BKS_OP_WRITE;
		uint32_t flags = 0;

		if (pick < 40)
			op = BKS_OP_READ;
		else if (pick < 50 && (ops & BKS_OPF(BKS_OP_WRITE_ZEROES)))
			op = BKS_OP_WRITE_ZEROES;
		else if (pick < 54 && (ops & BKS_OPF(BKS_OP_FLUSH)))
			op = BKS_OP_FLUSH;
		if (op == BKS_OP_WRITE && fua && pick >= 90)
			flags = BKS_REQ_FUA;
		if (op == BKS_OP_WRITE_ZEROES && (pick & 1))
			flags = BKS_REQ_NO_HOLE;
		if (op == BKS_OP_FLUSH)
			off = len = 0;
		counts[op]++;

		if (op == BKS_OP_WRITE)
			for (uint64_t j = 0; j < len; j += 8) {
				uint64_t v = rnd(&seed);

				memcpy(data + j, &v, 8);
			}
		for (i = 0; i < nbe; i++) {
			void *buf = op == BKS_OP_READ ? be[i].buf : data;
			int rc = rig_io(&be[i].rig, op, flags, off, len, buf);

			if (rc != 0)
				fail_msg(
				    "op %u: %s %llu+%llu on %s: %d", n,
				    bks_op_name(op), (unsigned long long)off,
				    (unsigned long long)len, be[i].spec, rc);
		}
		if (op == BKS_OP_WRITE)
			memcpy(model + off, data, len);
		else if (op == BKS_OP_WRITE_ZEROES)
			memset(model + off, 0, len);
		else if (op == BKS_OP_READ)
			for (i = 0; i < nbe; i++)
				if (memcmp(be[i].buf, model + off, len) != 0)
					fail_msg("op %u: read %llu+%llu on %s "
						 "differs from the model",
						 n, (unsigned long long)off,
						 (unsigned long long)len,
						 be[i].spec);
	}
	/* The pattern must have exercised what it claims to. */
	assert_true(counts[BKS_OP_READ] > SAME_OPS / 4);
	assert_true(counts[BKS_OP_WRITE] > SAME_OPS / 4);

	/* The final images, through each chain and then from the files. */
	for (i = 0; i < nbe; i++) {
		for (uint64_t off = 0; off < SAME_SIZE; off += SAME_MAX) {
			assert_int_equal(rig_io(&be[i].rig, BKS_OP_READ, 0, off,
						SAME_MAX, be[i].buf),
					 0);
			if (memcmp(be[i].buf, model + off, SAME_MAX) != 0)
				fail_msg("final image of %s differs at %llu",
					 be[i].spec, (unsigned long long)off);
		}
		rig_close(&be[i].rig);
		if (be[i].path[0]) {
			int fd = open(be[i].path, O_RDONLY);
			unsigned char *img = malloc(SAME_SIZE);

			assert_true(fd >= 0);
			assert_non_null(img);
			assert_int_equal(pread(fd, img, SAME_SIZE, 0),
					 SAME_SIZE);
			close(fd);
			if (memcmp(img, model, SAME_SIZE) != 0)
				fail_msg("file of %s differs from the model",
					 be[i].spec);
			free(img);
			unlink(be[i].path);
		}
		free(be[i].buf);
	}
	free(data);
	free(model);
}

/* ---- 2. log: ----------------------------------------------------------------
 */

#define K 1024ull
#define M (1024ull * 1024)

/* All the dirty extents of the log layer of r, walked max at a time. */
static size_t log_extents(struct rig *r, size_t max, struct bks_extent *out,
			  size_t outmax)
{
	struct bks_layer *log = bks_chain_find(r->chain, "log");
	struct bks_extent ext[8];
	uint64_t start = 0;
	size_t total = 0, n;

	assert_non_null(log);
	assert_true(max <= 8);
	do {
		assert_int_equal(bks_log_dirty(log, start, ext, max, &n), 0);
		assert_true(n <= max);
		for (size_t i = 0; i < n; i++) {
			assert_true(total < outmax);
			assert_true(ext[i].length > 0);
			out[total++] = ext[i];
		}
		if (n)
			start = ext[n - 1].offset + ext[n - 1].length;
	} while (n == max);
	return total;
}

static void expect_extents(struct rig *r, const struct bks_extent *want,
			   size_t nwant)
{
	struct bks_extent got[64];
	size_t max;

	/* Walking one at a time and eight at a time gives the same list. */
	for (max = 1; max <= 8; max += 7) {
		size_t n = log_extents(r, max, got, 64);

		for (size_t i = 0; i < n || i < nwant; i++) {
			if (i < n && i < nwant &&
			    got[i].offset == want[i].offset &&
			    got[i].length == want[i].length)
				continue;
			fail_msg(
			    "max %zu, extent %zu: got %llu+%llu, want "
			    "%llu+%llu (%zu got, %zu wanted)",
			    max, i,
			    i < n ? (unsigned long long)got[i].offset : 0,
			    i < n ? (unsigned long long)got[i].length : 0,
			    i < nwant ? (unsigned long long)want[i].offset : 0,
			    i < nwant ? (unsigned long long)want[i].length : 0,
			    n, nwant);
		}
	}
}

static void test_log_extents(void **state)
{
	struct bks_layer *log;
	struct bks_extent ext[4];
	unsigned char *buf = xalloc(192 * K);
	size_t n;
	struct rig r;
	const uint64_t B = 64 * K;
	(void)state;

	memset(buf, 0xab, 192 * K);
	rig_open(&r, "log:|ram:8M");
	log = bks_chain_find(r.chain, "log");
	assert_non_null(log);
	assert_int_equal(bks_log_block_size(log), BKS_LOG_BLOCK_DEFAULT);
	assert_int_equal(bks_log_dirty_bytes(log), 0);
	expect_extents(&r, NULL, 0);

	/* Block 0; blocks 0-1 across a boundary; block 3; block 4 (adjacent:
	 * merges with 3); an overlap adding nothing. */
	assert_int_equal(rig_io(&r, BKS_OP_WRITE, 0, 0, 512, buf), 0);
	assert_int_equal(rig_io(&r, BKS_OP_WRITE, 0, B - 512, 1024, buf), 0);
	assert_int_equal(rig_io(&r, BKS_OP_WRITE, 0, 3 * B, B, buf), 0);
	assert_int_equal(rig_io(&r, BKS_OP_WRITE, 0, 4 * B, B, buf), 0);
	assert_int_equal(rig_io(&r, BKS_OP_WRITE, 0, 200 * K, 100 * K, buf), 0);
	/* write_zeroes: block 16; discard: blocks 31-33. */
	assert_int_equal(
	    rig_io(&r, BKS_OP_WRITE_ZEROES, 0, 16 * B, 4 * K, NULL), 0);
	assert_int_equal(
	    rig_io(&r, BKS_OP_DISCARD, 0, 32 * B - 512, B + 1024, NULL), 0);
	/* Reads and flushes mark nothing. */
	assert_int_equal(rig_io(&r, BKS_OP_READ, 0, 64 * B, 192 * K, buf), 0);
	assert_int_equal(rig_io(&r, BKS_OP_FLUSH, 0, 0, 0, NULL), 0);
	/* The last block. */
	assert_int_equal(rig_io(&r, BKS_OP_WRITE, 0, 8 * M - 512, 512, buf), 0);
	{
		const struct bks_extent want[] = {
		    {0, 2 * B, 0, 0},	{3 * B, 2 * B, 0, 0},
		    {16 * B, B, 0, 0},	{31 * B, 3 * B, 0, 0},
		    {127 * B, B, 0, 0},
		};

		expect_extents(&r, want, 5);
	}
	assert_int_equal(bks_log_dirty_bytes(log), 9 * B);

	/* From the middle of an extent: clipped to start. */
	assert_int_equal(bks_log_dirty(log, B + 4 * K, ext, 2, &n), 0);
	assert_int_equal(n, 2);
	assert_int_equal(ext[0].offset, B + 4 * K);
	assert_int_equal(ext[0].length, B - 4 * K);
	assert_int_equal(ext[1].offset, 3 * B);
	/* At the end: nothing; beyond: an error. */
	assert_int_equal(bks_log_dirty(log, 8 * M, ext, 4, &n), 0);
	assert_int_equal(n, 0);
	assert_int_equal(bks_log_dirty(log, 8 * M + 512, ext, 4, &n), -EINVAL);

	/* Partial clears keep partially covered blocks. */
	assert_int_equal(bks_log_clear(log, 512, 2 * B - 512), 0);
	assert_int_equal(bks_log_clear(log, 3 * B - 4 * K, B + 8 * K), 0);
	assert_int_equal(bks_log_clear(log, 16 * B + 512, B), 0);
	{
		const struct bks_extent want[] = {
		    {0, B, 0, 0},	{4 * B, B, 0, 0},
		    {16 * B, B, 0, 0},	{31 * B, 3 * B, 0, 0},
		    {127 * B, B, 0, 0},
		};

		expect_extents(&r, want, 5);
	}
	assert_int_equal(bks_log_dirty_bytes(log), 7 * B);
	/* Exact clear of a run, then clear past the end. */
	assert_int_equal(bks_log_clear(log, 31 * B, 3 * B), 0);
	assert_int_equal(bks_log_clear(log, 127 * B, UINT64_MAX), 0);
	{
		const struct bks_extent want[] = {
		    {0, B, 0, 0},
		    {4 * B, B, 0, 0},
		    {16 * B, B, 0, 0},
		};

		expect_extents(&r, want, 3);
	}
	assert_int_equal(bks_log_clear(log, 8 * M + 512, 512), -EINVAL);
	/* Everything. */
	assert_int_equal(bks_log_clear(log, 0, UINT64_MAX), 0);
	expect_extents(&r, NULL, 0);
	assert_int_equal(bks_log_dirty_bytes(log), 0);
	rig_close(&r);
	free(buf);
}

static void test_log_block_option(void **state)
{
	struct bks_layer *log;
	unsigned char *buf = xalloc(64 * K);
	struct rig r;
	(void)state;

	memset(buf, 0x5a, 64 * K);
	/* 4K blocks. */
	rig_open(&r, "log:block=4K|ram:1M");
	log = bks_chain_find(r.chain, "log");
	assert_int_equal(bks_log_block_size(log), 4096);
	assert_int_equal(rig_io(&r, BKS_OP_WRITE, 0, 4 * K + 512, 8 * K, buf),
			 0);
	{
		const struct bks_extent want[] = {{4 * K, 12 * K, 0, 0}};

		expect_extents(&r, want, 1);
	}
	assert_int_equal(bks_log_dirty_bytes(log), 12 * K);
	rig_close(&r);

	/* A size that is not a multiple of the block: clipped. */
	rig_open(&r, "log:block=64K|ram:1056K");
	log = bks_chain_find(r.chain, "log");
	assert_int_equal(rig_io(&r, BKS_OP_WRITE, 0, 1056 * K - 512, 512, buf),
			 0);
	{
		const struct bks_extent want[] = {{1 * M, 32 * K, 0, 0}};

		expect_extents(&r, want, 1);
	}
	assert_int_equal(bks_log_dirty_bytes(log), 32 * K);
	/* A clear up to the end covers the partial block. */
	assert_int_equal(bks_log_clear(log, 1 * M, 32 * K), 0);
	expect_extents(&r, NULL, 0);
	rig_close(&r);

	/* The largest block, bigger than the image: one partial block. */
	rig_open(&r, "log:block=64M|ram:1M");
	log = bks_chain_find(r.chain, "log");
	assert_int_equal(bks_log_block_size(log), 64 * M);
	assert_int_equal(rig_io(&r, BKS_OP_WRITE, 0, 512 * K, 4 * K, buf), 0);
	{
		const struct bks_extent want[] = {{0, 1 * M, 0, 0}};

		expect_extents(&r, want, 1);
	}
	assert_int_equal(bks_log_dirty_bytes(log), 1 * M);
	rig_close(&r);
	free(buf);
}

static void test_log_bad_options(void **state)
{
	static const struct {
		const char *chain, *word;
	} cases[] = {
	    {"log:block=3K|ram:1M", "'3K'"},
	    {"log:block=2K|ram:1M", "'2K'"},
	    {"log:block=128M|ram:1M", "'128M'"},
	    {"log:block=abc|ram:1M", "'abc'"},
	    {"log:block=|ram:1M", "option 'block' has an empty value"},
	    {"log:block=4K,block=5K|ram:1M", "'block=4K', then 'block=5K'"},
	    {"log:block=4K,block=8K|ram:1M", "option 'block' is given twice"},
	    {"log:foo=1|ram:1M", "unknown option 'foo'"},
	    {"log:Block=4K|ram:1M", "unknown option 'Block'"},
	};
	struct bks_error err = {0};
	struct bks_loop *loop;
	(void)state;

	assert_int_equal(bks_loop_new(&loop, &err), 0);
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
		open_fails(loop, cases[i].chain, -EINVAL, cases[i].word,
			   "usage: log:");
	bks_loop_free(loop);
}

static void test_log_not_a_log(void **state)
{
	struct bks_layer *ram;
	struct bks_extent ext[1];
	size_t n = 7;
	struct rig r;
	(void)state;

	rig_open(&r, "log:|ram:1M");
	ram = bks_chain_layer(r.chain, 1);
	assert_non_null(ram);
	assert_int_equal(bks_log_dirty(ram, 0, ext, 1, &n), -EINVAL);
	assert_int_equal(n, 7);
	assert_int_equal(bks_log_clear(ram, 0, 512), -EINVAL);
	assert_int_equal(bks_log_block_size(ram), -EINVAL);
	assert_int_equal(bks_log_dirty_bytes(ram), -EINVAL);
	assert_int_equal(bks_log_block_size(NULL), -EINVAL);
	assert_null(bks_chain_find(r.chain, "error"));
	rig_close(&r);
}

/* A failed write is still dirty: marked before it is passed down. */
static void test_log_failed_write_is_dirty(void **state)
{
	unsigned char *buf = xalloc(4 * K);
	struct rig r;
	(void)state;

	memset(buf, 1, 4 * K);
	rig_open(&r, "log:block=4K|error:ops=write,count=1|ram:1M");
	assert_int_equal(rig_io(&r, BKS_OP_WRITE, 0, 8 * K, 4 * K, buf), -EIO);
	assert_int_equal(rig_io(&r, BKS_OP_WRITE, 0, 32 * K, 4 * K, buf), 0);
	{
		const struct bks_extent want[] = {{8 * K, 4 * K, 0, 0},
						  {32 * K, 4 * K, 0, 0}};

		expect_extents(&r, want, 2);
	}
	rig_close(&r);
	free(buf);
}

/* Random writes, zeroes, discards and clears against a reference bitmap. */
static void test_log_random(void **state)
{
	enum {
		BLK = 4096,
		SIZE = 1 << 20,
		NBLK = SIZE / BLK
	};
	bool ref[NBLK] = {false};
	struct bks_extent want[NBLK], got[NBLK];
	unsigned char *buf = xalloc(64 * K);
	uint64_t seed = 0x10651065ull;
	struct bks_layer *log;
	struct rig r;
	(void)state;

	memset(buf, 7, 64 * K);
	rig_open(&r, "log:block=4K|ram:1M");
	log = bks_chain_find(r.chain, "log");
	for (int n = 0; n < 500; n++) {
		uint64_t len = rnd_range(&seed, 1, 128) * 512;
		uint64_t off = rnd_range(&seed, 0, (SIZE - len) / 512) * 512;
		unsigned int pick = (unsigned int)rnd_range(&seed, 0, 9);
		size_t nwant = 0, ngot;

		if (pick == 0) {
			/* A clear, then the reference: whole blocks only. */
			uint64_t first = (off + BLK - 1) / BLK;
			uint64_t last = (off + len) / BLK;

			assert_int_equal(bks_log_clear(log, off, len), 0);
			for (uint64_t b = first; b < last; b++)
				ref[b] = false;
		} else {
			enum bks_op op = pick < 6   ? BKS_OP_WRITE
					 : pick < 8 ? BKS_OP_WRITE_ZEROES
						    : BKS_OP_DISCARD;

			assert_int_equal(
			    rig_io(&r, op, 0, off, len,
				   op == BKS_OP_WRITE ? buf : NULL),
			    0);
			for (uint64_t b = off / BLK; b <= (off + len - 1) / BLK;
			     b++)
				ref[b] = true;
		}
		for (int b = 0; b < NBLK; b++) {
			if (!ref[b])
				continue;
			if (nwant &&
			    want[nwant - 1].offset + want[nwant - 1].length ==
				(uint64_t)b * BLK)
				want[nwant - 1].length += BLK;
			else
				want[nwant++] = (struct bks_extent){
				    (uint64_t)b * BLK, BLK, 0, 0};
		}
		assert_int_equal(bks_log_dirty(log, 0, got, NBLK, &ngot), 0);
		assert_int_equal(ngot, nwant);
		for (size_t i = 0; i < nwant; i++) {
			if (got[i].offset != want[i].offset ||
			    got[i].length != want[i].length ||
			    got[i].flags != 0)
				fail_msg("step %d: extent %zu differs from the "
					 "reference",
					 n, i);
		}
	}
	rig_close(&r);
	free(buf);
}

/*
 * A clear while a write is in flight must not lose the write: the log
 * marks again on completion.  Needs a sink that completes later (aio:).
 */
static void test_log_clear_in_flight(void **state)
{
	char path[256], spec[300];
	unsigned char *buf = xalloc(4 * K);
	struct iovec iov = {.iov_base = buf, .iov_len = 4 * K};
	struct io_wait w = {0};
	struct bks_layer *log;
	struct bks_req req;
	struct rig r;
	(void)state;

	if (!bks_driver_lookup("aio", 3)) {
		free(buf);
		skip();
	}
	memset(buf, 3, 4 * K);
	disk_file(1 * M, path, sizeof(path));
	snprintf(spec, sizeof(spec), "log:block=4K|aio:%s", path);
	rig_open(&r, spec);
	log = bks_chain_find(r.chain, "log");
	memset(&req, 0, sizeof(req));
	req.op = BKS_OP_WRITE;
	req.offset = 16 * K;
	req.len = 4 * K;
	req.iov = &iov;
	req.iovcnt = 1;
	req.done = io_done;
	req.opaque = &w;
	assert_int_equal(bks_chain_submit(r.chain, &req), 0);
	if (w.done) {
		/* The sink completed inline after all: nothing to test. */
		rig_close(&r);
		unlink(path);
		free(buf);
		skip();
	}
	assert_int_equal(bks_log_dirty_bytes(log), 4 * K);
	assert_int_equal(bks_log_clear(log, 0, UINT64_MAX), 0);
	assert_int_equal(bks_log_dirty_bytes(log), 0);
	while (!w.done)
		assert_true(bks_loop_run_once(r.loop, 1000) >= 0);
	assert_int_equal(w.result, 0);
	{
		const struct bks_extent want[] = {{16 * K, 4 * K, 0, 0}};

		expect_extents(&r, want, 1);
	}
	rig_close(&r);
	unlink(path);
	free(buf);
}

/* ---- 3. error: --------------------------------------------------------------
 */

static const char *const op_arg[BKS_OP_COUNT] = {
    [BKS_OP_READ] = "read",
    [BKS_OP_WRITE] = "write",
    [BKS_OP_FLUSH] = "flush",
    [BKS_OP_DISCARD] = "discard",
    [BKS_OP_WRITE_ZEROES] = "write-zeroes",
};

/* One request of op at offset 0 (4K, or nothing for flush). */
static int one_op(struct rig *r, enum bks_op op, void *buf)
{
	bool data = op == BKS_OP_READ || op == BKS_OP_WRITE;

	return rig_io(r, op, 0, 0, op == BKS_OP_FLUSH ? 0 : 4 * K,
		      data ? buf : NULL);
}

static void errinj_stats(struct rig *r, uint64_t seen, uint64_t injected)
{
	struct bks_errinj_stats st;

	assert_int_equal(
	    bks_errinj_get_stats(bks_chain_find(r->chain, "error"), &st), 0);
	assert_int_equal(st.seen, seen);
	assert_int_equal(st.injected, injected);
}

/* ops= selects exactly the ops that fail, and the layer below never
 * sees them. */
static void test_error_ops(void **state)
{
	unsigned char *buf = xalloc(4 * K);
	char spec[128];
	(void)state;

	memset(buf, 0, 4 * K);
	for (int sel = 0; sel < BKS_OP_COUNT; sel++) {
		struct bks_layer_stats below;
		struct rig r;

		snprintf(spec, sizeof(spec), "error:ops=%s,errno=ENOSPC|ram:1M",
			 op_arg[sel]);
		rig_open(&r, spec);
		for (int op = 0; op < BKS_OP_COUNT; op++) {
			int want = op == sel ? -ENOSPC : 0;
			int rc = one_op(&r, (enum bks_op)op, buf);

			if (rc != want)
				fail_msg("%s: %s gave %d, expected %d", spec,
					 op_arg[op], rc, want);
		}
		errinj_stats(&r, 1, 1);
		{
			struct bks_errinj_stats st;

			assert_int_equal(bks_errinj_get_stats(
					     bks_chain_layer(r.chain, 1), &st),
					 -EINVAL);
		}
		bks_layer_get_stats(bks_chain_layer(r.chain, 1), &below);
		for (int op = 0; op < BKS_OP_COUNT; op++)
			assert_int_equal(below.op[op].ops, op == sel ? 0 : 1);
		rig_close(&r);
	}

	/* Several ops, an errno by number; and the default (all, EIO). */
	{
		struct rig r;

		rig_open(&r, "error:ops=read+write-zeroes,errno=28|ram:1M");
		for (int op = 0; op < BKS_OP_COUNT; op++) {
			bool fails =
			    op == BKS_OP_READ || op == BKS_OP_WRITE_ZEROES;

			assert_int_equal(one_op(&r, (enum bks_op)op, buf),
					 fails ? -ENOSPC : 0);
		}
		errinj_stats(&r, 2, 2);
		rig_close(&r);
		rig_open(&r, "error:|ram:1M");
		for (int op = 0; op < BKS_OP_COUNT; op++)
			assert_int_equal(one_op(&r, (enum bks_op)op, buf),
					 -EIO);
		rig_close(&r);
		rig_open(&r, "error:ops=all,errno=EROFS|ram:1M");
		for (int op = 0; op < BKS_OP_COUNT; op++)
			assert_int_equal(one_op(&r, (enum bks_op)op, buf),
					 -EROFS);
		errinj_stats(&r, BKS_OP_COUNT, BKS_OP_COUNT);
		rig_close(&r);
	}
	free(buf);
}

/* The outcome of n writes as a string of 'F' (failed) and '.' (passed). */
static void run_pattern(const char *spec, int n, char *out)
{
	unsigned char *buf = xalloc(4 * K);
	struct rig r;

	memset(buf, 0, 4 * K);
	rig_open(&r, spec);
	for (int i = 0; i < n; i++) {
		int rc = one_op(&r, BKS_OP_WRITE, buf);

		assert_true(rc == 0 || rc == -EIO);
		out[i] = rc ? 'F' : '.';
	}
	out[n] = '\0';
	rig_close(&r);
	free(buf);
}

static void test_error_count_after(void **state)
{
	char got[32];
	(void)state;

	run_pattern("error:count=3|ram:1M", 10, got);
	assert_string_equal(got, "FFF.......");
	run_pattern("error:after=5|ram:1M", 10, got);
	assert_string_equal(got, ".....FFFFF");
	run_pattern("error:after=2,count=2|ram:1M", 8, got);
	assert_string_equal(got, "..FF....");
	run_pattern("error:count=0|ram:1M", 4, got);
	assert_string_equal(got, "....");

	/* Only eligible requests count towards after= and count=. */
	{
		unsigned char *buf = xalloc(4 * K);
		struct rig r;

		memset(buf, 0, 4 * K);
		rig_open(&r, "error:ops=write,after=1,count=1|ram:1M");
		assert_int_equal(one_op(&r, BKS_OP_READ, buf), 0);
		assert_int_equal(one_op(&r, BKS_OP_READ, buf), 0);
		assert_int_equal(one_op(&r, BKS_OP_WRITE, buf), 0);
		assert_int_equal(one_op(&r, BKS_OP_FLUSH, buf), 0);
		assert_int_equal(one_op(&r, BKS_OP_WRITE, buf), -EIO);
		assert_int_equal(one_op(&r, BKS_OP_WRITE, buf), 0);
		errinj_stats(&r, 3, 1);
		rig_close(&r);
		free(buf);
	}
}

#define RATE_N 1000

static int count_f(const char *s)
{
	int n = 0;

	for (; *s; s++)
		n += *s == 'F';
	return n;
}

static void test_error_rate(void **state)
{
	char *a = malloc(RATE_N + 1), *b = malloc(RATE_N + 1);
	int n;
	(void)state;

	assert_non_null(a);
	assert_non_null(b);
	/* About a quarter fail (mean 250, sd ~14: the band is > 5 sd). */
	run_pattern("error:rate=0.25,seed=42|ram:1M", RATE_N, a);
	n = count_f(a);
	print_message("# rate=0.25 seed=42: %d of %d failed\n", n, RATE_N);
	assert_in_range(n, 180, 320);
	/* The same seed, the same failures; the other spellings agree. */
	run_pattern("error:rate=0.25,seed=42|ram:1M", RATE_N, b);
	assert_string_equal(a, b);
	run_pattern("error:rate=25%,seed=42|ram:1M", RATE_N, b);
	assert_string_equal(a, b);
	run_pattern("error:seed=42,rate=1:4|ram:1M", RATE_N, b);
	assert_string_equal(a, b);
	/* Another seed, other failures (about as many). */
	run_pattern("error:rate=0.25,seed=43|ram:1M", RATE_N, b);
	assert_string_not_equal(a, b);
	assert_in_range(count_f(b), 180, 320);
	/* count= caps a rate: the first ten failures, then none. */
	run_pattern("error:rate=0.25,seed=42,count=10|ram:1M", RATE_N, b);
	assert_int_equal(count_f(b), 10);
	{
		size_t last = (size_t)(strrchr(b, 'F') - b);

		assert_memory_equal(a, b, last + 1);
	}
	/* after= lets the first ones through, then fails at the rate. */
	run_pattern("error:rate=0.25,seed=42,after=500|ram:1M", RATE_N, b);
	assert_true(strspn(b, ".") >= 500);
	assert_in_range(count_f(b), 90, 160);
	/* The extremes. */
	run_pattern("error:rate=0|ram:1M", 100, b);
	assert_int_equal(count_f(b), 0);
	run_pattern("error:rate=0.0%,seed=9|ram:1M", 100, b);
	assert_int_equal(count_f(b), 0);
	run_pattern("error:rate=1|ram:1M", 100, b);
	assert_int_equal(count_f(b), 100);
	run_pattern("error:rate=100%|ram:1M", 100, b);
	assert_int_equal(count_f(b), 100);
	free(a);
	free(b);
}

static void test_error_bad_options(void **state)
{
	static const struct {
		const char *chain, *word;
	} cases[] = {
	    {"error:bogus=1|ram:1M", "unknown option 'bogus'"},
	    {"error:rate|ram:1M", "'rate'"},
	    {"error:rate=1.5|ram:1M", "'rate'"},
	    {"error:rate=101%|ram:1M", "'rate'"},
	    {"error:rate=-0.1|ram:1M", "'rate'"},
	    {"error:rate=abc|ram:1M", "'rate'"},
	    {"error:rate=0.5x|ram:1M", "'rate'"},
	    {"error:rate=1:0|ram:1M", "'rate'"},
	    {"error:rate=2:1|ram:1M", "'rate'"},
	    {"error:rate=.|ram:1M", "'rate'"},
	    {"error:errno=EFOO|ram:1M", "'errno'"},
	    {"error:errno=0|ram:1M", "'errno'"},
	    {"error:errno=|ram:1M", "'errno'"},
	    {"error:ops=read+bogus|ram:1M", "'ops'"},
	    {"error:ops=|ram:1M", "'ops'"},
	    {"error:ops=read+|ram:1M", "'ops'"},
	    {"error:ops=+read|ram:1M", "'ops'"},
	    {"error:ops=write_zeroes|ram:1M", "'ops'"},
	    {"error:count=-1|ram:1M", "'count'"},
	    {"error:count=x|ram:1M", "'count'"},
	    {"error:count=99999999999999999999999|ram:1M", "'count'"},
	    {"error:after=|ram:1M", "'after'"},
	    {"error:after= 1|ram:1M", "'after'"},
	    {"error:seed=1e3|ram:1M", "'seed'"},
	};
	struct bks_error err = {0};
	struct bks_loop *loop;
	(void)state;

	assert_int_equal(bks_loop_new(&loop, &err), 0);
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
		open_fails(loop, cases[i].chain, -EINVAL, cases[i].word,
			   "usage: error:");
	/* The message says which layer. */
	open_fails(loop, "log:|error:nope|ram:1M", -EINVAL, "layer 2 (error)",
		   "unknown option 'nope'");
	bks_loop_free(loop);
	assert_int_equal(bks_errinj_get_stats(NULL, NULL), -EINVAL);
}

static void test_error_retry(void **state)
{
	struct bks_retry_policy p = {.max_attempts = 3, .delay_ns = 1000};
	unsigned char *buf = xalloc(4 * K), *back = xalloc(4 * K);
	struct rig r;
	(void)state;

	memset(buf, 0x77, 4 * K);
	/* Two failures, three attempts: the caller sees success. */
	rig_open(&r, "error:count=2|ram:1M");
	bks_chain_set_retry(r.chain, &p);
	assert_int_equal(one_op(&r, BKS_OP_WRITE, buf), 0);
	assert_int_equal(bks_chain_retries(r.chain), 2);
	errinj_stats(&r, 3, 2);
	assert_int_equal(one_op(&r, BKS_OP_READ, back), 0);
	assert_memory_equal(buf, back, 4 * K);
	rig_close(&r);

	/* Two attempts are not enough: the caller sees the error. */
	p.max_attempts = 2;
	rig_open(&r, "error:count=2|ram:1M");
	bks_chain_set_retry(r.chain, &p);
	assert_int_equal(one_op(&r, BKS_OP_WRITE, buf), -EIO);
	assert_int_equal(bks_chain_retries(r.chain), 1);
	errinj_stats(&r, 2, 2);
	rig_close(&r);

	/* An error that is not transient is not retried. */
	p.max_attempts = 3;
	rig_open(&r, "error:count=2,errno=ENOSPC|ram:1M");
	bks_chain_set_retry(r.chain, &p);
	assert_int_equal(one_op(&r, BKS_OP_WRITE, buf), -ENOSPC);
	assert_int_equal(bks_chain_retries(r.chain), 0);
	rig_close(&r);
	free(buf);
	free(back);
}

/* ---- 4. sync: on tmpfs and on a block device -------------------------------
 */

static const char *tmpfs_dir(void)
{
	static const char *const dirs[] = {"/dev/shm", "/tmp"};
	struct statfs sf;

	for (size_t i = 0; i < 2; i++)
		if (statfs(dirs[i], &sf) == 0 && sf.f_type == TMPFS_MAGIC &&
		    access(dirs[i], W_OK) == 0)
			return dirs[i];
	return NULL;
}

static uint64_t allocated(const char *path)
{
	struct stat st;

	assert_int_equal(stat(path, &st), 0);
	return (uint64_t)st.st_blocks * 512;
}

static bool all_bytes(const unsigned char *p, size_t n, unsigned char c)
{
	for (size_t i = 0; i < n; i++)
		if (p[i] != c)
			return false;
	return true;
}

static void test_sync_tmpfs(void **state)
{
	const char *dir = tmpfs_dir();
	unsigned char *buf = xalloc(1 * M);
	char path[256], spec[300];
	const struct bks_info *info;
	struct stat st;
	struct rig r;
	(void)state;

	if (!dir) {
		print_message("# no writable tmpfs at /dev/shm or /tmp\n");
		free(buf);
		skip();
	}
	make_file(dir, 1 * M + 100, path, sizeof(path));
	snprintf(spec, sizeof(spec), "sync:%s", path);
	/* The odd 100 bytes are refused, not hidden from the guest. */
	{
		struct bks_error err = {0};

		assert_int_equal(bks_loop_new(&r.loop, &err), 0);
		open_fails(r.loop, spec, -EINVAL,
			   "size 1048676 bytes is not a multiple of 512",
			   "truncate -s 1049088");
		bks_loop_free(r.loop);
	}
	assert_int_equal(truncate(path, 1 * M), 0);
	rig_open(&r, spec);
	info = bks_chain_info(r.chain);
	assert_int_equal(info->size, 1 * M);
	assert_int_equal(info->block_size, 512);
	assert_true(info->can_fua);
	assert_true(info->zero_no_hole);
	assert_false(info->read_only);
	assert_int_equal(info->ops, (1u << BKS_OP_COUNT) - 1);

	/* Fill it, FUA for half, and read it back. */
	for (size_t i = 0; i < 1 * M; i++)
		buf[i] = (unsigned char)(i * 7 + 1);
	assert_int_equal(rig_io(&r, BKS_OP_WRITE, 0, 0, 512 * K, buf), 0);
	assert_int_equal(rig_io(&r, BKS_OP_WRITE, BKS_REQ_FUA, 512 * K, 512 * K,
				buf + 512 * K),
			 0);
	assert_int_equal(rig_io(&r, BKS_OP_FLUSH, 0, 0, 0, NULL), 0);
	memset(buf, 0, 1 * M);
	assert_int_equal(rig_io(&r, BKS_OP_READ, 0, 0, 1 * M, buf), 0);
	for (size_t i = 0; i < 1 * M; i++)
		if (buf[i] != (unsigned char)(i * 7 + 1))
			fail_msg("byte %zu reads %u", i, buf[i]);
	assert_true(allocated(path) >= 1 * M);

	/* Zeroes that stay allocated (tmpfs has no ZERO_RANGE: this is the
	 * punch-and-allocate fallback), zeroes that punch, a discard. */
	assert_int_equal(rig_io(&r, BKS_OP_WRITE_ZEROES,
				BKS_REQ_NO_HOLE | BKS_REQ_FUA, 0, 256 * K,
				NULL),
			 0);
	assert_true(allocated(path) >= 1 * M);
	assert_int_equal(
	    rig_io(&r, BKS_OP_WRITE_ZEROES, 0, 256 * K, 256 * K, NULL), 0);
	assert_true(allocated(path) < 1 * M);
	assert_int_equal(rig_io(&r, BKS_OP_DISCARD, 0, 512 * K, 256 * K, NULL),
			 0);
	assert_true(allocated(path) <= 512 * K + 8 * K);
	assert_int_equal(rig_io(&r, BKS_OP_READ, 0, 0, 1 * M, buf), 0);
	assert_true(all_bytes(buf, 512 * K, 0));
	for (size_t i = 768 * K; i < 1 * M; i++)
		if (buf[i] != (unsigned char)(i * 7 + 1))
			fail_msg("byte %zu reads %u after zeroing", i, buf[i]);
	/* Nothing changed the file's size. */
	assert_int_equal(stat(path, &st), 0);
	assert_int_equal(st.st_size, 1 * M);

	/* The file shrinks behind our back: reading past its end is EIO. */
	assert_int_equal(truncate(path, 512 * K), 0);
	assert_int_equal(rig_io(&r, BKS_OP_READ, 0, 768 * K, 4 * K, buf), -EIO);
	/* Straddling the new end: the short read is not taken for data. */
	assert_int_equal(rig_io(&r, BKS_OP_READ, 0, 508 * K, 8 * K, buf), -EIO);
	rig_close(&r);

	/* Read-only: writes refused, reads fine. */
	{
		struct bks_error err = {0};
		struct bks_chain *chain;

		assert_int_equal(bks_loop_new(&r.loop, &err), 0);
		assert_int_equal(
		    bks_chain_open(&chain, spec, r.loop, true, &err), 0);
		assert_true(bks_chain_info(chain)->read_only);
		assert_int_equal(
		    do_io(r.loop, chain, BKS_OP_READ, 0, 0, 4 * K, buf), 0);
		assert_int_equal(
		    do_io(r.loop, chain, BKS_OP_WRITE, 0, 0, 4 * K, buf),
		    -EROFS);
		bks_chain_close(chain);
		bks_loop_free(r.loop);
	}
	unlink(path);
	free(buf);
}

static void test_sync_open_errors(void **state)
{
	struct bks_error err = {0};
	struct bks_chain *chain = NULL;
	struct bks_loop *loop;
	(void)state;

	assert_int_equal(bks_loop_new(&loop, &err), 0);
	open_fails(loop, "sync:", -EINVAL, "missing path", "usage: sync:");
	open_fails(loop, "sync:/nonexistent/blkstack.img", -ENOENT,
		   "open /nonexistent/blkstack.img", "layer 1 (sync)");
	/* A directory opens read-only, and is refused for what it is. */
	assert_int_equal(bks_chain_open(&chain, "sync:/", loop, true, &err),
			 -EINVAL);
	assert_non_null(strstr(err.msg, "not a regular file or block device"));
	bks_loop_free(loop);
}

/* sync: on a loop device: BLKGETSIZE64, BLKDISCARD, BLKZEROOUT. */
static void test_sync_blockdev(void **state)
{
	unsigned char *buf = xalloc(256 * K);
	char path[256], dev[64], spec[100];
	int ctl = -1, fd = -1, lfd = -1, nr;
	struct loop_info64 li;
	struct rig r;
	(void)state;

	disk_file(4 * M, path, sizeof(path));
	ctl = open("/dev/loop-control", O_RDWR | O_CLOEXEC);
	nr = ctl < 0 ? -1 : ioctl(ctl, LOOP_CTL_GET_FREE);
	if (nr >= 0) {
		snprintf(dev, sizeof(dev), "/dev/loop%d", nr);
		lfd = open(dev, O_RDWR | O_CLOEXEC);
		fd = open(path, O_RDWR | O_CLOEXEC);
	}
	if (lfd < 0 || fd < 0 || ioctl(lfd, LOOP_SET_FD, fd) < 0) {
		print_message("# no loop device (%s): skipped\n",
			      strerror(errno));
		if (fd >= 0)
			close(fd);
		if (lfd >= 0)
			close(lfd);
		if (ctl >= 0)
			close(ctl);
		unlink(path);
		free(buf);
		skip();
	}
	/* Detach by itself when the last descriptor closes. */
	memset(&li, 0, sizeof(li));
	li.lo_flags = LO_FLAGS_AUTOCLEAR;
	ioctl(lfd, LOOP_SET_STATUS64, &li);
	close(fd);

	snprintf(spec, sizeof(spec), "sync:%s", dev);
	rig_open(&r, spec);
	assert_int_equal(bks_chain_info(r.chain)->size, 4 * M);
	memset(buf, 0xc3, 256 * K);
	assert_int_equal(rig_io(&r, BKS_OP_WRITE, BKS_REQ_FUA, 0, 256 * K, buf),
			 0);
	assert_int_equal(rig_io(&r, BKS_OP_WRITE_ZEROES, BKS_REQ_NO_HOLE,
				64 * K, 64 * K, NULL),
			 0);
	assert_int_equal(
	    rig_io(&r, BKS_OP_WRITE_ZEROES, 0, 192 * K, 32 * K, NULL), 0);
	assert_int_equal(rig_io(&r, BKS_OP_DISCARD, 0, 1 * M, 1 * M, NULL), 0);
	assert_int_equal(rig_io(&r, BKS_OP_FLUSH, 0, 0, 0, NULL), 0);
	assert_int_equal(rig_io(&r, BKS_OP_READ, 0, 0, 256 * K, buf), 0);
	assert_true(all_bytes(buf, 64 * K, 0xc3));
	assert_true(all_bytes(buf + 64 * K, 64 * K, 0));
	assert_true(all_bytes(buf + 128 * K, 64 * K, 0xc3));
	assert_true(all_bytes(buf + 192 * K, 32 * K, 0));
	assert_true(all_bytes(buf + 224 * K, 32 * K, 0xc3));
	rig_close(&r);

	ioctl(lfd, LOOP_CLR_FD, 0);
	close(lfd);
	close(ctl);
	/* What the device wrote is in the file. */
	fd = open(path, O_RDONLY);
	assert_true(fd >= 0);
	assert_int_equal(pread(fd, buf, 256 * K, 0), 256 * K);
	close(fd);
	assert_true(all_bytes(buf, 64 * K, 0xc3));
	assert_true(all_bytes(buf + 64 * K, 64 * K, 0));
	unlink(path);
	free(buf);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_same_results),
	    cmocka_unit_test(test_log_extents),
	    cmocka_unit_test(test_log_block_option),
	    cmocka_unit_test(test_log_bad_options),
	    cmocka_unit_test(test_log_not_a_log),
	    cmocka_unit_test(test_log_failed_write_is_dirty),
	    cmocka_unit_test(test_log_random),
	    cmocka_unit_test(test_log_clear_in_flight),
	    cmocka_unit_test(test_error_ops),
	    cmocka_unit_test(test_error_count_after),
	    cmocka_unit_test(test_error_rate),
	    cmocka_unit_test(test_error_bad_options),
	    cmocka_unit_test(test_error_retry),
	    cmocka_unit_test(test_sync_tmpfs),
	    cmocka_unit_test(test_sync_open_errors),
	    cmocka_unit_test(test_sync_blockdev),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
