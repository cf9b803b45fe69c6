/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Unit tests: the dirty log of log: kept in a state file
 * (bks_chain_config.state_dir, bks_open_args.state_path): its bits
 * survive closing the chain and a SIGKILL of the process, dirty --clear
 * is persisted, a file of another geometry or another kind is refused
 * (and left alone), an unfinished one is started clean, and without a
 * state directory nothing is written.  Real files in a private temporary
 * directory.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <dirent.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "blkstack/chain.h"
#include "blkstack/log.h"

#define K 1024ull

struct rig {
	struct bks_loop *loop;
	struct bks_chain *chain;
	char dir[256];
};

static int rig_try(struct rig *r, const char *s, const char *state_dir,
		   struct bks_error *err)
{
	const struct bks_chain_config cfg = {.loop = r->loop,
					     .state_dir = state_dir};

	return bks_chain_open_config(&r->chain, s, &cfg, err);
}

static void rig_open(struct rig *r, const char *s)
{
	struct bks_error err = {0};

	assert_int_equal(bks_loop_new(&r->loop, &err), 0);
	if (rig_try(r, s, r->dir, &err) < 0)
		fail_msg("%s: %s", s, err.msg);
}

static void rig_close(struct rig *r)
{
	assert_int_equal(bks_chain_in_flight(r->chain), 0);
	bks_chain_close(r->chain);
	bks_loop_free(r->loop);
	r->chain = NULL;
	r->loop = NULL;
}

static void io_done(struct bks_req *req, int result)
{
	*(int *)req->opaque = result;
}

/* A write of len bytes at offset, waited for. */
static void rig_write(struct rig *r, uint64_t offset, uint64_t len)
{
	static char buf[256 * 1024];
	struct iovec iov = {.iov_base = buf, .iov_len = len};
	struct bks_req req = {.op = BKS_OP_WRITE,
			      .offset = offset,
			      .len = len,
			      .iov = &iov,
			      .iovcnt = 1,
			      .done = io_done};
	int result = 1;

	assert_true(len <= sizeof(buf));
	req.opaque = &result;
	assert_int_equal(bks_chain_submit(r->chain, &req), 0);
	for (int i = 0; i < 1000 && result == 1; i++)
		bks_loop_run_once(r->loop, 10);
	assert_int_equal(result, 0);
}

static struct bks_layer *log_of(struct rig *r)
{
	struct bks_layer *l = bks_chain_find(r->chain, "log");

	assert_non_null(l);
	return l;
}

/* The dirty extents, as "offset+length ..." in K. */
static void dirty_text(struct rig *r, char *out, size_t size)
{
	struct bks_extent e[16];
	size_t n, len = 0;

	out[0] = '\0';
	assert_int_equal(bks_log_dirty(log_of(r), 0, e, 16, &n), 0);
	for (size_t i = 0; i < n; i++)
		len += (size_t)snprintf(out + len, size - len, "%llu+%llu ",
					e[i].offset / K, e[i].length / K);
}

static void expect_dirty(struct rig *r, const char *want)
{
	char got[512];

	dirty_text(r, got, sizeof(got));
	assert_string_equal(got, want);
}

static void state_path(const struct rig *r, unsigned int n, char *buf,
		       size_t size)
{
	snprintf(buf, size, "%s/" BKS_LAYER_STATE_FMT, r->dir, n);
}

static int setup(void **state)
{
	struct rig *r = calloc(1, sizeof(*r));
	const char *tmp = getenv("TMPDIR");

	assert_non_null(r);
	snprintf(r->dir, sizeof(r->dir), "%s/blkstack-logstate-XXXXXX",
		 tmp && *tmp ? tmp : "/tmp");
	assert_non_null(mkdtemp(r->dir));
	*state = r;
	return 0;
}

