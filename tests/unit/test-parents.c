/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Unit tests: the chain open path's parent handling (get_parent).
 *
 * No built-in driver has parents yet (VHD will), so this test brings a
 * driver of its own, opened with bks_chain_open_with() (looked up before
 * the registry, also for the parents' chain strings).  Its "img:"
 * sink is an image of 8 blocks whose content names itself; its parent is
 * named by a table, like a backing file in an image header.
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

#define IMG_SIZE 4096

/* Which image has which parent ("" for none, NULL: get_parent fails). */
static const struct {
	const char *name;
	const char *parent;
} family[] = {
    {"child", "img:mid"},
    {"mid", "img:base"},
    {"base", ""},
    {"loop-a", "img:loop-b"},
    {"loop-b", "img:loop-a"},
    {"broken", NULL},
    {"bad-parent", "log:"},
    {"two", "img:a|img:b"},
    {"orphan", "img:missing"},
};

struct img_state {
	char name[32];
	bool read_only;
};

static int img_find(const char *name)
{
	for (size_t i = 0; i < sizeof(family) / sizeof(family[0]); i++) {
		if (strcmp(family[i].name, name) == 0)
			return (int)i;
	}
	return -1;
}

static int img_open(void *state, struct bks_layer *self,
		    const struct bks_open_args *args, struct bks_error *err)
{
	struct img_state *s = state;

	(void)self;
	if (img_find(args->args) < 0)
		return bks_error_set(err, ENOENT, "open %s", args->args);
	snprintf(s->name, sizeof(s->name), "%s", args->args);
	s->read_only = args->read_only;
	return 0;
}

static int img_info(void *state, struct bks_layer *self, struct bks_info *info)
{
	(void)state;
	(void)self;
	info->size = IMG_SIZE;
	info->block_size = 512;
	info->ops = BKS_OPF(BKS_OP_READ);
	return 0;
}

/* Reads answer "<name>:<ro|rw>:<backing>" so the test sees the stacking. */
static int img_read(void *state, struct bks_layer *self, struct bks_req *req)
{
	struct img_state *s = state;
	struct bks_layer *next = bks_layer_child(self, BKS_CHILD_BACKING);

	memset(req->iov[0].iov_base, 0, req->iov[0].iov_len);
	snprintf(req->iov[0].iov_base, req->iov[0].iov_len, "%s:%s:%s", s->name,
		 s->read_only ? "ro" : "rw",
		 next ? bks_layer_driver(next)->name : "-");
	bks_req_complete(req, 0);
	return 0;
}

static int img_get_parent(void *state, struct bks_layer *self, char *buf,
			  size_t size, struct bks_error *err)
{
	struct img_state *s = state;
	const char *parent = family[img_find(s->name)].parent;

	(void)self;
	if (!parent)
		return bks_error_setmsg(err, EIO, "%s: corrupt header",
					s->name);
	if (!*parent)
		return BKS_NO_PARENT;
	snprintf(buf, size, "%s", parent);
	return 0;
}

static const struct bks_driver test_driver_img = {
    .name = "img",
    .kind = BKS_SINK,
    .usage = "img:NAME",
    .state_size = sizeof(struct img_state),
    .open = img_open,
    .info = img_info,
    .read = img_read,
    .get_parent = img_get_parent,
};

extern const struct bks_driver bks_driver_log;

/* Opened with bks_chain_open_with(): looked up before the registry. */
static const struct bks_driver *const test_drivers[] = {
    &test_driver_img,
    &bks_driver_log,
    NULL,
};

/* ---- tests --------------------------------------------------------------- */

static void done(struct bks_req *req, int result)
{
	*(int *)req->opaque = result;
}

/* Read block 0 of layer i of chain straight from that layer. */
static void read_layer(struct bks_chain *chain, struct bks_loop *loop,
		       unsigned int i, char *buf)
{
	struct iovec iov = {.iov_base = buf, .iov_len = 512};
	struct bks_req req = {
	    .op = BKS_OP_READ,
	    .len = 512,
	    .iov = &iov,
	    .iovcnt = 1,
	    .done = done,
	};
	int result = 1;

	(void)loop;
	req.opaque = &result;
	/* Through the framework's wrapper, as a layer above would. */
	assert_int_equal(bks_next_submit(bks_chain_layer(chain, i), &req), 0);
	assert_int_equal(result, 0);
}

static void test_parents_stacked_read_only(void **state)
{
	struct bks_chain *chain;
	struct bks_loop *loop;
	struct bks_error err = {0};
	char buf[512];
	(void)state;

	assert_int_equal(bks_loop_new(&loop, &err), 0);
	if (bks_chain_open_with(&chain, "log:|img:child", test_drivers, loop,
				false, &err))
		fail_msg("%s", err.msg);
	/* log, child, then its parents in order below it. */
	assert_int_equal(bks_chain_layers(chain), 4);
	read_layer(chain, loop, 1, buf);
	assert_string_equal(buf, "child:rw:img");
	read_layer(chain, loop, 2, buf);
	assert_string_equal(buf, "mid:ro:img");
	read_layer(chain, loop, 3, buf);
	assert_string_equal(buf, "base:ro:-");
	assert_ptr_equal(bks_chain_find(chain, "img"),
			 bks_chain_layer(chain, 1));
	assert_true(bks_chain_info(chain)->size == IMG_SIZE);
	bks_chain_close(chain);
	bks_loop_free(loop);
}

static void test_parent_errors(void **state)
{
	static const struct {
		const char *chain;
		int rc;
		const char *msg;
	} cases[] = {
	    {"img:loop-a", -ELOOP, "more than 16 layers"},
	    {"img:broken", -EIO, "layer 1 (img): parent: broken: corrupt"},
	    {"img:bad-parent", -EINVAL,
	     "parent: chain: layer 1 at offset "
	     "0: 'log' is a filter"},
	    {"img:two", -EINVAL,
	     "parent: chain: layer 1 at offset 0: "
	     "'img' is a sink"},
	    {"img:orphan", -ENOENT, "layer 2 (img): open missing"},
	};
	struct bks_loop *loop;
	struct bks_error err = {0};
	(void)state;

	assert_int_equal(bks_loop_new(&loop, &err), 0);
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct bks_chain *chain = NULL;
		int rc = bks_chain_open_with(&chain, cases[i].chain,
					     test_drivers, loop, false, &err);

		if (rc != cases[i].rc || !strstr(err.msg, cases[i].msg))
			fail_msg("%s: rc %d '%s', expected %d '%s'",
				 cases[i].chain, rc, err.msg, cases[i].rc,
				 cases[i].msg);
		assert_null(chain);
	}
	bks_loop_free(loop);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_parents_stacked_read_only),
	    cmocka_unit_test(test_parent_errors),
	};

	return cmocka_run_group_tests_name("parents", tests, NULL, NULL);
}
