/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Exports: the ways into a chain (NBD today, libblkstack/export/nbd/; a
 * Xen blkif ring later).  An export only translates its wire format to
 * struct bks_req and back: the chain does the rest (padding requests at
 * any byte, serialising overlapping writes, splitting, draining), so that
 * two exports of one chain behave alike and serialise against each other.
 *
 * An export is a const struct bks_export_ops (designated initialisers)
 * and its state, behind a struct bks_export handle that its constructor
 * (e.g. bks_nbd_export_new() in nbd-server.h) makes with
 * bks_export_init().  Programs drive every export the same way, with the
 * bks_export_*() functions below, and never reach into one:
 *
 *   new -> bks_export_start() -> [bks_export_hold() / _resume()]...
 *       -> bks_export_shutdown() -> done -> bks_export_free()
 *
 * Everything runs on the chain's loop and nothing blocks.
 */
#ifndef BLKSTACK_EXPORT_H
#define BLKSTACK_EXPORT_H

#include <stdbool.h>
#include <stdint.h>

#include "blkstack/chain.h"
#include "blkstack/error.h"

/*
 * Counters every export keeps (those that do not apply stay 0).  What the
 * chain counts -- requests in flight in it, requests a hold parked -- is
 * the chain's (bks_chain_get_stats()).
 */
struct bks_export_stats {
	uint64_t connections;	    /* clients connected now */
	uint64_t connections_total; /* accepted since start */
	uint64_t refused;	    /* turned away: the table was full */
	uint64_t evicted;	    /* idle, closed to make room */
	uint64_t timed_out;	    /* too slow to connect, or stuck */
	uint64_t dropped;	    /* disconnected for protocol errors */
	uint64_t requests;	    /* requests received */
	uint64_t errors;	    /* requests answered with an error */
	uint64_t bytes_read, bytes_written;
	uint64_t in_flight;    /* submitted to the chain, not completed */
	uint64_t buffer_bytes; /* data buffers held now */
};

struct bks_export_ops {
	/* Required.  The export's name ("nbd"), for messages. */
	const char *name;

	/*
	 * Required.  Start serving (listen, watch the ring).  Called once
	 * by bks_export_start(), after the constructor.  Returns 0, or
	 * -errno with err saying what failed.
	 */
	int (*start)(void *state, struct bks_error *err);

	/*
	 * Optional.  A hold has begun: the chain parks every request
	 * submitted from now on, and the export keeps receiving and
	 * submitting them as usual (they are answered after the hold).
	 * For an export with work of its own to stop meanwhile.  Called by
	 * bks_export_hold() after bks_chain_drain_begin().
	 */
	void (*hold)(void *state);

	/*
	 * Optional.  The hold has ended.  Called by bks_export_resume()
	 * before bks_chain_drain_end() resubmits the parked requests.
	 */
	void (*resume)(void *state);

	/*
	 * Required.  Shut down gracefully: stop accepting clients and
	 * reading requests, let the requests in the chain complete and their
	 * answers go out (bounded by the clients), close every client, then
	 * call done(arg) -- from the loop, or before returning.  Called by
	 * bks_export_shutdown(), after it has ended the export's holds (so
	 * nothing of the export stays parked); a second call only replaces
	 * done.
	 */
	void (*shutdown)(void *state, void (*done)(void *arg), void *arg);

	/*
	 * Optional.  Fill out (zeroed by the caller) with the export's
	 * counters.  Called by bks_export_get_stats().
	 */
	void (*stats)(void *state, struct bks_export_stats *out);

	/*
	 * Required.  Free the state and everything it holds; the handle
	 * goes with it.  Called by bks_export_free(), after shutdown's
	 * done, or without start.
	 */
	void (*free)(void *state);
};

/* The handle: filled by bks_export_init(); private to export.c. */
struct bks_export {
	const struct bks_export_ops *ops;
	void *state;
	struct bks_chain *chain;
	unsigned int holds; /* bks_export_hold()s not resumed */
	bool started, stopping;
};

/* For constructors: make exp the handle of state, serving chain. */
void bks_export_init(struct bks_export *exp, const struct bks_export_ops *ops,
		     void *state, struct bks_chain *chain);

/* Start serving.  Returns 0 or -errno with err set; -EALREADY if started. */
int bks_export_start(struct bks_export *exp, struct bks_error *err);

/*
 * Hold: drain the chain (bks_chain_drain_begin()): requests keep being
 * received, and the chain parks them; drained(arg) runs from the loop once
 * nothing is in flight in any layer.  Holds nest; each needs its
 * bks_export_resume().  Returns 0, -ESHUTDOWN once shutting down, or
 * bks_chain_drain_begin()'s -EBUSY.
 */
int bks_export_hold(struct bks_export *exp, void (*drained)(void *arg),
		    void *arg);

/* End one hold: the parked requests go on, in order.  Harmless if none. */
void bks_export_resume(struct bks_export *exp);

/* Holds of this export not resumed yet. */
unsigned int bks_export_holds(const struct bks_export *exp);

/*
 * Shut down gracefully (see the shutdown op): the export's holds end
 * first, so that what they parked is served.  done(arg) runs once all is
 * closed.  A second call only replaces done.
 */
void bks_export_shutdown(struct bks_export *exp, void (*done)(void *arg),
			 void *arg);

/* The export's counters. */
void bks_export_get_stats(const struct bks_export *exp,
			  struct bks_export_stats *out);

/* The export's name ("nbd"). */
const char *bks_export_name(const struct bks_export *exp);

/* Free the export (NULL is fine).  After shutdown's done, or unstarted. */
void bks_export_free(struct bks_export *exp);

#endif /* BLKSTACK_EXPORT_H */
