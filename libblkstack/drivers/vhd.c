/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * vhd:PATH -- a sink on a VHD image (fixed, dynamic or differencing), per
 * the Microsoft VHD 1.0 specification (format: vhd-format.h).
 *
 * I/O: the image is opened with O_DIRECT (O_RDONLY for read-only opens
 * and parents) and every read and write, data and metadata, goes through
 * one bks_aioq; nothing blocks the loop after open.  Open itself reads
 * the footer, the dynamic header and the whole BAT (4 bytes a block: at
 * most 4 MiB for 2 TiB of 2 MiB blocks) with pread, and refuses anything
 * out of bounds, naming the file, structure, field and value.
 *
 * Fixed disks: the data is [0, size) of the file; requests go to the
 * queue unchanged (no cost over aio:).
 *
 * Dynamic and differencing disks: a request is taken by a context (one
 * of VHD_CTX, allocated at open; more requests wait in order) that walks
 * it block by block.  Per block, the sector bitmap says which sectors the
 * image holds: bits set are read from the block's data, bits clear read
 * as zeroes (dynamic) or from the parent (differencing: a sub-request to
 * the backing child, same offset).  Bitmaps are kept in a cache of
 * VHD_SLOTS slots, read on first use (the request waits, the loop never
 * does) and evicted least recently used when no request holds them.
 *
 * Writes to an allocated block: the data, then (if some of its sectors'
 * bits are clear) the bitmap with those bits set, then the
 * acknowledgement.  Bitmap writes of one block are serialised: a write
 * whose bits are set while one is in flight waits for the next, which
 * carries them (two in flight could land in either order).
 *
 * Allocation of a block (one at a time; other writes to unallocated
 * blocks wait) puts it at F, where the footer is (file size - 512), or
 * up to 3.5 KiB after it so that the block's data starts on a 4 KiB
 * boundary of the file (block_place()):
 *   1. the footer is written at its new place, F + bitmap + block: the
 *      file grows, and its last 512 bytes are a valid footer again
 *      before anything overwrites the old one;
 *   2. the bitmap at F and the data at its place in the block,
 *      together.  The file's new range is a hole (zeroes), so nothing
 *      else is written: a differencing disk's bitmap has the bits of the
 *      written sectors only (the rest read from the parent), a dynamic
 *      disk's has all bits set (the rest reads as the hole's zeroes; as
 *      qemu does, so that readers ignoring the bitmap agree);
 *   3. the BAT entry's sector;
 *   4. the block is visible to other requests; the write is acknowledged.
 * After a crash at any point the file ends with a valid footer, its
 * header and BAT are intact, and a block the BAT does not name is only
 * leaked space (blkstack-img check reports it; --repair drops it).  The
 * footer copy at offset 0 never changes.  (qemu writes the bitmap over
 * the old footer first and the new footer after it, so a crash between
 * the two leaves a file without a footer at its end; this order never
 * does.)  The footer copy at offset 0 changes only when set_backing
 * turns a differencing disk into a dynamic one (see there).
 *
 * Differencing: get_parent reads the locators (W2ku and MacX absolute
 * first, then W2ru and MacX relative to the image's directory), checks
 * the parent's footer: its UUID must be the child's parent UUID, its
 * timestamp the child's parent timestamp, its size the child's; any
 * mismatch is refused.
 *
 * Limits: virtual size at most 2040 GiB (the specification's), a file at
 * most 2 TiB (BAT entries are 32-bit sector numbers), 512-byte O_DIRECT
 * alignment (a file system needing more is refused: use a raw image).
 * A request's piece of one block may span at most VHD_PIECE_IOV of its
 * buffers (-E2BIG beyond; the NBD server sends one buffer).  No discard
 * or write_zeroes.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "blkstack/aioq.h"
#include "blkstack/driver.h"
#include "blkstack/endian.h"
#include "blkstack/image-file.h"
#include "blkstack/iov.h"
#include "blkstack/offload.h"
#include "blkstack/vhd-format.h"

#define VHD_USAGE                                                              \
	"vhd:PATH (a VHD image: fixed, dynamic or differencing, opened with "  \
	"O_DIRECT)"
/* Requests in progress at once (more wait in order). */
#define VHD_CTX 64u
/* Sub-requests one step of a request issues at most. */
#define VHD_STEP_PIECES 8u
/* iovecs of one piece (a slice of the request's buffers). */
#define VHD_PIECE_IOV 32
/* Cached block bitmaps. */
#define VHD_SLOTS	64u
#define VHD_QUEUE_DEPTH 128u
#define VHD_THREADS	1u
#define VHD_MEM_ALIGN	4096u
/* File alignment of a new block's data (see block_place). */
#define VHD_DATA_ALIGN	  4096u
#define VHD_CLOSE_WAIT_NS (5ull * 1000 * 1000 * 1000)
/*
 * Every context holds at most VHD_STEP_PIECES sub-requests, every slot at
 * most one (its load or its bitmap write): the pool never runs out.
 */
#define VHD_SUBREQS (VHD_CTX * VHD_STEP_PIECES + VHD_SLOTS)

struct vhd_state;
struct vhd_ctx;

enum slot_state {
	SLOT_EMPTY,
	SLOT_LOADING,
	SLOT_READY
};

struct vhd_slot {
	uint32_t block;
	enum slot_state state;
	unsigned int refs; /* contexts holding it */
	uint64_t lru;
	bool writing;		 /* a bitmap write is in flight */
	bool pend_fua;		 /* one of pending wants FUA */
	struct vhd_ctx *waiters; /* waiting for the load */
	struct vhd_ctx *wq;	 /* waiting for the bitmap write in flight */
	struct vhd_ctx *pending; /* waiting for the next bitmap write */
	unsigned char *bm;	 /* bitmap_bytes, aligned */
};

enum ctx_phase {
	PH_START,	  /* at the start of a block's piece */
	PH_READ_DONE,	  /* a read step's pieces are done */
	PH_WRITE_DONE,	  /* the data of a write piece is written */
	PH_BITMAP_DONE,	  /* its bitmap is written */
	PH_ALLOC_FOOTER,  /* allocation: the new footer is written */
	PH_ALLOC_DATA,	  /* allocation: bitmap and data written */
	PH_ALLOC_BAT,	  /* allocation: the BAT entry is written */
	PH_STATUS_PARENT, /* block status: the parent answered */
};

struct vhd_ctx {
	struct vhd_state *s;
	struct bks_req *req;
	uint64_t pos;	/* bytes of req done */
	uint64_t n;	/* bytes of the piece in progress */
	uint32_t block; /* its block */
	enum ctx_phase phase;
	struct vhd_slot *slot; /* held */
	struct bks_join join;
	int result;
	bool running, again, finished, alloc, alloc_done;
	struct vhd_ctx *next; /* on one list: free, a slot's, a wait */
};

/* Driver data of a sub-request. */
struct vhd_sub {
	struct vhd_state *s;
	struct vhd_ctx *ctx;
	struct vhd_slot *slot;
	struct iovec iov[VHD_PIECE_IOV];
};

struct vhd_state {
	struct bks_layer *self;
	struct bks_image img;
	char path[PATH_MAX];
	bool read_only;
	struct vhd_footer footer;
	struct vhd_header header;
	uint64_t size;	   /* served */
	uint32_t bsize;	   /* block */
	uint32_t bm_bytes; /* a block's bitmap */
	uint32_t nblocks;  /* blocks of the disk */
	uint32_t *bat;	   /* host order; an entry changes once durable */
	/*
	 * A bit per block: its bitmap is known to have every bit set (it
	 * was read so, or this layer allocated it in a dynamic disk).  Such
	 * blocks are served without the cache: no bitmap read, no write.
	 */
	uint8_t *full;
	unsigned char *bat_disk; /* the BAT as on disk (aligned) */
	uint64_t bat_bytes;
	uint64_t footer_off; /* where the footer is: the end of the data */
	/* An allocation failed after it wrote: no more (-EIO). */
	int broken;
	uint64_t alloc_at;	   /* the block being allocated: its bitmap */
	unsigned char *footer_buf; /* the footer's 512 bytes (aligned) */
	struct bks_aioq *q;
	struct bks_offload *off;
	struct vhd_slot slots[VHD_SLOTS];
	unsigned char *slot_mem;
	uint64_t tick;
	struct vhd_ctx ctx[VHD_CTX];
	struct vhd_ctx *free_ctx;
	struct bks_req *wait_head, *wait_tail; /* requests without a ctx */
	struct vhd_ctx *slot_wait;  /* contexts waiting for a free slot */
	struct vhd_ctx *alloc_wait; /* waiting for the allocation lock */
	struct vhd_ctx *alloc_ctx;  /* allocating now */
	/* stats */
	uint64_t allocated, allocations, bitmap_reads, bitmap_writes,
	    cache_hits, cache_misses, parent_reads, ctx_waits;
	/* A read-only mode change between reopen_prepare and its commit or
	 * abort: the file opened in the new mode. */
	bool reopen_pending, reopen_ro;
	int reopen_fd;
};

/* ---- open ---------------------------------------------------------------- */

/* pread len bytes at off (any alignment) through an aligned bounce. */
static int meta_pread(struct vhd_state *s, uint64_t off, size_t len, void *out,
		      const char *what, struct bks_error *err)
{
	uint64_t start = off / VHD_SECTOR * VHD_SECTOR;
	uint64_t end = (off + len + VHD_SECTOR - 1) / VHD_SECTOR * VHD_SECTOR;
	size_t n = (size_t)(end - start), done = 0;
	unsigned char *buf = NULL;
	int r = 0;

	if (posix_memalign((void **)&buf, VHD_MEM_ALIGN, n) != 0)
		return bks_error_set(err, ENOMEM, "%s: reading the %s", s->path,
				     what);
	while (done < n) {
		ssize_t k = pread(s->img.fd, buf + done, n - done,
				  (off_t)(start + done));

		if (k < 0 && errno == EINTR)
			continue;
		if (k <= 0) {
			r = bks_error_set(err, k < 0 ? errno : EIO,
					  "%s: reading the %s (%zu bytes at "
					  "0x%llx)",
					  s->path, what, len,
					  (unsigned long long)off);
			goto out;
		}
		done += (size_t)k;
	}
	memcpy(out, buf + (off - start), len);
out:
	free(buf);
	return r;
}

static int cmp_u32(const void *a, const void *b)
{
	uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;

	return x < y ? -1 : x > y;
}

/* Read and check the BAT; refuse entries out of bounds or overlapping. */
static int load_bat(struct vhd_state *s, struct bks_error *err)
{
	const struct vhd_header *h = &s->header;
	uint64_t first = s->footer.data_offset + VHD_HEADER_SIZE;
	uint64_t span = (uint64_t)s->bm_bytes + s->bsize;
	uint32_t *sorted = NULL, nsorted = 0;
	int r;

	if (h->table_offset + s->bat_bytes > first)
		first = h->table_offset + s->bat_bytes;
	for (unsigned int i = 0; i < VHD_LOCATORS; i++) {
		const struct vhd_locator *l = &h->loc[i];

		if (l->code != VHD_PLAT_NONE && l->offset + l->length > first &&
		    l->offset >= h->table_offset)
			first = l->offset + l->length;
	}
	s->bat = calloc(s->nblocks, sizeof(*s->bat));
	s->full = calloc(s->nblocks / 8 + 1, 1);
	sorted = calloc(s->nblocks, sizeof(*sorted));
	if (posix_memalign((void **)&s->bat_disk, VHD_MEM_ALIGN,
			   s->bat_bytes) != 0)
		s->bat_disk = NULL;
	if (!s->bat || !s->full || !sorted || !s->bat_disk) {
		r = bks_error_set(err, ENOMEM, "%s: the BAT of %u entries",
				  s->path, h->max_entries);
		goto out;
	}
	r = meta_pread(s, h->table_offset, s->bat_bytes, s->bat_disk, "BAT",
		       err);
	if (r < 0)
		goto out;
	for (uint32_t i = 0; i < s->nblocks; i++) {
		uint32_t e = bks_get_be32(s->bat_disk + 4ull * i);

		r = vhd_bat_check(i, e, s->bsize, first, s->footer_off, err);
		if (r < 0) {
			bks_error_prepend(err, "%s: ", s->path);
			goto out;
		}
		s->bat[i] = e;
		if (e != VHD_BAT_UNUSED)
			sorted[nsorted++] = e;
	}
	s->allocated = nsorted;
	qsort(sorted, nsorted, sizeof(*sorted), cmp_u32);
	for (uint32_t i = 1; i < nsorted; i++) {
		if ((uint64_t)(sorted[i] - sorted[i - 1]) * VHD_SECTOR < span) {
			r = bks_error_setmsg(
			    err, EINVAL,
			    "%s: BAT: blocks at sectors %u and "
			    "%u overlap (a block is %llu bytes)",
			    s->path, sorted[i - 1], sorted[i],
			    (unsigned long long)span);
			goto out;
		}
	}
	/* A block over a locator's data would overwrite it. */
	for (unsigned int k = 0; k < VHD_LOCATORS; k++) {
		const struct vhd_locator *l = &h->loc[k];

		if (l->code == VHD_PLAT_NONE || l->length == 0)
			continue;
		for (uint32_t i = 0; i < nsorted; i++) {
			uint64_t b = (uint64_t)sorted[i] * VHD_SECTOR;

			if (b < l->offset + l->length && l->offset < b + span) {
				r = bks_error_setmsg(
				    err, EINVAL,
				    "%s: BAT: the block at sector %u overlaps "
				    "parent locator %u's data at 0x%llx",
				    s->path, sorted[i], k,
				    (unsigned long long)l->offset);
				goto out;
			}
		}
	}
out:
	free(sorted);
	return r;
}

static int open_meta(struct vhd_state *s, struct bks_error *err)
{
	unsigned char hb[VHD_HEADER_SIZE];
	uint64_t fsize = s->img.size;
	int r;

	if (fsize < VHD_FOOTER_SIZE)
		return bks_error_setmsg(err, EINVAL,
					"%s: %llu bytes is too small for a VHD",
					s->path, (unsigned long long)fsize);
	s->footer_off = fsize - VHD_FOOTER_SIZE;
	r = meta_pread(s, s->footer_off, VHD_FOOTER_SIZE, s->footer_buf,
		       "footer", err);
	if (r < 0)
		return r;
	r = vhd_footer_parse(s->footer_buf, &s->footer, err);
	if (r < 0) {
		struct bks_error e2 = {0};
		struct vhd_footer copy;
		char msg[BKS_ERROR_MSG_MAX];

		bks_error_prepend(err, "%s: at 0x%llx: ", s->path,
				  (unsigned long long)s->footer_off);
		/* A writer killed between overwriting the footer and writing
		 * it anew (qemu's order): say how to get the image back. */
		if (meta_pread(s, 0, VHD_FOOTER_SIZE, s->footer_buf, "footer",
			       &e2) == 0 &&
		    vhd_footer_parse(s->footer_buf, &copy, &e2) == 0 &&
		    copy.disk_type != VHD_TYPE_FIXED) {
			snprintf(msg, sizeof(msg), "%s", err->msg);
			bks_error_setmsg(err, EINVAL,
					 "%s; the footer copy at offset 0 is "
					 "valid: blkstack-img check --repair "
					 "puts it back",
					 msg);
		}
		return r;
	}
	s->size = s->footer.virtual_size;
	if (s->footer.disk_type == VHD_TYPE_FIXED) {
		if (s->size > s->footer_off)
			return bks_error_setmsg(
			    err, EINVAL,
			    "%s: fixed disk of %llu bytes in a file of only "
			    "%llu bytes of data",
			    s->path, (unsigned long long)s->size,
			    (unsigned long long)s->footer_off);
		return 0;
	}
	r = meta_pread(s, s->footer.data_offset, VHD_HEADER_SIZE, hb,
		       "dynamic header", err);
	if (r < 0)
		return r;
	r = vhd_header_parse(hb, &s->footer, fsize, &s->header, err);
	if (r < 0)
		return bks_error_prepend(err, "%s: ", s->path);
	s->bsize = s->header.block_size;
	s->bm_bytes = vhd_bitmap_bytes(s->bsize);
	s->nblocks = (uint32_t)((s->size + s->bsize - 1) / s->bsize);
	s->bat_bytes = vhd_bat_bytes(s->header.max_entries);
	return load_bat(s, err);
}

static int alloc_cache(struct vhd_state *s, struct bks_error *err)
{
	if (posix_memalign((void **)&s->slot_mem, VHD_MEM_ALIGN,
			   (size_t)s->bm_bytes * VHD_SLOTS) != 0) {
		s->slot_mem = NULL;
		return bks_error_set(err, ENOMEM, "%s: bitmap cache", s->path);
	}
	for (unsigned int i = 0; i < VHD_SLOTS; i++) {
		s->slots[i].bm = s->slot_mem + (size_t)i * s->bm_bytes;
		s->slots[i].state = SLOT_EMPTY;
	}
	return 0;
}

static void free_all(struct vhd_state *s)
{
	bks_aioq_free(s->q);
	s->q = NULL;
	bks_offload_free(s->off, VHD_CLOSE_WAIT_NS);
	s->off = NULL;
	free(s->bat);
	free(s->full);
	free(s->bat_disk);
	free(s->footer_buf);
	free(s->slot_mem);
	bks_image_close(&s->img);
}

static int vhd_open(void *state, struct bks_layer *self,
		    const struct bks_open_args *args, struct bks_error *err)
{
	struct vhd_state *s = state;
	uint32_t off_align, mem_align;
	int r;

	s->self = self;
	s->img.fd = -1;
	s->read_only = args->read_only;
	if (strlen(args->args) >= sizeof(s->path))
		return bks_error_setmsg(err, ENAMETOOLONG,
					"vhd: path too long");
	strcpy(s->path, args->args);
	r = bks_image_open(&s->img, s->path,
			   (s->read_only ? O_RDONLY : O_RDWR) | O_DIRECT, err);
	if (r < 0)
		return r;
	if (s->img.is_blk) {
		r = bks_error_setmsg(
		    err, EINVAL, "%s: a block device, not a VHD file", s->path);
		goto out;
	}
	bks_image_dio_align(&s->img, &off_align, &mem_align);
	if (off_align > VHD_SECTOR || mem_align > VHD_MEM_ALIGN) {
		r = bks_error_setmsg(err, EINVAL,
				     "%s: O_DIRECT alignment %u (memory %u) is "
				     "over the 512 bytes VHD metadata needs",
				     s->path, off_align, mem_align);
		goto out;
	}
	if (posix_memalign((void **)&s->footer_buf, VHD_MEM_ALIGN,
			   VHD_FOOTER_SIZE) != 0) {
		s->footer_buf = NULL;
		r = bks_error_set(err, ENOMEM, "%s: footer", s->path);
		goto out;
	}
	r = open_meta(s, err);
	if (r < 0)
		goto out;
	if (s->footer.disk_type != VHD_TYPE_FIXED) {
		r = alloc_cache(s, err);
		if (r < 0)
			goto out;
	}
	for (unsigned int i = VHD_CTX; i-- > 0;) {
		s->ctx[i].s = s;
		s->ctx[i].next = s->free_ctx;
		s->free_ctx = &s->ctx[i];
	}
	r = bks_offload_new(&s->off, args->loop, VHD_THREADS, VHD_QUEUE_DEPTH,
			    err);
	if (r == 0)
		r = bks_aioq_new(&s->q, args->loop, VHD_QUEUE_DEPTH,
				 args->io_engine, s->off, err);
	if (r < 0)
		bks_error_prepend(err, "%s: ", s->path);
out:
	if (r < 0)
		free_all(s);
	return r;
}

static void vhd_close(void *state, struct bks_layer *self)
{
	(void)self;
	free_all(state);
}

static int vhd_info(void *state, struct bks_layer *self, struct bks_info *info)
{
	struct vhd_state *s = state;

	(void)self;
	info->size = s->size;
	info->block_size = VHD_SECTOR;
	info->ops = BKS_OPF(BKS_OP_READ) | BKS_OPF(BKS_OP_WRITE) |
		    BKS_OPF(BKS_OP_FLUSH);
	info->read_only = s->read_only;
	info->can_fua = true;
	return 0;
}

/* ---- parents ------------------------------------------------------------- */

/* Read the footer of the candidate parent at path; 0, or -errno. */
static int parent_footer(const char *path, struct vhd_footer *f, int64_t *mtime,
			 struct bks_error *err)
{
	unsigned char b[VHD_FOOTER_SIZE];
	struct stat st;
	int fd = -1, r;

	fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
	if (fd < 0)
		return bks_error_set(err, errno, "open parent %s", path);
	if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode) ||
	    st.st_size < (off_t)VHD_FOOTER_SIZE) {
		r = bks_error_setmsg(err, EINVAL,
				     "parent %s: not a regular file with a "
				     "VHD footer",
				     path);
		goto out;
	}
	*mtime = st.st_mtime;
	if (pread(fd, b, sizeof(b), st.st_size - VHD_FOOTER_SIZE) !=
	    (ssize_t)sizeof(b)) {
		r = bks_error_set(err, EIO, "parent %s: reading its footer",
				  path);
		goto out;
	}
	r = vhd_footer_parse(b, f, err);
	if (r < 0)
		bks_error_prepend(err, "parent %s: ", path);
out:
	close(fd);
	return r;
}

