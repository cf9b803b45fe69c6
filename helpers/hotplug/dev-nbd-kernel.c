/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Kernel NBD devices (/dev/nbdN) over generic netlink: see
 * dev-nbd-kernel.h.  The handshake before NBD_CMD_CONNECT is
 * dev-nbd-client.c's.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <linux/fs.h>
#include <linux/nbd-netlink.h>
#include <netlink/genl/ctrl.h>
#include <netlink/genl/genl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/pidfd.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <unistd.h>

#include "blkstack/nbd-proto.h"
#include "child.h"
#include "conf.h"
#include "dev-nbd-kernel.h"
#include "dev-record.h"

/* How long detach's flush may take (libxl kills the script after 40 s). */
#define NBD_FLUSH_TIMEOUT_S 15

/* A generic netlink socket and the "nbd" family's id. */
static int nbd_nl_open(struct nl_sock **out, int *family, struct bks_error *err)
{
	struct nl_sock *sk;
	int ret;

	*out = NULL;
	sk = nl_socket_alloc();
	if (!sk)
		return bks_error_set(err, ENOMEM, "netlink socket");
	ret = genl_connect(sk);
	if (ret < 0) {
		ret = bks_error_setmsg(err, EIO, "generic netlink connect: %s",
				       nl_geterror(ret));
		goto fail;
	}
	*family = genl_ctrl_resolve(sk, NBD_GENL_FAMILY_NAME);
	if (*family < 0) {
		ret = bks_error_setmsg(err, ENODEV,
				       "generic netlink family \"%s\": %s (is "
				       "the nbd kernel module loaded?)",
				       NBD_GENL_FAMILY_NAME,
				       nl_geterror(*family));
		goto fail;
	}
	*out = sk;
	return 0;
fail:
	nl_socket_free(sk);
	return ret;
}

/* NL_CB_VALID for NBD_CMD_CONNECT: the reply carries NBD_ATTR_INDEX. */
static int nbd_connect_reply_cb(struct nl_msg *msg, void *arg)
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

int hp_nbd_attach(const char *nbd_sock, bool ro, struct hp_dev *dev,
		  struct bks_error *err)
{
	struct nlattr *socks, *item;
	struct nl_sock *sk = NULL;
	struct nl_msg *msg = NULL;
	struct hp_dev_export ex;
	char backend[PATH_MAX + 16];
	int64_t index = -1;
	uint64_t bs = 512, flags;
	struct stat st;
	int family, fd = -1, ret;

	ret = hp_dev_nbd_handshake(nbd_sock, &fd, &ex, err);
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

