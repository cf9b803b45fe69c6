/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* dom0's policy on guest disk images (hp-policy.h). */
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include "conf.h"
#include "hp-dev.h"
#include "hp-policy.h"

/* Most partitions of one device looked at for a reason. */
#define MAX_PARTS 64

/* An absolute, normalised directory: no ".", "..", "//", trailing "/". */
static bool dir_ok(const char *d)
{
	const char *c = d;

	if (d[0] != '/')
		return false;
	if (!d[1])
		return true;
	while (*c) {
		const char *e;

		c++; /* the '/' */
		e = strchrnul(c, '/');
		if (e == c || (e - c == 1 && c[0] == '.') ||
		    (e - c == 2 && c[0] == '.' && c[1] == '.'))
			return false;
		c = e;
	}
	return true;
}

int hp_policy_parse(struct hp_policy *p, const char *text, const char *name,
		    struct bks_error *err)
{
	unsigned int lineno;
	const char *v;
	char *s, *save = NULL, *tok;
	size_t len;
	bool found;
	int ret;

	memset(p, 0, sizeof(*p));
	ret = conf_find(text, name, "images", &v, &len, &lineno, &found, err);
	if (ret < 0 || !found)
		return ret;
	p->text = strndup(v, len);
	if (!p->text)
		return bks_error_set(err, ENOMEM, "%s:%u: images", name,
				     lineno);
	s = p->text;
	for (tok = strtok_r(s, " \t", &save); tok;
	     tok = strtok_r(NULL, " \t", &save)) {
		if (!dir_ok(tok) || strlen(tok) >= PATH_MAX) {
			bks_sanitize_line(tok);
			ret = bks_error_setmsg(err, EINVAL,
					       "%s:%u: images: \"%.200s\" is "
					       "not an absolute, plain "
					       "directory path",
					       name, lineno, tok);
			goto fail;
		}
		if (p->n == HP_POLICY_MAX_DIRS) {
			ret =
			    bks_error_setmsg(err, EINVAL,
					     "%s:%u: images: more than %d "
					     "directories",
					     name, lineno, HP_POLICY_MAX_DIRS);
			goto fail;
		}
		p->dir[p->n++] = tok;
	}
	if (p->n == 0) {
		ret = bks_error_setmsg(err, EINVAL,
				       "%s:%u: images: no directory given",
				       name, lineno);
		goto fail;
	}
	return 0;
fail:
	hp_policy_free(p);
	return ret;
}

int hp_policy_load(struct hp_policy *p, struct bks_error *err)
{
	const char *name;
	char *text = NULL;
	int ret;

	memset(p, 0, sizeof(*p));
	ret = conf_read(&text, &name, err);
	if (ret == 0)
		ret = hp_policy_parse(p, text, name, err);
	free(text);
	return ret;
}

void hp_policy_free(struct hp_policy *p)
{
	free(p->text);
	memset(p, 0, sizeof(*p));
}

/* Read /sys/dev/block/MAJ:MIN/REL (first line) into buf; false if none. */
static bool sys_read(dev_t d, const char *rel, char *buf, size_t size)
{
	char path[128], *text = NULL;
	bool ok;

	snprintf(path, sizeof(path), "/sys/dev/block/%u:%u/%s", major(d),
		 minor(d), rel);
	ok = conf_read_file(path, &text, PATH_MAX + 64, NULL) == 0;
	if (ok) {
		text[strcspn(text, "\n")] = '\0';
		snprintf(buf, size, "%s", text);
	}
	free(text);
	return ok;
}

/* The device and its partitions, from sysfs. */
static unsigned int with_partitions(dev_t d, dev_t *out, unsigned int max)
{
	char dir[96], rel[NAME_MAX + 16], buf[32];
	unsigned int n = 0, ma, mi;
	struct dirent *de;
	DIR *dd;

	out[n++] = d;
	snprintf(dir, sizeof(dir), "/sys/dev/block/%u:%u", major(d), minor(d));
	dd = opendir(dir);
	if (!dd)
		return n;
	while (n < max && (de = readdir(dd))) {
		if (de->d_name[0] == '.')
			continue;
		snprintf(rel, sizeof(rel), "%s/partition", de->d_name);
		if (!sys_read(d, rel, buf, sizeof(buf)))
			continue;
		snprintf(rel, sizeof(rel), "%s/dev", de->d_name);
		if (sys_read(d, rel, buf, sizeof(buf)) &&
		    sscanf(buf, "%u:%u", &ma, &mi) == 2)
			out[n++] = makedev(ma, mi);
	}
	closedir(dd);
	return n;
}

