/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Unit tests: the NBD export (libblkstack/export/nbd/), driven by a
 * hand-written client on a Unix socket in the same thread.  The client
 * never blocks: while it waits for bytes it runs the server's loop.
 *
 * What the real clients of tests/bats/nbd.bats cannot easily show:
 * hold/resume (the chain's drain, through the export interface), shutdown with
 * held and in-flight requests, the connection limit, stalling at the in-flight
 * limit, error mapping, a client vanishing with requests in the chain, and
 * reads and writes that ignore the block size (read-modify-write).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "blkstack/chain.h"
#include "blkstack/nbd-proto.h"
#include "blkstack/nbd-server.h"
#include "unit-util.h"

/* How long the client waits for the server, in loop iterations of 10 ms. */
#define WAIT_ROUNDS 500

struct fx {
	struct bks_loop *loop;
	struct bks_chain *chain;
	struct bks_export *srv;
	int lfd;
	int quiesced, done;
};

/* ---- the fixture --------------------------------------------------------- */

static void fx_start(struct fx *fx, const char *chain,
		     const struct bks_nbd_config *cfg)
{
	struct bks_error err = {0};
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	int rc;

	/* An abstract socket: nothing to clean up in the file system. */
	snprintf(sa.sun_path + 1, sizeof(sa.sun_path) - 1,
		 "blkstack-test-nbd-%d-%p", (int)getpid(), (void *)fx);
	assert_int_equal(bks_loop_new(&fx->loop, &err), 0);
	rc = bks_chain_open(&fx->chain, chain, fx->loop, false, &err);
	if (rc < 0)
		fail_msg("%s: %s", chain, err.msg);
	fx->lfd =
	    socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	assert_true(fx->lfd >= 0);
	assert_int_equal(bind(fx->lfd, (struct sockaddr *)&sa, sizeof(sa)), 0);
	assert_int_equal(listen(fx->lfd, 16), 0);
	rc = bks_nbd_export_new(&fx->srv, fx->loop, fx->chain, fx->lfd, cfg,
				&err);
	if (rc < 0)
		fail_msg("server: %s", err.msg);
	assert_string_equal(bks_export_name(fx->srv), "nbd");
	assert_int_equal(bks_export_start(fx->srv, &err), 0);
	assert_int_equal(bks_export_start(fx->srv, &err), -EALREADY);
}

static void on_done(void *arg)
{
	((struct fx *)arg)->done++;
}

static void on_quiesced(void *arg)
{
	((struct fx *)arg)->quiesced++;
}

static void pump(struct fx *fx, int rounds)
{
	for (int i = 0; i < rounds; i++)
		bks_loop_run_once(fx->loop, 10);
}

/* Shut down, wait for the end, free everything. */
static void fx_stop(struct fx *fx)
{
	int before = fx->done;

	/* A second shutdown (after one) calls its callback once more. */
	bks_export_shutdown(fx->srv, on_done, fx);
	for (int i = 0; i < WAIT_ROUNDS && fx->done == before; i++)
		bks_loop_run_once(fx->loop, 10);
	assert_int_equal(fx->done, before + 1);
	assert_int_equal(bks_chain_in_flight(fx->chain), 0);
	bks_export_free(fx->srv);
	close(fx->lfd);
	bks_chain_close(fx->chain);
	bks_loop_free(fx->loop);
}

static struct bks_export_stats stats(const struct fx *fx)
{
	struct bks_export_stats st;

	bks_export_get_stats(fx->srv, &st);
	return st;
}

/* The chain's counters: a hold's parked requests are there. */
static struct bks_chain_stats chain_stats(const struct fx *fx)
{
	struct bks_chain_stats st;

	bks_chain_get_stats(fx->chain, &st);
	return st;
}

/* ---- the client ---------------------------------------------------------- */

static int cl_connect(struct fx *fx)
{
	struct sockaddr_un sa;
	socklen_t len = sizeof(sa);
	int fd;

	assert_int_equal(getsockname(fx->lfd, (struct sockaddr *)&sa, &len), 0);
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	assert_true(fd >= 0);
	assert_int_equal(connect(fd, (struct sockaddr *)&sa, len), 0);
	return fd;
}

static void cl_send(struct fx *fx, int fd, const void *buf, size_t n)
{
	const unsigned char *p = buf;

	for (int i = 0; n > 0; i++) {
		ssize_t w = send(fd, p, n, MSG_NOSIGNAL);

		if (w > 0) {
			p += w;
			n -= (size_t)w;
			continue;
		}
		assert_true(w < 0 && errno == EAGAIN);
		assert_true(i < WAIT_ROUNDS);
		bks_loop_run_once(fx->loop, 10);
	}
}

/* Receive exactly n bytes, running the server meanwhile. */
static void cl_recv(struct fx *fx, int fd, void *buf, size_t n)
{
	unsigned char *p = buf;

	for (int i = 0; n > 0; i++) {
		ssize_t r = recv(fd, p, n, 0);

		if (r > 0) {
			p += r;
			n -= (size_t)r;
			continue;
		}
		if (r == 0)
			fail_msg("the server closed the connection");
		assert_true(errno == EAGAIN);
		if (i >= WAIT_ROUNDS)
			fail_msg("no answer from the server");
		bks_loop_run_once(fx->loop, 10);
	}
}

/* Does the server close fd (within the time limit)? */
static bool cl_closed(struct fx *fx, int fd)
{
	unsigned char b[4096];

	for (int i = 0; i < WAIT_ROUNDS; i++) {
		ssize_t r = recv(fd, b, sizeof(b), 0);

		if (r == 0 || (r < 0 && errno == ECONNRESET))
			return true;
		if (r < 0 && errno != EAGAIN)
			return true;
		if (r < 0)
			bks_loop_run_once(fx->loop, 10);
	}
	return false;
}

/* Nothing to read for a while (the server holds the request). */
static bool cl_quiet(struct fx *fx, int fd, int rounds)
{
	unsigned char b;

	for (int i = 0; i < rounds; i++) {
		bks_loop_run_once(fx->loop, 10);
		if (recv(fd, &b, 1, MSG_PEEK) >= 0)
			return false;
	}
	return true;
}

static void put32be(unsigned char *p, uint32_t v)
{
	p[0] = (unsigned char)(v >> 24);
	p[1] = (unsigned char)(v >> 16);
	p[2] = (unsigned char)(v >> 8);
	p[3] = (unsigned char)v;
}

static void put64be(unsigned char *p, uint64_t v)
{
	put32be(p, (uint32_t)(v >> 32));
	put32be(p + 4, (uint32_t)v);
}

static uint32_t get32be(const unsigned char *p)
{
	return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 |
	       (uint32_t)p[2] << 8 | p[3];
}

static uint64_t get64be(const unsigned char *p)
{
	return (uint64_t)get32be(p) << 32 | get32be(p + 4);
}

static void cl_option(struct fx *fx, int fd, uint32_t opt, const void *data,
		      uint32_t len)
{
	unsigned char h[16];

	put64be(h, NBD_IHAVEOPT);
	put32be(h + 8, opt);
	put32be(h + 12, len);
	cl_send(fx, fd, h, sizeof(h));
	if (len)
		cl_send(fx, fd, data, len);
}

/* One option reply: its type; its payload (up to size bytes) into buf. */
static uint32_t cl_opt_reply(struct fx *fx, int fd, void *buf, size_t size,
			     uint32_t *len)
{
	unsigned char h[20], skip[256];
	uint32_t n, type;

	cl_recv(fx, fd, h, sizeof(h));
	assert_true(get64be(h) == NBD_REP_MAGIC);
	type = get32be(h + 12);
	n = get32be(h + 16);
	if (len)
		*len = n;
	if (buf && n <= size) {
		cl_recv(fx, fd, buf, n);
	} else {
		while (n > 0) {
			uint32_t t = n < sizeof(skip) ? n : sizeof(skip);

			cl_recv(fx, fd, skip, t);
			n -= t;
		}
	}
	return type;
}

/* Greeting and client flags. */
static void cl_greet(struct fx *fx, int fd, uint32_t flags)
{
	unsigned char g[18], f[4];

	cl_recv(fx, fd, g, sizeof(g));
	assert_true(get64be(g) == NBD_MAGIC);
	assert_true(get64be(g + 8) == NBD_IHAVEOPT);
	put32be(f, flags);
	cl_send(fx, fd, f, sizeof(f));
}

struct export_info {
	uint64_t size;
	uint16_t flags;
	uint32_t bmin, bpref, bmax;
};

/* Negotiate (structured replies if asked) and GO. */
static int cl_open(struct fx *fx, bool structured, struct export_info *ei)
{
	unsigned char req[4 + 2 + 2], rep[64];
	int fd = cl_connect(fx);
	uint32_t type, len;

	cl_greet(fx, fd, NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES);
	if (structured) {
		cl_option(fx, fd, NBD_OPT_STRUCTURED_REPLY, NULL, 0);
		assert_int_equal(cl_opt_reply(fx, fd, NULL, 0, NULL),
				 NBD_REP_ACK);
	}
	put32be(req, 0);
	req[4] = 0;
	req[5] = 1;
	req[6] = 0;
	req[7] = NBD_INFO_BLOCK_SIZE;
	cl_option(fx, fd, NBD_OPT_GO, req, sizeof(req));
	while ((type = cl_opt_reply(fx, fd, rep, sizeof(rep), &len)) ==
	       NBD_REP_INFO) {
		unsigned int kind = (unsigned int)(rep[0] << 8 | rep[1]);

		if (ei && kind == NBD_INFO_EXPORT) {
			ei->size = get64be(rep + 2);
			ei->flags = (uint16_t)(rep[10] << 8 | rep[11]);
		} else if (ei && kind == NBD_INFO_BLOCK_SIZE) {
			ei->bmin = get32be(rep + 2);
			ei->bpref = get32be(rep + 6);
			ei->bmax = get32be(rep + 10);
		}
	}
	assert_int_equal(type, NBD_REP_ACK);
	return fd;
}

static void cl_request(struct fx *fx, int fd, uint16_t cmd, uint16_t flags,
		       uint64_t cookie, uint64_t offset, uint32_t len,
		       const void *data)
{
	unsigned char h[NBD_REQUEST_SIZE];

	put32be(h, NBD_REQUEST_MAGIC);
	h[4] = (unsigned char)(flags >> 8);
	h[5] = (unsigned char)flags;
	h[6] = (unsigned char)(cmd >> 8);
	h[7] = (unsigned char)cmd;
	put64be(h + 8, cookie);
	put64be(h + 16, offset);
	put32be(h + 24, len);
	cl_send(fx, fd, h, sizeof(h));
	if (cmd == NBD_CMD_WRITE && data)
		cl_send(fx, fd, data, len);
}

/*
 * One reply.  A simple reply to a read needs its length (rlen); a
 * structured one says it.  Data (if any) goes to buf.  Returns the
 * error; the cookie goes to *cookie.
 */
static uint32_t cl_reply(struct fx *fx, int fd, uint64_t *cookie, void *buf,
			 uint32_t rlen, char *msg, size_t msgsize)
{
	unsigned char h[20], e[6];
	uint32_t magic, err, len;
	uint16_t type;

	cl_recv(fx, fd, h, 4);
	magic = get32be(h);
	if (magic == NBD_SIMPLE_REPLY_MAGIC) {
		cl_recv(fx, fd, h + 4, 12);
		err = get32be(h + 4);
		*cookie = get64be(h + 8);
		if (err == 0 && rlen)
			cl_recv(fx, fd, buf, rlen);
		return err;
	}
	assert_true(magic == NBD_STRUCTURED_REPLY_MAGIC);
	cl_recv(fx, fd, h + 4, 16);
	assert_true(h[5] & NBD_REPLY_FLAG_DONE);
	type = (uint16_t)(h[6] << 8 | h[7]);
	*cookie = get64be(h + 8);
	len = get32be(h + 16);
	if (type == NBD_REPLY_TYPE_ERROR) {
		uint16_t n;

		cl_recv(fx, fd, e, sizeof(e));
		err = get32be(e);
		n = (uint16_t)(e[4] << 8 | e[5]);
		assert_int_equal(len, 6u + n);
		assert_true(n < msgsize);
		cl_recv(fx, fd, msg, n);
		msg[n] = '\0';
		return err;
	}
	if (type == NBD_REPLY_TYPE_OFFSET_DATA) {
		unsigned char off[8];

		cl_recv(fx, fd, off, 8);
		assert_int_equal(len - 8, rlen);
		cl_recv(fx, fd, buf, len - 8);
		return 0;
	}
	assert_true(type == NBD_REPLY_TYPE_BLOCK_STATUS);
	cl_recv(fx, fd, buf, len);
	return 0;
}

/* A request and its reply; returns the error. */
static uint32_t cl_cmd(struct fx *fx, int fd, uint16_t cmd, uint16_t flags,
		       uint64_t offset, uint32_t len, void *buf)
{
	char msg[256];
	uint64_t cookie;
	uint32_t err;

	cl_request(fx, fd, cmd, flags, 0xc0ffee, offset, len, buf);
	err = cl_reply(fx, fd, &cookie, buf, cmd == NBD_CMD_READ ? len : 0, msg,
		       sizeof(msg));
	assert_true(cookie == 0xc0ffee);
	return err;
}

static void cl_disc(struct fx *fx, int fd)
{
	cl_request(fx, fd, NBD_CMD_DISC, 0, 0, 0, 0, NULL);
	assert_true(cl_closed(fx, fd));
	close(fd);
}

/*
 * An aio: chain on a temporary file of size bytes, with data_len bytes of
 * data at data_off (the rest sparse); false (skip the test) without
 * O_DIRECT.  The file is unlinked once open, so that a failing test
 * leaves nothing behind.
 */
static bool fx_start_aio(struct fx *fx, uint64_t size, const char *filter,
			 const struct bks_nbd_config *cfg, uint64_t data_off,
			 size_t data_len)
{
	char chain[512], img[256];
	unsigned char d[4096];
	int fd;

	assert_int_equal(unit_tmpfile(img, sizeof(img), size), 0);
	fd = open(img, O_RDWR | O_DIRECT);
	if (fd < 0) {
		unlink(img);
		return false;
	}
	close(fd);
	fd = open(img, O_WRONLY);
	assert_true(fd >= 0);
	memset(d, 9, sizeof(d));
	for (size_t done = 0; done < data_len; done += sizeof(d))
		assert_int_equal(
		    pwrite(fd, d, sizeof(d), (off_t)(data_off + done)),
		    (ssize_t)sizeof(d));
	close(fd);
	snprintf(chain, sizeof(chain), "%saio:%s", filter, img);
	fx_start(fx, chain, cfg);
	unlink(img);
	return true;
}

/* ---- tests --------------------------------------------------------------- */

static const struct bks_nbd_config default_cfg = {.name = "disk"};

static void test_negotiation(void **state)
{
	struct fx fx = {0};
	struct export_info ei = {0};
	unsigned char buf[512];
	int fd;

	(void)state;
	fx_start(&fx, "ram:1M", &default_cfg);
	fd = cl_open(&fx, true, &ei);
	assert_int_equal(ei.size, 1 << 20);
	assert_int_equal(ei.flags, NBD_FLAG_HAS_FLAGS | NBD_FLAG_SEND_FLUSH |
				       NBD_FLAG_SEND_FUA | NBD_FLAG_SEND_TRIM |
				       NBD_FLAG_SEND_WRITE_ZEROES |
				       NBD_FLAG_CAN_MULTI_CONN |
				       NBD_FLAG_SEND_DF);
	assert_int_equal(ei.bmin, 512);
	assert_int_equal(ei.bpref, 4096);
	assert_int_equal(ei.bmax, BKS_NBD_MAX_PAYLOAD);
	memset(buf, 0x5a, sizeof(buf));
	assert_int_equal(
	    cl_cmd(&fx, fd, NBD_CMD_WRITE, NBD_CMD_FLAG_FUA, 512, 512, buf), 0);
	memset(buf, 0, sizeof(buf));
	assert_int_equal(
	    cl_cmd(&fx, fd, NBD_CMD_READ, NBD_CMD_FLAG_DF, 512, 512, buf), 0);
	assert_true(buf[0] == 0x5a && buf[511] == 0x5a);
	assert_int_equal(cl_cmd(&fx, fd, NBD_CMD_FLUSH, 0, 0, 0, NULL), 0);
	cl_disc(&fx, fd);
	/* Without structured replies: no DF, simple replies. */
	fd = cl_open(&fx, false, &ei);
	assert_false(ei.flags & NBD_FLAG_SEND_DF);
	assert_int_equal(
	    cl_cmd(&fx, fd, NBD_CMD_READ, NBD_CMD_FLAG_DF, 0, 512, buf),
	    NBD_EINVAL);
	assert_int_equal(cl_cmd(&fx, fd, NBD_CMD_READ, 0, 512, 512, buf), 0);
	assert_true(buf[0] == 0x5a);
	cl_disc(&fx, fd);
	assert_int_equal(stats(&fx).connections_total, 2);
	assert_int_equal(stats(&fx).bytes_written, 512);
	fx_stop(&fx);
}

static void test_bad_client(void **state)
{
	struct fx fx = {0};
	unsigned char junk[64];
	int fd;

	(void)state;
	fx_start(&fx, "ram:1M", &default_cfg);
	fd = cl_connect(&fx);
	cl_greet(&fx, fd, NBD_FLAG_C_FIXED_NEWSTYLE | 0x100);
	assert_true(cl_closed(&fx, fd));
	close(fd);
	fd = cl_connect(&fx);
	cl_greet(&fx, fd, NBD_FLAG_C_FIXED_NEWSTYLE);
	memset(junk, 0xab, sizeof(junk));
	cl_send(&fx, fd, junk, sizeof(junk));
	assert_true(cl_closed(&fx, fd));
	close(fd);
	fd = cl_open(&fx, true, NULL);
	cl_send(&fx, fd, junk, sizeof(junk)); /* bad request magic */
	assert_true(cl_closed(&fx, fd));
	close(fd);
	assert_int_equal(stats(&fx).dropped, 3);
	assert_int_equal(stats(&fx).connections, 0);
	fx_stop(&fx);
}

static void test_options(void **state)
{
	struct fx fx = {0};
	unsigned char buf[300];
	uint32_t len;
	int fd;

	(void)state;
	fx_start(&fx, "ram:1M", &default_cfg);
	fd = cl_connect(&fx);
	cl_greet(&fx, fd, NBD_FLAG_C_FIXED_NEWSTYLE);
	cl_option(&fx, fd, NBD_OPT_LIST, NULL, 0);
	assert_int_equal(cl_opt_reply(&fx, fd, buf, sizeof(buf), &len),
			 NBD_REP_SERVER);
	assert_int_equal(len, 8);
	assert_int_equal(get32be(buf), 4);
	assert_memory_equal(buf + 4, "disk", 4);
	assert_int_equal(cl_opt_reply(&fx, fd, NULL, 0, NULL), NBD_REP_ACK);
	cl_option(&fx, fd, NBD_OPT_STARTTLS, NULL, 0);
	assert_int_equal(cl_opt_reply(&fx, fd, NULL, 0, NULL),
			 NBD_REP_ERR_POLICY);
	cl_option(&fx, fd, 77, "xyz", 3);
	assert_int_equal(cl_opt_reply(&fx, fd, NULL, 0, NULL),
			 NBD_REP_ERR_UNSUP);
	/* Too long: answered, its data skipped, and the session goes on. */
	{
		size_t n = 200000;
		unsigned char *big = calloc(1, n);

		assert_non_null(big);
		cl_option(&fx, fd, NBD_OPT_GO, big, (uint32_t)n);
		free(big);
	}
	assert_int_equal(cl_opt_reply(&fx, fd, NULL, 0, NULL),
			 NBD_REP_ERR_TOO_BIG);
	/* ram: has no extents: no base:allocation to list. */
	cl_option(&fx, fd, NBD_OPT_STRUCTURED_REPLY, NULL, 0);
	assert_int_equal(cl_opt_reply(&fx, fd, NULL, 0, NULL), NBD_REP_ACK);
	memset(buf, 0, 8);
	cl_option(&fx, fd, NBD_OPT_LIST_META_CONTEXT, buf, 8);
	assert_int_equal(cl_opt_reply(&fx, fd, NULL, 0, NULL), NBD_REP_ACK);
	/* An export by name, and one that does not exist. */
	put32be(buf, 4);
	memcpy(buf + 4, "disk", 4);
	buf[8] = buf[9] = 0;
	cl_option(&fx, fd, NBD_OPT_INFO, buf, 10);
	while (cl_opt_reply(&fx, fd, NULL, 0, NULL) == NBD_REP_INFO)
		;
	memcpy(buf + 4, "nope", 4);
	cl_option(&fx, fd, NBD_OPT_GO, buf, 10);
	assert_int_equal(cl_opt_reply(&fx, fd, NULL, 0, NULL),
			 NBD_REP_ERR_UNKNOWN);
	cl_option(&fx, fd, NBD_OPT_ABORT, NULL, 0);
	assert_int_equal(cl_opt_reply(&fx, fd, NULL, 0, NULL), NBD_REP_ACK);
	assert_true(cl_closed(&fx, fd));
	close(fd);
	assert_int_equal(stats(&fx).dropped, 0);
	fx_stop(&fx);
}

static void test_request_errors(void **state)
{
	struct bks_nbd_config cfg = {.name = "disk", .read_only = true};
	struct fx fx = {0};
	struct export_info ei = {0};
	unsigned char buf[1024] = {0};
	int fd;

	(void)state;
	fx_start(&fx, "ram:1M", &cfg);
	fd = cl_open(&fx, true, &ei);
	assert_int_equal(ei.flags, NBD_FLAG_HAS_FLAGS | NBD_FLAG_READ_ONLY |
				       NBD_FLAG_SEND_FLUSH |
				       NBD_FLAG_CAN_MULTI_CONN |
				       NBD_FLAG_SEND_DF);
	assert_int_equal(cl_cmd(&fx, fd, NBD_CMD_WRITE, 0, 0, 512, buf),
			 NBD_EPERM);
	assert_int_equal(cl_cmd(&fx, fd, NBD_CMD_TRIM, 0, 0, 512, NULL),
			 NBD_EPERM);
	assert_int_equal(cl_cmd(&fx, fd, NBD_CMD_READ, 0, 1 << 20, 512, buf),
			 NBD_EINVAL);
	assert_int_equal(cl_cmd(&fx, fd, NBD_CMD_READ, 0, 0, 64u << 20, buf),
			 NBD_EOVERFLOW);
	assert_int_equal(cl_cmd(&fx, fd, NBD_CMD_CACHE, 0, 0, 512, NULL),
			 NBD_EINVAL);
	assert_int_equal(cl_cmd(&fx, fd, NBD_CMD_BLOCK_STATUS, 0, 0, 512, NULL),
			 NBD_EINVAL);
	assert_int_equal(cl_cmd(&fx, fd, NBD_CMD_READ, 0, 100, 1000, buf), 0);
	cl_disc(&fx, fd);
	assert_int_equal(stats(&fx).errors, 6);
	fx_stop(&fx);
}

/* Errors of the chain, as the protocol spells them. */
static void test_error_mapping(void **state)
{
	static const struct {
		const char *chain;
		uint32_t nbd;
	} cases[] = {
	    {"error:ops=write,errno=EIO|ram:1M", NBD_EIO},
	    {"error:ops=write,errno=EROFS|ram:1M", NBD_EPERM},
	    {"error:ops=write,errno=ENOSPC|ram:1M", NBD_ENOSPC},
	    {"error:ops=write,errno=EDQUOT|ram:1M", NBD_ENOSPC},
	    {"error:ops=write,errno=EOPNOTSUPP|ram:1M", NBD_ENOTSUP},
	    {"error:ops=write,errno=EBUSY|ram:1M", NBD_EIO},
	};
	unsigned char buf[4096] = {0};
	char msg[256];

	(void)state;
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct fx fx = {0};
		uint64_t cookie;
		int fd;

		fx_start(&fx, cases[i].chain, &default_cfg);
		fd = cl_open(&fx, true, NULL);
		cl_request(&fx, fd, NBD_CMD_WRITE, 0, 1, 0, 4096, buf);
		assert_int_equal(
		    cl_reply(&fx, fd, &cookie, NULL, 0, msg, sizeof(msg)),
		    cases[i].nbd);
		assert_non_null(strstr(msg, "write"));
		/* Unaligned: the error comes from the write of the RMW. */
		cl_request(&fx, fd, NBD_CMD_WRITE, 0, 2, 100, 1000, buf);
		assert_int_equal(
		    cl_reply(&fx, fd, &cookie, NULL, 0, msg, sizeof(msg)),
		    cases[i].nbd);
		/* Reads still work. */
		assert_int_equal(cl_cmd(&fx, fd, NBD_CMD_READ, 0, 0, 512, buf),
				 0);
		cl_disc(&fx, fd);
		fx_stop(&fx);
	}
}

