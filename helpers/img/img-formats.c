/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* blkstack-img: the table of formats (img.h). */
#include <string.h>

#include "img.h"

/*
 * In probe order: every format with a magic first, raw (which takes
 * anything) last.
 */
const struct img_format *const img_formats[] = {
    &img_format_qcow2,
    &img_format_vhd,
    &img_format_raw,
    NULL,
};

const struct img_format *img_format_find(const char *name)
{
	for (size_t i = 0; img_formats[i]; i++)
		if (strcmp(img_formats[i]->name, name) == 0)
			return img_formats[i];
	return NULL;
}
