/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The qcow2: driver's own I/O: sub-requests with waiting, the metadata
 * writer, and the metadata cache (see qcow2-int.h).
 *
 * The cache holds whole clusters (L2 tables and refcount blocks) in a
 * fixed number of slots allocated at open, found by host offset through a
 * hash table, evicted least recently used.  It is write-through: a change
 * is written (only the blocks changed) before anything that depends on it
 * is issued, so a slot is never dirty when nobody is writing it, and an
 * unpinned valid slot can be dropped at any time.  A slot is pinned while
 * its metadata writer has a write in flight or queued, and while a new
 * table is being linked (CREATING).
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "qcow2-int.h"

void q2_wlist_add(struct q2_wlist *l, struct q2_wait *w)
{
	w->next = NULL;
	if (l->tail)
		l->tail->next = w;
	else
		l->head = w;
	l->tail = w;
}

void q2_wlist_wake(struct q2_wlist *l, int result)
{
	struct q2_wait *w = l->head;

	l->head = l->tail = NULL;
	while (w) {
		struct q2_wait *next = w->next;

		w->next = NULL;
		w->fn(w, result);
		w = next;
	}
}

/* ---- sub-requests -------------------------------------------------------- */

struct bks_req *q2_sub_get(struct q2 *s, struct q2_wait *w)
{
	struct bks_req *sub = bks_subreq_get(s->self);

	if (!sub) {
		s->st.sub_waits++;
		q2_wlist_add(&s->sub_waiters, w);
	}
	return sub;
}

void q2_sub_put(struct q2 *s, struct bks_req *sub)
{
	bks_subreq_put(s->self, sub);
	/* Every waiter tries again (one may wait for something else now);
	 * those that find none queue again. */
	q2_wlist_wake(&s->sub_waiters, 0);
}

/* ---- the metadata writer ------------------------------------------------- */

static void mw_start(struct q2_mw *mw);
static void mw_sub_ready(struct q2_wait *w, int result);

void q2_mw_init(struct q2 *s, struct q2_mw *mw, unsigned char *buf,
		uint64_t disk_off, uint32_t len, struct q2_slot *slot)
{
	memset(mw, 0, sizeof(*mw));
	mw->s = s;
	mw->buf = buf;
	mw->disk_off = disk_off;
	mw->len = len;
	mw->slot = slot;
	mw->lo = UINT32_MAX;
	mw->hi = 0;
	mw->subw.fn = mw_sub_ready;
}

static void mw_done(struct bks_req *sub, int result)
{
	struct q2_sub *d = bks_subreq_data(sub);
	struct q2_mw *mw = d->owner;
	struct q2 *s = mw->s;
	struct q2_wlist cur = mw->cur;

	q2_sub_put(s, sub);
	mw->cur.head = mw->cur.tail = NULL;
	mw->writing = false;
	if (mw->next.head)
		mw_start(mw);
	else if (mw->slot)
		q2_slot_unpin(mw->slot);
	q2_wlist_wake(&cur, result);
}

static void mw_sub_ready(struct q2_wait *w, int result)
{
	struct q2_mw *mw =
	    (struct q2_mw *)((char *)w - offsetof(struct q2_mw, subw));

	(void)result;
	mw->writing = false;
	mw_start(mw);
}

/* Issue the next write: the blocks changed since the last one. */
static void mw_start(struct q2_mw *mw)
{
	struct q2 *s = mw->s;
	struct bks_req *sub;
	struct q2_sub *d;
	uint32_t lo, hi;

	mw->writing = true; /* also while waiting for a sub-request */
	sub = q2_sub_get(s, &mw->subw);
	if (!sub)
		return;
	lo = mw->lo & ~(s->block_size - 1);
	hi = (mw->hi + s->block_size - 1) & ~(s->block_size - 1);
	if (hi > mw->len)
		hi = mw->len;
	mw->lo = UINT32_MAX;
	mw->hi = 0;
	mw->cur = mw->next;
	mw->next.head = mw->next.tail = NULL;
	d = bks_subreq_data(sub);
	d->owner = mw;
	d->iov[0].iov_base = mw->buf + lo;
	d->iov[0].iov_len = hi - lo;
	sub->op = BKS_OP_WRITE;
	sub->offset = mw->disk_off + lo;
	sub->len = hi - lo;
	sub->iov = d->iov;
	sub->iovcnt = 1;
	sub->done = mw_done;
	s->st.meta_writes++;
	bks_aioq_queue(s->q, s->img.fd, sub);
}

