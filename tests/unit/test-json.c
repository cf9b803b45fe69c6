/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* Unit tests: the control protocol's JSON writer and reader
 * (helpers/common/json.c).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <errno.h>
#include <string.h>

#include "json.h"

/* The writer's text so far, NUL-terminated (in a static buffer). */
static const char *text(const struct json_writer *j)
{
	static char buf[4096];

	assert_true(json_len(j) < sizeof(buf));
	memcpy(buf, j->buf, json_len(j));
	buf[json_len(j)] = '\0';
	return buf;
}

static void test_writer_structure(void **state)
{
	struct json_writer j;
	(void)state;

	json_writer_init(&j, 1 << 20);
	json_obj_begin(&j);
	json_kv_bool(&j, "ok", true);
	json_kv_u64(&j, "max", UINT64_MAX);
	json_key(&j, "min");
	json_i64(&j, INT64_MIN);
	json_key(&j, "a");
	json_arr_begin(&j);
	json_arr_begin(&j);
	json_u64(&j, 1);
	json_u64(&j, 2);
	json_arr_end(&j);
	json_arr_begin(&j);
	json_arr_end(&j);
	json_null(&j);
	json_obj_begin(&j);
	json_obj_end(&j);
	json_arr_end(&j);
	json_obj_end(&j);
	json_raw(&j, "\n", 1);
	assert_int_equal(json_error(&j), 0);
	assert_string_equal(text(&j),
			    "{\"ok\":true,\"max\":18446744073709551615,"
			    "\"min\":-9223372036854775808,"
			    "\"a\":[[1,2],[],null,{}]}\n");
	/* A second top-level value is a new document: no comma. */
	json_obj_begin(&j);
	json_obj_end(&j);
	assert_string_equal(text(&j) + json_len(&j) - 3, "\n{}");
	json_writer_free(&j);
}

static void test_writer_escapes(void **state)
{
	struct json_writer j;
	(void)state;

	json_writer_init(&j, 1 << 20);
	json_str(&j, "q\" b\\ n\n t\t c\x01 d\x7f \xc3\xa9 \xe2\x82\xac "
		     "\xf0\x9f\x98\x80");
	assert_string_equal(text(&j), "\"q\\\" b\\\\ n\\n t\\t c\\u0001 "
				      "d\\u007f \xc3\xa9 \xe2\x82\xac "
				      "\xf0\x9f\x98\x80\"");
	json_reset(&j);
	/* Invalid UTF-8: a lone continuation byte, an overlong '/', a
	 * surrogate, a truncated sequence. */
	json_str(&j, "a\x80 \xc0\xaf \xed\xa0\x80 \xe2\x82");
	assert_string_equal(text(&j), "\"a\\ufffd \\ufffd\\ufffd "
				      "\\ufffd\\ufffd\\ufffd \\ufffd\\ufffd\"");
	json_writer_free(&j);
}

static void test_writer_errors_are_sticky(void **state)
{
	struct json_writer j;
	size_t mark;
	(void)state;

	json_writer_init(&j, 16);
	json_obj_begin(&j);
	json_kv_str(&j, "key", "a value that does not fit");
	assert_int_equal(json_error(&j), -E2BIG);
	json_u64(&j, 1);
	assert_int_equal(json_error(&j), -E2BIG);
	/* Rewinding forgets the failed reply, keeps what came before. */
	json_rewind(&j, 0);
	assert_int_equal(json_error(&j), 0);
	json_arr_begin(&j);
	json_arr_end(&j);
	mark = json_len(&j);
	assert_string_equal(text(&j), "[]");
	json_obj_end(&j); /* nothing open */
	assert_int_equal(json_error(&j), -EINVAL);
	json_rewind(&j, mark);
	json_key(&j, "k"); /* a key outside an object */
	assert_int_equal(json_error(&j), -EINVAL);
	json_writer_free(&j);
}

static void test_writer_depth(void **state)
{
	struct json_writer j;
	(void)state;

	json_writer_init(&j, 1 << 20);
	for (int i = 0; i < JSON_MAX_DEPTH; i++)
		json_arr_begin(&j);
	assert_int_equal(json_error(&j), 0);
	json_arr_begin(&j);
	assert_int_equal(json_error(&j), -EINVAL);
	json_writer_free(&j);
}

