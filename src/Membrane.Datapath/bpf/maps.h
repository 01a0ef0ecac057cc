/* Every map the programs share. The C# side opens, pins and fills them by these names. */
#pragma once

#include "common.h"

/* Policy: LPM trie. Everything up to and including dir is always matched in full; proto and port may be
 * wildcarded by the prefix length. For ICMP, port = type << 8 | code (so prefix 88 = one type, any code). */
struct policy_key {
	__u32 prefixlen;
	__u32 ifindex;  /* the pod's host-side veth: identifies the endpoint */
	__u32 identity; /* peer identity; 0 = any peer */
	__u8 dir;
	__u8 proto;     /* 0 = any protocol */
	__be16 port;
};

#define POLICY_PREFIX_L3 72 /* ifindex + identity + dir */
#define POLICY_PREFIX_FULL 96

struct policy_value {
	__u64 packets;
	__u64 bytes;
	__u32 rule_id; /* the control plane's handle of the rules behind the entry, carried in events */
	__u8 deny;
	__u8 kind;     /* enum match_kind */
	__u16 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__type(key, struct policy_key);
	__type(value, struct policy_value);
	__uint(max_entries, 262144);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} mb_policy SEC(".maps");

struct ipcache4_key {
	__u32 prefixlen;
	__u32 addr;
};

struct ipcache6_key {
	__u32 prefixlen;
	__u32 addr[4];
};

struct ipcache_value {
	__u32 identity;
	__u32 flags;
};

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__type(key, struct ipcache4_key);
	__type(value, struct ipcache_value);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} mb_ipcache4 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__type(key, struct ipcache6_key);
	__type(value, struct ipcache_value);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} mb_ipcache6 SEC(".maps");

/* Conntrack: per endpoint, one entry per connection under a normalised key (the lower address/port pair
 * first), so a packet in either direction finds its connection with a single lookup. The value remembers the
 * direction of the opening packet: a packet in the other direction is a reply. One map per family: an IPv4 key
 * is 20 bytes instead of 44, and hashing and comparing the key is a large part of an established packet's cost. */
struct ct4_key {
	__u32 ifindex;
	__u32 lo_addr;
	__u32 hi_addr;
	__u16 lo_port; /* host byte order; ICMP queries: the identifier for one port, the request's type for the other */
	__u16 hi_port;
	__u8 proto;
	__u8 kind; /* ICMP queries: the request's type, so two kinds of query never share an entry; else 0 */
	__u8 pad[2];
};

struct ct6_key {
	__u32 ifindex;
	__u32 lo_addr[4];
	__u32 hi_addr[4];
	__u16 lo_port;
	__u16 hi_port;
	__u8 proto;
	__u8 kind;
	__u8 pad[2];
};

union ct_key {
	struct ct4_key v4;
	struct ct6_key v6;
};

struct ct_value {
	__u64 created;   /* kernel ticks (jiffies), see ct_now() */
	__u64 last_seen;
	__u64 packets;
	__u64 bytes;
	__u32 rule_id;
	__u8 flags;     /* CT_* */
	__u8 dir;       /* direction of the opening packet */
	__u8 opened_lo; /* 1 when the opening packet came from the lo side of the key */
	__u8 peer_generation; /* host routing: the configuration generation (low byte) under which a pod of this node last
			       * admitted this endpoint's packets of the connection by its ingress policy; 0: not since */
};

/* A key and its value by value: what the BTF anchor of the conntrack types holds (see btf_layout_anchor_ct). */
struct ct_entry {
	union ct_key key;
	struct ct_value value;
};

#define CT_SEEN_FIN_FWD 0x01
#define CT_SEEN_FIN_REV 0x02
#define CT_SEEN_RST 0x04
#define CT_SEEN_REPLY 0x08

/* Each endpoint has its own table per family, made by the control plane when the endpoint is set up (its size is
 * the agent's choice; this is the template's): an LRU evicts only the connections of the endpoint that fills it, so
 * a pod that floods new flows churns its own table and never another endpoint's. A connection between two pods of
 * the node has an entry in each one's table, charged to each. An endpoint without a table tracks nothing. */
#define CT_ENDPOINT_ENTRIES 8192

struct ct4_table {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct ct4_key);
	__type(value, struct ct_value);
	__uint(max_entries, CT_ENDPOINT_ENTRIES);
};

struct ct6_table {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct ct6_key);
	__type(value, struct ct_value);
	__uint(max_entries, CT_ENDPOINT_ENTRIES);
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH_OF_MAPS);
	__type(key, __u32); /* the endpoint's ifindex */
	__uint(max_entries, 65536);
	__array(values, struct ct4_table);
} mb_ct4_tables SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH_OF_MAPS);
	__type(key, __u32);
	__uint(max_entries, 65536);
	__array(values, struct ct6_table);
} mb_ct6_tables SEC(".maps");

/* Each endpoint's own addresses, by the ifindex of its host-side veth: what a pod may send from. An interface
 * without an entry may send nothing (fail closed). */
struct endpoint_key {
	__u32 ifindex;
};

