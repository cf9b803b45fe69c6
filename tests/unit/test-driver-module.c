/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Unit tests: loading driver modules (libblkstack/driver-module.c): the
 * real nbd.so and rbd.so of this build (build/lib/blkstack/modules), and
 * the refusals: no module, a file that is not one, a module of another
 * ABI, a driver that is not the library's, a module without its symbol
 * (build/tests/modules/KIND/nbd.so, from module-bad.c).  The directories
 * are found from argv[0] (build/tests/unit/test-driver-module): under
 * valgrind /proc/self/exe is valgrind's, so BLKSTACK_MODULE_DIR is always
 * set here.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "blkstack/chain.h"
#include "blkstack/driver-module.h"
#include "blkstack/loop.h"

static char build_dir[4096]; /* build/, from argv[0] */

static const struct bks_driver_desc *desc_of(const char *name)
{
	const struct bks_driver_desc *d =
	    bks_driver_desc_lookup(name, strlen(name));

	assert_non_null(d);
	return d;
}

static void set_dir(const char *sub)
{
	char dir[4200];

	snprintf(dir, sizeof(dir), "%s/%s", build_dir, sub);
	assert_int_equal(setenv("BLKSTACK_MODULE_DIR", dir, 1), 0);
}

/* Loads with err saying want (a part of the message) and code. */
static void refused(const char *name, int code, const char *want)
{
	const struct bks_driver *drv = (const void *)1;
	struct bks_error err = {0};

	assert_int_equal(bks_driver_module_load(desc_of(name), &drv, &err),
			 -code);
	assert_null(drv);
	assert_int_equal(err.code, code);
	if (!strstr(err.msg, want))
		fail_msg("message '%s' lacks '%s'", err.msg, want);
}

/* The registry: nbd and rbd are modules, and have no built-in driver. */
static void test_registry(void **state)
{
	(void)state;
	for (const char *const *n = (const char *const[]){"nbd", "rbd", NULL};
	     *n; n++) {
		const struct bks_driver_desc *d = desc_of(*n);

		assert_true(d->module);
		assert_non_null(d->check);
		assert_null(bks_driver_of(d));
		assert_null(bks_driver_lookup(*n, strlen(*n)));
	}
	assert_false(desc_of("aio")->module);
	refused("aio", EINVAL, "driver aio: not a module");
}

/* This build's modules load, match their descs, and load once. */
static void test_real(void **state)
{
	const struct bks_driver *a = NULL, *b = NULL;
	struct bks_error err = {0};
	char path[BKS_MODULE_PATH_MAX];

	(void)state;
	set_dir("lib/blkstack/modules");
	for (const char *const *n = (const char *const[]){"nbd", "rbd", NULL};
	     *n; n++) {
		const struct bks_driver_desc *d = desc_of(*n);

		assert_int_equal(bks_driver_module_path(d, path, sizeof(path)),
				 0);
		assert_non_null(strstr(path, "/modules/"));
		if (bks_driver_module_load(d, &a, &err) < 0)
			fail_msg("%s", err.msg);
		assert_int_equal(bks_driver_module_load(d, &b, &err), 0);
		assert_ptr_equal(a, b);
		assert_string_equal(a->name, *n);
		assert_ptr_equal(a->check, d->check);
		assert_true(a->module);
		assert_non_null(a->open);
		assert_non_null(a->read);
	}
}

static void test_missing(void **state)
{
	(void)state;
	set_dir("no-such-dir");
	refused("nbd", ENOENT, "no-such-dir/nbd.so");
	refused("rbd", ENOENT, "driver rbd: no module");
}

/* A file that is no shared object: dlopen's reason in the message. */
static void test_not_elf(void **state)
{
	char dir[] = "/tmp/test-driver-module.XXXXXX", file[64];
	FILE *f;

	(void)state;
	assert_non_null(mkdtemp(dir));
	snprintf(file, sizeof(file), "%s/nbd.so", dir);
	f = fopen(file, "w");
	assert_non_null(f);
	fputs("not a shared object\n", f);
	assert_int_equal(fclose(f), 0);
	assert_int_equal(setenv("BLKSTACK_MODULE_DIR", dir, 1), 0);
	refused("nbd", ELIBBAD, "dlopen");
	unlink(file);
	rmdir(dir);
}

static void test_bad_modules(void **state)
{
	(void)state;
	set_dir("tests/modules/abi");
	refused("nbd", EPROTO, "a module of another build");
	set_dir("tests/modules/desc");
	refused("nbd", EPROTO, "not the nbd the library knows");
	set_dir("tests/modules/nosym");
	refused("nbd", ELIBBAD, "has no bks_module_nbd");
}

/* A chain's open names the layer in front of the loader's message. */
static void test_chain_open(void **state)
{
	struct bks_loop *loop = NULL;
	struct bks_chain *chain = NULL;
	struct bks_error err = {0};

	(void)state;
	set_dir("no-such-dir");
	assert_int_equal(bks_loop_new(&loop, &err), 0);
	assert_true(bks_chain_open(&chain, "log:|nbd:nbd://localhost/x", loop,
				   false, &err) < 0);
	assert_null(chain);
	if (!strstr(err.msg, "layer 2 (nbd): driver nbd: no module"))
		fail_msg("message '%s'", err.msg);
	bks_loop_free(loop);
}

int main(int argc, char **argv)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_registry),
	    cmocka_unit_test(test_real),
	    cmocka_unit_test(test_missing),
	    cmocka_unit_test(test_not_elf),
	    cmocka_unit_test(test_bad_modules),
	    cmocka_unit_test(test_chain_open),
	};
	char *slash;

	(void)argc;
	/* build/tests/unit/test-driver-module -> build */
	snprintf(build_dir, sizeof(build_dir), "%s", argv[0]);
	for (int i = 0; i < 3; i++) {
		slash = strrchr(build_dir, '/');
		if (!slash) {
			fprintf(stderr,
				"test-driver-module: run it as "
				"build/tests/unit/test-driver-module\n");
			return 1;
		}
		*slash = '\0';
	}
	return cmocka_run_group_tests(tests, NULL, NULL);
}
