/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* blkstack-fuse's log (fuse-log.h). */
#include <stdarg.h>
#include <stdio.h>

#include "blkstack/error.h"
#include "blkstack/syslog-client.h"
#include "fuse-log.h"

void bf_log(struct bf_log *log, int prio, const char *fmt, ...)
{
	char line[1024];
	va_list ap;
	int n;

	n = snprintf(line, sizeof(line), "%s: ", log->tag ? log->tag : "");
	if (n < 0 || (size_t)n >= sizeof(line))
		n = 0;
	va_start(ap, fmt);
	vsnprintf(line + n, sizeof(line) - (size_t)n, fmt, ap);
	va_end(ap);
	bks_sanitize_line(line);
	if (log->syslog)
		bks_syslog_send(log->syslog, prio, line);
	else
		fprintf(stderr, "blkstack-fuse: %s\n", line);
}
