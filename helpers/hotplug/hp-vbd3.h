/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The chain of a vbd3 disk (libxl's backendtype=tap), from the backend's
 * params.  Pure: no I/O, so that the unit tests can drive it.
 * docs/libxl-hotplug-interface.txt, section 11.
 */
#ifndef BLKSTACK_HP_VBD3_H
#define BLKSTACK_HP_VBD3_H

#include "blkstack/error.h"

/*
 * libxl 4.20 writes a vbd3 backend's params as FORMAT:TARGET, FORMAT "aio"
 * (format=raw) or "vhd" (format=vhd), TARGET the disk spec's target
 * verbatim.  A TARGET that starts with a driver name and ':' (as the chain
 * parser spells one: [a-z0-9-]+) is a blkstack chain and is the disk's
 * chain as it is; any other TARGET is a path, served as "aio:TARGET" or
 * "vhd:TARGET" by FORMAT.  *chain gets a malloc'd string (the caller frees
 * it and still parses it: nothing here checks the chain itself).  Returns
 * 0, or -EINVAL (an unknown FORMAT, an empty TARGET), -ENOMEM, with err
 * set.
 */
int hp_vbd3_chain(const char *params, char **chain, struct bks_error *err);

#endif /* BLKSTACK_HP_VBD3_H */
