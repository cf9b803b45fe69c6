/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Unit tests: bks_image_create() (libblkstack/image-create.c) on real
 * files, checked by the real qemu-img (qcow2, dynamic VHD) and by
 * blkstack-img check and blkstack's own open (VHD differencing disks,
 * which qemu cannot open), and its failures: an existing path, a bad
 * format or backing, a write failing half-way (the file size limit), each
 * leaving no file behind.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include "blkstack/chain.h"
#include "blkstack/image-create.h"
#include "blkstack/loop.h"
#include "unit-util.h"

#define IMG "build/bin/blkstack-img"

static char dir[256];

/* A shell command (unit-util.h): its status. */
#define sh unit_sh

static void must(int rc, const char *what)
{
	if (rc != 0)
		fail_msg("failed: %s", what);
}

static int setup(void **state)
{
	const char *base = getenv("BKS_TEST_TMPDIR");

	(void)state;
	if (system("qemu-img --version >/dev/null 2>&1") != 0)
		return -1;
	if (access(IMG, X_OK) != 0)
		return -1; /* built by make before the tests */
	snprintf(dir, sizeof(dir), "%s/blkstack-ic-XXXXXX",
		 base && *base ? base : "/var/tmp");
	if (!mkdtemp(dir))
		return -1;
	return 0;
}

static int teardown(void **state)
{
	(void)state;
	if (dir[0])
		sh("rm -rf '%s'", dir);
	return 0;
}

static bool exists(const char *path)
{
	struct stat st;

	return stat(path, &st) == 0;
}

/* Open path's chain read-only and return its layer count. */
static unsigned int layers_of(const char *spec)
{
	struct bks_error err = {0};
	struct bks_loop *loop;
	struct bks_chain *chain;
	unsigned int n;

	assert_int_equal(bks_loop_new(&loop, &err), 0);
	if (bks_chain_open(&chain, spec, loop, true, &err) < 0)
		fail_msg("open %s: %s", spec, err.msg);
	n = bks_chain_layers(chain);
	bks_chain_close(chain);
	bks_loop_free(loop);
	return n;
}

static void create_ok(const char *path, const char *fmt, const char *backing,
		      uint64_t size)
{
	struct bks_error err = {0};

	if (bks_image_create(path, fmt, backing, size, &err) < 0)
		fail_msg("create %s: %s", path, err.msg);
}

static void test_qcow2_plain(void **state)
{
	char p[512], spec[600];

	(void)state;
	snprintf(p, sizeof(p), "%s/plain.qcow2", dir);
	create_ok(p, "qcow2", NULL, 8 << 20);
	must(sh("qemu-img check -q '%s'", p), "qemu-img check");
	must(sh("qemu-img info --output=json '%s' | grep -q "
		"'\"virtual-size\": 8388608'",
		p),
	     "virtual size 8M");
	must(sh("qemu-img info '%s' | grep -q '^file format: qcow2'", p),
	     "format qcow2");
	must(sh("qemu-io -f qcow2 -c 'write -P 7 1M 64k' '%s' >/dev/null && "
		"qemu-img check -q '%s'",
		p, p),
	     "a write by qemu, then check");
	snprintf(spec, sizeof(spec), "qcow2:%s", p);
	assert_int_equal(layers_of(spec), 1);
	unlink(p);
}

static void test_qcow2_backed(void **state)
{
	char base[512], raw[512], top[512], top2[512], b[600];

	(void)state;
	snprintf(base, sizeof(base), "%s/base.qcow2", dir);
	snprintf(raw, sizeof(raw), "%s/base.raw", dir);
	snprintf(top, sizeof(top), "%s/top.qcow2", dir);
	snprintf(top2, sizeof(top2), "%s/top-raw.qcow2", dir);
	must(sh("qemu-img create -q -f qcow2 '%s' 6M && "
		"qemu-io -f qcow2 -c 'write -P 3 0 1M' '%s' >/dev/null && "
		"qemu-img create -q -f raw '%s' 4M",
		base, base, raw),
	     "bases");
	/* size 0: the backing's */
	snprintf(b, sizeof(b), "qcow2:%s", base);
	create_ok(top, "qcow2", b, 0);
	must(sh("qemu-img check -q '%s'", top), "check top");
	must(sh("qemu-img info --output=json '%s' | grep -q "
		"'\"virtual-size\": 6291456'",
		top),
	     "size of the backing");
	must(sh("qemu-img info --output=json '%s' | grep -q "
		"'\"backing-filename-format\": \"qcow2\"' && "
		"qemu-img info --output=json '%s' | grep -q "
		"'\"backing-filename\": \"%s\"'",
		top, top, base),
	     "backing name and format");
	/* The data of the base shows through. */
	must(sh("qemu-io -f qcow2 -c 'read -P 3 0 1M' '%s' >/dev/null", top),
	     "read through");
	snprintf(b, sizeof(b), "qcow2:%s", top);
	assert_int_equal(layers_of(b), 2);
	/* A raw backing, with an explicit size. */
	snprintf(b, sizeof(b), "aio:%s", raw);
	create_ok(top2, "qcow2", b, 4 << 20);
	must(sh("qemu-img info --output=json '%s' | grep -q "
		"'\"backing-filename-format\": \"raw\"'",
		top2),
	     "raw backing format");
	must(sh("qemu-img check -q '%s'", top2), "check top-raw");
	unlink(top);
	unlink(top2);
	unlink(base);
	unlink(raw);
}