/* Escape | and \ for a chain string: 0 or -ENAMETOOLONG. */
static int chain_escape(const char *prefix, const char *path, char *buf,
			size_t size)
{
	size_t n = strlen(prefix);

	if (n >= size)
		return -ENAMETOOLONG;
	memcpy(buf, prefix, n);
	for (const char *p = path; *p; p++) {
		if (n + 3 > size)
			return -ENAMETOOLONG;
		if (*p == '|' || *p == '\\')
			buf[n++] = '\\';
		buf[n++] = *p;
	}
	buf[n] = 0;
	return 0;
}

static int vhd_get_parent(void *state, struct bks_layer *self, char *buf,
			  size_t size, struct bks_error *err)
{
	/* Absolute locators first, then relative ones. */
	static const uint32_t order[] = {VHD_PLAT_W2KU, VHD_PLAT_MACX,
					 VHD_PLAT_W2RU, VHD_PLAT_MACX};
	struct vhd_state *s = state;
	const struct vhd_header *h = &s->header;
	char dir[PATH_MAX], cand[PATH_MAX], found[PATH_MAX], tried[512];
	unsigned char data[VHD_LOCATOR_MAX];
	char name[1024];
	struct vhd_footer pf;
	int64_t mtime = 0;
	char *slash, us[37], ps[37], pn[5];
	size_t tl = 0;
	int r;

	(void)self;
	if (s->footer.disk_type != VHD_TYPE_DIFF)
		return BKS_NO_PARENT;
	snprintf(dir, sizeof(dir), "%s", s->path);
	slash = strrchr(dir, '/');
	if (slash)
		slash[slash == dir ? 1 : 0] = 0;
	found[0] = 0;
	tried[0] = 0;
	for (unsigned int pass = 0; pass < 4 && !found[0]; pass++) {
		for (unsigned int i = 0; i < VHD_LOCATORS && !found[0]; i++) {
			const struct vhd_locator *l = &h->loc[i];
			struct bks_error e2 = {0};
			char path[PATH_MAX];

			if (l->code != order[pass] || l->length == 0)
				continue;
			r = meta_pread(s, l->offset, l->length, data,
				       "parent locator", err);
			if (r < 0)
				return r;
			if (vhd_locator_decode(l->code, data, l->length, path,
					       sizeof(path), &e2) < 0)
				continue;
			/* pass 1 takes absolute MacX, pass 3 relative. */
			if ((pass == 1 && path[0] != '/') ||
			    (pass == 3 && path[0] == '/'))
				continue;
			if (path[0] == '/')
				snprintf(cand, sizeof(cand), "%s", path);
			else if ((size_t)snprintf(cand, sizeof(cand), "%s/%s",
						  dir, path) >= sizeof(cand))
				continue;
			if (tl + 1 < sizeof(tried)) {
				int k =
				    snprintf(tried + tl, sizeof(tried) - tl,
					     "%s%s %s", tl ? ", " : "",
					     vhd_plat_name(l->code, pn), cand);

				tl = k < 0 ? sizeof(tried) : tl + (size_t)k;
			}
			if (realpath(cand, found) == NULL)
				found[0] = 0;
		}
	}
	/* Last, the parent's name beside the child (as libvhdi looks). */
	if (!found[0] &&
	    vhd_parent_name_decode(h->parent_name, name, sizeof(name)) == 0 &&
	    name[0] && !strchr(name, '/') &&
	    (size_t)snprintf(cand, sizeof(cand), "%s/%s", dir, name) <
		sizeof(cand)) {
		if (tl + 1 < sizeof(tried)) {
			int k = snprintf(tried + tl, sizeof(tried) - tl,
					 "%sparent name %.200s", tl ? ", " : "",
					 name);

			tl = k < 0 ? sizeof(tried) : tl + (size_t)k;
		}
		if (realpath(cand, found) == NULL)
			found[0] = 0;
	}
	if (!found[0])
		return bks_error_setmsg(err, ENOENT,
					"%s: differencing disk: no parent "
					"locator names an existing file "
					"(tried: %s)",
					s->path, tried[0] ? tried : "none");
	r = parent_footer(found, &pf, &mtime, err);
	if (r < 0)
		return bks_error_prepend(err, "%s: ", s->path);
	vhd_uuid_str(h->parent_uuid, us);
	vhd_uuid_str(pf.uuid, ps);
	if (memcmp(pf.uuid, h->parent_uuid, 16) != 0)
		return bks_error_setmsg(err, EINVAL,
					"%s: parent %s has UUID %s, but this "
					"differencing disk's parent is %s: not "
					"its parent",
					s->path, found, ps, us);
	if (!vhd_parent_time_ok(h->parent_timestamp, pf.timestamp, mtime))
		return bks_error_setmsg(
		    err, EINVAL,
		    "%s: parent %s has timestamp %u (its file modified at "
		    "%lld), but this differencing disk recorded %u: the "
		    "parent was replaced or recreated after the child was "
		    "made; restore the parent, or recreate the child "
		    "(blkstack-img create -f vhd -b %s)",
		    s->path, found, pf.timestamp,
		    (long long)(mtime - (int64_t)VHD_EPOCH_OFFSET),
		    h->parent_timestamp, found);
	if (pf.virtual_size != s->size)
		return bks_error_setmsg(err, EINVAL,
					"%s: parent %s is %llu bytes, this "
					"differencing disk %llu",
					s->path, found,
					(unsigned long long)pf.virtual_size,
					(unsigned long long)s->size);
	if (chain_escape("vhd:", found, buf, size) < 0)
		return bks_error_setmsg(err, ENAMETOOLONG,
					"%s: parent path too long: %s", s->path,
					found);
	return 0;
}

