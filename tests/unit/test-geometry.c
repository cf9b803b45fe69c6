/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Unit tests: the framework's own refusals, with drivers that misbehave.
 *
 * Like test-parents.c, this test brings drivers of its own, opened with
 * bks_chain_open_with() (looked up before the registry):
 *
 *   geo:NAME   a sink whose geometry is named by its args ("empty", "odd",
 *              "bs3000", "ok"): the chain open path refuses every bad one
 *              with what is wrong with it;
 *   chk:ARGS   a filter with a check op that accepts only "good": the
 *              parser calls it and names the layer;
 *   file:PATH  a sink with args_path: the parser refuses an empty or a
 *              relative path for any such driver, not only aio: and sync:.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "blkstack/chain.h"

static const struct {
	const char *name;
	uint64_t size;
	uint32_t block_size;
} geometries[] = {
    {"ok", 4096, 512},
    {"empty", 0, 512},
    {"odd", 1000, 512},
    {"half", 6144, 4096},
    {"bs3000", 6000, 3000},
    {"bs256", 4096, 256},
    {"bs128k", 1 << 20, 128 << 10},
};

struct geo_state {
	unsigned int i;
};

static int geo_open(void *state, struct bks_layer *self,
		    const struct bks_open_args *args, struct bks_error *err)
{
	struct geo_state *s = state;

	(void)self;
	for (s->i = 0; s->i < sizeof(geometries) / sizeof(geometries[0]);
	     s->i++) {
		if (strcmp(geometries[s->i].name, args->args) == 0)
			return 0;
	}
	return bks_error_setmsg(err, EINVAL, "no geometry '%s'", args->args);
}

static int geo_info(void *state, struct bks_layer *self, struct bks_info *info)
{
	struct geo_state *s = state;

	(void)self;
	info->size = geometries[s->i].size;
	info->block_size = geometries[s->i].block_size;
	info->ops = BKS_OPF(BKS_OP_READ);
	return 0;
}

static int geo_read(void *state, struct bks_layer *self, struct bks_req *req)
{
	(void)state;
	(void)self;
	bks_req_complete(req, 0);
	return 0;
}

static const struct bks_driver test_driver_geo = {
    .name = "geo",
    .kind = BKS_SINK,
    .usage = "geo:NAME",
    .state_size = sizeof(struct geo_state),
    .open = geo_open,
    .info = geo_info,
    .read = geo_read,
};

static int chk_check(const char *args, struct bks_error *err)
{
	if (strcmp(args, "good") == 0)
		return 0;
	return bks_error_setmsg(err, EINVAL, "'%s' is not good", args);
}

static int chk_open(void *state, struct bks_layer *self,
		    const struct bks_open_args *args, struct bks_error *err)
{
	(void)state;
	(void)self;
	return chk_check(args->args, err);
}

static const struct bks_driver test_driver_chk = {
    .name = "chk",
    .kind = BKS_FILTER,
    .usage = "chk:good",
    .check = chk_check,
    .open = chk_open,
};

static const struct bks_driver test_driver_file = {
    .name = "file",
    .kind = BKS_SINK,
    .usage = "file:PATH",
    .args_path = true,
    .state_size = sizeof(struct geo_state),
    .open = geo_open,
    .info = geo_info,
    .read = geo_read,
};

/* Opened with bks_chain_open_with(): looked up before the registry. */
static const struct bks_driver *const test_drivers[] = {
    &test_driver_geo,
    &test_driver_chk,
    &test_driver_file,
    NULL,
};

/* ---- the tests ----------------------------------------------------------- */

static void test_bad_geometry(void **state)
{
	static const struct {
		const char *chain, *msg;
	} cases[] = {
	    {"geo:empty", "layer 1 (geo): the disk is empty (0 bytes)"},
	    {"geo:odd", "layer 1 (geo): size 1000 bytes is not a multiple of "
			"the block size 512"},
	    {"geo:half", "size 6144 bytes is not a multiple of the block "
			 "size 4096"},
	    {"geo:bs3000", "layer 1 (geo): block size 3000 is not a power of "
			   "two from 512 to 65536"},
	    {"geo:bs256", "block size 256 is not a power of two from 512"},
	    {"geo:bs128k", "block size 131072 is not a power of two from 512"},
	    /* A filter inherits the bad geometry; the sink is named. */
	    {"chk:good|geo:odd", "layer 2 (geo): size 1000 bytes"},
	};
	struct bks_error err = {0};
	struct bks_chain *chain;
	struct bks_loop *loop;
	(void)state;

	assert_int_equal(bks_loop_new(&loop, &err), 0);
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		chain = (void *)1;
		if (bks_chain_open_with(&chain, cases[i].chain, test_drivers,
					loop, false, &err) != -EINVAL)
			fail_msg("'%s' opened", cases[i].chain);
		assert_null(chain);
		if (!strstr(err.msg, cases[i].msg))
			fail_msg("'%s': message '%s' lacks '%s'",
				 cases[i].chain, err.msg, cases[i].msg);
	}
	/* The good one opens. */
	assert_int_equal(bks_chain_open_with(&chain, "chk:good|geo:ok",
					     test_drivers, loop, false, &err),
			 0);
	assert_int_equal(bks_chain_info(chain)->size, 4096);
	bks_chain_close(chain);
	bks_loop_free(loop);
}

/* The parser runs each driver's check and the path rules, for any driver. */
static void test_parser_checks(void **state)
{
	static const struct {
		const char *chain, *msg;
	} cases[] = {
	    {"chk:bad|geo:ok",
	     "chain: layer 1 (chk) at offset 0: 'bad' is not good"},
	    {"chk:good|chk:worse|geo:ok",
	     "chain: layer 2 (chk) at offset 9: 'worse' is not good"},
	    {"chk:good|file:", "chain: layer 2 (file) at offset 9: missing "
			       "path; usage: file:PATH"},
	    {"file:x/y", "chain: layer 1 (file) at offset 0: path 'x/y' must "
			 "be an absolute path"},
	    {"file:ok", "path 'ok' must be an absolute path"},
	};
	struct bks_chain_spec spec;
	struct bks_error err = {0};
	(void)state;

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		const char *s = cases[i].chain;

		/* Under valgrind: a refused layer's args are not leaked. */
		assert_int_equal(bks_chain_parse_with(
				     s, strlen(s), test_drivers, &spec, &err),
				 -EINVAL);
		assert_int_equal(spec.n, 0);
		if (!strstr(err.msg, cases[i].msg))
			fail_msg("'%s': message '%s' lacks '%s'", s, err.msg,
				 cases[i].msg);
	}
	assert_int_equal(bks_chain_parse_with("chk:good|file:/ok", 17,
					      test_drivers, &spec, &err),
			 0);
	assert_int_equal(spec.n, 2);
	bks_chain_spec_free(&spec);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_bad_geometry),
	    cmocka_unit_test(test_parser_checks),
	};

	return cmocka_run_group_tests_name("geometry", tests, NULL, NULL);
}
