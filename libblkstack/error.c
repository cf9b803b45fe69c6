/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* Errors with context: see include/blkstack/error.h. */
#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "blkstack/error.h"

/*
 * Text formatted on the stack before it is shortened to fit a message: a
 * PATH_MAX path with its context.  Longer text is formatted on the heap.
 */
#define TEXT_MAX (PATH_MAX + BKS_ERROR_MSG_MAX)
/* Room kept after the context for ": " and strerror(). */
#define REASON_MAX 128

static const char ellipsis[] = "...";

static int fix_code(int code)
{
	return code > 0 ? code : EIO;
}

/* A UTF-8 continuation byte: never the first byte kept after a cut. */
static int continuation(char c)
{
	return ((unsigned char)c & 0xc0) == 0x80;
}

/*
 * Put the len bytes of text (not msg itself) into msg: all of them if they
 * fit, else their start and their end around "...".  The start says what
 * was done and the end why it failed (strerror), so a long object in the
 * middle (a path) is what gets shortened.  No UTF-8 sequence is split.
 */
static void fit(char *msg, const char *text, size_t len)
{
	const size_t max = BKS_ERROR_MSG_MAX - 1;
	size_t head, tail;

	if (len <= max) {
		memcpy(msg, text, len);
		msg[len] = '\0';
		return;
	}
	head = (max - (sizeof(ellipsis) - 1)) / 2;
	tail = max - (sizeof(ellipsis) - 1) - head;
	while (head > 0 && continuation(text[head]))
		head--;
	while (tail > 0 && continuation(text[len - tail]))
		tail--;
	memcpy(msg, text, head);
	memcpy(msg + head, ellipsis, sizeof(ellipsis) - 1);
	memcpy(msg + head + sizeof(ellipsis) - 1, text + len - tail, tail);
	msg[head + sizeof(ellipsis) - 1 + tail] = '\0';
}

/*
 * Format fmt into buf (size bytes), or into *heap when it is longer (the
 * caller frees *heap), leaving room bytes free after the text.  Returns
 * the text and its length in *len.  Without memory for a long text, the
 * start of it that fits in buf.
 */
static char *format(char *buf, size_t size, size_t room, char **heap,
		    size_t *len, const char *fmt, va_list ap)
{
	va_list again;
	int n;

	*heap = NULL;
	va_copy(again, ap);
	n = vsnprintf(buf, size - room, fmt, again);
	va_end(again);
	if (n < 0) {
		buf[0] = '\0';
		*len = 0;
		return buf;
	}
	if ((size_t)n < size - room) {
		*len = (size_t)n;
		return buf;
	}
	*heap = malloc((size_t)n + 1 + room);
	if (!*heap) {
		*len = size - room - 1;
		return buf;
	}
	vsnprintf(*heap, (size_t)n + 1, fmt, ap);
	*len = (size_t)n;
	return *heap;
}

int bks_error_set(struct bks_error *err, int code, const char *fmt, ...)
{
	char buf[TEXT_MAX], *heap, *text;
	va_list ap;
	size_t len;
	int n;

	code = fix_code(code);
	if (!err)
		return -code;
	err->code = code;
	va_start(ap, fmt);
	text = format(buf, sizeof(buf), REASON_MAX, &heap, &len, fmt, ap);
	va_end(ap);
	n = snprintf(text + len, REASON_MAX, ": %s", strerror(code));
	if (n > 0)
		len += (size_t)n < REASON_MAX ? (size_t)n : REASON_MAX - 1;
	fit(err->msg, text, len);
	free(heap);
	bks_sanitize_line(err->msg);
	return -code;
}

int bks_error_setmsg(struct bks_error *err, int code, const char *fmt, ...)
{
	char buf[TEXT_MAX], *heap, *text;
	va_list ap;
	size_t len;

	code = fix_code(code);
	if (!err)
		return -code;
	err->code = code;
	va_start(ap, fmt);
	text = format(buf, sizeof(buf), 0, &heap, &len, fmt, ap);
	va_end(ap);
	fit(err->msg, text, len);
	free(heap);
	bks_sanitize_line(err->msg);
	return -code;
}

int bks_error_prepend(struct bks_error *err, const char *fmt, ...)
{
	char buf[TEXT_MAX], *heap, *text;
	size_t len, old;
	va_list ap;

	if (!err)
		return -EIO;
	va_start(ap, fmt);
	text =
	    format(buf, sizeof(buf), BKS_ERROR_MSG_MAX, &heap, &len, fmt, ap);
	va_end(ap);
	old = strnlen(err->msg, sizeof(err->msg) - 1);
	memcpy(text + len, err->msg, old);
	fit(err->msg, text, len + old);
	free(heap);
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
