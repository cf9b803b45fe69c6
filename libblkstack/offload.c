/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The helper-thread pool for blocking calls: see include/blkstack/offload.h.
 *
 * Life of a job:
 *
 *   bks_offload_submit()  (loop thread) appends it to the work queue and
 *                         wakes one thread.
 *   worker()              (helper thread) takes it off the queue, runs
 *                         fn without the lock, puts it on the done list
 *                         and writes the eventfd.
 *   on_eventfd()          (loop thread) takes finished jobs off the done
 *                         list one at a time and calls their done.
 *
 * The lock guards the work queue, the done list, the running count and
 * the threads' in_job flags.  `outstanding` and the stats are the loop
 * thread's alone.
 *
 * Memory: the pool is released by whoever lets go of it last: the owner
 * (bks_offload_free(), or on_eventfd() when free was called from a done
 * callback) or a thread that free gave up waiting for (refs counts them).
 */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#include "blkstack/offload.h"

/* A helper thread's stack: it runs one system call at a time. */
#define OFFLOAD_STACK_SIZE (128u * 1024)

struct offload_thread {
	struct bks_offload *o;
	pthread_t tid;
	bool started;
	bool in_job; /* inside a job's fn (under the lock) */
};

struct bks_offload {
	struct bks_loop *loop;
	unsigned int nthreads;
	unsigned int max_jobs;
	struct offload_thread *threads;
	int efd;
	struct bks_watch watch;

	pthread_mutex_t lock;
	pthread_cond_t work; /* the queue has a job, or stopping */
	pthread_cond_t idle; /* a job finished (free waits on it) */
	bool cond_idle_ok, cond_work_ok, lock_ok;
	struct bks_offload_job *queue_head, *queue_tail;
	struct bks_offload_job *done_head, *done_tail;
	unsigned int running;
	bool stopping;
	unsigned int refs; /* the owner + threads abandoned by free */

	/* The loop thread's. */
	unsigned int busy; /* inside on_eventfd() */
	bool dead;	   /* freed from inside on_eventfd() */
	struct bks_offload_stats stats;
};

static void destroy(struct bks_offload *o)
{
	if (o->efd >= 0)
		close(o->efd);
	if (o->cond_idle_ok)
		pthread_cond_destroy(&o->idle);
	if (o->cond_work_ok)
		pthread_cond_destroy(&o->work);
	if (o->lock_ok)
		pthread_mutex_destroy(&o->lock);
	free(o->threads);
	free(o);
}

/* Let go of one reference, under the lock; the last one frees. */
static void unref_locked(struct bks_offload *o)
{
	bool last = --o->refs == 0;

	pthread_mutex_unlock(&o->lock);
	if (last)
		destroy(o);
}

static void push(struct bks_offload_job **head, struct bks_offload_job **tail,
		 struct bks_offload_job *job)
{
	job->next = NULL;
	if (*tail)
		(*tail)->next = job;
	else
		*head = job;
	*tail = job;
}

static struct bks_offload_job *pop(struct bks_offload_job **head,
				   struct bks_offload_job **tail)
{
	struct bks_offload_job *job = *head;

	if (job) {
		*head = job->next;
		if (!*head)
			*tail = NULL;
		job->next = NULL;
	}
	return job;
}

/* ---- the helper threads -------------------------------------------------- */

static void *worker(void *arg)
{
	struct offload_thread *t = arg;
	struct bks_offload *o = t->o;
	const uint64_t one = 1;

	pthread_mutex_lock(&o->lock);
	for (;;) {
		struct bks_offload_job *job;
		ssize_t n;
		int r;

		while (!o->queue_head && !o->stopping)
			pthread_cond_wait(&o->work, &o->lock);
		if (o->stopping)
			break; /* what is queued, free cancels */
		job = pop(&o->queue_head, &o->queue_tail);
		o->running++;
		t->in_job = true;
		pthread_mutex_unlock(&o->lock);

		r = job->fn(job);

		pthread_mutex_lock(&o->lock);
		o->running--;
		t->in_job = false;
		if (!t->started) {
			/* Given up on by free (see join_idle()): the job
			 * may be gone, leave it alone. */
			break;
		}
		job->result = r;
		push(&o->done_head, &o->done_tail, job);
		/* Wakes the loop.  Cannot fail: the loop reads the counter
		 * long before it nears its limit. */
		n = write(o->efd, &one, sizeof(one));
		(void)n;
		pthread_cond_broadcast(&o->idle);
	}
	if (!t->started) {
		/* Detached by free: drop its reference to the pool. */
		unref_locked(o);
		return NULL;
	}
	pthread_mutex_unlock(&o->lock);
	return NULL;
}

