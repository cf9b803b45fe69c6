/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Shared only inside libblkstack/export/nbd/: the NBD export's state and
 * what its files offer each other.  See include/blkstack/nbd-server.h
 * for what the export does, and the NBD protocol document (doc/proto.md
 * of the NetworkBlockDevice/nbd project) for the wire format.
 *
 * The files, by protocol phase (as nbdkit's server/protocol-*.c):
 *
 *   conn.c          a connection's state shared by the phases: its slots
 *                   and their buffers under the memory budgets, whether
 *                   it may read or parse, closing it.  Calls no other
 *                   file of the folder.
 *   handshake.c     fixed newstyle negotiation: the greeting, the
 *                   client's flags, the options (NBD_OPT_*).
 *   transmission.c  requests (NBD_CMD_*): checks, their bks_req to the
 *                   chain, simple and structured replies, block status.
 *   server.c        listening and accepting, the connection table and its
 *                   limits (eviction, handshake deadline, stall check),
 *                   receiving and sending, the public functions.
 *
 * Calls go one way: server.c uses handshake.c, transmission.c and conn.c;
 * handshake.c and transmission.c use conn.c.
 *
 * Shape of the code:
 *
 *   - One struct nbd_conn per client.  It owns an input buffer (the
 *     handshake, request headers and small payloads are parsed from it),
 *     an output buffer for handshake replies, and max_in_flight slots.
 *   - A slot carries one transmission request from its header to the
 *     last byte of its reply: its struct bks_req (from the connection's
 *     pool), its data buffer (4096-aligned for O_DIRECT, grown once to the
 *     largest size seen and reused), and its encoded reply header.  When
 *     every slot is in use the connection stops reading its socket: that
 *     is the per-connection in-flight limit.
 *   - Memory is bounded per connection and for the server (the budgets in
 *     nbd-server.h): a request whose buffer would pass a budget waits,
 *     with the connection not reading, until buffers come back -- its
 *     own (a slot released) or anyone's (the server's "budget" list of
 *     waiting connections, kicked when a slot is released).  Idle cached
 *     buffers are freed to make room, ours first.  A connection with more
 *     than BKS_NBD_CONN_OUT_HIGH bytes of replies queued reads no request.
 *   - Connection limits: the handshake deadline and the stall check share
 *     the connection's timer; a full table evicts an idle connection
 *     (srv_make_room() and evict_before() in server.c say which, and why).
 *   - Requests go to the chain at the bytes the client named: the chain
 *     pads those with partial blocks (libblkstack/chain-pad.c) and
 *     serialises overlapping writes across every export.  A slot's data
 *     sits bks_chain_buf_skew() bytes into its aligned buffer, so that
 *     the chain's whole blocks are aligned in memory.
 *   - Replies are queued per connection in completion order (matched by
 *     cookie, as the protocol allows) and written with non-blocking
 *     sendmsg(); EPOLLOUT is watched only while output is pending.
 *   - Completions can arrive inside bks_chain_submit() (ram:, error:), so
 *     nothing that completes a request closes or frees a connection:
 *     that is done from the connection's deferred call, at the top of the
 *     loop.  A connection whose client vanished stays allocated until its
 *     last request in the chain completes (into nothing).
 *
 * Every client is untrusted: every length is checked before it is used,
 * and a client that breaks the protocol is disconnected alone.
 */
#ifndef BLKSTACK_EXPORT_NBD_INTERNAL_H
#define BLKSTACK_EXPORT_NBD_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <sys/uio.h>

#include "blkstack/chain.h"
#include "blkstack/export.h"
#include "blkstack/nbd-proto.h"
#include "blkstack/nbd-server.h"

