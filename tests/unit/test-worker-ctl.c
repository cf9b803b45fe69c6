/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Unit tests: the worker's control socket (helpers/worker/worker-ctl.c)
 * acts on the worker only through the ops given at worker_ctl_new().
 * Here the ops belong to the test: a client on a real Unix socket sends
 * commands, the ctl serves them on a real loop, and the test checks which
 * ops were called, with what, and the replies.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cmocka.h>

#include "worker-ctl.h"
#include "worker.h"

/* The test gives up on a loop that does not stop by itself. */
#define GUARD_NS (5ull * 1000000000ull)
/* A pause completes this long after it was asked for. */
#define QUIESCE_NS (2ull * 1000000ull)

struct fixture {
	struct worker w;
	struct worker_ctl *ctl;
	char tmpdir[64], sock[128];
	int listen_fd, client;
	struct bks_timer guard, quiesce;
	bool guard_fired;
	bool complete_pauses; /* the pause op's waiter gets called back */
	/* What the ops saw. */
	char calls[64]; /* one letter per call: P(ause) U(npause) S(hutdown) */
	unsigned int logs;
	worker_pause_fn *pause_fn, *forgot_fn;
	void *pause_arg, *forgot_arg;
	unsigned int forgets;
};

static struct fixture *of(const struct worker *w)
{
	return (struct fixture *)((char *)w - offsetof(struct fixture, w));
}

static void record(struct fixture *f, char c)
{
	size_t n = strlen(f->calls);

	if (n + 1 < sizeof(f->calls))
		f->calls[n] = c;
}

static void op_log(const struct worker *w, int prio, const char *fmt,
		   va_list ap)
{
	(void)prio;
	(void)fmt;
	(void)ap;
	of(w)->logs++;
}

static void quiesced(struct bks_timer *t)
{
	struct fixture *f = t->opaque;
	worker_pause_fn *fn = f->w.pause_done;

	f->w.state = WORKER_PAUSED;
	f->w.pause_done = NULL;
	if (fn)
		fn(f->w.pause_arg, 0);
}

static int op_pause(struct worker *w, worker_pause_fn *done, void *arg)
{
	struct fixture *f = of(w);

	record(f, 'P');
	f->pause_fn = done;
	f->pause_arg = arg;
	w->state = WORKER_PAUSING;
	w->pause_done = done;
	w->pause_arg = arg;
	if (f->complete_pauses)
		bks_timer_arm(&f->quiesce, QUIESCE_NS);
	else
		bks_loop_stop(w->loop); /* the test frees the ctl meanwhile */
	return 0;
}

static int op_unpause(struct worker *w)
{
	record(of(w), 'U');
	w->state = WORKER_RUNNING;
	return 0;
}

static void op_pause_forget(struct worker *w, worker_pause_fn *done, void *arg)
{
	struct fixture *f = of(w);

	f->forgets++;
	f->forgot_fn = done;
	f->forgot_arg = arg;
	if (w->pause_done == done && w->pause_arg == arg) {
		w->pause_done = NULL;
		w->pause_arg = NULL;
	}
}

static void op_shutdown(struct worker *w)
{
	record(of(w), 'S');
	w->state = WORKER_STOPPING;
	bks_loop_stop(w->loop);
}

static const struct worker_ctl_ops test_ops = {
    .log = op_log,
    .pause = op_pause,
    .unpause = op_unpause,
    .pause_forget = op_pause_forget,
    .shutdown = op_shutdown,
};

static void guard_fires(struct bks_timer *t)
{
	struct fixture *f = t->opaque;

	f->guard_fired = true;
	bks_loop_stop(f->w.loop);
}

static int setup(void **state)
{
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	struct bks_error err;
	struct fixture *f = calloc(1, sizeof(*f));

	assert_non_null(f);
	f->listen_fd = f->client = -1;
	snprintf(f->tmpdir, sizeof(f->tmpdir), "/tmp/bks-test-ctl-XXXXXX");
	assert_non_null(mkdtemp(f->tmpdir));
	snprintf(f->sock, sizeof(f->sock), "%s/ctl.sock", f->tmpdir);
	memcpy(sa.sun_path, f->sock, strlen(f->sock) + 1);
	f->listen_fd =
	    socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	assert_true(f->listen_fd >= 0);
	assert_int_equal(bind(f->listen_fd, (struct sockaddr *)&sa, sizeof(sa)),
			 0);
	assert_int_equal(listen(f->listen_fd, 8), 0);

	assert_int_equal(bks_loop_new(&f->w.loop, &err), 0);
	f->w.name = "test";
	f->w.chain_str = "ram:size=1M";
	snprintf(f->w.dir, sizeof(f->w.dir), "%s", f->tmpdir);
	f->w.foreground = true;
	f->w.state = WORKER_RUNNING;
	f->w.started_ns = bks_now_ns();
	bks_timer_init(f->w.loop, &f->guard, guard_fires, f);
	bks_timer_init(f->w.loop, &f->quiesce, quiesced, f);
	bks_timer_arm(&f->guard, GUARD_NS);
	assert_int_equal(
	    worker_ctl_new(&f->ctl, &f->w, &test_ops, f->listen_fd, &err), 0);

	/* A Unix stream connect completes at once, before any accept. */
	f->client = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	assert_true(f->client >= 0);
	assert_int_equal(connect(f->client, (struct sockaddr *)&sa, sizeof(sa)),
			 0);
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	struct fixture *f = *state;

	worker_ctl_free(f->ctl);
	bks_timer_cancel(&f->guard);
	bks_timer_cancel(&f->quiesce);
	bks_loop_free(f->w.loop);
	if (f->client >= 0)
		close(f->client);
	if (f->listen_fd >= 0)
		close(f->listen_fd);
	unlink(f->sock);
	rmdir(f->tmpdir);
	free(f);
	return 0;
}

