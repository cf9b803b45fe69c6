/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Unit tests: the worker's `blkif-connect` arguments (worker-blkif.c's
 * worker_blkif_parse()), which come from blkstack-xenbus but stand for
 * what a guest wrote: every field is checked, and a bad one is named.
 * Connecting itself needs /dev/xen; on a machine without it the connect
 * fails saying which device (tests/bats/ctl.bats), and the ring is proven
 * under real Xen (make check-xen's 4.20 tier).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "worker-blkif.h"

/* Parse the words of line (at most 8); returns worker_blkif_parse()'s. */
static int parse(const char *line, struct worker_blkif_args *a,
		 struct bks_error *err)
{
	char buf[512], *argv[9], *save = NULL;
	int argc = 0;

	snprintf(buf, sizeof(buf), "%s", line);
	for (char *t = strtok_r(buf, " ", &save); t && argc < 8;
	     t = strtok_r(NULL, " ", &save))
		argv[argc++] = t;
	argv[argc] = NULL;
	memset(err, 0, sizeof(*err));
	return worker_blkif_parse(argc, argv, a, err);
}

static void test_good(void **state)
{
	struct worker_blkif_args a;
	struct bks_error err;

	(void)state;
	assert_int_equal(parse("blkif-connect 5 12 8 - w", &a, &err), 0);
	assert_int_equal(a.domid, 5);
	assert_int_equal(a.port, 12);
	assert_int_equal(a.order, 0);
	assert_int_equal(a.refs[0], 8);
	assert_int_equal(a.abi, BKS_BLKIF_ABI_X86_64);
	assert_false(a.read_only);

	assert_int_equal(
	    parse(
		"blkif-connect 32751 2147483647 1,2,3,4294967295 x86_32-abi r",
		&a, &err),
	    0);
	assert_int_equal(a.domid, 32751);
	assert_int_equal(a.order, 2);
	assert_int_equal(a.refs[3], 4294967295u);
	assert_int_equal(a.abi, BKS_BLKIF_ABI_X86_32);
	assert_true(a.read_only);

	/* 16 pages: max-ring-page-order 4. */
	assert_int_equal(parse("blkif-connect 1 1 "
			       "1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16 "
			       "x86_64-abi w",
			       &a, &err),
			 0);
	assert_int_equal(a.order, 4);
	assert_int_equal(a.refs[15], 16);
}

/* Each bad line is refused, and the message names what is wrong. */
static void test_bad(void **state)
{
	static const struct {
		const char *line, *says;
		int rc;
	} cases[] = {
	    {"blkif-connect 5 12 8 -", "usage", -EINVAL},
	    {"blkif-connect 5 12 8 - w extra", "usage", -EINVAL},
	    {"blkif-connect 0 12 8 - w", "DOMID", -EINVAL},
	    {"blkif-connect 32752 12 8 - w", "DOMID", -EINVAL},
	    {"blkif-connect 05 12 8 - w", "DOMID", -EINVAL},
	    {"blkif-connect -5 12 8 - w", "DOMID", -EINVAL},
	    {"blkif-connect 5x 12 8 - w", "DOMID", -EINVAL},
	    {"blkif-connect 5 0 8 - w", "PORT", -EINVAL},
	    {"blkif-connect 5 2147483648 8 - w", "PORT", -EINVAL},
	    {"blkif-connect 5 12 x - w", "not a number", -EINVAL},
	    {"blkif-connect 5 12 4294967296 - w", "not a number", -EINVAL},
	    {"blkif-connect 5 12 8, - w", "commas", -EINVAL},
	    {"blkif-connect 5 12 ,8 - w", "commas", -EINVAL},
	    {"blkif-connect 5 12 8,,9 - w", "commas", -EINVAL},
	    {"blkif-connect 5 12 1,2,3 - w", "power of two", -EINVAL},
	    {"blkif-connect 5 12 "
	     "1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,"
	     "25,26,27,28,29,30,31,32 - w",
	     "more than 16", -EINVAL},
	    {"blkif-connect 5 12 8 x86_16-abi w", "x86_16", -EPROTONOSUPPORT},
	    {"blkif-connect 5 12 8 - rw", "MODE", -EINVAL},
	};
	struct worker_blkif_args a;
	struct bks_error err;

	(void)state;
	for (size_t i = 0; i < sizeof(cases) / sizeof(*cases); i++) {
		int rc = parse(cases[i].line, &a, &err);

		if (rc != cases[i].rc || !strstr(err.msg, cases[i].says))
			fail_msg("%s: rc %d, '%s' (want %d, '%s')",
				 cases[i].line, rc, err.msg, cases[i].rc,
				 cases[i].says);
	}
}

/*
 * blkif-watch's event line: one JSON object and its newline, the worker's
 * name before the reason; a reason holding quotes, newlines or control
 * bytes (a guest's doing) stays one line.
 */
static void test_event_line(void **state)
{
	struct json_writer j;
	char line[512];

	(void)state;
	json_writer_init(&j, 4096);
	worker_blkif_event_json(&j, "vm1", "broken",
				"blkif: the ring of domain 5 is broken: "
				"req_prod 99 is 67 past the responses (0)");
	assert_int_equal(json_error(&j), 0);
	assert_true(json_len(&j) < sizeof(line));
	snprintf(line, sizeof(line), "%.*s", (int)json_len(&j), j.buf);
	assert_string_equal(line,
			    "{\"event\":\"blkif\",\"blkif\":\"broken\","
			    "\"error\":\"vm1: blkif: the ring of domain 5 is "
			    "broken: req_prod 99 is 67 past the responses "
			    "(0)\"}\n");
	json_reset(&j);
	worker_blkif_event_json(&j, "vm1", "none", "say \"x\"\nand\x01 more");
	assert_int_equal(json_error(&j), 0);
	snprintf(line, sizeof(line), "%.*s", (int)json_len(&j), j.buf);
	/* One line: its only newline is the last byte. */
	assert_ptr_equal(strchr(line, '\n'), line + strlen(line) - 1);
	assert_non_null(strstr(line, "\"blkif\":\"none\""));
	assert_non_null(strstr(line, "vm1: say \\\"x\\\"\\nand"));
	json_writer_free(&j);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_good),
	    cmocka_unit_test(test_bad),
	    cmocka_unit_test(test_event_line),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
