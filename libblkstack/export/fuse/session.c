/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The FUSE export's session: mounting, receiving requests from
 * /dev/fuse, INIT and the file system's metadata, and the export's ops.
 * See internal.h and include/blkstack/fuse-server.h.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

/* /dev/fuse: the misc device 10:229. */
#define FX_DEV_MAJOR 10u
#define FX_DEV_MINOR 229u

#include "internal.h"

/* The protocol version we speak (7.31: max_pages; later ones add what we
 * do not use). */
#define FX_MAJOR 7u
#define FX_MINOR 31u
/*
 * Protocol 7.40 (Linux 6.9), newer than this system's linux/fuse.h may
 * be: the kernel's INIT says it can resend (FUSE_HAS_RESEND, bit 39 of
 * the flags: bit 7 of flags2 with FUSE_INIT_EXT), and the notification
 * that asks it to.
 */
#define FX_HAS_RESEND_FLAGS2 (1u << 7)
#define FX_NOTIFY_RESEND     7

static void reply_data(struct fx *fx, uint64_t unique, const void *p,
		       size_t len)
{
	struct iovec iov = {.iov_base = (void *)p, .iov_len = len};

	fx_reply(fx, unique, 0, &iov, 1);
}

/* ---- metadata ------------------------------------------------------------ */

static void fill_attr(const struct fx *fx, uint64_t ino, struct fuse_attr *a)
{
	uint64_t size = fx_size(fx);

	memset(a, 0, sizeof(*a));
	a->ino = ino;
	a->uid = getuid();
	a->gid = getgid();
	a->blksize = 4096;
	if (ino == FX_INO_ROOT) {
		a->mode = S_IFDIR | 0755;
		a->nlink = 2;
	} else {
		a->mode = S_IFREG | (fx_read_only(fx) ? 0400 : 0600);
		a->nlink = 1;
		a->size = size;
		a->blocks = (size + 511) / 512;
	}
}

static void on_ring_request(struct fx *fx, const struct fuse_in_header *in,
			    const void *op, size_t op_len, const char *payload,
			    size_t payload_len);

/*
 * After INIT's answer: io_uring if it was asked for and the kernel
 * offered it (uring), else readv; info says which, and why not.
 */
static void start_transport(struct fx *fx, bool uring,
			    struct bks_fuse_init_info *info)
{
	struct bks_error err = {0};

	info->transport = BKS_FUSE_TRANSPORT_READV;
	if (fx->want != BKS_FUSE_TRANSPORT_URING)
		return;
	if (!uring) {
		snprintf(info->why_not, sizeof(info->why_not),
			 "the kernel does not offer FUSE over io_uring "
			 "(Linux 6.14+ with the fuse module's enable_uring "
			 "set)");
		return;
	}
	if (fx_uring_start(fx, on_ring_request, &err) < 0) {
		/* Cut to fit: the message begins with what failed. */
		memcpy(info->why_not, err.msg, sizeof(info->why_not) - 1);
		info->why_not[sizeof(info->why_not) - 1] = '\0';
		return;
	}
	info->transport = BKS_FUSE_TRANSPORT_URING;
}