static void test_parse_and_get(void **state)
{
	static const char doc_text[] =
	    " {\"ok\":true,\"n\":42,\"big\":18446744073709551615,"
	    "\"over\":18446744073709551616,\"neg\":-1,\"f\":1.5e3,"
	    "\"s\":\"a\\\"b\\\\c\\/d\\n\\u00e9\\ud83d\\ude00\\ud800x\\u0000\","
	    "\"arr\":[[0,4096],[8192,512]],\"nul\":null,\"no\":false} ";
	struct json_doc d;
	char buf[64];
	uint64_t v;
	int arr;
	(void)state;

	assert_int_equal(json_parse(&d, doc_text, strlen(doc_text)), 0);
	assert_int_equal(d.toks[0].type, JSON_OBJECT);
	assert_int_equal(d.toks[0].count, 10);
	assert_true(json_is_true(&d, json_get(&d, 0, "ok")));
	assert_false(json_is_true(&d, json_get(&d, 0, "no")));
	assert_int_equal(json_get(&d, 0, "missing"), -1);
	assert_int_equal(json_get_u64(&d, json_get(&d, 0, "n"), &v), 0);
	assert_int_equal(v, 42);
	assert_int_equal(json_get_u64(&d, json_get(&d, 0, "big"), &v), 0);
	assert_true(v == UINT64_MAX);
	assert_int_equal(json_get_u64(&d, json_get(&d, 0, "over"), &v),
			 -ERANGE);
	assert_int_equal(json_get_u64(&d, json_get(&d, 0, "neg"), &v), -EINVAL);
	assert_int_equal(json_get_u64(&d, json_get(&d, 0, "f"), &v), -EINVAL);
	assert_int_equal(json_get_u64(&d, json_get(&d, 0, "s"), &v), -EINVAL);
	assert_int_equal(json_get_u64(&d, -1, &v), -EINVAL);
	assert_int_equal(
	    json_get_str(&d, json_get(&d, 0, "s"), buf, sizeof(buf)), 0);
	assert_string_equal(buf, "a\"b\\c/d\n\xc3\xa9\xf0\x9f\x98\x80"
				 "\xef\xbf\xbdx?");
	assert_int_equal(json_get_str(&d, json_get(&d, 0, "s"), buf, 4),
			 -ENAMETOOLONG);
	assert_string_equal(buf, "a\"b");
	assert_int_equal(
	    json_get_str(&d, json_get(&d, 0, "n"), buf, sizeof(buf)), -EINVAL);
	assert_int_equal(d.toks[json_get(&d, 0, "nul")].type, JSON_NULL);
	/* Walking an array of arrays with next. */
	arr = json_get(&d, 0, "arr");
	assert_int_equal(d.toks[arr].type, JSON_ARRAY);
	assert_int_equal(d.toks[arr].count, 2);
	{
		unsigned int e = (unsigned int)arr + 1;

		assert_int_equal(json_get_u64(&d, (int)e + 1, &v), 0);
		assert_int_equal(v, 0);
		e = d.toks[e].next;
		assert_int_equal(json_get_u64(&d, (int)e + 2, &v), 0);
		assert_int_equal(v, 512);
		assert_int_equal(d.toks[e].next, (unsigned int)arr + 7);
	}
	/* json_get on something that is not an object. */
	assert_int_equal(json_get(&d, arr, "x"), -1);
	json_doc_free(&d);
}

static void test_parse_rejects(void **state)
{
	static const char *const bad[] = {
	    "",		"   ",	   "{",		 "}",	      "[1,]",
	    "[,1]",	"{\"a\"}", "{\"a\":}",	 "{a:1}",     "{\"a\":1,}",
	    "01",	"1.",	   "-",		 "1e",	      ".5",
	    "tru",	"nul",	   "\"abc",	 "\"a\\x\"",  "\"\\u12g4\"",
	    "\"a\tb\"", "[1] [2]", "{\"a\":1}x", "\"\\u12\"", "+1",
	};
	char deep[JSON_MAX_DEPTH * 2 + 4];
	struct json_doc d;
	size_t n = 0;
	(void)state;

	for (size_t i = 0; i < sizeof(bad) / sizeof(*bad); i++) {
		int rc = json_parse(&d, bad[i], strlen(bad[i]));

		if (rc == 0)
			fail_msg("parsed bad JSON '%s'", bad[i]);
		assert_int_equal(rc, -EINVAL);
		assert_null(d.toks);
	}
	/* A NUL inside the text is not white space. */
	assert_int_equal(json_parse(&d, "[1]\0", 4), -EINVAL);
	/* Nesting: JSON_MAX_DEPTH is fine, one more is not. */
	for (int i = 0; i < JSON_MAX_DEPTH; i++)
		deep[n++] = '[';
	for (int i = 0; i < JSON_MAX_DEPTH; i++)
		deep[n++] = ']';
	assert_int_equal(json_parse(&d, deep, n), 0);
	json_doc_free(&d);
	n = 0;
	for (int i = 0; i <= JSON_MAX_DEPTH; i++)
		deep[n++] = '[';
	for (int i = 0; i <= JSON_MAX_DEPTH; i++)
		deep[n++] = ']';
	assert_int_equal(json_parse(&d, deep, n), -E2BIG);
}

/* What the writer writes, the reader reads back. */
static void test_round_trip(void **state)
{
	static const char *const strings[] = {
	    "",
	    "plain",
	    "quote\" and \\",
	    "ctl\x01\x1f\x7f",
	    "\xc3\xa9t\xc3\xa9",
	};
	struct json_writer j;
	struct json_doc d;
	char buf[64];
	(void)state;

	for (size_t i = 0; i < sizeof(strings) / sizeof(*strings); i++) {
		json_writer_init(&j, 1 << 20);
		json_obj_begin(&j);
		json_kv_str(&j, strings[i], strings[i]);
		json_obj_end(&j);
		assert_int_equal(json_parse(&d, j.buf, json_len(&j)), 0);
		assert_int_equal(json_get_str(&d, json_get(&d, 0, strings[i]),
					      buf, sizeof(buf)),
				 0);
		assert_string_equal(buf, strings[i]);
		json_doc_free(&d);
		json_writer_free(&j);
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_writer_structure),
	    cmocka_unit_test(test_writer_escapes),
	    cmocka_unit_test(test_writer_errors_are_sticky),
	    cmocka_unit_test(test_writer_depth),
	    cmocka_unit_test(test_parse_and_get),
	    cmocka_unit_test(test_parse_rejects),
	    cmocka_unit_test(test_round_trip),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
