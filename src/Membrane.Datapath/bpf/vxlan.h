/* Tunnel mode with host routing: VXLAN built and taken apart by the programs themselves, so a packet between pods of
 * two nodes crosses neither node's VXLAN device (nor its UDP stack). The frames are the kernel device's own (same
 * port, the identity in the VNI, the inner frame addressed to the receiving device), so either side may leave a
 * packet to the device: the sender when it cannot build the frame, the receiver for what it does not deliver itself. */
#pragma once

#include "headers.h"
#include "maps.h"
#include "parse.h"
#include "conntrack.h"
#include "tunnel.h"
#include "delivery.h"

/* Shared with the agent (UnderlayNetwork.TunnelPort; BtfLayoutTests). */
enum tunnel_wire {
	TUNNEL_UDP_PORT = 8472, /* the tunnel device's port, on every node */
};

struct udp_hdr {
	__be16 sport;
	__be16 dport;
	__be16 len;
	__u16 check;
};

struct vxlan_hdr {
	__be32 flags; /* VXLAN_FLAGS: the VNI is valid; every other bit reserved, zero */
	__be32 vni;   /* VNI << 8 */
};

#define VXLAN_FLAGS 0x08000000

/* Outer Ethernet, IPv4, UDP, VXLAN, inner Ethernet: 64 bytes, of which the inner frame's own Ethernet header was 14. */
struct vxlan_frame {
	struct eth_hdr outer;
	struct ipv4_hdr ip;
	struct udp_hdr udp;
	struct vxlan_hdr vxlan;
	struct eth_hdr inner;
} __attribute__((packed));

#define TUNNEL_OVERHEAD (sizeof(struct vxlan_frame) - ETH_HLEN_M)

/* Not in the build machine's UAPI headers (Linux 6.7 and 6.3); the kernel this runs on has both. */
#define FIB_LOOKUP_SRC (1U << 4)
#define ADJ_ROOM_DECAP_L3_IPV6 (1ULL << 8)

#define TUNNEL_ENCAP_FLAGS                                                                                       \
	(BPF_F_ADJ_ROOM_ENCAP_L3_IPV4 | BPF_F_ADJ_ROOM_ENCAP_L4_UDP | BPF_F_ADJ_ROOM_ENCAP_L2_ETH |               \
	 BPF_F_ADJ_ROOM_ENCAP_L2(ETH_HLEN_M))

static __always_inline __u16 ipv4_header_checksum(const struct ipv4_hdr *ip)
{
	const __u16 *word = (const __u16 *)ip;
	__u32 sum = 0;
#pragma unroll
	for (int i = 0; i < (int)(sizeof(*ip) / 2); i++)
		sum += word[i];
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return (__u16)~sum;
}

#define ENCAPSULATE_LEFT_TO_STACK 0 /* nothing changed: the stack routes the packet into the tunnel device */
#define ENCAPSULATE_FAILED (-1)      /* the frame was changed and could not be finished: drop it */

/* Wraps a packet for another node's pod (already let through by the sender's egress policy) in VXLAN
 * to that node, from this node's underlay address, the source's identity in the VNI as to_tunnel would put it.
 * Returns the underlay device to send it from, or one of the codes above. The stack keeps what the tunnel device does
 * better: a packet over the tunnel's MTU (the device answers), an underlay next hop not resolved yet, and whatever
 * cannot be wrapped in place (a packet already carrying a tunnel's offload state, UDP segmentation offload). */
static __always_inline int encapsulate(struct __sk_buff *skb, struct flow *f, __be32 node, const struct config *config)
{
	if (!config->tunnel_ifindex || !fits_link(skb, config->tunnel_ifindex, 0))
		return ENCAPSULATE_LEFT_TO_STACK;
	__u32 inner_len = skb->len;
	if (inner_len + TUNNEL_OVERHEAD - ETH_HLEN_M > 0xffff) /* a GSO packet whose outer length would not fit */
		return ENCAPSULATE_LEFT_TO_STACK;
	struct bpf_fib_lookup fib = { .family = 2 /* AF_INET */, .ifindex = skb->ingress_ifindex, .ipv4_dst = node };
	if (bpf_fib_lookup(skb, &fib, sizeof(fib), FIB_LOOKUP_SRC) != BPF_FIB_LKUP_RET_SUCCESS)
		return ENCAPSULATE_LEFT_TO_STACK;
	__u32 identity = tunnel_identity(source_identity(f));
	/* The socket's flow hash as the skb carries it (0, one port for all, only for packets without one, such as
	 * ping's): bpf_get_hash_recalc would cost from_pod's budget the few instructions it has left. */
	__u32 hash = skb->hash;
	/* Before the room is made (it sets the outer protocol); from the skb, not the flow: a branch on the family here
	 * would have the verifier walk all that follows twice. */
	__be16 inner_proto = (__be16)skb->protocol;
	if (bpf_skb_adjust_room(skb, TUNNEL_OVERHEAD, BPF_ADJ_ROOM_MAC, TUNNEL_ENCAP_FLAGS))
		return ENCAPSULATE_LEFT_TO_STACK;

	struct ipv4_hdr ip = {
		.ver_ihl = 0x45,
		.tot_len = bpf_htons(inner_len + TUNNEL_OVERHEAD - ETH_HLEN_M),
		.frag_off = bpf_htons(0x4000), /* DF: the tunnel's MTU already made room for these headers */
		.ttl = 64,
		.protocol = 17, /* UDP */
		.saddr = fib.ipv4_src,
		.daddr = node,
	};
	ip.check = ipv4_header_checksum(&ip);
	struct vxlan_frame h = {
		.ip = ip,
		/* The flow's hash picks the source port, as the kernel device does: the underlay can spread flows. */
		.udp = { .sport = bpf_htons(0xc000 | ((hash ^ (hash >> 16)) & 0x3fff)), .dport = bpf_htons(TUNNEL_UDP_PORT),
			 .len = bpf_htons(inner_len + TUNNEL_OVERHEAD - ETH_HLEN_M - sizeof(struct ipv4_hdr)) },
		.vxlan = { .flags = bpf_htonl(VXLAN_FLAGS), .vni = bpf_htonl(identity << 8) },
	};
	__builtin_memcpy(h.outer.dst, fib.dmac, 6);
	__builtin_memcpy(h.outer.src, fib.smac, 6);
	h.outer.proto = bpf_htons(ETH_P_IP_M);
	/* The inner frame goes to the receiving tunnel device's address (02:6d + its node's IPv4 address) from this one's,
	 * as to_tunnel addresses it. */
	__u8 macs[12] = { 0x02, 0x6d };
	__builtin_memcpy(&macs[2], &node, 4);
	__builtin_memcpy(&macs[6], config->tunnel_mac, 6);
	__builtin_memcpy(&h.inner, macs, 12);
	h.inner.proto = inner_proto;
	f->hop_limit--;
	if (bpf_skb_store_bytes(skb, 0, &h, sizeof(h), 0) || rewrite_for_delivery(skb, f, 0, TUNNEL_OVERHEAD))
		return ENCAPSULATE_FAILED;
	return (int)fib.ifindex;
}