static void do_init(struct fx *fx, const struct fuse_in_header *in,
		    const struct fuse_init_in *arg)
{
	struct fuse_init_out out = {0};
	struct bks_fuse_init_info info = {0};
	bool ext = (arg->flags & FUSE_INIT_EXT) != 0;
	bool uring = ext && (arg->flags2 & FXU_INIT_FLAGS2_OVER_IO_URING);

	if (arg->major < FX_MAJOR) {
		fx_reply_err(fx, in->unique, EPROTO);
		return;
	}
	out.major = FX_MAJOR;
	/* A newer kernel is asked to speak ours; it sends INIT again. */
	if (arg->major > FX_MAJOR) {
		reply_data(fx, in->unique, &out, sizeof(out));
		return;
	}
	out.minor = arg->minor < FX_MINOR ? arg->minor : FX_MINOR;
	out.max_readahead = arg->max_readahead;
	/* Asynchronous direct I/O: a loop device's requests overlap. */
	out.flags = arg->flags & (FUSE_ASYNC_DIO | FUSE_MAX_PAGES |
				  FUSE_BIG_WRITES | FUSE_PARALLEL_DIROPS);
	out.max_background = BKS_FUSE_MAX_BACKGROUND;
	out.congestion_threshold = BKS_FUSE_MAX_BACKGROUND * 3 / 4;
	out.max_write = BKS_FUSE_MAX_IO;
	out.time_gran = 1;
	out.max_pages = BKS_FUSE_MAX_IO / 4096;
	uring = uring && fx->want == BKS_FUSE_TRANSPORT_URING;
	if (uring) {
		out.flags |= FUSE_INIT_EXT;
		out.flags2 = FXU_INIT_FLAGS2_OVER_IO_URING;
	}
	fx->inited = true;
	reply_data(fx, in->unique, &out, sizeof(out));
	/* The kernel takes ring entries once INIT is answered. */
	start_transport(fx, uring, &info);
	/* A session on the ring dies with us (internal.h). */
	info.can_resend = ext && (arg->flags2 & FX_HAS_RESEND_FLAGS2) &&
			  info.transport == BKS_FUSE_TRANSPORT_READV;
	if (fx->inited_fn)
		fx->inited_fn(fx->inited_arg, fx->fd, &info);
}

static void do_lookup(struct fx *fx, const struct fuse_in_header *in,
		      const char *name, size_t len)
{
	struct fuse_entry_out e = {0};

	/* The name is NUL-terminated inside the request. */
	if (in->nodeid != FX_INO_ROOT || len == 0 || name[len - 1] != '\0' ||
	    strcmp(name, BKS_FUSE_FILE_NAME) != 0) {
		fx_reply_err(fx, in->unique, ENOENT);
		return;
	}
	e.nodeid = FX_INO_FILE;
	e.generation = 1;
	e.entry_valid = FX_ATTR_VALID_S;
	e.attr_valid = FX_ATTR_VALID_S;
	fill_attr(fx, FX_INO_FILE, &e.attr);
	reply_data(fx, in->unique, &e, sizeof(e));
}

static void do_getattr(struct fx *fx, const struct fuse_in_header *in)
{
	struct fuse_attr_out a = {.attr_valid = FX_ATTR_VALID_S};

	if (in->nodeid != FX_INO_ROOT && in->nodeid != FX_INO_FILE) {
		fx_reply_err(fx, in->unique, ENOENT);
		return;
	}
	fill_attr(fx, in->nodeid, &a.attr);
	reply_data(fx, in->unique, &a, sizeof(a));
}

static void do_setattr(struct fx *fx, const struct fuse_in_header *in,
		       const struct fuse_setattr_in *arg)
{
	/* The size is the disk's; modes and times are not kept. */
	if (in->nodeid == FX_INO_FILE && (arg->valid & FATTR_SIZE) &&
	    arg->size != fx_size(fx)) {
		fx_reply_err(fx, in->unique, EPERM);
		return;
	}
	do_getattr(fx, in);
}

static void do_open(struct fx *fx, const struct fuse_in_header *in,
		    const struct fuse_open_in *arg)
{
	struct fuse_open_out o = {.open_flags = FOPEN_DIRECT_IO};

	if (in->opcode == FUSE_OPENDIR) {
		if (in->nodeid != FX_INO_ROOT) {
			fx_reply_err(fx, in->unique, ENOTDIR);
			return;
		}
		o.open_flags = 0;
	} else if (in->nodeid == FX_INO_ROOT) {
		fx_reply_err(fx, in->unique, EISDIR);
		return;
	} else if (in->nodeid != FX_INO_FILE) {
		fx_reply_err(fx, in->unique, ENOENT);
		return;
	} else if (fx_read_only(fx) && (arg->flags & O_ACCMODE) != O_RDONLY) {
		fx_reply_err(fx, in->unique, EROFS);
		return;
	}
	reply_data(fx, in->unique, &o, sizeof(o));
}