/* ---- reopen: a change of read-only mode ---------------------------------- */

/*
 * The chain is drained for all of this (driver.h): blocking calls are
 * allowed.  Every write the layer makes is acknowledged only once its
 * metadata is written (the allocation order above), so going read-only
 * needs only an fdatasync for durability; there is no reservation and no
 * dirty flag in a VHD.  Going read-write reads the footer at the end of
 * the file again and checks it still describes the image served (the
 * same UUID, type and size, else -ESTALE: someone changed it).  Both
 * ways, prepare opens the file anew in the new mode and checks it is the
 * same file (device and inode, else -ESTALE "the file was replaced");
 * commit only puts that descriptor in place of the old one (dup2: the
 * aioq keeps the fd number) and flips the mode.
 */

static int same_file(struct vhd_state *s, int fd, struct bks_error *err)
{
	struct stat a, b;

	if (fstat(s->img.fd, &a) < 0 || fstat(fd, &b) < 0)
		return bks_error_set(err, errno, "%s: fstat", s->path);
	if (a.st_dev != b.st_dev || a.st_ino != b.st_ino)
		return bks_error_setmsg(err, ESTALE,
					"%s: the file was replaced", s->path);
	return 0;
}

static int vhd_reopen_prepare(void *state, struct bks_layer *self,
			      const struct bks_open_args *args,
			      struct bks_error *err)
{
	struct vhd_state *s = state;
	unsigned char *fb = NULL;
	struct vhd_footer f;
	struct stat sb;
	int r;

