// SPDX-License-Identifier: GPL-2.0
/* Membrane's policy programs, attached to each pod's host-side veth:
 *   from_pod on tc ingress (packets the pod sends: its egress policy),
 *   to_pod   on tc egress  (packets delivered to the pod: its ingress policy).
 * The endpoint is the veth's ifindex, so no per-endpoint lookup is needed before conntrack. */
#include "common.h"
#include "headers.h"
#include "maps.h"
#include "parse.h"
#include "policy.h"
#include "source.h"
#include "conntrack.h"
#include "events.h"
#include "tunnel.h"
#include "delivery.h"
#include "vxlan.h"

/* A datagram's fragments as the receiver reassembles them: by addresses and identifier, and for IPv4 the protocol.
 * Not for IPv6: a first fragment's protocol is the one after the whole header chain, a later fragment's the fragment
 * header's next header, which differ when extension headers follow the fragment header. */
static __always_inline struct frag_key frag_key_of(__u32 ifindex, __u8 dir, const struct flow *f)
{
	struct frag_key k = { .ifindex = ifindex, .id = f->frag_id, .dir = dir, .family = f->family,
			      .proto = f->family == 4 ? f->proto : 0 };
	__builtin_memcpy(k.saddr, f->saddr, sizeof(k.saddr));
	__builtin_memcpy(k.daddr, f->daddr, sizeof(k.daddr));
	return k;
}

/* A global function: verified once, instead of inlined at each verdict (only first fragments get past its test).
 * A denied first fragment removes what an earlier one with the same identifier was given: the datagram's later
 * fragments are then dropped, whichever first fragment the receiver keeps. */
__attribute__((noinline)) int remember_fragment(__u32 ifindex, __u32 dir, const struct flow *f, __u32 allowed)
{
	if (!f || f->frag != FRAG_FIRST)
		return 0;
	void *table = bpf_map_lookup_elem(&mb_frag_tables, &ifindex);
	if (!table)
		return 0;
	struct frag_key k = frag_key_of(ifindex, dir, f);
	if (!allowed) {
		bpf_map_delete_elem(table, &k);
		return 0;
	}
	struct frag_value verdict = { .created = ct_now(), .allowed = 1 };
	bpf_map_update_elem(table, &k, &verdict, BPF_ANY);
	return 0;
}

#define FRAG_TIMEOUT_S 60

static __always_inline int fragment_allowed(__u32 ifindex, __u8 dir, const struct flow *f)
{
	void *table = bpf_map_lookup_elem(&mb_frag_tables, &ifindex);
	if (!table)
		return 0;
	struct frag_key k = frag_key_of(ifindex, dir, f);
	struct frag_value *v = bpf_map_lookup_elem(table, &k);
	return v && v->allowed && ct_now() - v->created <= ct_ticks(FRAG_TIMEOUT_S);
}

static __always_inline int drop(struct __sk_buff *skb, const struct flow *f, __u8 dir, __u8 reason, __u32 peer,
				const struct policy_value *entry)
{
	drop_packet(skb, f, dir | (__u32)reason << 8 | (__u32)(entry ? entry->kind : MATCH_NONE) << 16, peer,
		    entry ? entry->rule_id : 0);
	return TC_ACT_SHOT;
}

/* One endpoint's policy on a parsed IP packet: f->endpoint's egress (from_pod), or its ingress (to_pod, and from_pod
 * for a destination on this node). */
