/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* Unit tests: errors with context (libblkstack/error.c). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <errno.h>
#include <limits.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#include "blkstack/error.h"

static void test_set_appends_strerror(void **state)
{
	struct bks_error err = {0};
	(void)state;

	assert_int_equal(bks_error_set(&err, ENOENT, "open %s", "/img"),
			 -ENOENT);
	assert_int_equal(err.code, ENOENT);
	assert_string_equal(err.msg, "open /img: No such file or directory");
}

static void test_setmsg_exact(void **state)
{
	struct bks_error err = {0};
	(void)state;

	assert_int_equal(bks_error_setmsg(&err, EINVAL, "position %d", 4),
			 -EINVAL);
	assert_string_equal(err.msg, "position 4");
}

static void test_zero_code_is_not_success(void **state)
{
	struct bks_error err = {0};
	(void)state;

	assert_int_equal(bks_error_set(&err, 0, "x"), -EIO);
	assert_int_equal(err.code, EIO);
	assert_int_equal(bks_error_set(NULL, EPERM, "x"), -EPERM);
}

static void test_prepend(void **state)
{
	struct bks_error err = {0};
	(void)state;

	bks_error_setmsg(&err, EACCES, "write /a");
	assert_int_equal(bks_error_prepend(&err, "%s: ", "add"), -EACCES);
	assert_string_equal(err.msg, "add: write /a");
	assert_int_equal(err.code, EACCES);
}

static void test_truncation_keeps_front(void **state)
{
	struct bks_error err = {0};
	char big[2 * BKS_ERROR_MSG_MAX];
	(void)state;

	memset(big, 'x', sizeof(big) - 1);
	big[sizeof(big) - 1] = '\0';
	bks_error_setmsg(&err, EINVAL, "%s", big);
	assert_int_equal(strlen(err.msg), BKS_ERROR_MSG_MAX - 1);
	bks_error_prepend(&err, "ctx: ");
	assert_int_equal(strncmp(err.msg, "ctx: xxx", 8), 0);
	assert_int_equal(strlen(err.msg), BKS_ERROR_MSG_MAX - 1);
}

/*
 * A path of len bytes (len < PATH_MAX) in components of at most 200
 * bytes, ending in "/the-end.img", as the kernel would accept.
 */
static void long_path(char *path, size_t len, char fill)
{
	static const char end[] = "/the-end.img";
	size_t n = 0;

	while (n < len - (sizeof(end) - 1)) {
		path[n] = n % 200 == 0 ? '/' : fill;
		n++;
	}
	memcpy(path + n, end, sizeof(end));
}

static bool ends_with(const char *s, const char *tail)
{
	size_t a = strlen(s), b = strlen(tail);

	return a >= b && strcmp(s + a - b, tail) == 0;
}

/* A 4000-byte path: the operation and the errno text both survive. */
static void test_long_path_keeps_strerror(void **state)
{
	static char path[4001];
	struct bks_error err = {0};
	(void)state;

	long_path(path, 4000, 'p');
	assert_int_equal(strlen(path), 4000);
	assert_int_equal(bks_error_set(&err, ENOENT, "open %s", path), -ENOENT);
	assert_int_equal(strlen(err.msg), BKS_ERROR_MSG_MAX - 1);
	assert_int_equal(strncmp(err.msg, "open /ppp", 9), 0);
	assert_non_null(strstr(err.msg, "pp...pp"));
	if (!ends_with(err.msg, "pp/the-end.img: No such file or directory"))
		fail_msg("message '%s' lost its end", err.msg);
	/* Up to PATH_MAX too, with context after the path. */
	{
		static char big[PATH_MAX];

		long_path(big, PATH_MAX - 1, 'q');
		bks_error_set(&err, EACCES, "layer 2 (aio): open %s read-write",
			      big);
		assert_int_equal(
		    strncmp(err.msg, "layer 2 (aio): open /qq", 23), 0);
		if (!ends_with(err.msg,
			       "/the-end.img read-write: Permission denied"))
			fail_msg("message '%s' lost its end", err.msg);
	}
}