	ret = nbd_nl_open(&sk, &family, err);
	if (ret < 0)
		goto out;
	msg = nlmsg_alloc();
	if (!msg) {
		ret = bks_error_set(err, ENOMEM, "netlink message");
		goto out;
	}
	snprintf(backend, sizeof(backend), HP_DEV_NBD_BACKEND_PREFIX "%s",
		 nbd_sock);
	/*
	 * No NBD_ATTR_INDEX: the kernel picks a free device (or makes one)
	 * and says which in its reply.  TIMEOUT 0: no request timeout, since
	 * a paused worker holds requests for as long as a migration takes;
	 * the price is that requests in flight when a worker dies stay in
	 * flight (the kernel logs "Possible stuck request") until detach's
	 * disconnect fails them (hp_nbd_detach never flushes behind them).
	 * DEAD_CONN_TIMEOUT 0: nothing reconnects a dead worker today, so
	 * new I/O fails at once rather than waits.  The backend identifier
	 * (/sys/block/nbdN/backend) lets detach recognise its device.
	 */
	if (!genlmsg_put(msg, NL_AUTO_PORT, NL_AUTO_SEQ, family, 0, 0,
			 NBD_CMD_CONNECT, 0) ||
	    nla_put_u64(msg, NBD_ATTR_SIZE_BYTES, ex.size) < 0 ||
	    nla_put_u64(msg, NBD_ATTR_BLOCK_SIZE_BYTES, bs) < 0 ||
	    nla_put_u64(msg, NBD_ATTR_SERVER_FLAGS, flags) < 0 ||
	    nla_put_u64(msg, NBD_ATTR_TIMEOUT, 0) < 0 ||
	    nla_put_u64(msg, NBD_ATTR_DEAD_CONN_TIMEOUT, 0) < 0 ||
	    nla_put_string(msg, NBD_ATTR_BACKEND_IDENTIFIER, backend) < 0 ||
	    !(socks = nla_nest_start(msg, NBD_ATTR_SOCKETS)) ||
	    !(item = nla_nest_start(msg, NBD_SOCK_ITEM)) ||
	    nla_put_u32(msg, NBD_SOCK_FD, (uint32_t)fd) < 0) {
		ret = bks_error_setmsg(err, EMSGSIZE,
				       "NBD_CMD_CONNECT: message too large");
		goto out;
	}
	nla_nest_end(msg, item);
	nla_nest_end(msg, socks);
	nl_socket_modify_cb(sk, NL_CB_VALID, NL_CB_CUSTOM, nbd_connect_reply_cb,
			    &index);
	/* Sends, then takes the reply (the callback) and the ACK or error. */
	ret = nl_send_sync(sk, msg);
	msg = NULL; /* nl_send_sync frees it */
	if (ret < 0) {
		ret = bks_error_setmsg(err, EIO, "NBD_CMD_CONNECT for %s: %s",
				       nbd_sock, nl_geterror(ret));
		goto out;
	}
	if (index < 0) {
		ret = bks_error_setmsg(err, EPROTO,
				       "NBD_CMD_CONNECT for %s: no device "
				       "index in the reply",
				       nbd_sock);
		goto out;
	}
	snprintf(dev->path, sizeof(dev->path), "/dev/nbd%" PRId64, index);
	if (stat(dev->path, &st) < 0) {
		ret = bks_error_set(err, errno, "stat %s", dev->path);
		goto out;
	}
	if (!S_ISBLK(st.st_mode)) {
		ret = bks_error_setmsg(err, ENOTBLK, "%s: not a block device",
				       dev->path);
		goto out;
	}
	dev->major = major(st.st_rdev);
	dev->minor = minor(st.st_rdev);
	ret = 0;
out:
	if (ret < 0 && dev->path[0]) {
		struct bks_error undo_err;

		/* Connected but unusable: disconnect what the kernel made. */
		dev->major = HP_DEV_NBD_MAJOR;
		hp_nbd_detach(dev, &undo_err);
		dev->path[0] = '\0';
	}
	nlmsg_free(msg);
	nl_socket_free(sk);
	/* The kernel holds its own reference to the socket. */
	if (fd >= 0)
		close(fd);
	return ret;
}

/*
 * Does the server named by a /sys/block/nbdN/backend line
 * ("blkstack:SOCK\n") still accept connections?  Only a refusal or a
 * missing socket counts as gone; anything unclear counts as alive.
 */
static bool nbd_server_alive(char *backend)
{
	int rc;

	backend[strcspn(backend, "\n")] = '\0';
	rc = hp_dev_sock_probe(backend + strlen(HP_DEV_NBD_BACKEND_PREFIX));
	return rc != -ECONNREFUSED && rc != -ENOENT;
}

/*
 * fsync + BLKFLSBUF of fd in a child, waited for at most
 * NBD_FLUSH_TIMEOUT_S: a flush stuck behind a dead connection sleeps
 * uninterruptibly, and the helper must still get to the disconnect that
 * ends it.  Returns the flush's result, or -ETIMEDOUT with *child set
 * (the caller reaps it after the disconnect).
 */
static int flush_bounded(int fd, pid_t *child)
{
	int pidfd, status, ret;
	pid_t pid;

	*child = 0;
	pid = fork();
	if (pid < 0)
		return -errno;
	if (pid == 0) {
		if (fsync(fd) < 0 || ioctl(fd, BLKFLSBUF, 0) < 0)
			_exit(errno & 0xff ? errno & 0xff : EIO);
		_exit(0);
	}
	pidfd = pidfd_open(pid, 0);
	if (pidfd >= 0) {
		bool done = pidfd_wait(pidfd, NBD_FLUSH_TIMEOUT_S * 1000) == 0;

		close(pidfd);
		if (!done) {
			*child = pid;
			return -ETIMEDOUT;
		}
	}
	ret = child_wait(pid, &status);
	if (ret < 0)
		return ret;
	if (WIFEXITED(status))
		return -WEXITSTATUS(status);
	return -EIO;
}

/*
 * Flush and disconnect /dev/nbdN if it is connected and ours: its
 * backend identifier is blkstack's (kernels without
 * /sys/block/nbdN/backend cannot tell, and then a connected device is
 * taken as ours), and the node is the record's major:minor.
 */
