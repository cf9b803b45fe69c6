/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* Unit tests: the nbd: sink's args (libblkstack/nbd-target.c). */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "blkstack/chain.h"
#include "blkstack/nbd-target.h"
#include "unit-chain.h"

static void test_tcp(void **state)
{
	struct bks_nbd_target t;
	struct bks_error err = {0};

	(void)state;
	assert_int_equal(bks_nbd_target_parse("nbd://storage1/vm1", &t, &err),
			 0);
	assert_int_equal(t.transport, BKS_NBD_TCP);
	assert_false(t.tls);
	assert_string_equal(t.host, "storage1");
	assert_string_equal(t.port, "10809");
	assert_string_equal(t.export, "vm1");
	assert_int_equal(t.retry_s, BKS_NBD_RETRY_DEFAULT);
	assert_int_equal(t.connect_timeout_s, BKS_NBD_CONNECT_DEFAULT);
	assert_false(t.trust_reconnect_flush);

	assert_int_equal(
	    bks_nbd_target_parse("nbd://10.0.0.2:10900/a%20b/c", &t, &err), 0);
	assert_string_equal(t.host, "10.0.0.2");
	assert_string_equal(t.port, "10900");
	assert_string_equal(t.export, "a b/c");

	assert_int_equal(bks_nbd_target_parse("nbd://[fe80::1]:99", &t, &err),
			 0);
	assert_string_equal(t.host, "fe80::1");
	assert_string_equal(t.port, "99");
	assert_string_equal(t.export, "");

	assert_int_equal(
	    bks_nbd_target_parse("nbds://h/e?tls-certificates=/etc/pki/nbd", &t,
				 &err),
	    0);
	assert_true(t.tls);
	assert_string_equal(t.tls_certificates, "/etc/pki/nbd");
}

static void test_unix_and_options(void **state)
{
	struct bks_nbd_target t;
	struct bks_error err = {0};

	(void)state;
	assert_int_equal(
	    bks_nbd_target_parse("nbd+unix:///vm1?socket=/run/nbd/s.sock,"
				 "retry=0,connect-timeout=3,"
				 "reconnect-flush=trust",
				 &t, &err),
	    0);
	assert_int_equal(t.transport, BKS_NBD_UNIX);
	assert_string_equal(t.socket, "/run/nbd/s.sock");
	assert_string_equal(t.export, "vm1");
	assert_int_equal(t.retry_s, 0);
	assert_int_equal(t.connect_timeout_s, 3);
	assert_true(t.trust_reconnect_flush);
	assert_string_equal(t.uri, "nbd+unix:///vm1?socket=/run/nbd/s.sock");

	assert_int_equal(
	    bks_nbd_target_parse("nbd+unix:///?socket=/tmp/x%2By", &t, &err),
	    0);
	assert_string_equal(t.socket, "/tmp/x+y");
	assert_string_equal(t.export, "");
}

/* Each bad args is refused with EINVAL and a message holding `want`. */
static void refused(const char *args, const char *want)
{
	struct bks_nbd_target t;
	struct bks_error err = {0};
	int rc = bks_nbd_target_parse(args, &t, &err);

	if (rc != -EINVAL || !strstr(err.msg, want))
		fail_msg("'%s': rc %d, message '%s', wanted '%s'", args, rc,
			 err.msg, want);
	assert_non_null(strstr(err.msg, "usage: nbd:URI"));
}

static void test_refused(void **state)
{
	(void)state;
	refused("", "missing URI");
	refused("http://h/e", "not an NBD URI");
	refused("nbd:/h", "not an NBD URI");
	refused("nbd://", "no host");
	refused("nbd:///e", "no host");
	refused("nbd://u@h/e", "user information");
	refused("nbd://h:0/e", "port");
	refused("nbd://h:65536/e", "port");
	refused("nbd://h:12x/e", "port");
	refused("nbd://h:/e", "port");
	refused("nbd://-h/e", "cannot start with '-'");
	refused("nbd://h_x/e", "character '_'");
	refused("nbd://[fe80::1/e", "'[' without ']'");
	refused("nbd://[fe80::g]/e", "IPv6");
	refused("nbd://[::1]x/e", "junk after ']'");
	refused("nbd://h/e#frag", "fragment");
	refused("nbd://h/a b", "character ' '");
	refused("nbd://h/a%2", "two hex digits");
	refused("nbd://h/a%zz", "two hex digits");
	refused("nbd://h/a%00b", "control character");
	refused("nbd://h/a%0ab", "control character");
	refused("nbd://h/e?socket=/s", "socket= belongs to nbd+unix");
	refused("nbd://h/e?tls-certificates=/d", "needs TLS");
	refused("nbd://h/e?foo=bar", "unknown query parameter 'foo'");
	refused("nbd://h/e?novalue", "KEY=VALUE");
	refused("nbd+unix://h/e?socket=/s", "takes no host");
	refused("nbd+unix:///e", "needs ?socket=PATH");
	refused("nbd+unix:///e?socket=rel/s", "not an absolute path");
	refused("nbd+unix:///e?socket=/a/../s", "'..' component");
	refused("nbd+unix:///e?socket=/a/./s", "'.' component");
	refused("nbd+unix:///e?socket=/a%2Cb", "holds a ','");
	refused("nbd+unix:///e?socket=/a&socket=/b", "given twice");
	refused("nbd+unix:///e?socket=/a&", "empty query parameter");
	refused("nbd+unix:///e?socket=/"
		"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
		"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
		"longer than 107 bytes");
	refused("nbd://h/e,", "empty option");
	refused("nbd://h/e,retry=-1", "option 'retry'");
	refused("nbd://h/e,retry=3601", "from 0 to 3600");
	refused("nbd://h/e,connect-timeout=0", "from 1 to 600");
	refused("nbd://h/e,reconnect-flush=maybe", "neither 'fail' nor");
	refused("nbd://h/e,bogus=1", "bogus");
	refused("nbd://h/e,retry=1,retry=2", "twice");
}

/* The chain parser runs the same check (the parse-only table). */
static void test_chain_parse(void **state)
{
	(void)state;
	unit_chain_parse("log:|nbd:nbd://h:10809/e,retry=5", NULL);
	unit_chain_parse("nbd:nbd://h/e?foo=1", "unknown query parameter");
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_tcp),
	    cmocka_unit_test(test_unix_and_options),
	    cmocka_unit_test(test_refused),
	    cmocka_unit_test(test_chain_parse),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
