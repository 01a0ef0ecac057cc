/* Connection tracking: only a connection's first packet meets policy; replies and related ICMP errors pass. */
#pragma once

#include "maps.h"
#include "parse.h"
#include "policy.h"
#include "source.h"

/* Connection timestamps are kernel ticks (jiffies): the verifier turns bpf_jiffies64() into a single load, where
 * a clock helper is a call on every packet. Timeouts are seconds long, so a tick (1-10 ms) is precise enough. */
extern unsigned int CONFIG_HZ __kconfig; /* the tick rate, supplied by the loader (KernelTicks.cs) */

#define CT_TIMEOUT_TCP_S (6 * 3600)
#define CT_TIMEOUT_TCP_CLOSING_S 10
#define CT_TIMEOUT_UDP_S 60
#define CT_TIMEOUT_ICMP_S 30

static __always_inline __u64 ct_now(void)
{
	return bpf_jiffies64();
}

static __always_inline __u64 ct_ticks(__u64 seconds)
{
	return seconds * CONFIG_HZ;
}

/* Builds the normalised key of a tuple in the key layout of its family; returns 1 when the tuple's source is
 * the key's lo side. */
static __always_inline int ct_key_of(union ct_key *k, __u32 ifindex, const struct flow *f)
{
	__u8 proto = f->proto, family = f->family;
	const __u32 *saddr = f->saddr, *daddr = f->daddr;
	__u16 sport = f->sport, dport = f->dport;
	int src_lo;
	if (family == 4) {
		src_lo = saddr[0] != daddr[0] ? bpf_ntohl(saddr[0]) < bpf_ntohl(daddr[0]) : sport <= dport;
		k->v4 = (struct ct4_key){
			.ifindex = ifindex,
			.lo_addr = src_lo ? saddr[0] : daddr[0],
			.hi_addr = src_lo ? daddr[0] : saddr[0],
			.lo_port = src_lo ? sport : dport,
			.hi_port = src_lo ? dport : sport,
			.proto = proto,
			.kind = f->query,
		};
		return src_lo;
	}
	src_lo = sport <= dport;
#pragma unroll
	for (int i = 0; i < 4; i++) {
		if (saddr[i] != daddr[i]) {
			src_lo = bpf_ntohl(saddr[i]) < bpf_ntohl(daddr[i]);
			break;
		}
	}
	k->v6 = (struct ct6_key){
		.ifindex = ifindex,
		.lo_port = src_lo ? sport : dport,
		.hi_port = src_lo ? dport : sport,
		.proto = proto,
		.kind = f->query,
	};
	__builtin_memcpy(k->v6.lo_addr, src_lo ? saddr : daddr, sizeof(k->v6.lo_addr));
	__builtin_memcpy(k->v6.hi_addr, src_lo ? daddr : saddr, sizeof(k->v6.hi_addr));
	return src_lo;
}

static __always_inline __u64 ct_timeout(__u8 proto, __u8 flags)
{
	if (proto == PROTO_TCP)
		return ct_ticks((flags & CT_SEEN_RST) || (flags & (CT_SEEN_FIN_FWD | CT_SEEN_FIN_REV)) == (CT_SEEN_FIN_FWD | CT_SEEN_FIN_REV)
				? CT_TIMEOUT_TCP_CLOSING_S : CT_TIMEOUT_TCP_S);
	if (is_icmp(proto))
		return ct_ticks(CT_TIMEOUT_ICMP_S);
	return ct_ticks(CT_TIMEOUT_UDP_S);
}

/* Finds the live connection of a key in the endpoint's table of its family (an expired one counts as absent and is
 * removed). Each family's calls stay apart: a helper call site that could see either family's table would not be
 * bound to one map by the verifier (a generic call instead of the inlined lookup). */
static __always_inline struct ct_value *ct_find(const union ct_key *k, __u8 family, __u8 proto, __u64 now)
{
	__u32 ifindex = k->v4.ifindex; /* first in both layouts */
	struct ct_value *v;
	if (family == 4) {
		void *table = bpf_map_lookup_elem(&mb_ct4_tables, &ifindex);
		v = table ? bpf_map_lookup_elem(table, &k->v4) : 0;
		if (v && now - v->last_seen > ct_timeout(proto, v->flags)) {
			bpf_map_delete_elem(table, &k->v4);
			return 0;
		}
		return v;
	}
	void *table = bpf_map_lookup_elem(&mb_ct6_tables, &ifindex);
	v = table ? bpf_map_lookup_elem(table, &k->v6) : 0;
	if (v && now - v->last_seen > ct_timeout(proto, v->flags)) {
		bpf_map_delete_elem(table, &k->v6);
		return 0;
	}
	return v;
}