	(void)self;
	s->reopen_pending = false;
	s->reopen_fd = -1;
	if (!args->args || strcmp(args->args, s->path) != 0)
		return bks_error_setmsg(err, EOPNOTSUPP,
					"vhd: reopen: only the read-only mode "
					"can change");
	if (args->read_only == s->read_only)
		return 0;
	if (args->read_only && fdatasync(s->img.fd) < 0)
		return bks_error_set(
		    err, errno, "%s: reopen read-only: fdatasync", s->path);
	if (!args->read_only) {
		if (posix_memalign((void **)&fb, VHD_MEM_ALIGN,
				   VHD_FOOTER_SIZE) != 0)
			return bks_error_set(err, ENOMEM, "%s: reopen",
					     s->path);
		r = fstat(s->img.fd, &sb) < 0 ? -errno : 0;
		if (r == 0 &&
		    (uint64_t)sb.st_size != s->footer_off + VHD_FOOTER_SIZE)
			r = -ESTALE;
		if (r == 0)
			r = meta_pread(s, s->footer_off, VHD_FOOTER_SIZE, fb,
				       "footer", err);
		if (r == 0)
			r = vhd_footer_parse(fb, &f, err);
		if (r == 0 && (memcmp(f.uuid, s->footer.uuid, 16) != 0 ||
			       f.disk_type != s->footer.disk_type ||
			       f.current_size != s->footer.current_size))
			r = -ESTALE;
		free(fb);
		if (r == -ESTALE)
			return bks_error_setmsg(err, ESTALE,
						"%s: reopen read-write: the "
						"image was changed by someone "
						"else while open",
						s->path);
		if (r < 0)
			return bks_error_prepend(
			    err, "%s: reopen read-write: ", s->path);
	}
	s->reopen_fd = open(s->path, (args->read_only ? O_RDONLY : O_RDWR) |
					 O_DIRECT | O_CLOEXEC | O_NONBLOCK);
	if (s->reopen_fd < 0)
		return bks_error_set(err, errno, "%s: reopen %s", s->path,
				     args->read_only ? "read-only"
						     : "read-write");
	r = same_file(s, s->reopen_fd, err);
	if (r < 0) {
		close(s->reopen_fd);
		s->reopen_fd = -1;
		return r;
	}
	s->reopen_pending = true;
	s->reopen_ro = args->read_only;
	return 0;
}

static void vhd_reopen_commit(void *state, struct bks_layer *self)
{
	struct vhd_state *s = state;

	(void)self;
	if (!s->reopen_pending)
		return;
	while (dup2(s->reopen_fd, s->img.fd) < 0 &&
	       (errno == EINTR || errno == EBUSY))
		;
	close(s->reopen_fd);
	s->reopen_fd = -1;
	s->reopen_pending = false;
	s->read_only = s->reopen_ro;
}

static void vhd_reopen_abort(void *state, struct bks_layer *self)
{
	struct vhd_state *s = state;

	(void)self;
	if (s->reopen_pending && s->reopen_fd >= 0)
		close(s->reopen_fd);
	s->reopen_fd = -1;
	s->reopen_pending = false;
}

/* ---- set_backing --------------------------------------------------------- */

/* pwrite len bytes (sector multiple, at a sector) from an aligned copy,
 * on an O_DIRECT descriptor. */
static int meta_pwrite(int fd, uint64_t off, const void *data, size_t len)
{
	unsigned char *buf = NULL;
	size_t done = 0;
	int r = 0;

	if (posix_memalign((void **)&buf, VHD_MEM_ALIGN, len) != 0)
		return -ENOMEM;
	memcpy(buf, data, len);
	while (done < len) {
		ssize_t k =
		    pwrite(fd, buf + done, len - done, (off_t)(off + done));

		if (k < 0 && errno == EINTR)
			continue;
		if (k <= 0) {
			r = k < 0 ? -errno : -EIO;
			break;
		}
		done += (size_t)k;
	}
	free(buf);
	return r;
}

/*
 * A differencing disk becomes dynamic (no parent: stream pulled all of
 * the parent's data into it).  Crash order:
 *   1. the footer copy at offset 0, as dynamic, then fdatasync: open
 *      reads the footer at the end, so this changes nothing yet (and the
 *      copy is only used to repair a missing end footer, after which
 *      either type serves the same data: see 2);
 *   2. the footer at the end of the file (one sector: one atomic write),
 *      then fdatasync: the switch.  Before it the disk is differencing
 *      and its header names the parent; after it, dynamic: sectors whose
 *      bit is clear read as zeroes instead of from the parent, which
 *      holds nothing there that the disk lacks any more (stream copied
 *      every range the parent had into it, setting those bits);
 *   3. the header with no parent (UUID, timestamp, name, locators
 *      cleared; one 1024-byte write inside the file's first 4 KiB), then
 *      fdatasync.  A crash before it leaves a dynamic disk with stale
 *      parent fields, which a dynamic disk's readers ignore.
 */
static int to_dynamic(struct vhd_state *s, int fd, struct bks_error *err)
{
	struct vhd_footer f = s->footer;
	struct vhd_header h = s->header;
	unsigned char fb[VHD_FOOTER_SIZE], hb[VHD_HEADER_SIZE];
	int r;

	f.disk_type = VHD_TYPE_DYNAMIC;
	vhd_footer_build(fb, &f);
	r = meta_pwrite(fd, 0, fb, sizeof(fb));
	if (r == 0 && fdatasync(fd) < 0)
		r = -errno;
	if (r < 0)
		return bks_error_set(err, -r, "writing the footer copy");
	r = meta_pwrite(fd, s->footer_off, fb, sizeof(fb));
	if (r == 0 && fdatasync(fd) < 0)
		r = -errno;
	if (r < 0)
		return bks_error_set(err, -r, "writing the footer");
	/* From here on the disk is dynamic, whatever follows. */
	s->footer = f;
	memcpy(s->footer_buf, fb, sizeof(fb));
	memset(h.parent_uuid, 0, sizeof(h.parent_uuid));
	h.parent_timestamp = 0;
	memset(h.parent_name, 0, sizeof(h.parent_name));
	memset(h.loc, 0, sizeof(h.loc));
	vhd_header_build(hb, &h);
	r = meta_pwrite(fd, s->footer.data_offset, hb, sizeof(hb));
	if (r == 0 && fdatasync(fd) < 0)
		r = -errno;
	if (r < 0)
		return bks_error_set(err, -r,
				     "writing the header without a parent "
				     "(the disk is dynamic already)");
	s->header = h;
	return 0;
}

/* The locator space of slot l in bytes (space is sectors per the
 * specification, bytes for some tools). */
static uint64_t loc_space(const struct vhd_locator *l)
{
	uint64_t sp = l->space;

	if (sp < l->length)
		sp *= VHD_SECTOR;
	return sp / VHD_SECTOR * VHD_SECTOR;
}

/*
 * A new parent for a differencing disk.  Crash order:
 *   1. the new parent's locator data is written into the space of an old
 *      locator that get_parent does not use first (not the first
 *      absolute W2ku one that names an existing file... simply: never
 *      slot 0's first absolute W2ku), then fdatasync: the old header
 *      still finds the old parent through its W2ku locator, untouched;
 *   2. the header (new parent UUID, timestamp, name; one locator, the
 *      new one, where step 1 wrote it), in one 1024-byte write inside
 *      the file's first 4 KiB (see qcow2_set_backing for why one aligned
 *      write is enough), then fdatasync: the switch.
 * If no old locator's space is large enough: -ENAMETOOLONG, nothing
 * written.
 */
static int new_parent(struct vhd_state *s, int fd, const char *path,
		      struct bks_error *err)
{
	struct vhd_header h = s->header;
	unsigned char hb[VHD_HEADER_SIZE];
	unsigned char *data = NULL;
	struct vhd_footer pf;
	int64_t mtime = 0;
	int keep = -1, slot = -1, len = -1, r;
	uint64_t keep_off = 0, keep_space = 0;
	uint32_t code = 0;
	const char *base = strrchr(path, '/');

