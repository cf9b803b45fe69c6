/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The sharing rule: which disk of this host uses which image, read from
 * the workers themselves (hp-share.h).
 *
 * RUNDIR/NAME.attached, one line each:
 *   domid N
 *   vm PATH                  ("vm" alone when the domain has none)
 *   backend PATH
 *   image f|b r|w DEV INO    (one per image: f a file by st_dev and st_ino,
 *                             b a block device by 0 and st_rdev)
 */
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include "hp-share.h"
#include "small-file.h"
#include "worker-live.h"
#include "worker-name.h"

#define SHARING_LOCK	 "sharing.lock"
#define USAGE_SUFFIX	 ".attached"
#define USAGE_TMP_SUFFIX ".attached.tmp"
/* A record is a few lines per image. */
#define USAGE_MAX (HP_SHARE_BACKEND_MAX + HP_SHARE_VM_MAX + 64 * 80)

/* The access mode of /proc/PID/fdinfo/FD: true if open for writing. */
static bool fd_writable(pid_t pid, const char *fd)
{
	char path[384], buf[512], *p;
	unsigned long flags;

	snprintf(path, sizeof(path), "/proc/%d/fdinfo/%s", (int)pid, fd);
	if (small_file_read(path, buf, sizeof(buf)) < 0)
		return true; /* cannot tell: assume the worst */
	p = strstr(buf, "flags:");
	if (!p || sscanf(p + 6, "%lo", &flags) != 1)
		return true;
	return (flags & O_ACCMODE) != O_RDONLY;
}

int hp_worker_images(pid_t pid, const char *wdir, bool disk_rw,
		     struct hp_usage *u, struct bks_error *err)
{
	char dir[64], p[384], target[PATH_MAX];
	size_t wlen = strlen(wdir);
	struct dirent *de;
	struct stat lk;
	int ret = 0;
	DIR *d;

	u->n = 0;
	if (snprintf(target, sizeof(target), "%s/lock", wdir) >=
		(int)sizeof(target) ||
	    stat(target, &lk) < 0)
		memset(&lk, 0, sizeof(lk));
	snprintf(dir, sizeof(dir), "/proc/%d/fd", (int)pid);
	d = opendir(dir);
	if (!d)
		return bks_error_set(err, errno,
				     "list the images of worker %d: "
				     "open %s",
				     (int)pid, dir);
	while ((de = readdir(d))) {
		struct hp_image img = {0};
		struct stat st;
		ssize_t n;
		unsigned int i;

		if (de->d_name[0] == '.')
			continue;
		snprintf(p, sizeof(p), "%s/%s", dir, de->d_name);
		if (stat(p, &st) < 0 ||
		    !(S_ISREG(st.st_mode) || S_ISBLK(st.st_mode)))
			continue;
		if (st.st_dev == lk.st_dev && st.st_ino == lk.st_ino)
			continue;
		n = readlink(p, target, sizeof(target) - 1);
		target[n > 0 ? n : 0] = '\0';
		/* Its own files, and anonymous memory, are not images. */
		if ((strncmp(target, wdir, wlen) == 0 && target[wlen] == '/') ||
		    strncmp(target, "/memfd:", 7) == 0)
			continue;
		img.blk = S_ISBLK(st.st_mode);
		img.dev = img.blk ? 0 : st.st_dev;
		img.ino = img.blk ? st.st_rdev : st.st_ino;
		img.rw = disk_rw && fd_writable(pid, de->d_name);
		img.fd = atoi(de->d_name);
		/* For messages only: a long name is cut. */
		memcpy(img.path, target, strnlen(target, sizeof(img.path) - 1));
		for (i = 0; i < u->n; i++) {
			if (u->img[i].dev == img.dev &&
			    u->img[i].ino == img.ino) {
				u->img[i].rw |= img.rw;
				break;
			}
		}
		if (i < u->n)
			continue;
		if (u->n == HP_SHARE_MAX_IMAGES) {
			ret = bks_error_setmsg(err, E2BIG,
					       "worker %d holds more than %d "
					       "images",
					       (int)pid, HP_SHARE_MAX_IMAGES);
			break;
		}
		u->img[u->n++] = img;
	}
	closedir(d);
	return ret;
}

/* ---- the record ---------------------------------------------------------- */

/* A path we write into a record: printable, no spaces. */
static bool word_ok(const char *s)
{
	for (; *s; s++) {
		if (!isgraph((unsigned char)*s))
			return false;
	}
	return true;
}

