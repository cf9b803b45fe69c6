/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The blkif ring export's grant ops over plain memory, for the unit tests
 * only: a table of fake grant references, each naming one 4096-byte page
 * the test's "guest" owns; a reference not in the table (0, a revoked
 * one, one past the end) fails with GNTST_bad_gntref, as Xen's grant copy
 * does.  Map hands out a copy of the pages and writes them back at unmap
 * (enough for the core, which maps and unmaps within one call).
 * Header-only (static functions), like unit-util.h.
 */
#ifndef BLKSTACK_UNIT_BLKIF_MEM_H
#define BLKSTACK_UNIT_BLKIF_MEM_H

#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "bks-blkif.h"

#define MEM_GREFS 8192u

struct blkif_mem {
	unsigned char *page[MEM_GREFS]; /* NULL: no such grant */
	uint32_t next;			/* the next free reference */
	/* Behaviour. */
	bool copy_unsupported; /* copy says -EOPNOTSUPP (fallback test) */
	/* Called after each copy batch: a guest racing the backend. */
	void (*after_copy)(struct blkif_mem *m, void *arg);
	void *hook_arg;
	/* Counters. */
	unsigned int copy_calls, copy_segs, map_calls, notifies;
	/* The one mapping open (the core unmaps before it returns). */
	unsigned char *map_addr;
	unsigned int map_n;
	bool map_writable;
	uint32_t map_grefs[MEM_GREFS];
};

static inline void mem_init(struct blkif_mem *m)
{
	memset(m, 0, sizeof(*m));
	m->next = 1; /* 0 is never granted */
}

/* Grant the page p (4096 bytes, the test's); returns its reference. */
static inline uint32_t mem_grant(struct blkif_mem *m, unsigned char *p)
{
	if (m->next >= MEM_GREFS)
		return 0;
	m->page[m->next] = p;
	return m->next++;
}

static inline void mem_revoke(struct blkif_mem *m, uint32_t gref)
{
	if (gref < MEM_GREFS)
		m->page[gref] = NULL;
}

static inline unsigned char *mem_page(const struct blkif_mem *m, uint32_t gref)
{
	return gref < MEM_GREFS ? m->page[gref] : NULL;
}

static inline int mem_copy(void *state, struct bks_blkif_copy *c,
			   unsigned int n, bool to_guest)
{
	struct blkif_mem *m = state;

	m->copy_calls++;
	if (m->copy_unsupported)
		return -EOPNOTSUPP;
	for (unsigned int i = 0; i < n; i++) {
		unsigned char *p = mem_page(m, c[i].gref);

		m->copy_segs++;
		if (!p ||
		    (size_t)c[i].offset + c[i].len > BKS_BLKIF_PAGE_SIZE) {
			c[i].status = BKS_GNTST_BAD_GNTREF;
			continue;
		}
		if (to_guest)
			memcpy(p + c[i].offset, c[i].buf, c[i].len);
		else
			memcpy(c[i].buf, p + c[i].offset, c[i].len);
		c[i].status = BKS_GNTST_OKAY;
	}
	if (m->after_copy)
		m->after_copy(m, m->hook_arg);
	return 0;
}

static inline int mem_map(void *state, const uint32_t *grefs, unsigned int n,
			  bool writable, void **addr)
{
	struct blkif_mem *m = state;

	m->map_calls++;
	if (m->map_addr || n == 0 || n > MEM_GREFS)
		return -EBUSY;
	for (unsigned int i = 0; i < n; i++)
		if (!mem_page(m, grefs[i]))
			return -EINVAL; /* a bad grant fails the map */
	m->map_addr = malloc((size_t)n * BKS_BLKIF_PAGE_SIZE);
	if (!m->map_addr)
		return -ENOMEM;
	for (unsigned int i = 0; i < n; i++) {
		memcpy(m->map_addr + (size_t)i * BKS_BLKIF_PAGE_SIZE,
		       mem_page(m, grefs[i]), BKS_BLKIF_PAGE_SIZE);
		m->map_grefs[i] = grefs[i];
	}
	m->map_n = n;
	m->map_writable = writable;
	*addr = m->map_addr;
	return 0;
}

static inline int mem_unmap(void *state, void *addr, unsigned int n)
{
	struct blkif_mem *m = state;

	if (addr != m->map_addr || n != m->map_n)
		return -EINVAL;
	for (unsigned int i = 0; m->map_writable && i < n; i++)
		memcpy(mem_page(m, m->map_grefs[i]),
		       m->map_addr + (size_t)i * BKS_BLKIF_PAGE_SIZE,
		       BKS_BLKIF_PAGE_SIZE);
	free(m->map_addr);
	m->map_addr = NULL;
	m->map_n = 0;
	return 0;
}

static inline int mem_notify(void *state)
{
	((struct blkif_mem *)state)->notifies++;
	return 0;
}

/* Copy, with map as the fallback (the real ops' shape). */
static const struct bks_blkif_grant_ops mem_ops = {
    .name = "mem",
    .copy = mem_copy,
    .map = mem_map,
    .unmap = mem_unmap,
    .notify = mem_notify,
};

/* Map only: a host without grant copy. */
static const struct bks_blkif_grant_ops mem_map_ops = {
    .name = "mem-map",
    .map = mem_map,
    .unmap = mem_unmap,
    .notify = mem_notify,
};

#endif /* BLKSTACK_UNIT_BLKIF_MEM_H */