void q2_mw_write(struct q2_mw *mw, uint32_t off, uint32_t len,
		 struct q2_wait *w)
{
	if (off < mw->lo)
		mw->lo = off;
	if (off + len > mw->hi)
		mw->hi = off + len;
	q2_wlist_add(&mw->next, w);
	if (mw->writing)
		return;
	if (mw->slot)
		q2_slot_pin(mw->slot);
	mw_start(mw);
}

/* ---- the cache ----------------------------------------------------------- */

int q2_cache_init(struct q2 *s, uint64_t bytes, struct bks_error *err)
{
	uint64_t cs = s->g.cluster_size;
	uint64_t n = (bytes ? bytes : Q2_CACHE_DEFAULT) / cs;
	unsigned int hsize = 1;

	if (n < Q2_CACHE_MIN_SLOTS)
		n = Q2_CACHE_MIN_SLOTS;
	if (n > 65536)
		n = 65536;
	s->nslots = (unsigned int)n;
	while (hsize < 2 * s->nslots)
		hsize <<= 1;
	s->hash_mask = hsize - 1;
	s->slots = calloc(s->nslots, sizeof(*s->slots));
	s->hash = malloc(hsize * sizeof(*s->hash));
	if (!s->slots || !s->hash ||
	    posix_memalign((void **)&s->slot_mem, 4096, s->nslots * cs) != 0) {
		s->slot_mem = NULL;
		return bks_error_set(err, ENOMEM,
				     "%s: metadata cache of %u clusters",
				     s->path, s->nslots);
	}
	for (unsigned int i = 0; i < hsize; i++)
		s->hash[i] = -1;
	for (unsigned int i = 0; i < s->nslots; i++) {
		s->slots[i].buf = s->slot_mem + i * cs;
		s->slots[i].hnext = -1;
		s->slots[i].s = s;
	}
	return 0;
}

void q2_cache_free(struct q2 *s)
{
	free(s->slots);
	free(s->hash);
	free(s->slot_mem);
	s->slots = NULL;
	s->hash = NULL;
	s->slot_mem = NULL;
}

void q2_cache_drop_all(struct q2 *s)
{
	for (unsigned int i = 0; i <= s->hash_mask; i++)
		s->hash[i] = -1;
	for (unsigned int i = 0; i < s->nslots; i++) {
		s->slots[i].state = Q2_SLOT_FREE;
		s->slots[i].hnext = -1;
		s->slots[i].pins = 0;
	}
}

static unsigned int hash_of(const struct q2 *s, uint64_t off)
{
	uint64_t x = (off >> s->g.cluster_bits) * 0x9e3779b97f4a7c15ull;

	return (unsigned int)(x >> 32) & s->hash_mask;
}

static struct q2_slot *find(struct q2 *s, uint64_t off)
{
	for (int32_t i = s->hash[hash_of(s, off)]; i >= 0;
	     i = s->slots[i].hnext)
		if (s->slots[i].state != Q2_SLOT_FREE && s->slots[i].off == off)
			return &s->slots[i];
	return NULL;
}

static void unhash(struct q2 *s, struct q2_slot *slot)
{
	int32_t *p = &s->hash[hash_of(s, slot->off)];
	int32_t me = (int32_t)(slot - s->slots);

	while (*p >= 0 && *p != me)
		p = &s->slots[*p].hnext;
	if (*p == me)
		*p = slot->hnext;
	slot->hnext = -1;
}

static void rehash(struct q2 *s, struct q2_slot *slot, uint64_t off)
{
	unsigned int h = hash_of(s, off);

	slot->off = off;
	slot->hnext = s->hash[h];
	s->hash[h] = (int32_t)(slot - s->slots);
}

/* A slot to reuse: free, or the least recently used valid unpinned. */
static struct q2_slot *victim(struct q2 *s)
{
	struct q2_slot *best = NULL;

	for (unsigned int i = 0; i < s->nslots; i++) {
		struct q2_slot *sl = &s->slots[i];

		if (sl->state == Q2_SLOT_FREE)
			return sl;
		if (sl->state == Q2_SLOT_VALID && sl->pins == 0 &&
		    (!best || sl->lru < best->lru))
			best = sl;
	}
	if (best) {
		s->st.cache_evictions++;
		unhash(s, best);
		best->state = Q2_SLOT_FREE;
	}
	return best;
}

static void load_start(struct q2_slot *slot);
static void load_sub_ready(struct q2_wait *w, int result);

