/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Unit tests: the supervisor's restart policy, configuration keys and
 * channel messages (helpers/supervisor/sup-policy.c, sup-hang.c).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "sup-hang.h"
#include "sup-policy.h"

#define S 1000000000ull

static const struct sup_policy pol = {
    .restart_limit = 3, .restart_window = 60, .hang_timeout = 30};

/* Back-off: at once, then 100 ms doubling; the third crash gives up. */
static void test_backoff_and_give_up(void **state)
{
	struct sup_crashes c = {0};
	unsigned int d = 99;

	(void)state;
	assert_false(sup_crash(&c, &pol, 100 * S, 1 * S, &d));
	assert_int_equal(d, 0);
	assert_false(sup_crash(&c, &pol, 101 * S, 1 * S, &d));
	assert_int_equal(d, 100);
	assert_true(sup_crash(&c, &pol, 102 * S, 1 * S, &d));
	assert_int_equal(c.n, 3);
}

/* Crashes older than the window are forgotten; a long run resets. */
static void test_window(void **state)
{
	struct sup_policy p = pol;
	struct sup_crashes c = {0};
	unsigned int d;

	(void)state;
	p.restart_limit = 2;
	assert_false(sup_crash(&c, &p, 100 * S, 1 * S, &d));
	/* 61 s later: the first is out of the window. */
	assert_false(sup_crash(&c, &p, 161 * S, 61 * S, &d));
	/* It ran a whole window: back-off back to 0. */
	assert_int_equal(d, 0);
	assert_true(sup_crash(&c, &p, 162 * S, 1 * S, &d));
}

/* A worker that ran SUP_STABLE_S was healthy: restarted at once again. */
static void test_stable_run_resets(void **state)
{
	struct sup_policy p = pol;
	struct sup_crashes c = {0};
	unsigned int d;

	(void)state;
	p.restart_limit = 10;
	assert_false(sup_crash(&c, &p, 100 * S, 1 * S, &d));
	assert_false(sup_crash(&c, &p, 101 * S, 1 * S, &d));
	assert_int_equal(d, 100);
	assert_false(sup_crash(&c, &p, 102 * S, 1 * S, &d));
	assert_int_equal(d, 200);
	/* Ran just under SUP_STABLE_S: still backing off. */
	assert_false(sup_crash(&c, &p, 106 * S, SUP_STABLE_S * S - 1, &d));
	assert_int_equal(d, 400);
	assert_false(sup_crash(&c, &p, 112 * S, SUP_STABLE_S * S, &d));
	assert_int_equal(d, 0);
	assert_false(sup_crash(&c, &p, 113 * S, 1 * S, &d));
	assert_int_equal(d, 100);
}

/* The cap: 100, 200, ... never above 5 s. */
static void test_backoff_cap(void **state)
{
	struct sup_policy p = pol;
	struct sup_crashes c = {0};
	unsigned int d = 0, last = 0;

	(void)state;
	p.restart_limit = SUP_RESTART_LIMIT_MAX;
	for (int i = 0; i < 20; i++) {
		assert_false(sup_crash(&c, &p, (100 + (uint64_t)i) * S, S, &d));
		assert_true(d <= SUP_BACKOFF_MAX_MS);
		assert_true(d >= last);
		last = d;
	}
	assert_int_equal(d, SUP_BACKOFF_MAX_MS);
}

static void test_messages(void **state)
{
	struct sup_beat b;
	const char *beat = "beat state=paused inflight=3 oldest_ms=1200";

	(void)state;
	assert_int_equal(sup_msg_parse("stopping", 8, &b), SUP_MSG_STOPPING);
	assert_int_equal(sup_msg_parse(beat, strlen(beat), &b), SUP_MSG_BEAT);
	assert_string_equal(b.state, "paused");
	assert_int_equal(b.inflight, 3);
	assert_int_equal(b.oldest_ms, 1200);
	/* Anything else is refused, not half-read. */
	assert_int_equal(sup_msg_parse("beat", 4, &b), -EINVAL);
	assert_int_equal(
	    sup_msg_parse("beat state=x inflight=1 oldest_ms=", 34, &b),
	    -EINVAL);
	assert_int_equal(
	    sup_msg_parse("beat state=X inflight=1 oldest_ms=1", 35, &b),
	    -EINVAL);
	assert_int_equal(
	    sup_msg_parse("beat state=running inflight=1 oldest_ms=1 x", 43,
			  &b),
	    -EINVAL);
	assert_int_equal(sup_msg_parse("stoppingX", 9, &b), -EINVAL);
}

static void test_hung(void **state)
{
	struct sup_beat b = {.state = "running", .oldest_ms = 0};
	char why[64];

	(void)state;
	assert_false(sup_hung(100 * S, 90 * S, &b, 30, why, sizeof(why)));
	assert_true(sup_hung(130 * S, 99 * S, &b, 30, why, sizeof(why)));
	assert_string_equal(why, "no beat for 31 s");
	b.oldest_ms = 29500;
	assert_true(sup_hung(101 * S, 100 * S, &b, 30, why, sizeof(why)));
	assert_string_equal(why, "a request in flight for 30500 ms");
	/* 0: off. */
	assert_false(sup_hung(1000 * S, 0, &b, 0, why, sizeof(why)));
}

/* The keys of a private configuration file. */
static void test_conf(void **state)
{
	char path[] = "/tmp/test-sup-conf.XXXXXX";
	struct bks_error err = {0};
	struct sup_policy p;
	int fd = mkstemp(path);
	const char *text = "# test\nrestart-limit = 7\nrestart-window = 10\n"
			   "hang-timeout = 0\nhang-action = restart\n"
			   "device = loop\n";

	(void)state;
	assert_true(fd >= 0);
	assert_int_equal(write(fd, text, strlen(text)), (int)strlen(text));
	close(fd);
	setenv("BLKSTACK_CONF", path, 1);
	assert_int_equal(sup_policy_read(&p, &err), 0);
	assert_int_equal(p.restart_limit, 7);
	assert_int_equal(p.restart_window, 10);
	assert_int_equal(p.hang_timeout, 0);
	assert_true(p.hang_restart);

	fd = open(path, O_WRONLY | O_TRUNC);
	assert_true(fd >= 0);
	assert_int_equal(write(fd, "hang-action = kill\n", 19), 19);
	close(fd);
	assert_int_equal(sup_policy_read(&p, &err), -EINVAL);
	assert_non_null(strstr(err.msg, ":1: hang-action: 'kill'"));

	unlink(path);
	/* No file: the defaults. */
	assert_int_equal(sup_policy_read(&p, &err), 0);
	assert_int_equal(p.restart_limit, SUP_RESTART_LIMIT_DEFAULT);
	assert_int_equal(p.restart_window, SUP_RESTART_WINDOW_DEFAULT);
	assert_int_equal(p.hang_timeout, SUP_HANG_TIMEOUT_DEFAULT);
	assert_false(p.hang_restart);
	unsetenv("BLKSTACK_CONF");
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_backoff_and_give_up),
	    cmocka_unit_test(test_window),
	    cmocka_unit_test(test_stable_run_resets),
	    cmocka_unit_test(test_backoff_cap),
	    cmocka_unit_test(test_messages),
	    cmocka_unit_test(test_hung),
	    cmocka_unit_test(test_conf),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