	r = parent_footer(path, &pf, &mtime, err);
	if (r < 0)
		return r;
	if (pf.virtual_size != s->size)
		return bks_error_setmsg(err, EINVAL,
					"parent %s is %llu bytes, this disk "
					"%llu",
					path,
					(unsigned long long)pf.virtual_size,
					(unsigned long long)s->size);
	/* The locator get_parent tries first: left alone. */
	for (int i = 0; i < (int)VHD_LOCATORS && keep < 0; i++)
		if (h.loc[i].code == VHD_PLAT_W2KU && h.loc[i].length)
			keep = i;
	if (keep >= 0) {
		keep_off = h.loc[keep].offset;
		keep_space = loc_space(&h.loc[keep]);
	}
	data = calloc(1, VHD_LOCATOR_MAX);
	if (!data)
		return bks_error_set(err, ENOMEM, "parent locator");
	for (int i = 0; i < (int)VHD_LOCATORS && slot < 0; i++) {
		const struct vhd_locator *l = &h.loc[i];
		static const uint32_t codes[2] = {VHD_PLAT_W2KU, VHD_PLAT_MACX};

		if (i == keep || l->code == VHD_PLAT_NONE || !l->length ||
		    l->offset < h.table_offset + s->bat_bytes)
			continue;
		for (unsigned int c = 0; c < 2 && slot < 0; c++) {
			len = vhd_locator_encode(codes[c], path, data,
						 VHD_LOCATOR_MAX);
			if (len > 0 && (uint64_t)len <= loc_space(l)) {
				slot = i;
				code = codes[c];
			}
		}
	}
	if (slot < 0) {
		r = bks_error_setmsg(err, ENAMETOOLONG,
				     "no old parent locator has room for %s "
				     "(the locator the old parent is found by "
				     "is kept until the switch)",
				     path);
		goto out;
	}
	{
		size_t n =
		    ((size_t)len + VHD_SECTOR - 1) / VHD_SECTOR * VHD_SECTOR;

		r = meta_pwrite(fd, h.loc[slot].offset, data, n);
		if (r == 0 && fdatasync(fd) < 0)
			r = -errno;
		if (r < 0) {
			r = bks_error_set(err, -r, "writing a parent locator");
			goto out;
		}
	}
	{
		struct vhd_locator nl = h.loc[slot];

		nl.code = code;
		nl.length = (uint32_t)len;
		nl.space = (uint32_t)(loc_space(&h.loc[slot]) / VHD_SECTOR);
		memset(h.loc, 0, sizeof(h.loc));
		h.loc[0] = nl;
	}
	memcpy(h.parent_uuid, pf.uuid, 16);
	h.parent_timestamp = pf.timestamp;
	r = vhd_parent_name_encode(h.parent_name, base ? base + 1 : path);
	if (r < 0) {
		r = bks_error_set(err, -r, "parent name of %s", path);
		goto out;
	}
	vhd_header_build(hb, &h);
	r = meta_pwrite(fd, s->footer.data_offset, hb, sizeof(hb));
	if (r == 0 && fdatasync(fd) < 0)
		r = -errno;
	if (r < 0) {
		r = bks_error_set(err, -r, "writing the header");
		goto out;
	}
	s->header = h;
	/*
	 * 3. Best effort, after the switch: the kept locator's space (no
	 *    longer named by the header) gets the new parent's W2ku data,
	 *    then the header names both, so that a later set_backing again
	 *    has a spare locator to write first.  A failure here leaves the
	 *    valid one-locator header of step 2.
	 */
	if (keep >= 0 && keep != slot) {
		struct vhd_locator kl = {0};

		len = vhd_locator_encode(VHD_PLAT_W2KU, path, data,
					 VHD_LOCATOR_MAX);
		if (len > 0 && (uint64_t)len <= keep_space &&
		    meta_pwrite(fd, keep_off, data,
				((size_t)len + VHD_SECTOR - 1) / VHD_SECTOR *
				    VHD_SECTOR) == 0 &&
		    fdatasync(fd) == 0) {
			kl.code = VHD_PLAT_W2KU;
			kl.length = (uint32_t)len;
			kl.space = (uint32_t)(keep_space / VHD_SECTOR);
			kl.offset = keep_off;
			h.loc[1] = kl;
			vhd_header_build(hb, &h);
			if (meta_pwrite(fd, s->footer.data_offset, hb,
					sizeof(hb)) == 0 &&
			    fdatasync(fd) == 0)
				s->header = h;
		}
	}
	r = 0;
out:
	free(data);
	return r;
}

static int vhd_set_backing(void *state, struct bks_layer *self,
			   const char *backing, struct bks_error *err)
{
	struct vhd_state *s = state;
	char path[PATH_MAX];
	int fd = -1, r;

	(void)self;
	if (s->footer.disk_type != VHD_TYPE_DIFF) {
		if (!backing)
			return 0; /* no parent already */
		return bks_error_setmsg(err, EOPNOTSUPP,
					"%s: set backing file: a %s VHD cannot "
					"get a parent",
					s->path,
					vhd_type_name(s->footer.disk_type));
	}
	if (backing) {
		const char *p;
		size_t n = 0;

		if (strncmp(backing, "vhd:", 4) != 0 || backing[4] != '/')
			return bks_error_setmsg(err, EINVAL,
						"%s: set backing file %s: a "
						"differencing VHD's parent is "
						"vhd:/ABSOLUTE-PATH",
						s->path, backing);
		/* Unescape \| and \\ (chain.h). */
		for (p = backing + 4; *p && n + 1 < sizeof(path); p++) {
			if (*p == '\\' && p[1])
				p++;
			path[n++] = *p;
		}
		if (*p)
			return bks_error_setmsg(err, ENAMETOOLONG,
						"%s: set backing file: path "
						"too long",
						s->path);
		path[n] = 0;
	}
	fd = open(s->path, O_RDWR | O_DIRECT | O_CLOEXEC | O_NONBLOCK);
	if (fd < 0)
		return bks_error_set(err, errno,
				     "%s: set backing file: open for writing",
				     s->path);
	r = same_file(s, fd, err);
	if (r == 0)
		r = backing ? new_parent(s, fd, path, err)
			    : to_dynamic(s, fd, err);
	if (r < 0 && !strstr(err->msg, s->path))
		bks_error_prepend(err, "%s: set backing file: ", s->path);
	close(fd);
	return r;
}

/* ---- sub-requests -------------------------------------------------------- */

static void piece_done(struct bks_req *sub, int result)
{
	struct vhd_sub *p = sub->opaque;
	struct vhd_ctx *c = p->ctx;

	bks_subreq_put(c->s->self, sub);
	bks_join_put(&c->join, result);
}

/* A sub-request; NULL only on a bug (the pool is sized never to run out). */
static struct bks_req *sub_get(struct vhd_state *s, struct vhd_sub **p)
{
	struct bks_req *sub = bks_subreq_get(s->self);

	if (sub) {
		*p = bks_subreq_data(sub);
		(*p)->s = s;
	}
	return sub;
}

/* Queue sub on the file, completing it with the queue's refusal. */
static void file_io(struct vhd_state *s, struct bks_req *sub)
{
	int r = bks_aioq_queue(s->q, s->img.fd, sub);

	if (r < 0)
		bks_req_complete(sub, r);
}

/*
 * A piece of c under its join: op of bytes [skip, skip + len) of c's
 * request at file offset off (parent false) or at the same guest offset
 * of the parent.
 */
static int piece(struct vhd_ctx *c, enum bks_op op, bool parent, uint64_t off,
		 uint64_t skip, uint64_t len, uint32_t flags)
{
	struct vhd_state *s = c->s;
	struct vhd_sub *p;
	struct bks_req *sub = sub_get(s, &p);
	int cnt = 0, r;

	if (!sub)
		return -EIO;
	r = bks_iov_slice(c->req, skip, len, p->iov, &cnt, VHD_PIECE_IOV);
	if (r < 0) {
		bks_subreq_put(s->self, sub);
		return r;
	}
	p->ctx = c;
	p->slot = NULL;
	sub->op = op;
	sub->flags = flags;
	sub->offset = off;
	sub->len = len;
	sub->iov = p->iov;
	sub->iovcnt = cnt;
	sub->done = piece_done;
	sub->opaque = p;
	bks_join_add(&c->join);
	if (parent) {
		s->parent_reads++;
		bks_next_submit(bks_layer_child(s->self, BKS_CHILD_BACKING),
				sub);
	} else {
		file_io(s, sub);
	}
	return 0;
}

/* A metadata write of c under its join: len bytes of buf at off. */
static int meta_piece(struct vhd_ctx *c, uint64_t off, void *buf, size_t len,
		      uint32_t flags)
{
	struct vhd_state *s = c->s;
	struct vhd_sub *p;
	struct bks_req *sub = sub_get(s, &p);

	if (!sub)
		return -EIO;
	p->ctx = c;
	p->slot = NULL;
	p->iov[0].iov_base = buf;
	p->iov[0].iov_len = len;
	sub->op = BKS_OP_WRITE;
	sub->flags = flags;
	sub->offset = off;
	sub->len = len;
	sub->iov = p->iov;
	sub->iovcnt = 1;
	sub->done = piece_done;
	sub->opaque = p;
	bks_join_add(&c->join);
	file_io(s, sub);
	return 0;
}

/* ---- contexts ------------------------------------------------------------ */

static void ctx_run(struct vhd_ctx *c);

static void ctx_join_done(struct bks_join *join, int result)
{
	struct vhd_ctx *c = join->arg;

	if (result < 0 && c->result == 0)
		c->result = result;
	ctx_run(c);
}

/* Start a join for c's pieces (the builder's reference). */
static void ctx_join(struct vhd_ctx *c, enum ctx_phase next)
{
	c->phase = next;
	bks_join_init(&c->join, ctx_join_done, c);
}

/* Run every context of list (each resumes its request). */
static void run_list(struct vhd_ctx *list)
{
	while (list) {
		struct vhd_ctx *c = list;

		list = c->next;
		c->next = NULL;
		ctx_run(c);
	}
}

/* ---- the bitmap cache ---------------------------------------------------- */

static bool is_full(const struct vhd_state *s, uint32_t block)
{
	return s->full[block >> 3] & (1u << (block & 7));
}

