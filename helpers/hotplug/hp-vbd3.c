/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* The chain of a vbd3 disk from its params (hp-vbd3.h). */
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "blkstack/chain.h"
#include "hp-vbd3.h"

/* s starts with a driver name as the chain parser spells one, then ':'. */
static bool starts_with_driver(const char *s)
{
	size_t n = 0;

	while ((s[n] >= 'a' && s[n] <= 'z') || (s[n] >= '0' && s[n] <= '9') ||
	       s[n] == '-')
		n++;
	return n > 0 && n <= BKS_DRIVER_NAME_MAX && s[n] == ':';
}

int hp_vbd3_chain(const char *params, char **chain, struct bks_error *err)
{
	const char *sink, *target;
	int n;

	*chain = NULL;
	if (strncmp(params, "aio:", 4) == 0)
		sink = "aio:";
	else if (strncmp(params, "vhd:", 4) == 0)
		sink = "vhd:";
	else if (starts_with_driver(params))
		return bks_error_setmsg(err, EINVAL,
					"vbd3 params has FORMAT '%.*s': libxl "
					"writes aio (format=raw) or vhd "
					"(format=vhd) for backendtype=tap",
					(int)(strchr(params, ':') - params),
					params);
	else
		return bks_error_setmsg(err, EINVAL,
					"vbd3 params is not FORMAT:TARGET with "
					"FORMAT aio (format=raw) or vhd "
					"(format=vhd), as libxl writes it");
	target = params + 4;
	if (!*target)
		return bks_error_setmsg(
		    err, EINVAL, "vbd3 params '%.4s' has no target", params);
	if (starts_with_driver(target))
		n = asprintf(chain, "%s", target);
	else
		n = asprintf(chain, "%s%s", sink, target);
	if (n < 0) {
		*chain = NULL;
		return bks_error_set(err, ENOMEM, "vbd3 params");
	}
	return 0;
}
