/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Unit tests: the chain parser (a table of good and bad strings), chain
 * open and the framework's request checks, request pools, the loop.
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

#include "blkstack/chain.h"

/* ---- the parser table ---------------------------------------------------- */

struct parse_case {
	const char *s;
	size_t len; /* 0: strlen(s) */
	int rc;	    /* 0 or the expected -errno */
	/* on success: "name=args" per layer, top first, joined by ' ' */
	const char *layers;
	/* on failure: a substring of the message */
	const char *msg;
};

static const struct parse_case parse_cases[] = {
    /* Good. */
    {"ram:1M", 0, 0, "ram=1M", NULL},
    {"log:|ram:1M", 0, 0, "log= ram=1M", NULL},
    {"error:|log:|ram:1M", 0, 0, "error= log= ram=1M", NULL},
    {"aio:/images/vm.img", 0, 0, "aio=/images/vm.img", NULL},
    {"sync:/a\\|b", 0, 0, "sync=/a|b", NULL},
    {"sync:/a\\\\b", 0, 0, "sync=/a\\b", NULL},
    {"sync:/dir with spaces/x.img", 0, 0, "sync=/dir with spaces/x.img", NULL},
    {"sync:/caf\xc3\xa9.img", 0, 0, "sync=/caf\xc3\xa9.img", NULL},
    {"log:block=4K|ram:64K", 0, 0, "log=block=4K ram=64K", NULL},
    {"sync:/x:y", 0, 0, "sync=/x:y", NULL},
    {"error:ops=write,errno=EIO|log:|sync:/x", 0, 0,
     "error=ops=write,errno=EIO log= sync=/x", NULL},
    {"log:|log:|log:|log:|log:|log:|log:|log:|log:|log:|log:|log:|log:|"
     "log:|log:|ram:1M",
     0, 0,
     "log= log= log= log= log= log= log= log= log= log= log= log= log= "
     "log= log= ram=1M",
     NULL},
    /* Bad: structure. */
    {"", 0, -EINVAL, NULL, "empty chain"},
    {"|ram:1M", 0, -EINVAL, NULL, "layer 1 at offset 0: empty layer"},
    {"ram:1M|", 0, -EINVAL, NULL, "layer 2 at offset 7: empty layer"},
    {"log:||ram:1M", 0, -EINVAL, NULL, "layer 2 at offset 5: empty layer"},
    {"ram", 0, -EINVAL, NULL, "missing ':' after driver name 'ram'"},
    {":1M", 0, -EINVAL, NULL, "missing driver name before ':'"},
    {"log:|log:|log:|log:|log:|log:|log:|log:|log:|log:|log:|log:|log:|"
     "log:|log:|log:|ram:1M",
     0, -EINVAL, NULL, "more than 16 layers"},
    /* Bad: drivers and their order. */
    {"foo:bar", 0, -EINVAL, NULL, "layer 1 at offset 0: unknown driver 'foo'"},
    {"log:|tap:/x", 0, -EINVAL, NULL, "layer 2 at offset 5: unknown driver"},
    {"log:", 0, -EINVAL, NULL, "'log' is a filter and cannot be the last"},
    {"ram:1M|log:", 0, -EINVAL, NULL, "'ram' is a sink and must be the last"},
    {"ram:1M|ram:1M", 0, -EINVAL, NULL, "layer 1 at offset 0: 'ram' is a sink"},
    {"RAM:1M", 0, -EINVAL, NULL, "character 'R' is not allowed"},
    {"lo g:|ram:1M", 0, -EINVAL, NULL, "offset 2: character 0x20"},
    {"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa:x", 0, -EINVAL, NULL,
     "driver name is 33 characters; at most 32"},
    /* Bad: bytes. */
    {"ram:1\x01M", 0, -EINVAL, NULL, "offset 5: control character 0x01"},
    {"ram:1M\x7f", 0, -EINVAL, NULL, "offset 6: control character 0x7f"},
    {"log:\n|ram:1M", 0, -EINVAL, NULL, "offset 4: control character 0x0a"},
    {"ram:1M|\tlog:", 0, -EINVAL, NULL, "offset 7: character 0x09"},
    {"ram:1\0M", 7, -EINVAL, NULL, "chain: NUL byte at offset 5"},
    {"ram\0:1M", 7, -EINVAL, NULL, "chain: NUL byte at offset 3"},
    {"\0", 1, -EINVAL, NULL, "chain: NUL byte at offset 0"},
    {"ram:1M\0", 7, -EINVAL, NULL, "chain: NUL byte at offset 6"},
    /* What a C string would cut to "log:|aio:/images/g.img". */
    {"log:|aio:/images/g.img\0/../../../etc/shadow", 40, -EINVAL, NULL,
     "chain: NUL byte at offset 22"},
    /* The NUL is found before anything else is looked at. */
    {"|\0", 2, -EINVAL, NULL, "chain: NUL byte at offset 1"},
    {"sync:/a\\b", 0, -EINVAL, NULL, "offset 7: '\\' must be followed"},
    {"sync:/a\\", 0, -EINVAL, NULL, "offset 7: '\\' must be followed"},
    /* Bad: paths. */
    {"aio:", 0, -EINVAL, NULL,
     "chain: layer 1 (aio) at offset 0: missing path; usage: aio:PATH"},
    {"sync:", 0, -EINVAL, NULL, "missing path; usage: sync:PATH"},
    {"aio:images/g.img", 0, -EINVAL, NULL,
     "chain: layer 1 (aio) at offset 0: path 'images/g.img' must be an "
     "absolute path"},
    {"log:|sync:./g.img", 0, -EINVAL, NULL,
     "layer 2 (sync) at offset 5: path './g.img' must be an absolute path"},
    {"aio:~/g.img", 0, -EINVAL, NULL, "path '~/g.img' must be an absolute"},
    /* Bad: options (bks_args_next), for every driver with options. */
    {"log:block=4K,block=8K|ram:1M", 0, -EINVAL, NULL,
     "chain: layer 1 (log) at offset 0: option 'block' is given twice: "
     "'block=4K', then 'block=8K'; usage: log:"},
    {"error:seed=1,ops=read,seed=2|ram:1M", 0, -EINVAL, NULL,
     "option 'seed' is given twice: 'seed=1', then 'seed=2'"},
    {"error:ops=all,ops=all|ram:1M", 0, -EINVAL, NULL,
     "option 'ops' is given twice: 'ops=all', then 'ops=all'"},
    {"error:errno=EIO,errno=ENOSPC|ram:1M", 0, -EINVAL, NULL,
     "option 'errno' is given twice: 'errno=EIO', then 'errno=ENOSPC'"},
    {"error:rate=1%,after=1,rate=2%|ram:1M", 0, -EINVAL, NULL,
     "option 'rate' is given twice: 'rate=1%', then 'rate=2%'"},
    {"error:after=1,after=1|ram:1M", 0, -EINVAL, NULL,
     "option 'after' is given twice: 'after=1', then 'after=1'"},
    {"error:count=3,seed=1,count=4|ram:1M", 0, -EINVAL, NULL,
     "option 'count' is given twice: 'count=3', then 'count=4'"},
    {"log:block=4K,|ram:1M", 0, -EINVAL, NULL,
     "option 2 is empty (a trailing ',')"},
    {"log:,block=4K|ram:1M", 0, -EINVAL, NULL,
     "option 1 is empty (a leading ',')"},
    {"log:,|ram:1M", 0, -EINVAL, NULL, "option 1 is empty (a leading ',')"},
    {"error:ops=read,,seed=1|ram:1M", 0, -EINVAL, NULL,
     "option 2 is empty (',,')"},
    {"log:=4K|ram:1M", 0, -EINVAL, NULL,
     "option 1 has no name before '=' ('=4K')"},
    {"log:block=|ram:1M", 0, -EINVAL, NULL,
     "option 'block' has an empty value; usage: log:"},
    {"log:block|ram:1M", 0, -EINVAL, NULL,
     "option 'block' has no value (block=...)"},
    {"log:blocks=4K|ram:1M", 0, -EINVAL, NULL,
     "unknown option 'blocks'; usage: log:"},
    {"error:rate=1,bogus=2|ram:1M", 0, -EINVAL, NULL,
     "layer 1 (error) at offset 0: unknown option 'bogus'; usage: error:"},
    {"log:kkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkk=1|ram:1M", 0, -EINVAL, NULL,
     "option 1: name 'kkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkk...' is longer "
     "than 31 bytes"},
    {"log:block=1111111111111111111111111111111111111111111111111111111111111"
     "111111111|ram:1M",
     0, -EINVAL, NULL, "option 'block': the value is 70 bytes; at most 63"},
    /* Bad: values. */
    {"log:block=99999999999999999999T|ram:1M", 0, -EINVAL, NULL,
     "option 'block': '99999999999999999999T' is too large"},
    {"log:block=20000000T|ram:1M", 0, -EINVAL, NULL,
     "option 'block': '20000000T' is too large"},
    {"log:block=12K|ram:1M", 0, -EINVAL, NULL,
     "option 'block': '12K' is not a power of two; usage: log:"},
    {"log:block=2K|ram:1M", 0, -EINVAL, NULL,
     "option 'block': '2K' is less than 4K"},
    {"log:block=128M|ram:1M", 0, -EINVAL, NULL,
     "option 'block': '128M' is more than 64M"},
    {"log:block=4KB|ram:1M", 0, -EINVAL, NULL,
     "option 'block': '4KB' is not a size"},
    {"log:block=-4K|ram:1M", 0, -EINVAL, NULL,
     "option 'block': '-4K' is not a size"},
    {"log:block= 4K|ram:1M", 0, -EINVAL, NULL,
     "option 'block': ' 4K' is not a size"},
    {"error:count=99999999999999999999|ram:1M", 0, -EINVAL, NULL,
     "option 'count': '99999999999999999999' is too large"},
    {"error:after=1e3|ram:1M", 0, -EINVAL, NULL,
     "option 'after': '1e3' is not a decimal number"},
    {"error:ops=reed|ram:1M", 0, -EINVAL, NULL,
     "option 'ops': 'reed' is not 'all' or op names"},
    {"error:errno=EFOO|ram:1M", 0, -EINVAL, NULL,
     "option 'errno': 'EFOO' is not an errno name"},
    {"error:rate=2|ram:1M", 0, -EINVAL, NULL,
     "option 'rate': '2' is not a probability"},
    {"ram:", 0, -EINVAL, NULL,
     "chain: layer 1 (ram) at offset 0: missing size; usage: ram:SIZE"},
    {"ram:0", 0, -EINVAL, NULL, "size '0' is empty (0 bytes)"},
    {"ram:1000", 0, -EINVAL, NULL, "size '1000' is not a multiple of 512"},
    {"ram:65G", 0, -EINVAL, NULL, "size '65G' is more than 64G"},
    {"ram:99999999999999999999T", 0, -EINVAL, NULL,
     "size '99999999999999999999T' is too large"},
    {"ram:1M,1M", 0, -EINVAL, NULL, "'1M,1M' is not a size"},
};

