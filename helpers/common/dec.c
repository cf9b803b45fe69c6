/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* The strict unsigned-decimal parser: see dec.h. */
#include <errno.h>
#include <string.h>

#include "dec.h"

int dec_parse_uint_n(const char *s, size_t len, unsigned long long max,
		     unsigned long long *out)
{
	unsigned long long v = 0;
	int rc = 0;

	if (len == 0 || (s[0] == '0' && len > 1))
		return -EINVAL;
	/* The whole value is read: a bad character after too many digits
	 * is -EINVAL, not -ERANGE. */
	for (size_t i = 0; i < len; i++) {
		unsigned int d;

		if (s[i] < '0' || s[i] > '9')
			return -EINVAL;
		d = (unsigned int)(s[i] - '0');
		if (rc == 0 &&
		    (v > max / 10 || (v == max / 10 && d > max % 10)))
			rc = -ERANGE;
		if (rc == 0)
			v = v * 10 + d;
	}
	if (rc == 0)
		*out = v;
	return rc;
}

int dec_parse_uint(const char *s, unsigned long long max,
		   unsigned long long *out)
{
	return dec_parse_uint_n(s, strlen(s), max, out);
}

int dec_parse_u32(const char *s, uint32_t max, uint32_t *out)
{
	unsigned long long v = 0;
	int rc = dec_parse_uint(s, max, &v);

	if (rc == 0)
		*out = (uint32_t)v;
	return rc;
}
