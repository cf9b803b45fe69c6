/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Unit tests: the FUSE export's transports, named, parsed and resolved
 * (libblkstack/export/fuse/uring.c), and the layout of the kernel's
 * FUSE-over-io_uring structures as uring-abi.h defines them.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <errno.h>
#include <string.h>

#include "blkstack/fuse-server.h"
#include "uring-abi.h" /* libblkstack/export/fuse/ */

static void test_names_parse_back(void **state)
{
	static const enum bks_fuse_transport all[] = {BKS_FUSE_TRANSPORT_AUTO,
						      BKS_FUSE_TRANSPORT_READV,
						      BKS_FUSE_TRANSPORT_URING};
	(void)state;

	assert_string_equal(bks_fuse_transport_name(BKS_FUSE_TRANSPORT_AUTO),
			    "auto");
	assert_string_equal(bks_fuse_transport_name(BKS_FUSE_TRANSPORT_READV),
			    "readv");
	assert_string_equal(bks_fuse_transport_name(BKS_FUSE_TRANSPORT_URING),
			    "io_uring");
	for (size_t i = 0; i < sizeof(all) / sizeof(all[0]); i++) {
		struct bks_error err = {0};
		enum bks_fuse_transport t = BKS_FUSE_TRANSPORT_AUTO;

		assert_int_equal(bks_fuse_transport_parse(
				     bks_fuse_transport_name(all[i]), &t, &err),
				 0);
		assert_int_equal(t, all[i]);
	}
}

static void test_parse_refuses_others(void **state)
{
	struct bks_error err = {0};
	enum bks_fuse_transport t = BKS_FUSE_TRANSPORT_READV;
	(void)state;

	assert_int_equal(bks_fuse_transport_parse("uring", &t, &err), -EINVAL);
	assert_string_equal(err.msg, "FUSE transport 'uring': must be auto, "
				     "io_uring or readv");
	assert_int_equal(t, BKS_FUSE_TRANSPORT_READV);
	assert_int_equal(bks_fuse_transport_parse("", &t, &err), -EINVAL);
}

static void test_resolve(void **state)
{
	(void)state;

	/* A choice is kept, whatever the kernel says. */
	assert_int_equal(
	    bks_fuse_transport_resolve(BKS_FUSE_TRANSPORT_URING, true),
	    BKS_FUSE_TRANSPORT_URING);
	assert_int_equal(
	    bks_fuse_transport_resolve(BKS_FUSE_TRANSPORT_READV, false),
	    BKS_FUSE_TRANSPORT_READV);
	/* Where the session must survive a crash: readv, always. */
	assert_int_equal(
	    bks_fuse_transport_resolve(BKS_FUSE_TRANSPORT_AUTO, true),
	    BKS_FUSE_TRANSPORT_READV);
	/* Elsewhere never io_uring where the kernel does not serve it. */
	if (!bks_fuse_uring_enabled())
		assert_int_equal(
		    bks_fuse_transport_resolve(BKS_FUSE_TRANSPORT_AUTO, false),
		    BKS_FUSE_TRANSPORT_READV);
	else
		assert_int_not_equal(
		    bks_fuse_transport_resolve(BKS_FUSE_TRANSPORT_AUTO, false),
		    BKS_FUSE_TRANSPORT_AUTO);
}

/* The kernel's offsets (include/uapi/linux/fuse.h, 7.42). */
static void test_abi_layout(void **state)
{
	(void)state;

	assert_int_equal(offsetof(struct fxu_req_header, op_in), 128);
	assert_int_equal(offsetof(struct fxu_req_header, ring_ent_in_out), 256);
	assert_int_equal(offsetof(struct fxu_ent_in_out, commit_id), 8);
	assert_int_equal(offsetof(struct fxu_ent_in_out, payload_sz), 16);
	assert_int_equal(offsetof(struct fxu_cmd_req, commit_id), 8);
	assert_int_equal(offsetof(struct fxu_cmd_req, qid), 16);
	/* It fits the 80-byte command area of a 128-byte SQE. */
	assert_true(sizeof(struct fxu_cmd_req) <= 80);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_names_parse_back),
	    cmocka_unit_test(test_parse_refuses_others),
	    cmocka_unit_test(test_resolve),
	    cmocka_unit_test(test_abi_layout),
	};

	return cmocka_run_group_tests_name("fuse-transport", tests, NULL, NULL);
}
