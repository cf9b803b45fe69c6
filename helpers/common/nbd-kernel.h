/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The kernel NBD client (/dev/nbdN) over generic netlink, for every
 * program that needs it: the hotplug helper makes and undoes devices
 * (helpers/hotplug/dev-nbd-kernel.c wraps these), the supervisor
 * reconnects them to a restarted worker or fails them when it gives up.
 * Linked with NL_LIBS (libnl-genl-3); see docs/architecture.txt, "Kernel
 * NBD", for what each kernel version does.
 *
 * Every device blkstack makes carries the backend identifier
 * NBD_KERNEL_BACKEND_PREFIX + the worker's NBD socket path
 * (/sys/block/nbdN/backend, kernels >= 5.14).  That is how a device is
 * found again, from any process, and the kernel refuses a reconnect that
 * names another identifier: a reconnect can never attach another image.
 */
#ifndef BLKSTACK_NBD_KERNEL_H
#define BLKSTACK_NBD_KERNEL_H

#include <stdbool.h>
#include <stddef.h>

#include "blkstack/error.h"

/* The backend identifier of a device blkstack made: this, then the socket. */
#define NBD_KERNEL_BACKEND_PREFIX "blkstack:"

/* Defaults of the configuration keys below. */
#define NBD_KERNEL_RECONNECT_TIMEOUT_DEFAULT 60
#define NBD_KERNEL_IO_TIMEOUT_DEFAULT	     5
/* Largest value either key takes, in seconds (a day). */
#define NBD_KERNEL_TIMEOUT_MAX 86400

/*
 * The kernel NBD keys of /etc/blkstack.conf:
 *   reconnect-timeout = SECONDS  (default 60; 0: no wait, I/O fails at
 *       once when the worker dies) the device's dead-connection timeout:
 *       how long I/O waits for a restarted worker to be reconnected.
 *   nbd-io-timeout = SECONDS  (default 5, at least 1) the request timer
 *       period (/sys/block/nbdN/queue/io_timeout).  With no request
 *       timeout (blkstack never sets one: a paused worker may hold
 *       requests for as long as a migration takes) the timer only looks:
 *       a request in flight on a connection that has since been replaced
 *       is re-sent, any other is left alone (the kernel logs "Possible
 *       stuck request" once a period for it).  So this is the longest a
 *       request in flight at a crash waits after the reconnect.
 */
struct nbd_kernel_conf {
	unsigned int reconnect_timeout_s;
	unsigned int io_timeout_s;
};

/*
 * Fill *conf from the text of a configuration file (name for messages):
 * the defaults, then the keys above where present.  A value that is not a
 * decimal number in range (reconnect-timeout 0..NBD_KERNEL_TIMEOUT_MAX,
 * nbd-io-timeout 1..NBD_KERNEL_TIMEOUT_MAX) is an error (-EINVAL, naming
 * name:line).  Pure; for tests too.
 */
int nbd_kernel_conf_parse(const char *text, const char *name,
			  struct nbd_kernel_conf *conf, struct bks_error *err);

/* nbd_kernel_conf_parse() of conf_read()'s file (a missing file: defaults). */
int nbd_kernel_conf_read(struct nbd_kernel_conf *conf, struct bks_error *err);

/*
 * Make a device on the worker's NBD socket nbd_sock: the NBD handshake
 * (nbd-client.h), then NBD_CMD_CONNECT with the socket, the export's size
 * and flags (read-only if ro), no request timeout, conf's dead-connection
 * timeout and the backend identifier; then the request timer period
 * (conf->io_timeout_s; a kernel without queue/io_timeout keeps its 30 s).
 * *index gets N of /dev/nbdN.  On failure, a device the kernel made is
 * disconnected again.  Returns 0 or -errno with err set.  Called by the
 * hotplug helper's attach.
 */
int nbd_kernel_connect(const char *nbd_sock, bool ro,
		       const struct nbd_kernel_conf *conf, unsigned int *index,
		       struct bks_error *err);

/*
 * NBD_CMD_DISCONNECT of /dev/nbd<index>: requests in flight and I/O
 * queued waiting for a reconnect fail at once (kernels >= 5.18 wake the
 * waiters; older ones let them wait out the dead-connection timeout,
 * docs/architecture.txt).  No flush: the caller flushes first if it wants
 * to.  A device that is not connected is success.  Returns 0 or -errno.
 */
int nbd_kernel_disconnect(unsigned int index, struct bks_error *err);

/* Is /dev/nbd<index> connected (configured: /sys/block/nbdN/pid exists)? */
bool nbd_kernel_connected(unsigned int index);

/*
 * The backend identifier of /dev/nbd<index> into buf, without the
 * newline.  Returns 0, -ENOENT (no such device, not connected, or a
 * kernel older than 5.14), -ENAMETOOLONG if it does not fit, or -errno.
 */
int nbd_kernel_backend(unsigned int index, char *buf, size_t size);

/*
 * Is /dev/nbd<index> connected with blkstack's backend identifier for
 * nbd_sock?  Never fails: no means no (a kernel without backend
 * identifiers says no).
 */
bool nbd_kernel_serves(unsigned int index, const char *nbd_sock);

/*
 * Reconnect /dev/nbd<index> to nbd_sock if its connection is dead: a new
 * connection, the NBD handshake, NBD_CMD_RECONFIGURE with NBD_ATTR_INDEX,
 * the socket and NBD_ATTR_BACKEND_IDENTIFIER.  A device whose connection
 * is alive keeps it and drops the new socket (the kernel answers success
 * either way; whether it took the socket is learnt from the socket
 * itself), and *reconnected says which.  I/O queued for the reconnect
 * resumes at once; requests in flight at the crash are re-sent within
 * nbd-io-timeout.  Returns 0 or -errno (-EINVAL: the kernel refused,
 * e.g. another backend identifier).
 */
int nbd_kernel_reconnect(unsigned int index, const char *nbd_sock,
			 bool *reconnected, struct bks_error *err);

/*
 * Reconnect every /dev/nbdN whose backend identifier is
 * "blkstack:<nbd_sock>" and whose connection is dead, as
 * nbd_kernel_reconnect() does; devices whose connection is alive are left
 * alone.  *reconnected counts the devices reconnected.  Without the nbd
 * module (no /sys/block/nbd*) or with no such device, 0 having found
 * nothing; netlink is only opened for a device that matched (so -ENODEV,
 * no "nbd" generic netlink family, cannot come from a host without the
 * module).  Tries every device and returns the first failure.  Called by
 * the supervisor after each restart of the worker, and by
 * `blkstack-ctl reconnect` after a manual one.
 */
int nbd_kernel_reconnect_all(const char *nbd_sock, unsigned int *reconnected,
			     struct bks_error *err);

/*
 * Give-up: disconnect every such device, so that I/O
 * queued for a reconnect fails now instead of at the dead-connection
 * timeout.  0 when there is none (no module: none).  Tries every device,
 * returns the first failure.  Called by the supervisor when it gives up.
 */
int nbd_kernel_fail_all(const char *nbd_sock, struct bks_error *err);

#endif /* BLKSTACK_NBD_KERNEL_H */