/* An outer context on a full message keeps the reason at the end. */
static void test_prepend_keeps_strerror(void **state)
{
	static char path[600];
	struct bks_error err = {0};
	(void)state;

	long_path(path, 480, 'p');
	bks_error_set(&err, ENOENT, "open %s", path);
	assert_true(ends_with(err.msg, "/the-end.img: No such file or "
				       "directory"));
	assert_int_equal(bks_error_prepend(&err, "layer %u (%s): ", 2, "aio"),
			 -ENOENT);
	assert_int_equal(strlen(err.msg), BKS_ERROR_MSG_MAX - 1);
	assert_int_equal(strncmp(err.msg, "layer 2 (aio): open /ppp", 24), 0);
	if (!ends_with(err.msg, "/the-end.img: No such file or directory"))
		fail_msg("message '%s' lost its end", err.msg);
	/* A long prefix (a path of its own) is shortened the same way. */
	long_path(path, 590, 'r');
	bks_error_prepend(&err, "%s: ", path);
	assert_int_equal(strncmp(err.msg, "/rrr", 4), 0);
	assert_true(ends_with(err.msg, ": No such file or directory"));
}

/* Messages without strerror keep their end (the reason) too. */
static void test_setmsg_keeps_reason(void **state)
{
	static char path[3000];
	struct bks_error err = {0};
	(void)state;

	long_path(path, 2990, 'p');
	bks_error_setmsg(&err, EINVAL,
			 "chain: layer 1 (aio) at offset 0: path '%s' must be "
			 "an absolute path",
			 path + 1);
	assert_int_equal(
	    strncmp(err.msg, "chain: layer 1 (aio) at offset 0: ", 34), 0);
	if (!ends_with(err.msg, "the-end.img' must be an absolute path"))
		fail_msg("message '%s' lost its end", err.msg);
}

/* Shortening never splits a UTF-8 sequence. */
static void test_shorten_utf8(void **state)
{
	static char path[2001];
	struct bks_error err = {0};
	const unsigned char *p;
	(void)state;

	path[0] = '/';
	for (size_t i = 1; i + 1 < 2000; i += 2)
		memcpy(path + i, "\xc3\xa9", 2); /* é */
	path[1999] = 'x';
	path[2000] = '\0';
	bks_error_set(&err, ENOENT, "open %s", path);
	assert_true(ends_with(err.msg, "x: No such file or directory"));
	/* Every é is whole: a lead byte is followed by its continuation. */
	for (p = (const unsigned char *)err.msg; *p; p++) {
		if (*p == 0xc3)
			assert_int_equal(*++p, 0xa9);
		else
			assert_true(*p < 0x80);
	}
}

static void test_control_chars_sanitized(void **state)
{
	struct bks_error err = {0};
	(void)state;

	bks_error_setmsg(&err, EINVAL, "bad %s", "a\nb\x1b[2Jc\x7f");
	assert_string_equal(err.msg, "bad a?b?[2Jc?");
}

static void test_clear(void **state)
{
	struct bks_error err = {0};
	(void)state;

	bks_error_setmsg(&err, EINVAL, "x");
	bks_error_clear(&err);
	assert_int_equal(err.code, 0);
	assert_string_equal(err.msg, "");
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_set_appends_strerror),
	    cmocka_unit_test(test_setmsg_exact),
	    cmocka_unit_test(test_zero_code_is_not_success),
	    cmocka_unit_test(test_prepend),
	    cmocka_unit_test(test_truncation_keeps_front),
	    cmocka_unit_test(test_long_path_keeps_strerror),
	    cmocka_unit_test(test_prepend_keeps_strerror),
	    cmocka_unit_test(test_setmsg_keeps_reason),
	    cmocka_unit_test(test_shorten_utf8),
	    cmocka_unit_test(test_control_chars_sanitized),
	    cmocka_unit_test(test_clear),
	};

	return cmocka_run_group_tests_name("error", tests, NULL, NULL);
}
