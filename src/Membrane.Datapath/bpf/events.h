/* Drop counters and the event ring buffer read by `membrane monitor`. */
#pragma once

#include "maps.h"
#include "parse.h"

static __always_inline void count(void *map, __u32 index, __u32 len)
{
	struct counter *c = bpf_map_lookup_elem(map, &index);
	if (c) {
		c->packets++;
		c->bytes += len;
	}
}

static __always_inline void count_drop(__u32 dir, __u32 reason, __u32 len)
{
	__u32 index = (dir & 1) * REASON_MAX + (reason & (REASON_MAX - 1));
	struct counter *c = bpf_map_lookup_elem(&mb_drops, &index);
	if (c) {
		c->packets++;
		c->bytes += len;
	}
}

static __always_inline void emit_event(struct __sk_buff *skb, const struct flow *f, __u8 type, __u8 dir, __u8 reason,
				       __u32 peer, __u32 rule_id, __u8 match_kind)
{
	struct event *e = bpf_ringbuf_reserve(&mb_events, sizeof(*e), 0);
	if (!e) {
		count(&mb_stats, STAT_EVENTS_LOST, 0);
		return;
	}
	e->ts_ns = bpf_ktime_get_ns();
	e->ifindex = f->endpoint;
	e->peer_identity = peer;
	e->rule_id = rule_id;
	e->match_kind = match_kind;
	e->len = skb->len;
	__builtin_memcpy(e->saddr, f->saddr, sizeof(e->saddr));
	__builtin_memcpy(e->daddr, f->daddr, sizeof(e->daddr));
	e->sport = f->sport;
	e->dport = f->dport;
	e->type = type;
	e->dir = dir;
	e->reason = reason;
	e->family = f->family;
	e->proto = f->proto;
	e->icmp_type = f->icmp_type;
	e->icmp_code = f->icmp_code;
	bpf_ringbuf_submit(e, 0);
}

static __always_inline __u32 config_flags(void)
{
	__u32 zero = 0;
	struct config *c = bpf_map_lookup_elem(&mb_config, &zero);
	return c ? c->flags : 0;
}

/* Audit mode, the endpoint's or the agent's: what policy would drop is let through, counted and reported as audited. */
static __always_inline int audited(const struct flow *f, __u32 flags)
{
	struct endpoint_key k = { .ifindex = f->endpoint };
	struct endpoint_value *ep = bpf_map_lookup_elem(&mb_endpoints, &k);
	return (flags & CONFIG_AUDIT) || (ep && (ep->flags & ENDPOINT_AUDIT));
}

/* Counts a drop and reports it while a monitor listens; returns TC_ACT_SHOT. A policy drop under audit mode is
 * counted and reported as audited instead, and TC_ACT_OK returned: the caller lets it through. A global function:
 * every drop site shares one verified copy instead of inlining the event code (about 100 instructions a site,
 * multiplied by the states reaching it). At most five arguments, so direction, reason and match kind travel packed. */
__attribute__((noinline)) int drop_packet(struct __sk_buff *skb, const struct flow *f, __u32 packed, __u32 peer, __u32 rule_id)
{
	__u8 dir = packed & 0xff, reason = (packed >> 8) & 0xff, kind = (packed >> 16) & 0xff;
	__u32 flags = config_flags();
	int verdict = TC_ACT_SHOT;
	__u8 type = EVENT_DROP;
	if ((reason == REASON_POLICY || reason == REASON_POLICY_DENY) && f && audited(f, flags)) {
		count(&mb_audit, (dir & 1) * MATCH_SLOTS + (kind & (MATCH_SLOTS - 1)), skb->len);
		verdict = TC_ACT_OK;
		type = EVENT_AUDIT;
	} else {
		count_drop(dir, reason, skb->len);
	}
	if (f && (flags & CONFIG_DROP_EVENTS))
		emit_event(skb, f, type, dir, reason, peer, rule_id, kind);
	return verdict;
}

/* Reports a new connection policy allowed, while verdict events are on. A global function for the same reason. */
__attribute__((noinline)) int report_allowed(struct __sk_buff *skb, const struct flow *f, __u32 packed, __u32 peer, __u32 rule_id)
{
	if (f && (config_flags() & CONFIG_VERDICT_EVENTS))
		emit_event(skb, f, EVENT_VERDICT, packed & 0xff, REASON_ALLOWED, peer, rule_id, (packed >> 16) & 0xff);
	return 0;
}

/* Reports a packet conntrack let through (established, reply or related), while trace events are on. */
__attribute__((noinline)) int report_forwarded(struct __sk_buff *skb, const struct flow *f, __u32 packed, __u32 rule_id)
{
	if (f && (config_flags() & CONFIG_TRACE_EVENTS))
		emit_event(skb, f, EVENT_TRACE, packed & 0xff, (packed >> 8) & 0xff, 0, rule_id, MATCH_NONE);
	return 0;
}
