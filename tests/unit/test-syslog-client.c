/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Unit tests: the non-blocking syslog client (libblkstack/syslog-client.c)
 * against a real datagram socket standing in for /dev/log:
 *
 *   - a line arrives in syslog(3)'s format, with its priority;
 *   - a daemon that does not read: sends never block, drops are counted,
 *     and lines get through again once it reads;
 *   - no daemon, then a daemon (restarted): drops, then delivery.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <syslog.h>
#include <unistd.h>

#include "blkstack/loop.h"
#include "blkstack/syslog-client.h"

struct fx {
	char dir[64];
	char path[96];
	int daemon; /* the stand-in /dev/log, or -1 */
};

static int start_daemon(struct fx *fx)
{
	struct sockaddr_un a = {.sun_family = AF_UNIX};
	int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);

	assert_true(fd >= 0);
	snprintf(a.sun_path, sizeof(a.sun_path), "%s", fx->path);
	unlink(fx->path);
	assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof(a)), 0);
	return fd;
}

static void stop_daemon(struct fx *fx)
{
	if (fx->daemon >= 0)
		close(fx->daemon);
	fx->daemon = -1;
	unlink(fx->path);
}

static int setup(void **state)
{
	static struct fx fx;

	snprintf(fx.dir, sizeof(fx.dir), "/tmp/bks-syslog.XXXXXX");
	assert_non_null(mkdtemp(fx.dir));
	snprintf(fx.path, sizeof(fx.path), "%s/log", fx.dir);
	fx.daemon = start_daemon(&fx);
	*state = &fx;
	return 0;
}

static int teardown(void **state)
{
	struct fx *fx = *state;

	stop_daemon(fx);
	rmdir(fx->dir);
	return 0;
}

/* The next datagram, NUL-terminated, or "" when there is none. */
static void recv_line(struct fx *fx, char *buf, size_t size)
{
	ssize_t n = recv(fx->daemon, buf, size - 1, MSG_DONTWAIT);

	buf[n > 0 ? n : 0] = '\0';
}

static void test_format(void **state)
{
	struct fx *fx = *state;
	struct bks_error err = {0};
	struct bks_syslog *s;
	char buf[2048], want[64];
	char *big = malloc(4096);

	assert_int_equal(
	    bks_syslog_open(&s, "blkstack-worker", LOG_DAEMON, fx->path, &err),
	    0);
	bks_syslog_send(s, LOG_WARNING, "vm1: control: hello");
	recv_line(fx, buf, sizeof(buf));
	/* <PRI>Mmm dd hh:mm:ss IDENT[PID]: MESSAGE */
	snprintf(want, sizeof(want), "<%d>", LOG_DAEMON | LOG_WARNING);
	assert_memory_equal(buf, want, strlen(want));
	assert_int_equal(buf[strlen(want) + 3], ' ');
	assert_int_equal(buf[strlen(want) + 15], ' ');
	snprintf(want, sizeof(want), " blkstack-worker[%ld]: ", (long)getpid());
	assert_non_null(strstr(buf, want));
	assert_string_equal(strstr(buf, want) + strlen(want),
			    "vm1: control: hello");
	/* A long line is cut, not dropped. */
	assert_non_null(big);
	memset(big, 'a', 4095);
	big[4095] = '\0';
	bks_syslog_send(s, LOG_INFO, big);
	recv_line(fx, buf, sizeof(buf));
	assert_true(strlen(strstr(buf, want) + strlen(want)) == 1024);
	assert_int_equal(bks_syslog_dropped(s), 0);
	bks_syslog_close(s);
	free(big);
}

/* A daemon that does not read: the sender goes on, and counts. */
static void test_full_drops(void **state)
{
	struct fx *fx = *state;
	struct bks_error err = {0};
	struct bks_syslog *s;
	char buf[2048];
	uint64_t t0, dropped;
	int n = 0;

	assert_int_equal(bks_syslog_open(&s, "t", LOG_DAEMON, fx->path, &err),
			 0);
	t0 = bks_now_ns();
	for (int i = 0; i < 5000; i++)
		bks_syslog_send(s, LOG_INFO, "a line that nobody reads yet");
	/* 5000 sends to a full socket: no waiting (a blocking send would
	 * wait for ever here). */
	assert_true(bks_now_ns() - t0 < 5000ull * 1000 * 1000);
	dropped = bks_syslog_dropped(s);
	assert_true(dropped > 0);
	assert_true(dropped < 5000);
	/* The daemon catches up: lines get through again. */
	do {
		recv_line(fx, buf, sizeof(buf));
		n++;
	} while (buf[0]);
	assert_int_equal(n - 1, 5000 - (int)dropped);
	bks_syslog_send(s, LOG_INFO, "after");
	recv_line(fx, buf, sizeof(buf));
	assert_non_null(strstr(buf, ": after"));
	assert_int_equal(bks_syslog_dropped(s), dropped);
	bks_syslog_close(s);
}

/* No daemon at first, and a daemon restarted: reconnects. */
static void test_no_daemon_then_restart(void **state)
{
	struct fx *fx = *state;
	struct bks_error err = {0};
	struct bks_syslog *s;
	char buf[2048];

	stop_daemon(fx);
	assert_int_equal(bks_syslog_open(&s, "t", LOG_DAEMON, fx->path, &err),
			 0);
	bks_syslog_send(s, LOG_INFO, "lost");
	assert_int_equal(bks_syslog_dropped(s), 1);
	fx->daemon = start_daemon(fx);
	bks_syslog_send(s, LOG_INFO, "one");
	recv_line(fx, buf, sizeof(buf));
	assert_non_null(strstr(buf, ": one"));
	/* Restarted: the old socket is dead, a new one takes the line. */
	stop_daemon(fx);
	fx->daemon = start_daemon(fx);
	bks_syslog_send(s, LOG_INFO, "two");
	recv_line(fx, buf, sizeof(buf));
	assert_non_null(strstr(buf, ": two"));
	assert_int_equal(bks_syslog_dropped(s), 1);
	bks_syslog_close(s);
	bks_syslog_close(NULL);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test_setup_teardown(test_format, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_full_drops, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_no_daemon_then_restart, setup,
					    teardown),
	};

	return cmocka_run_group_tests_name("syslog-client", tests, NULL, NULL);
}