/*
 * With stopping set (the lock not held): wait for the threads that are
 * not in a job, which end at once, and detach those still in one, which
 * end when their fn returns.  Returns how many were detached.
 */
static unsigned int join_idle(struct bks_offload *o)
{
	unsigned int detached = 0;

	for (unsigned int i = 0; i < o->nthreads; i++) {
		struct offload_thread *t = &o->threads[i];

		pthread_mutex_lock(&o->lock);
		if (t->started && t->in_job) {
			/* Given up on: it ends when its fn returns. */
			t->started = false;
			o->refs++;
			pthread_detach(t->tid);
			pthread_mutex_unlock(&o->lock);
			detached++;
			continue;
		}
		pthread_mutex_unlock(&o->lock);
		if (t->started) {
			pthread_join(t->tid, NULL);
			t->started = false;
		}
	}
	return detached;
}

/* ---- the loop side ------------------------------------------------------- */

static void deliver(struct bks_offload *o, struct bks_offload_job *job,
		    bool cancelled)
{
	int result = cancelled ? -ECANCELED : job->result;

	o->stats.outstanding--;
	if (cancelled) {
		o->stats.cancelled++;
	} else {
		o->stats.completed++;
		if (result < 0)
			o->stats.errors++;
	}
	job->busy = false;
	job->done(job, result);
}

static void on_eventfd(struct bks_watch *w, uint32_t events)
{
	struct bks_offload *o = w->opaque;
	uint64_t count;
	(void)events;

	/* Reset the counter first: jobs finishing after this make the
	 * eventfd readable again. */
	if (read(o->efd, &count, sizeof(count)) < 0 && errno != EAGAIN)
		return;
	o->busy++;
	while (!o->dead) {
		struct bks_offload_job *job;

		pthread_mutex_lock(&o->lock);
		job = pop(&o->done_head, &o->done_tail);
		pthread_mutex_unlock(&o->lock);
		if (!job)
			break;
		/* May free the pool: free then delivers the rest. */
		deliver(o, job, false);
	}
	if (--o->busy == 0 && o->dead) {
		pthread_mutex_lock(&o->lock);
		unref_locked(o);
	}
}

/* ---- API ----------------------------------------------------------------- */

int bks_offload_submit(struct bks_offload *o, struct bks_offload_job *job)
{
	if (!job->fn || !job->done)
		return -EINVAL;
	if (job->busy)
		return -EBUSY;
	if (o->dead || o->stopping)
		return -ESHUTDOWN;
	if (o->stats.outstanding >= o->max_jobs) {
		o->stats.refused++;
		return -EAGAIN;
	}
	job->busy = true;
	job->result = 0;
	o->stats.submitted++;
	if (++o->stats.outstanding > o->stats.outstanding_max)
		o->stats.outstanding_max = o->stats.outstanding;
	pthread_mutex_lock(&o->lock);
	push(&o->queue_head, &o->queue_tail, job);
	pthread_cond_signal(&o->work);
	pthread_mutex_unlock(&o->lock);
	return 0;
}

/* Start the helper threads, with every signal blocked in them. */
static int start_threads(struct bks_offload *o, struct bks_error *err)
{
	pthread_attr_t attr;
	sigset_t all, old;
	int rc = 0;

	rc = pthread_attr_init(&attr);
	if (rc)
		return bks_error_set(err, rc, "offload: pthread_attr_init");
	pthread_attr_setstacksize(&attr, OFFLOAD_STACK_SIZE);
	sigfillset(&all);
	pthread_sigmask(SIG_SETMASK, &all, &old);
	for (unsigned int i = 0; i < o->nthreads; i++) {
		struct offload_thread *t = &o->threads[i];

		t->o = o;
		rc = pthread_create(&t->tid, &attr, worker, t);
		if (rc) {
			rc = bks_error_set(err, rc,
					   "offload: start helper thread %u of "
					   "%u",
					   i + 1, o->nthreads);
			break;
		}
		t->started = true;
	}
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	pthread_attr_destroy(&attr);
	return rc;
}

