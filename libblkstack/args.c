/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* Shared argument parsing for drivers: see include/blkstack/driver.h. */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "blkstack/driver.h"

/* The option at p, up to the next ',' or the end: its length. */
static size_t option_len(const char *p)
{
	const char *comma = strchr(p, ',');

	return comma ? (size_t)(comma - p) : strlen(p);
}

/* Refuse the current option: what is wrong, then the usage. */
static int refuse(const struct bks_args *a, struct bks_error *err,
		  const char *fmt, ...) __attribute__((format(printf, 3, 4)));

static int refuse(const struct bks_args *a, struct bks_error *err,
		  const char *fmt, ...)
{
	char why[256];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(why, sizeof(why), fmt, ap);
	va_end(ap);
	return bks_error_setmsg(err, EINVAL, "%s; usage: %s", why, a->usage);
}

void bks_args_init(struct bks_args *a, const char *text,
		   const char *const *keys, const char *usage)
{
	memset(a, 0, sizeof(*a));
	a->text = text ? text : "";
	a->keys = keys;
	a->usage = usage;
	a->pos = *a->text ? a->text : NULL;
}

int bks_args_next(struct bks_args *a, struct bks_error *err)
{
	const char *p = a->pos, *eq;
	size_t len, klen, vlen;
	unsigned int i;

	if (!p)
		return 0;
	a->n++;
	len = option_len(p);
	a->pos = p[len] ? p + len + 1 : NULL;
	if (len == 0)
		return refuse(a, err, "option %u is empty (%s)", a->n,
			      p == a->text ? "a leading ','"
			      : !p[0]	   ? "a trailing ','"
					   : "',,'");
	eq = memchr(p, '=', len);
	klen = eq ? (size_t)(eq - p) : len;
	if (klen == 0)
		return refuse(a, err,
			      "option %u has no name before '=' ('%.*s')", a->n,
			      (int)(len < 64 ? len : 64), p);
	if (klen >= sizeof(a->key))
		return refuse(a, err,
			      "option %u: name '%.*s...' is longer than %zu "
			      "bytes",
			      a->n, 32, p, sizeof(a->key) - 1);
	memcpy(a->key, p, klen);
	a->key[klen] = '\0';
	for (i = 0; a->keys[i]; i++) {
		if (strcmp(a->keys[i], a->key) == 0)
			break;
	}
	if (!a->keys[i] || i >= BKS_ARGS_MAX_KEYS)
		return refuse(a, err, "unknown option '%s'", a->key);
	if (!eq)
		return refuse(a, err, "option '%s' has no value (%s=...)",
			      a->key, a->key);
	vlen = len - klen - 1;
	if (vlen == 0)
		return refuse(a, err, "option '%s' has an empty value", a->key);
	if (vlen >= sizeof(a->value))
		return refuse(
		    a, err, "option '%s': the value is %zu bytes; at most %zu",
		    a->key, vlen, sizeof(a->value) - 1);
	if (a->seen[i]) {
		const char *first = a->seen[i];

		return refuse(
		    a, err, "option '%s' is given twice: '%.*s', then '%.*s'",
		    a->key, (int)option_len(first), first, (int)len, p);
	}
	a->seen[i] = p;
	memcpy(a->value, eq + 1, vlen);
	a->value[vlen] = '\0';
	a->index = i;
	return 1;
}

int bks_args_bad_value(const struct bks_args *a, struct bks_error *err,
		       const char *fmt, ...)
{
	char why[256];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(why, sizeof(why), fmt, ap);
	va_end(ap);
	return refuse(a, err, "option '%s': '%s' %s", a->key, a->value, why);
}

int bks_args_size(const struct bks_args *a, uint64_t *out,
		  struct bks_error *err)
{
	int rc = bks_parse_size(a->value, out);

	if (rc == -ERANGE)
		return bks_args_bad_value(a, err,
					  "is too large (more than "
					  "2^64 - 1 bytes)");
	if (rc < 0)
		return bks_args_bad_value(a, err,
					  "is not a size (a number of bytes "
					  "with an optional K, M, G or T)");
	return 0;
}

int bks_parse_size(const char *s, uint64_t *out)
{
	unsigned long long v;
	unsigned int shift = 0;
	char *end;

	if (!s || *s < '0' || *s > '9')
		return -EINVAL;
	errno = 0;
	v = strtoull(s, &end, 10);
	if (errno)
		return -ERANGE;
	switch (*end) {
	case '\0':
		break;
	case 'K':
	case 'k':
		shift = 10;
		break;
	case 'M':
	case 'm':
		shift = 20;
		break;
	case 'G':
	case 'g':
		shift = 30;
		break;
	case 'T':
	case 't':
		shift = 40;
		break;
	default:
		return -EINVAL;
	}
	if (shift && end[1] != '\0')
		return -EINVAL;
	if (shift && v > (UINT64_MAX >> shift))
		return -ERANGE;
	*out = (uint64_t)v << shift;
	return 0;
}

/* The errno values a user may name; others can be given as numbers. */
static const struct {
	const char *name;
	int value;
} errno_names[] = {
    {"EPERM", EPERM},
    {"ENOENT", ENOENT},
    {"EIO", EIO},
    {"ENXIO", ENXIO},
    {"EAGAIN", EAGAIN},
    {"ENOMEM", ENOMEM},
    {"EACCES", EACCES},
    {"EBUSY", EBUSY},
    {"EINVAL", EINVAL},
    {"EFBIG", EFBIG},
    {"ENOSPC", ENOSPC},
    {"EROFS", EROFS},
    {"ENOTSUP", ENOTSUP},
    {"EOPNOTSUPP", EOPNOTSUPP},
    {"EOVERFLOW", EOVERFLOW},
    {"ETIMEDOUT", ETIMEDOUT},
    {"ESHUTDOWN", ESHUTDOWN},
    {"ECONNRESET", ECONNRESET},
    {"EDQUOT", EDQUOT},
    {"ENODEV", ENODEV},
};

int bks_parse_errno(const char *s, int *out)
{
	unsigned long v;
	char *end;

	if (!s || !*s)
		return -EINVAL;
	for (size_t i = 0; i < sizeof(errno_names) / sizeof(errno_names[0]);
	     i++) {
		if (strcmp(s, errno_names[i].name) == 0) {
			*out = errno_names[i].value;
			return 0;
		}
	}
	if (*s < '1' || *s > '9')
		return -EINVAL;
	errno = 0;
	v = strtoul(s, &end, 10);
	if (errno || *end || v > 4095)
		return -EINVAL;
	*out = (int)v;
	return 0;
}
