/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Unit tests: the helper-thread pool for blocking calls
 * (libblkstack/offload.c).
 *
 *   - fn runs on a helper thread, done on the loop thread, from the loop;
 *   - many jobs, resubmitted from their done, all complete, bounded;
 *   - errors: fn's -errno, and the refusals of submit and new;
 *   - the loop keeps running (a timer fires) while a job blocks on a
 *     pipe, and the timer is what releases it;
 *   - free with jobs in flight: queued ones cancelled, running ones
 *     waited for (bounded), or given up on after the bound;
 *   - free from inside a done callback.
 *
 * Jobs that block do so on a pipe the test writes to (for at most 5 s).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "blkstack/loop.h"
#include "blkstack/offload.h"

#define MS (1000ull * 1000)

/* A test job: what fn and done saw. */
struct tjob {
	struct bks_offload_job job;
	int ret;      /* what fn returns */
	int block_fd; /* >= 0: fn reads one byte from it first */
	int back_fd;  /* >= 0: fn writes one byte to it last */
	pthread_t fn_thread;
	pthread_t done_thread;
	unsigned int runs; /* fn calls */
	unsigned int dones;
	int result;
	/* For the resubmitting test. */
	struct bks_offload *o;
	unsigned int resubmit; /* submit again from done this many times */
	unsigned long *total;
};

static int tjob_fn(struct bks_offload_job *job)
{
	struct tjob *t = job->opaque;
	char c = 0;

	t->fn_thread = pthread_self();
	__atomic_add_fetch(&t->runs, 1, __ATOMIC_RELAXED);
	if (t->block_fd >= 0) {
		/* Bounded, so that a pool that ran fn on the loop thread
		 * fails the test instead of hanging it. */
		struct pollfd p = {.fd = t->block_fd, .events = POLLIN};

		if (poll(&p, 1, 5000) != 1)
			return -ETIMEDOUT;
		if (read(t->block_fd, &c, 1) != 1)
			return -EIO;
	}
	if (t->back_fd >= 0 && write(t->back_fd, &c, 1) != 1)
		return -EIO;
	return t->ret;
}

static void tjob_done(struct bks_offload_job *job, int result)
{
	struct tjob *t = job->opaque;

	t->done_thread = pthread_self();
	t->dones++;
	t->result = result;
	if (t->total)
		(*t->total)++;
	if (t->resubmit) {
		t->resubmit--;
		assert_int_equal(bks_offload_submit(t->o, &t->job), 0);
	}
}

static void tjob_init(struct tjob *t, int ret)
{
	memset(t, 0, sizeof(*t));
	t->job.fn = tjob_fn;
	t->job.done = tjob_done;
	t->job.opaque = t;
	t->ret = ret;
	t->block_fd = t->back_fd = -1;
	t->result = 1; /* not a result: "never done" */
}

struct fx {
	struct bks_loop *loop;
	struct bks_offload *o;
	int pipe[2]; /* jobs block reading [0]; the test writes [1] */
};

static int setup(void **state)
{
	struct bks_error err = {0};
	static struct fx fx;

	memset(&fx, 0, sizeof(fx));
	assert_int_equal(bks_loop_new(&fx.loop, &err), 0);
	assert_int_equal(pipe(fx.pipe), 0);
	*state = &fx;
	return 0;
}

static int teardown(void **state)
{
	struct fx *fx = *state;

	if (fx->o)
		assert_int_equal(bks_offload_free(fx->o, 0), 0);
	close(fx->pipe[0]);
	close(fx->pipe[1]);
	bks_loop_free(fx->loop);
	return 0;
}

static void new_pool(struct fx *fx, unsigned int threads, unsigned int max)
{
	struct bks_error err = {0};

	assert_int_equal(bks_offload_new(&fx->o, fx->loop, threads, max, &err),
			 0);
}

/* Run the loop until *count reaches want (or 10 s pass). */
static void run_until(struct fx *fx, const unsigned int *count,
		      unsigned int want)
{
	uint64_t deadline = bks_now_ns() + 10000 * MS;

	while (*count < want && bks_now_ns() < deadline)
		assert_true(bks_loop_run_once(fx->loop, 1000) >= 0);
	assert_int_equal(*count, want);
}

