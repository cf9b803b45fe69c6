/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The kernel's FUSE-over-io_uring interface, protocol 7.42 (Linux 6.14;
 * unchanged up to the 6.18 this was written on): include/uapi/linux/
 * fuse.h of those kernels.  Debian 12's linux/fuse.h is 6.1's (7.36) and
 * lacks it, so the few definitions the export uses are here, under our
 * own names, laid out as the kernel reads them (checked at compile time
 * below).  See uring.c for how they are used, and fs/fuse/dev_uring.c
 * for the kernel's side.
 */
#ifndef BLKSTACK_EXPORT_FUSE_URING_ABI_H
#define BLKSTACK_EXPORT_FUSE_URING_ABI_H

#include <stddef.h>
#include <stdint.h>

/*
 * INIT flag FUSE_OVER_IO_URING, bit 41 of the flags: bit 9 of flags2
 * (with FUSE_INIT_EXT).  The kernel offers it when its module parameter
 * enable_uring is set; the server's INIT reply accepts it.
 */
#define FXU_INIT_FLAGS2_OVER_IO_URING (1u << 9)

/* The SQE's 16-bit command (sqe->cmd_op) of an IORING_OP_URING_CMD. */
#define FXU_CMD_REGISTER	 1u /* FUSE_IO_URING_CMD_REGISTER */
#define FXU_CMD_COMMIT_AND_FETCH 2u /* FUSE_IO_URING_CMD_COMMIT_AND_FETCH */

/* Sizes of the two header areas of struct fxu_req_header. */
#define FXU_IN_OUT_HEADER_SZ 128u /* FUSE_URING_IN_OUT_HEADER_SZ */
#define FXU_OP_IN_OUT_SZ     128u /* FUSE_URING_OP_IN_OUT_SZ */

/* struct fuse_uring_ent_in_out. */
struct fxu_ent_in_out {
	uint64_t flags;
	uint64_t commit_id;  /* the request's unique: the commit names it */
	uint32_t payload_sz; /* bytes in the payload buffer, either way */
	uint32_t padding;
	uint64_t reserved;
};

/*
 * struct fuse_uring_req_header: iov[0] of a REGISTER.  The kernel writes
 * a request's struct fuse_in_header into in_out, its first argument (the
 * op's struct: fuse_read_in, fuse_write_in, ...) into op_in and the rest
 * (a WRITE's data, a LOOKUP's name) into the payload buffer (iov[1]); the
 * server answers with a struct fuse_out_header in in_out and the reply's
 * data in the payload.
 */
struct fxu_req_header {
	unsigned char in_out[FXU_IN_OUT_HEADER_SZ];
	unsigned char op_in[FXU_OP_IN_OUT_SZ];
	struct fxu_ent_in_out ring_ent_in_out;
};

/* struct fuse_uring_cmd_req: in the SQE's 80-byte command area (SQE128). */
struct fxu_cmd_req {
	uint64_t flags;
	uint64_t commit_id; /* COMMIT_AND_FETCH: the request answered */
	uint16_t qid;	    /* the queue: one per possible CPU */
	uint8_t padding[6];
};

_Static_assert(sizeof(struct fxu_ent_in_out) == 32, "fuse_uring_ent_in_out");
_Static_assert(sizeof(struct fxu_req_header) == 288, "fuse_uring_req_header");
_Static_assert(offsetof(struct fxu_req_header, ring_ent_in_out) == 256,
	       "fuse_uring_req_header.ring_ent_in_out");
_Static_assert(sizeof(struct fxu_cmd_req) == 24, "fuse_uring_cmd_req");

#endif /* BLKSTACK_EXPORT_FUSE_URING_ABI_H */