static void test_vhd(void **state)
{
	char base[512], top[512], b[600], spec[600];

	(void)state;
	snprintf(base, sizeof(base), "%s/base.vhd", dir);
	snprintf(top, sizeof(top), "%s/top.vhd", dir);
	create_ok(base, "vhd", NULL, 8 << 20);
	must(sh(IMG " check '%s' >/dev/null", base), "blkstack-img check");
	/* Rounded up to what its CHS geometry covers, as blkstack-img. */
	must(sh("qemu-img info -f vpc --output=json '%s' | grep -q "
		"'\"virtual-size\": 8390656'",
		base),
	     "qemu-img: virtual size 8M (rounded to the geometry)");
	must(sh("qemu-io -f vpc -c 'write -P 5 0 1M' '%s' >/dev/null", base),
	     "qemu writes it");
	must(sh(IMG " check '%s' >/dev/null", base), "check after qemu");
	snprintf(b, sizeof(b), "vhd:%s", base);
	create_ok(top, "vhd", b, 0);
	must(sh(IMG " check '%s' >/dev/null", top), "check differencing");
	must(sh(IMG " info '%s' | grep -qi differencing", top),
	     "info: differencing");
	snprintf(spec, sizeof(spec), "vhd:%s", top);
	assert_int_equal(layers_of(spec), 2);
	unlink(top);
	unlink(base);
}

static void test_refused(void **state)
{
	struct bks_error err = {0};
	char p[512], q[512], b[600];

	(void)state;
	snprintf(p, sizeof(p), "%s/exists.qcow2", dir);
	snprintf(q, sizeof(q), "%s/new.img", dir);
	create_ok(p, "qcow2", NULL, 1 << 20);
	/* Never overwrites. */
	assert_int_equal(bks_image_create(p, "qcow2", NULL, 2 << 20, &err),
			 -EEXIST);
	assert_non_null(strstr(err.msg, p));
	must(sh("qemu-img info --output=json '%s' | grep -q "
		"'\"virtual-size\": 1048576'",
		p),
	     "unchanged");
	assert_int_equal(bks_image_create(q, "raw", NULL, 1 << 20, &err),
			 -EINVAL);
	assert_int_equal(bks_image_create(q, "qcow2", NULL, 0, &err), -EINVAL);
	assert_int_equal(bks_image_create(q, "qcow2", NULL, 1000, &err),
			 -EINVAL);
	/* A VHD's parent is a VHD. */
	snprintf(b, sizeof(b), "qcow2:%s", p);
	assert_int_equal(bks_image_create(q, "vhd", b, 0, &err), -EINVAL);
	assert_non_null(strstr(err.msg, q));
	/* A relative backing path, a missing backing. */
	assert_int_equal(
	    bks_image_create(q, "qcow2", "qcow2:rel.qcow2", 0, &err), -EINVAL);
	snprintf(b, sizeof(b), "qcow2:%s/missing.qcow2", dir);
	assert_int_equal(bks_image_create(q, "qcow2", b, 0, &err), -ENOENT);
	assert_false(exists(q));
	unlink(p);
}

/* A write that fails half-way (the file size limit: EFBIG) leaves no
 * file. */
static void test_write_fails(void **state)
{
	struct bks_error err = {0};
	struct rlimit old,
	    small = {.rlim_cur = 8192, .rlim_max = RLIM_INFINITY};
	char p[512];
	int rc;

	(void)state;
	snprintf(p, sizeof(p), "%s/big.qcow2", dir);
	assert_int_equal(getrlimit(RLIMIT_FSIZE, &old), 0);
	small.rlim_max = old.rlim_max;
	signal(SIGXFSZ, SIG_IGN);
	assert_int_equal(setrlimit(RLIMIT_FSIZE, &small), 0);
	rc = bks_image_create(p, "qcow2", NULL, 64 << 20, &err);
	assert_int_equal(setrlimit(RLIMIT_FSIZE, &old), 0);
	signal(SIGXFSZ, SIG_DFL);
	assert_int_equal(rc, -EFBIG);
	assert_non_null(strstr(err.msg, p));
	assert_false(exists(p));
	snprintf(p, sizeof(p), "%s/big.vhd", dir);
	assert_int_equal(setrlimit(RLIMIT_FSIZE, &small), 0);
	signal(SIGXFSZ, SIG_IGN);
	rc = bks_image_create(p, "vhd", NULL, 64ull << 30, &err);
	assert_int_equal(setrlimit(RLIMIT_FSIZE, &old), 0);
	signal(SIGXFSZ, SIG_DFL);
	assert_int_equal(rc, -EFBIG);
	assert_false(exists(p));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_qcow2_plain),
	    cmocka_unit_test(test_qcow2_backed),
	    cmocka_unit_test(test_vhd),
	    cmocka_unit_test(test_refused),
	    cmocka_unit_test(test_write_fails),
	};

	return cmocka_run_group_tests(tests, setup, teardown);
}