static void release(struct fx *fx, unsigned int n)
{
	for (unsigned int i = 0; i < n; i++)
		assert_int_equal(write(fx->pipe[1], "x", 1), 1);
}

static struct bks_offload_stats stats(const struct fx *fx)
{
	struct bks_offload_stats st;

	bks_offload_get_stats(fx->o, &st);
	return st;
}

/* ---- completion ---------------------------------------------------------- */

static void test_done_on_loop_thread(void **state)
{
	struct fx *fx = *state;
	struct tjob t;

	new_pool(fx, 2, 4);
	tjob_init(&t, 7);
	assert_int_equal(bks_offload_submit(fx->o, &t.job), 0);
	/* Never from inside submit, only from the loop. */
	assert_int_equal(t.dones, 0);
	run_until(fx, &t.dones, 1);
	assert_int_equal(t.runs, 1);
	assert_int_equal(t.result, 7);
	assert_false(pthread_equal(t.fn_thread, pthread_self()));
	assert_true(pthread_equal(t.done_thread, pthread_self()));
	assert_int_equal(stats(fx).submitted, 1);
	assert_int_equal(stats(fx).completed, 1);
	assert_int_equal(stats(fx).outstanding, 0);
	/* Free again once done: it can go round again. */
	assert_int_equal(bks_offload_submit(fx->o, &t.job), 0);
	run_until(fx, &t.dones, 2);
}

/* 64 jobs, each resubmitted from its done: 6400 runs on 3 threads. */
static void test_many_jobs(void **state)
{
	struct fx *fx = *state;
	enum {
		N = 64,
		ROUNDS = 100
	};
	static struct tjob t[N];
	unsigned long total = 0;
	unsigned int total32 = 0;
	uint64_t deadline = bks_now_ns() + 20000 * MS;

	new_pool(fx, 3, N);
	for (int i = 0; i < N; i++) {
		tjob_init(&t[i], i);
		t[i].o = fx->o;
		t[i].resubmit = ROUNDS - 1;
		t[i].total = &total;
		assert_int_equal(bks_offload_submit(fx->o, &t[i].job), 0);
	}
	while (total < (unsigned long)N * ROUNDS && bks_now_ns() < deadline)
		assert_true(bks_loop_run_once(fx->loop, 1000) >= 0);
	for (int i = 0; i < N; i++) {
		assert_int_equal(t[i].runs, ROUNDS);
		assert_int_equal(t[i].dones, ROUNDS);
		assert_int_equal(t[i].result, i);
		assert_true(pthread_equal(t[i].done_thread, pthread_self()));
		total32 += t[i].dones;
	}
	assert_int_equal(total32, N * ROUNDS);
	assert_int_equal(stats(fx).completed, N * ROUNDS);
	assert_int_equal(stats(fx).errors, 0);
	assert_int_equal(stats(fx).refused, 0);
	assert_true(stats(fx).outstanding_max <= N);
	assert_int_equal(stats(fx).outstanding, 0);
}

/* ---- errors -------------------------------------------------------------- */

static void test_errors(void **state)
{
	struct fx *fx = *state;
	struct tjob a, b, c, bad;

	new_pool(fx, 2, 2);

	/* fn's -errno reaches done as it is. */
	tjob_init(&a, -EIO);
	assert_int_equal(bks_offload_submit(fx->o, &a.job), 0);
	run_until(fx, &a.dones, 1);
	assert_int_equal(a.result, -EIO);
	assert_int_equal(stats(fx).errors, 1);

	/* No fn or no done. */
	tjob_init(&bad, 0);
	bad.job.fn = NULL;
	assert_int_equal(bks_offload_submit(fx->o, &bad.job), -EINVAL);
	tjob_init(&bad, 0);
	bad.job.done = NULL;
	assert_int_equal(bks_offload_submit(fx->o, &bad.job), -EINVAL);

	/* Bounded: two blocked jobs fill a pool of 2; a third is refused,
	 * and so is a job submitted twice. */
	tjob_init(&a, 0);
	tjob_init(&b, 0);
	tjob_init(&c, 0);
	a.block_fd = b.block_fd = fx->pipe[0];
	assert_int_equal(bks_offload_submit(fx->o, &a.job), 0);
	assert_int_equal(bks_offload_submit(fx->o, &a.job), -EBUSY);
	assert_int_equal(bks_offload_submit(fx->o, &b.job), 0);
	assert_int_equal(bks_offload_submit(fx->o, &c.job), -EAGAIN);
	assert_int_equal(stats(fx).refused, 1);
	assert_int_equal(stats(fx).outstanding, 2);
	release(fx, 2);
	run_until(fx, &b.dones, 1);
	run_until(fx, &a.dones, 1);
	assert_int_equal(a.result, 0);
	assert_int_equal(b.result, 0);
	assert_int_equal(c.dones, 0);
	assert_int_equal(bks_offload_submit(fx->o, &c.job), 0);
	run_until(fx, &c.dones, 1);
}