/* Reads and writes at any byte, checked against a model. */
static void test_unaligned(void **state)
{
	enum {
		SPAN = 256 << 10
	};
	unsigned char *model = calloc(1, SPAN), *buf = malloc(SPAN);
	uint64_t seed = 1;
	struct fx fx = {0};
	int fd;

	(void)state;
	assert_non_null(model);
	assert_non_null(buf);
	fx_start(&fx, "ram:1M", &default_cfg);
	fd = cl_open(&fx, true, NULL);
	for (int i = 0; i < 200; i++) {
		uint32_t off, len;
		uint16_t cmd =
		    i % 5 == 4 ? NBD_CMD_WRITE_ZEROES : NBD_CMD_WRITE;

		seed = seed * 6364136223846793005ull + 1442695040888963407ull;
		off = (uint32_t)(seed >> 33) % (SPAN - 1);
		len = 1 + (uint32_t)(seed >> 13) %
			      (SPAN - off < 20000 ? SPAN - off : 20000);
		if (cmd == NBD_CMD_WRITE)
			memset(model + off, i + 1, len);
		else
			memset(model + off, 0, len);
		assert_int_equal(cl_cmd(&fx, fd, cmd, 0, off, len, model + off),
				 0);
		off = (uint32_t)(seed >> 20) % (SPAN - 1);
		len = 1 + (uint32_t)(seed >> 7) % (SPAN - off);
		/* FUA is valid on every command, a read's too. */
		assert_int_equal(cl_cmd(&fx, fd, NBD_CMD_READ,
					i % 7 ? 0 : NBD_CMD_FLAG_FUA, off, len,
					buf),
				 0);
		assert_memory_equal(buf, model + off, len);
	}
	assert_int_equal(
	    cl_cmd(&fx, fd, NBD_CMD_FLUSH, NBD_CMD_FLAG_FUA, 0, 0, NULL), 0);
	cl_disc(&fx, fd);
	fx_stop(&fx);
	free(model);
	free(buf);
}

