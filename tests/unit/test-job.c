/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Unit tests: commit and stream jobs (job.h) on real qcow2 images made by
 * qemu-img and qemu-io, on a real loop, with writes submitted by the test
 * while the job runs; every byte checked against a model afterwards.
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
#include "blkstack/job.h"
#include "unit-util.h"

#define SIZE (8u << 20)
#define WLEN (64u << 10)

static char dir[256];

static void sh(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static void sh(const char *fmt, ...)
{
	char cmd[2048];
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(cmd, sizeof(cmd), fmt, ap);
	va_end(ap);
	assert_true(n > 0 && (size_t)n < sizeof(cmd));
	if (system(cmd) != 0)
		fail_msg("failed: %s", cmd);
}

struct ctx {
	struct bks_loop *loop;
	struct bks_chain *chain;
	struct bks_job *job;
	unsigned char *model; /* what the disk must read */
	unsigned char *wbuf, *rbuf;
	struct bks_req wreq;
	struct iovec wiov;
	bool w_busy, ended;
	int result;
	char err[BKS_ERROR_MSG_MAX];
	char recorded[BKS_CHAIN_STR_MAX + 1];
	uint64_t w_off;
	unsigned int writes, seq;
};

static void job_done(void *arg, int result, const struct bks_error *err)
{
	struct ctx *c = arg;

	c->ended = true;
	c->result = result;
	snprintf(c->err, sizeof(c->err), "%s", err ? err->msg : "");
}

static int record_chain(void *arg, const char *s, struct bks_error *err)
{
	struct ctx *c = arg;

	(void)err;
	snprintf(c->recorded, sizeof(c->recorded), "%s", s);
	return 0;
}

static int refuse_chain(void *arg, const char *s, struct bks_error *err)
{
	(void)arg;
	return bks_error_setmsg(err, EIO, "cannot record %s", s);
}

static void w_done(struct bks_req *req, int result)
{
	struct ctx *c = req->opaque;

	assert_int_equal(result, 0);
	memset(c->model + c->w_off, (int)(c->seq & 0xff), WLEN);
	c->w_busy = false;
	c->writes++;
}

static void guest_write_at(struct ctx *c, uint64_t off)
{
	c->w_off = off;
	memset(c->wbuf, (int)(c->seq & 0xff), WLEN);
	memset(&c->wreq, 0, sizeof(c->wreq));
	c->wiov.iov_base = c->wbuf;
	c->wiov.iov_len = WLEN;
	c->wreq.op = BKS_OP_WRITE;
	c->wreq.offset = off;
	c->wreq.len = WLEN;
	c->wreq.iov = &c->wiov;
	c->wreq.iovcnt = 1;
	c->wreq.done = w_done;
	c->wreq.opaque = c;
	c->w_busy = true;
	bks_chain_submit(c->chain, &c->wreq);
}

/* One guest write at a time, at a pseudo-random 4K-aligned offset. */
static void guest_write(struct ctx *c)
{
	uint64_t off;

	c->seq++;
	off = ((uint64_t)c->seq * 2654435761u) % (SIZE / 4096) * 4096;
	if (off > SIZE - WLEN)
		off = SIZE - WLEN;
	guest_write_at(c, off);
}

static void rd_done(struct bks_req *req, int result)
{
	*(int *)req->opaque = result;
}

static void verify(struct ctx *c)
{
	struct bks_req req = {0};
	struct iovec iov = {c->rbuf, SIZE};
	uint64_t deadline = bks_now_ns() + 10000000000ull;
	int result = 1;

	req.op = BKS_OP_READ;
	req.len = SIZE;
	req.iov = &iov;
	req.iovcnt = 1;
	req.done = rd_done;
	req.opaque = &result;
	bks_chain_submit(c->chain, &req);
	while (result == 1 && bks_now_ns() < deadline)
		assert_true(bks_loop_run_once(c->loop, 1000) >= 0);
	assert_int_equal(result, 0);
	for (uint64_t i = 0; i < SIZE; i++)
		if (c->rbuf[i] != c->model[i])
			fail_msg("byte %llu: %u, want %u",
				 (unsigned long long)i, c->rbuf[i],
				 c->model[i]);
}

static int setup(void **state)
{
	const char *base = getenv("BKS_TEST_TMPDIR");

	(void)state;
	if (system("qemu-img --version >/dev/null 2>&1") != 0 ||
	    system("qemu-io --version >/dev/null 2>&1") != 0)
		return 0; /* each test skips */
	snprintf(dir, sizeof(dir), "%s/blkstack-job-XXXXXX",
		 base && *base ? base : "/var/tmp");
	assert_non_null(mkdtemp(dir));
	return 0;
}

static int teardown(void **state)
{
	(void)state;
	if (dir[0])
		sh("rm -rf '%s'", dir);
	return 0;
}

/* base: 1 at 0..4M; top: 2 at 2M..6M, zeroes at 7M..8M. */
static void open_images(struct ctx *c)
{
	struct bks_error err = {0};
	char spec[512];

	if (!dir[0])
		skip();
	sh("cd %s && rm -f base.qcow2 top.qcow2 && "
	   "qemu-img create -q -f qcow2 base.qcow2 8M && "
	   "qemu-io -f qcow2 -c 'write -P 1 0 4M' -c 'write -P 5 7M 1M' "
	   "base.qcow2 >/dev/null && "
	   "qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 top.qcow2 8M && "
	   "qemu-io -f qcow2 -c 'write -P 2 2M 4M' -c 'write -z 7M 1M' "
	   "top.qcow2 >/dev/null",
	   dir);
	memset(c, 0, sizeof(*c));
	c->model = calloc(1, SIZE);
	assert_non_null(c->model);
	memset(c->model, 1, 2u << 20);
	memset(c->model + (2u << 20), 2, 4u << 20);
	assert_int_equal(posix_memalign((void **)&c->wbuf, 4096, WLEN), 0);
	assert_int_equal(posix_memalign((void **)&c->rbuf, 4096, SIZE), 0);
	snprintf(spec, sizeof(spec), "qcow2:%s/top.qcow2", dir);
	assert_int_equal(bks_loop_new(&c->loop, &err), 0);
	if (bks_chain_open(&c->chain, spec, c->loop, false, &err) < 0)
		fail_msg("open: %s", err.msg);
	assert_int_equal(bks_chain_layers(c->chain), 2);
}

/* Write len bytes of byte at off through the chain, and into the model. */
static void write_sync(struct ctx *c, uint64_t off, uint64_t len, int byte)
{
	uint64_t deadline = bks_now_ns() + 10000000000ull;

	for (uint64_t pos = off; pos < off + len; pos += WLEN) {
		c->seq = (unsigned int)byte;
		guest_write_at(c, pos);
		while (c->w_busy && bks_now_ns() < deadline)
			assert_true(bks_loop_run_once(c->loop, 100) >= 0);
		assert_false(c->w_busy);
	}
	c->writes = 0;
}

/* The same on VHD: base (dynamic, by qemu-img) 1 at 0..4M; top
 * (differencing, by blkstack-img) 2 at 2M..6M, written through the chain. */
static void open_vhd(struct ctx *c)
{
	struct bks_error err = {0};
	char spec[512];

	if (!dir[0])
		skip();
	sh("cd %s && rm -f base.vhd top.vhd && "
	   "qemu-img create -q -f vpc -o subformat=dynamic,force_size=on "
	   "base.vhd 8M && "
	   "qemu-io -f vpc -c 'write -P 1 0 4M' base.vhd >/dev/null",
	   dir);
	/* The tests run from the top of the tree (make check). */
	sh("build/bin/blkstack-img create -f vhd -b %s/base.vhd -F vhd "
	   "%s/top.vhd >/dev/null",
	   dir, dir);
	memset(c, 0, sizeof(*c));
	c->model = calloc(1, SIZE);
	assert_non_null(c->model);
	memset(c->model, 1, 4u << 20);
	assert_int_equal(posix_memalign((void **)&c->wbuf, 4096, WLEN), 0);
	assert_int_equal(posix_memalign((void **)&c->rbuf, 4096, SIZE), 0);
	snprintf(spec, sizeof(spec), "vhd:%s/top.vhd", dir);
	assert_int_equal(bks_loop_new(&c->loop, &err), 0);
	if (bks_chain_open(&c->chain, spec, c->loop, false, &err) < 0)
		fail_msg("open: %s", err.msg);
	assert_int_equal(bks_chain_layers(c->chain), 2);
	write_sync(c, 2u << 20, 4u << 20, 2);
}

/* Run the loop until the job ends, writing meanwhile (30 s at most). */
static void run_job(struct ctx *c, unsigned int max_writes, bool cancel)
{
	uint64_t deadline = bks_now_ns() + 30000000000ull;

	while (!c->ended && bks_now_ns() < deadline) {
		if (!c->w_busy && c->writes < max_writes)
			guest_write(c);
		if (cancel && c->writes == 3)
			bks_job_cancel(c->job);
		assert_true(bks_loop_run_once(c->loop, 100) >= 0);
	}
	assert_true(c->ended);
	while (c->w_busy && bks_now_ns() < deadline)
		assert_true(bks_loop_run_once(c->loop, 100) >= 0);
	assert_false(c->w_busy);
}

static void close_all(struct ctx *c)
{
	bks_job_free(c->job);
	bks_chain_close(c->chain);
	bks_loop_free(c->loop);
	free(c->model);
	free(c->wbuf);
	free(c->rbuf);
}

static void start(struct ctx *c, enum bks_job_kind kind)
{
	struct bks_job_config cfg = {0};
	struct bks_error err = {0};

	cfg.kind = kind;
	cfg.chain = c->chain;
	cfg.chunk = 256u << 10;
	cfg.commit_chain = record_chain;
	cfg.done = job_done;
	cfg.arg = c;
	if (bks_job_start(&c->job, &cfg, &err) < 0)
		fail_msg("start: %s", err.msg);
}

static void test_commit(void **state)
{
	struct bks_job_progress p;
	struct ctx c;
	char want[512];

	(void)state;
	open_images(&c);
	start(&c, BKS_JOB_COMMIT);
	run_job(&c, 200, false);
	if (c.result != 0)
		fail_msg("commit: %s", c.err);
	bks_job_get_progress(c.job, &p);
	assert_int_equal(p.phase, BKS_JOB_DONE);
	assert_true(p.done_bytes >= p.total_bytes && p.total_bytes > 0);
	assert_true(c.writes > 0);
	snprintf(want, sizeof(want), "qcow2:%s/base.qcow2", dir);
	assert_string_equal(c.recorded, want);
	assert_int_equal(bks_chain_layers(c.chain), 1);
	verify(&c);
	close_all(&c);
	sh("qemu-img check -q %s/base.qcow2", dir);
}

static void test_stream(void **state)
{
	struct bks_job_progress p;
	struct ctx c;

	(void)state;
	open_images(&c);
	start(&c, BKS_JOB_STREAM);
	run_job(&c, 200, false);
	if (c.result != 0)
		fail_msg("stream: %s", c.err);
	bks_job_get_progress(c.job, &p);
	assert_int_equal(p.phase, BKS_JOB_DONE);
	assert_int_equal(bks_chain_layers(c.chain), 1);
	verify(&c);
	close_all(&c);
	sh("qemu-img check -q %s/top.qcow2 && "
	   "! qemu-img info %s/top.qcow2 | grep -q 'backing file'",
	   dir, dir);
}

static void test_commit_cancel(void **state)
{
	struct ctx c;

	(void)state;
	open_images(&c);
	start(&c, BKS_JOB_COMMIT);
	run_job(&c, 50, true);
	/* It may have finished before the cancel arrived. */
	if (c.result != 0)
		assert_int_equal(c.result, -ECANCELED);
	else
		assert_int_equal(bks_chain_layers(c.chain), 1);
	if (c.result == -ECANCELED)
		assert_int_equal(bks_chain_layers(c.chain), 2);
	verify(&c);
	close_all(&c);
	sh("qemu-img check -q %s/top.qcow2", dir);
}

/* top over mid over base: commit mid into base while top is written. */
static void test_commit_middle(void **state)
{
	struct bks_job_config cfg = {0};
	struct bks_error err = {0};
	struct bks_layer *mid;
	struct ctx c;
	char spec[512];

	(void)state;
	open_images(&c);
	bks_chain_close(c.chain);
	sh("cd %s && mv top.qcow2 mid.qcow2 && "
	   "qemu-img rebase -q -u -f qcow2 -b base.qcow2 -F qcow2 mid.qcow2 && "
	   "qemu-img create -q -f qcow2 -b mid.qcow2 -F qcow2 top.qcow2 8M && "
	   "qemu-io -f qcow2 -c 'write -P 3 5M 2M' top.qcow2 >/dev/null",
	   dir);
	memset(c.model + (5u << 20), 3, 2u << 20);
	snprintf(spec, sizeof(spec), "qcow2:%s/top.qcow2", dir);
	if (bks_chain_open(&c.chain, spec, c.loop, false, &err) < 0)
		fail_msg("open: %s", err.msg);
	assert_int_equal(bks_chain_layers(c.chain), 3);
	mid = bks_layer_child(bks_chain_sink(c.chain), BKS_CHILD_BACKING);
	cfg.kind = BKS_JOB_COMMIT;
	cfg.chain = c.chain;
	cfg.top = mid;
	cfg.chunk = 512u << 10;
	cfg.depth = 2;
	cfg.done = job_done;
	cfg.arg = &c;
	if (bks_job_start(&c.job, &cfg, &err) < 0)
		fail_msg("start: %s", err.msg);
	run_job(&c, 100, false);
	if (c.result != 0)
		fail_msg("commit: %s", c.err);
	assert_int_equal(bks_chain_layers(c.chain), 2);
	assert_string_equal(c.recorded, ""); /* the chain string is the same */
	verify(&c);
	close_all(&c);
	sh("cd %s && qemu-img check -q top.qcow2 && qemu-img check -q "
	   "base.qcow2 && qemu-img info top.qcow2 | grep -q 'backing file: "
	   ".*base.qcow2'",
	   dir);
}

/* The owner cannot record the new chain: the job fails, the chain stays
 * (T over B, B read-only again) and reads the same. */
static void test_commit_switch_fails(void **state)
{
	struct bks_job_config cfg = {0};
	struct bks_error err = {0};
	struct bks_layer *base;
	struct ctx c;

	(void)state;
	open_images(&c);
	cfg.kind = BKS_JOB_COMMIT;
	cfg.chain = c.chain;
	cfg.commit_chain = refuse_chain;
	cfg.done = job_done;
	cfg.arg = &c;
	if (bks_job_start(&c.job, &cfg, &err) < 0)
		fail_msg("start: %s", err.msg);
	run_job(&c, 50, false);
	assert_int_equal(c.result, -EIO);
	assert_non_null(strstr(c.err, "cannot record"));
	assert_int_equal(bks_chain_layers(c.chain), 2);
	base = bks_layer_child(bks_chain_sink(c.chain), BKS_CHILD_BACKING);
	assert_true(bks_next_info(base)->read_only);
	verify(&c);
	close_all(&c);
	sh("cd %s && qemu-img check -q top.qcow2 && qemu-img check -q "
	   "base.qcow2",
	   dir);
}

static void test_vhd(void **state, enum bks_job_kind kind)
{
	struct ctx c;

	open_vhd(&c);
	(void)state;
	start(&c, kind);
	run_job(&c, 100, false);
	if (c.result != 0)
		fail_msg("%s: %s", bks_job_kind_name(kind), c.err);
	assert_int_equal(bks_chain_layers(c.chain), 1);
	verify(&c);
	close_all(&c);
	/* qemu-img has no check for vpc: blkstack-img's. */
	sh("build/bin/blkstack-img check %s/%s >/dev/null", dir,
	   kind == BKS_JOB_COMMIT ? "base.vhd" : "top.vhd");
	if (kind == BKS_JOB_STREAM)
		sh("! build/bin/blkstack-img info %s/top.vhd | grep -q "
		   "'backing file'",
		   dir);
}

static void test_vhd_commit(void **state)
{
	test_vhd(state, BKS_JOB_COMMIT);
}

static void test_vhd_stream(void **state)
{
	test_vhd(state, BKS_JOB_STREAM);
}

static void test_bad_config(void **state)
{
	struct bks_job_config cfg = {0};
	struct bks_error err = {0};
	struct bks_job *job = NULL;
	struct ctx c;

	(void)state;
	open_images(&c);
	cfg.kind = BKS_JOB_COMMIT;
	cfg.chain = c.chain;
	cfg.done = job_done;
	/* A commit of the sink without commit_chain. */
	assert_int_equal(bks_job_start(&job, &cfg, &err), -EINVAL);
	assert_null(job);
	cfg.commit_chain = record_chain;
	cfg.chunk = 1000; /* not a multiple of the block size */
	assert_int_equal(bks_job_start(&job, &cfg, &err), -EINVAL);
	cfg.chunk = 0;
	cfg.base = bks_chain_sink(c.chain); /* not below the top */
	assert_int_equal(bks_job_start(&job, &cfg, &err), -EINVAL);
	assert_string_equal(bks_job_phase_name(BKS_JOB_CONVERGING),
			    "converging");
	assert_string_equal(bks_job_kind_name(BKS_JOB_STREAM), "stream");
	close_all(&c);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_bad_config),
	    cmocka_unit_test(test_commit),
	    cmocka_unit_test(test_stream),
	    cmocka_unit_test(test_commit_cancel),
	    cmocka_unit_test(test_commit_middle),
	    cmocka_unit_test(test_commit_switch_fails),
	    cmocka_unit_test(test_vhd_commit),
	    cmocka_unit_test(test_vhd_stream),
	};

	return cmocka_run_group_tests(tests, setup, teardown);
}
