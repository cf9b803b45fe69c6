/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * libFuzzer target for VHD images (make fuzz): the input is an image
 * file.  It goes through
 *   - the format's parsers (libblkstack/vhd-format.c): the footer at the
 *     end and its copy at the start, the dynamic header, every parent
 *     locator's data, the BAT entries and the bitmaps they point at;
 *   - the vhd: sink (libblkstack/drivers/vhd.c) on the input as a file in
 *     /dev/shm (tmpfs has O_DIRECT since Linux 6.6; where it has not,
 *     the open's refusal is all this part sees): open (its checks, the
 *     parents its locators name), reads, block status, two writes (an
 *     allocation on a dynamic or differencing image) read back, flush;
 *   - blkstack-img's vhd info and check, then check --repair and check
 *     again (helpers/img/img-vhd.c), on a memfd holding the input.
 * Properties beyond "no crash, no leak, no UB, no out-of-bounds access"
 * (ASan and UBSan are on):
 *   - every refusal is one line that says what was wrong;
 *   - check runs on anything (it reports, it does not fail), and after
 *     --repair the corruptions it says it fixed are gone.
 */
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/uio.h>
#include <unistd.h>

#include "blkstack/chain.h"
#include "blkstack/endian.h"
#include "blkstack/loop.h"
#include "blkstack/vhd-format.h"
#include "img.h"
#include "json.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void one_line(const struct bks_error *err)
{
	if (err->msg[0] == '\0' || strchr(err->msg, '\n'))
		abort();
}

/* The pure parsers on the input's bytes. */
static void parse(const uint8_t *data, size_t size)
{
	struct bks_error err = {0};
	struct vhd_footer f;
	struct vhd_header h;
	char path[VHD_LOCATOR_MAX * 2];

	if (size < VHD_FOOTER_SIZE)
		return;
	if (vhd_footer_parse(data + size - VHD_FOOTER_SIZE, &f, &err) < 0) {
		one_line(&err);
		if (vhd_footer_parse(data, &f, &err) < 0) {
			one_line(&err);
			return;
		}
	}
	if (f.disk_type == VHD_TYPE_FIXED || f.data_offset > size ||
	    size - f.data_offset < VHD_HEADER_SIZE)
		return;
	if (vhd_header_parse(data + f.data_offset, &f, size, &h, &err) < 0) {
		one_line(&err);
		return;
	}
	for (unsigned int i = 0; i < VHD_LOCATORS; i++) {
		const struct vhd_locator *l = &h.loc[i];

		if (l->code == VHD_PLAT_NONE)
			continue;
		/* parse checked it lies inside the file */
		if (vhd_locator_decode(l->code, data + l->offset, l->length,
				       path, sizeof(path), &err) < 0)
			one_line(&err);
	}
	vhd_parent_name_decode(h.parent_name, path, sizeof(path));
	for (uint32_t i = 0; i < h.max_entries; i++) {
		uint32_t e = bks_get_be32(data + h.table_offset + 4ull * i);
		uint32_t bm = vhd_bitmap_bytes(h.block_size);
		uint32_t sectors = h.block_size / VHD_SECTOR;
		bool set;

		if (vhd_bat_check(i, e, h.block_size, f.data_offset, size - 512,
				  &err) < 0) {
			one_line(&err);
			continue;
		}
		if (e == VHD_BAT_UNUSED || bm * 8 < sectors)
			continue;
		for (uint32_t s = 0; s < sectors;)
			s = vhd_bitmap_run(data + (uint64_t)e * VHD_SECTOR, s,
					   sectors, &set);
	}
}

/* ---- the vhd: sink on the input, as a file in /dev/shm ------------------ */

struct rig {
	struct bks_loop *loop;
	struct bks_chain *chain;
	int calls, result;
};

static void done(struct bks_req *req, int result)
{
	struct rig *r = req->opaque;

	r->calls++;
	r->result = result;
}

