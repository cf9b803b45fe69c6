/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Kernel NBD devices (/dev/nbdN) over generic netlink: see nbd-kernel.h.
 * The handshake before NBD_CMD_CONNECT and NBD_CMD_RECONFIGURE is
 * nbd-client.c's.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <linux/nbd-netlink.h>
#include <netlink/genl/ctrl.h>
#include <netlink/genl/genl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <unistd.h>

#include "blkstack/nbd-proto.h"
#include "conf.h"
#include "nbd-client.h"
#include "nbd-kernel.h"

/* "blkstack:" + a socket path + the newline. */
#define BACKEND_MAX (PATH_MAX + 32)

/* ---- configuration ------------------------------------------------------- */

static int conf_seconds(const char *text, const char *name, const char *key,
			unsigned int min, unsigned int *out,
			struct bks_error *err)
{
	const char *v;
	unsigned long n = 0;
	unsigned int lineno;
	size_t len, i;
	bool found;
	int ret;

	ret = conf_find(text, name, key, &v, &len, &lineno, &found, err);
	if (ret < 0 || !found)
		return ret;
	for (i = 0; i < len && i < 7; i++) {
		if (v[i] < '0' || v[i] > '9')
			break;
		n = n * 10 + (unsigned long)(v[i] - '0');
	}
	if (len == 0 || i != len || n < min || n > NBD_KERNEL_TIMEOUT_MAX)
		return bks_error_setmsg(err, EINVAL,
					"%s:%u: %s wants a number of seconds, "
					"%u to %u",
					name, lineno, key, min,
					NBD_KERNEL_TIMEOUT_MAX);
	*out = (unsigned int)n;
	return 0;
}

int nbd_kernel_conf_parse(const char *text, const char *name,
			  struct nbd_kernel_conf *conf, struct bks_error *err)
{
	int ret;

	conf->reconnect_timeout_s = NBD_KERNEL_RECONNECT_TIMEOUT_DEFAULT;
	conf->io_timeout_s = NBD_KERNEL_IO_TIMEOUT_DEFAULT;
	ret = conf_seconds(text, name, "reconnect-timeout", 0,
			   &conf->reconnect_timeout_s, err);
	if (ret == 0)
		ret = conf_seconds(text, name, "nbd-io-timeout", 1,
				   &conf->io_timeout_s, err);
	return ret;
}

int nbd_kernel_conf_read(struct nbd_kernel_conf *conf, struct bks_error *err)
{
	const char *name;
	char *text = NULL;
	int ret;

	ret = conf_read(&text, &name, err);
	if (ret == 0)
		ret = nbd_kernel_conf_parse(text, name, conf, err);
	free(text);
	return ret;
}

/* ---- netlink ------------------------------------------------------------- */

/*
 * A generic netlink socket and a message of cmd for the "nbd" family,
 * its header written: the start every command shares.
 */
static int nl_start(uint8_t cmd, struct nl_sock **out_sk,
		    struct nl_msg **out_msg, struct bks_error *err)
{
	struct nl_sock *sk;
	struct nl_msg *msg = NULL;
	int family, ret;

	*out_sk = NULL;
	*out_msg = NULL;
	sk = nl_socket_alloc();
	if (!sk)
		return bks_error_set(err, ENOMEM, "netlink socket");
	ret = genl_connect(sk);
	if (ret < 0) {
		ret = bks_error_setmsg(err, EIO, "generic netlink connect: %s",
				       nl_geterror(ret));
		goto fail;
	}
	family = genl_ctrl_resolve(sk, NBD_GENL_FAMILY_NAME);
	if (family < 0) {
		ret =
		    bks_error_setmsg(err, ENODEV,
				     "generic netlink family \"%s\": %s (is "
				     "the nbd kernel module loaded?)",
				     NBD_GENL_FAMILY_NAME, nl_geterror(family));
		goto fail;
	}
	msg = nlmsg_alloc();
	if (!msg) {
		ret = bks_error_set(err, ENOMEM, "netlink message");
		goto fail;
	}
	if (!genlmsg_put(msg, NL_AUTO_PORT, NL_AUTO_SEQ, family, 0, 0, cmd,
			 0)) {
		ret = bks_error_setmsg(err, EMSGSIZE, "netlink message header");
		goto fail;
	}
	*out_sk = sk;
	*out_msg = msg;
	return 0;
fail:
	nlmsg_free(msg);
	nl_socket_free(sk);
	return ret;
}

/*
 * Send msg (consumed) and take the reply, if any, and the ACK or error.
 * The kernel's errno comes back through libnl's codes; the message says
 * both.
 */
