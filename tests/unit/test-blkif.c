/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Unit tests: the blkif ring export's protocol core
 * (libblkstack/export/blkif/), with no hypervisor.  The test is the
 * guest: it builds the shared ring in memory as blkfront does (Xen's own
 * structs from xen/io/blkif.h for the x86_64 layout, the same structs
 * packed as i386 packs them for x86_32), grants its data pages through
 * the memory grant ops of blkif-mem.h, and reads the responses back.
 * Below the export: a ram: chain.
 *
 * Covered: reads and writes of several segments and indirect ones with
 * their data checked, flush (alone and with data), discard, both
 * layouts, multi-page rings, the map fallback, every class of hostile
 * request (each answered with its id and the ring going on), bad ring
 * indices (that ring alone stops), an indirect request waiting for a
 * buffer, and responses still produced at shutdown.
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

/* Xen's ring macros want these (a guest's barriers). */
#define xen_mb()  __sync_synchronize()
#define xen_rmb() __sync_synchronize()
#define xen_wmb() __sync_synchronize()
#include <xen/io/blkif.h>

#include "bks-blkif.h"
#include "blkif-mem.h"
#include "blkstack/chain.h"
#include "blkstack/export.h"
#include "fw-drivers.h"
#include "internal.h"
#include "unit-util.h"

/* The x86_32 layout: blkif.h's structs as an i386 guest lays them out. */
#pragma pack(push, 4)
struct req32 {
	uint8_t operation, nr_segments;
	uint16_t handle;
	uint64_t id, sector_number;
	struct blkif_request_segment seg[BLKIF_MAX_SEGMENTS_PER_REQUEST];
};
struct discard32 {
	uint8_t operation, flag;
	uint16_t handle;
	uint64_t id, sector_number, nr_sectors;
};
struct indirect32 {
	uint8_t operation, indirect_op;
	uint16_t nr_segments;
	uint64_t id, sector_number;
	uint16_t handle;
	grant_ref_t indirect_grefs[BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST];
	uint64_t pad;
};
struct rsp32 {
	uint64_t id;
	uint8_t operation;
	int16_t status;
};
#pragma pack(pop)

_Static_assert(sizeof(struct req32) == 108, "x86_32 request");
_Static_assert(sizeof(struct discard32) == 28, "x86_32 discard");
_Static_assert(sizeof(struct indirect32) == 64, "x86_32 indirect");
_Static_assert(sizeof(struct rsp32) == 12, "x86_32 response");

#define DISK_SIZE   (8u << 20) /* ram:8M */
#define POOL_PAGES  4096u
#define WAIT_ROUNDS 100

/* ---- the guest ------------------------------------------------------------
 */

struct guest {
	struct bks_loop *loop;
	struct bks_chain *chain;
	struct blkif_mem mem;
	enum bks_blkif_abi abi;
	unsigned int order, nr;
	size_t stride;
	unsigned char *sring;
	uint32_t prod, rsp_cons; /* the frontend's private indices */
	unsigned char *pool;	 /* data and indirect pages */
	unsigned int pool_used;
	struct bks_blkif *rg;
	struct bks_export *exp;
	int broken_calls, done;
	struct bks_error why;
};

/* A request as the guest means it, encoded by g_put(). */
struct greq {
	uint8_t op, inner_op, flag;
	uint16_t nseg;
	uint64_t id, sector, nsectors;
	struct blkif_request_segment seg[BLKIF_MAX_SEGMENTS_PER_REQUEST];
	grant_ref_t igref[BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST];
};

struct grsp {
	uint64_t id;
	uint8_t op;
	int16_t status;
};

struct gopts {
	enum bks_blkif_abi abi;
	unsigned int order;
	bool read_only;
	unsigned int max_indirect, big_bufs;
	const struct bks_blkif_grant_ops *ops;
	const char *chain;
	const struct bks_driver *const *extra; /* test drivers, or NULL */
};

static void on_broken(void *arg, const struct bks_error *why)
{
	struct guest *g = arg;

	g->broken_calls++;
	g->why = *why;
}

static void on_done(void *arg)
{
	((struct guest *)arg)->done++;
}

static struct guest *g_new_on(const struct gopts *o, struct bks_loop *loop,
			      struct bks_chain *chain)
{
	struct guest *g = calloc(1, sizeof(*g));
	struct bks_error err = {0};
	struct bks_blkif_config cfg;
	size_t ring_bytes;

	assert_non_null(g);
	mem_init(&g->mem);
	g->loop = loop;
	g->chain = chain;
	g->abi = o->abi;
	g->order = o->order;
	g->stride = o->abi == BKS_BLKIF_ABI_X86_32 ? 108 : 112;
	ring_bytes = (size_t)BKS_BLKIF_PAGE_SIZE << o->order;
	g->nr = 1;
	while (g->nr * 2 <= (ring_bytes - 64) / g->stride)
		g->nr *= 2;
	g->sring = unit_alloc_aligned(ring_bytes);
	g->pool = unit_alloc_aligned((size_t)POOL_PAGES * BKS_BLKIF_PAGE_SIZE);
	assert_non_null(g->sring);
	assert_non_null(g->pool);
	memset(g->sring, 0, ring_bytes);
	/* SHARED_RING_INIT: events wanted at the first of each. */
	((struct blkif_sring *)(void *)g->sring)->req_event = 1;
	((struct blkif_sring *)(void *)g->sring)->rsp_event = 1;
	cfg = (struct bks_blkif_config){
	    .loop = loop,
	    .chain = chain,
	    .sring = g->sring,
	    .ring_order = o->order,
	    .abi = o->abi,
	    .read_only = o->read_only,
	    .max_indirect = o->max_indirect,
	    .big_bufs = o->big_bufs,
	    .ops = o->ops ? o->ops : &mem_ops,
	    .ops_state = &g->mem,
	    .broken = on_broken,
	    .arg = g,
	};
	if (bks_blkif_new(&g->rg, &cfg, &err) < 0)
		fail_msg("bks_blkif_new: %s", err.msg);
	g->exp = bks_blkif_export(g->rg);
	assert_string_equal(bks_export_name(g->exp), "blkif");
	assert_int_equal(bks_blkif_ring_size(g->rg), g->nr);
	assert_int_equal(bks_export_start(g->exp, &err), 0);
	return g;
}

static struct guest *g_new(const struct gopts *o)
{
	struct bks_error err = {0};
	struct bks_loop *loop;
	struct bks_chain *chain;
	const char *s = o->chain ? o->chain : "ram:8M";

	assert_int_equal(bks_loop_new(&loop, &err), 0);
	if (bks_chain_open_with(&chain, s, o->extra, loop, false, &err) < 0)
		fail_msg("%s: %s", s, err.msg);
	return g_new_on(o, loop, chain);
}

static void g_run(struct guest *g)
{
	for (int i = 0; i < 3; i++)
		bks_loop_run_once(g->loop, 0);
}

/* Shut the export down (it must say done) and free it, not the chain. */
static void g_stop(struct guest *g)
{
	bks_export_shutdown(g->exp, on_done, g);
	for (int i = 0; i < WAIT_ROUNDS && !g->done; i++)
		bks_loop_run_once(g->loop, 0);
	assert_int_equal(g->done, 1);
	bks_export_free(g->exp);
	free(g->sring);
	free(g->pool);
	free(g);
}

