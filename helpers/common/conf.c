/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* The host's configuration file, and small-file reading (conf.h). */
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "conf.h"

/* Longest configuration file read. */
#define CONF_MAX 65536

int conf_read_file(const char *path, char **out, size_t max,
		   struct bks_error *err)
{
	char *buf = NULL;
	size_t len = 0;
	int fd, ret;

	*out = NULL;
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return bks_error_set(err, errno, "open %s", path);
	/* Zeroed, with a spare NUL: callers walk NUL-separated lists. */
	buf = calloc(1, max + 2);
	if (!buf) {
		ret = bks_error_set(err, ENOMEM, "read %s", path);
		goto out;
	}
	for (;;) {
		ssize_t n = read(fd, buf + len, max - len);

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			ret = bks_error_set(err, errno, "read %s", path);
			goto out;
		}
		if (n == 0)
			break;
		len += (size_t)n;
		if (len == max) {
			ret = bks_error_setmsg(err, EFBIG,
					       "read %s: longer than %zu bytes",
					       path, max);
			goto out;
		}
	}
	buf[len] = '\0';
	*out = buf;
	buf = NULL;
	ret = 0;
out:
	free(buf);
	close(fd);
	return ret;
}

int conf_read(char **text, const char **name, struct bks_error *err)
{
	const char *conf = getenv("BLKSTACK_CONF");
	int ret;

	if (!conf || !*conf)
		conf = CONF_FILE;
	*name = conf;
	ret = conf_read_file(conf, text, CONF_MAX, err);
	if (ret == -ENOENT) {
		bks_error_clear(err);
		*text = strdup("");
		if (!*text)
			return bks_error_set(err, ENOMEM, "read %s", conf);
		return 0;
	}
	return ret;
}

/* Trim ASCII whitespace at both ends of [*s, *e). */
static void trim(const char **s, const char **e)
{
	while (*s < *e && isspace((unsigned char)**s))
		(*s)++;
	while (*e > *s && isspace((unsigned char)(*e)[-1]))
		(*e)--;
}

int conf_find(const char *text, const char *name, const char *key,
	      const char **v_out, size_t *vlen, unsigned int *lineno_out,
	      bool *found, struct bks_error *err)
{
	const char *line = text;
	size_t klen = strlen(key);
	unsigned int lineno = 0;

	*found = false;
	while (*line) {
		const char *end = strchrnul(line, '\n');
		const char *next = *end ? end + 1 : end;
		const char *k = line, *ke, *v, *ve = end;

		lineno++;
		trim(&k, &ve);
		if (k == ve || *k == '#')
			goto next;
		ke = memchr(k, '=', (size_t)(ve - k));
		if (!ke)
			return bks_error_setmsg(err, EINVAL,
						"%s:%u: expected key = value",
						name, lineno);
		v = ke + 1;
		trim(&k, &ke);
		trim(&v, &ve);
		if ((size_t)(ke - k) != klen || memcmp(k, key, klen) != 0)
			goto next; /* another module's key */
		if (*found)
			return bks_error_setmsg(err, EINVAL,
						"%s:%u: %s given twice", name,
						lineno, key);
		*found = true;
		*v_out = v;
		*vlen = (size_t)(ve - v);
		*lineno_out = lineno;
	next:
		line = next;
	}
	return 0;
}

int conf_word(const char *text, const char *name, const char *key,
	      const char *const *words, unsigned int *index,
	      struct bks_error *err)
{
	char list[128] = "";
	const char *v;
	unsigned int line, i;
	size_t len, used = 0;
	bool found;
	int rc;

	rc = conf_find(text, name, key, &v, &len, &line, &found, err);
	if (rc < 0 || !found)
		return rc;
	for (i = 0; words[i]; i++) {
		if (strlen(words[i]) == len && strncmp(v, words[i], len) == 0) {
			*index = i;
			return 0;
		}
	}
	for (i = 0; words[i] && used < sizeof(list); i++) {
		int n = snprintf(list + used, sizeof(list) - used, "%s%s",
				 i == 0		? ""
				 : words[i + 1] ? ", "
						: " or ",
				 words[i]);

		if (n < 0)
			break;
		used += (size_t)n;
	}
	return bks_error_setmsg(err, EINVAL, "%s:%u: %s: '%.*s' is not %s",
				name, line, key, (int)(len > 32 ? 32 : len), v,
				list);
}