/*
 * Pipelined writes to different bytes of the same blocks, on aio: (so
 * that they are in flight together): read-modify-writes must not lose
 * each other's bytes.
 */
static void test_rmw_overlap(void **state)
{
	unsigned char data[100], model[8192], got[8192];
	struct fx fx = {0};
	uint64_t cookie;
	char msg[256];
	int fd;

	(void)state;
	if (!fx_start_aio(&fx, 1 << 20, "", &default_cfg, 0, 0))
		skip();
	fd = cl_open(&fx, true, NULL);
	memset(model, 0, sizeof(model));
	assert_int_equal(cl_cmd(&fx, fd, NBD_CMD_WRITE, 0, 0, 8192, model), 0);
	for (int i = 0; i < 60; i++) {
		/* Every 7th piece, in an order that jumps around. */
		uint32_t off = (uint32_t)((i * 7) % 60) * 130 + 3;

		memset(data, 0x30 + i, sizeof(data));
		memcpy(model + off, data, sizeof(data));
		cl_request(&fx, fd,
			   i % 3 ? NBD_CMD_WRITE : NBD_CMD_WRITE_ZEROES, 0,
			   (uint64_t)i, off, sizeof(data), data);
		if (i % 3 == 0)
			memset(model + off, 0, sizeof(data));
	}
	for (int i = 0; i < 60; i++)
		assert_int_equal(
		    cl_reply(&fx, fd, &cookie, NULL, 0, msg, sizeof(msg)), 0);
	assert_int_equal(cl_cmd(&fx, fd, NBD_CMD_READ, 0, 0, 8192, got), 0);
	assert_memory_equal(got, model, sizeof(model));
	cl_disc(&fx, fd);
	fx_stop(&fx);
}