/* Defaults and limits of struct bks_nbd_config. */
#define NBD_DEFAULT_MAX_CONNECTIONS 16u
#define NBD_DEFAULT_MAX_IN_FLIGHT   64u
#define NBD_MAX_IN_FLIGHT_LIMIT	    1024u
/* Longest export name or description we serve (the protocol's limit). */
#define NBD_STRING_MAX 4096u
/* Longest option data read; longer options get NBD_REP_ERR_TOO_BIG. */
#define NBD_OPT_MAX (64u << 10)
/* The input buffer holds a whole option, so that it parses in place. */
#define NBD_INBUF_SIZE (NBD_OPTION_HDR_SIZE + NBD_OPT_MAX)
/* Payloads at least this long are read straight into the slot buffer. */
#define NBD_DIRECT_READ_MIN (64u << 10)
/* Data buffers: aligned for O_DIRECT, sized in steps of this. */
#define NBD_BUF_ALIGN 4096u
#define NBD_BUF_STEP  (64u << 10)
/* Descriptors in one NBD_CMD_BLOCK_STATUS reply. */
#define NBD_MAX_EXTENTS 64u
/* Longest message in a structured error reply. */
#define NBD_ERRMSG_MAX 96u
/* One block status chunk: header, context id, descriptors. */
#define NBD_BS_CHUNK_MAX (NBD_STRUCTURED_HDR_SIZE + 4 + 8 * NBD_MAX_EXTENTS)
/*
 * The largest reply header a slot encodes: block status, one chunk per
 * context the client set (base:allocation, qemu:allocation-depth).
 */
#define NBD_REPLY_MAX (2 * NBD_BS_CHUNK_MAX)
/* Iovecs per sendmsg(). */
#define NBD_SEND_IOV 64
/* recv() calls per readable event, so that one client cannot starve. */
#define NBD_READS_PER_EVENT 16
/* accept() calls per readable event of the listening socket. */
#define NBD_ACCEPTS_PER_EVENT 16
/*
 * The metadata contexts and their ids (any distinct values will do).
 * base:allocation: the NBD spec's hole and zero flags.
 * qemu:allocation-depth (qemu's docs/interop/nbd.txt): each extent's
 * whole 32-bit status is the depth in the backing chain of the image
 * that holds it -- 0 none (reads as zeroes), 1 the sink itself, 2 its
 * parent, ... (struct bks_extent.depth).
 */
#define NBD_CTX_BASE_ALLOCATION	 1u
#define NBD_CTX_ALLOCATION_DEPTH 2u
/* Bits of nbd_conn.meta: the contexts the client set. */
enum {
	NBD_META_ALLOCATION = 1u << 0,
	NBD_META_DEPTH = 1u << 1,
};

#define NS_PER_SEC 1000000000ull
#define NS_PER_MS  1000000ull
/* Shutdown waits this long for clients to take their replies. */
#define NBD_SHUTDOWN_TIMEOUT_NS (10 * NS_PER_SEC)
/*
 * A client with replies waiting that has taken no byte of them for this
 * long may be evicted for a newcomer (see conn_not_reading()).
 */
#define NBD_STUCK_EVICT_NS (2 * NS_PER_SEC)
/*
 * Most connections of one process (SO_PEERCRED); its next evicts one of
 * its own (srv_make_room()).  Half the default table, and twice what a
 * multi-conn client (nbdfuse: 4) opens.
 */
#define NBD_PER_PROCESS_MAX 8u
/* After accept() ran out of file descriptors or memory, wait this long. */
#define NBD_ACCEPT_RETRY_NS (100 * 1000000ull)

/* ---- intrusive lists ----------------------------------------------------- */

struct nbd_link {
	struct nbd_link *prev, *next;
};

static inline void link_init(struct nbd_link *l)
{
	l->prev = l->next = l;
}

static inline bool link_empty(const struct nbd_link *head)
{
	return head->next == head;
}

static inline void link_add_tail(struct nbd_link *head, struct nbd_link *l)
{
	l->prev = head->prev;
	l->next = head;
	head->prev->next = l;
	head->prev = l;
}

static inline void link_add_head(struct nbd_link *head, struct nbd_link *l)
{
	l->next = head->next;
	l->prev = head;
	head->next->prev = l;
	head->next = l;
}

/* Unlink l; it is left pointing at itself, so a second del is harmless. */
static inline void link_del(struct nbd_link *l)
{
	l->prev->next = l->next;
	l->next->prev = l->prev;
	link_init(l);
}

#define link_entry(ptr, type, member)                                          \
	((type *)(void *)((char *)(ptr)-offsetof(type, member)))

