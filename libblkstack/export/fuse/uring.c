/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The FUSE export's io_uring transport (FUSE over io_uring, Linux 6.14+),
 * and naming and choosing the transport.  See internal.h and, for the
 * kernel's side, fs/fuse/dev_uring.c.
 *
 * The kernel's facts this relies on (6.14 to 6.18):
 *
 *   - The ring is set up after INIT is answered (fuse_uring_cmd refuses
 *     with EAGAIN before: the payload size is INIT's max_write), on a
 *     ring with 128-byte SQEs (the command is in the SQE's 80-byte tail).
 *   - One queue per possible CPU (fuse_uring_create: num_possible_cpus);
 *     a request goes to the queue of the CPU its task runs on.  The
 *     kernel switches the connection to the ring once EVERY queue has an
 *     entry waiting (fuse_uring_do_register, is_ring_ready); until then
 *     requests keep coming on /dev/fuse, and INIT, interrupts and resent
 *     requests always do.
 *   - REGISTER gives an entry: iov[0] its header area (struct
 *     fxu_req_header), iov[1] its payload buffer, at least max_write
 *     bytes.  Its CQE comes when a request is in the entry (res 0), or
 *     the entry ends (-ENOTCONN when the connection or the ring goes).
 *   - COMMIT_AND_FETCH answers the request the entry holds (commit_id:
 *     its unique) and waits for the next, in one SQE.  An answer the
 *     kernel no longer waits for fails the SQE (-ENOENT) and leaves the
 *     entry with the kernel: it is registered again.
 *   - The requests reach us by task work on this thread, which
 *     interrupts epoll_wait() (EINTR, retried by the loop); the ring fd
 *     polls readable while CQEs wait, so the loop watches it, as the
 *     file queue's engine does (aioq-uring.c).
 *
 * Answers are prepared as SQEs and submitted once per loop iteration
 * (a deferred call): many answers, and the fetches of the entries, per
 * io_uring_enter().  The SQ ring has a place per entry, and an entry
 * has at most one SQE at a time, so it never runs out.
 */
#include <errno.h>
#include <liburing.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/mman.h>
#include <sys/sysinfo.h>

#include "internal.h"

/*
 * auto's pick where a crash need not be survived: whether io_uring paid
 * in the bench (bench/README.md, "Means tried": 0.71-0.85x the worker's
 * CPU per request, throughput on par or better at 4k).
 */
#define FX_AUTO_URING true

/* Entries per queue: BKS_FUSE_MAX_BACKGROUND over the queues, 4 to 64. */
#define FX_URING_MIN_DEPTH 4u
#define FX_URING_MAX_DEPTH 64u
/* Retry of a refused io_uring_enter() (out of memory: EAGAIN, EBUSY). */
#define FX_URING_RETRY_NS 1000000ull

enum fx_ent_state {
	FXE_IDLE,	 /* not with the kernel (a failed registration) */
	FXE_REGISTERING, /* REGISTER prepared or sent */
	FXE_FETCHING,	 /* COMMIT_AND_FETCH prepared or sent */
	FXE_HELD,	 /* holds a request: ours to answer */
	FXE_DEAD,	 /* the kernel ended it */
};

struct fx_ring {
	struct fx *fx;
	struct io_uring ring;
	bool ring_ok;
	struct bks_watch w;
	bool watching;
	struct bks_defer submit; /* io_uring_submit() once per iteration */
	struct bks_timer retry;
	fx_ring_request_fn *fn;
	unsigned int nq, depth, n; /* queues, entries per queue, entries */
	struct fx_ent *ents;
	struct fxu_req_header *hdrs;
	char *mem; /* the payload buffers, one mapping */
	size_t mem_len;
};

/* ---- naming and choosing ------------------------------------------------- */

const char *bks_fuse_transport_name(enum bks_fuse_transport t)
{
	switch (t) {
	case BKS_FUSE_TRANSPORT_AUTO:
		return "auto";
	case BKS_FUSE_TRANSPORT_READV:
		return "readv";
	case BKS_FUSE_TRANSPORT_URING:
		return "io_uring";
	}
	return "?";
}

int bks_fuse_transport_parse(const char *name, enum bks_fuse_transport *out,
			     struct bks_error *err)
{
	static const enum bks_fuse_transport all[] = {BKS_FUSE_TRANSPORT_AUTO,
						      BKS_FUSE_TRANSPORT_READV,
						      BKS_FUSE_TRANSPORT_URING};

	for (size_t i = 0; i < sizeof(all) / sizeof(all[0]); i++) {
		if (strcmp(name, bks_fuse_transport_name(all[i])) == 0) {
			*out = all[i];
			return 0;
		}
	}
	return bks_error_setmsg(err, EINVAL,
				"FUSE transport '%s': must be auto, io_uring "
				"or readv",
				name);
}

int bks_fuse_uring_enabled(void)
{
	char c = 0;
	FILE *f = fopen("/sys/module/fuse/parameters/enable_uring", "re");

	if (!f)
		return 0;
	if (fread(&c, 1, 1, f) != 1)
		c = 0;
	fclose(f);
	return c == 'Y' || c == '1';
}

enum bks_fuse_transport bks_fuse_transport_resolve(enum bks_fuse_transport t,
						   bool survive)
{
	if (t != BKS_FUSE_TRANSPORT_AUTO)
		return t;
	if (!survive && FX_AUTO_URING && bks_fuse_uring_enabled())
		return BKS_FUSE_TRANSPORT_URING;
	return BKS_FUSE_TRANSPORT_READV;
}

enum bks_fuse_transport bks_fuse_export_transport(const struct bks_export *exp)
{
	/* struct fx begins with its handle. */
	return ((const struct fx *)(const void *)exp)->transport;
}

/* ---- the ring -------------------------------------------------------------
 */

/* The kernel's queue count: the possible CPUs (0-N in sysfs), else nprocs. */
static unsigned int possible_cpus(void)
{
	unsigned int a, b, n = 0;
	char buf[256], *p = buf;
	FILE *f = fopen("/sys/devices/system/cpu/possible", "re");
	size_t len = f ? fread(buf, 1, sizeof(buf) - 1, f) : 0;

	if (f)
		fclose(f);
	buf[len] = '\0';
	/* "0-3,5,7-8": count them. */
	while (len && *p >= '0' && *p <= '9') {
		int used = 0;

		if (sscanf(p, "%u-%u%n", &a, &b, &used) == 2 && used > 0 &&
		    b >= a)
			n += b - a + 1;
		else if (sscanf(p, "%u%n", &a, &used) == 1 && used > 0)
			n++;
		else
			break;
		p += used;
		if (*p != ',')
			break;
		p++;
	}
	if (n == 0) {
		int c = get_nprocs_conf();

		n = c > 0 ? (unsigned int)c : 1;
	}
	return n;
}

/* Prepare entry e's next SQE: cmd (REGISTER or COMMIT_AND_FETCH). */
static void prep_cmd(struct fx_ring *r, struct fx_ent *e, uint32_t cmd)
{
	struct io_uring_sqe *sqe = io_uring_get_sqe(&r->ring);
	struct fxu_cmd_req req = {.qid = e->qid};

	/* Cannot fail: a place per entry, one SQE per entry at a time. */
	if (!sqe) {
		e->state = FXE_IDLE;
		return;
	}
	/* The whole 128 bytes: the command area must be zero past req. */
	memset(sqe, 0, 2 * sizeof(*sqe));
	sqe->opcode = IORING_OP_URING_CMD;
	sqe->fd = r->fx->fd;
	sqe->cmd_op = cmd;
	if (cmd == FXU_CMD_REGISTER) {
		sqe->addr = (uint64_t)(uintptr_t)e->iov;
		sqe->len = 2;
		e->state = FXE_REGISTERING;
	} else {
		req.commit_id = e->unique;
		e->state = FXE_FETCHING;
	}
	memcpy(sqe->cmd, &req, sizeof(req));
	io_uring_sqe_set_data(sqe, e);
	bks_defer_schedule(&r->submit);
}

static void submit_now(struct fx_ring *r)
{
	int rc;

	if (io_uring_sq_ready(&r->ring) == 0)
		return;
	rc = io_uring_submit(&r->ring);
	/* Out of memory for now (EAGAIN, EBUSY), or a signal: try again. */
	if (rc < 0 || io_uring_sq_ready(&r->ring) > 0)
		bks_timer_arm(&r->retry, FX_URING_RETRY_NS);
}

static void on_submit(struct bks_defer *d)
{
	submit_now(d->opaque);
}

static void on_retry(struct bks_timer *t)
{
	submit_now(t->opaque);
}

/* Whether every queue still has an entry with the kernel. */
static bool all_queues_served(const struct fx_ring *r)
{
	for (unsigned int q = 0; q < r->nq; q++) {
		bool any = false;

		for (unsigned int i = 0; i < r->depth && !any; i++) {
			uint8_t s = r->ents[q * r->depth + i].state;

			any = s != FXE_IDLE && s != FXE_DEAD;
		}
		if (!any)
			return false;
	}
	return true;
}

/* A request is in entry e: check it and hand it over. */
static void got_request(struct fx_ring *r, struct fx_ent *e)
{
	struct fx *fx = r->fx;
	const struct fuse_in_header *in = (const void *)e->hdr->in_out;
	const struct fxu_ent_in_out *io = &e->hdr->ring_ent_in_out;
	size_t psz = io->payload_sz, oplen;

	e->state = FXE_HELD;
	e->owned = false;
	e->unique = io->commit_id;
	/*
	 * Shutting down: no new request goes into the chain (as on
	 * /dev/fuse, where none is read any more); the kernel fails it when
	 * the connection ends, after the ring.
	 */
	if (fx->stopping || fx->ended)
		return;
	if (psz > BKS_FUSE_MAX_IO || in->len < sizeof(*in) + psz ||
	    (oplen = in->len - sizeof(*in) - psz) > FXU_OP_IN_OUT_SZ ||
	    in->unique != io->commit_id) {
		fx->st.requests++;
		fx->st.errors++;
		fx_uring_reply(e, EIO, NULL, 0);
		return;
	}
	fx->cur_ent = e;
	r->fn(fx, in, e->hdr->op_in, oplen, e->payload, psz);
	fx->cur_ent = NULL;
	/* Nothing answered it nor took it over: say so, or it is lost. */
	if (e->state == FXE_HELD && !e->owned)
		fx_uring_reply(e, ENOSYS, NULL, 0);
}

static void complete(struct fx_ring *r, struct fx_ent *e, int res)
{
	if (res == 0 &&
	    (e->state == FXE_REGISTERING || e->state == FXE_FETCHING)) {
		got_request(r, e);
		return;
	}
	/*
	 * The answer was refused (-ENOENT: the kernel no longer waits for
	 * it; -EINVAL: it found it malformed): the kernel keeps the entry
	 * it had, ours is registered again as a new one.
	 */
	if (e->state == FXE_FETCHING && (res == -ENOENT || res == -EINVAL) &&
	    !r->fx->stopping && !r->fx->ended) {
		prep_cmd(r, e, FXU_CMD_REGISTER);
		return;
	}
	/* -ENOTCONN, -ECONNABORTED, -ECANCELED: the connection or the
	 * ring goes; a failed registration (-EOPNOTSUPP, -ENOMEM). */
	e->state = e->state == FXE_REGISTERING ? FXE_IDLE : FXE_DEAD;
	if (!all_queues_served(r))
		r->fx->transport = BKS_FUSE_TRANSPORT_READV;
}

static void on_ring(struct bks_watch *w, uint32_t events)
{
	struct fx_ring *r = w->opaque;
	struct io_uring_cqe *cqe;

	(void)events;
	/* One at a time: a callback may prepare SQEs, never free r. */
	while (r->fx->ring == r && io_uring_peek_cqe(&r->ring, &cqe) == 0) {
		struct fx_ent *e = io_uring_cqe_get_data(cqe);
		int res = cqe->res;

		io_uring_cqe_seen(&r->ring, cqe);
		complete(r, e, res);
	}
}

int fx_uring_reply(struct fx_ent *e, int error, const struct iovec *iov, int n)
{
	struct fx_ring *r = e->fx->ring;
	struct fuse_out_header oh = {.error = -error, .unique = e->unique};
	size_t len = 0;

	if (!r || e->state != FXE_HELD)
		return -ENOTCONN;
	for (int i = 0; !error && i < n; i++) {
		if (iov[i].iov_len > BKS_FUSE_MAX_IO - len)
			return -EINVAL;
		/* A READ was read into the payload: already in place. */
		if (iov[i].iov_base != e->payload + len)
			memcpy(e->payload + len, iov[i].iov_base,
			       iov[i].iov_len);
		len += iov[i].iov_len;
	}
	oh.len = (uint32_t)(sizeof(oh) + len);
	memcpy(e->hdr->in_out, &oh, sizeof(oh));
	e->hdr->ring_ent_in_out.payload_sz = (uint32_t)len;
	e->owned = false;
	prep_cmd(r, e, FXU_CMD_COMMIT_AND_FETCH);
	return 0;
}

/*
 * keep: requests are still in the chain (a forced stop), with their
 * entries and maybe their buffers: those stay, as the pool's do.
 */
static void ring_free(struct fx_ring *r, bool keep)
{
	if (r->watching)
		bks_watch_del(&r->w);
	bks_defer_cancel(&r->submit);
	bks_timer_cancel(&r->retry);
	/* Closing the ring cancels its commands: the kernel lets go of our
	 * buffers and of its references to /dev/fuse. */
	if (r->ring_ok)
		io_uring_queue_exit(&r->ring);
	if (keep)
		return;
	if (r->mem)
		munmap(r->mem, r->mem_len);
	free(r->hdrs);
	free(r->ents);
	free(r);
}

int fx_uring_start(struct fx *fx, fx_ring_request_fn *fn, struct bks_error *err)
{
	struct fx_ring *r = calloc(1, sizeof(*r));
	unsigned int per;
	int rc = 0;

	if (!r) {
		rc = bks_error_set(err, ENOMEM, "FUSE over io_uring");
		goto out;
	}
	r->fx = fx;
	r->fn = fn;
	bks_defer_init(fx->loop, &r->submit, on_submit, r);
	bks_timer_init(fx->loop, &r->retry, on_retry, r);
	r->nq = possible_cpus();
	if (r->nq > UINT16_MAX + 1u) {
		rc = bks_error_setmsg(err, EINVAL,
				      "FUSE over io_uring: %u CPUs: too many "
				      "queues",
				      r->nq);
		goto out;
	}
	per = BKS_FUSE_MAX_BACKGROUND / r->nq;
	r->depth = per < FX_URING_MIN_DEPTH   ? FX_URING_MIN_DEPTH
		   : per > FX_URING_MAX_DEPTH ? FX_URING_MAX_DEPTH
					      : per;
	r->n = r->nq * r->depth;
	r->ents = calloc(r->n, sizeof(*r->ents));
	r->hdrs = calloc(r->n, sizeof(*r->hdrs));
	if (!r->ents || !r->hdrs) {
		rc = bks_error_set(err, ENOMEM,
				   "FUSE over io_uring: %u entries", r->n);
		goto out;
	}
	/* Pages are only touched as requests use them. */
	r->mem_len = (size_t)r->n * BKS_FUSE_MAX_IO;
	r->mem = mmap(NULL, r->mem_len, PROT_READ | PROT_WRITE,
		      MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (r->mem == MAP_FAILED) {
		r->mem = NULL;
		rc = bks_error_set(err, errno,
				   "FUSE over io_uring: map %u payload buffers",
				   r->n);
		goto out;
	}
	rc = io_uring_queue_init(r->n, &r->ring, IORING_SETUP_SQE128);
	if (rc < 0) {
		rc =
		    bks_error_set(err, -rc,
				  "FUSE over io_uring: io_uring_queue_init(%u, "
				  "SQE128)",
				  r->n);
		goto out;
	}
	r->ring_ok = true;
	rc = bks_watch_add(fx->loop, &r->w, r->ring.ring_fd, EPOLLIN, on_ring,
			   r);
	if (rc < 0) {
		rc = bks_error_set(err, -rc, "FUSE over io_uring: watch ring");
		goto out;
	}
	r->watching = true;
	fx->ring = r;
	for (unsigned int i = 0; i < r->n; i++) {
		struct fx_ent *e = &r->ents[i];

		e->fx = fx;
		e->hdr = &r->hdrs[i];
		e->payload = r->mem + (size_t)i * BKS_FUSE_MAX_IO;
		e->iov[0] = (struct iovec){.iov_base = e->hdr,
					   .iov_len = sizeof(*e->hdr)};
		e->iov[1] = (struct iovec){.iov_base = e->payload,
					   .iov_len = BKS_FUSE_MAX_IO};
		e->qid = (uint16_t)(i / r->depth);
		prep_cmd(r, e, FXU_CMD_REGISTER);
	}
	/* Now, not at the end of the iteration: the kernel switches to the
	 * ring as soon as every queue has an entry. */
	rc = io_uring_submit(&r->ring);
	if (rc < 0) {
		fx->ring = NULL;
		rc = bks_error_set(
		    err, -rc, "FUSE over io_uring: register %u entries", r->n);
		goto out;
	}
	fx->transport = BKS_FUSE_TRANSPORT_URING;
	r = NULL;
	rc = 0;
out:
	if (r)
		ring_free(r, false);
	return rc;
}

void fx_uring_stop(struct fx *fx)
{
	struct fx_ring *r = fx->ring;

	if (!r)
		return;
	/* The answers prepared go out before the ring does. */
	if (io_uring_sq_ready(&r->ring) > 0)
		io_uring_submit(&r->ring);
	fx->ring = NULL;
	ring_free(r, fx->in_flight > 0);
}
