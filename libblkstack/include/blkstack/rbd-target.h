/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The args of the rbd: sink, parsed: which Ceph cluster, pool, image and
 * snapshot, as whom, and how long to wait for the cluster.
 *
 *   rbd:POOL/IMAGE[@SNAP][,id=CLIENT][,conf=PATH][,keyring=PATH]
 *       [,cluster=NAME][,timeout=SECONDS][,vm=VMPATH]
 *
 * POOL, IMAGE, SNAP and CLIENT are names: [A-Za-z0-9_.+-], not starting
 * with '.' or '-', POOL at most 127 bytes, IMAGE and SNAP at most 95
 * (librbd's RBD_MAX_IMAGE_NAME_SIZE less the NUL), CLIENT at most 63 (the
 * entity is "client.CLIENT"; default admin).  NAME (default ceph) is
 * [A-Za-z0-9_-], at most 31 bytes.  PATH is absolute, at most 1023 bytes
 * of [A-Za-z0-9_.+@:/-] (no '$': Ceph expands metavariables in paths;
 * no ','), and has no "." or ".." component; without conf= librados
 * reads its default search path (CEPH_CONF, /etc/ceph/NAME.conf, ...).
 * timeout= (1..600, default 20) bounds connecting (client_mount_timeout),
 * every mon command (rados_mon_op_timeout) and every OSD op
 * (rados_osd_op_timeout).  vm= names the VM a read-write open claims
 * the image for (rbd.c, "Claims"): VMPATH is '/' and then at most
 * BKS_RBD_VM_MAX - 1 bytes of [A-Za-z0-9_/-] with no empty component
 * ("/vm/UUID", as libxl's /local/domain/N/vm); the hotplug helper adds it
 * from the domain, never from the disk's params.  Every option at most
 * once.
 *
 * Parsing needs no librbd: bks_chain_parse() (the parse-only table) runs
 * it through the driver's check.
 */
#ifndef BLKSTACK_RBD_TARGET_H
#define BLKSTACK_RBD_TARGET_H

#include <stdbool.h>

#include "blkstack/driver.h"
#include "blkstack/error.h"

/* Longest names and paths, NUL excluded. */
#define BKS_RBD_POOL_MAX    127
#define BKS_RBD_IMAGE_MAX   95
#define BKS_RBD_ID_MAX	    63
#define BKS_RBD_CLUSTER_MAX 31
#define BKS_RBD_PATH_MAX    1023
#define BKS_RBD_VM_MAX	    128

/* timeout=, in seconds. */
#define BKS_RBD_TIMEOUT_DEFAULT 20
#define BKS_RBD_TIMEOUT_MAX	600

struct bks_rbd_target {
	char pool[BKS_RBD_POOL_MAX + 1];
	char image[BKS_RBD_IMAGE_MAX + 1];
	char snap[BKS_RBD_IMAGE_MAX + 1];      /* "": the image itself */
	char id[BKS_RBD_ID_MAX + 1];	       /* "admin" unless id= */
	char conf[BKS_RBD_PATH_MAX + 1];       /* "": librados' default */
	char keyring[BKS_RBD_PATH_MAX + 1];    /* "": the conf's keyring */
	char cluster[BKS_RBD_CLUSTER_MAX + 1]; /* "ceph" unless cluster= */
	unsigned int timeout_s;
	char vm[BKS_RBD_VM_MAX + 1]; /* "": no VM named */
	/* "POOL/IMAGE[@SNAP]" for messages (sanitised when refused). */
	char name[BKS_RBD_POOL_MAX + 2 * BKS_RBD_IMAGE_MAX + 3];
};

/* The rbd: sink's usage line. */
#define BKS_RBD_USAGE                                                          \
	"rbd:POOL/IMAGE[@SNAP][,id=CLIENT][,conf=PATH][,keyring=PATH]"         \
	"[,cluster=NAME][,timeout=SECONDS][,vm=VMPATH]"

/*
 * Parse args (untrusted text) into *t.  Returns 0, or -EINVAL with err
 * saying what is wrong, naming the part or the option.
 */
int bks_rbd_target_parse(const char *args, struct bks_rbd_target *t,
			 struct bks_error *err);

/*
 * The rbd: desc's check (struct bks_driver_desc): bks_rbd_target_parse()
 * into a scratch target.  Returns 0 or -EINVAL with err set.
 */
int bks_rbd_target_check(const char *args, struct bks_error *err);

/*
 * What parsing needs of rbd: (driver.h), in the library: the data path is
 * the module drivers/rbd.c (driver-module.h), whose driver starts with
 * the same desc.
 */
#define BKS_RBD_DESC                                                           \
	{                                                                      \
		.name = "rbd", .kind = BKS_SINK, .usage = BKS_RBD_USAGE,       \
		.check = bks_rbd_target_check, .module = true                  \
	}

#endif /* BLKSTACK_RBD_TARGET_H */
