/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* Unit tests: choosing the run directory (helpers/common/rundir.c). */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "rundir.h"

/* $BLKSTACK_RUNDIR is env, or unset (NULL). */
static void set_env(const char *env)
{
	if (env)
		assert_int_equal(setenv("BLKSTACK_RUNDIR", env, 1), 0);
	else
		assert_int_equal(unsetenv("BLKSTACK_RUNDIR"), 0);
}

static void chosen(const char *given, const char *env, const char *want)
{
	char buf[RUNDIR_MAX + 1];
	struct bks_error err = {0};

	set_env(env);
	if (rundir_choose(given, buf, sizeof(buf), &err) < 0)
		fail_msg("'%s' (env '%s'): %s", given ? given : "(none)",
			 env ? env : "(unset)", err.msg);
	assert_string_equal(buf, want);
}

static void refused(const char *given, const char *env, int code,
		    const char *msg)
{
	char buf[RUNDIR_MAX + 1];
	struct bks_error err = {0};

	set_env(env);
	assert_int_equal(rundir_choose(given, buf, sizeof(buf), &err), -code);
	if (!strstr(err.msg, msg))
		fail_msg("message '%s' lacks '%s'", err.msg, msg);
}

static void test_order(void **state)
{
	(void)state;
	chosen(NULL, NULL, DEFAULT_RUNDIR);
	chosen(NULL, "", DEFAULT_RUNDIR);
	chosen(NULL, "/env/run", "/env/run");
	chosen("/given", "/env/run", "/given");
	chosen("", "/env/run", DEFAULT_RUNDIR);
	chosen("/given//", NULL, "/given");
	chosen("/", NULL, "/");
}

static void test_refused(void **state)
{
	char *long_dir = malloc(RUNDIR_MAX + 2);

	(void)state;
	refused("relative", NULL, EINVAL, "--rundir 'relative' is not an");
	refused(NULL, "run", EINVAL, "BLKSTACK_RUNDIR 'run' is not an");
	refused("/a\tb", NULL, EINVAL, "--rundir has a control character");
	refused(NULL, "/a\nb", EINVAL, "BLKSTACK_RUNDIR has a control");
	refused(NULL, "/a\x7f", EINVAL, "control character");
	assert_non_null(long_dir);
	memset(long_dir, 'a', RUNDIR_MAX + 1);
	long_dir[0] = '/';
	long_dir[RUNDIR_MAX + 1] = '\0';
	refused(long_dir, NULL, ENAMETOOLONG, "--rundir is too long");
	long_dir[RUNDIR_MAX] = '\0';
	chosen(long_dir, NULL, long_dir);
	free(long_dir);
}

/* A buffer smaller than the value: refused, never cut. */
static void test_small_buffer(void **state)
{
	char buf[8];
	struct bks_error err = {0};

	(void)state;
	assert_int_equal(rundir_choose("/1234567", buf, sizeof(buf), &err),
			 -ENAMETOOLONG);
	assert_int_equal(rundir_choose("/123456", buf, sizeof(buf), &err), 0);
	assert_string_equal(buf, "/123456");
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_order),
	    cmocka_unit_test(test_refused),
	    cmocka_unit_test(test_small_buffer),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