static void set_full(struct vhd_state *s, uint32_t block)
{
	s->full[block >> 3] |= (uint8_t)(1u << (block & 7));
}

/* Whether every sector bit of sl's block is set. */
static bool bitmap_full(const struct vhd_state *s, const struct vhd_slot *sl)
{
	uint32_t sectors = s->bsize / VHD_SECTOR;
	bool set;

	return vhd_bitmap_run(sl->bm, 0, sectors, &set) == sectors && set;
}

static void slot_load_done(struct bks_req *sub, int result)
{
	struct vhd_sub *p = sub->opaque;
	struct vhd_slot *sl = p->slot;
	struct vhd_state *s = p->s;
	struct vhd_ctx *list = sl->waiters;

	bks_subreq_put(s->self, sub);
	sl->waiters = NULL;
	if (result < 0) {
		for (struct vhd_ctx *c = list; c; c = c->next) {
			c->slot = NULL;
			if (c->result == 0)
				c->result = result;
		}
		sl->refs = 0;
		sl->state = SLOT_EMPTY;
	} else {
		sl->state = SLOT_READY;
		if (bitmap_full(s, sl))
			set_full(s, sl->block);
	}
	run_list(list);
}

static struct vhd_slot *slot_find(struct vhd_state *s, uint32_t block)
{
	for (unsigned int i = 0; i < VHD_SLOTS; i++) {
		if (s->slots[i].state != SLOT_EMPTY &&
		    s->slots[i].block == block)
			return &s->slots[i];
	}
	return NULL;
}

static struct vhd_slot *slot_victim(struct vhd_state *s)
{
	struct vhd_slot *best = NULL;

	for (unsigned int i = 0; i < VHD_SLOTS; i++) {
		struct vhd_slot *sl = &s->slots[i];

		if (sl->state == SLOT_EMPTY)
			return sl;
		if (sl->refs == 0 && !sl->writing &&
		    (!best || sl->lru < best->lru))
			best = sl;
	}
	return best;
}

/*
 * Hold the bitmap of block for c (c->slot): 1 when it is ready, 0 when
 * c waits (and is run again when it is), -errno.  fresh: a block being
 * allocated, whose bitmap starts clear (nothing read).
 */
static int slot_acquire(struct vhd_ctx *c, uint32_t block, bool fresh)
{
	struct vhd_state *s = c->s;
	struct vhd_slot *sl = fresh ? NULL : slot_find(s, block);
	struct vhd_sub *p;
	struct bks_req *sub;

	if (sl) {
		sl->refs++;
		sl->lru = ++s->tick;
		c->slot = sl;
		if (sl->state == SLOT_READY) {
			s->cache_hits++;
			return 1;
		}
		c->next = sl->waiters;
		sl->waiters = c;
		return 0;
	}
	sl = slot_victim(s);
	if (!sl) {
		c->next = s->slot_wait;
		s->slot_wait = c;
		return 0;
	}
	sl->block = block;
	sl->refs = 1;
	sl->lru = ++s->tick;
	sl->writing = false;
	sl->pend_fua = false;
	sl->waiters = sl->wq = sl->pending = NULL;
	c->slot = sl;
	if (fresh) {
		memset(sl->bm, 0, s->bm_bytes);
		sl->state = SLOT_READY;
		return 1;
	}
	sub = sub_get(s, &p);
	if (!sub) {
		sl->state = SLOT_EMPTY;
		sl->refs = 0;
		c->slot = NULL;
		return -EIO;
	}
	s->cache_misses++;
	s->bitmap_reads++;
	sl->state = SLOT_LOADING;
	c->next = NULL;
	sl->waiters = c;
	p->ctx = NULL;
	p->slot = sl;
	p->iov[0].iov_base = sl->bm;
	p->iov[0].iov_len = s->bm_bytes;
	sub->op = BKS_OP_READ;
	sub->offset = (uint64_t)s->bat[block] * VHD_SECTOR;
	sub->len = s->bm_bytes;
	sub->iov = p->iov;
	sub->iovcnt = 1;
	sub->done = slot_load_done;
	sub->opaque = p;
	file_io(s, sub);
	return 0;
}

static void slot_release(struct vhd_ctx *c)
{
	struct vhd_state *s = c->s;
	struct vhd_slot *sl = c->slot;
	struct vhd_ctx *list;

	if (!sl)
		return;
	c->slot = NULL;
	if (--sl->refs > 0 || !s->slot_wait)
		return;
	list = s->slot_wait;
	s->slot_wait = NULL;
	run_list(list);
}

static void slot_write_start(struct vhd_state *s, struct vhd_slot *sl);

static void slot_write_done(struct bks_req *sub, int result)
{
	struct vhd_sub *p = sub->opaque;
	struct vhd_slot *sl = p->slot;
	struct vhd_state *s = p->s;
	struct vhd_ctx *list = sl->wq;

	bks_subreq_put(s->self, sub);
	sl->wq = NULL;
	sl->writing = false;
	if (result == 0 && !sl->pending && bitmap_full(s, sl))
		set_full(s, sl->block);
	for (struct vhd_ctx *c = list; c; c = c->next) {
		if (result < 0 && c->result == 0)
			c->result = result;
	}
	if (sl->pending)
		slot_write_start(s, sl);
	run_list(list);
}

/* Write sl's bitmap for the contexts pending on it. */
static void slot_write_start(struct vhd_state *s, struct vhd_slot *sl)
{
	struct vhd_sub *p;
	struct bks_req *sub = sub_get(s, &p);

	sl->wq = sl->pending;
	sl->pending = NULL;
	if (!sub) {
		struct vhd_ctx *list = sl->wq;

		sl->wq = NULL;
		for (struct vhd_ctx *c = list; c; c = c->next)
			c->result = -EIO;
		run_list(list);
		return;
	}
	sl->writing = true;
	s->bitmap_writes++;
	p->ctx = NULL;
	p->slot = sl;
	p->iov[0].iov_base = sl->bm;
	p->iov[0].iov_len = s->bm_bytes;
	sub->op = BKS_OP_WRITE;
	sub->flags = sl->pend_fua ? BKS_REQ_FUA : 0;
	sl->pend_fua = false;
	sub->offset = (uint64_t)s->bat[sl->block] * VHD_SECTOR;
	sub->len = s->bm_bytes;
	sub->iov = p->iov;
	sub->iovcnt = 1;
	sub->done = slot_write_done;
	sub->opaque = p;
	file_io(s, sub);
}

/* ---- the request walk ---------------------------------------------------- */

/* The piece of c at its position: its block, offset in it, length. */
static void ctx_where(struct vhd_ctx *c, uint64_t *in_blk)
{
	struct vhd_state *s = c->s;
	uint64_t off = c->req->offset + c->pos;
	uint64_t left = c->req->len - c->pos;

	c->block = (uint32_t)(off / s->bsize);
	*in_blk = off % s->bsize;
	c->n = s->bsize - *in_blk < left ? s->bsize - *in_blk : left;
}

/*
 * Where a new block goes: at the footer, or up to 3.5 KiB after it so
 * that its data (after the bitmap) starts on a 4 KiB boundary of the
 * file.  Guests write 4 KiB-aligned, and an O_DIRECT write that is not
 * aligned to the file system's block is serialised by ext4 and xfs.
 * The padding is unreferenced space, not a leak (blkstack-img check
 * knows).
 */
static uint64_t block_place(const struct vhd_state *s)
{
	uint64_t data = s->footer_off + s->bm_bytes;

	data = (data + VHD_DATA_ALIGN - 1) / VHD_DATA_ALIGN * VHD_DATA_ALIGN;
	return data - s->bm_bytes;
}

static bool is_diff(const struct vhd_state *s)
{
	return s->footer.disk_type == VHD_TYPE_DIFF;
}

/*
 * A read step: the runs of the current block from c->pos on, up to
 * VHD_STEP_PIECES pieces.  Returns 1 when the step issued pieces (c is
 * run again when they are done), 0 when it finished synchronously.
 */
static int read_step(struct vhd_ctx *c)
{
	struct vhd_state *s = c->s;
	uint64_t in_blk, base, end;
	unsigned int pieces = 0;
	int r = 0;

	ctx_where(c, &in_blk);
	base = c->req->offset + c->pos - in_blk; /* the block's guest start */
	end = in_blk + c->n;
	ctx_join(c, PH_READ_DONE);
	if (s->bat[c->block] == VHD_BAT_UNUSED) {
		if (is_diff(s)) {
			r = piece(c, BKS_OP_READ, true, base + in_blk, c->pos,
				  c->n, 0);
			pieces++;
		} else {
			bks_iov_zero(c->req, c->pos, c->n);
		}
		c->pos += c->n;
	} else if (!c->slot) {
		/* A full block (ctx_step takes a slot for the others). */
		r = piece(c, BKS_OP_READ, false,
			  (uint64_t)s->bat[c->block] * VHD_SECTOR +
			      s->bm_bytes + in_blk,
			  c->pos, c->n, 0);
		pieces++;
		c->pos += c->n;
	} else {
		uint64_t data =
		    (uint64_t)s->bat[c->block] * VHD_SECTOR + s->bm_bytes;

		while (in_blk < end && pieces < VHD_STEP_PIECES && r == 0) {
			uint32_t first = (uint32_t)(in_blk / VHD_SECTOR);
			bool set;
			uint32_t stop = vhd_bitmap_run(
			    c->slot->bm, first,
			    (uint32_t)((end + VHD_SECTOR - 1) / VHD_SECTOR),
			    &set);
			uint64_t run_end = (uint64_t)stop * VHD_SECTOR;
			uint64_t len;

			if (run_end > end)
				run_end = end;
			len = run_end - in_blk;
			if (set) {
				r = piece(c, BKS_OP_READ, false, data + in_blk,
					  c->pos, len, 0);
				pieces++;
			} else if (is_diff(s)) {
				r = piece(c, BKS_OP_READ, true, base + in_blk,
					  c->pos, len, 0);
				pieces++;
			} else {
				bks_iov_zero(c->req, c->pos, len);
			}
			c->pos += len;
			in_blk = run_end;
		}
		if (in_blk >= end)
			slot_release(c);
	}
	if (r < 0 && c->result == 0)
		c->result = r;
	if (pieces == 0) {
		/* Nothing in flight: drop the builder's reference quietly. */
		c->phase = PH_START;
		return 0;
	}
	bks_join_put(&c->join, 0);
	return 1;
}

