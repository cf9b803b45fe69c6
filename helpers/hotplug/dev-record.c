/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The device record: the one line (hp_dev_format) that an attach leaves
 * in xenstore so that a later action, in another process, can undo it
 * (hp_dev_parse, strict: the line comes back from xenstore).  See hp-dev.h.
 */
#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>

#include "dec.h"
#include "dev-record.h"
#include "hp-dev.h"
#include "rundir.h"

/* Limits of dev_t (12-bit major, 20-bit minor). */
#define DEV_MAJOR_MAX 0xfffu
#define DEV_MINOR_MAX 0xfffffu

/* Is s a path we may write into the record (no whitespace, no controls)? */
bool hp_dev_record_safe(const char *s)
{
	for (; *s; s++) {
		if ((unsigned char)*s <= ' ' || *s == 0x7f)
			return false;
	}
	return true;
}

/* "PID:STARTTIME", both decimal. */
static bool worker_token_ok(const char *v, const char *ve)
{
	const char *colon = memchr(v, ':', (size_t)(ve - v));
	bool digits = colon && colon > v && colon + 1 < ve && ve - v < 48;

	for (const char *c = v; digits && c < ve; c++)
		digits = c == colon || (*c >= '0' && *c <= '9');
	return digits;
}

int hp_dev_format(const struct hp_dev *dev, char *buf, size_t size)
{
	int n;

	if ((dev->mech != HP_DEV_LOOP && dev->mech != HP_DEV_NBD &&
	     dev->mech != HP_DEV_FUSE) ||
	    !hp_dev_record_safe(dev->path) ||
	    !hp_dev_record_safe(dev->fuse_dir) || dev->fuse_pid < 0)
		return -EINVAL;
	if (dev->worker[0] &&
	    !worker_token_ok(dev->worker, dev->worker + strlen(dev->worker)))
		return -EINVAL;
	n = snprintf(buf, size,
		     "mech=%s path=%s major=%u minor=%u staged=%d fuse_pid=%d "
		     "fuse_dir=%s%s%s",
		     hp_dev_mech_name(dev->mech), dev->path, dev->major,
		     dev->minor, dev->staged ? 1 : 0, dev->fuse_pid,
		     dev->fuse_dir, dev->worker[0] ? " worker=" : "",
		     dev->worker);
	if (n < 0 || (size_t)n >= size)
		return -ENAMETOOLONG;
	return n;
}

/*
 * Take "key=" at *p and return its value's extent [*v, *ve): up to the
 * next single space, or the end for the last key.
 */
static bool take_field(const char **p, const char *key, bool last,
		       const char **v, const char **ve)
{
	size_t klen = strlen(key);

	if (strncmp(*p, key, klen) != 0 || (*p)[klen] != '=')
		return false;
	*v = *p + klen + 1;
	*ve = last ? *v + strlen(*v) : strchrnul(*v, ' ');
	if (!last && **ve != ' ')
		return false;
	*p = last ? *ve : *ve + 1;
	return true;
}

/* [v, ve) as a decimal (dec.h: no sign, no leading zero), at most max. */
static bool parse_uint(const char *v, const char *ve, unsigned long max,
		       unsigned long *out)
{
	unsigned long long n = 0;

	if (dec_parse_uint_n(v, (size_t)(ve - v), max, &n) < 0)
		return false;
	*out = (unsigned long)n;
	return true;
}

/* Does [v, ve) look like prefix followed by a decimal index? */
static bool dev_path_ok(const char *v, const char *ve, const char *prefix)
{
	unsigned long idx;
	size_t plen = strlen(prefix);

	return (size_t)(ve - v) > plen && strncmp(v, prefix, plen) == 0 &&
	       parse_uint(v + plen, ve, 1u << 20, &idx);
}

/* One plain path component of [A-Za-z0-9._-], not starting with '.'. */
bool hp_dev_component_ok(const char *v, const char *ve)
{
	if (v == ve || *v == '.' || ve - v > NAME_MAX)
		return false;
	for (; v < ve; v++) {
		if (!isalnum((unsigned char)*v) && *v != '.' && *v != '_' &&
		    *v != '-')
			return false;
	}
	return true;
}

int hp_dev_parse(const char *line, const char *state_dir, struct hp_dev *dev,
		 struct bks_error *err)
{
	const char *p = line, *v, *ve, *what = "mech";
	size_t slen = strlen(state_dir);
	bool has_worker;
	unsigned long n;
	struct hp_dev d;