static void g_free(struct guest *g)
{
	struct bks_loop *loop = g->loop;
	struct bks_chain *chain = g->chain;

	g_stop(g);
	bks_chain_close(chain);
	bks_loop_free(loop);
}

/* A fresh page of the pool, granted; *p gets its address. */
static uint32_t g_page(struct guest *g, unsigned char **p)
{
	unsigned char *page;

	assert_true(g->pool_used < POOL_PAGES);
	page = g->pool + (size_t)g->pool_used++ * BKS_BLKIF_PAGE_SIZE;
	memset(page, 0, BKS_BLKIF_PAGE_SIZE);
	if (p)
		*p = page;
	return mem_grant(&g->mem, page);
}

static unsigned char *g_entry(const struct guest *g, uint32_t idx)
{
	return g->sring + 64 + (size_t)(idx & (g->nr - 1)) * g->stride;
}

/*
 * Encode r into entry e as a guest of one layout would: the same code
 * over that layout's three request structs (Xen's, or the i386 ones).
 */
#define DEFINE_PUT(name, rw_t, discard_t, indirect_t)                          \
	static void name(unsigned char *e, const struct greq *r)               \
	{                                                                      \
		if (r->op == BLKIF_OP_DISCARD) {                               \
			discard_t d = {.operation = r->op,                     \
				       .flag = r->flag,                        \
				       .id = r->id,                            \
				       .sector_number = r->sector,             \
				       .nr_sectors = r->nsectors};             \
			memcpy(e, &d, sizeof(d));                              \
		} else if (r->op == BLKIF_OP_INDIRECT) {                       \
			indirect_t d = {.operation = r->op,                    \
					.indirect_op = r->inner_op,            \
					.nr_segments = r->nseg,                \
					.id = r->id,                           \
					.sector_number = r->sector};           \
			memcpy(d.indirect_grefs, r->igref, sizeof(r->igref));  \
			memcpy(e, &d, sizeof(d));                              \
		} else {                                                       \
			rw_t d = {.operation = r->op,                          \
				  .nr_segments = (uint8_t)r->nseg,             \
				  .id = r->id,                                 \
				  .sector_number = r->sector};                 \
			memcpy(d.seg, r->seg, sizeof(r->seg));                 \
			memcpy(e, &d, sizeof(d));                              \
		}                                                              \
	}

DEFINE_PUT(put_native, struct blkif_request, struct blkif_request_discard,
	   struct blkif_request_indirect)
DEFINE_PUT(put_32, struct req32, struct discard32, struct indirect32)

/* Put r on the ring (not yet published). */
static void g_put(struct guest *g, const struct greq *r)
{
	unsigned char *e = g_entry(g, g->prod++);

	memset(e, 0xa5, g->stride); /* garbage where the struct has none */
	if (g->abi == BKS_BLKIF_ABI_X86_32)
		put_32(e, r);
	else
		put_native(e, r);
}

/* Publish what was put, kick the backend, and let the loop run. */
static void g_push(struct guest *g)
{
	__sync_synchronize();
	((struct blkif_sring *)(void *)g->sring)->req_prod = g->prod;
	bks_blkif_kick(g->rg);
	g_run(g);
}

static uint32_t g_rsp_prod(const struct guest *g)
{
	return __atomic_load_n(
	    &((struct blkif_sring *)(void *)g->sring)->rsp_prod,
	    __ATOMIC_ACQUIRE);
}

/* The next response; fails the test if there is none. */
static struct grsp g_rsp(struct guest *g)
{
	struct grsp out;
	unsigned char *e;

	if (g_rsp_prod(g) == g->rsp_cons)
		fail_msg("no response (rsp_prod %u); last error '%s'",
			 g_rsp_prod(g), bks_blkif_last_error(g->rg));
	e = g_entry(g, g->rsp_cons++);
	if (g->abi == BKS_BLKIF_ABI_X86_32) {
		struct rsp32 r;

		memcpy(&r, e, sizeof(r));
		out = (struct grsp){r.id, r.operation, r.status};
	} else {
		struct blkif_response r;

		memcpy(&r, e, sizeof(r));
		out = (struct grsp){r.id, r.operation, r.status};
	}
	/* Want an event at the next response, as blkfront does. */
	((struct blkif_sring *)(void *)g->sring)->rsp_event = g->rsp_cons + 1;
	return out;
}

/* The next response must be (id, op, status). */
static void g_expect(struct guest *g, uint64_t id, uint8_t op, int16_t status)
{
	struct grsp r = g_rsp(g);

	if (r.id != id || r.op != op || r.status != status)
		fail_msg("response id %llu op %u status %d, wanted id %llu op "
			 "%u status %d (last error '%s')",
			 (unsigned long long)r.id, r.op, r.status,
			 (unsigned long long)id, op, status,
			 bks_blkif_last_error(g->rg));
}

static void g_expect_none(const struct guest *g)
{
	assert_int_equal(g_rsp_prod(g), g->rsp_cons);
}

/* ---- transfers: pages of the pattern at known disk offsets -------------- */

struct xfer {
	uint64_t sector;
	unsigned int nseg;
	uint32_t *gref;
	unsigned char **page;
	uint8_t *first, *last;
};

/*
 * nseg fresh pages from sector on: every segment whole, but the first
 * starts at sector first0 of its page and the last ends at lastn.
 */
static void xfer_make(struct guest *g, struct xfer *x, uint64_t sector,
		      unsigned int nseg, uint8_t first0, uint8_t lastn)
{
	x->sector = sector;
	x->nseg = nseg;
	x->gref = calloc(nseg, sizeof(*x->gref));
	x->page = calloc(nseg, sizeof(*x->page));
	x->first = calloc(nseg, 1);
	x->last = calloc(nseg, 1);
	assert_true(x->gref && x->page && x->first && x->last);
	for (unsigned int i = 0; i < nseg; i++) {
		x->gref[i] = g_page(g, &x->page[i]);
		x->first[i] = i == 0 ? first0 : 0;
		x->last[i] = i == nseg - 1 ? lastn : 7;
	}
}

/* Fill (check) each segment with the pattern for its disk offset. */
static void xfer_pattern(const struct xfer *x, uint64_t seed, bool check)
{
	uint64_t off = x->sector * 512;

	for (unsigned int i = 0; i < x->nseg; i++) {
		size_t len = (size_t)(x->last[i] - x->first[i] + 1) * 512;
		unsigned char *p = x->page[i] + x->first[i] * 512;
		long bad;

		if (!check) {
			unit_fill(p, len, off, seed);
		} else {
			bad = unit_check(p, len, off, seed);
			if (bad >= 0)
				fail_msg("segment %u: wrong data at byte %ld",
					 i, bad);
		}
		off += len;
	}
}

static void xfer_free(struct xfer *x)
{
	free(x->gref);
	free(x->page);
	free(x->first);
	free(x->last);
}

static void seg_set(struct blkif_request_segment *s, uint32_t gref,
		    uint8_t first, uint8_t last)
{
	s->gref = gref;
	s->first_sect = first;
	s->last_sect = last;
}