/* Accounts a packet of a known connection. Counters are plain increments: approximate under contention on
 * several CPUs, but free of atomic operations on the hot path. */
static __always_inline void ct_account(struct ct_value *v, __u8 dir, __u64 now, __u32 len, __u8 tcp_flags)
{
	int reply = v->dir != dir;
	if (v->last_seen != now)
		v->last_seen = now;
	v->packets++;
	v->bytes += len;
	__u8 flags = v->flags;
	if (reply)
		flags |= CT_SEEN_REPLY;
	if (tcp_flags & TCP_FLAG_RST)
		flags |= CT_SEEN_RST;
	if (tcp_flags & TCP_FLAG_FIN)
		flags |= reply ? CT_SEEN_FIN_REV : CT_SEEN_FIN_FWD;
	if (flags != v->flags)
		v->flags = flags;
}

/* 1 when a packet of an ICMP query travels as its kind says: a request in the direction that opened the entry, a
 * reply in the other (forward: the packet goes the opening packet's way). Other packets: always 1. */
static __always_inline int ct_query_fits(const struct flow *f, int forward)
{
	return !f->query || f->query_reply == !forward;
}

/* 1 when a packet whose source is the lo side of the key (src_lo) comes from the endpoint's side of the connection.
 * Only packets in the right direction ride on an entry: a pod that forges its peer's address as the source of a
 * tracked tuple does not match it, and meets the source check and policy instead. */
static __always_inline int ct_from_endpoint(const struct ct_value *v, int src_lo)
{
	int endpoint_lo = v->dir == DIR_EGRESS ? v->opened_lo : !v->opened_lo;
	return src_lo == endpoint_lo;
}

/* Only connection-like flows are tracked: TCP, UDP, SCTP and ICMP queries (opened by their request). Other ICMP
 * is stateless. */
static __always_inline int ct_trackable(const struct flow *f)
{
	if (is_icmp(f->proto)) {
		int reply;
		return icmp_query(f->family, f->icmp_type, &reply) && !reply;
	}
	return f->proto == PROTO_TCP || f->proto == PROTO_UDP || f->proto == PROTO_SCTP;
}

/* Tracks a new connection in the endpoint's table of its family. A global function: the family branches stay out of
 * the verdict's states (each direction's verdict calls it). At most five arguments: family, the side of the opening
 * packet and the direction travel packed. */
__attribute__((noinline)) int ct_insert(const union ct_key *k, __u32 packed, __u64 now, __u32 len, __u32 rule_id)
{
	if (!k)
		return 0;
	struct ct_value v = {
		.created = now,
		.last_seen = now,
		.packets = 1,
		.bytes = len,
		.rule_id = rule_id,
		.dir = (packed >> 8) & 1,
		.opened_lo = (packed >> 16) & 1,
	};
	__u32 ifindex = k->v4.ifindex;
	if ((packed & 0xff) == 4) {
		void *table = bpf_map_lookup_elem(&mb_ct4_tables, &ifindex);
		if (table)
			bpf_map_update_elem(table, &k->v4, &v, BPF_ANY);
		return 0;
	}
	void *table = bpf_map_lookup_elem(&mb_ct6_tables, &ifindex);
	if (table)
		bpf_map_update_elem(table, &k->v6, &v, BPF_ANY);
	return 0;
}

static __always_inline void ct_create(const union ct_key *k, __u8 family, int src_lo, __u8 dir, __u64 now, __u32 len,
				      __u32 rule_id)
{
	ct_insert(k, family | (__u32)dir << 8 | (__u32)(src_lo & 1) << 16, now, len, rule_id);
}

/* Host routing: what a connection's entry in the sender's table says of the local destination's ingress check.
 * A packet skips it only when the destination admitted the connection's packets under the current configuration
 * generation (no policy, identity, endpoint or conntrack change since: the agent advances it after each) and the
 * connection's previous packet was in this same tick: so the destination's entry is still seen, refreshed and
 * accounted at least once a tick, and a packet that opens or closes (SYN, FIN, RST) always meets it. */
enum peer_check {
	PEER_CHECK = 0,         /* judge the destination's ingress (a new connection, or no shortcut) */
	PEER_CHECK_MARK = 1,    /* judge it, and if it admits, mark the entry with the generation (either: a refusal unmarks) */
	PEER_CHECK_MARKED = 2,  /* judge it (a new tick, or SYN/FIN/RST) */
	PEER_SKIP = 3,          /* admitted in this generation, and the connection was seen in this tick */
};