/* One directory entry at p (room bytes), or 0 if it does not fit. */
static size_t put_dirent(char *p, size_t room, uint64_t ino, uint64_t off,
			 uint32_t type, const char *name)
{
	size_t nl = strlen(name);
	size_t sz = FUSE_DIRENT_ALIGN(FUSE_NAME_OFFSET + nl);
	struct fuse_dirent *d = (struct fuse_dirent *)p;

	if (sz > room)
		return 0;
	memset(p, 0, sz);
	d->ino = ino;
	d->off = off;
	d->namelen = (uint32_t)nl;
	d->type = type;
	memcpy(d->name, name, nl);
	return sz;
}

static void do_readdir(struct fx *fx, const struct fuse_in_header *in,
		       const struct fuse_read_in *arg)
{
	static const char *const names[] = {".", "..", BKS_FUSE_FILE_NAME};
	static const uint64_t inos[] = {FX_INO_ROOT, FX_INO_ROOT, FX_INO_FILE};
	char buf[256];
	size_t used = 0,
	       room = arg->size < sizeof(buf) ? arg->size : sizeof(buf);

	if (in->nodeid != FX_INO_ROOT) {
		fx_reply_err(fx, in->unique, ENOTDIR);
		return;
	}
	for (uint64_t i = arg->offset; i < 3; i++) {
		size_t n =
		    put_dirent(buf + used, room - used, inos[i], i + 1,
			       i < 2 ? S_IFDIR >> 12 : S_IFREG >> 12, names[i]);

		if (!n)
			break;
		used += n;
	}
	reply_data(fx, in->unique, buf, used);
}

static void do_statfs(struct fx *fx, const struct fuse_in_header *in)
{
	struct fuse_statfs_out s = {0};
	uint64_t size = fx_size(fx);

	s.st.bsize = 4096;
	s.st.frsize = 4096;
	s.st.blocks = (size + 4095) / 4096;
	s.st.files = 2;
	s.st.namelen = 255;
	reply_data(fx, in->unique, &s, sizeof(s));
}

/* ---- receiving ----------------------------------------------------------- */

/* The session is over: the file system was unmounted, or a fatal error. */
static void end_session(struct fx *fx)
{
	fx->ended = true;
	if (fx->watching) {
		bks_watch_del(&fx->w);
		fx->watching = false;
	}
	if (fx->stopping)
		bks_defer_schedule(&fx->defer);
}

/* The smallest argument each request needs after its header. */
static size_t arg_size(uint32_t opcode)
{
	switch (opcode) {
	case FUSE_INIT:
		/* Older kernels send the 7.35 struct's first 16 bytes. */
		return 16;
	case FUSE_READ:
	case FUSE_READDIR:
		return sizeof(struct fuse_read_in);
	case FUSE_WRITE:
		return sizeof(struct fuse_write_in);
	case FUSE_SETATTR:
		return sizeof(struct fuse_setattr_in);
	case FUSE_OPEN:
	case FUSE_OPENDIR:
		return sizeof(struct fuse_open_in);
	case FUSE_FALLOCATE:
		return sizeof(struct fuse_fallocate_in);
	default:
		return 0;
	}
}

