/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Unit tests: the blkif ring export's real grant ops (grant-xen.c, over
 * libxengnttab and libxenevtchn).  They need a Xen dom0; here there is
 * none (/dev/xen does not exist), so what is checked is that they are
 * whole (every op the core needs), link, and fail to open cleanly,
 * saying which device -- the worker reports that, never crashes.  Their
 * real use is for the Xen test tier (tests/xen/).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <errno.h>
#include <string.h>
#include <unistd.h>

#include "bks-blkif-xen.h"

static void test_ops_whole(void **state)
{
	(void)state;
	assert_string_equal(bks_blkif_xen_ops.name, "xengnttab");
	assert_non_null(bks_blkif_xen_ops.copy);
	assert_non_null(bks_blkif_xen_ops.map);
	assert_non_null(bks_blkif_xen_ops.unmap);
	assert_non_null(bks_blkif_xen_ops.notify);
}

static void test_open_without_xen(void **state)
{
	struct bks_blkif_xen *x = (struct bks_blkif_xen *)&x;
	struct bks_error err = {0};
	int rc;

	(void)state;
	if (access("/dev/xen/gntdev", F_OK) == 0) {
		skip(); /* a real dom0: the Xen tier tests it */
		return;
	}
	rc = bks_blkif_xen_open(&x, 1, 5, &err);
	assert_true(rc < 0);
	assert_null(x);
	assert_int_equal(err.code, -rc);
	assert_non_null(strstr(err.msg, "/dev/xen/gntdev"));
	bks_blkif_xen_close(NULL);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_ops_whole),
	    cmocka_unit_test(test_open_without_xen),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
