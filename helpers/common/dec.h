/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The one strict unsigned-decimal parser, for untrusted values: xenstore
 * nodes (domain and device ids, ring references, event channels), the
 * arguments of control commands, fields of our own records.
 *
 * Accepted: one or more digits 0-9 and nothing else, no leading zero
 * but "0" itself.  Refused: the empty string, a sign ("+1", "-1"), any
 * space before, inside or after ("1 ", " 1"), "0x10", "01", "00", a
 * value above max (any number of digits: no 64-bit overflow).
 */
#ifndef BLKSTACK_DEC_H
#define BLKSTACK_DEC_H

#include <stddef.h>
#include <stdint.h>

/*
 * Parse the NUL-terminated s.  Returns 0 with *out set, -EINVAL if s is
 * not such a decimal, -ERANGE if it is one above max; *out is untouched
 * on failure.
 */
int dec_parse_uint(const char *s, unsigned long long max,
		   unsigned long long *out);

/* The same for the len bytes at s (a field inside a longer string). */
int dec_parse_uint_n(const char *s, size_t len, unsigned long long max,
		     unsigned long long *out);

/* dec_parse_uint() into a 32-bit value (max is at most UINT32_MAX). */
int dec_parse_u32(const char *s, uint32_t max, uint32_t *out);

#endif /* BLKSTACK_DEC_H */