static void test_hold_resume(void **state)
{
	unsigned char buf[4096];
	struct fx fx = {0};
	uint64_t cookie;
	char msg[256];
	int fd;

	(void)state;
	fx_start(&fx, "ram:1M", &default_cfg);
	fd = cl_open(&fx, true, NULL);
	/* Nothing in flight: quiesced at the next turn of the loop. */
	assert_int_equal(bks_export_hold(fx.srv, on_quiesced, &fx), 0);
	assert_int_equal(fx.quiesced, 0);
	pump(&fx, 2);
	assert_int_equal(fx.quiesced, 1);
	memset(buf, 0x77, sizeof(buf));
	cl_request(&fx, fd, NBD_CMD_WRITE, 0, 1, 0, sizeof(buf), buf);
	cl_request(&fx, fd, NBD_CMD_READ, 0, 2, 0, sizeof(buf), NULL);
	assert_true(cl_quiet(&fx, fd, 20));
	/* Received and submitted; the chain parks them. */
	assert_int_equal(stats(&fx).requests, 2);
	assert_int_equal(chain_stats(&fx).parked, 2);
	assert_int_equal(chain_stats(&fx).parked_total, 2);
	/* Holds nest: a second one is quiesced too, and needs its resume. */
	assert_int_equal(bks_export_hold(fx.srv, on_quiesced, &fx), 0);
	pump(&fx, 2);
	assert_int_equal(fx.quiesced, 2);
	assert_int_equal(bks_export_holds(fx.srv), 2);
	bks_export_resume(fx.srv);
	assert_true(cl_quiet(&fx, fd, 10));
	assert_int_equal(chain_stats(&fx).parked, 2);
	bks_export_resume(fx.srv);
	bks_export_resume(fx.srv); /* one too many: harmless */
	/* In arrival order: the read sees the write. */
	assert_int_equal(cl_reply(&fx, fd, &cookie, NULL, 0, msg, sizeof(msg)),
			 0);
	assert_true(cookie == 1);
	memset(buf, 0, sizeof(buf));
	assert_int_equal(
	    cl_reply(&fx, fd, &cookie, buf, sizeof(buf), msg, sizeof(msg)), 0);
	assert_true(cookie == 2 && buf[0] == 0x77 && buf[4095] == 0x77);
	assert_int_equal(chain_stats(&fx).parked, 0);
	cl_disc(&fx, fd);
	fx_stop(&fx);
}