static void send_line(struct fixture *f, const char *s)
{
	assert_int_equal(write(f->client, s, strlen(s)), (ssize_t)strlen(s));
}

/* Read the replies up to and including the nth newline. */
static void read_replies(struct fixture *f, char *buf, size_t size,
			 unsigned int n)
{
	size_t len = 0;

	while (n) {
		ssize_t r = read(f->client, buf + len, size - 1 - len);

		assert_true(r > 0);
		for (size_t i = len; i < len + (size_t)r && n; i++) {
			if (buf[i] == '\n')
				n--;
		}
		len += (size_t)r;
		assert_true(len < size - 1);
	}
	buf[len] = '\0';
}

/*
 * pause, unpause and shutdown reach the worker through ops, in order; the
 * pause is answered only once the worker calls the waiter back.
 */
static void test_commands_call_ops(void **state)
{
	struct fixture *f = *state;
	char buf[4096];

	f->complete_pauses = true;
	send_line(f, "pause\nunpause\nshutdown\n");
	assert_int_equal(bks_loop_run(f->w.loop), 0);
	assert_false(f->guard_fired);
	assert_string_equal(f->calls, "PUS");
	assert_true(f->logs >= 3);
	assert_non_null(f->pause_fn);
	read_replies(f, buf, sizeof(buf), 3);
	assert_string_equal(buf, "{\"ok\":true,\"state\":\"paused\"}\n"
				 "{\"ok\":true}\n"
				 "{\"ok\":true}\n");
	/* No waiter was left to take back. */
	worker_ctl_free(f->ctl);
	f->ctl = NULL;
	assert_int_equal(f->forgets, 0);
}

/*
 * A ctl freed while its pause waiter is still registered takes that
 * waiter back through ops->pause_forget (the worker must not call a freed
 * ctl).
 */
static void test_free_forgets_pending_pause(void **state)
{
	struct fixture *f = *state;

	f->complete_pauses = false;
	send_line(f, "pause\n");
	assert_int_equal(bks_loop_run(f->w.loop), 0);
	assert_false(f->guard_fired);
	assert_string_equal(f->calls, "P");
	worker_ctl_free(f->ctl);
	f->ctl = NULL;
	assert_int_equal(f->forgets, 1);
	assert_ptr_equal(f->forgot_fn, f->pause_fn);
	assert_ptr_equal(f->forgot_arg, f->pause_arg);
	assert_null(f->w.pause_done);
}

/* info answers from the worker's state without calling any op. */
static void test_info_reads_state(void **state)
{
	struct fixture *f = *state;
	char buf[4096];

	send_line(f, "info\nshutdown\n");
	assert_int_equal(bks_loop_run(f->w.loop), 0);
	assert_false(f->guard_fired);
	assert_string_equal(f->calls, "S");
	read_replies(f, buf, sizeof(buf), 2);
	assert_non_null(strstr(buf, "\"name\":\"test\""));
	assert_non_null(strstr(buf, "\"state\":\"running\""));
}

/*
 * blkif-watch: refused with ENOTCONN while no ring is connected (the
 * connection goes on), refused with arguments; the ctl is the ring's
 * listener from worker_ctl_new() to worker_ctl_free().
 */
static void test_blkif_watch_without_ring(void **state)
{
	struct fixture *f = *state;
	char buf[4096];

	assert_non_null(f->w.blkif_notify);
	send_line(f, "blkif-watch\nblkif-watch now\nshutdown\n");
	assert_int_equal(bks_loop_run(f->w.loop), 0);
	assert_false(f->guard_fired);
	read_replies(f, buf, sizeof(buf), 3);
	assert_non_null(strstr(buf, "{\"ok\":false,\"error\":\"test: "
				    "blkif-watch: no ring is connected\","
				    "\"errno\":\"ENOTCONN\""));
	assert_non_null(strstr(buf, "\"error\":\"test: blkif-watch takes no "
				    "arguments\",\"errno\":\"EINVAL\""));
	assert_non_null(strstr(buf, "}\n{\"ok\":true}\n"));
	/* No one watches: a ring event is nobody's business. */
	f->w.blkif_notify(f->w.blkif_notify_arg, "none", "gone");
	worker_ctl_free(f->ctl);
	f->ctl = NULL;
	assert_null(f->w.blkif_notify);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test_setup_teardown(test_commands_call_ops, setup,
					    teardown),
	    cmocka_unit_test_setup_teardown(test_free_forgets_pending_pause,
					    setup, teardown),
	    cmocka_unit_test_setup_teardown(test_info_reads_state, setup,
					    teardown),
	    cmocka_unit_test_setup_teardown(test_blkif_watch_without_ring,
					    setup, teardown),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
