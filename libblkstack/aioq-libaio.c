/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The file queue's libaio engine (aioq-internal.h): one io_context of the
 * queue's depth, an iocb per slot, completions signalled on an eventfd
 * (io_set_eventfd) watched by the loop and reaped with io_getevents().
 */
#include <errno.h>
#include <libaio.h>
#include <stdlib.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#include "aioq-internal.h"

struct libaio_eng {
	io_context_t ctx;
	int efd;
	struct iocb *iocb;   /* one per slot, iocb.data = the slot */
	struct iocb **iocbs; /* one batch for io_submit() */
	struct io_event *events;
};

static void on_eventfd(struct bks_watch *w, uint32_t events)
{
	struct bks_aioq *q = w->opaque;
	struct libaio_eng *e = q->eng;
	struct timespec zero = {0, 0};
	uint64_t count;
	(void)events;

	/* Reset the counter first: completions arriving after this make
	 * the eventfd readable again and bring us back. */
	if (read(e->efd, &count, sizeof(count)) < 0 && errno != EAGAIN)
		return;
	aioq_enter(q);
	for (;;) {
		int n = io_getevents(e->ctx, 0, q->depth, e->events, &zero);

		if (n <= 0)
			break;
		for (int i = 0; i < n; i++)
			aioq_slot_done(q, e->events[i].obj->data,
				       (long)e->events[i].res);
	}
	aioq_reaped(q);
}

static void prep(struct libaio_eng *e, struct aioq_slot *s)
{
	struct iocb *cb = &e->iocb[s->idx];
	const struct iovec *iov = aioq_slot_iov(s);
	long long off = (long long)s->offset;

	switch (s->op) {
	case BKS_OP_READ:
		io_prep_preadv(cb, s->fd, iov, s->iovcnt, off);
		break;
	case BKS_OP_WRITE:
		io_prep_pwritev2(cb, s->fd, iov, s->iovcnt, off,
				 s->dsync ? RWF_DSYNC : 0);
		break;
	default: /* BKS_OP_FLUSH; bks_aioq_queue() let nothing else in */
		io_prep_fdsync(cb, s->fd);
		break;
	}
	cb->data = s;
	io_set_eventfd(cb, e->efd);
}

/* io_submit() has the semantics aioq_engine.submit asks for. */
static int libaio_submit(struct bks_aioq *q, struct aioq_slot **batch, int n)
{
	struct libaio_eng *e = q->eng;

	if (n == 0)
		return 0;
	for (int i = 0; i < n; i++) {
		prep(e, batch[i]);
		e->iocbs[i] = &e->iocb[batch[i]->idx];
	}
	return io_submit(e->ctx, n, e->iocbs);
}

static int libaio_setup(struct bks_aioq *q, struct bks_error *err)
{
	struct libaio_eng *e = calloc(1, sizeof(*e));
	int rc;

	if (!e)
		return bks_error_set(err, ENOMEM, "libaio queue");
	q->eng = e;
	e->efd = -1;
	e->iocb = calloc(q->depth, sizeof(*e->iocb));
	e->iocbs = calloc(q->depth, sizeof(*e->iocbs));
	e->events = calloc(q->depth, sizeof(*e->events));
	if (!e->iocb || !e->iocbs || !e->events)
		return bks_error_set(err, ENOMEM, "libaio queue of depth %u",
				     q->depth);
	rc = io_setup((int)q->depth, &e->ctx);
	if (rc < 0) {
		e->ctx = 0;
		if (rc == -EAGAIN)
			return bks_error_setmsg(
			    err, EAGAIN,
			    "libaio: io_setup(%u): out of aio contexts: raise "
			    "/proc/sys/fs/aio-max-nr (sysctl fs.aio-max-nr)",
			    q->depth);
		return bks_error_set(err, -rc, "libaio: io_setup(%u)",
				     q->depth);
	}
	e->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	if (e->efd < 0)
		return bks_error_set(err, errno, "libaio queue: eventfd");
	rc = bks_watch_add(q->loop, &q->watch, e->efd, EPOLLIN, on_eventfd, q);
	if (rc < 0)
		return bks_error_set(err, -rc, "libaio queue: watch eventfd");
	return 0;
}

static void libaio_destroy(struct bks_aioq *q)
{
	struct libaio_eng *e = q->eng;

	if (!e)
		return;
	if (e->ctx)
		io_destroy(e->ctx);
	if (e->efd >= 0)
		close(e->efd);
	free(e->iocb);
	free(e->iocbs);
	free(e->events);
	free(e);
	q->eng = NULL;
}

const struct aioq_engine bks_aioq_engine_libaio = {
    .id = BKS_IO_ENGINE_LIBAIO,
    .setup = libaio_setup,
    .destroy = libaio_destroy,
    .submit = libaio_submit,
};