static int teardown(void **state)
{
	struct rig *r = *state;
	DIR *d = opendir(r->dir);
	struct dirent *de;
	char path[512];

	while (d && (de = readdir(d))) {
		if (de->d_name[0] == '.')
			continue;
		snprintf(path, sizeof(path), "%s/%s", r->dir, de->d_name);
		unlink(path);
	}
	if (d)
		closedir(d);
	rmdir(r->dir);
	free(r);
	return 0;
}

/* Bits kept across close and open; a clear is kept too. */
static void test_persist_close_open(void **state)
{
	struct rig *r = *state;
	char path[512];
	struct stat st;

	rig_open(r, "log:block=4K|ram:1M");
	state_path(r, 0, path, sizeof(path));
	assert_int_equal(stat(path, &st), 0);
	assert_int_equal(st.st_mode & 0777, 0600);
	/* Header page, 256 bits (one word and the extra one), the frozen set.
	 */
	assert_int_equal(st.st_size, 4096 + 2 * 8 * (256 / 64 + 1));
	expect_dirty(r, "");
	rig_write(r, 0, 4 * K);
	rig_write(r, 20 * K, 8 * K);
	rig_write(r, 1020 * K, 4 * K);
	expect_dirty(r, "0+4 20+8 1020+4 ");
	rig_close(r);

	rig_open(r, "log:block=4K|ram:1M");
	expect_dirty(r, "0+4 20+8 1020+4 ");
	assert_int_equal(bks_log_dirty_bytes(log_of(r)), 16 * K);
	/* dirty --clear: persisted as well. */
	assert_int_equal(bks_log_clear(log_of(r), 0, 24 * K), 0);
	expect_dirty(r, "24+4 1020+4 ");
	rig_close(r);

	rig_open(r, "log:block=4K|ram:1M");
	expect_dirty(r, "24+4 1020+4 ");
	assert_int_equal(bks_log_dirty_bytes(log_of(r)), 8 * K);
	rig_close(r);
}

/*
 * A process killed with SIGKILL after its writes completed, without
 * closing or syncing anything: its bits are in the file.
 */
static void test_persist_sigkill(void **state)
{
	struct rig *r = *state;
	int status;
	pid_t pid;

	pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		rig_open(r, "log:block=64K|ram:16M");
		rig_write(r, 64 * K, 4 * K);
		rig_write(r, 8192 * K, 200 * K);
		raise(SIGKILL);
		_exit(1);
	}
	assert_int_equal(waitpid(pid, &status, 0), pid);
	assert_true(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
	rig_open(r, "log:block=64K|ram:16M");
	expect_dirty(r, "64+64 8192+256 ");
	rig_close(r);
}

/* Another geometry or another kind of file: refused, left as it was. */
static void test_mismatch_refused(void **state)
{
	struct rig *r = *state;
	struct bks_error err = {0};
	char path[512];
	struct stat before, after;
	FILE *f;

	rig_open(r, "log:block=4K|ram:1M");
	rig_write(r, 8 * K, 4 * K);
	rig_close(r);
	state_path(r, 0, path, sizeof(path));
	assert_int_equal(stat(path, &before), 0);

	assert_int_equal(bks_loop_new(&r->loop, &err), 0);
	/* Another size. */
	assert_int_equal(rig_try(r, "log:block=4K|ram:2M", r->dir, &err),
			 -EEXIST);
	assert_non_null(strstr(err.msg, "another chain"));
	assert_non_null(strstr(err.msg, path));
	assert_non_null(strstr(err.msg, "1048576 bytes in blocks of 4096"));
	assert_non_null(strstr(err.msg, "2097152 bytes in blocks of 4096"));
	bks_error_clear(&err);
	/* Another block size. */
	assert_int_equal(rig_try(r, "log:block=8K|ram:1M", r->dir, &err),
			 -EEXIST);
	assert_non_null(strstr(err.msg, "another chain"));
	bks_error_clear(&err);
	bks_loop_free(r->loop);
	r->loop = NULL;
	assert_int_equal(stat(path, &after), 0);
	assert_int_equal(after.st_size, before.st_size);
	/* Untouched: the right chain still finds its bits. */
	rig_open(r, "log:block=4K|ram:1M");
	expect_dirty(r, "8+4 ");
	rig_close(r);

	/* Not a log: file at all. */
	f = fopen(path, "w");
	assert_non_null(f);
	fputs("something else entirely", f);
	fclose(f);
	assert_int_equal(bks_loop_new(&r->loop, &err), 0);
	assert_int_equal(rig_try(r, "log:block=4K|ram:1M", r->dir, &err),
			 -EEXIST);
	assert_non_null(strstr(err.msg, "is not a log: dirty bitmap"));
	bks_error_clear(&err);
	bks_loop_free(r->loop);
	r->loop = NULL;
	unlink(path);
}