/* A direct request for x (at most 11 segments). */
static void g_direct(struct guest *g, uint8_t op, uint64_t id,
		     const struct xfer *x)
{
	struct greq r = {.op = op, .id = id, .sector = x->sector};

	r.nseg = (uint16_t)x->nseg;
	for (unsigned int i = 0; i < x->nseg && i < 11; i++)
		seg_set(&r.seg[i], x->gref[i], x->first[i], x->last[i]);
	g_put(g, &r);
}

/* An indirect request for x: its segments on granted indirect pages. */
static void g_indirect(struct guest *g, uint8_t inner, uint64_t id,
		       const struct xfer *x)
{
	struct greq r = {.op = BLKIF_OP_INDIRECT,
			 .inner_op = inner,
			 .id = id,
			 .sector = x->sector};
	unsigned int npages = (x->nseg + 511) / 512;
	unsigned char *page = NULL;

	r.nseg = (uint16_t)x->nseg;
	assert_true(npages <= BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST);
	for (unsigned int i = 0; i < x->nseg; i++) {
		struct blkif_request_segment s;

		if (i % 512 == 0)
			r.igref[i / 512] = g_page(g, &page);
		seg_set(&s, x->gref[i], x->first[i], x->last[i]);
		memcpy(page + 8 * (i % 512), &s, sizeof(s));
	}
	g_put(g, &r);
}

static void g_flush(struct guest *g, uint64_t id)
{
	struct greq r = {.op = BLKIF_OP_FLUSH_DISKCACHE, .id = id};

	g_put(g, &r);
}

static void g_discard(struct guest *g, uint64_t id, uint64_t sector, uint64_t n)
{
	struct greq r = {
	    .op = BLKIF_OP_DISCARD, .id = id, .sector = sector, .nsectors = n};

	g_put(g, &r);
}

/* ---- layouts ---------------------------------------------------------------
 */

static void test_layout(void **state)
{
	const struct blkif_layout *l64 = abi_layout(BKS_BLKIF_ABI_X86_64);
	const struct blkif_layout *l32 = abi_layout(BKS_BLKIF_ABI_X86_32);
	struct bks_error err = {0};
	enum bks_blkif_abi abi;

	(void)state;
	/* The native one against Xen's own header. */
	assert_int_equal(l64->entry, sizeof(union blkif_sring_entry));
	assert_int_equal(offsetof(struct blkif_sring, ring), RING_HDR_SIZE);
	assert_int_equal(l64->rw_id, offsetof(struct blkif_request, id));
	assert_int_equal(l64->rw_sector,
			 offsetof(struct blkif_request, sector_number));
	assert_int_equal(l64->rw_seg, offsetof(struct blkif_request, seg));
	assert_int_equal(l64->d_id, offsetof(struct blkif_request_discard, id));
	assert_int_equal(l64->d_nr,
			 offsetof(struct blkif_request_discard, nr_sectors));
	assert_int_equal(l64->i_nseg,
			 offsetof(struct blkif_request_indirect, nr_segments));
	assert_int_equal(l64->i_id,
			 offsetof(struct blkif_request_indirect, id));
	assert_int_equal(l64->i_sector, offsetof(struct blkif_request_indirect,
						 sector_number));
	assert_int_equal(l64->i_grefs, offsetof(struct blkif_request_indirect,
						indirect_grefs));
	assert_int_equal(l64->r_id, offsetof(struct blkif_response, id));
	assert_int_equal(l64->r_op, offsetof(struct blkif_response, operation));
	assert_int_equal(l64->r_status,
			 offsetof(struct blkif_response, status));
	assert_int_equal(__CONST_RING_SIZE(blkif, 4096), 32);
	/* The 32-bit one against the packed structs. */
	assert_int_equal(l32->entry, sizeof(struct req32));
	assert_int_equal(l32->rw_id, offsetof(struct req32, id));
	assert_int_equal(l32->rw_sector, offsetof(struct req32, sector_number));
	assert_int_equal(l32->rw_seg, offsetof(struct req32, seg));
	assert_int_equal(l32->d_sector,
			 offsetof(struct discard32, sector_number));
	assert_int_equal(l32->d_nr, offsetof(struct discard32, nr_sectors));
	assert_int_equal(l32->i_id, offsetof(struct indirect32, id));
	assert_int_equal(l32->i_grefs,
			 offsetof(struct indirect32, indirect_grefs));
	assert_int_equal(l32->r_status, offsetof(struct rsp32, status));
	/* The protocol node. */
	assert_int_equal(bks_blkif_abi_parse("x86_32-abi", 10, &abi, &err), 0);
	assert_int_equal(abi, BKS_BLKIF_ABI_X86_32);
	assert_int_equal(bks_blkif_abi_parse("x86_64-abi", 10, &abi, &err), 0);
	assert_int_equal(abi, BKS_BLKIF_ABI_X86_64);
	assert_int_equal(bks_blkif_abi_parse(NULL, 0, &abi, &err), 0);
	assert_int_equal(abi, BKS_BLKIF_ABI_X86_64);
	assert_int_equal(bks_blkif_abi_parse("x86_64-abiX", 10, &abi, &err), 0);
	assert_int_equal(bks_blkif_abi_parse("arm-abi", 7, &abi, &err),
			 -EPROTONOSUPPORT);
	assert_non_null(strstr(err.msg, "'arm-abi'"));
}

/* ---- good requests --------------------------------------------------------
 */

/* Send x as op (indirect past 11 segments) and expect it to succeed. */
static void g_xfer(struct guest *g, uint8_t op, uint64_t id,
		   const struct xfer *x)
{
	if (x->nseg > 11)
		g_indirect(g, op, id, x);
	else
		g_direct(g, op, id, x);
	g_push(g);
	g_expect(g, id, op, BLKIF_RSP_OKAY);
}

/*
 * Read nseg pages from sector on (first0 and lastn as xfer_make()) into
 * fresh pages as request id, and check them against seed's pattern.
 */
static void g_read_check(struct guest *g, uint64_t sector, unsigned int nseg,
			 uint8_t first0, uint8_t lastn, uint64_t id,
			 uint64_t seed)
{
	struct xfer r;

	xfer_make(g, &r, sector, nseg, first0, lastn);
	g_xfer(g, BLKIF_OP_READ, id, &r);
	xfer_pattern(&r, seed, true);
	xfer_free(&r);
}

/* Write x (seed), read it back into fresh pages, check. */
static void roundtrip(struct guest *g, uint64_t sector, unsigned int nseg,
		      uint8_t first0, uint8_t lastn, uint64_t id)
{
	struct xfer w;

	xfer_make(g, &w, sector, nseg, first0, lastn);
	xfer_pattern(&w, id, false);
	g_xfer(g, BLKIF_OP_WRITE, id, &w);
	g_read_check(g, sector, nseg, first0, lastn, id + 1, id);
	xfer_free(&w);
}

