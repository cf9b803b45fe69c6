/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* Unit tests: errors with context (libblkstack/error.c). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <errno.h>
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
	    cmocka_unit_test(test_control_chars_sanitized),
	    cmocka_unit_test(test_clear),
	};

	return cmocka_run_group_tests_name("error", tests, NULL, NULL);
}
