/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Unit tests: the pure parts of the sharing record (hp-share.h), the
 * image policy's configuration (hp-policy.h) and the configuration file
 * (conf.h).  What the worker holds open, and the claim under the host
 * lock, are tested with real workers in tests/bats/sharing.bats.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "conf.h"
#include "hp-policy.h"
#include "hp-share.h"

static void test_usage_roundtrip(void **state)
{
	static struct hp_usage u, back;
	char text[8192];
	int n;
	(void)state;

	memset(&u, 0, sizeof(u));
	u.domid = 7;
	strcpy(u.vm, "/vm/0b7d2c3a-0000-4000-8000-00000000beef");
	strcpy(u.backend, "/local/domain/0/backend/vbd/7/51712");
	u.n = 2;
	u.img[0] = (struct hp_image){.dev = 2049, .ino = 12, .rw = true};
	u.img[1] = (struct hp_image){.dev = 0, .ino = 1792, .blk = true};
	n = hp_usage_format(&u, text, sizeof(text));
	assert_int_equal(n, (int)strlen(text));
	assert_string_equal(text,
			    "domid 7\n"
			    "vm /vm/0b7d2c3a-0000-4000-8000-00000000beef\n"
			    "backend /local/domain/0/backend/vbd/7/51712\n"
			    "image f w 2049 12\n"
			    "image b r 0 1792\n");
	assert_int_equal(hp_usage_parse(text, &back), 0);
	assert_int_equal(back.domid, 7);
	assert_string_equal(back.vm, u.vm);
	assert_string_equal(back.backend, u.backend);
	assert_int_equal(back.n, 2);
	assert_true(back.img[0].rw && !back.img[0].blk);
	assert_true(!back.img[1].rw && back.img[1].blk);
	assert_true(back.img[1].ino == 1792);

	/* No vm, unknown domid. */
	u.vm[0] = '\0';
	u.domid = -1;
	u.n = 0;
	assert_true(hp_usage_format(&u, text, sizeof(text)) > 0);
	assert_string_equal(
	    text,
	    "domid -1\nvm\nbackend /local/domain/0/backend/vbd/7/51712\n");
	assert_int_equal(hp_usage_parse(text, &back), 0);
	assert_string_equal(back.vm, "");
	/* A space in a path cannot be written. */
	strcpy(u.vm, "/vm/a b");
	assert_int_equal(hp_usage_format(&u, text, sizeof(text)), -EINVAL);
	assert_int_equal(hp_usage_format(&u, text, 8), -EINVAL);
	u.vm[0] = '\0';
	assert_int_equal(hp_usage_format(&u, text, 8), -ENAMETOOLONG);
}

static void test_usage_invalid(void **state)
{
	static const char *const bad[] = {
	    "",
	    "domid 1\n",
	    "domid 1\nvm\n",
	    "domid 1\nvm\nbackend /b", /* no final newline */
	    "domid x\nvm\nbackend /b\n",
	    "domid 1 2\nvm\nbackend /b\n",
	    "domid 99999\nvm\nbackend /b\n",
	    "domid 1\nvm \nbackend /b\n",
	    "domid 1\nvm /a b\nbackend /b\n",
	    "domid 1\nvm\nbackend \n",
	    "domid 1\nvm\nbackend /b\nimage f w 1\n",
	    "domid 1\nvm\nbackend /b\nimage x w 1 2\n",
	    "domid 1\nvm\nbackend /b\nimage f rw 1 2\n",
	    "domid 1\nvm\nbackend /b\nimage f w 1 2 3\n",
	    "vm\ndomid 1\nbackend /b\n",
	};
	struct hp_usage u;
	(void)state;

	for (size_t i = 0; i < sizeof(bad) / sizeof(*bad); i++) {
		if (hp_usage_parse(bad[i], &u) != -EINVAL)
			fail_msg("accepted: \"%s\"", bad[i]);
	}
	assert_int_equal(hp_usage_parse("domid 1\nvm\nbackend /b\n", &u), 0);
}

static void test_conf_find(void **state)
{
	struct bks_error err = {0};
	unsigned int line = 0;
	const char *v = NULL;
	size_t len = 0;
	bool found;
	(void)state;

	assert_int_equal(conf_find("# c\n\n device = nbd\n images = /a "
				   "/b  \n",
				   "f", "images", &v, &len, &line, &found,
				   &err),
			 0);
	assert_true(found);
	assert_int_equal(line, 4);
	assert_int_equal(len, 5);
	assert_memory_equal(v, "/a /b", 5);
	assert_int_equal(
	    conf_find("x = 1\n", "f", "images", &v, &len, &line, &found, &err),
	    0);
	assert_false(found);
	assert_int_equal(conf_find("images = /a\nimages = /b\n", "f", "images",
				   &v, &len, &line, &found, &err),
			 -EINVAL);
	assert_string_equal(err.msg, "f:2: images given twice");
	assert_int_equal(conf_find("images /a\n", "f", "images", &v, &len,
				   &line, &found, &err),
			 -EINVAL);
	assert_string_equal(err.msg, "f:1: expected key = value");
}

static void test_policy_parse(void **state)
{
	static const char *const bad[] = {
	    "images =\n",	  "images = rel\n",    "images = /a/\n",
	    "images = /a//b\n",	  "images = /a/./b\n", "images = /a/..\n",
	    "images = /a ../b\n",
	};
	struct bks_error err = {0};
	struct hp_policy p;
	(void)state;

	assert_int_equal(hp_policy_parse(&p, "device = loop\n", "f", &err), 0);
	assert_int_equal(p.n, 0);
	hp_policy_free(&p);
	assert_int_equal(
	    hp_policy_parse(&p, "images = /srv/xen\t/dev /\n", "f", &err), 0);
	assert_int_equal(p.n, 3);
	assert_string_equal(p.dir[0], "/srv/xen");
	assert_string_equal(p.dir[1], "/dev");
	assert_string_equal(p.dir[2], "/");
	hp_policy_free(&p);
	for (size_t i = 0; i < sizeof(bad) / sizeof(*bad); i++) {
		if (hp_policy_parse(&p, bad[i], "f", &err) != -EINVAL)
			fail_msg("accepted: \"%s\"", bad[i]);
		assert_non_null(strstr(err.msg, "f:1: images"));
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_usage_roundtrip),
	    cmocka_unit_test(test_usage_invalid),
	    cmocka_unit_test(test_conf_find),
	    cmocka_unit_test(test_policy_parse),
	};

	return cmocka_run_group_tests_name("hp-share", tests, NULL, NULL);
}
