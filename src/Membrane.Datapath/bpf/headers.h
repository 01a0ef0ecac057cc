/* The few protocol headers the programs read, defined here so no libc header is pulled in. */
#pragma once

#include <linux/types.h>

#define ETH_HLEN_M 14
#define ETH_P_IP_M 0x0800
#define ETH_P_IPV6_M 0x86DD
#define ETH_P_ARP_M 0x0806

struct eth_hdr {
	__u8 dst[6];
	__u8 src[6];
	__be16 proto;
};

/* ARP for IPv4 over Ethernet: the only kind a pod may send. */
struct arp_hdr {
	__be16 htype;
	__be16 ptype;
	__u8 hlen;
	__u8 plen;
	__be16 oper;
	__u8 sha[6];
	__u8 spa[4];
	__u8 tha[6];
	__u8 tpa[4];
};

struct ipv4_hdr {
	__u8 ver_ihl;
	__u8 tos;
	__be16 tot_len;
	__be16 id;
	__be16 frag_off;
	__u8 ttl;
	__u8 protocol;
	__u16 check;
	__be32 saddr;
	__be32 daddr;
};

#define IPV4_MF 0x2000
#define IPV4_OFFSET_MASK 0x1fff

struct ipv6_hdr {
	__be32 vtc_flow;
	__be16 payload_len;
	__u8 nexthdr;
	__u8 hop_limit;
	__u32 saddr[4];
	__u32 daddr[4];
};

#define IPV6_HOPOPTS 0
#define IPV6_ROUTING 43
#define IPV6_FRAGMENT 44
#define IPV6_AUTH 51
#define IPV6_DSTOPTS 60
#define IPV6_NONE 59

struct ipv6_ext_hdr {
	__u8 nexthdr;
	__u8 len;
};

struct ipv6_frag_hdr {
	__u8 nexthdr;
	__u8 reserved;
	__be16 frag_off; /* offset in 8-byte units << 3, low bit = more fragments */
	__be32 id;
};

struct l4_ports {
	__be16 sport;
	__be16 dport;
};

struct icmp_hdr {
	__u8 type;
	__u8 code;
	__u16 csum;
	__be16 id;
	__be16 seq;
};

#define TCP_FLAG_FIN 0x01
#define TCP_FLAG_SYN 0x02
#define TCP_FLAG_RST 0x04
#define TCP_FLAG_ACK 0x10