/* "name=args name=args" of a parsed spec. */
static void describe(const struct bks_chain_spec *spec, char *buf, size_t size)
{
	size_t n = 0;

	buf[0] = '\0';
	for (unsigned int i = 0; i < spec->n; i++)
		n += (size_t)snprintf(buf + n, size - n, "%s%s=%s",
				      i ? " " : "", spec->layers[i].desc->name,
				      spec->layers[i].args);
}

static void test_parse_table(void **state)
{
	char got[1024];
	(void)state;

	for (size_t i = 0; i < sizeof(parse_cases) / sizeof(parse_cases[0]);
	     i++) {
		const struct parse_case *c = &parse_cases[i];
		size_t len = c->len ? c->len : strlen(c->s);
		struct bks_chain_spec spec;
		struct bks_error err = {0};
		int rc;

		rc = bks_chain_parse(c->s, len, &spec, &err);
		if (rc != c->rc)
			fail_msg("case %zu '%s': rc %d, expected %d (%s)", i,
				 c->s, rc, c->rc, err.msg);
		if (rc == 0) {
			describe(&spec, got, sizeof(got));
			if (strcmp(got, c->layers) != 0)
				fail_msg("case %zu: layers '%s', expected '%s'",
					 i, got, c->layers);
			bks_chain_spec_free(&spec);
		} else {
			if (!strstr(err.msg, c->msg))
				fail_msg("case %zu: message '%s' lacks '%s'", i,
					 err.msg, c->msg);
			assert_int_equal(spec.n, 0);
		}
	}
	assert_true(sizeof(parse_cases) / sizeof(parse_cases[0]) >= 30);
}

