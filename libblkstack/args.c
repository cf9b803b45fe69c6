/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* Shared argument parsing for drivers: see include/blkstack/driver.h. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "blkstack/driver.h"

int bks_args_next(const char **cursor, char *key, size_t keysize, char *value,
		  size_t valuesize, struct bks_error *err)
{
	const char *p = *cursor, *end, *eq;
	size_t klen, vlen;

	if (!p || !*p)
		return 0;
	end = strchr(p, ',');
	if (!end)
		end = p + strlen(p);
	eq = memchr(p, '=', (size_t)(end - p));
	klen = (size_t)((eq ? eq : end) - p);
	vlen = eq ? (size_t)(end - eq - 1) : 0;
	if (klen == 0)
		return bks_error_setmsg(err, EINVAL,
					"empty option name at '%.*s'",
					(int)(end - p), p);
	if (klen >= keysize || vlen >= valuesize)
		return bks_error_setmsg(err, EINVAL,
					"option '%.*s' is too long",
					(int)(klen < 64 ? klen : 64), p);
	memcpy(key, p, klen);
	key[klen] = '\0';
	if (eq)
		memcpy(value, eq + 1, vlen);
	value[vlen] = '\0';
	*cursor = *end ? end + 1 : end;
	return 1;
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