static __always_inline __u8 ct_peer_check(const struct ct_value *v, const struct flow *f, __u64 now)
{
	if (v->peer_generation != f->generation)
		return PEER_CHECK_MARK;
	if (v->last_seen != now || (f->tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_FIN | TCP_FLAG_RST)))
		return PEER_CHECK_MARKED;
	return PEER_SKIP;
}

/* Marks a connection's entry in the endpoint's table with the generation under which the local destination admitted
 * it (0: unmarks it). A global function: it runs only when the mark changes, not per packet. */
__attribute__((noinline)) int ct_mark_peer(const struct flow *f, __u32 ifindex, __u32 generation)
{
	if (!f)
		return 0;
	union ct_key k;
	ct_key_of(&k, ifindex, f);
	struct ct_value *v = ct_find(&k, f->family, f->proto, ct_now());
	if (v)
		v->peer_generation = (__u8)generation;
	return 0;
}

/* The identity of the packet's source, as a global function: the family branches of the lookup stay out of the
 * caller's states (inlined into ct_related they cost about 1,600 processed instructions). */
__attribute__((noinline)) int source_identity(const struct flow *f)
{
	if (!f)
		return IDENTITY_WORLD;
	return ipcache_identity(f, DIR_INGRESS);
}

/* The identity of the packet's destination, likewise. */
__attribute__((noinline)) int destination_identity(const struct flow *f)
{
	if (!f)
		return IDENTITY_WORLD;
	return ipcache_identity(f, DIR_EGRESS);
}

/* The largest ICMP error a host sends: RFC 1812's 576 bytes for IPv4 (Linux's icmp_send), the minimum MTU for
 * IPv6 (RFC 4443). A larger "error" carries more than the start of a packet. */
#define ICMP_ERROR_MAX_V4 576
#define ICMP_ERROR_MAX_V6 1280

/* An ICMP error relates to a tracked connection of this endpoint, and passes without a rule, when:
 * - it is no larger than a host would send (above);
 * - the packet it carries belongs to the connection, sent in the direction the error implies: towards the pod,
 *   an error about a packet the pod sent (the embedded source is the outer destination); from the pod, an error
 *   about a packet the pod received, sent back to that packet's source by the pod itself (pods do not route);
 * - towards the pod, its source is the connection's peer or a router on the path, which from this node is an
 *   address of no pod (the node, another host, a CIDR). Another pod never sits on the path between two others,
 *   so an error from a third pod meets policy like any other packet.
 * Matching the embedded packet rather than the outer addresses lets errors from routers through, such as
 * fragmentation-needed and Packet Too Big. A global function: verified once. */
__attribute__((noinline)) int ct_related(struct __sk_buff *skb, __u32 ifindex, const struct flow *f, __u64 now, __u8 dir)
{
	struct flow inner = {};
	if (!f)
		return 0;
	/* A host never fragments an error (both limits fit the minimum MTU); a fragmented one would pass the size
	 * check on its first fragment and carry the rest on the fragment's verdict. */
	if (f->frag != FRAG_NONE || f->l3_end > ETH_HLEN_M + (f->family == 4 ? ICMP_ERROR_MAX_V4 : ICMP_ERROR_MAX_V6))
		return 0;
	if (parse_embedded(skb, f, &inner) != PARSE_OK || inner.family != f->family)
		return 0;
	union ct_key k;
	int inner_src_lo = ct_key_of(&k, ifindex, &inner);
	struct ct_value *v = ct_find(&k, inner.family, inner.proto, now);
	/* Checked once the connection is found, where they cost the verifier least. In both directions the embedded
	 * packet was sent to the error's sender by the error's receiver; only towards the pod may the sender be a
	 * router rather than the packet's destination. The embedded packet came from the endpoint exactly when the
	 * error goes to it; it went the opening packet's way when the endpoint opened the connection. */
	if (!v || ct_from_endpoint(v, inner_src_lo) != (dir == DIR_INGRESS) || !addr_equal(inner.saddr, f->daddr))
		return 0;
	if (!ct_query_fits(&inner, (dir == DIR_INGRESS) == (v->dir == DIR_EGRESS)))
		return 0;
	if (!addr_equal(inner.daddr, f->saddr) && (dir != DIR_INGRESS || is_pod_identity(source_identity(f))))
		return 0;
	v->last_seen = now;
	return 1;
}
