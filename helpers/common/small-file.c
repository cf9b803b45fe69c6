/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* Reading a small file whole: see small-file.h. */
#include <errno.h>
#include <fcntl.h>
#include <unistd.h>

#include "small-file.h"

int small_file_read(const char *path, char *buf, size_t size)
{
	size_t len = 0;
	int fd = -1, ret;

	if (size < 2)
		return -EINVAL;
	fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
	if (fd < 0)
		return -errno;
	for (;;) {
		ssize_t n = read(fd, buf + len, size - 1 - len);

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			ret = -errno;
			goto out;
		}
		if (n == 0)
			break;
		len += (size_t)n;
		if (len == size - 1) {
			ret = -EFBIG;
			goto out;
		}
	}
	buf[len] = '\0';
	ret = (int)len;
out:
	close(fd);
	return ret;
}
