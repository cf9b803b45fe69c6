/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * libFuzzer target for VHD images (make fuzz): the input is an image
 * file.  It goes through
 *   - the format's parsers (libblkstack/vhd-format.c): the footer at the
 *     end and its copy at the start, the dynamic header, every parent
 *     locator's data, the BAT entries and the bitmaps they point at;
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
#include <unistd.h>

#include "blkstack/endian.h"
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