static __always_inline int judge(struct __sk_buff *skb, struct flow *f, __u8 dir)
{
	__u32 ifindex = f->endpoint;
	if (f->frag == FRAG_LATER) {
		if (fragment_allowed(ifindex, dir, f))
			return TC_ACT_OK;
		return drop(skb, f, dir, REASON_FRAGMENT, 0, 0);
	}

	__u64 now = ct_now();
	union ct_key k;
	int src_lo = ct_key_of(&k, ifindex, f);
	struct ct_value *conn = ct_find(&k, f->family, f->proto, now);
	if (conn && ct_from_endpoint(conn, src_lo) == (dir == DIR_EGRESS) && ct_query_fits(f, conn->dir == dir)) {
		if (dir == DIR_EGRESS && f->generation)
			f->peer = ct_peer_check(conn, f, now);
		ct_account(conn, dir, now, skb->len, f->tcp_flags);
		if (config_flags() & CONFIG_TRACE_EVENTS)
			report_forwarded(skb, f, dir | (__u32)(conn->dir == dir ? TRACE_ESTABLISHED : TRACE_REPLY) << 8, conn->rule_id);
		goto pass;
	}
	if (dir == DIR_EGRESS && !source_is_endpoints(ifindex, f, 0))
		return drop(skb, f, dir, REASON_INVALID_SOURCE, 0, 0);
	if (is_neighbour_discovery(f, dir))
		return TC_ACT_OK;
	if (is_icmp(f->proto) && is_icmp_error(f->family, f->icmp_type) && ct_related(skb, ifindex, f, now, dir)) {
		report_forwarded(skb, f, dir | (__u32)TRACE_RELATED << 8, 0);
		goto pass;
	}

	/* From another node through the tunnel, the sender's identity came with the packet (from_underlay). */
	__u32 tunnelled = dir == DIR_INGRESS ? mark_identity(skb) : 0;
	__u32 peer = tunnelled ? tunnelled : dir == DIR_EGRESS ? destination_identity(f) : source_identity(f);
	struct policy_value *entry = policy_lookup(ifindex, dir, peer, f);
	__u32 rule_id = entry ? entry->rule_id : 0;
	if (!entry || entry->deny) {
		__u32 packed = dir | (__u32)(entry ? REASON_POLICY_DENY : REASON_POLICY) << 8 |
			       (__u32)(entry ? entry->kind : MATCH_NONE) << 16;
		if (drop_packet(skb, f, packed, peer, rule_id) != TC_ACT_OK) {
			if (entry) { /* a deny entry counts what it dropped, as an allow entry what it admitted */
				__sync_fetch_and_add(&entry->packets, 1);
				__sync_fetch_and_add(&entry->bytes, skb->len);
			}
			remember_fragment(ifindex, dir, f, 0);
			return TC_ACT_SHOT;
		}
	} else {
		__sync_fetch_and_add(&entry->packets, 1);
		__sync_fetch_and_add(&entry->bytes, skb->len);
		report_allowed(skb, f, dir | (__u32)entry->kind << 16, peer, rule_id);
	}
	/* An audited connection is tracked too: its replies and later packets pass as they would once allowed. */
	if (ct_trackable(f))
		ct_create(&k, f->family, src_lo, dir, now, skb->len, rule_id);
pass:
	if (f->frag == FRAG_FIRST)
		remember_fragment(ifindex, dir, f, 1);
	return TC_ACT_OK;
}

/* Each direction's verdict as a global function of its own: verified once per program that runs it, with its
 * direction known (one function for both would be verified for both in each program, about 6,000 instructions more),
 * though from_pod runs both for a destination on this node. */
__attribute__((noinline)) int judge_egress(struct __sk_buff *skb, struct flow *f)
{
	return f ? judge(skb, f, DIR_EGRESS) : TC_ACT_SHOT;
}

__attribute__((noinline)) int judge_ingress(struct __sk_buff *skb, struct flow *f)
{
	return f ? judge(skb, f, DIR_INGRESS) : TC_ACT_SHOT;
}

static __always_inline int handle(struct __sk_buff *skb, struct flow *f, __u8 dir)
{
	f->endpoint = skb->ifindex;
	int parsed = parse_packet(skb, f);
	if (parsed == PARSE_ARP) {
		/* ARP has no policy, but a pod may only speak for its own address. */
		if (dir == DIR_EGRESS && !source_is_endpoints(f->endpoint, f, 1))
			return drop(skb, f, dir, REASON_INVALID_SOURCE, 0, 0);
		return TC_ACT_OK;
	}
	if (parsed == PARSE_UNKNOWN_L3)
		return drop(skb, f, dir, REASON_UNKNOWN_L3, 0, 0);
	if (parsed != PARSE_OK)
		return drop(skb, f, dir, REASON_MALFORMED, 0, 0);
	return dir == DIR_EGRESS ? judge_egress(skb, f) : judge_ingress(skb, f);
}

