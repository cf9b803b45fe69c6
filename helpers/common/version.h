/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * blkstack's version, as tools/version computes it (git describe in a git
 * checkout, else the VERSION file): the Makefile writes it into
 * build/gen/blkstack-version.h, which only version.c includes, so a new
 * version rebuilds one object and relinks the programs.
 */
#ifndef BLKSTACK_VERSION_H
#define BLKSTACK_VERSION_H

#include <stdio.h>

/* The version string, e.g. "0.1.0+gabc1234". */
const char *bks_version(void);

/* Print "PROG VERSION\n" to f (--version); returns 0 or -EIO. */
int bks_version_print(FILE *f, const char *prog);

#endif /* BLKSTACK_VERSION_H */
