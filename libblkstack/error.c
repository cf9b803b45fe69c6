/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* Errors with context: see include/blkstack/error.h. */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "blkstack/error.h"

static int fix_code(int code)
{
	return code > 0 ? code : EIO;
}

int bks_error_set(struct bks_error *err, int code, const char *fmt, ...)
{
	va_list ap;
	int n;

	code = fix_code(code);
	if (!err)
		return -code;
	err->code = code;
	va_start(ap, fmt);
	n = vsnprintf(err->msg, sizeof(err->msg), fmt, ap);
	va_end(ap);
	if (n >= 0 && (size_t)n < sizeof(err->msg))
		snprintf(err->msg + n, sizeof(err->msg) - (size_t)n, ": %s",
			 strerror(code));
	bks_sanitize_line(err->msg);
	return -code;
}

int bks_error_setmsg(struct bks_error *err, int code, const char *fmt, ...)
{
	va_list ap;

	code = fix_code(code);
	if (!err)
		return -code;
	err->code = code;
	va_start(ap, fmt);
	vsnprintf(err->msg, sizeof(err->msg), fmt, ap);
	va_end(ap);
	bks_sanitize_line(err->msg);
	return -code;
}

int bks_error_prepend(struct bks_error *err, const char *fmt, ...)
{
	char prefix[BKS_ERROR_MSG_MAX];
	size_t plen, keep;
	va_list ap;
	int n;

	if (!err)
		return -EIO;
	va_start(ap, fmt);
	n = vsnprintf(prefix, sizeof(prefix), fmt, ap);
	va_end(ap);
	plen = n < 0 ? 0 : strlen(prefix);
	/* Shift the old message right, dropping its end if it must. */
	keep = strnlen(err->msg, sizeof(err->msg) - 1);
	if (plen + keep > sizeof(err->msg) - 1)
		keep = sizeof(err->msg) - 1 - plen;
	memmove(err->msg + plen, err->msg, keep);
	memcpy(err->msg, prefix, plen);
	err->msg[plen + keep] = '\0';
	bks_sanitize_line(err->msg);
	return -fix_code(err->code);
}

void bks_error_clear(struct bks_error *err)
{
	if (!err)
		return;
	err->code = 0;
	err->msg[0] = '\0';
}

void bks_sanitize_line(char *s)
{
	for (; s && *s; s++) {
		unsigned char c = (unsigned char)*s;

		if (c < 0x20 || c == 0x7f)
			*s = '?';
	}
}
