/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The args of the nbd: sink, parsed: which NBD server, which export, and
 * how to behave when the connection is lost.
 *
 *   nbd:URI[,retry=SECONDS][,connect-timeout=SECONDS][,reconnect-flush=fail|trust]
 *
 * URI (the NBD URI form, a strict subset of it):
 *   nbd://HOST[:PORT][/EXPORT]          TCP; PORT defaults to 10809
 *   nbds://HOST[:PORT][/EXPORT][?tls-certificates=DIR]       TLS over TCP
 *   nbd+unix:///[EXPORT]?socket=PATH    a Unix socket
 *   nbds+unix:///[EXPORT]?socket=PATH[&tls-certificates=DIR] TLS over it
 * HOST is a host name or IPv4 address ([A-Za-z0-9.-]) or an IPv6 address
 * in brackets.  EXPORT is percent-decoded and may be empty (the server's
 * default export).  PATH and DIR are absolute, percent-decoded, and hold
 * no "..", no control character and no ','.  Nothing else is accepted:
 * no user info, no fragment, no other query parameter, no ',' inside the
 * URI (a ',' starts the options).
 *
 * Parsing needs no libnbd: bks_chain_parse() (the parse-only table) runs
 * it through the driver's check.
 */
#ifndef BLKSTACK_NBD_TARGET_H
#define BLKSTACK_NBD_TARGET_H

#include <stdbool.h>
#include <stdint.h>

#include "blkstack/driver.h"
#include "blkstack/error.h"

/* NBD's longest export name (the protocol's limit), NUL excluded. */
#define BKS_NBD_EXPORT_MAX 4096
/* A Unix socket path (sun_path), NUL included. */
#define BKS_NBD_SOCKET_MAX 108
#define BKS_NBD_HOST_MAX   256
#define BKS_NBD_DIR_MAX	   1024

/* Defaults and limits of the options, in seconds. */
#define BKS_NBD_RETRY_DEFAULT	60
#define BKS_NBD_RETRY_MAX	3600
#define BKS_NBD_CONNECT_DEFAULT 10
#define BKS_NBD_CONNECT_MAX	600

enum bks_nbd_transport {
	BKS_NBD_TCP,
	BKS_NBD_UNIX,
};

struct bks_nbd_target {
	enum bks_nbd_transport transport;
	bool tls;				/* nbds: TLS required */
	char host[BKS_NBD_HOST_MAX];		/* TCP: without brackets */
	char port[6];				/* TCP: decimal, 1..65535 */
	char socket[BKS_NBD_SOCKET_MAX];	/* Unix */
	char export[BKS_NBD_EXPORT_MAX + 1];	/* decoded, may be "" */
	char tls_certificates[BKS_NBD_DIR_MAX]; /* "" for the default */
	/*
	 * How long requests wait for a lost connection to come back before
	 * they fail with EIO (0: fail them at once); the sink reconnects in
	 * the background either way.
	 */
	unsigned int retry_s;
	/* How long one connection attempt may take (the handshake too). */
	unsigned int connect_timeout_s;
	/*
	 * After a reconnection, writes that the old connection acknowledged
	 * but no flush covered may have been lost with the server: false
	 * (fail, the default): the next flush fails with EIO, once, so the
	 * guest learns it; true (trust): the server keeps acknowledged
	 * writes across its own restart (e.g. it writes through to stable
	 * storage), and the flush is sent as usual.
	 */
	bool trust_reconnect_flush;
	/* The URI as given (for messages), sanitised, NUL-terminated. */
	char uri[512];
};

/* The nbd: sink's usage line. */
#define BKS_NBD_USAGE                                                          \
	"nbd:URI[,retry=SECONDS][,connect-timeout=SECONDS]"                    \
	"[,reconnect-flush=fail|trust] (URI: nbd://HOST[:PORT][/EXPORT], "     \
	"nbd+unix:///[EXPORT]?socket=PATH, nbds:... for TLS)"

/*
 * Parse args (untrusted text) into *t.  Returns 0, or -EINVAL with err
 * saying what is wrong, naming the part of the URI or the option.
 */
int bks_nbd_target_parse(const char *args, struct bks_nbd_target *t,
			 struct bks_error *err);

/*
 * The nbd: desc's check (struct bks_driver_desc): bks_nbd_target_parse()
 * into a scratch target.  Returns 0 or -EINVAL with err set.
 */
int bks_nbd_target_check(const char *args, struct bks_error *err);

/*
 * What parsing needs of nbd: (driver.h), in the library: the data path is
 * the module drivers/nbd.c (driver-module.h), whose driver starts with
 * the same desc.
 */
#define BKS_NBD_DESC                                                           \
	{                                                                      \
		.name = "nbd", .kind = BKS_SINK, .usage = BKS_NBD_USAGE,       \
		.check = bks_nbd_target_check, .module = true                  \
	}

#endif /* BLKSTACK_NBD_TARGET_H */
