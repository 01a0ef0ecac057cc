/* Host routing's delivery steps shared by the paths that hand a packet on themselves: where a pod of this node is,
 * and what the node's forwarding would have done to the frame. */
#pragma once

#include "headers.h"
#include "maps.h"
#include "parse.h"

/* The pod of this node a packet is addressed to, if any. */
static __always_inline struct local_value *local_destination(const struct flow *f)
{
	if (f->family == 4) {
		__u32 addr = f->daddr[0];
		return bpf_map_lookup_elem(&mb_local4, &addr);
	}
	struct local6_key k;
	__builtin_memcpy(k.addr, f->daddr, sizeof(k.addr));
	return bpf_map_lookup_elem(&mb_local6, &k);
}

/* The links the agent makes for pods and the tunnel device carry IPv6 (1,450 or 1,500 bytes), so none takes less
 * than IPv6's minimum link MTU. */
#define LINK_MTU_FLOOR 1280

/* Whether the packet, `len_diff` bytes longer or shorter, fits the link of `ifindex` as the node's forwarding would
 * check it: a GSO packet by its segments (the kernel refuses the segment check with a length change, so a GSO packet
 * with one does not fit). A frame no larger than the floor fits every link without asking: the helper's device lookup
 * costs a delivered packet about 50 ns on the real path (bench: from_pod's run time with kernel.bpf_stats_enabled). */
static __always_inline int fits_link(struct __sk_buff *skb, __u32 ifindex, __s32 len_diff)
{
	__u32 gso = skb->gso_size;
	if (!gso && (__s64)skb->len + len_diff <= ETH_HLEN_M + LINK_MTU_FLOOR)
		return 1;
	__u32 mtu_len = 0;
	return bpf_check_mtu(skb, ifindex, &mtu_len, len_diff, gso ? BPF_MTU_CHK_SEGS : 0) == 0;
}

#define DELIVERY_HEADERS (ETH_HLEN_M + 20) /* Ethernet and as far as the IPv4 checksum (IPv6's hop limit is before) */

/* What the node's forwarding would do to the frame at `off` (0, or the inner frame behind tunnel headers): the gateway's
 * and the pod's MAC addresses (`macs`; none when the caller wrote them already), the hop limit the destination was
 * judged with (the IPv4 checksum updated for the TTL's decrement, RFC 1624). Direct writes: helper calls here cost a
 * delivered packet more than its conntrack lookup. */
static __always_inline int rewrite_for_delivery(struct __sk_buff *skb, const struct flow *f, const __u8 *macs,
						const __u32 off)
{
	void *data = skb_data(skb), *end = skb_data_end(skb);
	if (data + off + DELIVERY_HEADERS > end) {
		if (bpf_skb_pull_data(skb, off + DELIVERY_HEADERS))
			return -1;
		data = skb_data(skb);
		end = skb_data_end(skb);
		if (data + off + DELIVERY_HEADERS > end)
			return -1;
	}
	if (macs)
		__builtin_memcpy(data + off, macs, 12);
	__u8 left = f->hop_limit; /* already one less: the hop the node would have taken */
	if (f->family == 6) {
		*(__u8 *)(data + off + ETH_HLEN_M + 7) = left;
		return 0;
	}
	*(__u8 *)(data + off + ETH_HLEN_M + 8) = left;
	__u16 *check = data + off + ETH_HLEN_M + 10;
	__u32 sum = (__u32)*check + bpf_htons(0x0100);
	*check = (__u16)(sum + (sum >> 16)); /* the carry folded back in, without a branch */
	return 0;
}
