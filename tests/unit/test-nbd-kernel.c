/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Unit tests: helpers/common/nbd-kernel.c's configuration keys, and what
 * reconnect and give-up do on a host without kernel NBD devices for the
 * socket (this one has no nbd module; a host with one has no device
 * serving a socket path nobody uses).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "nbd-kernel.h"

static void test_conf_defaults(void **state)
{
	struct nbd_kernel_conf c = {.reconnect_timeout_s = 1,
				    .io_timeout_s = 1};
	struct bks_error err = {0};
	(void)state;

	assert_int_equal(nbd_kernel_conf_parse("", "t.conf", &c, &err), 0);
	assert_int_equal(c.reconnect_timeout_s,
			 NBD_KERNEL_RECONNECT_TIMEOUT_DEFAULT);
	assert_int_equal(c.io_timeout_s, NBD_KERNEL_IO_TIMEOUT_DEFAULT);
	/* Other modules' keys are not ours. */
	assert_int_equal(nbd_kernel_conf_parse("device = nbd\n"
					       "restart-limit = 3\n",
					       "t.conf", &c, &err),
			 0);
	assert_int_equal(c.reconnect_timeout_s, 60);
	assert_int_equal(c.io_timeout_s, 5);
}

static void test_conf_values(void **state)
{
	struct nbd_kernel_conf c;
	struct bks_error err = {0};
	(void)state;

	assert_int_equal(nbd_kernel_conf_parse("reconnect-timeout = 120\n"
					       "# comment\n"
					       "nbd-io-timeout = 2\n",
					       "t.conf", &c, &err),
			 0);
	assert_int_equal(c.reconnect_timeout_s, 120);
	assert_int_equal(c.io_timeout_s, 2);
	/* 0: no wait for a reconnect (I/O fails at once, as before). */
	assert_int_equal(nbd_kernel_conf_parse("reconnect-timeout = 0\n",
					       "t.conf", &c, &err),
			 0);
	assert_int_equal(c.reconnect_timeout_s, 0);
	assert_int_equal(nbd_kernel_conf_parse("reconnect-timeout = 86400\n",
					       "t.conf", &c, &err),
			 0);
	assert_int_equal(c.reconnect_timeout_s, 86400);
}

static void test_conf_invalid(void **state)
{
	static const char *const bad[] = {
	    "reconnect-timeout = soon\n",
	    "reconnect-timeout = -1\n",
	    "reconnect-timeout = 86401\n",
	    "reconnect-timeout = 1e3\n",
	    "reconnect-timeout = 99999999\n",
	    "reconnect-timeout = 12s\n",
	    "reconnect-timeout =\n",
	    "nbd-io-timeout = 0\n",
	    "nbd-io-timeout = 0x10\n",
	    "reconnect-timeout = 5\nreconnect-timeout = 6\n",
	};
	struct nbd_kernel_conf c;
	(void)state;

	for (size_t i = 0; i < sizeof(bad) / sizeof(*bad); i++) {
		struct bks_error err = {0};

		assert_int_equal(
		    nbd_kernel_conf_parse(bad[i], "t.conf", &c, &err), -EINVAL);
		assert_int_equal(err.code, EINVAL);
		/* The message names the file and line. */
		assert_non_null(strstr(err.msg, "t.conf:"));
	}
	{
		struct bks_error err = {0};

		assert_int_equal(nbd_kernel_conf_parse("\nnbd-io-timeout = 0\n",
						       "x.conf", &c, &err),
				 -EINVAL);
		assert_string_equal(err.msg, "x.conf:2: nbd-io-timeout wants a "
					     "number of seconds, 1 to 86400");
	}
}

static void test_no_devices(void **state)
{
	struct bks_error err = {0};
	unsigned int n = 99;
	(void)state;

	assert_int_equal(nbd_kernel_reconnect_all(
			     "/nonexistent/blkstack/x/nbd.sock", &n, &err),
			 0);
	assert_int_equal(n, 0);
	assert_int_equal(
	    nbd_kernel_fail_all("/nonexistent/blkstack/x/nbd.sock", &err), 0);
	assert_false(nbd_kernel_serves(4000000, "/nonexistent"));
	assert_false(nbd_kernel_connected(4000000));
	{
		char buf[64];

		assert_int_equal(nbd_kernel_backend(4000000, buf, sizeof(buf)),
				 -ENOENT);
	}
	/* Disconnecting a device that is not connected is success. */
	assert_int_equal(nbd_kernel_disconnect(4000000, &err), 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_conf_defaults),
	    cmocka_unit_test(test_conf_values),
	    cmocka_unit_test(test_conf_invalid),
	    cmocka_unit_test(test_no_devices),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