/* Dispatch one request of len bytes: the header at p, its argument after. */
static void dispatch(struct fx *fx, const unsigned char *p, size_t len)
{
	const struct fuse_in_header *in = (const void *)p;
	const void *arg = p + sizeof(*in);
	size_t alen = len - sizeof(*in);
	struct fuse_init_in init = {0};

	fx->st.requests++;
	if (alen < arg_size(in->opcode)) {
		fx_reply_err(fx, in->unique, EINVAL);
		return;
	}
	if (!fx->inited && in->opcode != FUSE_INIT) {
		fx_reply_err(fx, in->unique, EIO);
		return;
	}
	switch (in->opcode) {
	case FUSE_INIT:
		memcpy(&init, arg, alen < sizeof(init) ? alen : sizeof(init));
		do_init(fx, in, &init);
		break;
	case FUSE_LOOKUP:
		do_lookup(fx, in, arg, alen);
		break;
	case FUSE_FORGET:
	case FUSE_BATCH_FORGET:
	case FUSE_INTERRUPT:
		/* No answer: the requests complete anyway, and soon. */
		break;
	case FUSE_GETATTR:
		do_getattr(fx, in);
		break;
	case FUSE_SETATTR:
		do_setattr(fx, in, arg);
		break;
	case FUSE_OPEN:
	case FUSE_OPENDIR:
		do_open(fx, in, arg);
		break;
	case FUSE_READDIR:
		do_readdir(fx, in, arg);
		break;
	case FUSE_RELEASE:
	case FUSE_RELEASEDIR:
	case FUSE_ACCESS:
	case FUSE_DESTROY:
		fx_reply_err(fx, in->unique, 0);
		break;
	case FUSE_STATFS:
		do_statfs(fx, in);
		break;
	case FUSE_READ:
		fx_read(fx, in, arg);
		break;
	case FUSE_WRITE:
		/* Not reached: both transports serve WRITE before. */
		fx_write(fx, in, arg,
			 (const char *)arg + sizeof(struct fuse_write_in));
		break;
	case FUSE_FLUSH:
	case FUSE_FSYNC:
		fx_flush(fx, in);
		break;
	case FUSE_FALLOCATE:
		fx_fallocate(fx, in, arg);
		break;
	default:
		fx_reply_err(fx, in->unique, ENOSYS);
		break;
	}
}

/*
 * A request from a ring entry (uring.c): a WRITE is served from the
 * entry's payload; the rest is put together as /dev/fuse would have
 * given it and dispatched.
 */
static void on_ring_request(struct fx *fx, const struct fuse_in_header *in,
			    const void *op, size_t op_len, const char *payload,
			    size_t payload_len)
{
	if (in->opcode == FUSE_WRITE) {
		const struct fuse_write_in *w = op;

		fx->st.requests++;
		/* The data is the payload, all of it. */
		if (op_len != sizeof(*w) || payload_len != w->size) {
			fx_reply_err(fx, in->unique, EINVAL);
			return;
		}
		fx_write(fx, in, w, payload);
		return;
	}
	if (sizeof(*in) + op_len + payload_len > sizeof(fx->small)) {
		fx->st.requests++;
		fx_reply_err(fx, in->unique, EINVAL);
		return;
	}
	memcpy(fx->small, in, sizeof(*in));
	memcpy(fx->small + sizeof(*in), op, op_len);
	memcpy(fx->small + sizeof(*in) + op_len, payload, payload_len);
	dispatch(fx, fx->small, sizeof(*in) + op_len + payload_len);
}

/* Read and dispatch one request.  Returns 0, -EAGAIN, or a fatal -errno. */
static int receive_one(struct fx *fx)
{
	struct iovec iov[2];
	const struct fuse_in_header *in = (const void *)fx->hdr;
	ssize_t n;

	if (!fx->rbuf) {
		int cls;

		fx->rbuf = fx_buf_get(fx, BKS_FUSE_MAX_IO, &cls);
		if (!fx->rbuf)
			return -ENOMEM;
	}
	iov[0] = (struct iovec){.iov_base = fx->hdr, .iov_len = FX_HDR_SIZE};
	iov[1] =
	    (struct iovec){.iov_base = fx->rbuf, .iov_len = BKS_FUSE_MAX_IO};
	n = readv(fx->fd, iov, 2);
	if (n < 0) {
		/* ENOENT: a request interrupted before we read it. */
		if (errno == ENOENT || errno == EINTR)
			return 0;
		return -errno;
	}
	if ((size_t)n < sizeof(*in) || in->len != (size_t)n)
		return -EPROTO;
	if (in->opcode == FUSE_WRITE) {
		if ((size_t)n < FX_HDR_SIZE) {
			fx_reply_err(fx, in->unique, EINVAL);
			return 0;
		}
		fx->st.requests++;
		if (!fx->inited) {
			fx_reply_err(fx, in->unique, EIO);
			return 0;
		}
		fx_write(
		    fx, in,
		    (const void *)(fx->hdr + sizeof(struct fuse_in_header)),
		    fx->rbuf);
		return 0;
	}
	if ((size_t)n > sizeof(fx->small)) {
		fx->st.requests++;
		fx_reply_err(fx, in->unique, EINVAL);
		return 0;
	}
	memcpy(fx->small, fx->hdr,
	       (size_t)n < FX_HDR_SIZE ? (size_t)n : FX_HDR_SIZE);
	if ((size_t)n > FX_HDR_SIZE)
		memcpy(fx->small + FX_HDR_SIZE, fx->rbuf,
		       (size_t)n - FX_HDR_SIZE);
	dispatch(fx, fx->small, (size_t)n);
	return 0;
}