static bool bits_set(const struct vhd_state *s, const unsigned char *bm,
		     uint64_t in_blk, uint64_t n)
{
	uint32_t first = (uint32_t)(in_blk / VHD_SECTOR);
	uint32_t end = (uint32_t)((in_blk + n) / VHD_SECTOR);
	bool set;

	(void)s;
	return vhd_bitmap_run(bm, first, end, &set) == end && set;
}

static void set_bits(unsigned char *bm, uint64_t in_blk, uint64_t n)
{
	for (uint32_t i = (uint32_t)(in_blk / VHD_SECTOR);
	     i < (uint32_t)((in_blk + n) / VHD_SECTOR); i++)
		vhd_set_bit(bm, i);
}

/*
 * An allocation that did not finish: its bitmap slot is dropped, its BAT
 * entry in the disk copy restored; if it wrote anything, what landed is
 * unknown, so no more allocations are made (reads and writes to
 * allocated blocks go on).
 */
static void alloc_failed(struct vhd_ctx *c)
{
	struct vhd_state *s = c->s;

	if (c->slot) {
		c->slot->state = SLOT_EMPTY;
		c->slot->refs = 1; /* slot_release drops it */
	}
	bks_put_be32(s->bat_disk + 4ull * c->block, s->bat[c->block]);
	if (c->phase != PH_START)
		s->broken = -EIO;
}

static void alloc_unlock(struct vhd_ctx *c)
{
	struct vhd_state *s = c->s;
	struct vhd_ctx *list;

	if (!c->alloc)
		return;
	c->alloc = false;
	s->alloc_ctx = NULL;
	list = s->alloc_wait;
	s->alloc_wait = NULL;
	run_list(list);
}

/*
 * A write step, by phase.  Returns 1 when c waits (it is run again), 0
 * when it may go on at once.
 */
static int write_step(struct vhd_ctx *c)
{
	struct vhd_state *s = c->s;
	uint32_t fua = c->req->flags & BKS_REQ_FUA;
	uint64_t in_blk, new_end, span = (uint64_t)s->bm_bytes + s->bsize;
	int r;

	ctx_where(c, &in_blk);
	switch (c->phase) {
	case PH_START:
		if (s->bat[c->block] == VHD_BAT_UNUSED) {
			if (s->alloc_ctx && s->alloc_ctx != c) {
				c->next = s->alloc_wait;
				s->alloc_wait = c;
				return 1;
			}
			if (s->broken) {
				c->result = s->broken;
				return 0;
			}
			s->alloc_ctx = c;
			c->alloc = true;
			c->alloc_done = false;
			if (!c->slot) {
				r = slot_acquire(c, c->block, true);
				if (r <= 0)
					return r < 0 ? (c->result = r, 0) : 1;
			}
			s->alloc_at = block_place(s);
			new_end = s->alloc_at + span;
			if (s->alloc_at / VHD_SECTOR >= VHD_BAT_UNUSED ||
			    new_end + VHD_FOOTER_SIZE > (1ull << 41)) {
				c->result = -ENOSPC;
				return 0;
			}
			/*
			 * Differencing: only the written sectors are this
			 * image's.  Dynamic: all of them, as qemu does: the
			 * rest of the block is a hole of the file (zeroes),
			 * no later write to the block needs a bitmap write,
			 * and readers that ignore the bitmap (qemu) and those
			 * that honour it agree on every sector even after a
			 * crash.
			 */
			if (is_diff(s))
				set_bits(c->slot->bm, in_blk, c->n);
			else
				memset(c->slot->bm, 0xFF, s->bm_bytes);
			ctx_join(c, PH_ALLOC_FOOTER);
			r = meta_piece(c, new_end, s->footer_buf,
				       VHD_FOOTER_SIZE, fua);
			if (r < 0)
				c->result = r;
			bks_join_put(&c->join, 0);
			return 1;
		}
		if (!c->slot && !is_full(s, c->block)) {
			r = slot_acquire(c, c->block, false);
			if (r <= 0)
				return r < 0 ? (c->result = r, 0) : 1;
		}
		ctx_join(c, PH_WRITE_DONE);
		r = piece(c, BKS_OP_WRITE, false,
			  (uint64_t)s->bat[c->block] * VHD_SECTOR +
			      s->bm_bytes + in_blk,
			  c->pos, c->n, fua);
		if (r < 0)
			c->result = r;
		bks_join_put(&c->join, 0);
		return 1;
	case PH_WRITE_DONE:
		if (!c->slot || bits_set(s, c->slot->bm, in_blk, c->n))
			break;
		set_bits(c->slot->bm, in_blk, c->n);
		c->phase = PH_BITMAP_DONE;
		c->next = c->slot->pending;
		c->slot->pending = c;
		if (fua)
			c->slot->pend_fua = true;
		if (!c->slot->writing)
			slot_write_start(s, c->slot);
		return 1;
	case PH_BITMAP_DONE:
		break;
	case PH_ALLOC_FOOTER:
		/* The file ends with a footer again: fill the block. */
		ctx_join(c, PH_ALLOC_DATA);
		r = meta_piece(c, s->alloc_at, c->slot->bm, s->bm_bytes, fua);
		if (r == 0)
			r = piece(c, BKS_OP_WRITE, false,
				  s->alloc_at + s->bm_bytes + in_blk, c->pos,
				  c->n, fua);
		if (r < 0)
			c->result = r;
		bks_join_put(&c->join, 0);
		return 1;
	case PH_ALLOC_DATA: {
		uint64_t sector = 4ull * c->block / VHD_SECTOR * VHD_SECTOR;

		bks_put_be32(s->bat_disk + 4ull * c->block,
			     (uint32_t)(s->alloc_at / VHD_SECTOR));
		ctx_join(c, PH_ALLOC_BAT);
		r = meta_piece(c, s->header.table_offset + sector,
			       s->bat_disk + sector, VHD_SECTOR, fua);
		if (r < 0)
			c->result = r;
		bks_join_put(&c->join, 0);
		return 1;
	}
	case PH_ALLOC_BAT:
		c->alloc_done = true;
		if (!is_diff(s))
			set_full(s, c->block);
		s->bat[c->block] = (uint32_t)(s->alloc_at / VHD_SECTOR);
		s->footer_off = s->alloc_at + span;
		s->allocated++;
		s->allocations++;
		alloc_unlock(c);
		break;
	default:
		c->result = -EIO;
		return 0;
	}
	/* The piece is done. */
	slot_release(c);
	c->pos += c->n;
	c->phase = PH_START;
	return 0;
}

/* Add an extent to req's answer, merged with the last when alike. */
static void add_extent(struct bks_req *req, uint64_t off, uint64_t len,
		       uint32_t flags, uint32_t depth)
{
	struct bks_extent *e =
	    req->nextents ? &req->extents[req->nextents - 1] : NULL;

	if (e && e->flags == flags && e->depth == depth &&
	    e->offset + e->length == off) {
		e->length += len;
		return;
	}
	e = &req->extents[req->nextents++];
	e->offset = off;
	e->length = len;
	e->flags = flags;
	e->depth = depth;
}

/* The parent's answer: its extents are already in c's request's array. */
static void status_done(struct bks_req *sub, int result)
{
	struct vhd_sub *p = sub->opaque;
	struct vhd_ctx *c = p->ctx;

	c->req->nextents = result == 0 ? sub->nextents : 0;
	bks_subreq_put(c->s->self, sub);
	bks_join_put(&c->join, result);
}

/* Ask the parent about [off, off + len): 1 (c waits) or -errno. */
static int status_parent(struct vhd_ctx *c, uint64_t off, uint64_t len)
{
	struct vhd_state *s = c->s;
	struct vhd_sub *p;
	struct bks_req *sub = sub_get(s, &p);

	if (!sub)
		return -EIO;
	p->ctx = c;
	p->slot = NULL;
	ctx_join(c, PH_STATUS_PARENT);
	sub->op = BKS_OP_BLOCK_STATUS;
	sub->offset = off;
	sub->len = len;
	sub->extents = c->req->extents;
	sub->extents_max = c->req->extents_max;
	sub->done = status_done;
	sub->opaque = p;
	bks_join_add(&c->join);
	bks_next_submit(bks_layer_child(s->self, BKS_CHILD_BACKING), sub);
	bks_join_put(&c->join, 0);
	return 1;
}

/*
 * Block status: extents from c->pos on.  Returns 1 when c waits, 0 when
 * the answer is complete (c->finished set by the caller).
 */