static int nl_call(struct nl_sock *sk, struct nl_msg *msg, const char *what,
		   unsigned int index, struct bks_error *err)
{
	int ret = nl_send_sync(sk, msg);

	if (ret < 0)
		return bks_error_setmsg(err, ret == -NLE_INVAL ? EINVAL : EIO,
					"%s /dev/nbd%u: %s", what, index,
					nl_geterror(ret));
	return 0;
}

/* NL_CB_VALID for NBD_CMD_CONNECT: the reply carries NBD_ATTR_INDEX. */
static int connect_reply_cb(struct nl_msg *msg, void *arg)
{
	struct genlmsghdr *gh = nlmsg_data(nlmsg_hdr(msg));
	struct nlattr *attrs[NBD_ATTR_MAX + 1];
	int64_t *index = arg;

	if (nla_parse(attrs, NBD_ATTR_MAX, genlmsg_attrdata(gh, 0),
		      genlmsg_attrlen(gh, 0), NULL) == 0 &&
	    attrs[NBD_ATTR_INDEX])
		*index = nla_get_u32(attrs[NBD_ATTR_INDEX]);
	return NL_OK;
}

/* NBD_ATTR_SOCKETS with the one socket fd. */
static int put_socket(struct nl_msg *msg, int fd)
{
	struct nlattr *socks, *item;

	if (!(socks = nla_nest_start(msg, NBD_ATTR_SOCKETS)) ||
	    !(item = nla_nest_start(msg, NBD_SOCK_ITEM)) ||
	    nla_put_u32(msg, NBD_SOCK_FD, (uint32_t)fd) < 0)
		return -EMSGSIZE;
	nla_nest_end(msg, item);
	nla_nest_end(msg, socks);
	return 0;
}

static void backend_id(char *buf, size_t size, const char *nbd_sock)
{
	snprintf(buf, size, NBD_KERNEL_BACKEND_PREFIX "%s", nbd_sock);
}

/* ---- sysfs --------------------------------------------------------------- */

bool nbd_kernel_connected(unsigned int index)
{
	char sys[64];

	snprintf(sys, sizeof(sys), "/sys/block/nbd%u/pid", index);
	return access(sys, F_OK) == 0;
}

int nbd_kernel_backend(unsigned int index, char *buf, size_t size)
{
	char sys[64], *text = NULL;
	size_t len;
	int ret;

	snprintf(sys, sizeof(sys), "/sys/block/nbd%u/backend", index);
	ret = conf_read_file(sys, &text, BACKEND_MAX, NULL);
	if (ret < 0)
		return ret;
	len = strcspn(text, "\n");
	text[len] = '\0';
	if (len >= size) {
		free(text);
		return -ENAMETOOLONG;
	}
	memcpy(buf, text, len + 1);
	free(text);
	return 0;
}

bool nbd_kernel_serves(unsigned int index, const char *nbd_sock)
{
	char have[BACKEND_MAX], want[BACKEND_MAX];

	if (!nbd_kernel_connected(index) ||
	    nbd_kernel_backend(index, have, sizeof(have)) < 0)
		return false;
	backend_id(want, sizeof(want), nbd_sock);
	return strcmp(have, want) == 0;
}

/* The request timer period, queue/io_timeout (milliseconds). */
static int set_io_timeout(unsigned int index, unsigned int secs,
			  struct bks_error *err)
{
	char sys[64], val[32];
	int fd, len, ret = 0;

	snprintf(sys, sizeof(sys), "/sys/block/nbd%u/queue/io_timeout", index);
	fd = open(sys, O_WRONLY | O_CLOEXEC);
	if (fd < 0 && errno == ENOENT)
		return 0; /* before 5.0: the kernel's 30 s */
	if (fd < 0)
		return bks_error_set(err, errno, "open %s", sys);
	len = snprintf(val, sizeof(val), "%u\n", secs * 1000u);
	if (write(fd, val, (size_t)len) != len)
		ret = bks_error_set(err, errno, "write %s", sys);
	close(fd);
	return ret;
}

/* ---- connect, disconnect ------------------------------------------------- */

int nbd_kernel_disconnect(unsigned int index, struct bks_error *err)
{
	struct nl_sock *sk = NULL;
	struct nl_msg *msg = NULL;
	int ret;

	if (!nbd_kernel_connected(index))
		return 0;
	ret = nl_start(NBD_CMD_DISCONNECT, &sk, &msg, err);
	if (ret < 0)
		goto out;
	if (nla_put_u32(msg, NBD_ATTR_INDEX, index) < 0) {
		ret = bks_error_setmsg(err, EMSGSIZE,
				       "NBD_CMD_DISCONNECT: message too large");
		goto out;
	}
	ret = nl_call(sk, msg, "NBD_CMD_DISCONNECT", index, err);
	msg = NULL; /* nl_send_sync frees it */
out:
	nlmsg_free(msg);
	nl_socket_free(sk);
	return ret;
}