/* Hold while a request is in the chain: quiesced when it completes. */
static void test_hold_in_flight(void **state)
{
	size_t n = 4 << 20;
	unsigned char *buf = malloc(n);
	struct fx fx = {0};
	uint64_t cookie;
	char msg[256];
	int fd, i;

	(void)state;
	assert_non_null(buf);
	if (!fx_start_aio(&fx, 8 << 20, "", &default_cfg, 0, 0)) {
		free(buf);
		skip();
	}
	fd = cl_open(&fx, true, NULL);
	memset(buf, 0x42, n);
	cl_request(&fx, fd, NBD_CMD_WRITE, 0, 1, 0, (uint32_t)n, buf);
	for (i = 0; i < WAIT_ROUNDS && stats(&fx).in_flight == 0; i++)
		bks_loop_run_once(fx.loop, 0);
	if (stats(&fx).in_flight == 0) {
		/* Completed before we could look: nothing to test here. */
		cl_reply(&fx, fd, &cookie, NULL, 0, msg, sizeof(msg));
		cl_disc(&fx, fd);
		fx_stop(&fx);
		free(buf);
		skip();
	}
	assert_int_equal(bks_export_hold(fx.srv, on_quiesced, &fx), 0);
	assert_int_equal(fx.quiesced, 0);
	for (i = 0; i < WAIT_ROUNDS && !fx.quiesced; i++)
		bks_loop_run_once(fx.loop, 10);
	assert_int_equal(fx.quiesced, 1);
	assert_int_equal(stats(&fx).in_flight, 0);
	assert_int_equal(cl_reply(&fx, fd, &cookie, NULL, 0, msg, sizeof(msg)),
			 0);
	bks_export_resume(fx.srv);
	cl_disc(&fx, fd);
	fx_stop(&fx);
	free(buf);
}

/*
 * Shutdown while held: the hold ends first, so the held request is served
 * (it is in the chain, parked: nothing is lost), then the client is
 * closed; a hold after the shutdown is refused.
 */
static void test_shutdown_held(void **state)
{
	unsigned char buf[512];
	struct fx fx = {0};
	uint64_t cookie;
	char msg[256];
	int fd, idle;

	(void)state;
	fx_start(&fx, "ram:1M", &default_cfg);
	fd = cl_open(&fx, true, NULL);
	idle = cl_connect(&fx); /* still negotiating: just closed */
	assert_int_equal(bks_export_hold(fx.srv, NULL, NULL), 0);
	cl_request(&fx, fd, NBD_CMD_READ, 0, 5, 0, sizeof(buf), NULL);
	assert_true(cl_quiet(&fx, fd, 10));
	assert_int_equal(chain_stats(&fx).parked, 1);
	bks_export_shutdown(fx.srv, on_done, &fx);
	assert_int_equal(bks_export_holds(fx.srv), 0);
	assert_int_equal(bks_export_hold(fx.srv, NULL, NULL), -ESHUTDOWN);
	assert_int_equal(
	    cl_reply(&fx, fd, &cookie, buf, sizeof(buf), msg, sizeof(msg)), 0);
	assert_true(cookie == 5);
	assert_true(cl_closed(&fx, fd));
	assert_true(cl_closed(&fx, idle));
	close(fd);
	close(idle);
	fx_stop(&fx); /* shutting down twice is fine */
}

/*
 * A full table evicts an idle connection for a newcomer (see nbd-server.h):
 * one that never sent a request before one that did, the youngest first;
 * one in the middle of a request never.  Only when none is idle is the
 * newcomer refused.  (All of these clients are of this one process, with
 * as many connections as the table holds: more than a multi-conn set, so
 * none is spared as the newcomer's own.)
 */
static void test_max_connections(void **state)
{
	struct bks_nbd_config cfg = {.name = "disk", .max_connections = 8};
	unsigned char buf[512], part[NBD_REQUEST_SIZE] = {0};
	struct fx fx = {0};
	uint64_t cookie;
	char msg[256];
	int a, f[6], b, c, d;

	(void)state;
	put32be(part, NBD_REQUEST_MAGIC);
	fx_start(&fx, "ram:1M", &cfg);
	a = cl_open(&fx, true, NULL);
	assert_int_equal(cl_cmd(&fx, a, NBD_CMD_READ, 0, 0, 512, buf), 0);
	/* Six that are busy: half a request each. */
	for (int i = 0; i < 6; i++) {
		f[i] = cl_open(&fx, true, NULL);
		cl_send(&fx, f[i], part, 10);
	}
	b = cl_open(&fx, true, NULL);
	pump(&fx, 5);
	/* b never sent a request: it goes, a (older, used) stays. */
	c = cl_open(&fx, true, NULL);
	assert_true(cl_closed(&fx, b));
	assert_int_equal(stats(&fx).evicted, 1);
	assert_int_equal(cl_cmd(&fx, a, NBD_CMD_READ, 0, 0, 512, buf), 0);
	assert_int_equal(cl_cmd(&fx, c, NBD_CMD_READ, 0, 0, 512, buf), 0);
	/* Both used: the younger goes (seniority). */
	d = cl_open(&fx, true, NULL);
	assert_true(cl_closed(&fx, c));
	assert_int_equal(cl_cmd(&fx, a, NBD_CMD_READ, 0, 0, 512, buf), 0);
	/* d never sent a request: it goes before a. */
	close(b);
	b = cl_open(&fx, true, NULL);
	assert_true(cl_closed(&fx, d));
	assert_int_equal(stats(&fx).evicted, 3);
	/* All busy (half a request each): the newcomer is refused. */
	cl_send(&fx, a, part, 10);
	cl_send(&fx, b, part, 10);
	pump(&fx, 5);
	close(c);
	c = cl_connect(&fx);
	assert_true(cl_closed(&fx, c));
	assert_int_equal(stats(&fx).refused, 1);
	assert_int_equal(stats(&fx).evicted, 3);
	/* The halves are finished, and served. */
	cl_send(&fx, a, part + 10, sizeof(part) - 10);
	assert_int_equal(cl_reply(&fx, a, &cookie, NULL, 0, msg, sizeof(msg)),
			 NBD_EINVAL);
	cl_disc(&fx, a);
	for (int i = 0; i < 6; i++)
		close(f[i]);
	close(b);
	close(c);
	close(d);
	assert_int_equal(stats(&fx).connections_total, 11);
	fx_stop(&fx);
}

