/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* Unit tests: reading a small file whole (helpers/common/small-file.c). */
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

#include "small-file.h"

struct dir {
	char path[64];
	char file[96];
};

static int setup(void **state)
{
	struct dir *d = calloc(1, sizeof(*d));

	assert_non_null(d);
	snprintf(d->path, sizeof(d->path), "/tmp/test-small-file.XXXXXX");
	assert_non_null(mkdtemp(d->path));
	snprintf(d->file, sizeof(d->file), "%s/f", d->path);
	*state = d;
	return 0;
}

static int teardown(void **state)
{
	struct dir *d = *state;
	char link[128];

	snprintf(link, sizeof(link), "%s/l", d->path);
	unlink(link);
	unlink(d->file);
	rmdir(d->path);
	free(d);
	return 0;
}

static void put(const char *path, const char *text)
{
	FILE *f = fopen(path, "w");

	assert_non_null(f);
	assert_int_equal(fputs(text, f) >= 0, 1);
	assert_int_equal(fclose(f), 0);
}

static void test_reads_whole(void **state)
{
	struct dir *d = *state;
	char buf[16];

	put(d->file, "1234\n");
	assert_int_equal(small_file_read(d->file, buf, sizeof(buf)), 5);
	assert_string_equal(buf, "1234\n");
	/* Empty is fine: length 0, an empty string. */
	put(d->file, "");
	assert_int_equal(small_file_read(d->file, buf, sizeof(buf)), 0);
	assert_string_equal(buf, "");
}

static void test_too_large(void **state)
{
	struct dir *d = *state;
	char buf[8];

	/* size - 1 bytes fit; size - 1 bytes or more do not (never cut). */
	put(d->file, "123456");
	assert_int_equal(small_file_read(d->file, buf, sizeof(buf)), 6);
	put(d->file, "1234567");
	assert_int_equal(small_file_read(d->file, buf, sizeof(buf)), -EFBIG);
	put(d->file, "123456789");
	assert_int_equal(small_file_read(d->file, buf, sizeof(buf)), -EFBIG);
	assert_int_equal(small_file_read(d->file, buf, 1), -EINVAL);
}

static void test_refuses(void **state)
{
	struct dir *d = *state;
	char buf[16], link[128];

	assert_int_equal(small_file_read(d->file, buf, sizeof(buf)), -ENOENT);
	put(d->file, "x");
	snprintf(link, sizeof(link), "%s/l", d->path);
	assert_int_equal(symlink(d->file, link), 0);
	assert_int_equal(small_file_read(link, buf, sizeof(buf)), -ELOOP);
	assert_int_equal(small_file_read(d->path, buf, sizeof(buf)), -EISDIR);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test_setup_teardown(test_reads_whole, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_too_large, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_refuses, setup, teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