static void test_parse_too_long(void **state)
{
	char *s = malloc(BKS_CHAIN_STR_MAX + 2);
	struct bks_chain_spec spec;
	struct bks_error err = {0};
	(void)state;

	assert_non_null(s);
	memcpy(s, "sync:/", 6);
	memset(s + 6, 'a', BKS_CHAIN_STR_MAX + 1 - 6);
	s[BKS_CHAIN_STR_MAX + 1] = '\0';
	assert_int_equal(bks_chain_parse(s, strlen(s), &spec, &err),
			 -ENAMETOOLONG);
	assert_non_null(strstr(err.msg, "at most 4096"));
	/* Exactly at the limit parses. */
	s[BKS_CHAIN_STR_MAX] = '\0';
	assert_int_equal(bks_chain_parse(s, strlen(s), &spec, &err), 0);
	bks_chain_spec_free(&spec);
	free(s);
}

/* Format is the inverse of parse, escapes included. */
static void test_format_round_trip(void **state)
{
	static const char *const chains[] = {
	    "ram:1M",
	    "log:|ram:1M",
	    "sync:/a\\|b\\\\c|",
	    "error:ops=write|log:block=4K|sync:/x y",
	};
	(void)state;

	for (size_t i = 0; i < sizeof(chains) / sizeof(chains[0]); i++) {
		struct bks_chain_spec spec;
		struct bks_error err = {0};
		char buf[256];
		size_t len = strlen(chains[i]);

		/* The third ends in a stray '|': parse its valid prefix. */
		if (chains[i][len - 1] == '|')
			len--;
		assert_int_equal(bks_chain_parse(chains[i], len, &spec, &err),
				 0);
		assert_int_equal(bks_chain_format(&spec, buf, sizeof(buf)),
				 (int)len);
		assert_memory_equal(buf, chains[i], len);
		assert_int_equal(bks_chain_format(&spec, buf, 3),
				 -ENAMETOOLONG);
		bks_chain_spec_free(&spec);
	}
}