static void good_requests(enum bks_blkif_abi abi)
{
	struct gopts o = {.abi = abi, .max_indirect = 1024, .big_bufs = 2};
	struct guest *g = g_new(&o);
	struct bks_export_stats st;

	roundtrip(g, 0, 1, 0, 7, 10);	   /* one page */
	roundtrip(g, 9, 11, 3, 5, 20);	   /* 11 segments, partial ends */
	roundtrip(g, 100, 3, 1, 1, 30);	   /* unaligned to 4k */
	roundtrip(g, 2048, 40, 0, 7, 40);  /* indirect, one page */
	roundtrip(g, 4097, 600, 2, 6, 50); /* indirect, two pages */
	/* Reads of what other requests wrote, cut differently. */
	g_read_check(g, 2048 + 8, 16, 0, 7, 60, 40);
	/* Flush alone. */
	g_flush(g, 70);
	g_push(g);
	g_expect(g, 70, BLKIF_OP_FLUSH_DISKCACHE, BLKIF_RSP_OKAY);
	assert_true(g->mem.notifies > 0);
	bks_export_get_stats(g->exp, &st);
	assert_int_equal(st.errors, 0);
	assert_int_equal(st.in_flight, 0);
	assert_int_equal(st.requests, 12);
	assert_int_equal(bks_blkif_last_error(g->rg)[0], '\0');
	g_free(g);
}

static void test_rw(void **state)
{
	good_requests(*(const enum bks_blkif_abi *)*state);
}

/* A flush with data: blkfront's write with PREFLUSH and FUA. */
static void test_flush_data(void **state)
{
	struct gopts o = {0};
	struct guest *g = g_new(&o);
	struct xfer w;
	struct bks_layer_stats ls;

	(void)state;
	xfer_make(g, &w, 64, 4, 0, 7);
	xfer_pattern(&w, 5, false);
	g_direct(g, BLKIF_OP_FLUSH_DISKCACHE, 1, &w);
	g_push(g);
	g_expect(g, 1, BLKIF_OP_FLUSH_DISKCACHE, BLKIF_RSP_OKAY);
	bks_layer_get_stats(bks_chain_top(g->chain), &ls);
	assert_int_equal(ls.op[BKS_OP_FLUSH].ops, 1); /* before */
	assert_int_equal(ls.op[BKS_OP_WRITE].ops, 1); /* FUA: ram: can */
	g_read_check(g, 64, 4, 0, 7, 2, 5);
	xfer_free(&w);
	g_free(g);
}

static void test_discard(void **state)
{
	struct gopts o = {0};
	struct guest *g = g_new(&o);
	struct bks_blkif_features f;
	struct xfer w, r;

	(void)state;
	bks_blkif_features(g->chain, false, 0, &f);
	assert_true(f.discard);
	assert_int_equal(f.discard_granularity, 512);
	assert_int_equal(f.sectors, DISK_SIZE / 512);
	assert_int_equal(f.max_indirect_segments, BKS_BLKIF_DEFAULT_INDIRECT);
	assert_int_equal(f.max_ring_page_order, BKS_BLKIF_MAX_RING_ORDER);
	assert_false(f.barrier);
	xfer_make(g, &w, 0, 8, 0, 7);
	xfer_pattern(&w, 9, false);
	g_direct(g, BLKIF_OP_WRITE, 1, &w);
	g_push(g);
	g_expect(g, 1, BLKIF_OP_WRITE, BLKIF_RSP_OKAY);
	g_discard(g, 2, 8, 48); /* pages 1 to 6 of the 8 */
	g_push(g);
	g_expect(g, 2, BLKIF_OP_DISCARD, BLKIF_RSP_OKAY);
	xfer_make(g, &r, 0, 8, 0, 7);
	g_direct(g, BLKIF_OP_READ, 3, &r);
	g_push(g);
	g_expect(g, 3, BLKIF_OP_READ, BLKIF_RSP_OKAY);
	/* ram: reads a discarded range as zeroes. */
	assert_int_equal(unit_check(r.page[0], 4096, 0, 9), -1);
	for (unsigned int i = 1; i < 7; i++)
		assert_true(unit_is_zero(r.page[i], 4096));
	assert_int_equal(unit_check(r.page[7], 4096, 7 * 4096, 9), -1);
	/* Past the end, or of nothing. */
	g_discard(g, 4, DISK_SIZE / 512 - 8, 9);
	g_discard(g, 5, 0, 0);
	g_discard(g, 6, UINT64_MAX, 2);
	g_push(g);
	g_expect(g, 4, BLKIF_OP_DISCARD, BLKIF_RSP_ERROR);
	g_expect(g, 5, BLKIF_OP_DISCARD, BLKIF_RSP_ERROR);
	g_expect(g, 6, BLKIF_OP_DISCARD, BLKIF_RSP_ERROR);
	xfer_free(&w);
	xfer_free(&r);
	g_free(g);
}

/* A ring of 4 pages, filled at once; and an order above the maximum. */
static void test_multi_page(void **state)
{
	struct gopts o = {.order = 2};
	struct guest *g = g_new(&o);
	struct xfer x[128];
	struct bks_blkif_config cfg = {
	    .loop = g->loop,
	    .chain = g->chain,
	    .sring = g->sring,
	    .ring_order = BKS_BLKIF_MAX_RING_ORDER + 1,
	    .ops = &mem_ops,
	    .ops_state = &g->mem,
	};
	struct bks_error err = {0};
	struct bks_blkif *rg = NULL;

	(void)state;
	assert_int_equal(g->nr, 128);
	for (unsigned int i = 0; i < 128; i++) {
		xfer_make(g, &x[i], 8 * i, 1, 0, 7);
		xfer_pattern(&x[i], 77, false);
		g_direct(g, BLKIF_OP_WRITE, 1000 + i, &x[i]);
	}
	g_push(g);
	for (unsigned int i = 0; i < 128; i++)
		g_expect(g, 1000 + i, BLKIF_OP_WRITE, BLKIF_RSP_OKAY);
	/* Around the ring again, past the index wrap of its entries. */
	for (unsigned int i = 0; i < 128; i++) {
		memset(x[i].page[0], 0, 4096);
		g_direct(g, BLKIF_OP_READ, 2000 + i, &x[i]);
	}
	g_push(g);
	for (unsigned int i = 0; i < 128; i++) {
		g_expect(g, 2000 + i, BLKIF_OP_READ, BLKIF_RSP_OKAY);
		xfer_pattern(&x[i], 77, true);
		xfer_free(&x[i]);
	}
	assert_int_equal(bks_blkif_new(&rg, &cfg, &err), -EINVAL);
	assert_null(rg);
	assert_non_null(strstr(err.msg, "ring-page-order 5"));
	g_free(g);
}

/* Grant copy unsupported (then map), or absent (map only). */
static void fallback(const struct bks_blkif_grant_ops *ops, bool unsupported)
{
	struct gopts o = {.ops = ops, .max_indirect = 64};
	struct guest *g = g_new(&o);

	g->mem.copy_unsupported = unsupported;
	roundtrip(g, 16, 5, 1, 6, 1);
	roundtrip(g, 512, 30, 0, 7, 3);
	assert_true(g->mem.map_calls > 0);
	assert_int_equal(g->mem.copy_calls, unsupported ? 1 : 0);
	g_free(g);
}

static void test_map_fallback(void **state)
{
	(void)state;
	fallback(&mem_ops, true);
	fallback(&mem_map_ops, false);
}

