/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* Choosing the run directory (rundir.h). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "rundir.h"

int rundir_choose(const char *given, char *buf, size_t size,
		  struct bks_error *err)
{
	const char *dir = given;
	const char *what = "--rundir";
	size_t n;

	if (!dir) {
		dir = getenv("BLKSTACK_RUNDIR");
		what = "BLKSTACK_RUNDIR";
	}
	if (!dir || !*dir) {
		dir = DEFAULT_RUNDIR;
		what = "the default run directory";
	}
	if (dir[0] != '/')
		return bks_error_setmsg(err, EINVAL,
					"%s '%.64s' is not an absolute path",
					what, dir);
	for (const char *p = dir; *p; p++) {
		if ((unsigned char)*p < 0x20 || *p == 0x7f)
			return bks_error_setmsg(
			    err, EINVAL, "%s has a control character", what);
	}
	n = strlen(dir);
	if (n >= size || n > RUNDIR_MAX)
		return bks_error_setmsg(err, ENAMETOOLONG,
					"%s is too long (%zu bytes, at most "
					"%d)",
					what, n, RUNDIR_MAX);
	memcpy(buf, dir, n + 1);
	/* "DIR/" and "DIR" are the same directory; keep paths tidy. */
	while (n > 1 && buf[n - 1] == '/')
		buf[--n] = '\0';
	return 0;
}
