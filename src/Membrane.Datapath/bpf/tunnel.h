/* Cross-node traffic in tunnel mode (VXLAN in collect-metadata mode): the sending node carries the source's
 * identity in the VNI and the node that hosts the destination, the receiving node accepts an identity only from a
 * known node and hands it to to_pod in the packet mark. Native routing needs none of this: there the receiving
 * node learns the source's identity from its ipcache; its routes (flagged ROUTE_NATIVE) only tell from_pod which
 * destinations are other nodes' pods. */
#pragma once

#include "maps.h"
#include "parse.h"
#include "events.h"

/* The mark carries a tunnel identity from from_underlay to to_pod (same namespace; crossing into a pod's namespace
 * clears it, so a pod can never set it). Identities of pods fit in the VNI's 24 bits. */
#define MARK_TUNNEL_MAGIC 0x4d000000
#define MARK_TUNNEL_MASK 0xff000000
#define TUNNEL_IDENTITY_MASK 0x00ffffff

/* Where a remote pod prefix lives: the underlay address of its node. */
struct tunnel_value {
	__u32 node;   /* IPv4, network byte order */
	__u32 flags;  /* ROUTE_* */
};

/* Native routing: the prefix is routed by the node's table towards its node (from_pod may send there itself). */
#define ROUTE_NATIVE 1

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__type(key, struct ipcache4_key);
	__type(value, struct tunnel_value);
	__uint(max_entries, 4096);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} mb_tunnel4 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__type(key, struct ipcache6_key);
	__type(value, struct tunnel_value);
	__uint(max_entries, 4096);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} mb_tunnel6 SEC(".maps");

/* The cluster's nodes by underlay address: the only senders whose tunnel identity is believed. */
struct node_key {
	__u32 addr; /* IPv4, network byte order */
};

struct node_value {
	__u32 flags;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct node_key);
	__type(value, struct node_value);
	__uint(max_entries, 4096);
} mb_nodes SEC(".maps");

/* The inner packet's family and addresses; the rest of the header does not matter to the tunnel. */
static __always_inline int tunnel_addresses(struct __sk_buff *skb, struct flow *f)
{
	__be16 proto;
	if (load(skb, offsetof(struct eth_hdr, proto), &proto, sizeof(proto)))
		return -1;
	if (proto == bpf_htons(ETH_P_IP_M)) {
		f->family = 4;
		if (load(skb, ETH_HLEN_M + offsetof(struct ipv4_hdr, saddr), f->saddr, 4) ||
		    load(skb, ETH_HLEN_M + offsetof(struct ipv4_hdr, daddr), f->daddr, 4))
			return -1;
		return 0;
	}
	if (proto == bpf_htons(ETH_P_IPV6_M)) {
		f->family = 6;
		if (load(skb, ETH_HLEN_M + offsetof(struct ipv6_hdr, saddr), f->saddr, 16) ||
		    load(skb, ETH_HLEN_M + offsetof(struct ipv6_hdr, daddr), f->daddr, 16))
			return -1;
		return 0;
	}
	return -1;
}

static __always_inline struct tunnel_value *tunnel_route(const struct flow *f)
{
	if (f->family == 4) {
		struct ipcache4_key k = { .prefixlen = 32, .addr = f->daddr[0] };
		return bpf_map_lookup_elem(&mb_tunnel4, &k);
	}
	struct ipcache6_key k = { .prefixlen = 128 };
	__builtin_memcpy(k.addr, f->daddr, sizeof(k.addr));
	return bpf_map_lookup_elem(&mb_tunnel6, &k);
}

#define ROUTE_FOUND 0x80000000 /* tunnel_route_of: a node hosts the destination */

/* tunnel_route by value, as a global function verified once: the node's address (low half) and the route's flags with
 * ROUTE_FOUND (high half), or 0. With either family's map pointer live in its caller, the verifier would walk all that
 * follows the lookup twice. */
__attribute__((noinline)) __u64 tunnel_route_of(const struct flow *f)
{
	struct tunnel_value *route = f ? tunnel_route(f) : 0;
	return route ? (__u64)(route->flags | ROUTE_FOUND) << 32 | route->node : 0;
}

/* The identity a node may send: this node itself is a remote node to the others; reserved and CIDR identities
 * do not travel. */
static __always_inline __u32 tunnel_identity(__u32 identity)
{
	if (identity == IDENTITY_HOST || identity == IDENTITY_REMOTE_NODE)
		return IDENTITY_REMOTE_NODE;
	return is_pod_identity(identity) ? identity : IDENTITY_WORLD;
}

/* The mark for an identity a known node sent: no node can claim to be this node's host. */
static __always_inline __u32 tunnel_mark(__u32 identity)
{
	identity &= TUNNEL_IDENTITY_MASK;
	return MARK_TUNNEL_MAGIC | (identity == IDENTITY_ANY || identity == IDENTITY_HOST ? IDENTITY_REMOTE_NODE : identity);
}

/* The identity a mark carries from from_underlay, or 0 when it carries none. */
static __always_inline __u32 mark_identity(const struct __sk_buff *skb)
{
	return (skb->mark & MARK_TUNNEL_MASK) == MARK_TUNNEL_MAGIC ? skb->mark & TUNNEL_IDENTITY_MASK : 0;
}
