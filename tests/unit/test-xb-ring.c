/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Unit tests: the connect step's checks of a frontend's ring nodes and the
 * backend's mode (helpers/xenbus/xb-ring.c), on a table of nodes: good
 * rings of every order, and each hostile value refused with a message
 * naming the node.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <errno.h>
#include <string.h>

#include "xb-ring.h"

#define NODES_MAX 32

struct nodes {
	const char *name[NODES_MAX]; /* "f:ring-ref", "b:mode" */
	const char *val[NODES_MAX];
	unsigned int n;
	int fail; /* the lookup's -errno, 0 for none */
};

static void set(struct nodes *t, const char *name, const char *val)
{
	for (unsigned int i = 0; i < t->n; i++) {
		if (!strcmp(t->name[i], name)) {
			t->val[i] = val;
			return;
		}
	}
	assert_true(t->n < NODES_MAX);
	t->name[t->n] = name;
	t->val[t->n++] = val;
}

static int lookup(void *opaque, int be, const char *node, const char **val,
		  struct bks_error *err)
{
	struct nodes *t = opaque;

	if (t->fail)
		return bks_error_setmsg(err, t->fail, "lookup %s failed", node);
	for (unsigned int i = 0; i < t->n; i++) {
		if (t->name[i][0] == (be ? 'b' : 'f') &&
		    !strcmp(t->name[i] + 2, node) && t->val[i]) {
			*val = t->val[i];
			return 1;
		}
	}
	return 0;
}

/* A good order-0 ring. */
static void good0(struct nodes *t)
{
	memset(t, 0, sizeof(*t));
	set(t, "f:ring-ref", "8");
	set(t, "f:event-channel", "11");
}

static int parse(struct nodes *t, struct xb_ring *r, struct bks_error *err)
{
	memset(err, 0, sizeof(*err));
	return xb_ring_parse(lookup, t, 4, r, err);
}

static void refused(struct nodes *t, int code, const char *word)
{
	struct xb_ring r;
	struct bks_error err;

	assert_int_equal(parse(t, &r, &err), -code);
	assert_int_equal(err.code, code);
	assert_non_null(strstr(err.msg, word));
}

static void test_order0_defaults(void **state)
{
	struct nodes t;
	struct xb_ring r;
	struct bks_error err;
	char refs[64];

	(void)state;
	good0(&t);
	assert_int_equal(parse(&t, &r, &err), 0);
	assert_int_equal(r.order, 0);
	assert_int_equal(r.nrefs, 1);
	assert_int_equal(r.refs[0], 8);
	assert_int_equal(r.port, 11);
	assert_string_equal(r.protocol, "-");
	assert_int_equal(r.mode, 'w');
	assert_int_equal(xb_ring_refs_format(&r, refs, sizeof(refs)), 0);
	assert_string_equal(refs, "8");
}

static void test_order_max(void **state)
{
	static const char *names[16] = {
	    "f:ring-ref0",  "f:ring-ref1",  "f:ring-ref2",  "f:ring-ref3",
	    "f:ring-ref4",  "f:ring-ref5",  "f:ring-ref6",  "f:ring-ref7",
	    "f:ring-ref8",  "f:ring-ref9",  "f:ring-ref10", "f:ring-ref11",
	    "f:ring-ref12", "f:ring-ref13", "f:ring-ref14", "f:ring-ref15"};
	static const char *vals[16] = {
	    "4294967295", "1", "2",  "3",  "4",	 "5",  "6",  "7",
	    "8",	  "9", "10", "11", "12", "13", "14", "0"};
	struct nodes t;
	struct xb_ring r;
	struct bks_error err;
	char refs[256];

	(void)state;
	memset(&t, 0, sizeof(t));
	set(&t, "f:ring-page-order", "4");
	for (int i = 0; i < 16; i++)
		set(&t, names[i], vals[i]);
	set(&t, "f:event-channel", "2147483647");
	set(&t, "f:protocol", "x86_32-abi");
	set(&t, "f:multi-queue-num-queues", "1");
	set(&t, "b:mode", "r");
	assert_int_equal(parse(&t, &r, &err), 0);
	assert_int_equal(r.nrefs, 16);
	assert_int_equal(r.refs[0], UINT32_MAX);
	assert_int_equal(r.port, 2147483647u);
	assert_string_equal(r.protocol, "x86_32-abi");
	assert_int_equal(r.mode, 'r');
	assert_int_equal(xb_ring_refs_format(&r, refs, sizeof(refs)), 0);
	assert_string_equal(refs, "4294967295,1,2,3,4,5,6,7,8,9,10,11,12,13,"
				  "14,0");
	assert_int_equal(xb_ring_refs_format(&r, refs, 20), -ENOSPC);
}

