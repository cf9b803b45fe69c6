/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Errors with context.
 *
 * Every blkstack function that can fail returns 0 (or a non-negative
 * result) on success and a negative errno on failure.  When the caller
 * also needs to know *what* failed, the function takes a struct bks_error
 * and fills it where the failure happens, naming the operation and the
 * object ("open /images/vm.img: No such file or directory").  Libraries
 * fill errors; programs print them.
 */
#ifndef BLKSTACK_ERROR_H
#define BLKSTACK_ERROR_H

#include <stddef.h>

/* Longest message kept, including the terminating NUL. */
#define BKS_ERROR_MSG_MAX 512

struct bks_error {
	int code;		     /* positive errno, 0 if no error */
	char msg[BKS_ERROR_MSG_MAX]; /* one line, no trailing newline */
};

/*
 * Record an error: the message is the formatted context followed by
 * ": " and strerror(code).  Returns -code, so that a failing path can end
 * with "return bks_error_set(err, errno, "open %s", path);".
 *
 * err may be NULL (the caller only wants the code).  code must be a
 * positive errno value; 0 is treated as EIO so that no failure can be
 * reported as success.
 *
 * A message longer than BKS_ERROR_MSG_MAX - 1 bytes is shortened in the
 * middle: its start (the operation and the start of the object) and its
 * end (the end of the object, ": " and the strerror text, always whole)
 * are kept around "...".  A PATH_MAX path never pushes the reason out.
 * No UTF-8 sequence is cut.
 */
int bks_error_set(struct bks_error *err, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/*
 * Like bks_error_set(), but the message is exactly the formatted text:
 * for failures that have no errno of their own to explain them ("chain
 * position 4: empty layer").  Shortened like bks_error_set(): the start
 * and the end (the reason) are kept.
 */
int bks_error_setmsg(struct bks_error *err, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/*
 * Add outer context in front of an existing message: "prepare: " + msg.
 * Leaves err->code untouched and returns -err->code.  A message that no
 * longer fits is shortened in the middle, like bks_error_set(): the new
 * context at the front and the reason at the end are kept.
 */
int bks_error_prepend(struct bks_error *err, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* Forget a recorded error. */
void bks_error_clear(struct bks_error *err);

/*
 * Replace every character of s that would break a one-line message
 * (control characters, DEL) with '?', in place.  Untrusted text is passed
 * through this before it is quoted in a message.
 */
void bks_sanitize_line(char *s);

#endif /* BLKSTACK_ERROR_H */
