/* Packet parsing: Ethernet, IPv4 (with options), IPv6 (walking extension headers), TCP, UDP, SCTP, ICMP(v6). */
#pragma once

#include "common.h"
#include "headers.h"

#define IPV6_MAX_EXT_HEADERS 8

#define FRAG_NONE 0
#define FRAG_FIRST 1
#define FRAG_LATER 2

struct flow {
	__u32 saddr[4];
	__u32 daddr[4];
	__u16 sport; /* host byte order */
	__u16 dport;
	__u8 family;
	__u8 proto;
	__u8 icmp_type;
	__u8 icmp_code;
	__u8 tcp_flags;
	__u8 frag;
	__u8 hop_limit; /* IPv6 hop limit, IPv4 TTL: 255 on a neighbour discovery message proves it was not routed */
	__u8 query;       /* ICMP queries: the request's type (both for the request and its reply), else 0 */
	__u8 query_reply; /* 1 when the ICMP query message is a reply */
	__u16 l4_off;
	__u32 frag_id;
	__u32 l3_end; /* offset of the datagram's end (IPv4 total length, IPv6 payload length): bytes after it are
		       * the frame's trailer, which no header read may reach */
	__u32 endpoint; /* set by the caller: the endpoint (host-side veth ifindex) whose policy judges the packet */
	__u8 generation; /* from_pod with host routing: the configuration generation's low byte (0: no peer shortcut) */
	__u8 peer;       /* the egress verdict's word on the local destination's ingress check: enum peer_check */
	__u16 pad;
};

/* The packet's bounds, each read as one load from the context register: with several inlined readers clang would
 * otherwise keep the address of the field (skb + 80) in a register, and the verifier refuses a load through a
 * context pointer that was moved. */
static __always_inline void *skb_data(struct __sk_buff *skb)
{
	void *p;
	asm volatile("%0 = *(u32 *)(%1 + %2)" : "=r"(p) : "r"(skb), "i"(__builtin_offsetof(struct __sk_buff, data)));
	return p;
}

static __always_inline void *skb_data_end(struct __sk_buff *skb)
{
	void *p;
	asm volatile("%0 = *(u32 *)(%1 + %2)" : "=r"(p) : "r"(skb), "i"(__builtin_offsetof(struct __sk_buff, data_end)));
	return p;
}

/* Copies len bytes at off: straight from the linear packet data when the offset is a constant and the bytes
 * are there (cheap: no helper call), else through the helper (handles non-linear skbs). Variable offsets always
 * take the helper: direct access there multiplies the verifier's states for little gain. */
static __always_inline int load(struct __sk_buff *skb, __u32 off, void *to, const __u32 len)
{
	if (__builtin_constant_p(off)) {
		void *data = skb_data(skb);
		void *end = skb_data_end(skb);
		void *p = data + off;
		if (p + len <= end) {
			/* Wide loads instead of byte-by-byte assembly: packet data has no alignment clang could know,
			 * but the kernel only insists on aligned packet access where unaligned loads are slow (not x86). */
			__builtin_memcpy(to, __builtin_assume_aligned(p, 8), len);
			return 0;
		}
	}
	return bpf_skb_load_bytes(skb, off, to, len);
}

#define PARSE_OK 0
#define PARSE_ARP 1        /* IPv4-over-Ethernet ARP: sender address in saddr[0], target in daddr[0] */
#define PARSE_UNKNOWN_L3 2 /* anything else that is not IP, VLAN-tagged frames included */
#define PARSE_MALFORMED -1

/* ICMP queries whose reply carries the request's identifier: echo, timestamp, information, address mask and
 * extended echo (IPv4); echo and extended echo (IPv6). Returns the request's type for a request or its reply (and
 * sets *reply), 0 for any other message. */
static __always_inline __u8 icmp_query(__u8 family, __u8 type, int *reply)
{
	*reply = 0;
	if (family == 4) {
		if (type == 8 || type == 13 || type == 15 || type == 17 || type == 42)
			return type;
		*reply = 1;
		if (type == 0)
			return 8;
		if (type == 14 || type == 16 || type == 18 || type == 43)
			return type - 1;
	} else {
		if (type == 128 || type == 160)
			return type;
		*reply = 1;
		if (type == 129 || type == 161)
			return type - 1;
	}
	*reply = 0;
	return 0;
}

/* ICMP errors that carry the packet they refer to. */
static __always_inline int is_icmp_error(__u8 family, __u8 type)
{
	return family == 4 ? (type == 3 || type == 11 || type == 12) : (type >= 1 && type <= 4);
}

/* Queries are tracked by identifier and kind: a request looks like (id -> request type), its reply like
 * (request type -> id), so reversing the tuple of a reply gives its request's. The ports alone do not tell a request
 * from a reply (an echo with id 8 and one of type 8 look alike), so the kind (f->query) goes into the conntrack key
 * and whether it is a reply (f->query_reply) is checked against the entry's direction. Other ICMP messages are
 * stateless (0 -> 0). */