/* ---- opening chains and the framework's checks --------------------------- */

struct rig {
	struct bks_loop *loop;
	struct bks_chain *chain;
	int result;
	int calls;
};

static void done(struct bks_req *req, int result)
{
	struct rig *r = req->opaque;

	r->result = result;
	r->calls++;
}

/*
 * Submit one request at the chain's top (or, with layer, straight to that
 * layer: its boundary checks, without the chain's padding) and return its
 * result; it must complete exactly once.
 */
static int submit_to(struct rig *r, struct bks_layer *layer, enum bks_op op,
		     uint32_t flags, uint64_t offset, void *buf, uint64_t len)
{
	struct iovec iov = {.iov_base = buf, .iov_len = len};
	struct bks_req req = {
	    .op = op,
	    .flags = flags,
	    .offset = offset,
	    .len = len,
	    .iov = &iov,
	    .iovcnt = 1,
	    .done = done,
	    .opaque = r,
	};

	r->calls = 0;
	if (layer)
		assert_int_equal(bks_next_submit(layer, &req), 0);
	else
		assert_int_equal(bks_chain_submit(r->chain, &req), 0);
	while (r->calls == 0)
		assert_true(bks_loop_run_once(r->loop, 1000) >= 0);
	assert_int_equal(r->calls, 1);
	assert_int_equal(bks_chain_in_flight(r->chain), 0);
	return r->result;
}

static int submit(struct rig *r, enum bks_op op, uint32_t flags,
		  uint64_t offset, void *buf, uint64_t len)
{
	return submit_to(r, NULL, op, flags, offset, buf, len);
}

