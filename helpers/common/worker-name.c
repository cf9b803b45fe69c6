/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* Worker names: shared by the worker, blkstack-ctl and the hotplug helper. */
#include <string.h>

#include "worker-name.h"

bool worker_name_valid(const char *s)
{
	size_t n = strlen(s);

	if (n == 0 || n > WORKER_NAME_MAX || strcmp(s, ".") == 0 ||
	    strcmp(s, "..") == 0)
		return false;
	for (; *s; s++) {
		if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') ||
		      (*s >= '0' && *s <= '9') || *s == '_' || *s == '.' ||
		      *s == '-'))
			return false;
	}
	return true;
}