/* ---- hostile requests ------------------------------------------------------
 */

static void hostile(enum bks_blkif_abi abi)
{
	struct gopts o = {.abi = abi, .max_indirect = 64};
	struct guest *g = g_new(&o);
	uint64_t end = DISK_SIZE / 512;
	struct bks_export_stats st;
	struct greq r;
	struct xfer x;
	uint32_t page;

	page = g_page(g, NULL);
	/* Too many segments, and none. */
	r = (struct greq){.op = BLKIF_OP_READ, .id = 1, .nseg = 12};
	for (int i = 0; i < 11; i++)
		seg_set(&r.seg[i], page, 0, 7);
	g_put(g, &r);
	r.id = 2;
	r.nseg = 0;
	g_put(g, &r);
	r.op = BLKIF_OP_WRITE;
	r.id = 3;
	r.nseg = 255;
	g_put(g, &r);
	/* first_sect > last_sect, last_sect > 7 (in the second segment). */
	r = (struct greq){.op = BLKIF_OP_READ, .id = 4, .nseg = 2};
	seg_set(&r.seg[0], page, 0, 7);
	seg_set(&r.seg[1], page, 5, 4);
	g_put(g, &r);
	r.id = 5;
	seg_set(&r.seg[1], page, 0, 8);
	g_put(g, &r);
	/* Past the end; over the end; a sector that wraps. */
	r = (struct greq){
	    .op = BLKIF_OP_WRITE, .id = 6, .nseg = 1, .sector = end};
	seg_set(&r.seg[0], page, 0, 0);
	g_put(g, &r);
	r.id = 7;
	r.sector = end - 7;
	seg_set(&r.seg[0], page, 0, 7);
	g_put(g, &r);
	r.id = 8;
	r.sector = UINT64_MAX - 3;
	g_put(g, &r);
	/* Unknown operations, and a barrier (not advertised). */
	r = (struct greq){.op = 4, .id = 9};
	g_put(g, &r);
	r = (struct greq){.op = 200, .id = 10};
	g_put(g, &r);
	r = (struct greq){.op = BLKIF_OP_WRITE_BARRIER, .id = 11, .nseg = 1};
	seg_set(&r.seg[0], page, 0, 7);
	g_put(g, &r);
	/* A bad grant: never granted, and revoked. */
	r = (struct greq){.op = BLKIF_OP_READ, .id = 12, .nseg = 2};
	seg_set(&r.seg[0], page, 0, 7);
	seg_set(&r.seg[1], 7777, 0, 7);
	g_put(g, &r);
	r.op = BLKIF_OP_WRITE;
	r.id = 13;
	seg_set(&r.seg[1], 0, 0, 7);
	g_put(g, &r);
	g_push(g);
	g_expect(g, 1, BLKIF_OP_READ, BLKIF_RSP_ERROR);
	g_expect(g, 2, BLKIF_OP_READ, BLKIF_RSP_ERROR);
	g_expect(g, 3, BLKIF_OP_WRITE, BLKIF_RSP_ERROR);
	g_expect(g, 4, BLKIF_OP_READ, BLKIF_RSP_ERROR);
	g_expect(g, 5, BLKIF_OP_READ, BLKIF_RSP_ERROR);
	g_expect(g, 6, BLKIF_OP_WRITE, BLKIF_RSP_ERROR);
	g_expect(g, 7, BLKIF_OP_WRITE, BLKIF_RSP_ERROR);
	g_expect(g, 8, BLKIF_OP_WRITE, BLKIF_RSP_ERROR);
	g_expect(g, 9, 4, BLKIF_RSP_EOPNOTSUPP);
	g_expect(g, 10, 200, BLKIF_RSP_EOPNOTSUPP);
	g_expect(g, 11, BLKIF_OP_WRITE_BARRIER, BLKIF_RSP_EOPNOTSUPP);
	g_expect(g, 12, BLKIF_OP_READ, BLKIF_RSP_ERROR);
	g_expect(g, 13, BLKIF_OP_WRITE, BLKIF_RSP_ERROR);
	/* The last of them says what was wrong, with its id. */
	assert_non_null(strstr(bks_blkif_last_error(g->rg), "request 13: "));
	assert_non_null(strstr(bks_blkif_last_error(g->rg), "gref 0"));

	/* Indirect: too many segments, none, a bad inner op. */
	xfer_make(g, &x, 0, 20, 0, 7);
	r = (struct greq){.op = BLKIF_OP_INDIRECT,
			  .inner_op = BLKIF_OP_READ,
			  .id = 20,
			  .nseg = 65};
	r.igref[0] = page;
	g_put(g, &r);
	r.id = 21;
	r.nseg = 0;
	g_put(g, &r);
	r.id = 22;
	r.nseg = 4;
	r.inner_op = BLKIF_OP_DISCARD;
	g_put(g, &r);
	g_push(g);
	g_expect(g, 20, BLKIF_OP_READ, BLKIF_RSP_ERROR);
	g_expect(g, 21, BLKIF_OP_READ, BLKIF_RSP_ERROR);
	g_expect(g, 22, BLKIF_OP_DISCARD, BLKIF_RSP_ERROR);
	/* An indirect page with a bad segment, a bad data grant, a bad page. */
	x.first[3] = 6;
	x.last[3] = 2;
	g_indirect(g, BLKIF_OP_WRITE, 23, &x);
	x.first[3] = 0;
	x.last[3] = 7;
	x.gref[19] = 9999;
	g_indirect(g, BLKIF_OP_READ, 24, &x);
	r = (struct greq){.op = BLKIF_OP_INDIRECT,
			  .inner_op = BLKIF_OP_READ,
			  .id = 25,
			  .nseg = 8};
	r.igref[0] = 8888;
	g_put(g, &r);
	g_push(g);
	g_expect(g, 23, BLKIF_OP_WRITE, BLKIF_RSP_ERROR);
	g_expect(g, 24, BLKIF_OP_READ, BLKIF_RSP_ERROR);
	g_expect(g, 25, BLKIF_OP_READ, BLKIF_RSP_ERROR);
	assert_non_null(strstr(bks_blkif_last_error(g->rg), "indirect page"));
	xfer_free(&x);

	/* And the ring goes on. */
	assert_false(bks_blkif_broken(g->rg, NULL));
	roundtrip(g, 40, 3, 0, 7, 30);
	g_expect_none(g);
	bks_export_get_stats(g->exp, &st);
	assert_int_equal(st.errors, 19);
	assert_int_equal(st.in_flight, 0);
	g_free(g);
}

static void test_hostile(void **state)
{
	hostile(*(const enum bks_blkif_abi *)*state);
}