static void rig_open(struct rig *r, const char *chain, bool ro)
{
	struct bks_error err = {0};

	memset(r, 0, sizeof(*r));
	assert_int_equal(bks_loop_new(&r->loop, &err), 0);
	if (bks_chain_open(&r->chain, chain, r->loop, ro, &err) != 0)
		fail_msg("open %s: %s", chain, err.msg);
}

static void rig_close(struct rig *r)
{
	bks_chain_close(r->chain);
	bks_loop_free(r->loop);
}

static void test_open_ram(void **state)
{
	static char buf[8192], back[8192];
	struct rig r;
	(void)state;

	rig_open(&r, "ram:1M", false);
	assert_int_equal(bks_chain_layers(r.chain), 1);
	assert_int_equal(bks_chain_info(r.chain)->size, 1 << 20);
	assert_int_equal(bks_chain_info(r.chain)->block_size, 512);
	memset(buf, 0xa5, sizeof(buf));
	assert_int_equal(submit(&r, BKS_OP_WRITE, BKS_REQ_FUA, 4096, buf, 8192),
			 0);
	assert_int_equal(submit(&r, BKS_OP_READ, 0, 4096, back, 8192), 0);
	assert_memory_equal(buf, back, sizeof(buf));
	assert_int_equal(submit(&r, BKS_OP_FLUSH, 0, 0, NULL, 0), 0);
	/* Discard and write-zeroes read back as zeroes. */
	assert_int_equal(
	    submit(&r, BKS_OP_WRITE_ZEROES, BKS_REQ_NO_HOLE, 4096, NULL, 512),
	    0);
	assert_int_equal(submit(&r, BKS_OP_DISCARD, 0, 8192, NULL, 4096), 0);
	assert_int_equal(submit(&r, BKS_OP_READ, 0, 4096, back, 8192), 0);
	for (size_t i = 0; i < sizeof(back); i++) {
		bool zero = i < 512 || i >= 4096;

		if (back[i] != (zero ? 0 : (char)0xa5))
			fail_msg("byte %zu is %#x", i, (unsigned char)back[i]);
	}
	rig_close(&r);
}

/* The checks every layer boundary applies, with their errnos. */
static void test_framework_checks(void **state)
{
	static char buf[4096];
	struct bks_layer_stats st;
	struct rig r;
	(void)state;

	rig_open(&r, "log:|ram:64K", false);
	assert_int_equal(bks_chain_layers(r.chain), 2);
	/*
	 * Misaligned offset and length: refused at a layer boundary; at the
	 * chain's top they are padded (test-pad.c) and succeed.
	 */
	assert_int_equal(submit_to(&r, bks_chain_layer(r.chain, 0), BKS_OP_READ,
				   0, 100, buf, 512),
			 -EINVAL);
	assert_int_equal(submit_to(&r, bks_chain_layer(r.chain, 0), BKS_OP_READ,
				   0, 0, buf, 100),
			 -EINVAL);
	assert_int_equal(submit(&r, BKS_OP_READ, 0, 100, buf, 512), 0);
	assert_int_equal(submit(&r, BKS_OP_READ, 0, 0, buf, 100), 0);
	/* Out of range: reads EINVAL, writes ENOSPC; overflow caught. */
	assert_int_equal(submit(&r, BKS_OP_READ, 0, 65536 - 512, buf, 1024),
			 -EINVAL);
	assert_int_equal(submit(&r, BKS_OP_WRITE, 0, 65536, buf, 512), -ENOSPC);
	assert_int_equal(
	    submit(&r, BKS_OP_WRITE, 0, UINT64_MAX - 511, buf, 512), -ENOSPC);
	/* Zero length, bad flags, bad op. */
	assert_int_equal(submit(&r, BKS_OP_READ, 0, 0, buf, 0), -EINVAL);
	assert_int_equal(submit(&r, BKS_OP_READ, BKS_REQ_FUA, 0, buf, 512),
			 -EINVAL);
	assert_int_equal(submit(&r, BKS_OP_WRITE, BKS_REQ_NO_HOLE, 0, buf, 512),
			 -EINVAL);
	assert_int_equal(submit(&r, (enum bks_op)99, 0, 0, buf, 512), -EINVAL);
	/* Flush with a range. */
	assert_int_equal(submit(&r, BKS_OP_FLUSH, 0, 512, NULL, 0), -EINVAL);
	/* The top layer counted the refusals as errors. */
	bks_layer_get_stats(bks_chain_layer(r.chain, 0), &st);
	assert_int_equal(st.op[BKS_OP_READ].errors, 5);
	assert_int_equal(st.op[BKS_OP_WRITE].errors, 3);
	assert_int_equal(st.in_flight, 0);
	/* A good request is counted on both layers, with its bytes. */
	assert_int_equal(submit(&r, BKS_OP_WRITE, 0, 0, buf, 4096), 0);
	for (unsigned int i = 0; i < 2; i++) {
		bks_layer_get_stats(bks_chain_layer(r.chain, i), &st);
		assert_int_equal(st.op[BKS_OP_WRITE].bytes, 4096);
	}
	rig_close(&r);
}