/* An empty (unfinished) file starts clean; a symlink is refused. */
static void test_unfinished_and_symlink(void **state)
{
	struct rig *r = *state;
	struct bks_error err = {0};
	char path[512], target[600];
	FILE *f;

	state_path(r, 0, path, sizeof(path));
	f = fopen(path, "w");
	assert_non_null(f);
	fclose(f);
	rig_open(r, "log:block=4K|ram:1M");
	expect_dirty(r, "");
	rig_write(r, 0, 4 * K);
	rig_close(r);
	rig_open(r, "log:block=4K|ram:1M");
	expect_dirty(r, "0+4 ");
	rig_close(r);
	unlink(path);

	snprintf(target, sizeof(target), "%s/elsewhere", r->dir);
	assert_int_equal(symlink(target, path), 0);
	assert_int_equal(bks_loop_new(&r->loop, &err), 0);
	assert_int_equal(rig_try(r, "log:block=4K|ram:1M", r->dir, &err),
			 -ELOOP);
	assert_non_null(strstr(err.msg, path));
	bks_error_clear(&err);
	bks_loop_free(r->loop);
	r->loop = NULL;
	assert_int_equal(access(target, F_OK), -1);
	unlink(path);
}

/* The file is named after the layer's position; no directory, no file. */
static void test_position_and_memory(void **state)
{
	struct rig *r = *state;
	struct bks_error err = {0};
	char path[512];

	rig_open(r, "error:ops=read,count=0|log:block=4K|ram:1M");
	state_path(r, 1, path, sizeof(path));
	assert_int_equal(access(path, F_OK), 0);
	state_path(r, 0, path, sizeof(path));
	assert_int_equal(access(path, F_OK), -1);
	state_path(r, 2, path, sizeof(path));
	assert_int_equal(access(path, F_OK), -1);
	rig_close(r);
	state_path(r, 1, path, sizeof(path));
	unlink(path);

	/* The same chain without a state directory: in memory only. */
	assert_int_equal(bks_loop_new(&r->loop, &err), 0);
	assert_int_equal(rig_try(r, "log:block=4K|ram:1M", NULL, &err), 0);
	rig_write(r, 0, 4 * K);
	expect_dirty(r, "0+4 ");
	rig_close(r);
	state_path(r, 0, path, sizeof(path));
	assert_int_equal(access(path, F_OK), -1);

	/* An empty state directory is refused. */
	assert_int_equal(bks_loop_new(&r->loop, &err), 0);
	assert_int_equal(rig_try(r, "log:|ram:1M", "", &err), -EINVAL);
	bks_error_clear(&err);
	bks_loop_free(r->loop);
	r->loop = NULL;
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test_setup_teardown(test_persist_close_open, setup,
					    teardown),
	    cmocka_unit_test_setup_teardown(test_persist_sigkill, setup,
					    teardown),
	    cmocka_unit_test_setup_teardown(test_mismatch_refused, setup,
					    teardown),
	    cmocka_unit_test_setup_teardown(test_unfinished_and_symlink, setup,
					    teardown),
	    cmocka_unit_test_setup_teardown(test_position_and_memory, setup,
					    teardown),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