/* One request, run to its completion (bounded). */
static int io(struct rig *r, enum bks_op op, uint64_t off, void *buf,
	      uint64_t len)
{
	static struct bks_extent ext[8];
	struct iovec iov = {.iov_base = buf, .iov_len = len};
	struct bks_req req = {
	    .op = op,
	    .offset = off,
	    .len = len,
	    .iov = buf ? &iov : NULL,
	    .iovcnt = buf ? 1 : 0,
	    .done = done,
	    .opaque = r,
	    .extents = ext,
	    .extents_max = 8,
	};

	r->calls = 0;
	if (bks_chain_submit(r->chain, &req) != 0)
		abort();
	for (int i = 0; r->calls == 0; i++) {
		if (i > 10000 || bks_loop_run_once(r->loop, 1000) < 0)
			abort();
	}
	if (r->calls != 1)
		abort();
	return r->result;
}

/*
 * Open vhd: on the input (the driver's own checks at open, then parents
 * named by its locators, read-only), read a few spread ranges, ask block
 * status, write 4 KiB at the start and in the middle (allocation on a
 * dynamic or differencing image), read them back.
 */
static void sink(const uint8_t *data, size_t size)
{
	char path[64], chain[80];
	struct bks_error err = {0};
	unsigned char *buf = NULL;
	struct rig r = {0};
	uint64_t disk;
	int fd;

	snprintf(path, sizeof(path), "/dev/shm/fuzz-vhd.%d.vhd", (int)getpid());
	fd = open(path, O_CREAT | O_TRUNC | O_WRONLY | O_CLOEXEC, 0600);
	if (fd < 0)
		return;
	if (size && write(fd, data, size) != (ssize_t)size)
		abort();
	close(fd);
	snprintf(chain, sizeof(chain), "vhd:%s", path);
	if (bks_loop_new(&r.loop, &err) < 0)
		abort();
	if (bks_chain_open(&r.chain, chain, r.loop, false, &err) < 0) {
		one_line(&err);
		goto out;
	}
	if (posix_memalign((void **)&buf, 4096, 65536) != 0)
		abort();
	disk = bks_chain_info(r.chain)->size;
	for (uint64_t i = 0; i < 8; i++) {
		uint64_t off = disk / 8 * i / 512 * 512;
		uint64_t len = disk - off < 65536 ? disk - off : 65536;

		io(&r, BKS_OP_READ, off, buf, len);
		io(&r, BKS_OP_BLOCK_STATUS, off, NULL, disk - off);
	}
	memset(buf, 0xA5, 4096);
	if (disk >= 4096 && io(&r, BKS_OP_WRITE, 0, buf, 4096) == 0 &&
	    io(&r, BKS_OP_READ, 0, buf, 4096) == 0 && buf[4095] != 0xA5)
		abort();
	memset(buf, 0x5A, 4096);
	if (disk >= 8192 &&
	    io(&r, BKS_OP_WRITE, disk / 2 / 4096 * 4096, buf, 4096) == 0 &&
	    io(&r, BKS_OP_READ, disk / 2 / 4096 * 4096, buf, 4096) == 0 &&
	    buf[0] != 0x5A)
		abort();
	io(&r, BKS_OP_FLUSH, 0, NULL, 0);
	bks_chain_close(r.chain);
out:
	free(buf);
	bks_loop_free(r.loop);
	unlink(path);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static const char *path = "/fuzz/input.vhd";
	struct bks_error err = {0};
	struct img_check c, again;
	struct img_info info;
	struct json_writer j;
	FILE *null;
	int fd;

	parse(data, size);
	sink(data, size);
	fd = memfd_create("fuzz-vhd", MFD_CLOEXEC);
	if (fd < 0)
		abort();
	if (size && write(fd, data, size) != (ssize_t)size)
		abort();
	null = fopen("/dev/null", "w");
	if (!null)
		abort();
	json_writer_init(&j, 1 << 20);
	json_obj_begin(&j);
	if (img_format_vhd.info(fd, path, &info, &j, &err) < 0)
		one_line(&err);
	json_writer_free(&j);
	if (img_format_vhd.check(fd, path, false, null, &c, &err) < 0)
		one_line(&err);
	else if (img_format_vhd.check(fd, path, true, null, &c, &err) == 0 &&
		 img_format_vhd.check(fd, path, false, null, &again, &err) ==
		     0 &&
		 again.corruptions > c.corruptions - c.corruptions_fixed)
		abort();
	fclose(null);
	close(fd);
	return 0;
}