struct endpoint_value {
	__u32 ipv4;    /* network byte order */
	__u32 ipv6[4];
	__u32 flags;   /* ENDPOINT_HAS_* */
};

#define ENDPOINT_HAS_IPV4 1
#define ENDPOINT_HAS_IPV6 2
#define ENDPOINT_AUDIT 4 /* policy audit mode: what policy would drop is let through and reported */

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct endpoint_key);
	__type(value, struct endpoint_value);
	__uint(max_entries, 65536);
} mb_endpoints SEC(".maps");

/* The pods of this node by address, for host routing: the host-side veth through whose peer from_pod delivers a
 * packet for one of them, and the frame's addresses. Written once the endpoint's programs are attached and removed
 * before they are detached; a destination without an entry takes the node's stack and meets to_pod there. */
struct local_value {
	__u32 ifindex;
	__u8 mac[6];      /* the pod's interface: the delivered frame's destination */
	__u8 node_mac[6]; /* the host-side veth, the pod's gateway: the delivered frame's source */
};

struct local6_key {
	__u32 addr[4];
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u32); /* IPv4 address, network byte order */
	__type(value, struct local_value);
	__uint(max_entries, 65536);
} mb_local4 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct local6_key);
	__type(value, struct local_value);
	__uint(max_entries, 65536);
} mb_local6 SEC(".maps");

/* Verdict of the first fragment of a datagram, so later fragments (without L4 header) get the same one. */
struct frag_key {
	__u32 ifindex;
	__u32 id;
	__u8 dir;
	__u8 family;
	__u8 proto;
	__u8 pad;
	__u32 saddr[4];
	__u32 daddr[4];
};

/* A verdict holds for the receiver's reassembly window only (RFC 8200's 60 s; IPv4's is Linux's 30 s): a later
 * fragment after it belongs to no datagram the first fragment began. The control plane removes an endpoint's
 * verdicts when its policy changes, so none outlives the policy that gave it. */
struct frag_value {
	__u64 created; /* kernel ticks (jiffies) */
	__u8 allowed;
	__u8 pad[7];
};

/* Each endpoint keeps its fragments' verdicts in a table of its own, made with its conntrack tables: a pod that
 * sends a stream of first fragments evicts only its own verdicts, never another endpoint's datagrams in flight.
 * Only admitted first fragments are remembered (a denied one removes the datagram's verdict), so a sender policy
 * refuses cannot fill a receiver's table. An endpoint without a table passes no later fragment. */
#define FRAG_ENDPOINT_ENTRIES 1024

/* The key and value by value, for the BTF anchor (as struct ct_entry). */
struct frag_entry {
	struct frag_key key;
	struct frag_value value;
};

struct frag_table {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct frag_key);
	__type(value, struct frag_value);
	__uint(max_entries, FRAG_ENDPOINT_ENTRIES);
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH_OF_MAPS);
	__type(key, __u32); /* the endpoint's ifindex */
	__uint(max_entries, 65536);
	__array(values, struct frag_table);
} mb_frag_tables SEC(".maps");

struct counter {
	__u64 packets;
	__u64 bytes;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, struct counter);
	__uint(max_entries, 2 * REASON_MAX); /* direction * REASON_MAX + reason */
} mb_drops SEC(".maps");

/* Packets audit mode let through that policy would have dropped, by direction and match kind (MATCH_NONE: no rule
 * allowed it; otherwise the kind of the deny entry that matched). */
#define MATCH_SLOTS 8

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, struct counter);
	__uint(max_entries, 2 * MATCH_SLOTS); /* direction * MATCH_SLOTS + match kind */
} mb_audit SEC(".maps");

/* Packets every program let through, by direction, and events the ring buffer had no room for (the monitor and the
 * metrics read them; a lost event is counted, never silently missing). */
enum stat_index {
	STAT_FORWARD_INGRESS = 0, /* delivered to a pod: DIR_INGRESS */
	STAT_FORWARD_EGRESS = 1,  /* sent by a pod: DIR_EGRESS */
	STAT_EVENTS_LOST = 2,
	STAT_MAX = 4,
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, struct counter);
	__uint(max_entries, STAT_MAX);
} mb_stats SEC(".maps");

struct event {
	__u64 ts_ns;
	__u32 ifindex;
	__u32 peer_identity;
	__u32 rule_id;
	__u32 len;
	__u32 saddr[4];
	__u32 daddr[4];
	__u16 sport;
	__u16 dport;
	__u8 type;   /* enum event_type */
	__u8 dir;
	__u8 reason; /* enum drop_reason */
	__u8 family;
	__u8 proto;
	__u8 icmp_type;
	__u8 icmp_code;
	__u8 match_kind;
};

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 20);
} mb_events SEC(".maps");

struct config {
	__u32 flags;          /* CONFIG_* */
	__u32 generation;     /* advanced by the agent after every change of policy, identities, endpoints or conntrack */
	__u32 tunnel_ifindex; /* tunnel mode: the node's VXLAN device (0: none) */
	__u8 tunnel_mac[6];   /* and its address, the source of the inner frames it sends */
	__u16 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, struct config);
	__uint(max_entries, 1);
} mb_config SEC(".maps");