static void load_finish(struct q2_slot *slot, int result)
{
	struct q2 *s = slot->s;

	slot->pins--;
	if (result < 0) {
		unhash(s, slot);
		slot->state = Q2_SLOT_FREE;
	} else {
		slot->state = Q2_SLOT_VALID;
	}
	q2_wlist_wake(&slot->waiters, result);
	if (slot->state == Q2_SLOT_FREE || slot->pins == 0)
		q2_wlist_wake(&s->slot_waiters, 0);
}

static void load_done(struct bks_req *sub, int result)
{
	struct q2_sub *d = bks_subreq_data(sub);
	struct q2_slot *slot = d->owner;

	q2_sub_put(slot->s, sub);
	load_finish(slot, result);
}

static void load_sub_ready(struct q2_wait *w, int result)
{
	struct q2_slot *slot =
	    (struct q2_slot *)((char *)w - offsetof(struct q2_slot, subw));

	(void)result;
	load_start(slot);
}

static void load_start(struct q2_slot *slot)
{
	struct q2 *s = slot->s;
	uint64_t len = s->g.cluster_size;
	struct bks_req *sub;
	struct q2_sub *d;

	/* The file may end inside the cluster: the rest reads as zeroes. */
	if (slot->off + len > s->read_end)
		len = slot->off < s->read_end ? s->read_end - slot->off : 0;
	memset(slot->buf + len, 0, s->g.cluster_size - len);
	if (len == 0) {
		load_finish(slot, 0);
		return;
	}
	sub = q2_sub_get(s, &slot->subw);
	if (!sub)
		return;
	d = bks_subreq_data(sub);
	d->owner = slot;
	d->iov[0].iov_base = slot->buf;
	d->iov[0].iov_len = len;
	sub->op = BKS_OP_READ;
	sub->offset = slot->off;
	sub->len = len;
	sub->iov = d->iov;
	sub->iovcnt = 1;
	sub->done = load_done;
	bks_aioq_queue(s->q, s->img.fd, sub);
}

int q2_cache_get(struct q2 *s, uint64_t off, struct q2_wait *w,
		 struct q2_slot **out)
{
	struct q2_slot *slot = find(s, off);

	*out = NULL;
	if (slot && slot->state == Q2_SLOT_VALID) {
		s->st.cache_hits++;
		slot->lru = ++s->lru_clock;
		*out = slot;
		return 0;
	}
	if (slot) { /* loading or being created */
		q2_wlist_add(&slot->waiters, w);
		return 1;
	}
	/* The cluster must lie in the file (a bad entry never reads past). */
	if (off >= s->file_size)
		return -EIO;
	slot = victim(s);
	if (!slot) {
		s->st.cache_waits++;
		q2_wlist_add(&s->slot_waiters, w);
		return 1;
	}
	s->st.cache_misses++;
	slot->state = Q2_SLOT_LOADING;
	slot->pins = 1;
	slot->lru = ++s->lru_clock;
	rehash(s, slot, off);
	q2_mw_init(s, &slot->mw, slot->buf, off, (uint32_t)s->g.cluster_size,
		   slot);
	q2_wlist_add(&slot->waiters, w);
	slot->subw.fn = load_sub_ready;
	load_start(slot);
	return 1;
}

int q2_cache_create(struct q2 *s, uint64_t off, struct q2_wait *w,
		    struct q2_slot **out)
{
	struct q2_slot *slot = victim(s);

	*out = NULL;
	if (!slot) {
		s->st.cache_waits++;
		q2_wlist_add(&s->slot_waiters, w);
		return 1;
	}
	slot->state = Q2_SLOT_CREATING;
	slot->pins = 1;
	slot->lru = ++s->lru_clock;
	rehash(s, slot, off);
	q2_mw_init(s, &slot->mw, slot->buf, off, (uint32_t)s->g.cluster_size,
		   slot);
	memset(slot->buf, 0, s->g.cluster_size);
	*out = slot;
	return 0;
}

void q2_cache_created(struct q2 *s, struct q2_slot *slot, int result)
{
	if (result < 0) {
		unhash(s, slot);
		slot->state = Q2_SLOT_FREE;
	} else {
		slot->state = Q2_SLOT_VALID;
	}
	q2_wlist_wake(&slot->waiters, result);
	q2_slot_unpin(slot);
}

void q2_slot_pin(struct q2_slot *slot)
{
	slot->pins++;
}

void q2_slot_unpin(struct q2_slot *slot)
{
	if (--slot->pins == 0)
		q2_wlist_wake(&slot->s->slot_waiters, 0);
}
