/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * A FIFO of requests a layer has taken and not yet issued, linked
 * through req->owner_next (driver.h: the field is the taking layer's
 * while it holds the request).  Header-only; zero-initialised is empty.
 */
#ifndef BLKSTACK_REQ_QUEUE_H
#define BLKSTACK_REQ_QUEUE_H

#include "blkstack/driver.h"

struct bks_req_queue {
	struct bks_req *head, *tail;
};

/* Append req. */
static inline void bks_req_queue_push(struct bks_req_queue *q,
				      struct bks_req *req)
{
	req->owner_next = NULL;
	if (q->tail)
		q->tail->owner_next = req;
	else
		q->head = req;
	q->tail = req;
}

/* Put req back in front (it goes out first). */
static inline void bks_req_queue_push_front(struct bks_req_queue *q,
					    struct bks_req *req)
{
	req->owner_next = q->head;
	q->head = req;
	if (!q->tail)
		q->tail = req;
}

/* The first request, removed, or NULL. */
static inline struct bks_req *bks_req_queue_pop(struct bks_req_queue *q)
{
	struct bks_req *req = q->head;

	if (req) {
		q->head = req->owner_next;
		if (!q->head)
			q->tail = NULL;
		req->owner_next = NULL;
	}
	return req;
}

/* How many requests wait (for stats: it walks the list). */
static inline unsigned int bks_req_queue_len(const struct bks_req_queue *q)
{
	unsigned int n = 0;

	for (const struct bks_req *r = q->head; r; r = r->owner_next)
		n++;
	return n;
}

#endif /* BLKSTACK_REQ_QUEUE_H */
