/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* Extents of a file from SEEK_DATA/SEEK_HOLE: shared by aio: and sync:. */
#include <errno.h>
#include <unistd.h>

#include "blkstack/driver.h"

/* Append [off, off + len) with flags, merging with a like predecessor. */
static void add(struct bks_extent *out, size_t *n, uint64_t off, uint64_t len,
		uint32_t flags)
{
	if (*n && out[*n - 1].flags == flags &&
	    out[*n - 1].offset + out[*n - 1].length == off) {
		out[*n - 1].length += len;
		return;
	}
	out[*n].offset = off;
	out[*n].length = len;
	out[*n].flags = flags;
	(*n)++;
}

int bks_fd_extents(int fd, bool is_blk, uint64_t offset, uint64_t len,
		   struct bks_extent *out, size_t max, size_t *n)
{
	const uint32_t hole = BKS_EXTENT_HOLE | BKS_EXTENT_ZERO;
	uint64_t pos = offset, end = offset + len;

	*n = 0;
	if (is_blk) {
		add(out, n, offset, len, 0);
		return 0;
	}
	while (pos < end && *n < max) {
		off_t data = lseek(fd, (off_t)pos, SEEK_DATA), next;

		if (data < 0 && errno != ENXIO)
			goto all_data; /* no SEEK_DATA here: say data */
		if (data < 0 || (uint64_t)data >= end) {
			add(out, n, pos, end - pos, hole); /* hole to the end */
			break;
		}
		if ((uint64_t)data > pos) {
			add(out, n, pos, (uint64_t)data - pos, hole);
			pos = (uint64_t)data;
			if (*n == max)
				break;
		}
		next = lseek(fd, (off_t)pos, SEEK_HOLE);
		if (next < 0)
			goto all_data;
		if ((uint64_t)next > end)
			next = (off_t)end;
		add(out, n, pos, (uint64_t)next - pos, 0);
		pos = (uint64_t)next;
	}
	return 0;
all_data:
	if (pos < end && *n < max)
		add(out, n, pos, end - pos, 0);
	return 0;
}
