/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* Unit tests: extents (holes and data) through chains, for block status. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "blkstack/chain.h"
#include "unit-util.h"

#define MIB (1024ull * 1024)

/* A sparse 4 MiB file with data at [1M, 1M + 64K) and [3M, 4M). */
static void make_sparse(char *path, size_t size)
{
	static char buf[65536];
	int fd;

	assert_int_equal(unit_tmpfile(path, size, 4 * MIB), 0);
	fd = open(path, O_WRONLY);
	assert_true(fd >= 0);
	memset(buf, 0x5a, sizeof(buf));
	assert_int_equal(pwrite(fd, buf, sizeof(buf), 1 * MIB), sizeof(buf));
	for (uint64_t off = 3 * MIB; off < 4 * MIB; off += sizeof(buf))
		assert_int_equal(pwrite(fd, buf, sizeof(buf), (off_t)off),
				 sizeof(buf));
	assert_int_equal(fsync(fd), 0);
	close(fd);
}

struct bs_req {
	struct bks_req req;
	bool done;
	int result;
};

static void bs_done(struct bks_req *req, int result)
{
	struct bs_req *b = req->opaque;

	b->done = true;
	b->result = result;
}

/*
 * Block status as a request (BKS_OP_BLOCK_STATUS through the chain),
 * which a layer may answer later: run the loop until it is done.  Same
 * contract as bks_chain_extents().
 */
static int block_status(struct bks_chain *chain, struct bks_loop *loop,
			uint64_t offset, uint64_t len, struct bks_extent *out,
			size_t max, size_t *n)
{
	struct bs_req b;
	uint64_t deadline = bks_now_ns() + 10000000000ull;

	memset(&b, 0, sizeof(b));
	b.req.op = BKS_OP_BLOCK_STATUS;
	b.req.offset = offset;
	b.req.len = len;
	b.req.extents = out;
	b.req.extents_max = (uint32_t)max;
	b.req.done = bs_done;
	b.req.opaque = &b;
	*n = 0;
	assert_int_equal(bks_chain_submit(chain, &b.req), 0);
	while (!b.done && bks_now_ns() < deadline)
		assert_true(bks_loop_run_once(loop, 1000) >= 0);
	assert_true(b.done);
	if (b.result == 0)
		*n = b.req.nextents;
	return b.result;
}

/* Both ways of asking: the wrapper only for layers that answer at once. */
typedef int ask_fn(struct bks_chain *chain, struct bks_loop *loop,
		   uint64_t offset, uint64_t len, struct bks_extent *out,
		   size_t max, size_t *n);

static int wrapper(struct bks_chain *chain, struct bks_loop *loop,
		   uint64_t offset, uint64_t len, struct bks_extent *out,
		   size_t max, size_t *n)
{
	(void)loop;
	return bks_chain_extents(chain, offset, len, out, max, n);
}

/* Check the extents of the chain "<prefix><path>", asked with ask. */
static void check_chain(const char *prefix, const char *path, ask_fn *ask)
{
	struct bks_extent ext[16];
	struct bks_chain *chain;
	struct bks_loop *loop;
	struct bks_error err = {0};
	char spec[512];
	size_t n;

	snprintf(spec, sizeof(spec), "%s%s", prefix, path);
	assert_int_equal(bks_loop_new(&loop, &err), 0);
	if (bks_chain_open(&chain, spec, loop, false, &err))
		fail_msg("%s: %s", spec, err.msg);
	assert_true(bks_chain_has_extents(chain));
	assert_int_equal(ask(chain, loop, 0, 4 * MIB, ext, 16, &n), 0);
	assert_int_equal(n, 4);
	assert_int_equal(ext[0].offset, 0);
	assert_int_equal(ext[0].length, 1 * MIB);
	assert_int_equal(ext[0].flags, BKS_EXTENT_HOLE | BKS_EXTENT_ZERO);
	assert_int_equal(ext[1].offset, 1 * MIB);
	assert_int_equal(ext[1].length, 64 * 1024);
	assert_int_equal(ext[1].flags, 0);
	assert_int_equal(ext[2].flags, BKS_EXTENT_HOLE | BKS_EXTENT_ZERO);
	assert_int_equal(ext[3].offset, 3 * MIB);
	assert_int_equal(ext[3].length, 1 * MIB);
	/* A window inside the data, and room for only one extent. */
	assert_int_equal(ask(chain, loop, 3 * MIB + 4096, 8192, ext, 16, &n),
			 0);
	assert_int_equal(n, 1);
	assert_int_equal(ext[0].length, 8192);
	assert_int_equal(ask(chain, loop, 0, 4 * MIB, ext, 1, &n), 0);
	assert_int_equal(n, 1);
	assert_int_equal(ext[0].length, 1 * MIB);
	/* Out of range. */
	assert_int_equal(ask(chain, loop, 4 * MIB, 512, ext, 16, &n), -EINVAL);
	/* Not block-aligned: block status takes any byte range. */
	memset(ext, 0, sizeof(ext));
	assert_int_equal(ask(chain, loop, 512, 4 * MIB - 512, ext, 16, &n), 0);
	assert_int_equal(n, 4);
	assert_int_equal(ext[0].offset, 512);
	assert_int_equal(ext[0].length, 1 * MIB - 512);
	assert_int_equal(ext[0].flags, BKS_EXTENT_HOLE | BKS_EXTENT_ZERO);
	assert_int_equal(ext[3].offset, 3 * MIB);
	bks_chain_close(chain);
	bks_loop_free(loop);
}

static void test_file_holes(void **state)
{
	char path[256];
	(void)state;

	make_sparse(path, sizeof(path));
	check_chain("sync:", path, block_status);
	check_chain("aio:", path, block_status);
	/* log: has no extents op: it passes the question down. */
	check_chain("log:|aio:", path, block_status);
	/* sync: answers at once: the synchronous wrapper works on it. */
	check_chain("sync:", path, wrapper);
	unlink(path);
}

static void test_no_extents_is_all_data(void **state)
{
	struct bks_extent ext[4];
	struct bks_chain *chain;
	struct bks_loop *loop;
	struct bks_error err = {0};
	size_t n;
	(void)state;

	assert_int_equal(bks_loop_new(&loop, &err), 0);
	assert_int_equal(bks_chain_open(&chain, "ram:1M", loop, false, &err),
			 0);
	assert_false(bks_chain_has_extents(chain));
	assert_int_equal(bks_chain_extents(chain, 512, 1024, ext, 4, &n), 0);
	assert_int_equal(n, 1);
	assert_int_equal(ext[0].offset, 512);
	assert_int_equal(ext[0].length, 1024);
	assert_int_equal(ext[0].flags, 0);
	bks_chain_close(chain);
	bks_loop_free(loop);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_file_holes),
	    cmocka_unit_test(test_no_extents_is_all_data),
	};

	return cmocka_run_group_tests_name("extents", tests, NULL, NULL);
}