int hp_nbd_detach(const struct hp_dev *dev, struct bks_error *err)
{
	char sys[128], *backend = NULL;
	struct nl_sock *sk = NULL;
	struct nl_msg *msg = NULL;
	unsigned long index;
	int family, fd = -1, flush_rc = 0, ret;
	pid_t flusher = 0;
	bool dead = false;
	struct stat st;

	if (!dev->path[0])
		return 0;
	index = strtoul(dev->path + strlen("/dev/nbd"), NULL, 10);
	snprintf(sys, sizeof(sys), "/sys/block/nbd%lu/pid", index);
	if (access(sys, F_OK) < 0)
		return 0; /* no such device, or not connected */
	snprintf(sys, sizeof(sys), "/sys/block/nbd%lu/backend", index);
	ret = conf_read_file(sys, &backend, PATH_MAX + 32, err);
	if (ret == 0 && strncmp(backend, HP_DEV_NBD_BACKEND_PREFIX,
				strlen(HP_DEV_NBD_BACKEND_PREFIX)) != 0)
		goto out; /* somebody else's (ret is 0) */
	if (ret < 0 && ret != -ENOENT)
		goto out;
	bks_error_clear(err);

	fd = open(dev->path, O_RDONLY | O_CLOEXEC);
	if (fd >= 0 && fstat(fd, &st) == 0 &&
	    st.st_rdev != makedev(dev->major, dev->minor)) {
		ret = 0; /* the node is not the record's device */
		goto out;
	}
	/*
	 * With no request timeout (see hp_nbd_attach), requests the kernel sent
	 * to a worker that then died stay in flight until the disconnect
	 * below fails them, and a flush would wait behind them for ever, in
	 * an unkillable sleep.  So no flush when the worker is gone, and a
	 * flush that does not finish in time is left to the disconnect.
	 */
	if (fd >= 0 && backend && !nbd_server_alive(backend)) {
		flush_rc = -EIO;
		dead = true;
	} else if (fd >= 0) {
		flush_rc = flush_bounded(fd, &flusher);
	}

	ret = nbd_nl_open(&sk, &family, err);
	if (ret < 0)
		goto out;
	msg = nlmsg_alloc();
	if (!msg) {
		ret = bks_error_set(err, ENOMEM, "netlink message");
		goto out;
	}
	if (!genlmsg_put(msg, NL_AUTO_PORT, NL_AUTO_SEQ, family, 0, 0,
			 NBD_CMD_DISCONNECT, 0) ||
	    nla_put_u32(msg, NBD_ATTR_INDEX, (uint32_t)index) < 0) {
		ret = bks_error_setmsg(err, EMSGSIZE,
				       "NBD_CMD_DISCONNECT: message too "
				       "large");
		goto out;
	}
	ret = nl_send_sync(sk, msg);
	msg = NULL;
	if (ret < 0) {
		ret = bks_error_setmsg(err, EIO, "NBD_CMD_DISCONNECT %s: %s",
				       dev->path, nl_geterror(ret));
		goto out;
	}
	ret = 0;
	if (dead)
		ret = bks_error_setmsg(
		    err, EIO,
		    "flush %s: its worker is gone (%s "
		    "refuses connections); requests in "
		    "flight failed",
		    dev->path, backend + strlen(HP_DEV_NBD_BACKEND_PREFIX));
	else if (flush_rc == -ETIMEDOUT)
		ret =
		    bks_error_setmsg(err, EIO,
				     "flush %s: no answer in %d s; "
				     "disconnected, requests in flight failed",
				     dev->path, NBD_FLUSH_TIMEOUT_S);
	else if (flush_rc < 0)
		ret = bks_error_set(err, -flush_rc, "flush %s", dev->path);
out:
	nlmsg_free(msg);
	nl_socket_free(sk);
	if (fd >= 0)
		close(fd);
	if (flusher > 0) {
		/* The disconnect failed whatever it waited for: it ends. */
		child_wait(flusher, NULL);
	}
	free(backend);
	return ret;
}

bool hp_nbd_bound(const struct hp_dev *dev, const char *nbd_sock)
{
	char sys[128], *text = NULL;
	struct bks_error ignore;
	bool ok;

	snprintf(sys, sizeof(sys), "/sys/block/%s/pid",
		 hp_dev_node_name(dev->path));
	if (access(sys, F_OK) < 0)
		return false;
	snprintf(sys, sizeof(sys), "/sys/block/%s/backend",
		 hp_dev_node_name(dev->path));
	if (conf_read_file(sys, &text, PATH_MAX + 32, &ignore) < 0)
		return true; /* a kernel without it: connected is all we know */
	text[strcspn(text, "\n")] = '\0';
	ok = !strncmp(text, HP_DEV_NBD_BACKEND_PREFIX,
		      strlen(HP_DEV_NBD_BACKEND_PREFIX)) &&
	     !strcmp(text + strlen(HP_DEV_NBD_BACKEND_PREFIX), nbd_sock);
	free(text);
	return ok;
}
