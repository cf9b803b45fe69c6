/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* Unit tests: a vbd3 disk's chain from libxl 4.20's params (hp-vbd3.h). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "blkstack/chain.h"
#include "hp-vbd3.h"

/* params gives want, and want parses as a chain. */
static void expect_chain(const char *params, const char *want)
{
	struct bks_chain_spec spec = {0};
	struct bks_error err = {0};
	char *chain = (char *)"unset";

	assert_int_equal(hp_vbd3_chain(params, &chain, &err), 0);
	assert_non_null(chain);
	assert_string_equal(chain, want);
	assert_int_equal(bks_chain_parse(chain, strlen(chain), &spec, &err), 0);
	bks_chain_spec_free(&spec);
	free(chain);
}

static void expect_refused(const char *params, const char *msg)
{
	struct bks_error err = {0};
	char *chain = (char *)"unset";

	assert_int_equal(hp_vbd3_chain(params, &chain, &err), -EINVAL);
	assert_null(chain);
	assert_non_null(strstr(err.msg, msg));
}

static void test_plain_paths(void **state)
{
	(void)state;
	expect_chain("aio:/images/g.img", "aio:/images/g.img");
	expect_chain("vhd:/images/g.vhd", "vhd:/images/g.vhd");
	/* A ':' after the first '/' is a path's. */
	expect_chain("aio:/images/a:b.img", "aio:/images/a:b.img");
}

static void test_chains(void **state)
{
	(void)state;
	expect_chain("aio:log:|aio:/images/g.img", "log:|aio:/images/g.img");
	expect_chain("aio:aio:/images/g.img", "aio:/images/g.img");
	expect_chain("aio:log:|qcow2:/images/g.qcow2",
		     "log:|qcow2:/images/g.qcow2");
	expect_chain("vhd:log:|vhd:/images/g.vhd", "log:|vhd:/images/g.vhd");
	expect_chain("vhd:vhd:/images/g.vhd", "vhd:/images/g.vhd");
}

static void test_unknown_driver_is_a_chain(void **state)
{
	struct bks_chain_spec spec = {0};
	struct bks_error err = {0};
	char *chain = NULL;

	(void)state;
	/* Spelled like a driver: the chain parser's to refuse, by name. */
	assert_int_equal(hp_vbd3_chain("aio:nosuch:|aio:/x", &chain, &err), 0);
	assert_string_equal(chain, "nosuch:|aio:/x");
	assert_int_equal(bks_chain_parse(chain, strlen(chain), &spec, &err),
			 -EINVAL);
	assert_non_null(strstr(err.msg, "unknown driver 'nosuch'"));
	free(chain);
	/* A relative path becomes aio:PATH, which the parser refuses. */
	assert_int_equal(hp_vbd3_chain("aio:images/g.img", &chain, &err), 0);
	assert_string_equal(chain, "aio:images/g.img");
	assert_int_equal(bks_chain_parse(chain, strlen(chain), &spec, &err),
			 -EINVAL);
	free(chain);
}

static void test_bad_format(void **state)
{
	(void)state;
	expect_refused("qcow:/images/g.img", "has FORMAT 'qcow': libxl");
	expect_refused("raw:/images/g.img", "has FORMAT 'raw'");
	expect_refused("qcow2:log:|aio:/x", "has FORMAT 'qcow2'");
	expect_refused("AIO:/images/g.img", "not FORMAT:TARGET");
	expect_refused("/images/g.img", "not FORMAT:TARGET");
	expect_refused("aio", "not FORMAT:TARGET");
	expect_refused("", "not FORMAT:TARGET");
	expect_refused("aio:", "has no target");
	expect_refused("vhd:", "has no target");
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_plain_paths),
	    cmocka_unit_test(test_chains),
	    cmocka_unit_test(test_unknown_driver_is_a_chain),
	    cmocka_unit_test(test_bad_format),
	};

	return cmocka_run_group_tests_name("hp-vbd3", tests, NULL, NULL);
}