int nbd_kernel_connect(const char *nbd_sock, bool ro,
		       const struct nbd_kernel_conf *conf, unsigned int *index,
		       struct bks_error *err)
{
	struct nl_sock *sk = NULL;
	struct nl_msg *msg = NULL;
	struct nbd_export ex;
	char backend[BACKEND_MAX];
	int64_t got = -1;
	uint64_t bs = 512, flags;
	int fd = -1, ret;

	ret = nbd_client_handshake(nbd_sock, &fd, &ex, err);
	if (ret < 0)
		return ret;
	/* The kernel's logical block: 512..4096, a power of two. */
	if (ex.min_block > bs)
		bs = ex.min_block;
	if (bs > 4096 || (bs & (bs - 1))) {
		ret = bks_error_setmsg(err, EINVAL,
				       "NBD export on %s: minimum block size "
				       "%" PRIu64 " is not usable",
				       nbd_sock, bs);
		goto out;
	}
	flags = ex.flags | (ro ? NBD_FLAG_READ_ONLY : 0);
	ret = nl_start(NBD_CMD_CONNECT, &sk, &msg, err);
	if (ret < 0)
		goto out;
	backend_id(backend, sizeof(backend), nbd_sock);
	/*
	 * No NBD_ATTR_INDEX: the kernel picks a free device (or makes one)
	 * and says which in its reply.  TIMEOUT 0: no request timeout (a
	 * paused worker holds requests for as long as a migration takes; the
	 * timer then only re-sends requests whose connection was replaced,
	 * set_io_timeout).  DEAD_CONN_TIMEOUT: how long I/O waits for a
	 * restarted worker (nbd_kernel_reconnect).  The backend identifier
	 * lets every later step recognise the device, and the kernel refuses
	 * a reconnect under another.
	 */
	if (nla_put_u64(msg, NBD_ATTR_SIZE_BYTES, ex.size) < 0 ||
	    nla_put_u64(msg, NBD_ATTR_BLOCK_SIZE_BYTES, bs) < 0 ||
	    nla_put_u64(msg, NBD_ATTR_SERVER_FLAGS, flags) < 0 ||
	    nla_put_u64(msg, NBD_ATTR_TIMEOUT, 0) < 0 ||
	    nla_put_u64(msg, NBD_ATTR_DEAD_CONN_TIMEOUT,
			conf->reconnect_timeout_s) < 0 ||
	    nla_put_string(msg, NBD_ATTR_BACKEND_IDENTIFIER, backend) < 0 ||
	    put_socket(msg, fd) < 0) {
		ret = bks_error_setmsg(err, EMSGSIZE,
				       "NBD_CMD_CONNECT: message too large");
		goto out;
	}
	nl_socket_modify_cb(sk, NL_CB_VALID, NL_CB_CUSTOM, connect_reply_cb,
			    &got);
	ret = nl_send_sync(sk, msg);
	msg = NULL; /* nl_send_sync frees it */
	if (ret < 0) {
		ret = bks_error_setmsg(err, EIO, "NBD_CMD_CONNECT for %s: %s",
				       nbd_sock, nl_geterror(ret));
		goto out;
	}
	if (got < 0 || got > UINT32_MAX) {
		ret = bks_error_setmsg(err, EPROTO,
				       "NBD_CMD_CONNECT for %s: no device "
				       "index in the reply",
				       nbd_sock);
		goto out;
	}
	ret = set_io_timeout((unsigned int)got, conf->io_timeout_s, err);
	if (ret < 0) {
		struct bks_error undo_err;

		nbd_kernel_disconnect((unsigned int)got, &undo_err);
		goto out;
	}
	*index = (unsigned int)got;
out:
	nlmsg_free(msg);
	nl_socket_free(sk);
	/* The kernel holds its own reference to the socket. */
	if (fd >= 0)
		close(fd);
	return ret;
}

/* ---- reconnect ----------------------------------------------------------- */

/*
 * Does the open file behind the fd once registered in epoll instance ep
 * still exist?  An epoll registration lasts as long as the open file
 * description, not the fd (epoll(7)): after close(fd), the instance's
 * fdinfo still lists it ("tfd:") only if somebody else (the kernel NBD
 * client) holds a reference.
 */
static int epoll_has_target(int ep, bool *held)
{
	char path[64], *text = NULL;
	int ret;

	snprintf(path, sizeof(path), "/proc/self/fdinfo/%d", ep);
	ret = conf_read_file(path, &text, 65536, NULL);
	if (ret < 0)
		return ret;
	*held = strstr(text, "tfd:") != NULL;
	free(text);
	return 0;
}