/*
 * The handshake deadline drops a client that does not negotiate; the
 * stall check drops one that stops in the middle of a request; one that
 * idles between requests is never dropped for it.
 */
static void test_timeouts(void **state)
{
	struct bks_nbd_config cfg = {
	    .name = "disk", .handshake_timeout_ms = 50, .stall_timeout_ms = 50};
	unsigned char buf[512], part[10] = {0};
	struct fx fx = {0};
	int slow, idle, stuck;

	(void)state;
	put32be(part, NBD_REQUEST_MAGIC);
	fx_start(&fx, "ram:1M", &cfg);
	slow = cl_connect(&fx);
	idle = cl_open(&fx, true, NULL);
	stuck = cl_open(&fx, true, NULL);
	cl_send(&fx, stuck, part, sizeof(part));
	assert_true(cl_closed(&fx, slow));
	assert_true(cl_closed(&fx, stuck));
	assert_int_equal(stats(&fx).timed_out, 2);
	/* Four times the stall timeout later, the idle one still serves. */
	assert_true(cl_quiet(&fx, idle, 20));
	assert_int_equal(cl_cmd(&fx, idle, NBD_CMD_READ, 0, 0, 512, buf), 0);
	assert_int_equal(stats(&fx).timed_out, 2);
	cl_disc(&fx, idle);
	close(slow);
	close(stuck);
	fx_stop(&fx);
}

/*
 * A client that sends reads and reads no reply: the server stops taking
 * its requests once BKS_NBD_CONN_OUT_HIGH of replies wait, and its
 * buffers stay within the connection's budget; everything is answered
 * once it reads.
 */
static void test_backpressure(void **state)
{
	struct bks_nbd_config cfg = {.name = "disk"};
	const uint32_t n = 1 << 20, count = 64;
	unsigned char *buf = malloc(n);
	struct fx fx = {0};
	uint64_t cookie, before;
	bool seen[64] = {false};
	int fd;

	(void)state;
	assert_non_null(buf);
	fx_start(&fx, "ram:4M", &cfg);
	fd = cl_open(&fx, true, NULL);
	for (uint32_t i = 0; i < count; i++)
		cl_request(&fx, fd, NBD_CMD_READ, 0, i, 0, n, NULL);
	pump(&fx, 50);
	before = stats(&fx).requests;
	pump(&fx, 50);
	/* Stopped, not taking requests any more. */
	assert_int_equal(stats(&fx).requests, before);
	assert_true(before < count);
	assert_true(stats(&fx).buffer_bytes <= BKS_NBD_CONN_BUF_BUDGET);
	for (uint32_t i = 0; i < count; i++) {
		assert_int_equal(cl_reply(&fx, fd, &cookie, buf, n, NULL, 0),
				 0);
		assert_true(cookie < count && !seen[cookie]);
		seen[cookie] = true;
	}
	assert_int_equal(stats(&fx).requests, count);
	assert_true(stats(&fx).buffer_bytes <= BKS_NBD_CONN_BUF_BUDGET);
	cl_disc(&fx, fd);
	fx_stop(&fx);
	free(buf);
}

/*
 * The server-wide buffer budget: two clients that do not read their
 * 32 MiB replies hold all of it; a third one's 32 MiB read waits until
 * one of them reads, while a small read (under the floor) of a fourth
 * is served at once.
 */
static void test_budget(void **state)
{
	/* b does not read for long under valgrind: no stall check here. */
	struct bks_nbd_config cfg = {.name = "disk",
				     .stall_timeout_ms = 3600000};
	const uint32_t big = BKS_NBD_MAX_PAYLOAD;
	unsigned char *buf = malloc(big);
	struct fx fx = {0};
	uint64_t cookie;
	int a, b, c, d;

	(void)state;
	assert_non_null(buf);
	fx_start(&fx, "ram:64M", &cfg);
	a = cl_open(&fx, true, NULL);
	b = cl_open(&fx, true, NULL);
	c = cl_open(&fx, true, NULL);
	d = cl_open(&fx, true, NULL);
	cl_request(&fx, a, NBD_CMD_READ, 0, 1, 0, big, NULL);
	cl_request(&fx, b, NBD_CMD_READ, 0, 2, 0, big, NULL);
	pump(&fx, 20);
	assert_int_equal(stats(&fx).buffer_bytes, BKS_NBD_SRV_BUF_BUDGET);
	cl_request(&fx, c, NBD_CMD_READ, 0, 3, 0, big, NULL);
	assert_true(cl_quiet(&fx, c, 20));
	assert_int_equal(stats(&fx).requests, 2);
	assert_int_equal(cl_cmd(&fx, d, NBD_CMD_READ, 0, 0, 65536, buf), 0);
	/* a takes its reply: its buffer goes to c. */
	assert_int_equal(cl_reply(&fx, a, &cookie, buf, big, NULL, 0), 0);
	assert_int_equal(cookie, 1);
	assert_int_equal(cl_reply(&fx, c, &cookie, buf, big, NULL, 0), 0);
	assert_int_equal(cookie, 3);
	assert_int_equal(cl_reply(&fx, b, &cookie, buf, big, NULL, 0), 0);
	assert_int_equal(cookie, 2);
	assert_true(stats(&fx).buffer_bytes <= BKS_NBD_SRV_BUF_BUDGET);
	cl_disc(&fx, a);
	cl_disc(&fx, b);
	cl_disc(&fx, c);
	cl_disc(&fx, d);
	fx_stop(&fx);
	free(buf);
}

/* More requests than max_in_flight, sent at once: the server stalls. */
static void test_stall(void **state)
{
	struct bks_nbd_config cfg = {.name = "disk", .max_in_flight = 2};
	unsigned char buf[4096];
	struct fx fx = {0};
	bool seen[50] = {false};
	uint64_t cookie;
	char msg[256];
	int fd;

	(void)state;
	fx_start(&fx, "ram:1M", &cfg);
	fd = cl_open(&fx, true, NULL);
	for (uint64_t i = 0; i < 50; i++)
		cl_request(&fx, fd, NBD_CMD_READ, 0, i, i * 4096, 4096, NULL);
	for (int i = 0; i < 50; i++) {
		assert_int_equal(cl_reply(&fx, fd, &cookie, buf, sizeof(buf),
					  msg, sizeof(msg)),
				 0);
		assert_true(cookie < 50 && !seen[cookie]);
		seen[cookie] = true;
	}
	assert_int_equal(stats(&fx).requests, 50);
	cl_disc(&fx, fd);
	fx_stop(&fx);
}

/* A client vanishes with requests in the chain: they complete into
 * nothing, and the connection is freed after (valgrind watches). */