static void on_fuse(struct bks_watch *w, uint32_t events)
{
	struct fx *fx = w->opaque;

	(void)events;
	for (int i = 0; i < FX_READS_PER_EVENT && !fx->ended && !fx->stopping;
	     i++) {
		int rc = receive_one(fx);

		if (rc == -EAGAIN)
			return;
		/* ENODEV: unmounted and let go of; anything else is fatal. */
		if (rc < 0) {
			if (rc != -ENODEV)
				fx->st.dropped++;
			end_session(fx);
			return;
		}
	}
}

/* ---- the export ---------------------------------------------------------- */

/* 0 if the directory at path is empty, -ENOTEMPTY if not, or -errno. */
static int dir_empty(const char *path)
{
	struct dirent *de;
	DIR *d = opendir(path);
	int rc = 0;

	if (!d)
		return -errno;
	while ((de = readdir(d)))
		if (strcmp(de->d_name, ".") && strcmp(de->d_name, "..")) {
			rc = -ENOTEMPTY;
			break;
		}
	closedir(d);
	return rc;
}

/* Watch /dev/fuse: serving begins. */
static int watch_dev(struct fx *fx, struct bks_error *err)
{
	int rc = bks_watch_add(fx->loop, &fx->w, fx->fd, EPOLLIN, on_fuse, fx);

	if (rc < 0)
		return bks_error_set(err, -rc, "FUSE export: watch /dev/fuse");
	fx->watching = true;
	fx->st.connections = 1;
	fx->st.connections_total = 1;
	return 0;
}

bool bks_fuse_mounted(const char *path)
{
	char line[4096], mp[4096], type[64];
	bool ours = false;
	FILE *f = fopen("/proc/self/mountinfo", "re");

	if (!f)
		return false;
	while (fgets(line, sizeof(line), f)) {
		const char *sep = strstr(line, " - ");
		size_t j = 0;

		/* ID PARENT MAJ:MIN ROOT MOUNTPOINT ... - TYPE SOURCE ... */
		if (!sep || sscanf(line, "%*s %*s %*s %*s %4095s", mp) != 1 ||
		    sscanf(sep + 3, "%63s", type) != 1)
			continue;
		/* The mount point, its octal escapes (\040) undone. */
		for (size_t i = 0; mp[i]; i++, j++) {
			if (mp[i] == '\\' && mp[i + 1] >= '0' &&
			    mp[i + 1] <= '3' && mp[i + 2] >= '0' &&
			    mp[i + 2] <= '7' && mp[i + 3] >= '0' &&
			    mp[i + 3] <= '7') {
				mp[j] = (char)((mp[i + 1] - '0') * 64 +
					       (mp[i + 2] - '0') * 8 +
					       (mp[i + 3] - '0'));
				i += 3;
			} else {
				mp[j] = mp[i];
			}
		}
		mp[j] = '\0';
		if (strcmp(mp, path) == 0)
			ours = strcmp(type, "fuse.blkstack") == 0;
	}
	fclose(f);
	return ours;
}

/*
 * Adopt the session of fx->adopt_fd, mounted on fx->mnt by the process
 * this one replaces: no mount, no INIT; the kernel resends what that
 * process had read and not answered.
 */
