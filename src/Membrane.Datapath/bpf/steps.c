// SPDX-License-Identifier: GPL-2.0
/* An established packet's path through to_pod, cut short after each of its steps: bench/run measures these beside
 * to_pod and the empty program in the same rounds, to show where an established packet's time goes. Never attached.
 * Each program does what the one before it does and one step more; to_pod adds the fragment and trace checks and
 * the forwarded counter. */
#include "common.h"
#include "headers.h"
#include "maps.h"
#include "parse.h"
#include "policy.h"
#include "source.h"
#include "conntrack.h"

SEC("tc")
int cut_after_parse(struct __sk_buff *skb)
{
	struct flow f = {};
	return parse_packet(skb, &f) == PARSE_OK ? TC_ACT_OK : TC_ACT_SHOT;
}

/* Parses, builds the conntrack key and looks it up; a miss inserts the connection, as to_pod does for an allowed
 * new flow, so that repeated runs of one packet hit it and single runs of new packets measure the insert. */
static __always_inline struct ct_value *tracked(struct __sk_buff *skb, struct flow *f, int *src_lo, __u64 now)
{
	union ct_key k;
	if (parse_packet(skb, f) != PARSE_OK)
		return 0;
	*src_lo = ct_key_of(&k, skb->ifindex, f);
	struct ct_value *conn = ct_find(&k, f->family, f->proto, now);
	if (!conn)
		ct_create(&k, f->family, *src_lo, DIR_INGRESS, now, skb->len, 0);
	return conn;
}

SEC("tc")
int cut_after_lookup(struct __sk_buff *skb)
{
	struct flow f = {};
	int src_lo;
	return tracked(skb, &f, &src_lo, ct_now()) ? TC_ACT_OK : TC_ACT_SHOT;
}

SEC("tc")
int cut_after_accounting(struct __sk_buff *skb)
{
	struct flow f = {};
	int src_lo;
	__u64 now = ct_now();
	struct ct_value *conn = tracked(skb, &f, &src_lo, now);
	if (!conn || ct_from_endpoint(conn, src_lo))
		return TC_ACT_SHOT;
	ct_account(conn, DIR_INGRESS, now, skb->len, f.tcp_flags);
	return TC_ACT_OK;
}

/* See btf_layout_anchor_ct in membrane.c: makes the conntrack and fragment keys whole in this object's BTF. */
__attribute__((noinline)) int btf_layout_anchor_ct(struct ct_entry *e, struct frag_entry *f)
{
	return (e ? e->value.flags : 0) + (f ? f->value.allowed : 0);
}

/* The lookup as it was before each endpoint had its own table: one LRU map shared by all endpoints, found without
 * the outer lookup. Measured beside cut_after_lookup, the difference is what per-endpoint fairness costs a packet. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct ct4_key);
	__type(value, struct ct_value);
	__uint(max_entries, 262144);
} mb_ct4_shared SEC(".maps");

SEC("tc")
int cut_after_shared_lookup(struct __sk_buff *skb)
{
	struct flow f = {};
	union ct_key k;
	__u64 now = ct_now();
	if (parse_packet(skb, &f) != PARSE_OK || f.family != 4)
		return TC_ACT_SHOT;
	int src_lo = ct_key_of(&k, skb->ifindex, &f);
	struct ct_value *conn = bpf_map_lookup_elem(&mb_ct4_shared, &k.v4);
	if (conn && now - conn->last_seen > ct_timeout(f.proto, conn->flags)) {
		bpf_map_delete_elem(&mb_ct4_shared, &k.v4);
		conn = 0;
	}
	if (!conn) {
		struct ct_value v = { .created = now, .last_seen = now, .packets = 1, .bytes = skb->len, .opened_lo = src_lo };
		bpf_map_update_elem(&mb_ct4_shared, &k.v4, &v, BPF_ANY);
	}
	return conn ? TC_ACT_OK : TC_ACT_SHOT;
}

char LICENSE[] SEC("license") = "GPL";
