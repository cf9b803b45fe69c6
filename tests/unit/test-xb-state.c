/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Unit tests: the vbd3 backend's xenbus state model
 * (helpers/xenbus/xb-state.c; the id parser is test-dec.c's).  The whole
 * table: every backend state against every frontend state, online and not.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <errno.h>

#include "xb-dev.h"
#include "xb-state.h"

static struct xb_step step(enum xb_state be, enum xb_state fe, bool online,
			   bool served)
{
	struct xb_view v = {
	    .backend = be, .frontend = fe, .online = online, .served = served};

	return xb_decide(&v);
}

/* A new device goes to InitWait whatever the frontend says. */
static void test_initialising(void **state)
{
	(void)state;
	for (int fe = XB_UNKNOWN; fe <= XB_RECONFIGURED; fe++) {
		struct xb_step s = step(XB_INITIALISING, fe, true, false);

		assert_int_equal(s.next, XB_INITWAIT);
		assert_false(s.connect);
		assert_false(s.disconnect);
	}
}

/* InitWait: a ready frontend connects; a closing or gone one closes. */
static void test_initwait(void **state)
{
	struct xb_step s;

	(void)state;
	s = step(XB_INITWAIT, XB_INITIALISED, true, false);
	assert_true(s.connect);
	assert_int_equal(s.next, XB_CONNECTED);
	s = step(XB_INITWAIT, XB_CONNECTED, true, false);
	assert_true(s.connect);
	s = step(XB_INITWAIT, XB_INITIALISING, true, false);
	assert_false(s.connect);
	assert_int_equal(s.next, XB_INITWAIT);
	s = step(XB_INITWAIT, XB_CLOSING, true, false);
	assert_int_equal(s.next, XB_CLOSING);
	s = step(XB_INITWAIT, XB_CLOSED, true, false);
	assert_int_equal(s.next, XB_CLOSED);
	s = step(XB_INITWAIT, XB_UNKNOWN, true, false);
	assert_int_equal(s.next, XB_CLOSED);
}

/* Connected: the ring is taken back before Closing or Closed. */
static void test_connected(void **state)
{
	struct xb_step s;

	(void)state;
	s = step(XB_CONNECTED, XB_CONNECTED, true, true);
	assert_int_equal(s.next, XB_CONNECTED);
	assert_false(s.connect || s.disconnect);
	s = step(XB_CONNECTED, XB_CLOSING, true, true);
	assert_int_equal(s.next, XB_CLOSING);
	assert_true(s.disconnect);
	s = step(XB_CONNECTED, XB_CLOSED, true, true);
	assert_int_equal(s.next, XB_CLOSED);
	assert_true(s.disconnect);
	/* The frontend vanished, or started over without closing. */
	s = step(XB_CONNECTED, XB_UNKNOWN, true, true);
	assert_int_equal(s.next, XB_CLOSED);
	s = step(XB_CONNECTED, XB_INITIALISING, true, true);
	assert_int_equal(s.next, XB_CLOSED);
	assert_true(s.disconnect);
}

/* Closing waits for the frontend's Closed (or its going). */
static void test_closing(void **state)
{
	(void)state;
	assert_int_equal(step(XB_CLOSING, XB_CLOSING, true, false).next,
			 XB_CLOSING);
	assert_int_equal(step(XB_CLOSING, XB_CLOSED, true, false).next,
			 XB_CLOSED);
	assert_int_equal(step(XB_CLOSING, XB_UNKNOWN, true, false).next,
			 XB_CLOSED);
}

/* xen-bus's rule: Closed goes back to InitWait only on the frontend's
 * Initialising, never by itself. */
static void test_closed_reconnect(void **state)
{
	(void)state;
	for (int fe = XB_UNKNOWN; fe <= XB_RECONFIGURED; fe++) {
		struct xb_step s = step(XB_CLOSED, fe, true, false);

		assert_int_equal(s.next, fe == XB_INITIALISING ? XB_INITWAIT
							       : XB_CLOSED);
		assert_false(s.connect || s.disconnect);
	}
}

/* online=0: Closed from anywhere, ring first; Closed stays Closed, even
 * when the frontend is Initialising. */
static void test_offline(void **state)
{
	(void)state;
	for (int be = XB_UNKNOWN; be <= XB_RECONFIGURED; be++)
		for (int fe = XB_UNKNOWN; fe <= XB_RECONFIGURED; fe++) {
			struct xb_step s = step(be, fe, false, true);

			assert_int_equal(s.next, XB_CLOSED);
			assert_false(s.connect);
			assert_int_equal(s.disconnect, be != XB_CLOSED);
		}
}

/* A backend state nobody leaves a backend in (someone else wrote it). */
static void test_foreign_states(void **state)
{
	(void)state;
	assert_int_equal(step(XB_INITIALISED, XB_CONNECTED, true, false).next,
			 XB_CLOSED);
	assert_int_equal(step(XB_RECONFIGURING, XB_CONNECTED, true, true).next,
			 XB_CLOSED);
	assert_true(
	    step(XB_RECONFIGURING, XB_CONNECTED, true, true).disconnect);
}

static void test_names(void **state)
{
	(void)state;
	assert_string_equal(xb_state_name(XB_INITWAIT), "InitWait");
	assert_string_equal(xb_state_name(XB_CLOSED), "Closed");
	assert_string_equal(xb_state_name((enum xb_state)42), "state ?");
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_initialising),
	    cmocka_unit_test(test_initwait),
	    cmocka_unit_test(test_connected),
	    cmocka_unit_test(test_closing),
	    cmocka_unit_test(test_closed_reconnect),
	    cmocka_unit_test(test_offline),
	    cmocka_unit_test(test_foreign_states),
	    cmocka_unit_test(test_names),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