static int adopt(struct fx *fx, struct bks_error *err)
{
	struct fuse_out_header oh = {.len = sizeof(oh),
				     .error = FX_NOTIFY_RESEND};
	struct stat st;
	int fl;

	fx->fd = fx->adopt_fd;
	fx->adopt_fd = -1;
	if (fstat(fx->fd, &st) < 0 || !S_ISCHR(st.st_mode) ||
	    major(st.st_rdev) != FX_DEV_MAJOR ||
	    minor(st.st_rdev) != FX_DEV_MINOR)
		return bks_error_setmsg(err, EINVAL,
					"FUSE export: adopt descriptor %d: "
					"not /dev/fuse",
					fx->fd);
	if (!bks_fuse_mounted(fx->mnt))
		return bks_error_setmsg(err, EINVAL,
					"FUSE export: adopt %s: no blkstack "
					"FUSE file system is mounted there",
					fx->mnt);
	fl = fcntl(fx->fd, F_GETFL);
	if (fl < 0 || fcntl(fx->fd, F_SETFL, fl | O_NONBLOCK) < 0 ||
	    fcntl(fx->fd, F_SETFD, FD_CLOEXEC) < 0)
		return bks_error_set(
		    err, errno, "FUSE export: adopt /dev/fuse fd %d", fx->fd);
	/* ENODEV: the file system was unmounted meanwhile. */
	if (write(fx->fd, &oh, sizeof(oh)) < 0)
		return bks_error_set(err, errno,
				     "FUSE export: ask the kernel to resend "
				     "the requests of %s",
				     fx->mnt);
	fx->mounted = true;
	fx->inited = true;
	return watch_dev(fx, err);
}

static int fx_start(void *state, struct bks_error *err)
{
	struct fx *fx = state;
	struct stat st;
	char opts[128];
	int rc;

	if (fx->adopt_fd >= 0)
		return adopt(fx, err);

	/*
	 * A worker killed while serving left its file system mounted and
	 * dead (ENOTCONN): ours to take down, lazily, before mounting anew.
	 */
	if (stat(fx->mnt, &st) < 0 && errno == ENOTCONN &&
	    umount2(fx->mnt, MNT_DETACH | UMOUNT_NOFOLLOW) < 0)
		return bks_error_set(err, errno,
				     "FUSE export: unmount the dead file "
				     "system on %s",
				     fx->mnt);
	if (stat(fx->mnt, &st) < 0)
		return bks_error_set(err, errno, "FUSE export: mount point %s",
				     fx->mnt);
	if (!S_ISDIR(st.st_mode))
		return bks_error_set(err, ENOTDIR,
				     "FUSE export: mount point %s", fx->mnt);
	rc = dir_empty(fx->mnt);
	if (rc < 0)
		return bks_error_set(err, -rc, "FUSE export: mount point %s",
				     fx->mnt);
	fx->fd = open("/dev/fuse", O_RDWR | O_CLOEXEC | O_NONBLOCK);
	if (fx->fd < 0)
		return bks_error_set(err, errno, "FUSE export: open /dev/fuse");
	snprintf(opts, sizeof(opts),
		 "fd=%d,rootmode=40000,user_id=%u,group_id=%u,allow_other,"
		 "max_read=%u",
		 fx->fd, (unsigned)getuid(), (unsigned)getgid(),
		 BKS_FUSE_MAX_IO);
	if (mount("blkstack", fx->mnt, "fuse.blkstack",
		  MS_NOSUID | MS_NODEV | MS_NOATIME, opts) < 0) {
		rc = bks_error_set(err, errno, "FUSE export: mount on %s",
				   fx->mnt);
		close(fx->fd);
		fx->fd = -1;
		return rc;
	}
	fx->mounted = true;
	rc = watch_dev(fx, err);
	if (rc < 0) {
		umount2(fx->mnt, MNT_DETACH | UMOUNT_NOFOLLOW);
		fx->mounted = false;
		close(fx->fd);
		fx->fd = -1;
	}
	return rc;
}