/* A read-only disk: writes, flushes with data and discards refused. */
static void test_read_only(void **state)
{
	struct gopts o = {.read_only = true, .max_indirect = 32};
	struct guest *g = g_new(&o);
	struct bks_blkif_features f;
	struct xfer x, d;

	(void)state;
	bks_blkif_get_features(g->rg, &f);
	assert_int_equal(f.info, 4); /* VDISK_READONLY */
	assert_false(f.discard);
	assert_int_equal(f.max_indirect_segments, 32);
	xfer_make(g, &x, 0, 12, 0, 7);
	xfer_make(g, &d, 0, 2, 0, 7);
	g_direct(g, BLKIF_OP_WRITE, 1, &d);
	g_direct(g, BLKIF_OP_FLUSH_DISKCACHE, 2, &d);
	g_indirect(g, BLKIF_OP_WRITE, 3, &x);
	g_discard(g, 4, 0, 8);
	g_flush(g, 5);			   /* no data: fine */
	g_direct(g, BLKIF_OP_READ, 6, &x); /* 12 segments: too many */
	g_indirect(g, BLKIF_OP_READ, 7, &x);
	g_push(g);
	g_expect(g, 1, BLKIF_OP_WRITE, BLKIF_RSP_ERROR);
	g_expect(g, 2, BLKIF_OP_FLUSH_DISKCACHE, BLKIF_RSP_ERROR);
	g_expect(g, 3, BLKIF_OP_WRITE, BLKIF_RSP_ERROR);
	g_expect(g, 4, BLKIF_OP_DISCARD, BLKIF_RSP_ERROR);
	g_expect(g, 5, BLKIF_OP_FLUSH_DISKCACHE, BLKIF_RSP_OKAY);
	g_expect(g, 6, BLKIF_OP_READ, BLKIF_RSP_ERROR);
	g_expect(g, 7, BLKIF_OP_READ, BLKIF_RSP_OKAY);
	xfer_free(&x);
	xfer_free(&d);
	g_free(g);
}

static void on_drained(void *arg)
{
	(void)arg;
}

/*
 * The guest changes what it sent while the backend works on it: the
 * entry on the ring and the indirect page, after the backend copied
 * them.  The backend serves what it copied and checked (no double
 * fetch): had it read either again, the bad grants would fail it.
 */
struct race {
	struct guest *g;
	unsigned char *ipage;
	int calls;
};

static void race_scribble(struct blkif_mem *m, void *arg)
{
	struct race *r = arg;
	struct guest *g = r->g;
	unsigned char *e = g_entry(g, g->prod - 1);

	(void)m;
	if (r->calls++ > 0)
		return;
	/* Every segment's grant bad, the count and sector absurd. */
	memset(r->ipage, 0xee, 4096);
	memset(e + 1, 0xee, g->stride - 1);
}

static void test_guest_changes_after_copy(void **state)
{
	struct gopts o = {.max_indirect = 64};
	struct guest *g = g_new(&o);
	struct race r = {.g = g};
	struct xfer w;

	(void)state;
	xfer_make(g, &w, 24, 30, 0, 7);
	xfer_pattern(&w, 8, false);
	g_indirect(g, BLKIF_OP_WRITE, 1, &w);
	/* The indirect page is the last one g_indirect() took. */
	r.ipage = g->pool + (size_t)(g->pool_used - 1) * BKS_BLKIF_PAGE_SIZE;
	g->mem.after_copy = race_scribble;
	g->mem.hook_arg = &r;
	g_push(g);
	g->mem.after_copy = NULL;
	assert_true(r.calls >= 2); /* the page, then the data */
	g_expect(g, 1, BLKIF_OP_WRITE, BLKIF_RSP_OKAY);
	g_read_check(g, 24, 30, 0, 7, 2, 8);
	xfer_free(&w);
	g_free(g);
}

/*
 * req_prod moved back behind the requests taken, yet still within a
 * ring of the responses (three taken and parked, none answered): broken,
 * not served as a ring-full of stale entries.
 */
static void test_prod_back(void **state)
{
	struct gopts o = {0};
	struct guest *g = g_new(&o);
	struct bks_error why = {0};
	struct xfer x;

	(void)state;
	xfer_make(g, &x, 0, 1, 0, 7);
	assert_int_equal(bks_export_hold(g->exp, on_drained, NULL), 0);
	for (int i = 0; i < 3; i++)
		g_direct(g, BLKIF_OP_READ, 1 + (uint64_t)i, &x);
	g_push(g);
	g->prod -= 2;
	g_push(g);
	assert_true(bks_blkif_broken(g->rg, &why));
	assert_non_null(strstr(why.msg, "went back"));
	bks_export_resume(g->exp);
	g_run(g);
	g_expect_none(g);
	xfer_free(&x);
	g_free(g);
}

/* The guest asks for no event: responses go out, no notify. */
static void test_notify_wanted(void **state)
{
	struct gopts o = {0};
	struct guest *g = g_new(&o);
	struct blkif_sring *sr = (struct blkif_sring *)(void *)g->sring;
	unsigned int n;

	(void)state;
	g_flush(g, 1);
	g_push(g);
	g_expect(g, 1, BLKIF_OP_FLUSH_DISKCACHE, BLKIF_RSP_OKAY);
	n = g->mem.notifies;
	assert_true(n >= 1);
	sr->rsp_event = g->rsp_cons + 10; /* not for the next ones */
	g_flush(g, 2);
	g_flush(g, 3);
	g_push(g);
	assert_int_equal(g->mem.notifies, n);
	assert_int_equal(g_rsp_prod(g), g->rsp_cons + 2);
	/* Published, now wanted: the next batch notifies. */
	sr->rsp_event = g->rsp_cons + 3;
	g_flush(g, 4);
	g_push(g);
	assert_int_equal(g->mem.notifies, n + 1);
	g_expect(g, 2, BLKIF_OP_FLUSH_DISKCACHE, BLKIF_RSP_OKAY);
	g_expect(g, 3, BLKIF_OP_FLUSH_DISKCACHE, BLKIF_RSP_OKAY);
	g_expect(g, 4, BLKIF_OP_FLUSH_DISKCACHE, BLKIF_RSP_OKAY);
	g_free(g);
}

/*
 * A guest that adds a request each time one is answered never lets the
 * ring run dry: one kick takes at most a ring's worth, and the rest goes
 * on from the loop, so other work gets its turn.
 */
struct feeder {
	struct guest *g;
	struct xfer *x;
	unsigned int left;
};

static void feed_one(struct blkif_mem *m, void *arg)
{
	struct feeder *f = arg;
	struct guest *g = f->g;

	(void)m;
	if (f->left == 0)
		return;
	f->left--;
	/* As blkfront: consume the responses, then put and publish. */
	g->rsp_cons = g_rsp_prod(g);
	g_direct(g, BLKIF_OP_READ, 100 + f->left, f->x);
	__sync_synchronize();
	((struct blkif_sring *)(void *)g->sring)->req_prod = g->prod;
}

static void test_fair_intake(void **state)
{
	struct gopts o = {0};
	struct guest *g = g_new(&o);
	struct bks_export_stats st;
	struct feeder f = {.g = g, .left = 100};
	struct xfer x;

	(void)state;
	xfer_make(g, &x, 0, 1, 0, 7);
	f.x = &x;
	g->mem.after_copy = feed_one;
	g->mem.hook_arg = &f;
	g_direct(g, BLKIF_OP_READ, 1, &x);
	__sync_synchronize();
	((struct blkif_sring *)(void *)g->sring)->req_prod = g->prod;
	bks_blkif_kick(g->rg);
	bks_export_get_stats(g->exp, &st);
	assert_int_equal(st.requests, g->nr);
	for (int i = 0; i < WAIT_ROUNDS && f.left; i++)
		bks_loop_run_once(g->loop, 0);
	g_run(g);
	g->mem.after_copy = NULL;
	bks_export_get_stats(g->exp, &st);
	assert_int_equal(st.requests, 101);
	assert_int_equal(st.errors, 0);
	assert_false(bks_blkif_broken(g->rg, NULL));
	g->rsp_cons = g_rsp_prod(g);
	xfer_free(&x);
	g_free(g);
}

