/* What a pod may send: its own addresses only (IP source and ARP sender), and neighbour discovery exactly as the
 * kernel accepts it. Everything here is checked before policy, so no policy can be bypassed by a forged header. */
#pragma once

#include "maps.h"
#include "parse.h"

/* Without branches: every branch here would multiply the verifier's states in its callers. */
static __always_inline int addr_equal(const __u32 *a, const __u32 *b)
{
	return ((a[0] ^ b[0]) | (a[1] ^ b[1]) | (a[2] ^ b[2]) | (a[3] ^ b[3])) == 0;
}

static __always_inline int is_link_local6(const __u32 *a)
{
	return (bpf_ntohl(a[0]) & 0xffc00000) == 0xfe800000; /* fe80::/10 */
}

static __always_inline int is_link_multicast6(const __u32 *a)
{
	return (bpf_ntohl(a[0]) & 0xff0f0000) == 0xff020000; /* ff02::/16 and flag variants: link scope */
}

static __always_inline int is_unspecified6(const __u32 *a)
{
	return !(a[0] | a[1] | a[2] | a[3]);
}

/* Neighbour discovery (RFC 4861: router/neighbour solicitation and advertisement) is never subject to policy, or
 * IPv6 stops working; so it must be exactly that: ICMPv6 133-136, code 0, hop limit 255, never fragmented (RFC 6980;
 * a first fragment let through here would carry its later fragments). A routed packet has a
 * lower hop limit, so towards the pod 255 means the node itself sent it. From the pod, the destination must also
 * be on the link (link-local or link-scope multicast): anything else would be forwarded past egress policy.
 * A global function: its many comparisons would otherwise split the caller's states (about 1,100 instructions). */
__attribute__((noinline)) int is_neighbour_discovery(const struct flow *f, __u8 dir)
{
	if (!f)
		return 0;
	if (f->family != 6 || f->proto != PROTO_ICMPV6 || f->icmp_type < 133 || f->icmp_type > 136 ||
	    f->icmp_code != 0 || f->hop_limit != 255 || f->frag != FRAG_NONE)
		return 0;
	return dir == DIR_INGRESS || is_link_local6(f->daddr) || is_link_multicast6(f->daddr);
}

/* The source of a packet the pod sent is one of its addresses. Link-local and (for duplicate address detection)
 * unspecified IPv6 sources are accepted only towards the link itself, which the node never forwards. A global
 * function: verified once, and only new flows (and ARP) call it. */
__attribute__((noinline)) int source_is_endpoints(__u32 ifindex, const struct flow *f, int arp)
{
	if (!f)
		return 0;
	struct endpoint_key k = { .ifindex = ifindex };
	struct endpoint_value *ep = bpf_map_lookup_elem(&mb_endpoints, &k);
	if (!ep)
		return 0;
	if (arp) /* ARP probes (RFC 5227) carry sender 0.0.0.0 */
		return (ep->flags & ENDPOINT_HAS_IPV4) && (f->saddr[0] == ep->ipv4 || f->saddr[0] == 0);
	if (f->family == 4)
		return (ep->flags & ENDPOINT_HAS_IPV4) && f->saddr[0] == ep->ipv4;
	if ((ep->flags & ENDPOINT_HAS_IPV6) && addr_equal(f->saddr, ep->ipv6))
		return 1;
	return (is_link_local6(f->saddr) || is_unspecified6(f->saddr)) &&
	       (is_link_local6(f->daddr) || is_link_multicast6(f->daddr));
}