int hp_usage_format(const struct hp_usage *u, char *buf, size_t size)
{
	size_t len;
	int n;

	if (!word_ok(u->vm) || !word_ok(u->backend) || !u->backend[0])
		return -EINVAL;
	n = snprintf(buf, size, "domid %ld\nvm%s%s\nbackend %s\n", u->domid,
		     u->vm[0] ? " " : "", u->vm, u->backend);
	if (n < 0 || (size_t)n >= size)
		return -ENAMETOOLONG;
	len = (size_t)n;
	for (unsigned int i = 0; i < u->n; i++) {
		n = snprintf(buf + len, size - len, "image %c %c %llu %llu\n",
			     u->img[i].blk ? 'b' : 'f',
			     u->img[i].rw ? 'w' : 'r', u->img[i].dev,
			     u->img[i].ino);
		if (n < 0 || (size_t)n >= size - len)
			return -ENAMETOOLONG;
		len += (size_t)n;
	}
	return (int)len;
}

/* Copy [v, e) into dst (size) if it is a non-empty word that fits. */
static bool take_word(const char *v, const char *e, char *dst, size_t size)
{
	if (e <= v || (size_t)(e - v) >= size)
		return false;
	memcpy(dst, v, (size_t)(e - v));
	dst[e - v] = '\0';
	return word_ok(dst);
}

int hp_usage_parse(const char *text, struct hp_usage *u)
{
	const char *line = text;
	int step = 0;

	memset(u, 0, sizeof(*u));
	while (*line) {
		const char *e = strchr(line, '\n');
		char img_t, img_m, tail;
		unsigned long long a, b;
		char one[128];

		if (!e)
			return -EINVAL; /* every line ends */
		if (step == 0) {
			long d;

			if ((size_t)(e - line) >= sizeof(one))
				return -EINVAL;
			memcpy(one, line, (size_t)(e - line));
			one[e - line] = '\0';
			if (sscanf(one, "domid %ld%c", &d, &tail) != 1 ||
			    d < -1 || d >= 0x7ff0)
				return -EINVAL;
			u->domid = d;
		} else if (step == 1) {
			if (e - line == 2 && !strncmp(line, "vm", 2))
				u->vm[0] = '\0';
			else if (strncmp(line, "vm ", 3) ||
				 !take_word(line + 3, e, u->vm, sizeof(u->vm)))
				return -EINVAL;
		} else if (step == 2) {
			if (strncmp(line, "backend ", 8) ||
			    !take_word(line + 8, e, u->backend,
				       sizeof(u->backend)))
				return -EINVAL;
		} else {
			if ((size_t)(e - line) >= sizeof(one) ||
			    u->n == HP_SHARE_MAX_IMAGES)
				return -EINVAL;
			memcpy(one, line, (size_t)(e - line));
			one[e - line] = '\0';
			if (sscanf(one, "image %c %c %llu %llu%c", &img_t,
				   &img_m, &a, &b, &tail) != 4 ||
			    (img_t != 'f' && img_t != 'b') ||
			    (img_m != 'r' && img_m != 'w'))
				return -EINVAL;
			u->img[u->n].blk = img_t == 'b';
			u->img[u->n].rw = img_m == 'w';
			u->img[u->n].dev = a;
			u->img[u->n].ino = b;
			u->n++;
		}
		step++;
		line = e + 1;
	}
	return step >= 3 ? 0 : -EINVAL;
}

/* ---- claim and release --------------------------------------------------- */

/*
 * May mine and other both be added?  0, or -EBUSY with err set, naming
 * both disks (their workers) and how each uses the image: an image one
 * of them opened read-only is a backing file (a base) there.
 */
static int may_share(const struct hp_usage *mine, const char *mine_name,
		     const struct hp_usage *other, const char *other_name,
		     struct bks_error *err)
{
	if (!strcmp(mine->backend, other->backend))
		return bks_error_setmsg(err, EEXIST,
					"backend %s is already served by "
					"another disk (worker %s)",
					mine->backend, other_name);
	if (mine->domid >= 0 && mine->domid == other->domid)
		return 0; /* two disks of one guest */
	if (mine->vm[0] && !strcmp(mine->vm, other->vm))
		return 0; /* one VM: a migration's two domains */
	for (unsigned int i = 0; i < mine->n; i++) {
		for (unsigned int j = 0; j < other->n; j++) {
			const struct hp_image *a = &mine->img[i];
			const struct hp_image *b = &other->img[j];

			if (a->dev != b->dev || a->ino != b->ino ||
			    a->blk != b->blk || (!a->rw && !b->rw))
				continue;
			return bks_error_setmsg(
			    err, EBUSY,
			    "image %s of this disk (worker %s, %s) is in use "
			    "%s by domain %ld (worker %s, vm %s), which is not "
			    "this disk's VM; refusing to share it",
			    a->path, mine_name,
			    a->rw ? "read-write" : "read-only",
			    b->rw ? "read-write" : "read-only", other->domid,
			    other_name, other->vm[0] ? other->vm : "none");
		}
	}
	return 0;
}