static void test_read_only(void **state)
{
	static char buf[512];
	struct rig r;
	(void)state;

	rig_open(&r, "log:|ram:64K", true);
	assert_true(bks_chain_info(r.chain)->read_only);
	assert_int_equal(submit(&r, BKS_OP_WRITE, 0, 0, buf, 512), -EROFS);
	assert_int_equal(submit(&r, BKS_OP_DISCARD, 0, 0, NULL, 512), -EROFS);
	assert_int_equal(submit(&r, BKS_OP_READ, 0, 0, buf, 512), 0);
	rig_close(&r);
}

static void test_open_errors(void **state)
{
	static const struct {
		const char *chain;
		const char *msg;
	} cases[] = {
	    {"ram:0", "layer 1 (ram) at offset 0: size '0' is empty"},
	    {"ram:1000", "layer 1 (ram) at offset 0: size '1000' is not a "
			 "multiple of 512"},
	    {"log:|ram:lots",
	     "layer 2 (ram) at offset 5: 'lots' is not a size"},
	    {"ram:1M|ram:1M", "'ram' is a sink"},
	};
	struct bks_loop *loop;
	struct bks_error err = {0};
	(void)state;

	assert_int_equal(bks_loop_new(&loop, &err), 0);
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct bks_chain *chain = (void *)1;

		assert_int_equal(
		    bks_chain_open(&chain, cases[i].chain, loop, false, &err),
		    -EINVAL);
		assert_null(chain);
		if (!strstr(err.msg, cases[i].msg))
			fail_msg("'%s': message '%s' lacks '%s'",
				 cases[i].chain, err.msg, cases[i].msg);
	}
	bks_loop_free(loop);
}

/* ---- pools and the loop -------------------------------------------------- */

#define BKS_DRIVER(name) +1
#define BKS_MODULE(name)
static const size_t DRIVERS_DEF_LINES = 0
#include "../../libblkstack/drivers.def"
    ;
#undef BKS_DRIVER
#undef BKS_MODULE
#define BKS_DRIVER(name)
#define BKS_MODULE(name) +1
static const size_t MODULES_DEF_LINES = 0
#include "../../libblkstack/drivers.def"
    ;
#undef BKS_DRIVER
#undef BKS_MODULE

