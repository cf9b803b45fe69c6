/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The VHD on-disk format (Microsoft "Virtual Hard Disk Image Format
 * Specification" 1.0), as pure functions on buffers: the vhd: sink, the
 * blkstack-img vhd format and the fuzzer share it.  Nothing here does I/O.
 *
 * Layout of the images this code reads and builds:
 *
 *   fixed:        data [0, size) | footer (512 bytes)
 *   dynamic and   footer copy (512) | dynamic header (1024) | BAT |
 *   differencing: parent locator data (differencing) | blocks | footer
 *
 * A block is its sector bitmap (one bit per 512-byte sector, MSB first,
 * rounded up to a whole sector) followed by block_size bytes of data.  BAT
 * entries are big-endian sector numbers of a block's bitmap, 0xFFFFFFFF
 * for an unallocated block.  All fields are big-endian.
 *
 * Every field read from an image is untrusted: the parse functions check
 * each one and refuse a bad image with -EINVAL and a message naming the
 * structure, the field and the value.  Their messages carry no file name:
 * the caller prepends it.
 *
 * The size limit: BAT entries are 32-bit sector numbers, so no image file
 * can exceed 2 TiB (2^32 sectors); the CHS geometry field reaches at most
 * 65535 * 16 * 255 sectors (about 127 GiB); beyond it the footer's current
 * size is what counts.  The specification's own limit is 2040 GiB
 * (VHD_MAX_SIZE), which leaves room below 2 TiB for the metadata.
 */
#ifndef BLKSTACK_VHD_FORMAT_H
#define BLKSTACK_VHD_FORMAT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "blkstack/error.h"

#define VHD_SECTOR	  512u
#define VHD_FOOTER_SIZE	  512u
#define VHD_HEADER_SIZE	  1024u
#define VHD_BAT_UNUSED	  0xFFFFFFFFu
#define VHD_LOCATORS	  8u
#define VHD_DEFAULT_BLOCK (2u << 20)
/* Block sizes accepted: powers of two from one sector to 256 MiB. */
#define VHD_MIN_BLOCK VHD_SECTOR
#define VHD_MAX_BLOCK (256u << 20)
/* The largest virtual size: 2040 GiB (the specification's limit). */
#define VHD_MAX_SIZE (2040ull << 30)
/* The largest CHS geometry: 65535 cylinders, 16 heads, 255 sectors. */
#define VHD_MAX_CHS_SECTORS (65535ull * 16 * 255)
/* Seconds from the Unix epoch to 2000-01-01 00:00:00 UTC. */
#define VHD_EPOCH_OFFSET 946684800ull
/* Longest parent locator payload accepted (bytes). */
#define VHD_LOCATOR_MAX 4096u
/* Parent unicode name: 256 UTF-16 code units. */
#define VHD_PARENT_NAME_BYTES 512u

enum vhd_disk_type {
	VHD_TYPE_FIXED = 2,
	VHD_TYPE_DYNAMIC = 3,
	VHD_TYPE_DIFF = 4,
};

/* Platform codes of parent locators. */
#define VHD_PLAT_NONE 0u
#define VHD_PLAT_WI2R 0x57693272u /* "Wi2r" deprecated */
#define VHD_PLAT_WI2K 0x5769326Bu /* "Wi2k" deprecated */
#define VHD_PLAT_W2RU 0x57327275u /* "W2ru": relative, UTF-16LE */
#define VHD_PLAT_W2KU 0x57326B75u /* "W2ku": absolute, UTF-16LE */
#define VHD_PLAT_MAC  0x4D616320u /* "Mac ": alias blob */
#define VHD_PLAT_MACX 0x4D616358u /* "MacX": UTF-8 file URL */

struct vhd_footer {
	uint32_t features;
	uint32_t version;
	uint64_t data_offset; /* the dynamic header; ~0 for fixed */
	uint32_t timestamp;   /* seconds since 2000-01-01 UTC */
	char creator_app[4];
	uint32_t creator_version;
	uint32_t creator_os;
	uint64_t original_size;
	uint64_t current_size;
	uint16_t cylinders;
	uint8_t heads;
	uint8_t sectors_per_track;
	uint32_t disk_type;
	uint32_t checksum;
	uint8_t uuid[16];
	uint8_t saved_state;
	/* Derived by vhd_footer_parse: the size served (see vhd_virtual_size).
	 */
	uint64_t virtual_size;
};

struct vhd_locator {
	uint32_t code;
	uint32_t space;	 /* as stored: sectors (spec) or bytes (some tools) */
	uint32_t length; /* bytes of data */
	uint64_t offset; /* bytes from the file start */
};

struct vhd_header {
	uint64_t data_offset;
	uint64_t table_offset;
	uint32_t version;
	uint32_t max_entries;
	uint32_t block_size;
	uint32_t checksum;
	uint8_t parent_uuid[16];
	uint32_t parent_timestamp;
	uint8_t parent_name[VHD_PARENT_NAME_BYTES]; /* UTF-16BE, as stored */
	struct vhd_locator loc[VHD_LOCATORS];
};

/* One's-complement sum of the bytes of buf except [skip, skip + 4). */
uint32_t vhd_checksum(const unsigned char *buf, size_t n, size_t skip);

/*
 * The CHS geometry of a disk of total_sectors, as the specification's
 * algorithm (appendix) computes it; the size it covers is c * h * s.
 */
void vhd_geometry(uint64_t total_sectors, uint16_t *c, uint8_t *h, uint8_t *s);

/*
 * The smallest size >= size (bytes) whose CHS geometry covers it exactly,
 * as qemu-img rounds: CHS-based readers and current_size-based readers
 * then agree.  Sizes beyond the CHS range (about 127 GiB) are rounded to
 * a sector.
 */
uint64_t vhd_round_size(uint64_t size);

/*
 * The size a reader serves: the footer's current_size, except for images
 * whose creator is known to size the disk by its CHS geometry (qemu's
 * "qemu", Virtual PC's "vpc ", and any creator not known to use
 * current_size), where it is cylinders * heads * sectors * 512 unless the
 * geometry is the largest one.  Creators known to use current_size:
 * "win " (Hyper-V), "qem2" (qemu-img with force_size), "d2v " (Disk2vhd),
 * "CTXS" (XenConverter), "tap\0" (tapdisk), and "bks " (blkstack).  This
 * is what qemu's vpc driver does, so qemu-img and blkstack agree.
 */
uint64_t vhd_virtual_size(const struct vhd_footer *f);

/*
 * Parse and check a 512-byte footer.  Checks the cookie, checksum,
 * version, disk type, data offset (fixed: ~0; dynamic/differencing:
 * sector-aligned, at least 512), sizes (the virtual size a non-zero
 * multiple of 512, at most VHD_MAX_SIZE).  Returns 0 or -EINVAL with err
 * naming the field and value.
 */
int vhd_footer_parse(const unsigned char *buf, struct vhd_footer *f,
		     struct bks_error *err);

/* Build a footer into buf (512 bytes), checksum included. */
void vhd_footer_build(unsigned char *buf, const struct vhd_footer *f);

/*
 * A new disk's footer: size bytes (not rounded here), type, now as its
 * timestamp, creator "bks ", a random version-4 UUID; data_offset 512
 * (the dynamic header right after the footer copy) or ~0 for a fixed
 * disk.  For bks_image_create() and blkstack-img create.
 */
void vhd_footer_new(struct vhd_footer *f, uint64_t size, uint32_t type);

/*
 * Parse and check a 1024-byte dynamic header of an image whose file is
 * file_size bytes and whose footer is f.  Checks the cookie, checksum,
 * version, block size (power of two, VHD_MIN_BLOCK..VHD_MAX_BLOCK), the
 * BAT (sector-aligned, inside the file before the footer, its
 * max_entries * block_size covering the virtual size and not more than
 * the 2 TiB a BAT can address), and every locator in use (inside the
 * file, length at most VHD_LOCATOR_MAX).  Returns 0 or -EINVAL.
 */
int vhd_header_parse(const unsigned char *buf, const struct vhd_footer *f,
		     uint64_t file_size, struct vhd_header *h,
		     struct bks_error *err);

/* Build a dynamic header into buf (1024 bytes), checksum included. */
void vhd_header_build(unsigned char *buf, const struct vhd_header *h);

/* Bytes of the BAT on disk: 4 per entry, rounded up to a sector. */
uint64_t vhd_bat_bytes(uint32_t max_entries);

/* Bytes of a block's sector bitmap: one bit a sector, whole sectors. */
uint32_t vhd_bitmap_bytes(uint32_t block_size);

/*
 * Check BAT entry index of value e (host order) of an image: unused, or a
 * block whose bitmap and data lie after the metadata (first_data, bytes)
 * and end at or before data_end (the footer's offset).  Returns 0 or
 * -EINVAL naming the entry and value.
 */
int vhd_bat_check(uint32_t index, uint32_t e, uint32_t block_size,
		  uint64_t first_data, uint64_t data_end,
		  struct bks_error *err);

/*
 * Whether a differencing disk's parent timestamp (recorded) fits its
 * parent: the specification calls it "the modification time stamp of the
 * parent"; writers record either the parent's footer timestamp (blkstack)
 * or the parent file's modification time (parent_mtime, Unix seconds, as
 * tapdisk's vhd-util does).  Either is accepted.
 */
bool vhd_parent_time_ok(uint32_t recorded, uint32_t parent_footer_ts,
			int64_t parent_mtime);

/* Test and set bit n of a sector bitmap (MSB first in each byte). */
static inline bool vhd_bit(const unsigned char *bm, uint32_t n)
{
	return bm[n >> 3] & (0x80u >> (n & 7));
}

static inline void vhd_set_bit(unsigned char *bm, uint32_t n)
{
	bm[n >> 3] |= (unsigned char)(0x80u >> (n & 7));
}

/*
 * The run of sectors from first (< end) with the same bit as first:
 * returns the sector after the run (at most end); *set says which.
 */
uint32_t vhd_bitmap_run(const unsigned char *bm, uint32_t first, uint32_t end,
			bool *set);

/*
 * Decode a parent locator's payload (len bytes of data of platform code)
 * into a NUL-terminated UTF-8 path in out (size bytes): W2ku/W2ru are
 * UTF-16LE, with backslashes turned into slashes and a drive letter
 * ("C:") dropped; MacX is a UTF-8 "file://" URL (percent-escapes
 * decoded).  Refuses other codes (-ENOTSUP), and malformed data, NUL
 * characters or an empty path (-EINVAL, with err).
 */
int vhd_locator_decode(uint32_t code, const unsigned char *data, size_t len,
		       char *out, size_t size, struct bks_error *err);

/*
 * Encode path (UTF-8) for a locator of code W2ku, W2ru (UTF-16LE) or MacX
 * (a "file://" URL, as tapdisk writes: absolute "file:///abs", relative
 * "file://./rel") into out (size bytes).  Returns the length in bytes,
 * or -ENAMETOOLONG / -EINVAL.
 */
int vhd_locator_encode(uint32_t code, const char *path, unsigned char *out,
		       size_t size);

/*
 * The parent unicode name (UTF-16BE, up to 256 units) as UTF-8 into out.
 * Returns 0 or -EINVAL (invalid UTF-16).
 */
int vhd_parent_name_decode(const uint8_t *name, char *out, size_t size);
/* Set the parent name field from UTF-8 (truncated at 256 units). */
int vhd_parent_name_encode(uint8_t *name, const char *utf8);

/* Name of a platform code ("W2ku", ...), or "?" for an unknown one. */
const char *vhd_plat_name(uint32_t code, char buf[5]);

/* "fixed", "dynamic", "differencing" or "unknown". */
const char *vhd_type_name(uint32_t type);

/* The UUID as 36 characters and a NUL. */
void vhd_uuid_str(const uint8_t uuid[16], char out[37]);

#endif /* BLKSTACK_VHD_FORMAT_H */
