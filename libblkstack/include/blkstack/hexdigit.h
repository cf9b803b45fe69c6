/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * One hexadecimal digit, for the parsers that undo percent-encoding (the
 * nbd: sink's URI, a VHD parent locator's file URI).
 */
#ifndef BLKSTACK_HEXDIGIT_H
#define BLKSTACK_HEXDIGIT_H

/* The value of c as a hex digit (either case), or -1 if it is not one. */
static inline int bks_hexdigit(unsigned char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

#endif /* BLKSTACK_HEXDIGIT_H */