/* The ring breaks with a request in the chain: it completes into nothing. */
static void test_break_in_flight(void **state)
{
	struct gopts o = {0};
	struct guest *g = g_new(&o);
	struct bks_export_stats st;
	struct xfer x;

	(void)state;
	xfer_make(g, &x, 0, 1, 0, 7);
	assert_int_equal(bks_export_hold(g->exp, on_drained, NULL), 0);
	g_direct(g, BLKIF_OP_WRITE, 1, &x);
	g_push(g);
	g->prod += g->nr; /* one in flight + nr more: too many */
	g_push(g);
	assert_true(bks_blkif_broken(g->rg, NULL));
	bks_export_resume(g->exp);
	g_run(g);
	g_expect_none(g);
	bks_export_get_stats(g->exp, &st);
	assert_int_equal(st.in_flight, 0);
	assert_int_equal(st.dropped, 1);
	xfer_free(&x);
	g_free(g);
}

/* ---- ring-level violations ---------------------------------------------- */

static void bad_prod(enum bks_blkif_abi abi)
{
	struct gopts o = {.abi = abi};
	struct guest *g = g_new(&o);
	struct guest *other;
	struct bks_error why = {0};
	struct xfer x;

	/* A second ring on the same chain, which must not notice. */
	other = g_new_on(&o, g->loop, g->chain);
	xfer_make(g, &x, 0, 1, 0, 7);
	g_direct(g, BLKIF_OP_WRITE, 1, &x);
	g_push(g);
	g_expect(g, 1, BLKIF_OP_WRITE, BLKIF_RSP_OKAY);
	/* req_prod one past what the ring can hold unanswered. */
	g->prod = g->rsp_cons + g->nr + 1;
	g_push(g);
	assert_true(bks_blkif_broken(g->rg, &why));
	assert_int_equal(g->broken_calls, 1);
	assert_int_equal(why.code, EPROTO);
	assert_non_null(strstr(why.msg, "req_prod"));
	g_expect_none(g);
	/* It stays stopped, even when the index looks sane again. */
	g->prod = g->rsp_cons + 1;
	g_push(g);
	g_expect_none(g);
	assert_int_equal(g->broken_calls, 1);
	/* The other ring serves on. */
	roundtrip(other, 8, 2, 0, 7, 5);
	g_stop(other);
	xfer_free(&x);
	g_free(g);
}

static void test_bad_prod(void **state)
{
	(void)state;
	bad_prod(BKS_BLKIF_ABI_X86_64);
	bad_prod(BKS_BLKIF_ABI_X86_32);
}

/* A wild req_prod far behind (a huge unsigned distance) also breaks it. */
static void test_prod_behind(void **state)
{
	struct gopts o = {0};
	struct guest *g = g_new(&o);

	(void)state;
	g->prod = (uint32_t)-5;
	g_push(g);
	assert_true(bks_blkif_broken(g->rg, NULL));
	g_expect_none(g);
	g_free(g);
}

/* ---- buffers, holds and shutdown ---------------------------------------- */

/* One big buffer: the second indirect request waits on the ring. */
static void test_big_buffer_wait(void **state)
{
	struct gopts o = {.max_indirect = 32, .big_bufs = 1};
	struct guest *g = g_new(&o);
	struct xfer a, b;

	(void)state;
	xfer_make(g, &a, 0, 20, 0, 7);
	xfer_make(g, &b, 1000, 20, 0, 7);
	xfer_pattern(&a, 1, false);
	xfer_pattern(&b, 2, false);
	/* A hold parks the first in the chain, keeping its buffer. */
	assert_int_equal(bks_export_hold(g->exp, on_drained, NULL), 0);
	g_indirect(g, BLKIF_OP_WRITE, 1, &a);
	g_indirect(g, BLKIF_OP_WRITE, 2, &b);
	g_push(g);
	g_expect_none(g);
	bks_export_resume(g->exp);
	g_run(g);
	g_expect(g, 1, BLKIF_OP_WRITE, BLKIF_RSP_OKAY);
	g_expect(g, 2, BLKIF_OP_WRITE, BLKIF_RSP_OKAY);
	xfer_free(&a);
	xfer_free(&b);
	roundtrip(g, 2000, 20, 0, 7, 3);
	g_free(g);
}

/* Requests in the chain at shutdown are still answered. */
static void test_shutdown_in_flight(void **state)
{
	struct gopts o = {0};
	struct guest *g = g_new(&o);
	struct bks_loop *loop = g->loop;
	struct bks_chain *chain = g->chain;
	struct xfer x;

	(void)state;
	xfer_make(g, &x, 0, 2, 0, 7);
	xfer_pattern(&x, 4, false);
	assert_int_equal(bks_export_hold(g->exp, on_drained, NULL), 0);
	g_direct(g, BLKIF_OP_WRITE, 1, &x);
	g_direct(g, BLKIF_OP_READ, 2, &x);
	g_flush(g, 3);
	g_push(g);
	g_expect_none(g);
	/* The shutdown ends the hold: the three go on and are answered. */
	bks_export_shutdown(g->exp, on_done, g);
	for (int i = 0; i < WAIT_ROUNDS && !g->done; i++)
		bks_loop_run_once(loop, 0);
	assert_int_equal(g->done, 1);
	g_expect(g, 1, BLKIF_OP_WRITE, BLKIF_RSP_OKAY);
	g_expect(g, 2, BLKIF_OP_READ, BLKIF_RSP_OKAY);
	g_expect(g, 3, BLKIF_OP_FLUSH_DISKCACHE, BLKIF_RSP_OKAY);
	xfer_pattern(&x, 4, true);
	/* Nothing is taken after it. */
	g_flush(g, 4);
	g_push(g);
	g_expect_none(g);
	xfer_free(&x);
	bks_export_free(g->exp);
	free(g->sring);
	free(g->pool);
	free(g);
	bks_chain_close(chain);
	bks_loop_free(loop);
}

/*
 * The chain fails requests (error: below): the guest gets an error,
 * EOPNOTSUPP for a flush or discard the chain cannot do.
 */
static void test_chain_errors(void **state)
{
	struct gopts o = {
	    .chain = "error:ops=write+discard,errno=EOPNOTSUPP|ram:1M"};
	struct guest *g = g_new(&o);
	struct xfer x;

	(void)state;
	xfer_make(g, &x, 0, 2, 0, 7);
	g_direct(g, BLKIF_OP_WRITE, 1, &x);
	g_discard(g, 2, 0, 8);
	g_direct(g, BLKIF_OP_READ, 3, &x);
	g_push(g);
	g_expect(g, 1, BLKIF_OP_WRITE, BLKIF_RSP_ERROR);
	g_expect(g, 2, BLKIF_OP_DISCARD, BLKIF_RSP_EOPNOTSUPP);
	g_expect(g, 3, BLKIF_OP_READ, BLKIF_RSP_OKAY);
	assert_non_null(strstr(bks_blkif_last_error(g->rg), "request 2: "));
	xfer_free(&x);
	g_free(g);
}

