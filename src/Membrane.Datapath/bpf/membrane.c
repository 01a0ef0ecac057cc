// SPDX-License-Identifier: GPL-2.0
/* Membrane's policy programs, attached to each pod's host-side veth:
 *   from_pod on tc ingress (packets the pod sends: its egress policy),
 *   to_pod   on tc egress  (packets delivered to the pod: its ingress policy).
 * The endpoint is the veth's ifindex, so no per-endpoint lookup is needed before conntrack. */
#include "common.h"
#include "headers.h"
#include "maps.h"
#include "parse.h"
#include "policy.h"
#include "source.h"
#include "conntrack.h"
#include "events.h"

static __always_inline void remember_fragment(__u32 ifindex, __u8 dir, const struct flow *f, __u8 allowed)
{
	struct frag_key k = { .ifindex = ifindex, .id = f->frag_id, .dir = dir, .family = f->family, .proto = f->proto };
	__builtin_memcpy(k.saddr, f->saddr, sizeof(k.saddr));
	__builtin_memcpy(k.daddr, f->daddr, sizeof(k.daddr));
	bpf_map_update_elem(&mb_frag, &k, &allowed, BPF_ANY);
}

static __always_inline int fragment_allowed(__u32 ifindex, __u8 dir, const struct flow *f)
{
	struct frag_key k = { .ifindex = ifindex, .id = f->frag_id, .dir = dir, .family = f->family, .proto = f->proto };
	__builtin_memcpy(k.saddr, f->saddr, sizeof(k.saddr));
	__builtin_memcpy(k.daddr, f->daddr, sizeof(k.daddr));
	__u8 *allowed = bpf_map_lookup_elem(&mb_frag, &k);
	return allowed && *allowed;
}

static __always_inline int drop(struct __sk_buff *skb, const struct flow *f, __u8 dir, __u8 reason, __u32 peer,
				const struct policy_value *entry)
{
	drop_packet(skb, f, dir | (__u32)reason << 8 | (__u32)(entry ? entry->kind : MATCH_NONE) << 16, peer,
		    entry ? entry->rule_id : 0);
	return TC_ACT_SHOT;
}

static __always_inline int handle(struct __sk_buff *skb, __u8 dir)
{
	struct flow f = {};
	__u32 ifindex = skb->ifindex;
	int parsed = parse_packet(skb, &f);
	if (parsed == PARSE_ARP) {
		/* ARP has no policy, but a pod may only speak for its own address. */
		if (dir == DIR_EGRESS && !source_is_endpoints(ifindex, &f, 1))
			return drop(skb, &f, dir, REASON_INVALID_SOURCE, 0, 0);
		return TC_ACT_OK;
	}
	if (parsed == PARSE_UNKNOWN_L3)
		return drop(skb, &f, dir, REASON_UNKNOWN_L3, 0, 0);
	if (parsed != PARSE_OK)
		return drop(skb, &f, dir, REASON_MALFORMED, 0, 0);

	if (f.frag == FRAG_LATER) {
		if (fragment_allowed(ifindex, dir, &f))
			return TC_ACT_OK;
		return drop(skb, &f, dir, REASON_FRAGMENT, 0, 0);
	}

	__u64 now = ct_now();
	union ct_key k;
	int src_lo = ct_key_of(&k, ifindex, f.proto, f.family, f.saddr, f.daddr, f.sport, f.dport);
	struct ct_value *conn = ct_find(&k, f.family, f.proto, now);
	if (conn && ct_from_endpoint(conn, src_lo) == (dir == DIR_EGRESS)) {
		ct_account(conn, dir, now, skb->len, f.tcp_flags);
		goto pass;
	}
	if (dir == DIR_EGRESS && !source_is_endpoints(ifindex, &f, 0))
		return drop(skb, &f, dir, REASON_INVALID_SOURCE, 0, 0);
	if (is_neighbour_discovery(&f, dir))
		return TC_ACT_OK;
	if (is_icmp(f.proto) && is_icmp_error(f.family, f.icmp_type) && ct_related(skb, ifindex, &f, now, dir))
		goto pass;

	__u32 peer = ipcache_identity(&f, dir);
	struct policy_value *entry = policy_lookup(ifindex, dir, peer, &f);
	if (!entry || entry->deny) {
		if (f.frag == FRAG_FIRST)
			remember_fragment(ifindex, dir, &f, 0);
		return drop(skb, &f, dir, entry ? REASON_POLICY_DENY : REASON_POLICY, peer, entry);
	}
	__sync_fetch_and_add(&entry->packets, 1);
	__sync_fetch_and_add(&entry->bytes, skb->len);
	if (ct_trackable(&f))
		ct_create(&k, f.family, src_lo, dir, now, skb->len, entry->rule_id);
	if (config_flags() & CONFIG_VERDICT_EVENTS)
		emit_event(skb, &f, EVENT_VERDICT, dir, REASON_ALLOWED, peer, entry->rule_id, entry->kind);
pass:
	if (f.frag == FRAG_FIRST)
		remember_fragment(ifindex, dir, &f, 1);
	return TC_ACT_OK;
}

SEC("tc")
int from_pod(struct __sk_buff *skb)
{
	return handle(skb, DIR_EGRESS);
}

SEC("tc")
int to_pod(struct __sk_buff *skb)
{
	return handle(skb, DIR_INGRESS);
}

/* Puts into the object's BTF the types the programs use only through sizes and casts (the event record, the enums
 * mirrored in C#), so the layout test (BtfLayoutTests) can check the C# mirrors against them. Never called, so
 * never loaded. */
__attribute__((noinline)) int btf_layout_anchor(struct event *e, enum drop_reason r, enum event_type t, enum match_kind k,
						  enum traffic_direction d)
{
	return e ? (int)r + (int)t + (int)k + (int)d : 0;
}

char LICENSE[] SEC("license") = "GPL";