/* ---- state --------------------------------------------------------------- */

enum slot_state {
	SLOT_FREE,  /* on the connection's free list */
	SLOT_RECV,  /* receiving a write payload (the connection's rx) */
	SLOT_BUSY,  /* in the chain */
	SLOT_REPLY, /* on the connection's output queue */
};

struct nbd_conn;

struct nbd_slot {
	struct nbd_conn *conn;
	enum slot_state state;
	struct nbd_link link; /* the connection's free list or output queue */

	/* The request, as the client sent it. */
	uint16_t cmd, flags;
	uint64_t cookie, offset;
	uint32_t len;

	/*
	 * What the chain sees: op at [offset, offset + len), then a flush
	 * for a trim with FUA (the chain's discard takes no flag).
	 */
	enum bks_op op;
	bool then_flush, flushing;
	uint32_t nextents; /* block status: the chain's answer, in buf */
	size_t skew;	   /* the data starts this far into buf */
	uint32_t rx_done;  /* write payload received so far */

	unsigned char *buf; /* data, 4096-aligned; grown, never shrunk */
	size_t bufsize;
	struct bks_req *req; /* while busy */
	struct iovec iov;

	/* The reply: rep[0, rep_len), then data[0, data_len). */
	unsigned char rep[NBD_REPLY_MAX];
	size_t rep_len;
	const unsigned char *data;
	size_t data_len;
	size_t sent;
};

enum conn_phase {
	PH_CLIENT_FLAGS, /* greeting sent, waiting for the client's flags */
	PH_OPTIONS,	 /* option haggling */
	PH_TRANSMISSION,
};

struct nbd_conn {
	struct bks_nbd_server *srv;
	struct nbd_link link; /* the server's connections */
	int fd;
	struct bks_watch watch;
	uint32_t events; /* what the watch asks for now */
	struct bks_defer defer;
	struct bks_timer timer; /* handshake deadline, then stall check */
	enum conn_phase phase;

	bool dead;	       /* socket closed; freed once busy is 0 */
	bool eof;	       /* the client closed its side */
	bool disc;	       /* NBD_CMD_DISC received */
	bool stalled;	       /* no slot or buffer for the next request */
	bool budget_wait;      /* stalled on the server's buffer budget */
	bool stall_armed;      /* the timer is the stall check */
	struct nbd_link blink; /* the server's budget list, while so */
	pid_t peer_pid;	       /* SO_PEERCRED at accept, 0 if unknown */
	uint64_t seq;	       /* accept order: seniority */
	uint64_t progress_ns;  /* last byte in or out, or start of a wait */
	uint64_t nrequests;    /* transmission requests received */
	size_t out_bytes;      /* reply bytes queued, not yet sent */
	bool close_after_send; /* NBD_OPT_ABORT answered */
	bool no_zeroes, structured;
	unsigned int meta; /* NBD_META_*: the contexts set, 0 none */
	uint16_t tflags;

	/* Input: [inoff, inlen) of inbuf is received and not parsed yet. */
	unsigned char *inbuf;
	size_t inoff, inlen;
	uint64_t skip;	     /* input bytes to discard */
	struct nbd_slot *rx; /* receiving a write payload */

	/* Handshake output: [outoff, outlen) of outbuf is still to send. */
	unsigned char *outbuf;
	size_t outoff, outlen, outcap;

	struct nbd_slot *slots;
	unsigned int nslots, nused, busy;
	struct nbd_link free;
	struct nbd_link outq;
	struct bks_req_pool pool;
	size_t buf_total; /* bytes in slot buffers */
};

struct bks_nbd_server {
	struct bks_loop *loop;
	struct bks_chain *chain;
	int listen_fd;
	struct bks_watch lwatch;
	struct bks_timer accept_timer;
	struct bks_defer defer;

	char *name, *description;
	bool read_only;
	unsigned int max_connections, max_in_flight;
	uint32_t bs;	      /* the chain's block size */
	uint32_t max_payload; /* advertised maximum block size */
	uint64_t handshake_ns, stall_ns;

