/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* Unit tests: extents (holes and data) through chains, for block status. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <errno.h>
#include <fcntl.h>
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

static void status_done(struct bks_req *req, int result)
{
	*(int *)req->opaque = result;
}

/* Check the extents of the chain "<prefix><path>". */
static void check_chain(const char *prefix, const char *path)
{
	struct bks_extent ext[16];
	struct bks_chain *chain;
	struct bks_loop *loop;
	struct bks_error err = {0};
	struct bks_req req = {0};
	int result = 1;
	char spec[512];
	size_t n;

	snprintf(spec, sizeof(spec), "%s%s", prefix, path);
	assert_int_equal(bks_loop_new(&loop, &err), 0);
	if (bks_chain_open(&chain, spec, loop, false, &err))
		fail_msg("%s: %s", spec, err.msg);
	assert_true(bks_chain_has_extents(chain));
	assert_int_equal(bks_chain_extents(chain, 0, 4 * MIB, ext, 16, &n), 0);
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
	assert_int_equal(
	    bks_chain_extents(chain, 3 * MIB + 4096, 8192, ext, 16, &n), 0);
	assert_int_equal(n, 1);
	assert_int_equal(ext[0].length, 8192);
	assert_int_equal(bks_chain_extents(chain, 0, 4 * MIB, ext, 1, &n), 0);
	assert_int_equal(n, 1);
	assert_int_equal(ext[0].length, 1 * MIB);
	/* Out of range. */
	assert_int_equal(bks_chain_extents(chain, 4 * MIB, 512, ext, 16, &n),
			 -EINVAL);
	/* The same as a request submitted like any other. */
	memset(ext, 0, sizeof(ext));
	req.op = BKS_OP_BLOCK_STATUS;
	req.offset = 512;
	req.len = 4 * MIB - 512;
	req.extents = ext;
	req.extents_max = 16;
	req.done = status_done;
	req.opaque = &result;
	assert_int_equal(bks_chain_submit(chain, &req), 0);
	assert_int_equal(result, 0);
	assert_int_equal(req.nextents, 4);
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
	check_chain("sync:", path);
	check_chain("aio:", path);
	/* log: has no block_status op: it passes the question down. */
	check_chain("log:|aio:", path);
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