static void test_vanish_in_flight(void **state)
{
	size_t n = 2 << 20;
	unsigned char *buf = malloc(n);
	struct fx fx = {0};
	int fd, i;

	(void)state;
	assert_non_null(buf);
	if (!fx_start_aio(&fx, 8 << 20, "log:|", &default_cfg, 0, 0)) {
		free(buf);
		skip();
	}
	fd = cl_open(&fx, true, NULL);
	memset(buf, 1, n);
	cl_request(&fx, fd, NBD_CMD_WRITE, 0, 1, 0, (uint32_t)n, buf);
	cl_request(&fx, fd, NBD_CMD_READ, 0, 2, 4 << 20, (uint32_t)n, NULL);
	cl_request(&fx, fd, NBD_CMD_WRITE, 0, 3, 1000, 5000, buf);
	/* Half a header, then gone. */
	cl_send(&fx, fd, "\x25\x60\x95", 3);
	for (i = 0; i < WAIT_ROUNDS && stats(&fx).in_flight == 0; i++)
		bks_loop_run_once(fx.loop, 0);
	close(fd);
	for (i = 0; i < WAIT_ROUNDS &&
		    (stats(&fx).connections || bks_chain_in_flight(fx.chain));
	     i++)
		bks_loop_run_once(fx.loop, 10);
	assert_int_equal(stats(&fx).connections, 0);
	assert_int_equal(stats(&fx).in_flight, 0);
	/* Another client is served. */
	fd = cl_open(&fx, true, NULL);
	assert_int_equal(cl_cmd(&fx, fd, NBD_CMD_READ, 0, 0, 4096, buf), 0);
	cl_disc(&fx, fd);
	fx_stop(&fx);
	free(buf);
}

/* Disconnect in the middle of a write payload. */
static void test_eof_mid_payload(void **state)
{
	unsigned char buf[8192] = {0};
	struct fx fx = {0};
	int fd;

	(void)state;
	fx_start(&fx, "ram:1M", &default_cfg);
	fd = cl_open(&fx, true, NULL);
	cl_request(&fx, fd, NBD_CMD_WRITE, 0, 1, 0, 65536, NULL);
	cl_send(&fx, fd, buf, sizeof(buf));
	close(fd);
	pump(&fx, 10);
	assert_int_equal(stats(&fx).connections, 0);
	assert_int_equal(stats(&fx).bytes_written, 0);
	fx_stop(&fx);
}

static void test_block_status(void **state)
{
	unsigned char buf[4 + 8 * 64], q[64];
	struct fx fx = {0};
	uint64_t cookie;
	uint32_t len;
	int fd;

	(void)state;
	/* A file with data at 1M..1M+64K only. */
	if (!fx_start_aio(&fx, 4 << 20, "", &default_cfg, 1 << 20, 65536))
		skip();
	fd = cl_connect(&fx);
	cl_greet(&fx, fd, NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES);
	cl_option(&fx, fd, NBD_OPT_STRUCTURED_REPLY, NULL, 0);
	assert_int_equal(cl_opt_reply(&fx, fd, NULL, 0, NULL), NBD_REP_ACK);
	put32be(q, 0);
	put32be(q + 4, 1);
	put32be(q + 8, 15);
	memcpy(q + 12, "base:allocation", 15);
	cl_option(&fx, fd, NBD_OPT_SET_META_CONTEXT, q, 27);
	assert_int_equal(cl_opt_reply(&fx, fd, buf, sizeof(buf), &len),
			 NBD_REP_META_CONTEXT);
	assert_int_equal(len, 4 + 15);
	assert_int_equal(cl_opt_reply(&fx, fd, NULL, 0, NULL), NBD_REP_ACK);
	q[0] = q[1] = q[2] = q[3] = 0;
	q[4] = 0;
	q[5] = 0;
	cl_option(&fx, fd, NBD_OPT_GO, q, 6);
	while (cl_opt_reply(&fx, fd, NULL, 0, NULL) == NBD_REP_INFO)
		;
	assert_int_equal(
	    cl_cmd(&fx, fd, NBD_CMD_BLOCK_STATUS, 0, 0, 4 << 20, buf), 0);
	assert_int_equal(get32be(buf), 1); /* our context id */
	/* hole+zero 0..1M, data 1M..1M+64K, hole after (file systems may
	 * allocate more around the write, so check the first two only). */
	assert_int_equal(get32be(buf + 4), 1 << 20);
	assert_int_equal(get32be(buf + 8), NBD_STATE_HOLE | NBD_STATE_ZERO);
	assert_true(get32be(buf + 12) >= 65536);
	assert_int_equal(get32be(buf + 16), 0);
	assert_int_equal(cl_cmd(&fx, fd, NBD_CMD_BLOCK_STATUS,
				NBD_CMD_FLAG_REQ_ONE, 0, 4 << 20, buf),
			 0);
	assert_int_equal(get32be(buf + 4), 1 << 20);
	assert_int_equal(
	    cl_cmd(&fx, fd, NBD_CMD_BLOCK_STATUS, 0, 4 << 20, 512, buf),
	    NBD_EINVAL);
	/*
	 * Block status is a request of the chain like any other: a hold
	 * parks it, and it is answered after the resume.
	 */
	assert_int_equal(bks_export_hold(fx.srv, NULL, NULL), 0);
	cl_request(&fx, fd, NBD_CMD_BLOCK_STATUS, 0, 9, 0, 4 << 20, NULL);
	assert_true(cl_quiet(&fx, fd, 10));
	assert_int_equal(chain_stats(&fx).parked, 1);
	bks_export_resume(fx.srv);
	assert_int_equal(cl_reply(&fx, fd, &cookie, buf, 0, NULL, 0), 0);
	assert_true(cookie == 9);
	assert_int_equal(get32be(buf), 1);
	assert_int_equal(get32be(buf + 4), 1 << 20);
	assert_int_equal(get32be(buf + 8), NBD_STATE_HOLE | NBD_STATE_ZERO);
	cl_disc(&fx, fd);
	fx_stop(&fx);
}

/* Send a META_CONTEXT option with queries (NULL-terminated) for "". */
static void cl_meta(struct fx *fx, int fd, uint32_t opt, const char *const *q)
{
	unsigned char b[256];
	uint32_t n = 0, pos = 8;

	put32be(b, 0);
	for (; q[n]; n++) {
		uint32_t l = (uint32_t)strlen(q[n]);

		assert_true(pos + 4 + l <= sizeof(b));
		put32be(b + pos, l);
		memcpy(b + pos + 4, q[n], l);
		pos += 4 + l;
	}
	put32be(b + 4, n);
	cl_option(fx, fd, opt, b, pos);
}

/* The next META_CONTEXT reply's id and name, or false at the ack. */
static bool cl_meta_reply(struct fx *fx, int fd, uint32_t *id, char *name,
			  size_t size)
{
	unsigned char b[256];
	uint32_t len, type = cl_opt_reply(fx, fd, b, sizeof(b), &len);

	if (type == NBD_REP_ACK)
		return false;
	assert_int_equal(type, NBD_REP_META_CONTEXT);
	assert_true(len >= 4 && len - 4 < size);
	*id = get32be(b);
	memcpy(name, b + 4, len - 4);
	name[len - 4] = '\0';
	return true;
}