/*
 * Shutdown's progress (the deferred call): once no request is in the
 * chain, unmount (lazily), close /dev/fuse (the kernel fails what is still
 * pending) and say done.
 */
static void on_defer(struct bks_defer *d)
{
	struct fx *fx = d->opaque;
	void (*fn)(void *arg) = fx->down;

	if (!fx->stopping || fx->in_flight)
		return;
	if (fx->watching) {
		bks_watch_del(&fx->w);
		fx->watching = false;
	}
	if (fx->mounted) {
		umount2(fx->mnt, MNT_DETACH | UMOUNT_NOFOLLOW);
		fx->mounted = false;
	}
	/* The ring's commands hold /dev/fuse too: they go first. */
	fx_uring_stop(fx);
	if (fx->fd >= 0) {
		close(fx->fd);
		fx->fd = -1;
	}
	fx->st.connections = 0;
	fx->down = NULL;
	if (fn)
		fn(fx->down_arg);
}

static void fx_shutdown(void *state, void (*fn)(void *arg), void *arg)
{
	struct fx *fx = state;

	fx->down = fn;
	fx->down_arg = arg;
	fx->stopping = true;
	bks_defer_schedule(&fx->defer);
}

static void fx_stats(void *state, struct bks_export_stats *out)
{
	struct fx *fx = state;

	*out = fx->st;
	out->in_flight = fx->in_flight;
}

static void fx_free(void *state)
{
	struct fx *fx = state;

	bks_defer_cancel(&fx->defer);
	if (fx->watching)
		bks_watch_del(&fx->w);
	if (fx->mounted)
		umount2(fx->mnt, MNT_DETACH | UMOUNT_NOFOLLOW);
	fx_uring_stop(fx);
	if (fx->fd >= 0)
		close(fx->fd);
	if (fx->adopt_fd >= 0)
		close(fx->adopt_fd);
	if (fx->rbuf)
		fx_buf_put(fx, fx->rbuf, FX_BUF_CLASSES - 1);
	fx_pool_free(fx);
	free(fx->mnt);
	free(fx);
}

static const struct bks_export_ops fx_ops = {
    .name = "fuse",
    .start = fx_start,
    .shutdown = fx_shutdown,
    .stats = fx_stats,
    .free = fx_free,
};

int bks_fuse_export_new(struct bks_export **out, struct bks_loop *loop,
			struct bks_chain *chain,
			const struct bks_fuse_config *cfg,
			struct bks_error *err)
{
	struct fx *fx = NULL;
	int rc = 0;

	*out = NULL;
	if (!cfg->mountpoint || cfg->mountpoint[0] != '/') {
		rc = bks_error_setmsg(err, EINVAL,
				      "FUSE export: the mount point must be "
				      "an absolute path");
		goto out;
	}
	fx = calloc(1, sizeof(*fx));
	if (!fx || !(fx->mnt = strdup(cfg->mountpoint))) {
		rc = bks_error_set(err, ENOMEM, "FUSE export");
		goto out;
	}
	fx->loop = loop;
	fx->chain = chain;
	fx->ro = cfg->read_only;
	fx->fd = -1;
	fx->adopt_fd = cfg->adopt ? cfg->dev_fd : -1;
	fx->inited_fn = cfg->inited;
	fx->want = cfg->transport == BKS_FUSE_TRANSPORT_URING
		       ? BKS_FUSE_TRANSPORT_URING
		       : BKS_FUSE_TRANSPORT_READV;
	fx->transport = BKS_FUSE_TRANSPORT_READV;
	fx->inited_arg = cfg->arg;
	bks_defer_init(loop, &fx->defer, on_defer, fx);
	bks_export_init(&fx->exp, &fx_ops, fx, chain);
	*out = &fx->exp;
	fx = NULL;
out:
	if (fx) {
		free(fx->mnt);
		free(fx);
	}
	if (rc < 0 && cfg->adopt && cfg->dev_fd >= 0)
		close(cfg->dev_fd);
	return rc;
}
