/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* Unit tests: action table, interface selection, xenstore path checks. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <errno.h>
#include <string.h>

#include "hp-env.h"

/* A fake environment: NULL-terminated name/value pairs. */
static const char *fake_getenv(const char *name, void *opaque)
{
	const char *const *kv = opaque;

	for (; kv[0]; kv += 2) {
		if (strcmp(kv[0], name) == 0)
			return kv[1];
	}
	return NULL;
}

static void test_action_lookup(void **state)
{
	static const char *const names[] = {
	    "version",	   "prepare",	  "add",      "remove",
	    "localattach", "localdetach", "unprepare"};
	(void)state;

	for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
		const struct hp_action_desc *a = hp_action_lookup(names[i]);

		assert_non_null(a);
		assert_string_equal(a->name, names[i]);
	}
	assert_null(hp_action_lookup("Add"));
	assert_null(hp_action_lookup("add "));
	assert_null(hp_action_lookup(""));
	assert_null(hp_action_lookup(NULL));
	/* Only add and remove exist in v1, and only they have a backend. */
	assert_true(hp_action_lookup("add")->in_v1);
	assert_true(hp_action_lookup("remove")->backend_valid);
	assert_false(hp_action_lookup("prepare")->in_v1);
	assert_false(hp_action_lookup("localattach")->backend_valid);
}

static void test_path_valid(void **state)
{
	struct bks_error err = {0};
	(void)state;

	assert_int_equal(hp_xs_path_check("/local/domain/0/libxl/hotplug/1/"
					  "vbd/51712",
					  HP_PATH_ABSOLUTE, "P", &err),
			 0);
	assert_int_equal(
	    hp_xs_path_check("backend/vbd/1/51712", HP_PATH_ANY, "P", &err), 0);
	assert_int_equal(
	    hp_xs_path_check("/a_b-c@d", HP_PATH_ABSOLUTE, "P", &err), 0);
}

/* Each of these must be refused, with the variable named in the message. */
static void test_path_invalid(void **state)
{
	static const char *const bad[] = {
	    "",
	    "/",
	    "//local",
	    "/local//domain",
	    "/local/domain/",
	    "/local/domain/0/$(reboot)",
	    "/local/domain/0/a b",
	    "/local/domain/0/a.b",
	    "/local/domain/0/a\nb",
	    "/local/domain/0/../1",
	    "/@introduceDomain",
	    "relative/path", /* absolute required */
	};
	(void)state;

	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		struct bks_error err = {0};

		assert_int_equal(hp_xs_path_check(bad[i], HP_PATH_ABSOLUTE,
						  "HOTPLUG_PATH", &err),
				 -EINVAL);
		assert_int_equal(err.code, EINVAL);
		assert_non_null(strstr(err.msg, "HOTPLUG_PATH"));
		/* Messages are one line, whatever the input held. */
		assert_null(strchr(err.msg, '\n'));
	}
}

static void test_path_too_long(void **state)
{
	char path[HP_XS_ABS_PATH_MAX + 2];
	struct bks_error err = {0};
	(void)state;

	path[0] = '/';
	memset(path + 1, 'a', HP_XS_ABS_PATH_MAX);
	path[HP_XS_ABS_PATH_MAX + 1] = '\0';
	assert_int_equal(hp_xs_path_check(path, HP_PATH_ABSOLUTE, "P", &err),
			 -EINVAL);
	assert_non_null(strstr(err.msg, "at most 3072"));
	/* Exactly at the limit is fine. */
	path[HP_XS_ABS_PATH_MAX] = '\0';
	assert_int_equal(hp_xs_path_check(path, HP_PATH_ABSOLUTE, "P", &err),
			 0);
}

static void test_env_v2(void **state)
{
	const char *env[] = {"HOTPLUG_PATH",
			     "/h",
			     "BACKEND_PATH",
			     "/b",
			     "XENBUS_PATH",
			     "x",
			     NULL};
	struct bks_error err = {0};
	struct hp_env e;
	(void)state;

	/* HOTPLUG_PATH wins over XENBUS_PATH; no backend for version. */
	assert_int_equal(hp_env_load(&e, hp_action_lookup("version"),
				     fake_getenv, env, &err),
			 0);
	assert_int_equal(e.iface, HP_IFACE_V2);
	assert_string_equal(e.hotplug_path, "/h");
	assert_null(e.backend_path);
	assert_null(e.xenbus_path);

	assert_int_equal(
	    hp_env_load(&e, hp_action_lookup("add"), fake_getenv, env, &err),
	    0);
	assert_string_equal(e.backend_path, "/b");
}

static void test_env_v2_add_needs_backend(void **state)
{
	const char *env[] = {"HOTPLUG_PATH", "/h", NULL};
	struct bks_error err = {0};
	struct hp_env e;
	(void)state;

	assert_int_equal(
	    hp_env_load(&e, hp_action_lookup("add"), fake_getenv, env, &err),
	    -EINVAL);
	assert_non_null(strstr(err.msg, "BACKEND_PATH"));
}

static void test_env_v1(void **state)
{
	const char *env[] = {"XENBUS_PATH", "backend/vbd/1/51712", NULL};
	struct bks_error err = {0};
	struct hp_env e;
	(void)state;

	assert_int_equal(
	    hp_env_load(&e, hp_action_lookup("add"), fake_getenv, env, &err),
	    0);
	assert_int_equal(e.iface, HP_IFACE_V1);
	assert_string_equal(e.xenbus_path, "backend/vbd/1/51712");
	/* v1 has no prepare. */
	assert_int_equal(hp_env_load(&e, hp_action_lookup("prepare"),
				     fake_getenv, env, &err),
			 -EINVAL);
	assert_non_null(strstr(err.msg, "v2 action"));
}

static void test_env_none(void **state)
{
	const char *env[] = {"HOTPLUG_PATH", "", NULL};
	struct bks_error err = {0};
	struct hp_env e;
	(void)state;

	/* An empty variable counts as unset. */
	assert_int_equal(hp_env_load(&e, hp_action_lookup("version"),
				     fake_getenv, env, &err),
			 -EINVAL);
	assert_non_null(strstr(err.msg, "neither HOTPLUG_PATH"));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_action_lookup),
	    cmocka_unit_test(test_path_valid),
	    cmocka_unit_test(test_path_invalid),
	    cmocka_unit_test(test_path_too_long),
	    cmocka_unit_test(test_env_v2),
	    cmocka_unit_test(test_env_v2_add_needs_backend),
	    cmocka_unit_test(test_env_v1),
	    cmocka_unit_test(test_env_none),
	};

	return cmocka_run_group_tests_name("hp-env", tests, NULL, NULL);
}