static __always_inline void icmp_ports(struct flow *f, __u8 type, __u16 id)
{
	int reply;
	__u8 query = icmp_query(f->family, type, &reply);
	f->sport = query ? (reply ? query : id) : 0;
	f->dport = query ? (reply ? id : query) : 0;
	f->query = query;
	f->query_reply = reply;
}

/* Copies the start of the L4 header at off: 14 bytes of TCP (up to its flags), 8 of anything else (UDP's header,
 * SCTP's ports, ICMP's type, code and identifier). */
static __always_inline int load_l4(struct __sk_buff *skb, __u32 off, __u8 *l4, int tcp)
{
	return tcp ? load(skb, off, l4, 14) : load(skb, off, l4, 8);
}

/* Fills ports/type/flags from the start of the L4 header at off, copied into l4 by load_l4. The whole header must
 * lie inside the datagram: a first fragment that ends before it, with the rest of the frame as a trailer, would
 * otherwise be judged by bytes the receiver never reads as its header. */
static __always_inline int parse_l4_header(struct flow *f, __u32 off, const __u8 *l4, int tcp)
{
	if (tcp) {
		if ((l4[12] >> 4) < 5 || f->l3_end < off + ((l4[12] >> 4) << 2))
			return PARSE_MALFORMED;
		f->tcp_flags = l4[13];
	} else if (f->l3_end < off + (f->proto == PROTO_SCTP ? 12 : 8)) {
		return PARSE_MALFORMED; /* UDP's and ICMP's headers are 8 bytes, SCTP's common header 12 */
	}
	if (is_icmp(f->proto)) {
		f->icmp_type = l4[0];
		f->icmp_code = l4[1];
		icmp_ports(f, l4[0], ((__u16)l4[4] << 8) | l4[5]);
	} else {
		f->sport = ((__u16)l4[0] << 8) | l4[1];
		f->dport = ((__u16)l4[2] << 8) | l4[3];
	}
	return PARSE_OK;
}

/* Whether the protocol has an L4 header the policy reads; ICMPv6 over IPv4 or ICMP over IPv6 is no valid message
 * (and would be judged by the other family's rules): malformed. */
static __always_inline int l4_parsed(const struct flow *f, int *malformed)
{
	*malformed = (f->proto == PROTO_ICMPV6 && f->family == 4) || (f->proto == PROTO_ICMP && f->family == 6);
	return !*malformed && (f->proto == PROTO_TCP || f->proto == PROTO_UDP || f->proto == PROTO_SCTP || is_icmp(f->proto));
}

/* IPv4's L4 header: at a constant offset without options (a direct read), else through the helper. */
static __always_inline int parse_l4_ipv4(struct __sk_buff *skb, struct flow *f)
{
	int malformed;
	if (!l4_parsed(f, &malformed))
		return malformed ? PARSE_MALFORMED : PARSE_OK;
	__u8 l4[16] __attribute__((aligned(8))) = {}; /* aligned: copied with wide loads, see load() */
	__u32 off = f->l4_off;
	int tcp = f->proto == PROTO_TCP;
	int r = off == ETH_HLEN_M + 20 ? load_l4(skb, ETH_HLEN_M + 20, l4, tcp) : load_l4(skb, off, l4, tcp);
	return r < 0 ? PARSE_MALFORMED : parse_l4_header(f, off, l4, tcp);
}

/* IPv6's L4 header: behind no, one or two 8-byte extension headers (as a fragment header or a hop-by-hop router
 * alert are) the offset is a constant and the read direct; any other offset goes through the helper. Only the read
 * is repeated per offset. A global function: verified once, apart from the callers' states (inlined, the offsets
 * took from_pod to 12,216 processed instructions); the call costs the IPv6 packet about 2 ns. */
__attribute__((noinline)) int parse_l4_ipv6(struct __sk_buff *skb, struct flow *f)
{
	int malformed;
	if (!f)
		return PARSE_MALFORMED;
	if (!l4_parsed(f, &malformed))
		return malformed ? PARSE_MALFORMED : PARSE_OK;
	__u8 l4[16] __attribute__((aligned(8))) = {};
	__u32 off = f->l4_off;
	int tcp = f->proto == PROTO_TCP, r;
	if (off == ETH_HLEN_M + 40)
		r = load_l4(skb, ETH_HLEN_M + 40, l4, tcp);
	else if (off == ETH_HLEN_M + 48)
		r = load_l4(skb, ETH_HLEN_M + 48, l4, tcp);
	else if (off == ETH_HLEN_M + 56)
		r = load_l4(skb, ETH_HLEN_M + 56, l4, tcp);
	else
		r = load_l4(skb, off, l4, tcp);
	return r < 0 ? PARSE_MALFORMED : parse_l4_header(f, off, l4, tcp);
}

