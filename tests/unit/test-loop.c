/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* Unit tests: stopping the event loop (libblkstack/loop.c). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "blkstack/loop.h"

struct stop_ctx {
	struct bks_loop *loop;
	struct bks_defer first, second;
	struct bks_timer kick, guard;
	bool guard_fired;
};

static void second_stops(struct bks_defer *d)
{
	struct stop_ctx *c = d->opaque;

	bks_loop_stop(c->loop);
}

/* Runs in one round of deferred calls and schedules the next round. */
static void first_schedules(struct bks_defer *d)
{
	struct stop_ctx *c = d->opaque;

	bks_defer_schedule(&c->second);
}

/* Runs after the wait: its deferred call runs at the end of the round. */
static void kick_fires(struct bks_timer *t)
{
	struct stop_ctx *c = t->opaque;

	bks_defer_schedule(&c->first);
}

static void guard_fires(struct bks_timer *t)
{
	struct stop_ctx *c = t->opaque;

	c->guard_fired = true;
	bks_loop_stop(c->loop);
}

/*
 * A deferred call that stops the loop at the start of an iteration (a
 * shutdown completing in a chain of deferred calls, with no fd event to
 * come) must not leave the loop waiting in epoll for ever.  Here: a timer
 * schedules `first` (run at the end of that iteration), which schedules
 * `second` (run at the start of the next one), which stops the loop.
 * The guard timer ends the test if the loop waits.
 */
static void test_stop_from_deferred_call(void **state)
{
	struct stop_ctx c = {0};
	uint64_t start;
	(void)state;

	assert_int_equal(bks_loop_new(&c.loop, NULL), 0);
	bks_defer_init(c.loop, &c.first, first_schedules, &c);
	bks_defer_init(c.loop, &c.second, second_stops, &c);
	bks_timer_init(c.loop, &c.kick, kick_fires, &c);
	bks_timer_init(c.loop, &c.guard, guard_fires, &c);
	bks_timer_arm(&c.guard, 5ull * 1000 * 1000 * 1000);
	bks_timer_arm(&c.kick, 0);
	start = bks_now_ns();
	assert_int_equal(bks_loop_run(c.loop), 0);
	assert_false(c.guard_fired);
	assert_true(bks_now_ns() - start < 1000ull * 1000 * 1000);
	bks_timer_cancel(&c.guard);
	bks_loop_free(c.loop);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_stop_from_deferred_call),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