/* Why an O_EXCL open of the device found it busy, as best we can tell. */
static void busy_reason(dev_t d, char *why, size_t size)
{
	dev_t devs[MAX_PARTS + 1];
	unsigned int n = with_partitions(d, devs, MAX_PARTS + 1);
	char line[PATH_MAX + 256], mnt[PATH_MAX], dir[96];
	struct dirent *de;
	FILE *f;

	snprintf(why, size, "claimed exclusively by something in dom0");
	f = fopen("/proc/self/mountinfo", "re");
	while (f && fgets(line, sizeof(line), f)) {
		unsigned int ma, mi;

		if (sscanf(line, "%*d %*d %u:%u %*s %4095s", &ma, &mi, mnt) !=
		    3)
			continue;
		for (unsigned int i = 0; i < n; i++) {
			if (devs[i] == makedev(ma, mi)) {
				snprintf(why, size, "mounted at %.200s%s", mnt,
					 i ? " (a partition of it)" : "");
				fclose(f);
				return;
			}
		}
	}
	if (f)
		fclose(f);
	for (unsigned int i = 0; i < n; i++) {
		DIR *dd;

		snprintf(dir, sizeof(dir), "/sys/dev/block/%u:%u/holders",
			 major(devs[i]), minor(devs[i]));
		dd = opendir(dir);
		while (dd && (de = readdir(dd))) {
			if (de->d_name[0] == '.')
				continue;
			snprintf(why, size, "held by %.64s%s", de->d_name,
				 i ? " (through a partition)" : "");
			closedir(dd);
			return;
		}
		if (dd)
			closedir(dd);
	}
	f = fopen("/proc/swaps", "re");
	while (f && fgets(line, sizeof(line), f)) {
		struct stat st;

		if (sscanf(line, "%4095s", mnt) != 1 || stat(mnt, &st) < 0 ||
		    !S_ISBLK(st.st_mode))
			continue;
		for (unsigned int i = 0; i < n; i++) {
			if (st.st_rdev == devs[i]) {
				snprintf(why, size, "in use as swap");
				fclose(f);
				return;
			}
		}
	}
	if (f)
		fclose(f);
}

/* Refuse a block device dom0 or blkstack uses; fdp is /proc/PID/fd/N. */
static int check_blk(const struct hp_image *img, const char *fdp,
		     const char *rundir, struct bks_error *err)
{
	dev_t d = (dev_t)img->ino;
	size_t rlen = strlen(rundir);
	char buf[PATH_MAX + 64], why[PATH_MAX + 64];
	int fd;

	if ((sys_read(d, "loop/backing_file", buf, sizeof(buf)) &&
	     !strncmp(buf, rundir, rlen) && buf[rlen] == '/') ||
	    (sys_read(d, "backend", buf, sizeof(buf)) &&
	     !strncmp(buf, HP_DEV_NBD_BACKEND_PREFIX,
		      strlen(HP_DEV_NBD_BACKEND_PREFIX))))
		return bks_error_setmsg(err, EBUSY,
					"image %s is a dom0 device blkstack "
					"made for a disk; refusing to give it "
					"to another",
					img->path);
	fd = open(fdp, O_RDONLY | O_EXCL | O_NONBLOCK | O_CLOEXEC);
	if (fd >= 0) {
		close(fd);
		return 0;
	}
	if (errno != EBUSY)
		return bks_error_set(err, errno, "check image %s: open %s",
				     img->path, fdp);
	busy_reason(d, why, sizeof(why));
	return bks_error_setmsg(err, EBUSY,
				"image %s is in use in dom0 (%s); refusing to "
				"give it to a guest",
				img->path, why);
}

/* Is path dir itself or below it? */
static bool below(const char *path, const char *dir)
{
	size_t n = strlen(dir);

	if (n == 1)
		return path[0] == '/';
	return !strncmp(path, dir, n) && (path[n] == '/' || path[n] == '\0');
}

int hp_policy_check(const struct hp_policy *p, pid_t pid,
		    const struct hp_usage *u, const char *rundir,
		    struct bks_error *err)
{
	char fdp[64], target[PATH_MAX];

	for (unsigned int i = 0; i < u->n; i++) {
		const struct hp_image *img = &u->img[i];
		unsigned int j;
		ssize_t n;
		int ret;

		snprintf(fdp, sizeof(fdp), "/proc/%d/fd/%d", (int)pid, img->fd);
		if (img->blk) {
			ret = check_blk(img, fdp, rundir, err);
			if (ret < 0)
				return ret;
		}
		if (!p->n)
			continue;
		n = readlink(fdp, target, sizeof(target) - 1);
		if (n < 0)
			return bks_error_set(err, errno,
					     "check image %s: readlink %s",
					     img->path, fdp);
		target[n] = '\0';
		for (j = 0; j < p->n && !below(target, p->dir[j]); j++)
			;
		if (j == p->n)
			return bks_error_setmsg(err, EPERM,
						"image %.200s is outside the "
						"image directories allowed "
						"(images = %s ...)",
						target, p->dir[0]);
	}
	return 0;
}
