/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* Unit tests: socket send buffers (libblkstack/sock.c). */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cmocka.h>

#include "blkstack/sock.h"

#define MIB (1024 * 1024)

static int sndbuf_of(int fd)
{
	int val = 0;
	socklen_t len = sizeof(val);

	assert_int_equal(getsockopt(fd, SOL_SOCKET, SO_SNDBUF, &val, &len), 0);
	return val;
}

/* Bytes of a 1 MiB message one non-blocking send() takes. */
static ssize_t one_send(int fd)
{
	char *buf = calloc(1, MIB);
	ssize_t n;

	assert_non_null(buf);
	n = send(fd, buf, MIB, MSG_DONTWAIT);
	free(buf);
	return n;
}

/*
 * As root (CAP_NET_ADMIN) the buffer passes net.core.wmem_max, and a
 * whole 1 MiB reply goes in one call; the default buffer takes a part.
 */
static void test_grow_takes_whole_reply(void **state)
{
	int sv[2], before, now;

	(void)state;
	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
	before = sndbuf_of(sv[0]);
	now = bks_sock_grow_sndbuf(sv[0], BKS_SOCK_SNDBUF);
	assert_int_equal(now, sndbuf_of(sv[0]));
	assert_true(now >= before);
	if (geteuid() == 0) {
		assert_true(now >= BKS_SOCK_SNDBUF);
		assert_int_equal(one_send(sv[0]), MIB);
		/* The peer's default buffer takes less: the test can fail. */
		if (before < MIB)
			assert_true(one_send(sv[1]) < MIB);
	}
	close(sv[0]);
	close(sv[1]);
}

/* A buffer larger than asked for is left alone. */
static void test_never_lowers(void **state)
{
	int sv[2], big;

	(void)state;
	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
	big = bks_sock_grow_sndbuf(sv[0], 2 * MIB);
	assert_true(big > 0);
	assert_int_equal(bks_sock_grow_sndbuf(sv[0], 4096), big);
	assert_int_equal(sndbuf_of(sv[0]), big);
	/* A size of 0 or below asks for nothing. */
	assert_int_equal(bks_sock_grow_sndbuf(sv[0], 0), big);
	assert_int_equal(bks_sock_grow_sndbuf(sv[0], -1), big);
	close(sv[0]);
	close(sv[1]);
}

/* Not a socket, or no descriptor at all: -errno, nothing else. */
static void test_not_a_socket(void **state)
{
	int p[2];

	(void)state;
	assert_int_equal(pipe(p), 0);
	assert_int_equal(bks_sock_grow_sndbuf(p[0], BKS_SOCK_SNDBUF),
			 -ENOTSOCK);
	close(p[0]);
	close(p[1]);
	assert_int_equal(bks_sock_grow_sndbuf(-1, BKS_SOCK_SNDBUF), -EBADF);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_grow_takes_whole_reply),
	    cmocka_unit_test(test_never_lowers),
	    cmocka_unit_test(test_not_a_socket),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
