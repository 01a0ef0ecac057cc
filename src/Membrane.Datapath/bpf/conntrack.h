/* Connection tracking: only a connection's first packet meets policy; replies and related ICMP errors pass. */
#pragma once

#include "maps.h"
#include "parse.h"

#define NS_PER_SEC 1000000000ULL
#define CT_TIMEOUT_TCP (6ULL * 3600 * NS_PER_SEC)
#define CT_TIMEOUT_TCP_CLOSING (10ULL * NS_PER_SEC)
#define CT_TIMEOUT_UDP (60ULL * NS_PER_SEC)
#define CT_TIMEOUT_ICMP (30ULL * NS_PER_SEC)

static __always_inline void ct_key_forward(struct ct_key *k, __u32 ifindex, __u8 dir, const struct flow *f)
{
	k->ifindex = ifindex;
	k->dir = dir;
	k->proto = f->proto;
	k->family = f->family;
	k->sport = f->sport;
	k->dport = f->dport;
	__builtin_memcpy(k->saddr, f->saddr, sizeof(k->saddr));
	__builtin_memcpy(k->daddr, f->daddr, sizeof(k->daddr));
}

/* The key under which the other side's opening packet was recorded: opposite direction, tuple swapped. */
static __always_inline void ct_key_reverse(struct ct_key *k, __u32 ifindex, __u8 dir, const struct flow *f)
{
	k->ifindex = ifindex;
	k->dir = dir ^ 1;
	k->proto = f->proto;
	k->family = f->family;
	k->sport = f->dport;
	k->dport = f->sport;
	__builtin_memcpy(k->saddr, f->daddr, sizeof(k->saddr));
	__builtin_memcpy(k->daddr, f->saddr, sizeof(k->daddr));
}

static __always_inline __u64 ct_timeout(const struct ct_key *k, const struct ct_value *v)
{
	if (k->proto == PROTO_TCP)
		return (v->flags & CT_SEEN_RST) || (v->flags & (CT_SEEN_FIN_FWD | CT_SEEN_FIN_REV)) == (CT_SEEN_FIN_FWD | CT_SEEN_FIN_REV)
			? CT_TIMEOUT_TCP_CLOSING : CT_TIMEOUT_TCP;
	if (is_icmp(k->proto))
		return CT_TIMEOUT_ICMP;
	return CT_TIMEOUT_UDP;
}

/* Looks a key up; an expired entry counts as absent. Updates last-seen, counters and TCP close flags. */
static __always_inline struct ct_value *ct_touch(const struct ct_key *k, __u64 now, __u32 len, __u8 tcp_flags, int reply)
{
	struct ct_value *v = bpf_map_lookup_elem(&mb_ct, k);
	if (!v)
		return 0;
	if (now - v->last_seen_ns > ct_timeout(k, v)) {
		bpf_map_delete_elem(&mb_ct, k);
		return 0;
	}
	v->last_seen_ns = now;
	__sync_fetch_and_add(&v->packets, 1);
	__sync_fetch_and_add(&v->bytes, len);
	__u8 flags = v->flags;
	if (reply)
		flags |= CT_SEEN_REPLY;
	if (tcp_flags & TCP_FLAG_RST)
		flags |= CT_SEEN_RST;
	if (tcp_flags & TCP_FLAG_FIN)
		flags |= reply ? CT_SEEN_FIN_REV : CT_SEEN_FIN_FWD;
	if (flags != v->flags)
		v->flags = flags;
	return v;
}

/* Only connection-like flows are tracked: TCP, UDP, SCTP and ICMP echo. Other ICMP is stateless. */
static __always_inline int ct_trackable(const struct flow *f)
{
	if (is_icmp(f->proto))
		return is_echo_request(f->family, f->icmp_type);
	return f->proto == PROTO_TCP || f->proto == PROTO_UDP || f->proto == PROTO_SCTP;
}

static __always_inline void ct_create(const struct ct_key *k, __u64 now, __u32 len, __u32 rule_id)
{
	struct ct_value v = {
		.created_ns = now,
		.last_seen_ns = now,
		.packets = 1,
		.bytes = len,
		.rule_id = rule_id,
	};
	bpf_map_update_elem(&mb_ct, k, &v, BPF_ANY);
}

/* An ICMP error relates to a tracked connection of this endpoint if the packet it carries was sent on one:
 * either in the direction that opened it, or as a reply to it. Matching the embedded packet (not the outer
 * addresses) lets errors from routers on the path through, such as fragmentation-needed and Packet Too Big. */
__attribute__((noinline)) int ct_related(struct __sk_buff *skb, __u32 ifindex, __u32 dir, const struct flow *f, __u64 now)
{
	struct flow inner = {};
	if (!f)
		return 0;
	if (parse_embedded(skb, f, &inner) != PARSE_OK || inner.family != f->family)
		return 0;
	struct ct_key k = {};
	ct_key_forward(&k, ifindex, dir ^ 1, &inner);
	if (ct_touch(&k, now, skb->len, 0, 0))
		return 1;
	ct_key_reverse(&k, ifindex, dir ^ 1, &inner);
	return ct_touch(&k, now, skb->len, 0, 1) != 0;
}
