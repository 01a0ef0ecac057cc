/* Connection tracking: only a connection's first packet meets policy; replies and related ICMP errors pass. */
#pragma once

#include "maps.h"
#include "parse.h"

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
static __always_inline int ct_key_of(union ct_key *k, __u32 ifindex, __u8 proto, __u8 family, const __u32 *saddr,
				     const __u32 *daddr, __u16 sport, __u16 dport)
{
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

/* Finds the live connection of a key (an expired one counts as absent and is removed). */
static __always_inline struct ct_value *ct_find(const union ct_key *k, __u8 family, __u8 proto, __u64 now)
{
	struct ct_value *v = family == 4 ? bpf_map_lookup_elem(&mb_ct4, &k->v4) : bpf_map_lookup_elem(&mb_ct6, &k->v6);
	if (!v)
		return 0;
	if (now - v->last_seen > ct_timeout(proto, v->flags)) {
		if (family == 4)
			bpf_map_delete_elem(&mb_ct4, &k->v4);
		else
			bpf_map_delete_elem(&mb_ct6, &k->v6);
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

static __always_inline void ct_create(const union ct_key *k, __u8 family, int src_lo, __u8 dir, __u64 now, __u32 len,
				      __u32 rule_id)
{
	struct ct_value v = {
		.created = now,
		.last_seen = now,
		.packets = 1,
		.bytes = len,
		.rule_id = rule_id,
		.dir = dir,
		.opened_lo = src_lo,
	};
	if (family == 4)
		bpf_map_update_elem(&mb_ct4, &k->v4, &v, BPF_ANY);
	else
		bpf_map_update_elem(&mb_ct6, &k->v6, &v, BPF_ANY);
}

/* An ICMP error relates to a tracked connection of this endpoint if the packet it carries belongs to it, in
 * either direction. Matching the embedded packet (not the outer addresses) lets errors from routers on the
 * path through, such as fragmentation-needed and Packet Too Big. A global function: verified once. */
__attribute__((noinline)) int ct_related(struct __sk_buff *skb, __u32 ifindex, const struct flow *f, __u64 now)
{
	struct flow inner = {};
	if (!f)
		return 0;
	if (parse_embedded(skb, f, &inner) != PARSE_OK || inner.family != f->family)
		return 0;
	union ct_key k;
	ct_key_of(&k, ifindex, inner.proto, inner.family, inner.saddr, inner.daddr, inner.sport, inner.dport);
	struct ct_value *v = ct_find(&k, inner.family, inner.proto, now);
	if (!v)
		return 0;
	v->last_seen = now;
	return 1;
}