/* Host routing: a packet the pod's egress policy let through, for another pod of this node, is judged by that pod's
 * ingress policy here (as to_pod would: same entries, conntrack, audit mode, events and counters) and handed
 * straight into its namespace, past the node's forwarding and the destination veth's transmit path (and to_pod).
 * Everything else takes the node's stack as without host routing: the node's own traffic, other nodes' pods,
 * fragments (their later fragments carry no ports to find a destination's verdict by), a TTL the node must answer
 * with time exceeded, a packet too big for the destination's link, and frames not addressed to the gateway (the
 * node's forwarding refuses those). */
#define NOT_LOCAL (-2) /* deliver_local: the destination is no pod of this node */

static __always_inline int deliver_local(struct __sk_buff *skb, struct flow *f)
{
	if (f->family == 0 || f->frag != FRAG_NONE || f->hop_limit <= 1 || skb->pkt_type != 0 /* PACKET_HOST */)
		return TC_ACT_OK;
	struct local_value *to = local_destination(f);
	if (!to)
		return NOT_LOCAL;
	/* Copied at once: with either family's map pointer live, the verifier would walk all that follows twice. */
	__u32 target = to->ifindex;
	__u8 macs[12];
	__builtin_memcpy(macs, to->mac, sizeof(macs));
	if (target == f->endpoint)
		return TC_ACT_OK;
	/* Larger than the destination's link takes: the node's forwarding answers with fragmentation needed / packet too
	 * big (the kernel's own check, segments of a GSO packet included). */
	if (!fits_link(skb, target, 0))
		return TC_ACT_OK;
	/* The destination's policy judges the packet as it will arrive: one hop less. A hop limit of 255 towards a pod
	 * proves the node sent it (neighbour discovery); a pod's 255 must not prove that by skipping the node. */
	__u32 source = f->endpoint;
	f->endpoint = target;
	f->hop_limit--;
	if (f->peer != PEER_SKIP) {
		if (judge_ingress(skb, f) != TC_ACT_OK) {
			if (f->peer != PEER_CHECK) /* marked under this generation or an older one: unmarked */
				ct_mark_peer(f, source, 0);
			return TC_ACT_SHOT;
		}
		if (f->peer == PEER_CHECK_MARK)
			ct_mark_peer(f, source, f->generation);
	}
	if (rewrite_for_delivery(skb, f, macs, 0))
		return drop(skb, f, DIR_INGRESS, REASON_MALFORMED, 0, 0);
	count(&mb_stats, STAT_FORWARD_INGRESS, skb->len);
	return bpf_redirect_peer(target, 0);
}

/* Host routing, a packet the pod's egress policy let through for a pod of another node: it leaves as the node's route
 * would send it, one hop less, without crossing the node's forwarding; the receiving node judges it (from_underlay or
 * to_pod). Only for other nodes' pod prefixes: the node's own traffic and the world keep the node's stack (its
 * nftables, NAT).
 * Native routing: by the kernel's FIB towards that node (the next hop's MAC). A next hop whose neighbour entry is not
 * resolved, or a packet larger than the route's MTU, takes the stack, which resolves it or answers the sender.
 * Tunnel mode: wrapped in VXLAN here and sent from the underlay device (encapsulate); what cannot be wrapped here
 * takes the stack into the tunnel device, whose to_tunnel sends it alike.
 * A global function: verified once, on its own (from_pod's budget). */
