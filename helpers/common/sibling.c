/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* Find a sibling program (sibling.h). */
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "sibling.h"

/* dir/prog into buf: 0, or -ENAMETOOLONG with err set. */
static int join(char *buf, size_t size, const char *dir, const char *prog,
		struct bks_error *err)
{
	int n = snprintf(buf, size, "%s/%s", dir, prog);

	if (n < 0 || (size_t)n >= size)
		return bks_error_setmsg(err, ENAMETOOLONG,
					"path %s/%s is too long", dir, prog);
	return 0;
}

int sibling_path(char *buf, size_t size, const char *prog,
		 const char *fallback_dir, struct bks_error *err)
{
	char self[PATH_MAX];
	ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
	char *slash;
	int rc;

	if (n < 0 && !fallback_dir)
		return bks_error_set(err, errno, "readlink /proc/self/exe");
	if (n >= 0) {
		self[n] = '\0';
		slash = strrchr(self, '/');
		if (!slash && !fallback_dir)
			return bks_error_setmsg(
			    err, EINVAL, "/proc/self/exe is not a path: %s",
			    self);
		if (slash) {
			*slash = '\0';
			rc = join(buf, size, self, prog, err);
			if (rc < 0 && !fallback_dir)
				return rc;
			/* Without a fallback, the caller's exec says why. */
			if (rc == 0 &&
			    (!fallback_dir || access(buf, X_OK) == 0))
				return 0;
		}
	}
	rc = join(buf, size, fallback_dir, prog, err);
	if (rc < 0)
		return rc;
	if (access(buf, X_OK) < 0)
		return bks_error_set(err, errno, "find %s (%s)", prog, buf);
	return 0;
}