static void test_new_errors(void **state)
{
	struct fx *fx = *state;
	struct bks_error err = {0};
	int dummy;
	struct bks_offload *o = (struct bks_offload *)&dummy;

	assert_int_equal(bks_offload_new(&o, fx->loop, 0, 4, &err), -EINVAL);
	assert_null(o);
	assert_non_null(strstr(err.msg, "threads"));
	assert_int_equal(bks_offload_new(&o, fx->loop, 65, 4, &err), -EINVAL);
	assert_int_equal(bks_offload_new(&o, fx->loop, 1, 0, &err), -EINVAL);
	assert_non_null(strstr(err.msg, "jobs"));
	assert_int_equal(bks_offload_free(NULL, 0), 0);
}

/* ---- the loop goes on ---------------------------------------------------- */

struct release_timer {
	struct bks_timer timer;
	struct fx *fx;
	struct tjob *job;
	bool fired;
	bool job_done_when_fired;
};

static void on_release(struct bks_timer *timer)
{
	struct release_timer *rt = timer->opaque;

	rt->fired = true;
	rt->job_done_when_fired = rt->job->dones > 0;
	release(rt->fx, 1);
}

/*
 * A job blocks in read() on a pipe that only a loop timer writes: the job
 * can only finish if the loop keeps running while it is in its call.
 */
static void test_loop_runs_while_job_blocks(void **state)
{
	struct fx *fx = *state;
	struct release_timer rt = {0};
	struct tjob t;
	uint64_t t0 = bks_now_ns();

	new_pool(fx, 1, 1);
	tjob_init(&t, 0);
	t.block_fd = fx->pipe[0];
	rt.fx = fx;
	rt.job = &t;
	bks_timer_init(fx->loop, &rt.timer, on_release, &rt);
	bks_timer_arm(&rt.timer, 50 * MS);
	assert_int_equal(bks_offload_submit(fx->o, &t.job), 0);
	run_until(fx, &t.dones, 1);
	assert_true(rt.fired);
	assert_false(rt.job_done_when_fired);
	assert_int_equal(t.result, 0);
	assert_true(bks_now_ns() - t0 >= 50 * MS);
}

/* ---- shutdown ------------------------------------------------------------ */

static void *release_later(void *arg)
{
	struct fx *fx = arg;
	struct timespec ts = {0, 100 * 1000 * 1000};

	nanosleep(&ts, NULL);
	release(fx, 1);
	return NULL;
}

/*
 * One thread: a blocks in its call, b waits behind it.  free cancels b,
 * waits for a (released by another thread after 100 ms) and delivers its
 * result, all inside the call, a first.
 */
static void test_free_waits_for_running(void **state)
{
	struct fx *fx = *state;
	struct tjob a, b;
	pthread_t helper;

	new_pool(fx, 1, 4);
	tjob_init(&a, 5);
	tjob_init(&b, 6);
	a.block_fd = fx->pipe[0];
	assert_int_equal(bks_offload_submit(fx->o, &a.job), 0);
	assert_int_equal(bks_offload_submit(fx->o, &b.job), 0);
	/* a is in its call once the thread has taken it. */
	while (__atomic_load_n(&a.runs, __ATOMIC_RELAXED) == 0)
		usleep(1000);
	assert_int_equal(pthread_create(&helper, NULL, release_later, fx), 0);
	assert_int_equal(bks_offload_free(fx->o, 5000 * MS), 0);
	fx->o = NULL;
	assert_int_equal(pthread_join(helper, NULL), 0);
	assert_int_equal(a.dones, 1);
	assert_int_equal(a.result, 5);
	assert_int_equal(b.dones, 1);
	assert_int_equal(b.result, -ECANCELED);
	assert_int_equal(b.runs, 0);
	/* The loop has no trace of the pool. */
	assert_true(bks_loop_run_once(fx->loop, 0) >= 0);
}

