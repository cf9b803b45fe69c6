/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Unit tests: the strict unsigned-decimal parser (helpers/common/dec.c),
 * every boundary: 0, max, max + 1, 64-bit overflow, each refused form.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <errno.h>
#include <string.h>

#include "dec.h"

#define SENTINEL 0x5a5a5a5a5a5a5a5aull

/* Parse s against max: the return code, *out SENTINEL if untouched. */
static int parse(const char *s, unsigned long long max, unsigned long long *out)
{
	*out = SENTINEL;
	return dec_parse_uint(s, max, out);
}

static void test_accepted(void **state)
{
	unsigned long long v;

	(void)state;
	assert_int_equal(parse("0", 0, &v), 0);
	assert_true(v == 0);
	assert_int_equal(parse("0", 10, &v), 0);
	assert_true(v == 0);
	assert_int_equal(parse("7", 10, &v), 0);
	assert_true(v == 7);
	assert_int_equal(parse("10", 10, &v), 0); /* max itself */
	assert_true(v == 10);
	assert_int_equal(parse("51712", 100000, &v), 0);
	assert_true(v == 51712);
	assert_int_equal(parse("4294967295", UINT32_MAX, &v), 0);
	assert_true(v == UINT32_MAX);
	assert_int_equal(parse("18446744073709551615", UINT64_MAX, &v), 0);
	assert_true(v == UINT64_MAX);
	assert_int_equal(parse("18446744073709551614", UINT64_MAX, &v), 0);
	assert_true(v == UINT64_MAX - 1);
}

static void test_range(void **state)
{
	unsigned long long v;

	(void)state;
	assert_int_equal(parse("1", 0, &v), -ERANGE);
	assert_int_equal(parse("11", 10, &v), -ERANGE); /* max + 1 */
	assert_int_equal(parse("100", 10, &v), -ERANGE);
	assert_int_equal(parse("32752", 0x7fef, &v), -ERANGE);
	assert_int_equal(parse("32751", 0x7fef, &v), 0);
	assert_int_equal(parse("4294967296", UINT32_MAX, &v), -ERANGE);
	/* Past 64 bits: UINT64_MAX + 1, 20 nines, one digit more. */
	assert_int_equal(parse("18446744073709551616", UINT64_MAX, &v),
			 -ERANGE);
	assert_int_equal(parse("99999999999999999999", UINT64_MAX, &v),
			 -ERANGE);
	assert_int_equal(parse("184467440737095516150", UINT64_MAX, &v),
			 -ERANGE);
	assert_int_equal(parse("99999999999999999999", 10, &v), -ERANGE);
	assert_true(v == SENTINEL);
}

static void test_refused(void **state)
{
	static const char *const bad[] = {
	    "",	    "+1", "-1", " 1",  "1 ",  "\t1", "1\n", "0x10",
	    "0X10", "01", "00", "007", "1,2", "1.5", "1e3", "a",
	    "1a",   "-0", "+0", " ",   "0 ",  "1 2",
	};

	(void)state;
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		unsigned long long v;

		assert_int_equal(parse(bad[i], UINT64_MAX, &v), -EINVAL);
		assert_true(v == SENTINEL);
	}
}

/* A value far longer than any number: refused, and read to its end. */
static void test_long(void **state)
{
	static char s[65536 + 2];
	unsigned long long v;

	(void)state;
	memset(s, '9', sizeof(s) - 2);
	s[sizeof(s) - 2] = '\0';
	assert_int_equal(parse(s, UINT64_MAX, &v), -ERANGE);
	assert_true(v == SENTINEL);
	/* A bad character after the overflow is still not a number. */
	s[sizeof(s) - 2] = 'x';
	s[sizeof(s) - 1] = '\0';
	assert_int_equal(parse(s, UINT64_MAX, &v), -EINVAL);
	/* Leading zeros before a small value are refused too. */
	memset(s, '0', sizeof(s) - 2);
	s[sizeof(s) - 3] = '1';
	s[sizeof(s) - 2] = '\0';
	assert_int_equal(parse(s, UINT64_MAX, &v), -EINVAL);
}

static void test_n(void **state)
{
	unsigned long long v = SENTINEL;

	(void)state;
	/* Only the len bytes count: the rest of the string is not read. */
	assert_int_equal(dec_parse_uint_n("123/456", 3, 1000, &v), 0);
	assert_true(v == 123);
	assert_int_equal(dec_parse_uint_n("123/456", 4, 1000, &v), -EINVAL);
	assert_int_equal(dec_parse_uint_n("123", 0, 1000, &v), -EINVAL);
	assert_int_equal(dec_parse_uint_n("0123", 4, 1000, &v), -EINVAL);
	assert_int_equal(dec_parse_uint_n("01", 1, 1000, &v), 0);
	assert_true(v == 0);
	assert_int_equal(dec_parse_uint_n("1001", 4, 1000, &v), -ERANGE);
}

static void test_u32(void **state)
{
	uint32_t v = 7;

	(void)state;
	assert_int_equal(dec_parse_u32("0", 10, &v), 0);
	assert_int_equal(v, 0);
	assert_int_equal(dec_parse_u32("4294967295", UINT32_MAX, &v), 0);
	assert_true(v == UINT32_MAX);
	v = 7;
	assert_int_equal(dec_parse_u32("4294967296", UINT32_MAX, &v), -ERANGE);
	assert_int_equal(dec_parse_u32("2147483648", INT32_MAX, &v), -ERANGE);
	assert_int_equal(dec_parse_u32("18446744073709551616", UINT32_MAX, &v),
			 -ERANGE);
	assert_int_equal(dec_parse_u32("01", 10, &v), -EINVAL);
	assert_int_equal(dec_parse_u32("-1", UINT32_MAX, &v), -EINVAL);
	assert_int_equal(v, 7);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_accepted), cmocka_unit_test(test_range),
	    cmocka_unit_test(test_refused),  cmocka_unit_test(test_long),
	    cmocka_unit_test(test_n),	     cmocka_unit_test(test_u32),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
