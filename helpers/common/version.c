/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* blkstack's version (version.h). */
#include <errno.h>
#include <stdio.h>

#include "blkstack-version.h"
#include "version.h"

const char *bks_version(void)
{
	return BKS_VERSION;
}

int bks_version_print(FILE *f, const char *prog)
{
	if (fprintf(f, "%s %s\n", prog, BKS_VERSION) < 0 || fflush(f) != 0)
		return -EIO;
	return 0;
}