/* The parse-only table and the drivers: the same drivers, in order. */
static void test_driver_tables(void **state)
{
	size_t i;
	(void)state;

	for (i = 0; bks_drivers[i]; i++) {
		const struct bks_driver_desc *d = bks_driver_descs[i];
		const struct bks_driver *drv = bks_drivers[i];

		assert_non_null(d);
		assert_string_equal(d->name, drv->name);
		assert_int_equal(d->kind, drv->kind);
		assert_string_equal(d->usage, drv->usage);
		assert_int_equal(d->args_path, drv->args_path);
		assert_ptr_equal(d->check, drv->check);
		assert_ptr_equal(bks_driver_of(d), drv);
		assert_ptr_equal(
		    bks_driver_desc_lookup(d->name, strlen(d->name)), d);
		assert_ptr_equal(bks_driver_lookup(d->name, strlen(d->name)),
				 drv);
	}
	/* One per line of drivers.def (BKS_DRIVER(...)). */
	assert_int_equal(i, DRIVERS_DEF_LINES);
	/* Then the modules' descs (BKS_MODULE(...)): no built-in driver. */
	for (; bks_driver_descs[i]; i++) {
		const struct bks_driver_desc *d = bks_driver_descs[i];

		assert_true(d->module);
		assert_non_null(d->check);
		assert_null(bks_driver_of(d));
		assert_null(bks_driver_lookup(d->name, strlen(d->name)));
		assert_ptr_equal(
		    bks_driver_desc_lookup(d->name, strlen(d->name)), d);
	}
	assert_int_equal(i, DRIVERS_DEF_LINES + MODULES_DEF_LINES);
	for (i = 0; bks_drivers[i]; i++)
		assert_false(bks_drivers[i]->module);
	assert_null(bks_driver_desc_lookup("ra", 2));
	assert_null(bks_driver_of(NULL));
}

static void test_req_pool(void **state)
{
	struct bks_req_pool pool;
	struct bks_req *a, *b, *c;
	(void)state;

	assert_int_equal(bks_req_pool_init(&pool, 2), 0);
	a = bks_req_get(&pool);
	b = bks_req_get(&pool);
	assert_non_null(a);
	assert_non_null(b);
	assert_ptr_not_equal(a, b);
	assert_null(bks_req_get(&pool));
	assert_int_equal(pool.in_use, 2);
	a->len = 42;
	bks_req_put(&pool, a);
	c = bks_req_get(&pool);
	assert_ptr_equal(c, a);
	assert_int_equal(c->len, 0); /* zeroed */
	bks_req_put(&pool, b);
	bks_req_put(&pool, c);
	assert_int_equal(pool.in_use, 0);
	bks_req_pool_free(&pool);
}

struct order {
	char log[16];
	int n;
};

static void timer_fn(struct bks_timer *t)
{
	struct order *o = t->opaque;

	o->log[o->n++] = 'T';
}

static void defer_fn(struct bks_defer *d)
{
	struct order *o = d->opaque;

	o->log[o->n++] = 'D';
}

static void test_loop_timers_and_defers(void **state)
{
	struct bks_timer t1, t2;
	struct bks_defer d;
	struct bks_loop *loop;
	struct bks_error err = {0};
	struct order o = {0};
	uint64_t start;
	(void)state;

	assert_int_equal(bks_loop_new(&loop, &err), 0);
	bks_timer_init(loop, &t1, timer_fn, &o);
	bks_timer_init(loop, &t2, timer_fn, &o);
	bks_defer_init(loop, &d, defer_fn, &o);
	bks_defer_schedule(&d);
	bks_defer_schedule(&d); /* once */
	start = bks_now_ns();
	bks_timer_arm(&t1, 20 * 1000000ull);
	bks_timer_arm(&t2, 10 * 1000000ull);
	bks_timer_cancel(&t2);
	while (o.n < 2)
		assert_true(bks_loop_run_once(loop, -1) >= 0);
	/* The defer ran first; the timer waited its delay, in the loop. */
	assert_memory_equal(o.log, "DT", 2);
	assert_true(bks_now_ns() - start >= 20 * 1000000ull);
	/* The cancelled timer never fires. */
	assert_int_equal(bks_loop_run_once(loop, 30), 0);
	assert_int_equal(o.n, 2);
	bks_loop_free(loop);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_parse_table),
	    cmocka_unit_test(test_parse_too_long),
	    cmocka_unit_test(test_format_round_trip),
	    cmocka_unit_test(test_open_ram),
	    cmocka_unit_test(test_framework_checks),
	    cmocka_unit_test(test_read_only),
	    cmocka_unit_test(test_open_errors),
	    cmocka_unit_test(test_driver_tables),
	    cmocka_unit_test(test_req_pool),
	    cmocka_unit_test(test_loop_timers_and_defers),
	};

	return cmocka_run_group_tests_name("chain", tests, NULL, NULL);
}