/* ring-page-order: above what we advertised, or not a number. */
static void test_order_refused(void **state)
{
	struct nodes t;
	struct xb_ring r;
	struct bks_error err;

	(void)state;
	good0(&t);
	set(&t, "f:ring-page-order", "5");
	refused(&t, EINVAL, "ring-page-order '5'");
	set(&t, "f:ring-page-order", "-1");
	refused(&t, EINVAL, "ring-page-order");
	set(&t, "f:ring-page-order", "01");
	refused(&t, EINVAL, "ring-page-order");
	/* advertised 2: order 3 is refused even though the worker takes 4 */
	set(&t, "f:ring-page-order", "3");
	memset(&err, 0, sizeof(err));
	assert_int_equal(xb_ring_parse(lookup, &t, 2, &r, &err), -EINVAL);
	assert_non_null(strstr(err.msg, "0-2"));
}

/* ring-ref: not a number, above uint32, missing ring-refN. */
static void test_refs_refused(void **state)
{
	struct nodes t;

	(void)state;
	good0(&t);
	set(&t, "f:ring-ref", "x8");
	refused(&t, EINVAL, "ring-ref 'x8'");
	set(&t, "f:ring-ref", "4294967296");
	refused(&t, EINVAL, "ring-ref '4294967296'");
	set(&t, "f:ring-ref", "");
	refused(&t, EINVAL, "ring-ref");
	set(&t, "f:ring-ref", NULL);
	refused(&t, EINVAL, "ring-ref is missing");
	good0(&t);
	set(&t, "f:ring-page-order", "1");
	set(&t, "f:ring-ref0", "1");
	refused(&t, EINVAL, "ring-ref1 is missing");
	set(&t, "f:ring-ref1", "2\n");
	refused(&t, EINVAL, "ring-ref1 '2?'");
}

static void test_evtchn_refused(void **state)
{
	struct nodes t;

	(void)state;
	good0(&t);
	set(&t, "f:event-channel", "0");
	refused(&t, EINVAL, "event-channel '0'");
	set(&t, "f:event-channel", "2147483648");
	refused(&t, EINVAL, "event-channel '2147483648'");
	set(&t, "f:event-channel", " 3");
	refused(&t, EINVAL, "event-channel");
	set(&t, "f:event-channel", NULL);
	refused(&t, EINVAL, "event-channel is missing");
}

static void test_protocol_queues_mode(void **state)
{
	struct nodes t;

	(void)state;
	good0(&t);
	set(&t, "f:protocol", "arm-abi");
	refused(&t, EPROTONOSUPPORT, "protocol 'arm-abi'");
	set(&t, "f:protocol", "x86_64-abi\x01junk");
	refused(&t, EPROTONOSUPPORT, "x86_64-abi?junk");
	good0(&t);
	set(&t, "f:multi-queue-num-queues", "2");
	refused(&t, EOPNOTSUPP, "multi-queue-num-queues 2");
	set(&t, "f:multi-queue-num-queues", "0");
	refused(&t, EOPNOTSUPP, "multi-queue-num-queues 0");
	set(&t, "f:multi-queue-num-queues", "two");
	refused(&t, EINVAL, "multi-queue-num-queues 'two'");
	good0(&t);
	set(&t, "b:mode", "rw");
	refused(&t, EINVAL, "mode 'rw'");
	/* a frontend's mode node is not the backend's */
	good0(&t);
	set(&t, "f:mode", "bogus");
	{
		struct xb_ring r;
		struct bks_error err;

		assert_int_equal(parse(&t, &r, &err), 0);
		assert_int_equal(r.mode, 'w');
	}
}