/* Check mine against every other live disk's record in rundir. */
static int check_others(const char *rundir, const char *name,
			const struct hp_usage *mine, struct bks_error *err)
{
	size_t slen = strlen(USAGE_SUFFIX);
	struct hp_usage *u = NULL;
	struct dirent *de;
	char *text = NULL;
	DIR *d = NULL;
	int ret = 0;

	text = malloc(USAGE_MAX);
	u = malloc(sizeof(*u));
	if (!text || !u) {
		ret = bks_error_set(err, ENOMEM, "check sharing in %s", rundir);
		goto out;
	}
	d = opendir(rundir);
	if (!d) {
		ret = bks_error_set(err, errno, "open %s", rundir);
		goto out;
	}
	while (ret == 0 && (de = readdir(d))) {
		char other[WORKER_NAME_MAX + 1], path[PATH_MAX + 96];
		size_t len = strlen(de->d_name);
		struct worker_proc p;
		int n;

		if (len <= slen ||
		    strcmp(de->d_name + len - slen, USAGE_SUFFIX) ||
		    len - slen > WORKER_NAME_MAX)
			continue;
		memcpy(other, de->d_name, len - slen);
		other[len - slen] = '\0';
		if (!strcmp(other, name) || !worker_name_valid(other))
			continue;
		snprintf(path, sizeof(path), "%s/%s", rundir, other);
		if (worker_live(path, &p, err) < 0) {
			bks_error_clear(err);
			continue; /* its worker is gone: nothing in use */
		}
		snprintf(path, sizeof(path), "%s/%s", rundir, de->d_name);
		n = small_file_read(path, text, USAGE_MAX);
		if (n == -ENOENT)
			continue;
		if (n < 0 || hp_usage_parse(text, u) < 0) {
			ret = bks_error_setmsg(err, EINVAL,
					       "the usage record %s of a live "
					       "disk is unreadable; refusing "
					       "to guess",
					       path);
			break;
		}
		ret = may_share(mine, name, u, other, err);
	}
out:
	if (d)
		closedir(d);
	free(text);
	free(u);
	return ret;
}

/* Write RUNDIR/NAME.attached whole, through a fresh temporary. */
static int write_record(const char *rundir, const char *name,
			const struct hp_usage *u, struct bks_error *err)
{
	char path[PATH_MAX + 96], tmp[PATH_MAX + 96], *text = NULL;
	int fd = -1, len, ret = 0;

	snprintf(path, sizeof(path), "%s/%s" USAGE_SUFFIX, rundir, name);
	snprintf(tmp, sizeof(tmp), "%s/%s" USAGE_TMP_SUFFIX, rundir, name);
	text = malloc(USAGE_MAX);
	if (!text)
		return bks_error_set(err, ENOMEM, "write %s", path);
	len = hp_usage_format(u, text, USAGE_MAX);
	if (len < 0) {
		ret =
		    bks_error_setmsg(err, -len, "usage record of %s: %s", name,
				     len == -EINVAL ? "bad path" : "too long");
		goto out;
	}
	/* A temporary a killed run left (we hold the disk's lock). */
	if (unlink(tmp) < 0 && errno != ENOENT) {
		ret = bks_error_set(err, errno, "remove %s", tmp);
		goto out;
	}
	fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC,
		  0600);
	if (fd < 0) {
		ret = bks_error_set(err, errno, "create %s", tmp);
		goto out;
	}
	if (write(fd, text, (size_t)len) != len) {
		ret = bks_error_set(err, errno ? errno : EIO, "write %s", tmp);
		goto out;
	}
	if (rename(tmp, path) < 0)
		ret = bks_error_set(err, errno, "rename %s", tmp);
out:
	if (fd >= 0)
		close(fd);
	if (ret < 0 && fd >= 0)
		unlink(tmp);
	free(text);
	return ret;
}

int hp_share_claim(const char *rundir, const char *name,
		   const struct hp_usage *mine, struct bks_error *err)
{
	char path[PATH_MAX + 32];
	int fd, ret;

	if (snprintf(path, sizeof(path), "%s/" SHARING_LOCK, rundir) >=
	    (int)sizeof(path))
		return bks_error_setmsg(err, ENAMETOOLONG, "%s: too long",
					rundir);
	fd = open(path, O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0600);
	if (fd < 0)
		return bks_error_set(err, errno, "open %s", path);
	if (flock(fd, LOCK_EX) < 0) {
		ret = bks_error_set(err, errno, "lock %s", path);
		goto out;
	}
	ret = check_others(rundir, name, mine, err);
	if (ret == 0)
		ret = write_record(rundir, name, mine, err);
out:
	close(fd); /* and the lock with it */
	return ret;
}

void hp_share_release(const char *rundir, const char *name)
{
	char path[PATH_MAX + 96];

	snprintf(path, sizeof(path), "%s/%s" USAGE_SUFFIX, rundir, name);
	unlink(path);
	snprintf(path, sizeof(path), "%s/%s" USAGE_TMP_SUFFIX, rundir, name);
	unlink(path);
}