static int status_step(struct vhd_ctx *c)
{
	struct vhd_state *s = c->s;
	struct bks_req *req = c->req;

	if (c->phase == PH_STATUS_PARENT) {
		/* The parent's answer is ours, one level deeper. */
		for (uint32_t i = 0; i < req->nextents; i++) {
			if (req->extents[i].depth)
				req->extents[i].depth++;
		}
		c->pos = req->len;
		return 0;
	}
	while (c->pos < req->len && req->nextents < req->extents_max) {
		uint64_t off = req->offset + c->pos;
		uint32_t blk = (uint32_t)(off / s->bsize);
		uint64_t in_blk = off % s->bsize;
		uint64_t left = req->len - c->pos, len;

		if (s->bat[blk] == VHD_BAT_UNUSED) {
			uint32_t b = blk + 1;

			len = s->bsize - in_blk;
			while (len < left && b < s->nblocks &&
			       s->bat[b] == VHD_BAT_UNUSED) {
				len += s->bsize;
				b++;
			}
			if (len > left)
				len = left;
			if (is_diff(s)) {
				if (req->nextents)
					break;
				return status_parent(c, off, len);
			}
			add_extent(req, off, len,
				   BKS_EXTENT_HOLE | BKS_EXTENT_ZERO, 0);
			c->pos += len;
			continue;
		}
		if (is_full(s, blk)) {
			slot_release(c);
			len =
			    s->bsize - in_blk < left ? s->bsize - in_blk : left;
			add_extent(req, off, len, 0, 1);
			c->pos += len;
			continue;
		}
		if (!c->slot || c->slot->block != blk) {
			int r;

			slot_release(c);
			r = slot_acquire(c, blk, false);
			if (r < 0) {
				c->result = r;
				return 0;
			}
			if (r == 0)
				return 1;
		}
		{
			uint32_t first = (uint32_t)(in_blk / VHD_SECTOR);
			uint64_t blk_left = s->bsize - in_blk;
			uint64_t lim = blk_left < left ? blk_left : left;
			uint32_t endsec =
			    (uint32_t)((in_blk + lim + VHD_SECTOR - 1) /
				       VHD_SECTOR);
			bool set;
			uint32_t stop =
			    vhd_bitmap_run(c->slot->bm, first, endsec, &set);

			len = (uint64_t)stop * VHD_SECTOR - in_blk;
			if (len > lim)
				len = lim;
			if (set) {
				add_extent(req, off, len, 0, 1);
			} else if (is_diff(s)) {
				if (req->nextents)
					break;
				slot_release(c);
				return status_parent(c, off, len);
			} else {
				add_extent(req, off, len,
					   BKS_EXTENT_HOLE | BKS_EXTENT_ZERO,
					   0);
			}
			c->pos += len;
		}
	}
	slot_release(c);
	c->pos = req->len;
	return 0;
}

/* One pass over c's request; sets c->finished when it is done. */
static void ctx_step(struct vhd_ctx *c)
{
	struct bks_req *req = c->req;

	for (;;) {
		int r;

		if (c->result < 0 || c->pos >= req->len) {
			c->finished = true;
			return;
		}
		if (req->op == BKS_OP_BLOCK_STATUS) {
			r = status_step(c);
		} else if (req->op == BKS_OP_WRITE) {
			r = write_step(c);
		} else {
			if (c->phase == PH_READ_DONE)
				c->phase = PH_START;
			uint32_t blk =
			    (uint32_t)((req->offset + c->pos) / c->s->bsize);

			if (c->phase == PH_START && c->slot == NULL &&
			    c->s->bat[blk] != VHD_BAT_UNUSED &&
			    !is_full(c->s, blk)) {
				r = slot_acquire(c, blk, false);
				if (r < 0) {
					c->result = r;
					continue;
				}
				if (r == 0)
					return;
			}
			r = read_step(c);
		}
		if (r > 0)
			return;
	}
}

static void ctx_start(struct vhd_ctx *c, struct bks_req *req)
{
	c->req = req;
	c->pos = 0;
	c->n = 0;
	c->phase = PH_START;
	c->slot = NULL;
	c->result = 0;
	c->again = c->finished = c->alloc = c->alloc_done = false;
	c->next = NULL;
	if (req->op == BKS_OP_BLOCK_STATUS)
		req->nextents = 0;
}

/*
 * Run c's request as far as it goes now (a trampoline: a completion
 * inside the run only marks it to go again).  Finished requests are
 * completed here, and c takes the next waiting request.
 */
static void ctx_run(struct vhd_ctx *c)
{
	struct vhd_state *s = c->s;

	if (c->running) {
		c->again = true;
		return;
	}
	c->running = true;
	for (;;) {
		struct bks_req *req;
		int result;

		do {
			c->again = false;
			ctx_step(c);
		} while (c->again && !c->finished);
		if (!c->finished)
			break;
		req = c->req;
		result = c->result;
		if (c->alloc && !c->alloc_done)
			alloc_failed(c);
		slot_release(c);
		alloc_unlock(c);
		c->req = NULL;
		c->finished = false;
		if (s->wait_head) {
			struct bks_req *next = s->wait_head;

			s->wait_head = next->owner_next;
			if (!s->wait_head)
				s->wait_tail = NULL;
			ctx_start(c, next);
			c->running = false;
			bks_req_complete(req, result);
			if (c->running || c->req != next)
				return;
			/* Nobody ran c meanwhile: go on with next. */
			c->running = true;
			continue;
		}
		c->next = s->free_ctx;
		s->free_ctx = c;
		c->running = false;
		bks_req_complete(req, result);
		return;
	}
	c->running = false;
}

static int vhd_submit(struct vhd_state *s, struct bks_req *req)
{
	struct vhd_ctx *c = s->free_ctx;

	if (!c || s->wait_head) {
		req->owner_next = NULL;
		if (s->wait_tail)
			s->wait_tail->owner_next = req;
		else
			s->wait_head = req;
		s->wait_tail = req;
		s->ctx_waits++;
		return 0;
	}
	s->free_ctx = c->next;
	ctx_start(c, req);
	ctx_run(c);
	return 0;
}

/* ---- ops ----------------------------------------------------------------- */

static bool iov_aligned(const struct bks_req *req)
{
	uintptr_t bad = 0;

	for (int i = 0; i < req->iovcnt; i++)
		bad |= ((uintptr_t)req->iov[i].iov_base & (VHD_SECTOR - 1)) |
		       (req->iov[i].iov_len & (VHD_SECTOR - 1));
	return bad == 0;
}

static int vhd_rw(void *state, struct bks_layer *self, struct bks_req *req)
{
	struct vhd_state *s = state;

	(void)self;
	if (!iov_aligned(req))
		return -EINVAL;
	if (s->footer.disk_type == VHD_TYPE_FIXED)
		return bks_aioq_queue(s->q, s->img.fd, req);
	return vhd_submit(s, req);
}

static int vhd_flush(void *state, struct bks_layer *self, struct bks_req *req)
{
	struct vhd_state *s = state;

	(void)self;
	return bks_aioq_queue(s->q, s->img.fd, req);
}

static int vhd_block_status(void *state, struct bks_layer *self,
			    struct bks_req *req)
{
	struct vhd_state *s = state;

	(void)self;
	if (s->footer.disk_type == VHD_TYPE_FIXED) {
		req->extents[0].offset = req->offset;
		req->extents[0].length = req->len;
		req->extents[0].flags = 0;
		req->extents[0].depth = 1;
		req->nextents = 1;
		bks_req_complete(req, 0);
		return 0;
	}
	return vhd_submit(s, req);
}

static void vhd_stats(void *state, struct bks_layer *self,
		      struct bks_stats_out *out)
{
	struct vhd_state *s = state;

	(void)self;
	bks_stats_str(out, "type", vhd_type_name(s->footer.disk_type));
	bks_stats_u64(out, "blocks", s->nblocks);
	bks_stats_u64(out, "blocks_allocated", s->allocated);
	bks_stats_u64(out, "allocations", s->allocations);
	bks_stats_u64(out, "bitmap_reads", s->bitmap_reads);
	bks_stats_u64(out, "bitmap_writes", s->bitmap_writes);
	bks_stats_u64(out, "cache_hits", s->cache_hits);
	bks_stats_u64(out, "cache_misses", s->cache_misses);
	bks_stats_u64(out, "parent_reads", s->parent_reads);
	bks_stats_u64(out, "request_waits", s->ctx_waits);
}

#define VHD_DESC                                                               \
	{                                                                      \
		.name = "vhd", .kind = BKS_SINK, .args_path = true,            \
		.usage = VHD_USAGE                                             \
	}

const struct bks_driver_desc bks_desc_vhd = VHD_DESC;

const struct bks_driver bks_driver_vhd = {
    .desc = VHD_DESC,
    .state_size = sizeof(struct vhd_state),
    .subreq_max = VHD_SUBREQS,
    .subreq_data_size = sizeof(struct vhd_sub),
    .open = vhd_open,
    .close = vhd_close,
    .info = vhd_info,
    .read = vhd_rw,
    .write = vhd_rw,
    .flush = vhd_flush,
    .block_status = vhd_block_status,
    .get_parent = vhd_get_parent,
    .reopen_prepare = vhd_reopen_prepare,
    .reopen_commit = vhd_reopen_commit,
    .reopen_abort = vhd_reopen_abort,
    .set_backing = vhd_set_backing,
    .stats = vhd_stats,
};