	memset(&d, 0, sizeof(d));
	if (!take_field(&p, what = "mech", false, &v, &ve))
		goto bad;
	if ((size_t)(ve - v) == 4 && memcmp(v, "loop", 4) == 0)
		d.mech = HP_DEV_LOOP;
	else if ((size_t)(ve - v) == 4 && memcmp(v, "fuse", 4) == 0)
		d.mech = HP_DEV_FUSE;
	else if ((size_t)(ve - v) == 3 && memcmp(v, "nbd", 3) == 0)
		d.mech = HP_DEV_NBD;
	else
		goto bad;

	if (!take_field(&p, what = "path", false, &v, &ve))
		goto bad;
	if (v != ve) {
		if (!dev_path_ok(v, ve,
				 d.mech != HP_DEV_NBD ? "/dev/loop"
						      : "/dev/nbd") ||
		    (size_t)(ve - v) >= sizeof(d.path))
			goto bad;
		memcpy(d.path, v, (size_t)(ve - v));
	}

	if (!take_field(&p, what = "major", false, &v, &ve) ||
	    !parse_uint(v, ve, DEV_MAJOR_MAX, &n))
		goto bad;
	d.major = (unsigned int)n;
	if (!take_field(&p, what = "minor", false, &v, &ve) ||
	    !parse_uint(v, ve, DEV_MINOR_MAX, &n))
		goto bad;
	d.minor = (unsigned int)n;
	/* A device number goes with a device path, of the right major. */
	what = "major";
	if (d.path[0]) {
		if (d.major != (d.mech != HP_DEV_NBD ? HP_DEV_LOOP_MAJOR
						     : HP_DEV_NBD_MAJOR))
			goto bad;
	} else if (d.major || d.minor) {
		goto bad;
	}

	if (!take_field(&p, what = "staged", false, &v, &ve) ||
	    !parse_uint(v, ve, 1, &n))
		goto bad;
	d.staged = n == 1;

	if (!take_field(&p, what = "fuse_pid", false, &v, &ve) ||
	    !parse_uint(v, ve, HP_DEV_PID_MAX, &n))
		goto bad;
	d.fuse_pid = (int)n;

	has_worker = strstr(p, " worker=") != NULL;
	if (!take_field(&p, what = "fuse_dir", !has_worker, &v, &ve))
		goto bad;
	if (v != ve) {
		/* STATE_DIR/one-component, nothing else. */
		if (slen == 0 || (size_t)(ve - v) <= slen + 1 ||
		    strncmp(v, state_dir, slen) != 0 || v[slen] != '/' ||
		    !hp_dev_component_ok(v + slen + 1, ve) ||
		    (size_t)(ve - v) >= sizeof(d.fuse_dir))
			goto bad;
		memcpy(d.fuse_dir, v, (size_t)(ve - v));
	}
	if (has_worker) {
		if (!take_field(&p, what = "worker", true, &v, &ve) ||
		    !worker_token_ok(v, ve))
			goto bad;
		memcpy(d.worker, v, (size_t)(ve - v));
	}
	what = "fuse_pid";
	if (d.mech == HP_DEV_NBD && (d.fuse_pid || d.fuse_dir[0]))
		goto bad;
	/* fuse: no process of its own; the worker's mount point, or none. */
	if (d.mech == HP_DEV_FUSE && d.fuse_pid)
		goto bad;
	what = "fuse_dir";
	if (d.mech == HP_DEV_FUSE && d.fuse_dir[0] &&
	    strcmp(d.fuse_dir + slen + 1, WORKER_FILE_FUSE) != 0)
		goto bad;
	/*
	 * A staged device is a loop device on a stage's blkstack-fuse, or on
	 * the worker's file.
	 */
	what = "staged";
	if (d.staged && (d.mech == HP_DEV_NBD || !d.path[0] || !d.fuse_dir[0] ||
			 (d.mech == HP_DEV_LOOP && !d.fuse_pid)))
		goto bad;
	/* Every device on the worker's file is staged: the file is not ours. */
	if (d.mech == HP_DEV_FUSE && d.path[0] && !d.staged)
		goto bad;
	*dev = d;
	return 0;
bad:
	return bks_error_setmsg(err, EINVAL,
				"invalid device record (at field %s)", what);
}

/* "/dev/loop12" -> "loop12". */
const char *hp_dev_node_name(const char *path)
{
	const char *s = strrchr(path, '/');

	return s ? s + 1 : path;
}
