/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Big-endian fields in byte buffers (network byte order, as the NBD
 * protocol has them), without alignment assumptions.  put_* return the
 * position after the field.
 */
#ifndef BLKSTACK_ENDIAN_H
#define BLKSTACK_ENDIAN_H

#include <stdint.h>

static inline uint16_t bks_get_be16(const unsigned char *p)
{
	return (uint16_t)(p[0] << 8 | p[1]);
}

static inline uint32_t bks_get_be32(const unsigned char *p)
{
	return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 |
	       (uint32_t)p[2] << 8 | p[3];
}

static inline uint64_t bks_get_be64(const unsigned char *p)
{
	return (uint64_t)bks_get_be32(p) << 32 | bks_get_be32(p + 4);
}

static inline unsigned char *bks_put_be16(unsigned char *p, uint16_t v)
{
	p[0] = (unsigned char)(v >> 8);
	p[1] = (unsigned char)v;
	return p + 2;
}

static inline unsigned char *bks_put_be32(unsigned char *p, uint32_t v)
{
	p = bks_put_be16(p, (uint16_t)(v >> 16));
	return bks_put_be16(p, (uint16_t)v);
}

static inline unsigned char *bks_put_be64(unsigned char *p, uint64_t v)
{
	p = bks_put_be32(p, (uint32_t)(v >> 32));
	return bks_put_be32(p, (uint32_t)v);
}

#endif /* BLKSTACK_ENDIAN_H */
