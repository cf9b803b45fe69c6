/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Small helpers shared by unit tests: temporary image files and data
 * patterns.  Header-only (static functions), so a test includes it and
 * links nothing more.
 */
#ifndef BLKSTACK_UNIT_UTIL_H
#define BLKSTACK_UNIT_UTIL_H

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/*
 * Create an empty temporary file of bytes bytes; its name goes to path
 * (size bytes).  The directory is $BKS_TEST_TMPDIR, else /var/tmp, which
 * is a disk file system on usual systems: /tmp may be tmpfs, where
 * O_DIRECT (and so aio:) is unavailable on older kernels.  The caller
 * unlinks the file.  Returns 0 or -errno.
 */
static inline int unit_tmpfile(char *path, size_t size, uint64_t bytes)
{
	const char *dir = getenv("BKS_TEST_TMPDIR");
	int fd, n, r = 0;

	if (!dir || !*dir)
		dir = "/var/tmp";
	n = snprintf(path, size, "%s/blkstack-unit-XXXXXX", dir);
	if (n < 0 || (size_t)n >= size)
		return -ENAMETOOLONG;
	fd = mkstemp(path);
	if (fd < 0)
		return -errno;
	if (ftruncate(fd, (off_t)bytes) < 0) {
		r = -errno;
		unlink(path);
	}
	close(fd);
	return r;
}

/*
 * The test pattern: each 8-byte word holds its absolute offset in the
 * image mixed with seed, so that data written at the wrong offset, or
 * not at all (zeroes), is caught.
 */
static inline uint64_t unit_pattern_word(uint64_t offset, uint64_t seed)
{
	uint64_t x = (offset + 1) * 0x9e3779b97f4a7c15ull ^ seed;

	return x ^ (x >> 29);
}

/* Fill len bytes (a multiple of 8) that belong at image offset. */
static inline void unit_fill(void *buf, size_t len, uint64_t offset,
			     uint64_t seed)
{
	uint64_t *w = buf;

	for (size_t i = 0; i < len / 8; i++)
		w[i] = unit_pattern_word(offset + 8 * i, seed);
}

/*
 * Check len bytes read from image offset.  Returns -1 if they are right,
 * else the byte index (in buf) of the first wrong word.
 */
static inline long unit_check(const void *buf, size_t len, uint64_t offset,
			      uint64_t seed)
{
	const uint64_t *w = buf;

	for (size_t i = 0; i < len / 8; i++)
		if (w[i] != unit_pattern_word(offset + 8 * i, seed))
			return (long)(8 * i);
	return -1;
}

/* Is every byte of buf zero? */
static inline int unit_is_zero(const void *buf, size_t len)
{
	const unsigned char *p = buf;

	for (size_t i = 0; i < len; i++)
		if (p[i])
			return 0;
	return 1;
}

/* A buffer for O_DIRECT: len bytes aligned to 4096, or NULL. */
static inline void *unit_alloc_aligned(size_t len)
{
	void *p = NULL;

	return posix_memalign(&p, 4096, len) == 0 ? p : NULL;
}

/*
 * Run the shell command made from fmt and its arguments, for a test's
 * setup and checks with real tools (qemu-img, blkstack-img): test code
 * only, with paths the test made.  Returns system()'s status (0: the
 * command succeeded), or -1 if the command is over 4 KiB.
 */
static inline int unit_sh(const char *fmt, ...)
    __attribute__((format(printf, 1, 2)));

static inline int unit_sh(const char *fmt, ...)
{
	char cmd[4096];
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(cmd, sizeof(cmd), fmt, ap);
	va_end(ap);
	if (n < 0 || (size_t)n >= sizeof(cmd))
		return -1;
	return system(cmd);
}

#endif /* BLKSTACK_UNIT_UTIL_H */