/*
 * Completions later than submission (hold: keeps every request until
 * released), and the framework's discard split (rec: limits discards to
 * 8K and records what reaches it): the export submits one discard.
 */
static void test_async_and_split(void **state)
{
	struct gopts o = {.chain = "rec:max=8K|hold:|ram:8M",
			  .extra = fw_test_drivers};
	struct guest *g = g_new(&o);
	struct bks_layer *hold = bks_chain_find(g->chain, "hold");
	struct rec_state *rec =
	    bks_layer_state(bks_chain_find(g->chain, "rec"));
	struct xfer w, r;

	(void)state;
	xfer_make(g, &w, 16, 2, 0, 7);
	xfer_make(g, &r, 16, 2, 0, 7);
	xfer_pattern(&w, 3, false);
	g_direct(g, BLKIF_OP_WRITE, 1, &w);
	g_discard(g, 2, 128, 64); /* 32K: four pieces of 8K */
	g_direct(g, BLKIF_OP_READ, 3, &r);
	g_push(g);
	g_expect_none(g);
	/* The pieces go down one after the other: release until done. */
	for (int i = 0; i < 8 && g_rsp_prod(g) - g->rsp_cons < 3; i++) {
		hold_release(hold, 16);
		g_run(g);
	}
	assert_int_equal(rec->n, 4);
	for (unsigned int i = 0; i < 4; i++) {
		assert_int_equal(rec->pieces[i].offset, 128 * 512 + 8192 * i);
		assert_int_equal(rec->pieces[i].len, 8192);
	}
	/* Answered as they completed: the discard's last piece last. */
	g_expect(g, 1, BLKIF_OP_WRITE, BLKIF_RSP_OKAY);
	g_expect(g, 3, BLKIF_OP_READ, BLKIF_RSP_OKAY);
	g_expect(g, 2, BLKIF_OP_DISCARD, BLKIF_RSP_OKAY);
	xfer_pattern(&r, 3, true);
	/* Shutdown waits for what a disk still holds, then answers it. */
	g_flush(g, 4);
	g_push(g);
	bks_export_shutdown(g->exp, on_done, g);
	g_run(g);
	assert_int_equal(g->done, 0);
	g_expect_none(g);
	hold_release(hold, 1);
	g_run(g);
	assert_int_equal(g->done, 1);
	g_expect(g, 4, BLKIF_OP_FLUSH_DISKCACHE, BLKIF_RSP_OKAY);
	g->done = 0; /* g_free() shuts down again: only done is replaced */
	xfer_free(&w);
	xfer_free(&r);
	g_free(g);
}

/* A filter whose chain cannot do FUA. */
static int nofua_info(void *state, struct bks_layer *self,
		      struct bks_info *info)
{
	(void)state;
	(void)self;
	info->can_fua = false;
	return 0;
}

static const struct bks_driver nofua_driver = {
    .name = "nofua",
    .kind = BKS_FILTER,
    .usage = "nofua:",
    .open = hold_open, /* fw-drivers.h's: opens nothing */
    .info = nofua_info,
};

static const struct bks_driver *const nofua_drivers[] = {&nofua_driver, NULL};

/* A flush with data on a chain without FUA: flush, write, flush. */
static void test_flush_data_no_fua(void **state)
{
	struct gopts o = {.chain = "nofua:|ram:8M", .extra = nofua_drivers};
	struct guest *g = g_new(&o);
	struct bks_layer_stats ls;
	struct xfer w;

	(void)state;
	xfer_make(g, &w, 8, 3, 2, 5);
	xfer_pattern(&w, 6, false);
	g_direct(g, BLKIF_OP_FLUSH_DISKCACHE, 1, &w);
	g_push(g);
	g_expect(g, 1, BLKIF_OP_FLUSH_DISKCACHE, BLKIF_RSP_OKAY);
	bks_layer_get_stats(bks_chain_sink(g->chain), &ls);
	assert_int_equal(ls.op[BKS_OP_FLUSH].ops, 2);
	assert_int_equal(ls.op[BKS_OP_WRITE].ops, 1);
	g_read_check(g, 8, 3, 2, 5, 2, 6);
	xfer_free(&w);
	g_free(g);
}

/* Missing ops and limits are refused at creation. */
static void test_config(void **state)
{
	struct bks_blkif_grant_ops none = {.name = "none",
					   .notify = mem_notify};
	struct gopts o = {0};
	struct guest *g = g_new(&o);
	struct bks_blkif_config cfg = {
	    .loop = g->loop,
	    .chain = g->chain,
	    .sring = g->sring,
	    .ops = &none,
	};
	struct bks_error err = {0};
	struct bks_blkif *rg = NULL;

	(void)state;
	assert_int_equal(bks_blkif_new(&rg, &cfg, &err), -EINVAL);
	assert_non_null(strstr(err.msg, "copy or map"));
	cfg.ops = &mem_ops;
	cfg.max_indirect = BKS_BLKIF_INDIRECT_LIMIT + 1;
	assert_int_equal(bks_blkif_new(&rg, &cfg, &err), -EINVAL);
	cfg.max_indirect = 0;
	cfg.sring = NULL;
	assert_int_equal(bks_blkif_new(&rg, &cfg, &err), -EINVAL);
	assert_null(rg);
	g_free(g);
}

int main(void)
{
	/* The layouts, for the tests run once per layout (prestate). */
	static enum bks_blkif_abi x86_64 = BKS_BLKIF_ABI_X86_64;
	static enum bks_blkif_abi x86_32 = BKS_BLKIF_ABI_X86_32;
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_layout),
	    {.name = "test_rw_x86_64",
	     .test_func = test_rw,
	     .initial_state = &x86_64},
	    {.name = "test_rw_x86_32",
	     .test_func = test_rw,
	     .initial_state = &x86_32},
	    cmocka_unit_test(test_flush_data),
	    cmocka_unit_test(test_discard),
	    cmocka_unit_test(test_multi_page),
	    cmocka_unit_test(test_map_fallback),
	    {.name = "test_hostile_x86_64",
	     .test_func = test_hostile,
	     .initial_state = &x86_64},
	    {.name = "test_hostile_x86_32",
	     .test_func = test_hostile,
	     .initial_state = &x86_32},
	    cmocka_unit_test(test_read_only),
	    cmocka_unit_test(test_guest_changes_after_copy),
	    cmocka_unit_test(test_bad_prod),
	    cmocka_unit_test(test_break_in_flight),
	    cmocka_unit_test(test_prod_back),
	    cmocka_unit_test(test_notify_wanted),
	    cmocka_unit_test(test_fair_intake),
	    cmocka_unit_test(test_prod_behind),
	    cmocka_unit_test(test_big_buffer_wait),
	    cmocka_unit_test(test_shutdown_in_flight),
	    cmocka_unit_test(test_chain_errors),
	    cmocka_unit_test(test_async_and_split),
	    cmocka_unit_test(test_flush_data_no_fua),
	    cmocka_unit_test(test_config),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
