/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Reading a small file whole: a pid file, a record, /proc/PID/stat.
 */
#ifndef BLKSTACK_SMALL_FILE_H
#define BLKSTACK_SMALL_FILE_H

#include <stddef.h>

/*
 * Read the file at path into buf (size bytes, NUL-terminated) without
 * following a symlink in its last component.  Returns its length, -EFBIG
 * if it does not fit in size - 1 bytes, or -errno of open or read.
 */
int small_file_read(const char *path, char *buf, size_t size);

#endif /* BLKSTACK_SMALL_FILE_H */