/* A long hostile value is shown bounded. */
static void test_message_bounded(void **state)
{
	static char big[4096];
	struct nodes t;
	struct xb_ring r;
	struct bks_error err;

	(void)state;
	memset(big, 'A', sizeof(big) - 1);
	good0(&t);
	set(&t, "f:protocol", big);
	assert_int_equal(parse(&t, &r, &err), -EPROTONOSUPPORT);
	assert_true(strlen(err.msg) < 100);
}

static void test_lookup_error(void **state)
{
	struct nodes t;

	(void)state;
	good0(&t);
	t.fail = EIO;
	refused(&t, EIO, "lookup ring-page-order failed");
}

/*
 * blkif-watch's event lines, as the worker writes them
 * (worker_blkif_event_json(), tests/unit/test-worker-blkif.c): the
 * reason without the worker's name; anything else is refused.
 */
static void test_event_parse(void **state)
{
	static const char broken[] =
	    "{\"event\":\"blkif\",\"blkif\":\"broken\",\"error\":\"vm1: "
	    "blkif: the ring of domain 5 is broken: req_prod 99\"}";
	static const char gone[] =
	    "{\"event\":\"blkif\",\"blkif\":\"none\",\"error\":\"vm1: "
	    "blkif: the ring of domain 5 was disconnected\"}";
	static const char other[] =
	    "{\"event\":\"blkif\",\"blkif\":\"none\",\"error\":\"vm2: "
	    "a\\u0001b\"}";
	static const char *bad[] = {
	    "",
	    "not json",
	    "[1]",
	    "{\"ok\":true,\"blkif\":\"connected\"}",
	    "{\"event\":\"job\",\"blkif\":\"broken\"}",
	    "{\"event\":\"blkif\",\"blkif\":\"connected\"}",
	    "{\"event\":\"blkif\"}",
	};
	struct bks_error err = {0};
	bool is_broken = false;
	char why[64];

	(void)state;
	assert_int_equal(xb_ring_event_parse(broken, strlen(broken), "vm1",
					     &is_broken, why, sizeof(why),
					     &err),
			 0);
	assert_true(is_broken);
	assert_string_equal(
	    why, "blkif: the ring of domain 5 is broken: req_prod 99");
	assert_int_equal(xb_ring_event_parse(gone, strlen(gone), "vm1",
					     &is_broken, why, sizeof(why),
					     &err),
			 0);
	assert_false(is_broken);
	assert_string_equal(why,
			    "blkif: the ring of domain 5 was disconnected");
	/* Another worker's name stays; a control byte is shown as '?'. */
	assert_int_equal(xb_ring_event_parse(other, strlen(other), "vm1",
					     &is_broken, why, sizeof(why),
					     &err),
			 0);
	assert_string_equal(why, "vm2: a?b");
	/* A long reason is cut to the buffer. */
	assert_int_equal(xb_ring_event_parse(broken, strlen(broken), "vm1",
					     &is_broken, why, 8, &err),
			 0);
	assert_string_equal(why, "blkif: ");
	for (size_t i = 0; i < sizeof(bad) / sizeof(*bad); i++) {
		memset(&err, 0, sizeof(err));
		if (xb_ring_event_parse(bad[i], strlen(bad[i]), "vm1",
					&is_broken, why, sizeof(why),
					&err) != -EPROTO ||
		    !strstr(err.msg, "blkif-watch"))
			fail_msg("'%s' was taken: '%s'", bad[i], err.msg);
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_order0_defaults),
	    cmocka_unit_test(test_order_max),
	    cmocka_unit_test(test_order_refused),
	    cmocka_unit_test(test_refs_refused),
	    cmocka_unit_test(test_evtchn_refused),
	    cmocka_unit_test(test_protocol_queues_mode),
	    cmocka_unit_test(test_message_bounded),
	    cmocka_unit_test(test_lookup_error),
	    cmocka_unit_test(test_event_parse),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