	struct nbd_link conns;
	unsigned int nopen;
	uint64_t seq;		/* of the last connection accepted */
	size_t buf_total;	/* data buffers of every connection */
	struct nbd_link budget; /* connections waiting for buffer budget */

	bool stopping, done_sent;
	struct bks_timer stop_timer;
	void (*done)(void *arg);
	void *done_arg;

	struct bks_export_stats stats;
	struct bks_export exp; /* our handle (server.c has the ops) */
};

/*
 * Results of the parsing functions: PARSE_OK (0) goes on with the next
 * message; the others stop conn_parse() in server.c.
 */
enum {
	PARSE_OK,
	PARSE_MORE,
	PARSE_STALL,
	PARSE_STOP,
};

static inline uint64_t align_down(uint64_t v, uint32_t bs)
{
	return v & ~(uint64_t)(bs - 1);
}

static inline uint64_t align_up(uint64_t v, uint32_t bs)
{
	return align_down(v + bs - 1, bs);
}

/* ---- conn.c -------------------------------------------------------------- */

/* Read-only: configured so, or the chain is (or cannot write at all). */
bool nbd_srv_read_only(const struct bks_nbd_server *srv);

/* Schedule the connection's (the server's) deferred call. */
void nbd_conn_kick(struct nbd_conn *c);
void nbd_srv_kick(struct bks_nbd_server *srv);

/* Put s back on its connection's free list; it keeps its buffers. */
void nbd_slot_release(struct nbd_slot *s);

/*
 * A free slot with a data buffer of at least need bytes, taken off the
 * free list; NULL if the connection has to wait for one (all in use, or
 * a buffer budget spent by requests in progress: see nbd-server.h).
 * *err is set to NBD_ENOMEM (and the slot returned without a big enough
 * buffer) when memory ran out.
 */
struct nbd_slot *nbd_slot_get(struct nbd_conn *c, size_t need, uint32_t *err);

/* Handshake output or replies wait to be sent. */
bool nbd_conn_output_pending(const struct nbd_conn *c);
/* c may take more input now (parse what is buffered). */
bool nbd_conn_can_parse(const struct nbd_conn *c);
/* Too many replies wait for c: it takes no new request. */
bool nbd_conn_backlogged(const struct nbd_conn *c);
/* c should read its socket now. */
bool nbd_conn_can_read(const struct nbd_conn *c);

/* Disconnect c for breaking the protocol.  Returns PARSE_STOP. */
int nbd_conn_drop(struct nbd_conn *c);
/*
 * Close c's socket.  Requests not in the chain are forgotten; those in
 * it complete into nothing, and c is freed (by its deferred call in
 * server.c) when the last one has.
 */
void nbd_conn_close(struct nbd_conn *c);

/* ---- handshake.c --------------------------------------------------------- */

/* Queue the greeting of a new connection.  Returns 0 or -ENOMEM. */
int nbd_greet(struct nbd_conn *c);
/* The client's flags, after the greeting (4 bytes are in the input). */
int nbd_client_flags(struct nbd_conn *c);
/* One option (its header is in the input).  Returns PARSE_*. */
int nbd_option(struct nbd_conn *c);

/* ---- transmission.c ------------------------------------------------------ */

/* One request header (it is in the input).  Returns PARSE_*. */
int nbd_request(struct nbd_conn *c);
/* A request has arrived whole (its payload too): start it, or refuse it. */
void nbd_slot_dispatch(struct nbd_slot *s);
/* Start s: answer block status, or submit it to the chain. */
void nbd_slot_start(struct nbd_slot *s);
/*
 * Answer s with the NBD error err (rc: the -errno behind it, for the
 * message of a structured reply).
 */
void nbd_slot_reply_error(struct nbd_slot *s, uint32_t err, int rc);

/*
 * The chain's info, read anew at each use: a snapshot, an image swap or
 * a commit may change the chain's top layer (and so the info) while the
 * export serves it.  Never cached.
 */
static inline const struct bks_info *srv_info(const struct bks_nbd_server *srv)
{
	return bks_chain_info(srv->chain);
}

#endif /* BLKSTACK_EXPORT_NBD_INTERNAL_H */
