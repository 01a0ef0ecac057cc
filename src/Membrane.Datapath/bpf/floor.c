// SPDX-License-Identifier: GPL-2.0
/* The benchmarks' yardsticks: the cheapest possible tc program (the floor that they divide by), and the cheapest
 * possible shortcut between two pods of a node (the ceiling host routing can reach, with no policy at all). */
#include "common.h"
#include "headers.h"

SEC("tc")
int pass_all(struct __sk_buff *skb)
{
	return TC_ACT_OK;
}

/* The pods a bare shortcut delivers to, by IPv4 address: the layout of mb_local4's values (struct local_value). */
struct bare_route {
	__u32 ifindex;
	__u8 macs[12]; /* the pod's, then its gateway's */
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u32);
	__type(value, struct bare_route);
	__uint(max_entries, 64);
} bare_routes SEC(".maps");

/* One lookup, the frame's addresses rewritten, the packet handed into the destination's namespace: no parsing beyond
 * the IPv4 destination, no policy, no TTL. What Membrane's own shortcut adds is measured against this. */
SEC("tc")
int redirect_peer_only(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data, *end = (void *)(long)skb->data_end;
	if (data + ETH_HLEN_M + 20 > end || *(__u16 *)(data + 12) != bpf_htons(0x0800))
		return TC_ACT_OK;
	__u32 daddr = *(__u32 *)(data + ETH_HLEN_M + 16);
	struct bare_route *route = bpf_map_lookup_elem(&bare_routes, &daddr);
	if (!route)
		return TC_ACT_OK;
	__builtin_memcpy(data, route->macs, 12);
	return bpf_redirect_peer(route->ifindex, 0);
}

char LICENSE[] SEC("license") = "GPL";