/*
 * A job that does not come back: free gives up after its bound and says
 * so; the job's done is never called.  Released later, the thread ends
 * and lets go of the pool's memory (valgrind checks that).
 */
static void test_free_gives_up(void **state)
{
	struct fx *fx = *state;
	static struct tjob t; /* outlives the call: fn still runs */
	int back[2];
	uint64_t t0, took;
	char c;

	assert_int_equal(pipe(back), 0);
	new_pool(fx, 2, 4);
	tjob_init(&t, 0);
	t.block_fd = fx->pipe[0];
	t.back_fd = back[1];
	assert_int_equal(bks_offload_submit(fx->o, &t.job), 0);
	while (__atomic_load_n(&t.runs, __ATOMIC_RELAXED) == 0)
		usleep(1000);
	t0 = bks_now_ns();
	assert_int_equal(bks_offload_free(fx->o, 100 * MS), -ETIMEDOUT);
	took = bks_now_ns() - t0;
	fx->o = NULL;
	assert_true(took >= 100 * MS);
	assert_true(took < 2000 * MS);
	assert_int_equal(t.dones, 0);
	/* Let it go, and give its thread time to end. */
	release(fx, 1);
	assert_int_equal(read(back[0], &c, 1), 1);
	usleep(200 * 1000);
	assert_int_equal(t.dones, 0);
	assert_true(bks_loop_run_once(fx->loop, 0) >= 0);
	close(back[0]);
	close(back[1]);
}

static struct bks_offload *free_me;
static int submit_during_free;

static void free_in_done(struct bks_offload_job *job, int result)
{
	struct tjob *t = job->opaque;

	tjob_done(job, result);
	if (free_me) {
		struct bks_offload *o = free_me;

		free_me = NULL;
		assert_int_equal(bks_offload_free(o, 5000 * MS), 0);
	} else {
		/* Delivered by free itself: the pool takes no more. */
		submit_during_free = bks_offload_submit(t->o, job);
	}
}

/* free from a done callback, with another job finished or queued. */
static void test_free_from_done(void **state)
{
	struct fx *fx = *state;
	struct tjob a, b;

	new_pool(fx, 1, 4);
	tjob_init(&a, 1);
	tjob_init(&b, 2);
	a.job.done = b.job.done = free_in_done;
	a.o = b.o = fx->o;
	free_me = fx->o;
	fx->o = NULL;
	submit_during_free = 0;
	assert_int_equal(bks_offload_submit(a.o, &a.job), 0);
	assert_int_equal(bks_offload_submit(b.o, &b.job), 0);
	run_until(fx, &a.dones, 1);
	assert_null(free_me);
	/* b finished (delivered by free) or had not started (cancelled). */
	assert_int_equal(b.dones, 1);
	assert_true(b.result == 2 || b.result == -ECANCELED);
	assert_int_equal(submit_during_free, -ESHUTDOWN);
	assert_true(bks_loop_run_once(fx->loop, 0) >= 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test_setup_teardown(test_done_on_loop_thread, setup,
					    teardown),
	    cmocka_unit_test_setup_teardown(test_many_jobs, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_errors, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_new_errors, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_loop_runs_while_job_blocks,
					    setup, teardown),
	    cmocka_unit_test_setup_teardown(test_free_waits_for_running, setup,
					    teardown),
	    cmocka_unit_test_setup_teardown(test_free_gives_up, setup,
					    teardown),
	    cmocka_unit_test_setup_teardown(test_free_from_done, setup,
					    teardown),
	};

	return cmocka_run_group_tests_name("offload", tests, NULL, NULL);
}
