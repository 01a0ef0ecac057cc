/* Peer identity from the ipcache and the policy verdict from the per-endpoint entries of the policy map. */
#pragma once

#include "maps.h"
#include "parse.h"

static __always_inline __u32 ipcache_identity(const struct flow *f, __u8 dir)
{
	const __u32 *addr = dir == DIR_EGRESS ? f->daddr : f->saddr;
	struct ipcache_value *v;
	if (f->family == 4) {
		struct ipcache4_key k = { .prefixlen = 32, .addr = addr[0] };
		v = bpf_map_lookup_elem(&mb_ipcache4, &k);
	} else {
		struct ipcache6_key k = { .prefixlen = 128 };
		__builtin_memcpy(k.addr, addr, sizeof(k.addr));
		v = bpf_map_lookup_elem(&mb_ipcache6, &k);
	}
	return v ? v->identity : IDENTITY_WORLD;
}

/* The 16-bit port field of the key: destination port, or ICMP type and code. */
static __always_inline __u16 policy_port(const struct flow *f)
{
	return is_icmp(f->proto) ? ((__u16)f->icmp_type << 8) | f->icmp_code : f->dport;
}

/* Longest match for the peer's identity and for any peer: a deny in either wins, else an allow in either
 * allows, else nothing matched. The control plane has already turned every allow that a deny of the same
 * identity covers into a deny, so the longest match carries the right verdict. Same algorithm as MapState. */
static __always_inline struct policy_value *policy_lookup(__u32 ifindex, __u8 dir, __u32 identity, const struct flow *f)
{
	struct policy_key k = {
		.prefixlen = POLICY_PREFIX_FULL,
		.ifindex = ifindex,
		.identity = identity,
		.dir = dir,
		.proto = f->proto,
		.port = bpf_htons(policy_port(f)),
	};
	struct policy_value *specific = bpf_map_lookup_elem(&mb_policy, &k);
	k.identity = IDENTITY_ANY;
	struct policy_value *any = bpf_map_lookup_elem(&mb_policy, &k);
	if (specific && specific->deny)
		return specific;
	if (any && any->deny)
		return any;
	return specific ? specific : any;
}
