/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The image file (or block device) under a sink whose args are a path
 * (aio:, sync:): opening it, probing it, and the blocking calls on it that
 * both sinks make -- range ioctls (BLKDISCARD, BLKZEROOUT), fallocate
 * modes, datasync, and its extents from SEEK_DATA/SEEK_HOLE.
 *
 * The calls block.  sync: makes them inside its ops (its documented
 * purpose); aio: makes them on helper threads (offload.h), several at
 * once: so they touch the struct bks_image only to read it, except for
 * the no_* flags, which they read and write atomically.
 *
 * Every call returns 0 or -errno (as the system call said it).
 */
#ifndef BLKSTACK_IMAGE_FILE_H
#define BLKSTACK_IMAGE_FILE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "blkstack/driver.h"
#include "blkstack/error.h"

/* An image file or block device opened for a sink: see bks_image_open(). */
struct bks_image {
	int fd;		     /* -1 when not open */
	bool is_blk;	     /* a block device (else a regular file) */
	uint64_t size;	     /* bytes: never 0, a multiple of block_size */
	uint32_t block_size; /* a device's logical sector size; 512 for files */
	/*
	 * What the file system refused once with EOPNOTSUPP, so that the
	 * next call goes straight to the fallback.  Atomic (see the top).
	 */
	bool no_punch, no_zero_range, no_alloc;
};

/*
 * Open the image at path for a sink whose args are a path (aio:, sync:):
 * flags is O_RDONLY or O_RDWR, maybe with O_DIRECT (O_CLOEXEC is added).
 * Never blocks: the type is checked on an O_PATH descriptor first, which
 * opens nothing, and the image is then opened with O_NONBLOCK (cleared
 * before returning).  Refuses, with err naming path:
 *   - an empty or a relative path ("must be an absolute path");
 *   - anything but a regular file or a block device ("X is a FIFO, not a
 *     regular file or block device"), before any O_DIRECT open;
 *   - an empty image ("X is empty (0 bytes)"), and one whose size is not
 *     a multiple of its block size (bks_image_check_size());
 *   - a path that changed between the two opens (-EAGAIN).
 * Returns 0 with img filled (close it with bks_image_close()), or -errno
 * with img->fd -1.
 */
int bks_image_open(struct bks_image *img, const char *path, int flags,
		   struct bks_error *err);

/*
 * Like bks_image_open(), for an image format whose file may end anywhere
 * (qcow2: qemu-img leaves the L1 table's 8 bytes last): a size that is
 * not a multiple of the block size is accepted (an empty file is not).
 * The sink reads the tail up to the last whole block and treats the rest
 * as zeroes.
 */
int bks_image_open_format(struct bks_image *img, const char *path, int flags,
			  struct bks_error *err);

/* Close img->fd if open, and set it to -1. */
void bks_image_close(struct bks_image *img);

/*
 * Refuse (-EINVAL, err naming path, the size and block) an image of size
 * bytes that is empty or not a multiple of block: never round it down,
 * which would hide its tail from the guest.  Returns 0 if it is fine.
 */
int bks_image_check_size(const char *path, uint64_t size, uint32_t block,
			 struct bks_error *err);

/*
 * What a file sink offers, into info (a sink's info op): img's size, the
 * given block_size, every op (read-only ones keep the writing ops listed,
 * so that the framework refuses them with -EROFS, which says why, not
 * -EOPNOTSUPP), FUA, NO_HOLE, no max_io, and discard and write_zeroes up
 * to BKS_FILE_MAX_RANGE: the framework splits larger ones, so one
 * fallocate or range ioctl never covers 4 GiB.
 */
void bks_image_info(const struct bks_image *img, uint32_t block_size,
		    bool read_only, struct bks_info *info);

/*
 * The O_DIRECT alignments the kernel reports for the open image (statx
 * STATX_DIOALIGN, Linux 6.1): of file offsets and lengths, and of buffer
 * addresses; 0 where it reports none.
 */
void bks_image_dio_align(const struct bks_image *img, uint32_t *offset_align,
			 uint32_t *mem_align);

/*
 * Blocking pread (write false) or pwrite (write true) of all len bytes of
 * buf at off on fd, going on after EINTR and short transfers: for callers
 * off the data path (image creation, metadata updates of a drained
 * chain).  Returns 0, -errno, or -EIO at the end of the file.
 */
int bks_image_pio(int fd, bool write, void *buf, size_t len, uint64_t off);

/* fdatasync(): everything written before is durable. */
int bks_image_datasync(const struct bks_image *img);

/*
 * Discard [offset, offset + len): BLKDISCARD on a device, a punched hole
 * (FALLOC_FL_PUNCH_HOLE | KEEP_SIZE) in a file.  Discard is a hint ("may
 * read back as anything"): where the device or file system cannot, it
 * has done what was asked, and returns 0.
 */
int bks_image_discard(struct bks_image *img, uint64_t offset, uint64_t len);

/*
 * Make [offset, offset + len) read as zeroes without writing them:
 * BLKZEROOUT on a device (which never unmaps, so it honours NO_HOLE too);
 * in a file a punched hole, unless flags has BKS_REQ_NO_HOLE, else
 * FALLOC_FL_ZERO_RANGE.  Returns -EOPNOTSUPP when the file system can do
 * neither (see bks_image_zero_realloc()).  BKS_REQ_FUA is the caller's:
 * these calls have no per-call FUA, so sync after.
 */
int bks_image_zero(struct bks_image *img, uint64_t offset, uint64_t len,
		   uint32_t flags);

/*
 * Files only, the fallback where there is no ZERO_RANGE (tmpfs, for one):
 * punch a hole, then allocate it again, which leaves the range zeroed and
 * allocated.  Returns -EOPNOTSUPP when either is unsupported (the range
 * is then not punched), else what fallocate said.
 */
int bks_image_zero_realloc(struct bks_image *img, uint64_t offset,
			   uint64_t len);

/*
 * Extents of [offset, offset + len) of the image, from SEEK_DATA and
 * SEEK_HOLE (holes are BKS_EXTENT_HOLE | BKS_EXTENT_ZERO); a block device,
 * or a file system without SEEK_DATA, is all data.  Fills out with up to
 * max extents from offset on, sets *n (at least 1).  For a sink's block
 * status.  Returns 0.
 */
int bks_image_extents(const struct bks_image *img, uint64_t offset,
		      uint64_t len, struct bks_extent *out, size_t max,
		      size_t *n);

/*
 * A sink's block_status op: bks_image_extents() of req's range into
 * req->extents (req->extents_max of them), setting req->nextents.  Does
 * not complete req.  Returns 0.
 */
int bks_image_block_status(const struct bks_image *img, struct bks_req *req);

#endif /* BLKSTACK_IMAGE_FILE_H */
