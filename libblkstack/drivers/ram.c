/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * ram:SIZE -- a sink held in memory, for tests and benchmarks.
 *
 * SIZE is bytes with an optional K/M/G/T suffix (powers of 1024), a
 * multiple of 512, at most 64 GiB.  The memory is an anonymous private
 * mapping, so untouched blocks cost nothing and discard gives pages back
 * (MADV_DONTNEED, which makes them read as zeroes).  Every request
 * completes before its op returns; FUA and flush are trivially honoured
 * since there is nothing more durable to reach.
 */
#include <errno.h>
#include <string.h>
#include <sys/mman.h>

#include "blkstack/driver.h"

#define RAM_MAX_SIZE (64ull << 30)
#define RAM_PAGE     4096ull

struct ram_state {
	unsigned char *mem;
	uint64_t size;
};

#define RAM_USAGE                                                              \
	"ram:SIZE (bytes, K/M/G/T suffixes; a multiple of 512, at most 64G)"

/* The size in args, checked. */
static int parse_size(const char *args, uint64_t *size, struct bks_error *err)
{
	int rc = bks_parse_size(args, size);

	if (rc == -ERANGE)
		return bks_error_setmsg(err, EINVAL,
					"size '%s' is too large; usage: %s",
					args, RAM_USAGE);
	if (rc < 0 && !*args)
		return bks_error_setmsg(err, EINVAL, "missing size; usage: %s",
					RAM_USAGE);
	if (rc < 0)
		return bks_error_setmsg(err, EINVAL,
					"'%s' is not a size; usage: %s", args,
					RAM_USAGE);
	if (*size == 0)
		return bks_error_setmsg(err, EINVAL,
					"size '%s' is empty (0 bytes); usage: "
					"%s",
					args, RAM_USAGE);
	if (*size % 512)
		return bks_error_setmsg(err, EINVAL,
					"size '%s' is not a multiple of 512 "
					"bytes; usage: %s",
					args, RAM_USAGE);
	if (*size > RAM_MAX_SIZE)
		return bks_error_setmsg(err, EINVAL,
					"size '%s' is more than 64G; usage: %s",
					args, RAM_USAGE);
	return 0;
}

static int ram_check(const char *args, struct bks_error *err)
{
	uint64_t size;

	return parse_size(args, &size, err);
}

static int ram_open(void *state, struct bks_layer *self,
		    const struct bks_open_args *args, struct bks_error *err)
{
	struct ram_state *s = state;
	uint64_t size;
	void *mem;
	int rc;

	(void)self;
	rc = parse_size(args->args, &size, err);
	if (rc < 0)
		return rc;
	mem = mmap(NULL, size, PROT_READ | PROT_WRITE,
		   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (mem == MAP_FAILED)
		return bks_error_set(err, errno, "mmap %llu bytes",
				     (unsigned long long)size);
	s->mem = mem;
	s->size = size;
	return 0;
}

static void ram_close(void *state, struct bks_layer *self)
{
	struct ram_state *s = state;

	(void)self;
	munmap(s->mem, s->size);
}

static int ram_info(void *state, struct bks_layer *self, struct bks_info *info)
{
	struct ram_state *s = state;

	(void)self;
	info->size = s->size;
	info->block_size = 512;
	info->ops = BKS_OPF(BKS_OP_READ) | BKS_OPF(BKS_OP_WRITE) |
		    BKS_OPF(BKS_OP_FLUSH) | BKS_OPF(BKS_OP_DISCARD) |
		    BKS_OPF(BKS_OP_WRITE_ZEROES);
	info->can_fua = true;
	info->zero_no_hole = true;
	return 0;
}

/* Copy between the image and the request's buffers. */
static void ram_copy(struct ram_state *s, struct bks_req *req, bool to_mem)
{
	unsigned char *p = s->mem + req->offset;

	for (int i = 0; i < req->iovcnt; i++) {
		const struct iovec *v = &req->iov[i];

		if (to_mem)
			memcpy(p, v->iov_base, v->iov_len);
		else
			memcpy(v->iov_base, p, v->iov_len);
		p += v->iov_len;
	}
}

static int ram_read(void *state, struct bks_layer *self, struct bks_req *req)
{
	(void)self;
	ram_copy(state, req, false);
	bks_req_complete(req, 0);
	return 0;
}

static int ram_write(void *state, struct bks_layer *self, struct bks_req *req)
{
	(void)self;
	ram_copy(state, req, true);
	bks_req_complete(req, 0);
	return 0;
}

static int ram_flush(void *state, struct bks_layer *self, struct bks_req *req)
{
	(void)state;
	(void)self;
	bks_req_complete(req, 0);
	return 0;
}

/*
 * Zero [offset, offset + len).  Whole pages inside the range are dropped
 * (they read back as zeroes and free their memory) unless keep is set;
 * the partial pages at the ends are cleared with memset.
 */
static void ram_zero(struct ram_state *s, uint64_t offset, uint64_t len,
		     bool keep)
{
	uint64_t start = (offset + RAM_PAGE - 1) & ~(RAM_PAGE - 1);
	uint64_t end = (offset + len) & ~(RAM_PAGE - 1);

	if (keep || start >= end) {
		memset(s->mem + offset, 0, len);
		return;
	}
	memset(s->mem + offset, 0, start - offset);
	if (madvise(s->mem + start, end - start, MADV_DONTNEED) < 0)
		memset(s->mem + start, 0, end - start);
	memset(s->mem + end, 0, offset + len - end);
}

static int ram_discard(void *state, struct bks_layer *self, struct bks_req *req)
{
	(void)self;
	ram_zero(state, req->offset, req->len, false);
	bks_req_complete(req, 0);
	return 0;
}

static int ram_write_zeroes(void *state, struct bks_layer *self,
			    struct bks_req *req)
{
	(void)self;
	ram_zero(state, req->offset, req->len, req->flags & BKS_REQ_NO_HOLE);
	bks_req_complete(req, 0);
	return 0;
}

/* What parsing needs of ram: (bks_driver_descs[] has it alone). */
#define RAM_DESC                                                               \
	{                                                                      \
		.name = "ram", .kind = BKS_SINK, .usage = RAM_USAGE,           \
		.check = ram_check                                             \
	}

const struct bks_driver_desc bks_desc_ram = RAM_DESC;

const struct bks_driver bks_driver_ram = {
    .desc = RAM_DESC,
    .state_size = sizeof(struct ram_state),
    .open = ram_open,
    .close = ram_close,
    .info = ram_info,
    .read = ram_read,
    .write = ram_write,
    .flush = ram_flush,
    .discard = ram_discard,
    .write_zeroes = ram_write_zeroes,
};