static __always_inline int parse_ipv4(struct __sk_buff *skb, __u32 off, struct flow *f)
{
	struct ipv4_hdr ip __attribute__((aligned(8)));
	if (load(skb, off, &ip, sizeof(ip)) < 0)
		return PARSE_MALFORMED;
	__u32 hlen = (ip.ver_ihl & 0x0f) << 2;
	__u32 total = bpf_ntohs(ip.tot_len);
	if ((ip.ver_ihl >> 4) != 4 || hlen < sizeof(ip) || total < hlen || skb->len < off + total)
		return PARSE_MALFORMED;
	f->l3_end = off + total;
	f->family = 4;
	f->proto = ip.protocol;
	f->hop_limit = ip.ttl;
	f->saddr[0] = ip.saddr;
	f->daddr[0] = ip.daddr;
	f->l4_off = off + hlen;
	__u16 frag = bpf_ntohs(ip.frag_off);
	if (frag & IPV4_OFFSET_MASK) {
		f->frag = FRAG_LATER;
		f->frag_id = bpf_ntohs(ip.id);
		return PARSE_OK;
	}
	if (frag & IPV4_MF) {
		f->frag = FRAG_FIRST;
		f->frag_id = bpf_ntohs(ip.id);
	}
	return parse_l4_ipv4(skb, f);
}

/* Extension headers the walk steps over by their length (the fragment header has a fixed size and its own fields). */
static __always_inline int is_ext_header(__u8 next)
{
	return next == IPV6_HOPOPTS || next == IPV6_ROUTING || next == IPV6_DSTOPTS || next == IPV6_AUTH;
}

/* An extension header's size from its length byte: in 4-byte units for AH (RFC 4302), 8-byte units otherwise. */
static __always_inline __u32 ext_header_len(__u8 type, __u8 len)
{
	return type == IPV6_AUTH ? ((__u32)len + 2) << 2 : ((__u32)len + 1) << 3;
}

/* Steps over the extension header of type *next whose start is copied from at (*pos, or the same offset as a
 * constant so the read is direct): *pos moves past it, *next becomes the header after it. The header must end
 * inside the datagram (end): past it lies the frame's trailer. */
static __always_inline int skip_ext_header(struct __sk_buff *skb, __u32 at, __u32 *pos, __u8 *next, __u32 end)
{
	struct ipv6_ext_hdr eh;
	if (load(skb, at, &eh, sizeof(eh)) < 0)
		return -1;
	*pos += ext_header_len(*next, eh.len);
	*next = eh.nexthdr;
	return *pos > end ? -1 : 0;
}

static __always_inline int parse_ipv6(struct __sk_buff *skb, __u32 off, struct flow *f)
{
	struct ipv6_hdr ip __attribute__((aligned(8)));
	if (load(skb, off, &ip, sizeof(ip)) < 0)
		return PARSE_MALFORMED;
	/* A zero payload length announces a jumbogram, which no link here carries (and BIG TCP is not enabled on the
	 * veths): refused, since its datagram has no length to bound the headers by. */
	__u32 end = off + sizeof(ip) + bpf_ntohs(ip.payload_len);
	if ((bpf_ntohl(ip.vtc_flow) >> 28) != 6 || !ip.payload_len || skb->len < end)
		return PARSE_MALFORMED;
	f->l3_end = end;
	f->family = 6;
	f->hop_limit = ip.hop_limit;
	__builtin_memcpy(f->saddr, ip.saddr, sizeof(f->saddr));
	__builtin_memcpy(f->daddr, ip.daddr, sizeof(f->daddr));

	__u8 next = ip.nexthdr;
	__u32 pos = off + sizeof(ip);
	/* The first extension header sits at a constant offset, and so does the second behind an 8-byte first: they are
	 * read directly like the fixed headers. In the loop the offset is variable and every read is a helper call
	 * (about 8 ns each). The loop is as many iterations shorter: the walk still covers IPV6_MAX_EXT_HEADERS. */
	int first = 0;
	if (is_ext_header(next)) {
		if (skip_ext_header(skb, off + sizeof(ip), &pos, &next, end) < 0)
			return PARSE_MALFORMED;
		first = 1;
		if (pos == ETH_HLEN_M + 48 && is_ext_header(next)) {
			if (skip_ext_header(skb, ETH_HLEN_M + 48, &pos, &next, end) < 0)
				return PARSE_MALFORMED;
			first = 2;
		}
	}
	for (int i = first; i < IPV6_MAX_EXT_HEADERS; i++) {
		if (next == IPV6_FRAGMENT) {
			struct ipv6_frag_hdr fh;
			if (pos + sizeof(fh) > end || load(skb, pos, &fh, sizeof(fh)) < 0)
				return PARSE_MALFORMED;
			__u16 fo = bpf_ntohs(fh.frag_off);
			f->frag_id = bpf_ntohl(fh.id);
			if (fo & 0xfff8) {
				f->frag = FRAG_LATER;
				f->proto = fh.nexthdr;
				f->l4_off = pos + sizeof(fh);
				return PARSE_OK;
			}
			if (fo & 1)
				f->frag = FRAG_FIRST;
			next = fh.nexthdr;
			pos += sizeof(fh);
		} else if (is_ext_header(next)) {
			if (skip_ext_header(skb, pos, &pos, &next, end) < 0)
				return PARSE_MALFORMED;
		} else {
			break;
		}
	}
	if (is_ext_header(next) || next == IPV6_FRAGMENT)
		return PARSE_MALFORMED; /* more extension headers than we walk: refuse rather than guess */
	f->proto = next;
	f->l4_off = pos;
	return parse_l4_ipv6(skb, f);
}

