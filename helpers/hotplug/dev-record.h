/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * What the device record's rules (dev-record.c) share with the other
 * dev-*.c files: the device numbers and limits a record may hold, and the
 * checks on what goes into one.  Internal to hp-dev; the record itself
 * (hp_dev_format, hp_dev_parse) is in hp-dev.h.
 */
#ifndef BLKSTACK_DEV_RECORD_H
#define BLKSTACK_DEV_RECORD_H

#include <stdbool.h>

/* The block majors of loop and kernel NBD devices. */
#define HP_DEV_LOOP_MAJOR 7
#define HP_DEV_NBD_MAJOR  43
/* Largest Linux pid. */
#define HP_DEV_PID_MAX 4194304

/* Is s a path we may write into the record (no whitespace, no controls)? */
bool hp_dev_record_safe(const char *s);

/* Is [v, ve) one plain path component of [A-Za-z0-9._-], no leading '.'? */
bool hp_dev_component_ok(const char *v, const char *ve);

/* A device node's name: "/dev/loop12" -> "loop12" (as in /sys/block). */
const char *hp_dev_node_name(const char *path);

#endif /* BLKSTACK_DEV_RECORD_H */