#define NOT_TUNNELLED 0 /* receive_tunnelled: not for this path; the stack and the tunnel device take it unchanged */
#define DECAPSULATED 1  /* the inner frame is in place, the sender's identity in the mark */
#define DECAPSULATE_FAILED (-1) /* the outer headers are gone but the frame could not be finished: drop it */

/* On the underlay device: VXLAN from a known node for a pod of this node, which host routing can deliver (no
 * fragment, a hop left, no IPv6 extension header to walk first, small enough for the pod's link), is unwrapped here,
 * its identity in the mark as the tunnel device's from_underlay would set it. Everything else goes on to the tunnel
 * device unchanged: a sender that is no node is dropped and counted there, a segmentation-offload packet is taken
 * apart there (a program cannot clear its tunnel offload state), anything not for a pod here is the node's to route.
 * A global function: its headers stay off from_underlay's stack, which the verdict's call chain fills. */
__attribute__((noinline)) int receive_tunnelled(struct __sk_buff *skb)
{
	if (!skb)
		return NOT_TUNNELLED;
	if (skb->gso_size || skb->pkt_type != 0 /* PACKET_HOST: addressed to this node */)
		return NOT_TUNNELLED;
	struct vxlan_frame h;
	if (load(skb, 0, &h, sizeof(h)))
		return NOT_TUNNELLED;
	if (h.outer.proto != bpf_htons(ETH_P_IP_M) || h.ip.ver_ihl != 0x45 || h.ip.protocol != 17 ||
	    (h.ip.frag_off & bpf_htons(IPV4_MF | IPV4_OFFSET_MASK)) || h.udp.dport != bpf_htons(TUNNEL_UDP_PORT) ||
	    h.vxlan.flags != bpf_htonl(VXLAN_FLAGS) || bpf_ntohs(h.ip.tot_len) + ETH_HLEN_M > skb->len)
		return NOT_TUNNELLED;
	struct node_key node = { .addr = h.ip.saddr };
	if (!bpf_map_lookup_elem(&mb_nodes, &node))
		return NOT_TUNNELLED;
	struct local_value *to = 0;
	__u64 decap_flags = 0;
	if (h.inner.proto == bpf_htons(ETH_P_IP_M)) {
		struct ipv4_hdr inner;
		if (load(skb, sizeof(h), &inner, sizeof(inner)) || inner.ver_ihl >> 4 != 4 || inner.ttl <= 1 ||
		    (inner.frag_off & bpf_htons(IPV4_MF | IPV4_OFFSET_MASK)))
			return NOT_TUNNELLED;
		__u32 addr = inner.daddr;
		to = bpf_map_lookup_elem(&mb_local4, &addr);
	} else if (h.inner.proto == bpf_htons(ETH_P_IPV6_M)) {
		struct ipv6_hdr inner;
		if (load(skb, sizeof(h), &inner, sizeof(inner)) || (bpf_ntohl(inner.vtc_flow) >> 28) != 6 ||
		    inner.hop_limit <= 1 || (inner.nexthdr != 6 && inner.nexthdr != 17 && inner.nexthdr != 58))
			return NOT_TUNNELLED;
		struct local6_key k;
		__builtin_memcpy(k.addr, inner.daddr, sizeof(k.addr));
		to = bpf_map_lookup_elem(&mb_local6, &k);
		decap_flags = ADJ_ROOM_DECAP_L3_IPV6;
	}
	/* Too big for the pod's link once unwrapped: the tunnel device's path answers as router on the path. */
	if (!to || !fits_link(skb, to->ifindex, -(__s32)TUNNEL_OVERHEAD))
		return NOT_TUNNELLED;
	__be16 inner_proto = h.inner.proto;
	if (bpf_skb_adjust_room(skb, -(__s32)TUNNEL_OVERHEAD, BPF_ADJ_ROOM_MAC, decap_flags))
		return NOT_TUNNELLED;
	if (bpf_skb_store_bytes(skb, offsetof(struct eth_hdr, proto), &inner_proto, sizeof(inner_proto), 0))
		return DECAPSULATE_FAILED;
	skb->mark = tunnel_mark(bpf_ntohl(h.vxlan.vni) >> 8);
	return DECAPSULATED;
}