__attribute__((noinline)) int forward_to_node(struct __sk_buff *skb, struct flow *f)
{
	__u32 zero = 0;
	struct config *config = bpf_map_lookup_elem(&mb_config, &zero);
	__u64 route = f && config ? tunnel_route_of(f) : 0;
	if (!route)
		return TC_ACT_OK;
	if (!((route >> 32) & ROUTE_NATIVE)) {
		int out = encapsulate(skb, f, (__be32)route, config);
		if (out == ENCAPSULATE_FAILED)
			return drop(skb, f, DIR_EGRESS, REASON_TUNNEL, 0, 0);
		return out == ENCAPSULATE_LEFT_TO_STACK ? TC_ACT_OK : bpf_redirect(out, 0);
	}
	struct bpf_fib_lookup fib = { .ifindex = skb->ingress_ifindex };
	if (f->family == 4) {
		fib.family = 2; /* AF_INET */
		fib.ipv4_src = f->saddr[0];
		fib.ipv4_dst = f->daddr[0];
	} else {
		fib.family = 10; /* AF_INET6 */
		__builtin_memcpy(fib.ipv6_src, f->saddr, sizeof(fib.ipv6_src));
		__builtin_memcpy(fib.ipv6_dst, f->daddr, sizeof(fib.ipv6_dst));
	}
	/* tot_len 0: the kernel checks the packet itself against the route's device (GSO segments included). */
	if (bpf_fib_lookup(skb, &fib, sizeof(fib), 0) != BPF_FIB_LKUP_RET_SUCCESS)
		return TC_ACT_OK;
	__u8 macs[12];
	__builtin_memcpy(macs, fib.dmac, 6);
	__builtin_memcpy(&macs[6], fib.smac, 6);
	f->hop_limit--;
	if (rewrite_for_delivery(skb, f, macs, 0))
		return TC_ACT_OK;
	return bpf_redirect(fib.ifindex, 0);
}

SEC("tc")
int from_pod(struct __sk_buff *skb)
{
	struct flow f = {};
	__u32 zero = 0;
	struct config *config = bpf_map_lookup_elem(&mb_config, &zero);
	/* The peer shortcut (enum peer_check) only with host routing, and not while every packet is to be reported. */
	if (config && (config->flags & CONFIG_HOST_ROUTING) && !(config->flags & CONFIG_TRACE_EVENTS))
		f.generation = (__u8)config->generation;
	int verdict = handle(skb, &f, DIR_EGRESS);
	if (verdict != TC_ACT_OK)
		return verdict;
	count(&mb_stats, STAT_FORWARD_EGRESS, skb->len);
	/* The flags read again, not kept in a register across the verdict: the verifier would walk the whole verdict
	 * twice, once with host routing and once without. */
	if (!config || !(*(volatile __u32 *)&config->flags & CONFIG_HOST_ROUTING))
		return TC_ACT_OK;
	verdict = deliver_local(skb, &f);
	if (verdict != NOT_LOCAL)
		return verdict;
	return forward_to_node(skb, &f);
}

/* What other nodes send, on the node's underlay device (native routing; tunnel mode with host routing) and on its
 * tunnel device (tunnel mode), tc ingress. Through the tunnel, the sender's identity is believed only from a known
 * node's address (no node may claim to be this node's host); it reaches the destination's ingress check, here or in
 * to_pod, in the mark. With host routing, a packet for a pod of this node is judged by that pod's ingress policy here
 * and handed into its namespace, as deliver_local does for a sender on this node; in tunnel mode the underlay device
 * unwraps what it can deliver so (receive_tunnelled) and leaves the rest to the tunnel device. Whatever it does not
 * deliver goes on to the node's stack (and to_pod), unchanged or, once unwrapped, with its identity in the mark. */