/* One structured chunk header: flags, type, length; checks the cookie. */
static void cl_chunk(struct fx *fx, int fd, uint16_t *flags, uint16_t *type,
		     uint32_t *len)
{
	unsigned char h[20];

	cl_recv(fx, fd, h, sizeof(h));
	assert_true(get32be(h) == NBD_STRUCTURED_REPLY_MAGIC);
	*flags = (uint16_t)(h[4] << 8 | h[5]);
	*type = (uint16_t)(h[6] << 8 | h[7]);
	assert_true(get64be(h + 8) == 0xd0d0);
	*len = get32be(h + 16);
}

/*
 * qemu:allocation-depth beside base:allocation: listed, set with its own
 * id, and answered in the same reply as its own chunk, each extent's
 * status the depth (an aio: file has no parent: 1 everywhere, its holes
 * included).
 */
static void test_allocation_depth(void **state)
{
	static const char *const none[] = {NULL};
	static const char *const qemu_ns[] = {"qemu:", NULL};
	static const char *const both[] = {
	    "qemu:allocation-depth", "base:allocation", "qemu:allocation-depth",
	    "qemu:dirty-bitmap:x", NULL};
	static const char *const depth[] = {"qemu:allocation-depth", NULL};
	unsigned char buf[4 + 8 * 64], q[8];
	char name[64];
	struct fx fx = {0};
	uint16_t flags, type;
	uint32_t id, len;
	int fd;

	(void)state;
	if (!fx_start_aio(&fx, 4 << 20, "", &default_cfg, 1 << 20, 65536))
		skip();
	fd = cl_connect(&fx);
	cl_greet(&fx, fd, NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES);
	cl_option(&fx, fd, NBD_OPT_STRUCTURED_REPLY, NULL, 0);
	assert_int_equal(cl_opt_reply(&fx, fd, NULL, 0, NULL), NBD_REP_ACK);
	/* A listing without queries lists both, ids zero. */
	cl_meta(&fx, fd, NBD_OPT_LIST_META_CONTEXT, none);
	assert_true(cl_meta_reply(&fx, fd, &id, name, sizeof(name)));
	assert_string_equal(name, "base:allocation");
	assert_int_equal(id, 0);
	assert_true(cl_meta_reply(&fx, fd, &id, name, sizeof(name)));
	assert_string_equal(name, "qemu:allocation-depth");
	assert_int_equal(id, 0);
	assert_false(cl_meta_reply(&fx, fd, &id, name, sizeof(name)));
	/* The namespace lists its one context. */
	cl_meta(&fx, fd, NBD_OPT_LIST_META_CONTEXT, qemu_ns);
	assert_true(cl_meta_reply(&fx, fd, &id, name, sizeof(name)));
	assert_string_equal(name, "qemu:allocation-depth");
	assert_false(cl_meta_reply(&fx, fd, &id, name, sizeof(name)));
	/* Set: each once, with distinct ids; unknown ones are left out. */
	cl_meta(&fx, fd, NBD_OPT_SET_META_CONTEXT, both);
	assert_true(cl_meta_reply(&fx, fd, &id, name, sizeof(name)));
	assert_string_equal(name, "base:allocation");
	assert_int_equal(id, 1);
	assert_true(cl_meta_reply(&fx, fd, &id, name, sizeof(name)));
	assert_string_equal(name, "qemu:allocation-depth");
	assert_int_equal(id, 2);
	assert_false(cl_meta_reply(&fx, fd, &id, name, sizeof(name)));
	memset(q, 0, sizeof(q));
	cl_option(&fx, fd, NBD_OPT_GO, q, 6);
	while (cl_opt_reply(&fx, fd, NULL, 0, NULL) == NBD_REP_INFO)
		;
	cl_request(&fx, fd, NBD_CMD_BLOCK_STATUS, 0, 0xd0d0, 0, 4 << 20, NULL);
	/* First chunk: base:allocation, not done. */
	cl_chunk(&fx, fd, &flags, &type, &len);
	assert_int_equal(type, NBD_REPLY_TYPE_BLOCK_STATUS);
	assert_int_equal(flags & NBD_REPLY_FLAG_DONE, 0);
	assert_true(len >= 12 && len <= sizeof(buf) && (len - 4) % 8 == 0);
	cl_recv(&fx, fd, buf, len);
	assert_int_equal(get32be(buf), 1);
	assert_int_equal(get32be(buf + 4), 1 << 20);
	assert_int_equal(get32be(buf + 8), NBD_STATE_HOLE | NBD_STATE_ZERO);
	/* Second: the depth, done; all of it is the sink's own. */
	cl_chunk(&fx, fd, &flags, &type, &len);
	assert_int_equal(type, NBD_REPLY_TYPE_BLOCK_STATUS);
	assert_true(flags & NBD_REPLY_FLAG_DONE);
	assert_int_equal(len, 12);
	cl_recv(&fx, fd, buf, len);
	assert_int_equal(get32be(buf), 2);
	assert_int_equal(get32be(buf + 4), 4 << 20);
	assert_int_equal(get32be(buf + 8), 1);
	cl_disc(&fx, fd);

	/* The depth alone: one chunk, done, REQ_ONE honoured. */
	fd = cl_connect(&fx);
	cl_greet(&fx, fd, NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES);
	cl_option(&fx, fd, NBD_OPT_STRUCTURED_REPLY, NULL, 0);
	assert_int_equal(cl_opt_reply(&fx, fd, NULL, 0, NULL), NBD_REP_ACK);
	cl_meta(&fx, fd, NBD_OPT_SET_META_CONTEXT, depth);
	assert_true(cl_meta_reply(&fx, fd, &id, name, sizeof(name)));
	assert_int_equal(id, 2);
	assert_false(cl_meta_reply(&fx, fd, &id, name, sizeof(name)));
	cl_option(&fx, fd, NBD_OPT_GO, q, 6);
	while (cl_opt_reply(&fx, fd, NULL, 0, NULL) == NBD_REP_INFO)
		;
	cl_request(&fx, fd, NBD_CMD_BLOCK_STATUS, NBD_CMD_FLAG_REQ_ONE, 0xd0d0,
		   0, 4 << 20, NULL);
	cl_chunk(&fx, fd, &flags, &type, &len);
	assert_true(flags & NBD_REPLY_FLAG_DONE);
	assert_int_equal(len, 12);
	cl_recv(&fx, fd, buf, len);
	assert_int_equal(get32be(buf), 2);
	assert_int_equal(get32be(buf + 4), 1 << 20);
	assert_int_equal(get32be(buf + 8), 1);
	cl_disc(&fx, fd);
	fx_stop(&fx);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_negotiation),
	    cmocka_unit_test(test_bad_client),
	    cmocka_unit_test(test_options),
	    cmocka_unit_test(test_request_errors),
	    cmocka_unit_test(test_error_mapping),
	    cmocka_unit_test(test_unaligned),
	    cmocka_unit_test(test_rmw_overlap),
	    cmocka_unit_test(test_hold_resume),
	    cmocka_unit_test(test_hold_in_flight),
	    cmocka_unit_test(test_shutdown_held),
	    cmocka_unit_test(test_max_connections),
	    cmocka_unit_test(test_timeouts),
	    cmocka_unit_test(test_backpressure),
	    cmocka_unit_test(test_budget),
	    cmocka_unit_test(test_stall),
	    cmocka_unit_test(test_vanish_in_flight),
	    cmocka_unit_test(test_eof_mid_payload),
	    cmocka_unit_test(test_block_status),
	    cmocka_unit_test(test_allocation_depth),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
