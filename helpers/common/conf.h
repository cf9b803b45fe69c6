/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The host's blkstack configuration, /etc/blkstack.conf ($BLKSTACK_CONF
 * names another file): lines "key = value", blank lines, and comments
 * starting with '#'.  Each module reads its own keys (hp-dev.h: device;
 * hp-policy.h: images) and ignores the others'.
 */
#ifndef BLKSTACK_CONF_H
#define BLKSTACK_CONF_H

#include <stdbool.h>
#include <stddef.h>

#include "blkstack/error.h"

/* The configuration file conf_read() reads ($BLKSTACK_CONF overrides). */
#define CONF_FILE "/etc/blkstack.conf"

/*
 * Read the configuration file whole into *text (caller frees); a missing
 * file is an empty configuration.  *name gets the file's name, for
 * messages.  Returns 0 or -errno with err set.
 */
int conf_read(char **text, const char **name, struct bks_error *err);

/*
 * Find key in text: *v and *vlen get its value (trimmed, not copied) and
 * *lineno its line; *found tells whether it is there.  A line that is not
 * "key = value", or key given twice, is an error (-EINVAL, naming
 * name:line).  Other keys are skipped.
 */
int conf_find(const char *text, const char *name, const char *key,
	      const char **v, size_t *vlen, unsigned int *lineno, bool *found,
	      struct bks_error *err);

/*
 * Find key in text (as conf_find) and match its value with words, a
 * NULL-terminated list: *index gets the position of the word it is, and
 * stays as it was when key is absent.  Any other value is -EINVAL with
 * err "NAME:LINE: KEY: 'VALUE' is not W1 or W2" (the words listed).  For
 * the modules' yes|no and one-of keys.  Returns 0 or -errno with err set.
 */
int conf_word(const char *text, const char *name, const char *key,
	      const char *const *words, unsigned int *index,
	      struct bks_error *err);

/*
 * Read a small file whole into a malloc'd, NUL-terminated string (with a
 * spare NUL, for NUL-separated lists such as /proc/PID/cmdline), refusing
 * one of max bytes or more (-EFBIG).  Returns 0 or -errno (err may be
 * NULL).
 */
int conf_read_file(const char *path, char **out, size_t max,
		   struct bks_error *err);

#endif /* BLKSTACK_CONF_H */