int nbd_kernel_reconnect(unsigned int index, const char *nbd_sock,
			 bool *reconnected, struct bks_error *err)
{
	struct epoll_event ev = {.events = EPOLLIN};
	struct nl_sock *sk = NULL;
	struct nl_msg *msg = NULL;
	struct nbd_export ex;
	char backend[BACKEND_MAX];
	int fd = -1, ep = -1, ret;
	bool held = false;

	*reconnected = false;
	ret = nbd_client_handshake(nbd_sock, &fd, &ex, err);
	if (ret < 0)
		return ret;
	ep = epoll_create1(EPOLL_CLOEXEC);
	if (ep < 0 || epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) < 0) {
		ret = bks_error_set(err, errno, "epoll for %s", nbd_sock);
		goto out;
	}
	ret = nl_start(NBD_CMD_RECONFIGURE, &sk, &msg, err);
	if (ret < 0)
		goto out;
	backend_id(backend, sizeof(backend), nbd_sock);
	/*
	 * The kernel takes the socket for a dead connection of the device
	 * and otherwise drops it, answering success either way (-ENOSPC
	 * becomes 0); the identifier must be the device's or it refuses.
	 */
	if (nla_put_u32(msg, NBD_ATTR_INDEX, index) < 0 ||
	    nla_put_string(msg, NBD_ATTR_BACKEND_IDENTIFIER, backend) < 0 ||
	    put_socket(msg, fd) < 0) {
		ret = bks_error_setmsg(err, EMSGSIZE,
				       "NBD_CMD_RECONFIGURE: message too "
				       "large");
		goto out;
	}
	ret = nl_call(sk, msg, "NBD_CMD_RECONFIGURE", index, err);
	msg = NULL;
	if (ret < 0) {
		bks_error_prepend(err, "reconnect to %s: ", nbd_sock);
		goto out;
	}
	close(fd);
	fd = -1;
	ret = epoll_has_target(ep, &held);
	if (ret < 0) {
		ret = bks_error_set(err, -ret, "reconnect /dev/nbd%u: fdinfo",
				    index);
		goto out;
	}
	*reconnected = held;
out:
	nlmsg_free(msg);
	nl_socket_free(sk);
	if (fd >= 0)
		close(fd);
	if (ep >= 0)
		close(ep);
	return ret;
}

/*
 * Call fn for every /dev/nbdN whose backend identifier is blkstack's for
 * nbd_sock; the first failure is returned, after trying them all.
 */
static int for_each_device(const char *nbd_sock,
			   int (*fn)(unsigned int index, const char *nbd_sock,
				     void *arg, struct bks_error *err),
			   void *arg, struct bks_error *err)
{
	char want[BACKEND_MAX], have[BACKEND_MAX];
	struct bks_error second;
	struct dirent *de;
	int ret = 0, rc;
	DIR *d;

	backend_id(want, sizeof(want), nbd_sock);
	d = opendir("/sys/block");
	if (!d)
		return errno == ENOENT
			   ? 0
			   : bks_error_set(err, errno, "open /sys/block");
	while ((de = readdir(d))) {
		unsigned long n;
		char *end;

		if (strncmp(de->d_name, "nbd", 3) || de->d_name[3] < '0' ||
		    de->d_name[3] > '9')
			continue;
		errno = 0;
		n = strtoul(de->d_name + 3, &end, 10);
		if (errno || *end || n > UINT32_MAX)
			continue;
		if (nbd_kernel_backend((unsigned int)n, have, sizeof(have)) <
			0 ||
		    strcmp(have, want))
			continue;
		rc =
		    fn((unsigned int)n, nbd_sock, arg, ret < 0 ? &second : err);
		if (rc < 0 && ret == 0)
			ret = rc;
	}
	closedir(d);
	return ret;
}

static int reconnect_one(unsigned int index, const char *nbd_sock, void *arg,
			 struct bks_error *err)
{
	unsigned int *count = arg;
	bool done;
	int ret;

	if (!nbd_kernel_connected(index))
		return 0;
	ret = nbd_kernel_reconnect(index, nbd_sock, &done, err);
	if (ret == 0 && done)
		(*count)++;
	return ret;
}

int nbd_kernel_reconnect_all(const char *nbd_sock, unsigned int *reconnected,
			     struct bks_error *err)
{
	*reconnected = 0;
	return for_each_device(nbd_sock, reconnect_one, reconnected, err);
}

static int fail_one(unsigned int index, const char *nbd_sock, void *arg,
		    struct bks_error *err)
{
	(void)nbd_sock;
	(void)arg;
	return nbd_kernel_disconnect(index, err);
}

int nbd_kernel_fail_all(const char *nbd_sock, struct bks_error *err)
{
	return for_each_device(nbd_sock, fail_one, NULL, err);
}
