/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* DIR/NAME/supervisor.state (sup-state.h). */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "rundir-files.h"
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
	char buf[8 * SUP_REASON_MAX], num[32];
	size_t len = 0;

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
	return rundir_write_file(wdir, SUPERVISOR_FILE_STATE, buf, len, err);
}