int bks_offload_new(struct bks_offload **out, struct bks_loop *loop,
		    unsigned int threads, unsigned int max_jobs,
		    struct bks_error *err)
{
	struct bks_offload *o;
	int rc;

	*out = NULL;
	if (threads == 0 || threads > 64)
		return bks_error_setmsg(
		    err, EINVAL, "offload: %u threads: must be 1..64", threads);
	if (max_jobs == 0 || max_jobs > 65536)
		return bks_error_setmsg(err, EINVAL,
					"offload: %u jobs: must be 1..65536",
					max_jobs);
	o = calloc(1, sizeof(*o));
	if (!o)
		return bks_error_set(err, ENOMEM, "offload pool");
	o->loop = loop;
	o->nthreads = threads;
	o->max_jobs = max_jobs;
	o->refs = 1;
	o->efd = -1;
	o->threads = calloc(threads, sizeof(*o->threads));
	if (!o->threads) {
		rc = bks_error_set(err, ENOMEM, "offload: %u threads", threads);
		goto out;
	}
	rc = pthread_mutex_init(&o->lock, NULL);
	o->lock_ok = rc == 0;
	if (!rc) {
		rc = pthread_cond_init(&o->work, NULL);
		o->cond_work_ok = rc == 0;
	}
	if (!rc) {
		pthread_condattr_t ca;

		rc = pthread_condattr_init(&ca);
		if (!rc) {
			/* free's bounded wait is on the monotonic clock. */
			pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
			rc = pthread_cond_init(&o->idle, &ca);
			pthread_condattr_destroy(&ca);
		}
		o->cond_idle_ok = rc == 0;
	}
	if (rc) {
		rc = bks_error_set(err, rc, "offload: mutex or condition");
		goto out;
	}
	o->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	if (o->efd < 0) {
		rc = bks_error_set(err, errno, "offload: eventfd");
		goto out;
	}
	rc = bks_watch_add(loop, &o->watch, o->efd, EPOLLIN, on_eventfd, o);
	if (rc < 0) {
		rc = bks_error_set(err, -rc, "offload: watch eventfd");
		goto out;
	}
	rc = start_threads(o, err);
	if (rc < 0) {
		/* Stop those that started: none is in a job. */
		bks_watch_del(&o->watch);
		pthread_mutex_lock(&o->lock);
		o->stopping = true;
		pthread_cond_broadcast(&o->work);
		pthread_mutex_unlock(&o->lock);
		join_idle(o);
		goto out;
	}
	*out = o;
out:
	if (rc < 0)
		destroy(o);
	return rc;
}

int bks_offload_free(struct bks_offload *o, uint64_t wait_ns)
{
	struct bks_offload_job *cancelled, *finished, *job;
	uint64_t deadline;
	struct timespec ts;
	int rc = 0;

	if (!o)
		return 0;
	deadline = bks_now_ns() + wait_ns;
	ts.tv_sec = (time_t)(deadline / 1000000000u);
	ts.tv_nsec = (long)(deadline % 1000000000u);

	pthread_mutex_lock(&o->lock);
	o->stopping = true;
	pthread_cond_broadcast(&o->work);
	cancelled = o->queue_head;
	o->queue_head = o->queue_tail = NULL;
	while (o->running) {
		if (pthread_cond_timedwait(&o->idle, &o->lock, &ts) ==
		    ETIMEDOUT)
			break;
	}
	pthread_mutex_unlock(&o->lock);
	bks_watch_del(&o->watch);
	if (join_idle(o))
		rc = -ETIMEDOUT;
	/* Nothing is left running but what was given up on, which never
	 * reaches the done list. */
	pthread_mutex_lock(&o->lock);
	finished = o->done_head;
	o->done_head = o->done_tail = NULL;
	pthread_mutex_unlock(&o->lock);

	while ((job = finished)) {
		finished = job->next;
		deliver(o, job, false);
	}
	while ((job = cancelled)) {
		cancelled = job->next;
		deliver(o, job, true);
	}
	if (o->busy) {
		o->dead = true; /* on_eventfd() lets go of it */
		return rc;
	}
	pthread_mutex_lock(&o->lock);
	unref_locked(o);
	return rc;
}

void bks_offload_get_stats(const struct bks_offload *o,
			   struct bks_offload_stats *out)
{
	*out = o->stats;
}
