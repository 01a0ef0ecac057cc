/* Connection tracking: only a connection's first packet meets policy; replies and related ICMP errors pass. */
#pragma once

#include "maps.h"
#include "parse.h"

#define NS_PER_SEC 1000000000ULL
#define CT_TIMEOUT_TCP (6ULL * 3600 * NS_PER_SEC)
#define CT_TIMEOUT_TCP_CLOSING (10ULL * NS_PER_SEC)
#define CT_TIMEOUT_UDP (60ULL * NS_PER_SEC)
#define CT_TIMEOUT_ICMP (30ULL * NS_PER_SEC)

/* Timeouts are seconds long: the coarse clock is precise enough and much cheaper. */
static __always_inline __u64 ct_now(void)
{
	return bpf_ktime_get_coarse_ns();
}

/* Builds the normalised key of a tuple; returns 1 when the tuple's source is the key's lo side. */
static __always_inline int ct_key_of(struct ct_key *k, __u32 ifindex, __u8 proto, __u8 family, const __u32 *saddr,
				     const __u32 *daddr, __u16 sport, __u16 dport)
{
	int src_lo = 1;
#pragma unroll
	for (int i = 0; i < 4; i++) {
		if (saddr[i] != daddr[i]) {
			src_lo = bpf_ntohl(saddr[i]) < bpf_ntohl(daddr[i]);
			goto decided;
		}
	}
	src_lo = sport <= dport;
decided:
	k->ifindex = ifindex;
	k->proto = proto;
	k->family = family;
	k->pad = 0;
	if (src_lo) {
		k->lo_port = sport;
		k->hi_port = dport;
		__builtin_memcpy(k->lo_addr, saddr, sizeof(k->lo_addr));
		__builtin_memcpy(k->hi_addr, daddr, sizeof(k->hi_addr));
	} else {
		k->lo_port = dport;
		k->hi_port = sport;
		__builtin_memcpy(k->lo_addr, daddr, sizeof(k->lo_addr));
		__builtin_memcpy(k->hi_addr, saddr, sizeof(k->hi_addr));
	}
	return src_lo;
}

static __always_inline __u64 ct_timeout(__u8 proto, __u8 flags)
{
	if (proto == PROTO_TCP)
		return (flags & CT_SEEN_RST) || (flags & (CT_SEEN_FIN_FWD | CT_SEEN_FIN_REV)) == (CT_SEEN_FIN_FWD | CT_SEEN_FIN_REV)
			? CT_TIMEOUT_TCP_CLOSING : CT_TIMEOUT_TCP;
	if (is_icmp(proto))
		return CT_TIMEOUT_ICMP;
	return CT_TIMEOUT_UDP;
}

/* Finds the live connection of a key (an expired one counts as absent and is removed). */
static __always_inline struct ct_value *ct_find(const struct ct_key *k, __u64 now)
{
	struct ct_value *v = bpf_map_lookup_elem(&mb_ct, k);
	if (!v)
		return 0;
	if (now - v->last_seen_ns > ct_timeout(k->proto, v->flags)) {
		bpf_map_delete_elem(&mb_ct, k);
		return 0;
	}
	return v;
}

/* Accounts a packet of a known connection. Counters are plain increments: approximate under contention on
 * several CPUs, but free of atomic operations on the hot path. */
static __always_inline void ct_account(struct ct_value *v, __u8 dir, __u64 now, __u32 len, __u8 tcp_flags)
{
	int reply = v->dir != dir;
	if (v->last_seen_ns != now)
		v->last_seen_ns = now;
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

/* Only connection-like flows are tracked: TCP, UDP, SCTP and ICMP echo. Other ICMP is stateless. */
static __always_inline int ct_trackable(const struct flow *f)
{
	if (is_icmp(f->proto))
		return is_echo_request(f->family, f->icmp_type);
	return f->proto == PROTO_TCP || f->proto == PROTO_UDP || f->proto == PROTO_SCTP;
}

static __always_inline void ct_create(const struct ct_key *k, int src_lo, __u8 dir, __u64 now, __u32 len, __u32 rule_id)
{
	struct ct_value v = {
		.created_ns = now,
		.last_seen_ns = now,
		.packets = 1,
		.bytes = len,
		.rule_id = rule_id,
		.dir = dir,
		.opened_lo = src_lo,
	};
	bpf_map_update_elem(&mb_ct, k, &v, BPF_ANY);
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
	struct ct_key k;
	ct_key_of(&k, ifindex, inner.proto, inner.family, inner.saddr, inner.daddr, inner.sport, inner.dport);
	struct ct_value *v = ct_find(&k, now);
	if (!v)
		return 0;
	v->last_seen_ns = now;
	return 1;
}