/* A global function: the verifier checks it once on its own, and the caller continues from one merged state
 * instead of one per parsed combination of fields. This keeps both programs far below the complexity limit. */
__attribute__((noinline)) int parse_packet(struct __sk_buff *skb, struct flow *f)
{
	struct eth_hdr eth __attribute__((aligned(8)));
	if (!f)
		return PARSE_MALFORMED;
	/* A tag the kernel took out of the frame is as foreign as one left in it (0x8100 below). */
	if (skb->vlan_present)
		return PARSE_UNKNOWN_L3;
	if (load(skb, 0, &eth, sizeof(eth)) < 0)
		return PARSE_MALFORMED;
	if (eth.proto == bpf_htons(ETH_P_IP_M))
		return parse_ipv4(skb, ETH_HLEN_M, f);
	if (eth.proto == bpf_htons(ETH_P_IPV6_M))
		return parse_ipv6(skb, ETH_HLEN_M, f);
	if (eth.proto == bpf_htons(ETH_P_ARP_M)) {
		struct arp_hdr arp;
		if (load(skb, ETH_HLEN_M, &arp, sizeof(arp)) < 0)
			return PARSE_MALFORMED;
		if (arp.htype != bpf_htons(1) || arp.ptype != bpf_htons(ETH_P_IP_M) || arp.hlen != 6 || arp.plen != 4)
			return PARSE_UNKNOWN_L3;
		__builtin_memcpy(&f->saddr[0], arp.spa, 4);
		__builtin_memcpy(&f->daddr[0], arp.tpa, 4);
		return PARSE_ARP;
	}
	return PARSE_UNKNOWN_L3;
}

/* Parses the packet embedded in an ICMP error (IP header + first 8 bytes of its L4 header) into *inner; all of it
 * inside the error's datagram. */
static __always_inline int parse_embedded(struct __sk_buff *skb, const struct flow *outer, struct flow *inner)
{
	__u32 off = outer->l4_off + sizeof(struct icmp_hdr);
	__u32 end = outer->l3_end;
	if (outer->family == 4) {
		struct ipv4_hdr ip;
		if (load(skb, off, &ip, sizeof(ip)) < 0 || (ip.ver_ihl >> 4) != 4)
			return PARSE_MALFORMED;
		__u32 hlen = (ip.ver_ihl & 0x0f) << 2;
		if (hlen < sizeof(ip) || off + hlen + 8 > end)
			return PARSE_MALFORMED;
		inner->family = 4;
		inner->proto = ip.protocol;
		inner->saddr[0] = ip.saddr;
		inner->daddr[0] = ip.daddr;
		off += hlen;
	} else {
		struct ipv6_hdr ip;
		if (off + sizeof(ip) + 8 > end || load(skb, off, &ip, sizeof(ip)) < 0 || (bpf_ntohl(ip.vtc_flow) >> 28) != 6)
			return PARSE_MALFORMED;
		inner->family = 6;
		inner->proto = ip.nexthdr;
		__builtin_memcpy(inner->saddr, ip.saddr, sizeof(inner->saddr));
		__builtin_memcpy(inner->daddr, ip.daddr, sizeof(inner->daddr));
		off += sizeof(ip);
	}
	if (is_icmp(inner->proto)) {
		struct icmp_hdr icmp;
		if (load(skb, off, &icmp, sizeof(icmp)) < 0)
			return PARSE_MALFORMED;
		icmp_ports(inner, icmp.type, bpf_ntohs(icmp.id));
	} else {
		struct l4_ports ports;
		if (load(skb, off, &ports, sizeof(ports)) < 0)
			return PARSE_MALFORMED;
		inner->sport = bpf_ntohs(ports.sport);
		inner->dport = bpf_ntohs(ports.dport);
	}
	return PARSE_OK;
}
