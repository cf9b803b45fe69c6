/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* DIR/NAME/supervisor.state (sup-state.h). */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "rundir.h"
#include "sup-state.h"

/* One "key=value\n" line into buf at *len, the value on one line. */
static void put(char *buf, size_t size, size_t *len, const char *key,
		const char *value)
{
	char v[SUP_REASON_MAX];
	int n;

	snprintf(v, sizeof(v), "%s", value);
	bks_sanitize_line(v);
	n = snprintf(buf + *len, size - *len, "%s=%s\n", key, v);
	if (n > 0 && (size_t)n < size - *len)
		*len += (size_t)n;
}

int sup_state_write(const char *wdir, const struct sup_status *st,
		    struct bks_error *err)
{
	char path[PATH_MAX], tmp[PATH_MAX], buf[8 * SUP_REASON_MAX], num[32];
	size_t len = 0;
	int fd, rc = 0;

	if (snprintf(path, sizeof(path), "%s/" SUPERVISOR_FILE_STATE, wdir) >=
		(int)sizeof(path) ||
	    snprintf(tmp, sizeof(tmp), "%s/" SUPERVISOR_FILE_STATE ".tmp",
		     wdir) >= (int)sizeof(tmp))
		return bks_error_setmsg(err, ENAMETOOLONG, "%s: too long",
					wdir);
	put(buf, sizeof(buf), &len, "state", st->state);
	snprintf(num, sizeof(num), "%d", (int)st->pid);
	put(buf, sizeof(buf), &len, "pid", num);
	snprintf(num, sizeof(num), "%d", (int)st->worker_pid);
	put(buf, sizeof(buf), &len, "worker_pid", num);
	snprintf(num, sizeof(num), "%u", st->restarts);
	put(buf, sizeof(buf), &len, "restarts", num);
	put(buf, sizeof(buf), &len, "last_exit", st->last_exit);
	put(buf, sizeof(buf), &len, "hung", st->hung);
	put(buf, sizeof(buf), &len, "reconnect", st->reconnect);
	put(buf, sizeof(buf), &len, "gave_up", st->gave_up);
	fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW,
		  0644);
	if (fd < 0)
		return bks_error_set(err, errno, "open %s", tmp);
	if (write(fd, buf, len) != (ssize_t)len)
		rc = bks_error_set(err, errno ? errno : EIO, "write %s", tmp);
	close(fd);
	if (rc == 0 && rename(tmp, path) < 0)
		rc = bks_error_set(err, errno, "rename %s", path);
	if (rc < 0)
		unlink(tmp);
	return rc;
}