SEC("tc")
int from_underlay(struct __sk_buff *skb)
{
	__u32 zero = 0;
	struct config *config = bpf_map_lookup_elem(&mb_config, &zero);
	struct flow f = { .endpoint = skb->ifindex };
	struct bpf_tunnel_key key = {};
	/* Only a tunnel device's packets carry tunnel metadata; one on the tunnel device without any is no tunnel's. */
	int keyed = bpf_skb_get_tunnel_key(skb, &key, sizeof(key), 0) == 0;
	if (keyed || (config && config->tunnel_ifindex == skb->ifindex)) {
		struct node_key node = { .addr = bpf_htonl(key.remote_ipv4) };
		if (!keyed || !bpf_map_lookup_elem(&mb_nodes, &node)) {
			tunnel_addresses(skb, &f); /* for the drop event only */
			return drop(skb, &f, DIR_INGRESS, REASON_TUNNEL, 0, 0);
		}
		skb->mark = tunnel_mark(key.tunnel_id);
	}
	if (!config || !(config->flags & CONFIG_HOST_ROUTING))
		return TC_ACT_OK;
	if (!keyed && config->tunnel_ifindex) {
		int received = receive_tunnelled(skb);
		if (received == NOT_TUNNELLED)
			return TC_ACT_OK;
		if (received == DECAPSULATE_FAILED)
			return drop(skb, &f, DIR_INGRESS, REASON_TUNNEL, 0, 0);
	}
	if (parse_packet(skb, &f) != PARSE_OK)
		return TC_ACT_OK;
	int verdict = deliver_local(skb, &f);
	if (verdict == TC_ACT_REDIRECT)
		skb->mark = 0; /* the identity was for this node's check; the pod's namespace gets no mark */
	return verdict == NOT_LOCAL ? TC_ACT_OK : verdict;
}

SEC("tc")
int to_pod(struct __sk_buff *skb)
{
	struct flow f = {};
	int verdict = handle(skb, &f, DIR_INGRESS);
	if (verdict == TC_ACT_OK)
		count(&mb_stats, STAT_FORWARD_INGRESS, skb->len);
	return verdict;
}

/* On the tunnel device's egress: the packet leaves for the node that hosts its destination, with the source's
 * identity in the VNI. A destination no node hosts is dropped (the route sent it here by mistake). */
SEC("tc")
int to_tunnel(struct __sk_buff *skb)
{
	struct flow f = { .endpoint = skb->ifindex };
	if (tunnel_addresses(skb, &f))
		return drop(skb, &f, DIR_EGRESS, REASON_TUNNEL, 0, 0);
	struct tunnel_value *route = tunnel_route(&f);
	if (!route)
		return drop(skb, &f, DIR_EGRESS, REASON_TUNNEL, 0, 0);
	/* The inner frame goes to the receiving tunnel device's address, 02:6d + the node's IPv4 address: the kernel
	 * takes a frame from its own address for a loop, and one to another address for someone else's. */
	__u8 mac[6] = { 0x02, 0x6d };
	__builtin_memcpy(&mac[2], &route->node, 4);
	if (bpf_skb_store_bytes(skb, 0, mac, sizeof(mac), 0))
		return drop(skb, &f, DIR_EGRESS, REASON_TUNNEL, 0, 0);
	struct bpf_tunnel_key key = {
		.remote_ipv4 = bpf_ntohl(route->node),
		.tunnel_id = tunnel_identity(ipcache_identity(&f, DIR_INGRESS)),
		.tunnel_ttl = 64,
	};
	if (bpf_skb_set_tunnel_key(skb, &key, sizeof(key), 0))
		return drop(skb, &f, DIR_EGRESS, REASON_TUNNEL, 0, 0);
	return TC_ACT_OK;
}

/* Puts into the object's BTF the types the programs use only through sizes and casts (the event record, the enums
 * mirrored in C#), so the layout test (BtfLayoutTests) can check the C# mirrors against them. Never called, so
 * never loaded. */
__attribute__((noinline)) int btf_layout_anchor(struct event *e, enum drop_reason r, enum event_type t, enum match_kind k,
						  enum traffic_direction d)
{
	return e ? (int)r + (int)t + (int)k + (int)d : 0;
}

__attribute__((noinline)) int btf_layout_anchor_trace(enum trace_reason c, enum tunnel_wire w)
{
	return (int)c + (int)w;
}

/* The conntrack and fragment keys reach the maps' BTF only through the inner-map templates, where clang would leave them as
 * forward declarations (libbpf then cannot size the template's key): a prototype over a struct that holds them by
 * value makes them whole. */
__attribute__((noinline)) int btf_layout_anchor_ct(struct ct_entry *e, struct frag_entry *f)
{
	return (e ? e->value.flags : 0) + (f ? f->value.allowed : 0);
}

char LICENSE[] SEC("license") = "GPL";
