/* Shared definitions for Membrane's tc programs: constants, verdict codes and the structs the C# side mirrors. */
#pragma once

#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

/* Which side of the pod a packet is on: the policy key's, conntrack's and events' direction byte. */
enum traffic_direction {
	DIR_INGRESS = 0, /* traffic entering the pod: the pod's ingress policy */
	DIR_EGRESS = 1,  /* traffic leaving the pod: the pod's egress policy */
};

#define IDENTITY_ANY 0
#define IDENTITY_HOST 1
#define IDENTITY_WORLD 2
#define IDENTITY_REMOTE_NODE 6
#define IDENTITY_FIRST_POD 256        /* identities of pods: [256, first CIDR identity) */
#define IDENTITY_FIRST_CIDR 16777217

#define PROTO_ICMP 1
#define PROTO_TCP 6
#define PROTO_UDP 17
#define PROTO_ICMPV6 58
#define PROTO_SCTP 132

/* Why a packet was dropped; index into the drop counters. Mirrored by DropReason in C#. */
enum drop_reason {
	REASON_ALLOWED = 0,
	REASON_POLICY = 1,      /* no rule allows it (default deny) */
	REASON_POLICY_DENY = 2, /* a deny rule matched */
	REASON_MALFORMED = 3,   /* truncated header or bad length */
	REASON_FRAGMENT = 4,    /* later fragment whose first fragment was denied or never seen */
	REASON_INVALID_SOURCE = 5, /* sent by a pod with an address (IP or ARP sender) that is not the pod's */
	REASON_UNKNOWN_L3 = 6,  /* neither IPv4, IPv6 nor ARP (VLAN tags included): policy could not judge it */
	REASON_TUNNEL = 7,      /* tunnel traffic from an address that is no node, or to a prefix no node hosts */
	REASON_MAX = 8,
};

enum event_type {
	EVENT_DROP = 1,
	EVENT_VERDICT = 2, /* a new connection was allowed by policy */
	EVENT_AUDIT = 3,   /* policy would have dropped it; audit mode let it through */
	EVENT_TRACE = 4,   /* a packet of a tracked connection or a related ICMP error let through (every packet reported) */
};

/* Why a traced packet passed without a policy decision: the reason byte of an EVENT_TRACE. Mirrored by TraceReason. */
enum trace_reason {
	TRACE_ESTABLISHED = 0, /* a later packet of a connection, in the direction that opened it */
	TRACE_REPLY = 1,       /* a packet of a connection, in the other direction */
	TRACE_RELATED = 2,     /* an ICMP error about a tracked connection */
};

/* What kind of entry matched; set by the control plane in the policy value. */
enum match_kind {
	MATCH_NONE = 0,
	MATCH_ANY = 1,
	MATCH_L3_ONLY = 2,
	MATCH_L4_ONLY = 3,
	MATCH_L3_L4 = 4,
	MATCH_ICMP = 5,
};

#define CONFIG_VERDICT_EVENTS 1 /* emit an event for every new allowed connection */
#define CONFIG_DROP_EVENTS 2    /* emit an event for every drop (set while a monitor listens) */
#define CONFIG_TRACE_EVENTS 8   /* emit an event for every packet let through (--monitor-aggregation none) */
#define CONFIG_AUDIT 4          /* audit mode on every endpoint: what policy would drop is let through and reported */
#define CONFIG_HOST_ROUTING 16  /* from_pod delivers packets for pods of this node itself (see deliver_local) */

/* ICMP of the packet's own family only: ICMPv6 over IPv4 and ICMP over IPv6 are refused by the parser. */
static __always_inline int is_icmp(__u8 proto)
{
	return proto == PROTO_ICMP || proto == PROTO_ICMPV6;
}

static __always_inline int is_pod_identity(__u32 identity)
{
	return identity >= IDENTITY_FIRST_POD && identity < IDENTITY_FIRST_CIDR;
}
