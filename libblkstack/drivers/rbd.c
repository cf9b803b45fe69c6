/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * rbd:POOL/IMAGE[@SNAP][,options] -- a sink on a Ceph RBD image, through
 * librbd's asynchronous C API, in the worker's loop (rbd-target.h has
 * the syntax).
 *
 *   rbd:rbd/vm1
 *   rbd:vms/vm1@base,id=xen,conf=/etc/ceph/ceph.conf,timeout=30
 *
 * One cluster connection and one open image per layer, made at open
 * (blocking, bounded by timeout=: client_mount_timeout for the connect,
 * rados_mon_op_timeout and rados_osd_op_timeout for what follows).
 * librados starts its threads there, with every signal blocked, so that
 * the worker's signalfd keeps getting the worker's signals.
 *
 * Requests go out with rbd_aio_readv/writev/flush/discard/write_zeroes.
 * librbd completes them on its own threads: the callback only puts the
 * request's slot on a list and writes an eventfd, under a mutex; the
 * eventfd is a watch of the worker's loop, where the results are read
 * and the requests completed.  Nothing blocks the loop.
 *
 * A snapshot (or a read-only open) is opened with rbd_open_read_only():
 * the layer is read-only.  FUA is a flush after the write, before the
 * completion.  Write zeroes with NO_HOLE asks for a thick-provisioned
 * zeroed extent.  When the OSDs are away, requests wait in librados (the
 * guest sees latency) for up to timeout= seconds, then fail with the
 * error librados gives (ETIMEDOUT).
 *
 * Claims (one image, one VM, across hosts).  A read-write open claims the
 * image for the VM vm= names: a shared rados lock named "blkstack.vm" on
 * the image's header object (rbd_header.ID), tagged with the VM path, with
 * cookie "blkstack.GID" (GID: this client's global id, rados_get_instance_id;
 * the locker is client.GID).  The OSD takes a shared lock only if every
 * holder has the same tag, so two workers of one VM (a migration's source
 * and destination, on two hosts) hold it together, and a worker of another
 * VM is refused atomically, whatever the order.  Without vm= the claim is
 * an exclusive lock of the same name: nobody shares with a disk that
 * names no VM.  A holder that no longer watches the image (rbd_watchers_list
 * has no watcher with its GID: a killed worker, once the OSD's watch
 * timeout, osd_client_watch_timeout, has dropped its watch) is stale: its
 * lock is broken (rados_break_lock) and the claim tried again, three times
 * at most.  A live holder of another VM fails the open with EBUSY, naming
 * pool/image, the holder's VM, client and address.  A clean close releases
 * the claim after rbd_close() has flushed.  These are blocking calls,
 * bounded by rados_osd_op_timeout, at open and close only, which block
 * anyway; nothing of the claim runs in the loop.  Read-only opens (snapshots)
 * claim nothing and are never refused.  Limits: a client that is not
 * blkstack (rbd-nbd, krbd, qemu) takes no claim and is not seen; a live
 * holder whose watch is being re-established in the instant of the check
 * looks stale.
 *
 * The exclusive-lock feature (rbd create's default) needs nothing here:
 * librbd acquires the lock at the first write and, when another client
 * asks for it (its own first write), releases it once its in-flight
 * requests are done; a migration's destination takes it from the source
 * that way (tests/ceph/migrate-rbd.bats proves it).  The stats op's
 * "client" is this layer's GID (client.GID in "rbd lock ls" and "rbd
 * status").
 *
 * Block status is the image's allocation: rbd_diff_iterate2() from the
 * beginning of time (no from-snapshot) over the asked range, with the
 * parent included (a clone's parent data is data), on the open view (the
 * head, or the snapshot of IMAGE@SNAP).  What it reports as existing is
 * data, everything else a hole that reads as zeroes (HOLE|ZERO), depth 1
 * (the layer has no parent of blkstack's).  rbd_diff_iterate2() is
 * synchronous (it lists objects or reads the object map, round trips to
 * the OSDs): it runs on the layer's helper threads (offload.h), at most
 * RBD_BS_JOBS at once, more wait in arrival order, and completes from the
 * loop.  Exact extents (whole_object=0): see RBD_BS_WHOLE_OBJECT.
 */
#include <errno.h>
#include <pthread.h>
#include <rados/librados.h>
#include <rbd/librbd.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "blkstack/driver-module.h"
#include "blkstack/driver.h"
#include "blkstack/offload.h"
#include "blkstack/rbd-target.h"
#include "blkstack/req-queue.h"

/* Requests in flight at once; more wait in the queue. */
#define RBD_SLOTS 256
/* Largest read or write. */
#define RBD_MAX_IO (32u << 20)
/* The claim's rados lock on the header object. */
#define CLAIM_LOCK "blkstack.vm"
/* Claim attempts, each after breaking stale holders. */
#define CLAIM_TRIES 3
/* Most watchers and lockers looked at. */
#define CLAIM_MAX_WATCHERS 64
#define CLAIM_LIST_BYTES   4096
/*
 * Block status: helper threads, jobs (block status requests running at
 * once; more wait), and the data ranges one diff iteration may collect
 * (more: see bs_run()).
 */
#define RBD_BS_THREADS 2u
#define RBD_BS_JOBS    4u
#define RBD_BS_RANGES  4096u
/* The most one block status looks at: its answer may cover less. */
#define RBD_BS_WINDOW (1ull << 30)
/* The first step of a block status: two objects of the default size. */
#define RBD_BS_STEP (8ull << 20)
/*
 * whole_object for rbd_diff_iterate2(): 0, exact extents.  1 reports
 * whole objects (4 MiB by default) from the object map, which is as
 * correct (data may be over-reported) but makes scattered data look like
 * all data, so a copy reads it all; 0 costs an object listing per object
 * that exists, measured in docs/ceph.txt ("Block status").
 */
#ifndef RBD_BS_WHOLE_OBJECT
#define RBD_BS_WHOLE_OBJECT 0
#endif

struct rbd_state;

/* A data range a diff iteration reported. */
struct rbd_range {
	uint64_t off, len;
};

/* A block status on a helper thread. */
struct rbd_bs_job {
	struct bks_offload_job job;
	struct rbd_state *s;
	struct bks_req *req;
	struct rbd_bs_job *next_free;
	/*
	 * The helper thread's: the part of the window asked now (the
	 * callback clips to it), the window's start and how far it is
	 * known, the ranges collected.
	 */
	uint64_t step_off, step_end, win_off, win_end;
	struct rbd_range *ranges;
	unsigned int nranges;
	bool overflow;
	pthread_mutex_t lock; /* in case librbd calls back from its threads */
};

/* A request in flight with librbd. */
struct rbd_slot {
	struct rbd_state *s;
	struct bks_req *req; /* NULL: free */
	rbd_completion_t c;
	bool flushing;	       /* the flush after a FUA write */
	struct rbd_slot *next; /* free list, or the done list */
};

struct rbd_state {
	struct bks_layer *self;
	struct bks_loop *loop;
	struct bks_rbd_target t;
	bool read_only;

	rados_t cluster;
	rados_ioctx_t io;
	rbd_image_t image;
	bool have_cluster, have_io, have_image;
	uint64_t size;

	/* The claim (see "Claims"). */
	uint64_t gid;
	char header[BKS_RBD_IMAGE_MAX + 32]; /* rbd_header.ID */
	char cookie[32];		     /* blkstack.GID */
	bool claimed;

	int efd;
	struct bks_watch watch;
	pthread_mutex_t lock; /* guards done */
	bool have_lock;
	/* Completed by librbd, oldest first (done_tail: the newest). */
	struct rbd_slot *done, **done_tail;

	struct rbd_slot *slots, *free_slots;
	unsigned int in_flight;
	/* Requests taken and not yet issued, FIFO through owner_next. */
	struct bks_req_queue wait;

	/* Block status (see the top): its pool, jobs and waiting requests. */
	struct bks_offload *off;
	struct rbd_bs_job *jobs, *free_jobs;
	unsigned int njobs_locked; /* jobs whose mutex is initialised */
	struct bks_req_queue bs_wait;

	/* Counters (the stats op). */
	uint64_t completed, errors, fua_flushes;
	uint64_t block_status, bs_in_flight;
	char last_error[512];
};

/* ---- librbd's side: its threads ------------------------------------------ */

/*
 * On a librados thread: hand the slot to the loop and nothing else.  The
 * eventfd is written under the lock, so that once the loop has taken
 * the slot (under the lock) this thread no longer touches the layer,
 * which may then complete the request and close.
 */
static void aio_done(rbd_completion_t c, void *arg)
{
	struct rbd_slot *sl = arg;
	struct rbd_state *s = sl->s;
	uint64_t one = 1;
	ssize_t n;

	(void)c;
	pthread_mutex_lock(&s->lock);
	sl->next = NULL;
	*s->done_tail = sl;
	s->done_tail = &sl->next;
	n = write(s->efd, &one, sizeof(one));
	pthread_mutex_unlock(&s->lock);
	(void)n; /* the counter cannot overflow: the loop reads it */
}

/* ---- the loop's side ----------------------------------------------------- */

static void note_error(struct rbd_state *s, const char *what, int e)
{
	snprintf(s->last_error, sizeof(s->last_error), "%s: %s", what,
		 strerror(e));
}

static void slot_put(struct rbd_state *s, struct rbd_slot *sl)
{
	sl->req = NULL;
	sl->next = s->free_slots;
	s->free_slots = sl;
	s->in_flight--;
}

/* Finish req in sl with result (0 or -errno). */
static void finish(struct rbd_state *s, struct rbd_slot *sl, int result)
{
	struct bks_req *req = sl->req;

	slot_put(s, sl);
	s->completed++;
	if (result < 0) {
		s->errors++;
		note_error(s, bks_op_name(req->op), -result);
	}
	bks_req_complete(req, result);
}

/*
 * Start sl's operation (or the flush after its FUA write) with librbd.
 * Returns 0 (a completion will come) or -errno (none will).
 */
static int start_op(struct rbd_state *s, struct rbd_slot *sl)
{
	struct bks_req *req = sl->req;
	int rc, zflags = 0;

	rc = rbd_aio_create_completion(sl, aio_done, &sl->c);
	if (rc < 0)
		return rc;
	if (sl->flushing) {
		rc = rbd_aio_flush(s->image, sl->c);
		goto out;
	}
	switch (req->op) {
	case BKS_OP_READ:
		rc = rbd_aio_readv(s->image, req->iov, req->iovcnt, req->offset,
				   sl->c);
		break;
	case BKS_OP_WRITE:
		rc = rbd_aio_writev(s->image, req->iov, req->iovcnt,
				    req->offset, sl->c);
		break;
	case BKS_OP_FLUSH:
		rc = rbd_aio_flush(s->image, sl->c);
		break;
	case BKS_OP_DISCARD:
		rc = rbd_aio_discard(s->image, req->offset, req->len, sl->c);
		break;
	case BKS_OP_WRITE_ZEROES:
		if (req->flags & BKS_REQ_NO_HOLE)
			zflags = RBD_WRITE_ZEROES_FLAG_THICK_PROVISION;
		rc = rbd_aio_write_zeroes(s->image, req->offset, req->len,
					  sl->c, zflags, 0);
		break;
	default:
		rc = -EOPNOTSUPP;
		break;
	}
out:
	if (rc < 0) {
		rbd_aio_release(sl->c);
		sl->c = NULL;
	}
	return rc;
}

/* Issue req in a free slot; a refusal by librbd completes it. */
static void issue(struct rbd_state *s, struct bks_req *req)
{
	struct rbd_slot *sl = s->free_slots;
	int rc;

	s->free_slots = sl->next;
	s->in_flight++;
	sl->req = req;
	sl->flushing = false;
	rc = start_op(s, sl);
	if (rc < 0)
		finish(s, sl, rc);
}

/* Issue what waits while slots are free. */
static void pump(struct rbd_state *s)
{
	while (s->wait.head && s->free_slots)
		issue(s, bks_req_queue_pop(&s->wait));
}

/* One slot librbd has completed. */
static void reap_one(struct rbd_state *s, struct rbd_slot *sl)
{
	struct bks_req *req = sl->req;
	ssize_t ret = rbd_aio_get_return_value(sl->c);
	int rc;

	rbd_aio_release(sl->c);
	sl->c = NULL;
	if (ret < 0) {
		finish(s, sl, (int)ret);
		return;
	}
	if (req->op == BKS_OP_READ && (uint64_t)ret != req->len) {
		finish(s, sl, -EIO);
		return;
	}
	if (req->op == BKS_OP_WRITE_ZEROES || req->op == BKS_OP_WRITE) {
		if ((req->flags & BKS_REQ_FUA) && !sl->flushing) {
			sl->flushing = true;
			s->fua_flushes++;
			rc = start_op(s, sl);
			if (rc < 0)
				finish(s, sl, rc);
			return;
		}
	}
	finish(s, sl, 0);
}

static void on_event(struct bks_watch *w, uint32_t events)
{
	struct rbd_state *s = w->opaque;
	struct rbd_slot *list;
	uint64_t count;
	ssize_t n;

	(void)events;
	n = read(s->efd, &count, sizeof(count));
	(void)n; /* EAGAIN: a completion already reaped */
	pthread_mutex_lock(&s->lock);
	list = s->done;
	s->done = NULL;
	s->done_tail = &s->done;
	pthread_mutex_unlock(&s->lock);
	/* Oldest first. */
	while (list) {
		struct rbd_slot *next = list->next;

		reap_one(s, list);
		list = next;
	}
	pump(s);
}

/* ---- block status: on a helper thread ------------------------------------ */

/*
 * rbd_diff_iterate2()'s callback: collect a data range, clipped to the
 * window, merged with the last one when it follows on (librbd reports in
 * order; out of order they are sorted after).  Full: stop the iteration.
 */
static int diff_cb(uint64_t off, size_t len, int exists, void *arg)
{
	struct rbd_bs_job *j = arg;
	uint64_t end = off + len;
	struct rbd_range *last;
	int rc = 0;

	if (!exists)
		return 0; /* known zeroes: a hole, as what is not reported */
	if (off < j->step_off)
		off = j->step_off;
	if (end > j->step_end)
		end = j->step_end;
	if (off >= end)
		return 0;
	pthread_mutex_lock(&j->lock);
	last = j->nranges ? &j->ranges[j->nranges - 1] : NULL;
	if (last && off >= last->off && off <= last->off + last->len) {
		if (end > last->off + last->len)
			last->len = end - last->off;
	} else if (j->nranges < RBD_BS_RANGES) {
		j->ranges[j->nranges].off = off;
		j->ranges[j->nranges].len = end - off;
		j->nranges++;
	} else {
		j->overflow = true;
		rc = -E2BIG;
	}
	pthread_mutex_unlock(&j->lock);
	return rc;
}

static int range_cmp(const void *a, const void *b)
{
	const struct rbd_range *x = a, *y = b;

	return x->off < y->off ? -1 : x->off > y->off;
}

static void add_extent(struct bks_req *req, uint64_t off, uint64_t len,
		       uint32_t flags)
{
	struct bks_extent *x = &req->extents[req->nextents++];

	x->offset = off;
	x->length = len;
	x->flags = flags;
	x->depth = 1; /* no parent of blkstack's: librbd's is included */
}

/* The collected ranges, sorted and merged, as req's extents. */
static void fill_extents(struct rbd_bs_job *j, struct bks_req *req)
{
	const uint32_t hole = BKS_EXTENT_HOLE | BKS_EXTENT_ZERO;
	uint64_t pos = j->win_off;
	unsigned int n = 0;

	qsort(j->ranges, j->nranges, sizeof(*j->ranges), range_cmp);
	for (unsigned int i = 0; i < j->nranges; i++) {
		struct rbd_range *r = &j->ranges[i];

		if (n &&
		    r->off <= j->ranges[n - 1].off + j->ranges[n - 1].len) {
			struct rbd_range *m = &j->ranges[n - 1];

			if (r->off + r->len > m->off + m->len)
				m->len = r->off + r->len - m->off;
		} else {
			j->ranges[n++] = *r;
		}
	}
	req->nextents = 0;
	for (unsigned int i = 0; i < n && req->nextents < req->extents_max;
	     i++) {
		struct rbd_range *r = &j->ranges[i];

		if (r->off >= j->win_end)
			break;
		if (r->off + r->len > j->win_end)
			r->len = j->win_end - r->off;
		if (r->off > pos) {
			add_extent(req, pos, r->off - pos, hole);
			if (req->nextents == req->extents_max)
				return;
		}
		add_extent(req, r->off, r->len, 0);
		pos = r->off + r->len;
	}
	if (pos < j->win_end && req->nextents < req->extents_max)
		add_extent(req, pos, j->win_end - pos, hole);
}

/*
 * The job: the allocation of [offset, offset + len), at most
 * RBD_BS_WINDOW of it, asked in steps that double from RBD_BS_STEP, until
 * there are as many data ranges as the request has room for extents:
 * a client that asks for one extent at a time (qemu's NBD client, with
 * NBD_CMD_FLAG_REQ_ONE) must not cost a diff of the whole window each
 * time.  More ranges than RBD_BS_RANGES in a step: the answer ends
 * before it; in the first step, the step is halved and asked again, down
 * to 64 KiB, which is then said to be all data (data may be
 * over-reported, never holes).
 */
static int bs_run(struct bks_offload_job *job)
{
	struct rbd_bs_job *j = job->opaque;
	struct rbd_state *s = j->s;
	struct bks_req *req = j->req;
	uint64_t len = req->len < RBD_BS_WINDOW ? req->len : RBD_BS_WINDOW;
	uint64_t cur = req->offset, end = req->offset + len;
	uint64_t step = RBD_BS_STEP;
	int rc;

	j->win_off = req->offset;
	j->nranges = 0;
	while (cur < end) {
		uint64_t n = step < end - cur ? step : end - cur;
		unsigned int before = j->nranges;

		j->step_off = cur;
		j->step_end = cur + n;
		j->overflow = false;
		rc = rbd_diff_iterate2(s->image, NULL, cur, n, 1,
				       RBD_BS_WHOLE_OBJECT, diff_cb, j);
		if (j->overflow) {
			j->nranges = before;
			if (cur > req->offset)
				break; /* answer [offset, cur) */
			if (n <= 65536) {
				req->nextents = 0;
				add_extent(req, cur, n, 0);
				return 0;
			}
			step = n - n / 2;
			continue;
		}
		if (rc < 0)
			return rc;
		cur += n;
		if (j->nranges >= req->extents_max)
			break;
		step *= 2;
	}
	j->win_end = cur;
	fill_extents(j, req);
	return 0;
}

/* ---- block status: the loop's side --------------------------------------- */

static void bs_done(struct bks_offload_job *job, int result);

/* Finish a block status request. */
static void bs_finish(struct rbd_state *s, struct bks_req *req, int result)
{
	char what[sizeof(s->t.name) + 64];

	s->bs_in_flight--;
	s->completed++;
	if (result < 0) {
		s->errors++;
		snprintf(what, sizeof(what),
			 "block status (rbd_diff_iterate2 on rbd:%s)",
			 s->t.name);
		note_error(s, what, -result);
	}
	bks_req_complete(req, result);
}

/* Run req on job j; a submission the pool refuses fails req. */
static void bs_start(struct rbd_state *s, struct rbd_bs_job *j,
		     struct bks_req *req)
{
	int rc;

	j->req = req;
	j->job.fn = bs_run;
	j->job.done = bs_done;
	j->job.opaque = j;
	rc = bks_offload_submit(s->off, &j->job);
	if (rc < 0) {
		/* Never with a pool sized for every job; say so anyway. */
		j->req = NULL;
		j->next_free = s->free_jobs;
		s->free_jobs = j;
		bs_finish(s, req, rc);
	}
}

/* On the loop thread: j's request is done; j serves the next waiting. */
static void bs_done(struct bks_offload_job *job, int result)
{
	struct rbd_bs_job *j = job->opaque;
	struct rbd_state *s = j->s;
	struct bks_req *req = j->req;

	j->req = NULL;
	if (s->bs_wait.head) {
		bs_start(s, j, bks_req_queue_pop(&s->bs_wait));
	} else {
		j->next_free = s->free_jobs;
		s->free_jobs = j;
	}
	bs_finish(s, req, result);
}

static int sink_block_status(void *state, struct bks_layer *self,
			     struct bks_req *req)
{
	struct rbd_state *s = state;
	struct rbd_bs_job *j = s->free_jobs;

	(void)self;
	s->block_status++;
	s->bs_in_flight++;
	if (j && !s->bs_wait.head) {
		s->free_jobs = j->next_free;
		bs_start(s, j, req);
	} else {
		bks_req_queue_push(&s->bs_wait, req);
	}
	return 0;
}

/* The block status jobs and their pool. */
static int bs_open(struct rbd_state *s, struct bks_error *err)
{
	int rc;

	s->jobs = calloc(RBD_BS_JOBS, sizeof(*s->jobs));
	if (!s->jobs)
		return bks_error_set(err, ENOMEM, "rbd:%s: block status jobs",
				     s->t.name);
	for (unsigned int i = 0; i < RBD_BS_JOBS; i++) {
		struct rbd_bs_job *j = &s->jobs[i];

		j->ranges = calloc(RBD_BS_RANGES, sizeof(*j->ranges));
		if (!j->ranges)
			return bks_error_set(err, ENOMEM,
					     "rbd:%s: block status ranges",
					     s->t.name);
		rc = -pthread_mutex_init(&j->lock, NULL);
		if (rc < 0)
			return bks_error_set(err, -rc, "rbd:%s: mutex",
					     s->t.name);
		s->njobs_locked++;
	}
	for (unsigned int i = RBD_BS_JOBS; i-- > 0;) {
		s->jobs[i].s = s;
		s->jobs[i].next_free = s->free_jobs;
		s->free_jobs = &s->jobs[i];
	}
	rc =
	    bks_offload_new(&s->off, s->loop, RBD_BS_THREADS, RBD_BS_JOBS, err);
	if (rc < 0)
		bks_error_prepend(err, "rbd:%s: block status: ", s->t.name);
	return rc;
}

static void bs_free_jobs(struct rbd_state *s)
{
	if (!s->jobs)
		return;
	for (unsigned int i = 0; i < RBD_BS_JOBS; i++) {
		if (i < s->njobs_locked)
			pthread_mutex_destroy(&s->jobs[i].lock);
		free(s->jobs[i].ranges);
	}
	free(s->jobs);
	s->jobs = s->free_jobs = NULL;
	s->njobs_locked = 0;
}

/* ---- opening ------------------------------------------------------------- */

/* rados_conf_set, with the option named on failure. */
static int conf_set(struct rbd_state *s, const char *key, const char *value,
		    struct bks_error *err)
{
	int rc = rados_conf_set(s->cluster, key, value);

	if (rc < 0)
		return bks_error_set(err, -rc, "rbd:%s: setting %s", s->t.name,
				     key);
	return 0;
}

/* Connect to the cluster: its conf, our timeouts, as client.ID. */
static int connect_cluster(struct rbd_state *s, struct bks_error *err)
{
	char entity[BKS_RBD_ID_MAX + 8], secs[16];
	int rc;

	snprintf(entity, sizeof(entity), "client.%s", s->t.id);
	rc = rados_create2(&s->cluster, s->t.cluster, entity, 0);
	if (rc < 0)
		return bks_error_set(err, -rc,
				     "rbd:%s: creating a cluster "
				     "handle",
				     s->t.name);
	s->have_cluster = true;
	rc = rados_conf_read_file(s->cluster, s->t.conf[0] ? s->t.conf : NULL);
	if (rc < 0)
		return bks_error_set(err, -rc,
				     "rbd:%s: reading the Ceph "
				     "configuration %s",
				     s->t.name,
				     s->t.conf[0] ? s->t.conf
						  : "(default search path)");
	if (s->t.keyring[0]) {
		rc = conf_set(s, "keyring", s->t.keyring, err);
		if (rc < 0)
			return rc;
	}
	snprintf(secs, sizeof(secs), "%u", s->t.timeout_s);
	rc = conf_set(s, "client_mount_timeout", secs, err);
	if (rc == 0)
		rc = conf_set(s, "rados_mon_op_timeout", secs, err);
	if (rc == 0)
		rc = conf_set(s, "rados_osd_op_timeout", secs, err);
	if (rc < 0)
		return rc;
	rc = rados_connect(s->cluster);
	if (rc < 0)
		return bks_error_set(err, -rc,
				     "rbd:%s: connecting to cluster '%s' as "
				     "%s (%s%s%stimeout %u s)",
				     s->t.name, s->t.cluster, entity,
				     s->t.keyring[0] ? "keyring " : "",
				     s->t.keyring, s->t.keyring[0] ? ", " : "",
				     s->t.timeout_s);
	return 0;
}

/* The pool, the image (at its snapshot), its size. */
static int open_image(struct rbd_state *s, struct bks_error *err)
{
	const char *snap = s->t.snap[0] ? s->t.snap : NULL;
	int rc;

	rc = rados_ioctx_create(s->cluster, s->t.pool, &s->io);
	if (rc < 0)
		return bks_error_set(err, -rc, "rbd:%s: pool '%s'", s->t.name,
				     s->t.pool);
	s->have_io = true;
	if (s->read_only)
		rc = rbd_open_read_only(s->io, s->t.image, &s->image, snap);
	else
		rc = rbd_open(s->io, s->t.image, &s->image, NULL);
	if (rc < 0)
		return bks_error_set(err, -rc, "rbd:%s: open", s->t.name);
	s->have_image = true;
	rc = rbd_get_size(s->image, &s->size);
	if (rc < 0)
		return bks_error_set(err, -rc, "rbd:%s: size", s->t.name);
	if (s->size == 0 || s->size % 512)
		return bks_error_setmsg(err, EINVAL,
					"rbd:%s: the image's size %llu is not "
					"a positive multiple of 512",
					s->t.name, (unsigned long long)s->size);
	return 0;
}

/* ---- the claim ---------------------------------------------------------- */

/* The live holder a claim was refused for. */
struct holder {
	char client[64], addr[128], tag[BKS_RBD_VM_MAX + 1];
	bool exclusive;
};

/* Is the client named "client.GID" among the n watchers? */
static bool watching(const rbd_image_watcher_t *w, size_t n, const char *who)
{
	unsigned long long gid;
	char *end;

	if (strncmp(who, "client.", 7))
		return true; /* not a client: cannot tell, keep it */
	errno = 0;
	gid = strtoull(who + 7, &end, 10);
	if (errno || *end || end == who + 7)
		return true;
	for (size_t i = 0; i < n; i++) {
		if (w[i].id >= 0 && (unsigned long long)w[i].id == gid)
			return true;
	}
	return false;
}

/*
 * Break the claim locks of holders that no longer watch the image.
 * Returns how many were broken, or -errno with err set; with none
 * broken, *live is the first live holder.
 */
static int break_stale(struct rbd_state *s, struct holder *live,
		       struct bks_error *err)
{
	rbd_image_watcher_t w[CLAIM_MAX_WATCHERS];
	size_t nw = CLAIM_MAX_WATCHERS, tag_len, cl_len, ck_len, ad_len;
	char *tag = NULL, *clients = NULL, *cookies = NULL, *addrs = NULL;
	const char *c, *k, *a;
	int excl = 0, rc, broken = 0;
	ssize_t n;

	memset(live, 0, sizeof(*live));
	tag = calloc(4, CLAIM_LIST_BYTES);
	if (!tag)
		return bks_error_set(err, ENOMEM, "rbd:%s: claim", s->t.name);
	clients = tag + CLAIM_LIST_BYTES;
	cookies = clients + CLAIM_LIST_BYTES;
	addrs = cookies + CLAIM_LIST_BYTES;
	tag_len = cl_len = ck_len = ad_len = CLAIM_LIST_BYTES - 1;
	n = rados_list_lockers(s->io, s->header, CLAIM_LOCK, &excl, tag,
			       &tag_len, clients, &cl_len, cookies, &ck_len,
			       addrs, &ad_len);
	if (n < 0) {
		rc = bks_error_set(err, (int)-n,
				   "rbd:%s: listing the holders of the "
				   "claim (lock %s on %s)",
				   s->t.name, CLAIM_LOCK, s->header);
		goto out;
	}
	rc = rbd_watchers_list(s->image, w, &nw);
	if (rc < 0) {
		rc = bks_error_set(err, -rc, "rbd:%s: listing the watchers",
				   s->t.name);
		goto out;
	}
	c = clients;
	k = cookies;
	a = addrs;
	for (ssize_t i = 0; i < n; i++) {
		if (!watching(w, nw, c)) {
			rc = rados_break_lock(s->io, s->header, CLAIM_LOCK, c,
					      k);
			if (rc < 0 && rc != -ENOENT) {
				rc = bks_error_set(err, -rc,
						   "rbd:%s: breaking the "
						   "stale claim of %s",
						   s->t.name, c);
				break;
			}
			rc = 0;
			broken++;
		} else if (!live->client[0]) {
			snprintf(live->client, sizeof(live->client), "%s", c);
			snprintf(live->addr, sizeof(live->addr), "%s", a);
			snprintf(live->tag, sizeof(live->tag), "%s", tag);
			live->exclusive = excl != 0;
			bks_sanitize_line(live->client);
			bks_sanitize_line(live->addr);
			bks_sanitize_line(live->tag);
		}
		c += strlen(c) + 1;
		k += strlen(k) + 1;
		a += strlen(a) + 1;
	}
	rbd_watchers_list_cleanup(w, nw);
	if (rc == 0)
		rc = broken;
out:
	free(tag);
	return rc;
}

/* Take the claim for s->t.vm (see "Claims"): 0 or -errno with err set. */
static int claim(struct rbd_state *s, struct bks_error *err)
{
	static const char nobody[] = "a blkstack disk that names no VM";
	const char *mine = s->t.vm[0] ? "is VM " : "names no VM (vm=)";
	char id[BKS_RBD_IMAGE_MAX + 1], desc[BKS_RBD_VM_MAX + 32];
	struct holder live;
	int rc = 0;

	s->gid = rados_get_instance_id(s->cluster);
	rc = rbd_get_id(s->image, id, sizeof(id));
	if (rc < 0)
		return bks_error_set(err, -rc, "rbd:%s: the image's id",
				     s->t.name);
	snprintf(s->header, sizeof(s->header), "rbd_header.%s", id);
	snprintf(s->cookie, sizeof(s->cookie), "blkstack.%llu",
		 (unsigned long long)s->gid);
	snprintf(desc, sizeof(desc), "blkstack vm %s",
		 s->t.vm[0] ? s->t.vm : "(none)");
	for (unsigned int i = 0; i < CLAIM_TRIES; i++) {
		if (s->t.vm[0])
			rc = rados_lock_shared(s->io, s->header, CLAIM_LOCK,
					       s->cookie, s->t.vm, desc, NULL,
					       0);
		else
			rc = rados_lock_exclusive(s->io, s->header, CLAIM_LOCK,
						  s->cookie, desc, NULL, 0);
		if (rc == 0 || rc == -EEXIST) {
			s->claimed = true;
			return 0;
		}
		if (rc != -EBUSY)
			return bks_error_set(err, -rc,
					     "rbd:%s: claiming the image (lock "
					     "%s on %s)",
					     s->t.name, CLAIM_LOCK, s->header);
		rc = break_stale(s, &live, err);
		if (rc < 0)
			return rc;
		if (rc > 0)
			continue; /* stale holders gone: again */
		if (!live.client[0])
			continue; /* released meanwhile: again */
		return bks_error_setmsg(
		    err, EBUSY,
		    "rbd:%s: the image is in use read-write "
		    "by %s%s (%s at %s), and this disk %s%s; "
		    "refusing to share it",
		    s->t.name, live.tag[0] ? "VM " : nobody, live.tag,
		    live.client, live.addr, mine, s->t.vm);
	}
	return bks_error_setmsg(err, EBUSY,
				"rbd:%s: the claim (lock %s on %s) is still "
				"held after %d tries",
				s->t.name, CLAIM_LOCK, s->header, CLAIM_TRIES);
}

static void sink_close(void *state, struct bks_layer *self);

static int sink_open(void *state, struct bks_layer *self,
		     const struct bks_open_args *args, struct bks_error *err)
{
	struct rbd_state *s = state;
	sigset_t all, old;
	bool masked = false;
	int rc;

	s->self = self;
	s->loop = args->loop;
	s->efd = -1;
	rc = bks_rbd_target_parse(args->args, &s->t, err);
	if (rc < 0)
		goto out;
	s->read_only = args->read_only || s->t.snap[0];
	rc = -pthread_mutex_init(&s->lock, NULL);
	if (rc < 0) {
		rc = bks_error_set(err, -rc, "rbd:%s: mutex", s->t.name);
		goto out;
	}
	s->have_lock = true;
	s->done_tail = &s->done;
	s->slots = calloc(RBD_SLOTS, sizeof(*s->slots));
	if (!s->slots) {
		rc = bks_error_set(err, ENOMEM, "rbd:%s: request slots",
				   s->t.name);
		goto out;
	}
	for (unsigned int i = RBD_SLOTS; i-- > 0;) {
		s->slots[i].s = s;
		s->slots[i].next = s->free_slots;
		s->free_slots = &s->slots[i];
	}
	s->efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (s->efd < 0) {
		rc = bks_error_set(err, errno, "rbd:%s: eventfd", s->t.name);
		goto out;
	}
	/* librados' and librbd's threads start here: no signals for them. */
	sigfillset(&all);
	rc = -pthread_sigmask(SIG_BLOCK, &all, &old);
	if (rc < 0) {
		rc = bks_error_set(err, -rc, "rbd:%s: blocking signals",
				   s->t.name);
		goto out;
	}
	masked = true;
	rc = connect_cluster(s, err);
	if (rc == 0)
		rc = open_image(s, err);
	if (rc == 0 && !s->read_only)
		rc = claim(s, err);
	if (rc == 0)
		rc = bs_open(s, err);
	if (rc < 0)
		goto out;
	rc = bks_watch_add(s->loop, &s->watch, s->efd, EPOLLIN, on_event, s);
	if (rc < 0)
		rc = bks_error_set(err, -rc, "rbd:%s: watching the eventfd",
				   s->t.name);
out:
	if (masked)
		pthread_sigmask(SIG_SETMASK, &old, NULL);
	if (rc < 0)
		sink_close(s, self);
	return rc;
}

static void sink_close(void *state, struct bks_layer *self)
{
	struct rbd_state *s = state;
	uint64_t wait_ns = (s->t.timeout_s + 10ull) * 1000000000ull;

	(void)self;
	if (s->watch.active)
		bks_watch_del(&s->watch);
	/*
	 * No job is left (each belongs to a request, and the chain closes a
	 * layer with nothing in flight).  Should one still run past the
	 * wait (a diff iteration is bounded by rados_osd_op_timeout), it
	 * keeps its image, cluster and job: leaked, not pulled away.
	 */
	if (s->off && bks_offload_free(s->off, wait_ns) == -ETIMEDOUT) {
		s->off = NULL;
		s->have_image = s->have_io = s->have_cluster = false;
		s->claimed = false;
		s->jobs = s->free_jobs = NULL;
	}
	s->off = NULL;
	bs_free_jobs(s);
	if (s->have_image)
		rbd_close(s->image);
	/* After rbd_close() has flushed: then another VM may write. */
	if (s->claimed)
		rados_unlock(s->io, s->header, CLAIM_LOCK, s->cookie);
	s->claimed = false;
	if (s->have_io)
		rados_ioctx_destroy(s->io);
	if (s->have_cluster)
		rados_shutdown(s->cluster);
	s->have_image = s->have_io = s->have_cluster = false;
	if (s->efd >= 0)
		close(s->efd);
	s->efd = -1;
	if (s->have_lock)
		pthread_mutex_destroy(&s->lock);
	s->have_lock = false;
	free(s->slots);
	s->slots = NULL;
}

static int sink_info(void *state, struct bks_layer *self, struct bks_info *info)
{
	struct rbd_state *s = state;

	(void)self;
	info->size = s->size;
	info->block_size = 512;
	info->max_io = RBD_MAX_IO;
	info->max_discard = BKS_FILE_MAX_RANGE;
	info->max_write_zeroes = BKS_FILE_MAX_RANGE;
	info->read_only = s->read_only;
	info->ops = BKS_OPF(BKS_OP_READ) | BKS_OPF(BKS_OP_FLUSH);
	if (!s->read_only) {
		info->ops |= BKS_OPF(BKS_OP_WRITE) | BKS_OPF(BKS_OP_DISCARD) |
			     BKS_OPF(BKS_OP_WRITE_ZEROES);
		info->can_fua = true;
		info->zero_no_hole = true;
	}
	return 0;
}

static int sink_req(void *state, struct bks_layer *self, struct bks_req *req)
{
	struct rbd_state *s = state;

	(void)self;
	bks_req_queue_push(&s->wait, req);
	pump(s);
	return 0;
}

static void sink_stats(void *state, struct bks_layer *self,
		       struct bks_stats_out *out)
{
	struct rbd_state *s = state;

	(void)self;
	bks_stats_str(out, "image", s->t.name);
	bks_stats_u64(out, "client", rados_get_instance_id(s->cluster));
	if (!s->claimed)
		bks_stats_str(out, "claim", "");
	else
		bks_stats_str(out, "claim", s->t.vm[0] ? s->t.vm : "exclusive");
	bks_stats_u64(out, "in_flight", s->in_flight);
	bks_stats_u64(out, "waiting", bks_req_queue_len(&s->wait));
	bks_stats_u64(out, "completed", s->completed);
	bks_stats_u64(out, "errors", s->errors);
	bks_stats_u64(out, "fua_flushes", s->fua_flushes);
	bks_stats_u64(out, "block_status", s->block_status);
	bks_stats_u64(out, "block_status_waiting",
		      bks_req_queue_len(&s->bs_wait));
	bks_stats_str(out, "last_error", s->last_error);
}

static const struct bks_driver bks_driver_rbd = {
    .desc = BKS_RBD_DESC,
    .state_size = sizeof(struct rbd_state),
    .open = sink_open,
    .close = sink_close,
    .info = sink_info,
    .read = sink_req,
    .write = sink_req,
    .flush = sink_req,
    .discard = sink_req,
    .write_zeroes = sink_req,
    .block_status = sink_block_status,
    .stats = sink_stats,
};

/* A module (driver-module.h): what the loader looks up. */
const struct bks_module bks_module_rbd = {
    .abi = BKS_MODULE_ABI,
    .driver_size = sizeof(struct bks_driver),
    .driver = &bks_driver_rbd,
};
